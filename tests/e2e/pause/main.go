// pause is the pod sandbox's process for the end-to-end machines with a real container
// runtime: it holds the pod's namespaces until it is told to stop. Nothing can be pulled
// here, so containerd's sandbox image is built from this (tests/e2e/images).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
