// fakecri serves a kubelet the CRI runtime and image services of
// k8s.io/cri-client/pkg/fake on a unix socket, so that a real kubelet runs, and "runs"
// the pods bound to its node, on a machine without a container engine.
//
//	fakecri unix:///run/machine/cri.sock /var/lib/kubelet
//
// The second argument is reported as the image filesystem (the kubelet's stats
// provider needs one). It serves until SIGTERM or SIGINT.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: fakecri unix:///PATH/cri.sock IMAGE-FS-MOUNTPOINT")
		os.Exit(2)
	}
	runtime := fake.NewFakeRemoteRuntime()
	// A pulled image needs a size, else the kubelet refuses to start its containers.
	runtime.ImageService.SetFakeImageSize(320368)
	used, inodes := uint64(1<<30), uint64(4096)
	runtime.ImageService.SetFakeFilesystemUsage([]*runtimeapi.FilesystemUsage{{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: os.Args[2]},
		UsedBytes:  &runtimeapi.UInt64Value{Value: used},
		InodesUsed: &runtimeapi.UInt64Value{Value: inodes},
	}})
	if err := runtime.Start(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "fakecri: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "fakecri: serving %s\n", os.Args[1])
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
	runtime.Stop()
}
