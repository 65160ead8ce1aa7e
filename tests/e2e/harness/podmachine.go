package main

// Machines that run pods: a real kubelet with containerd and runc, a CNI bridge for its
// pods, and kube-proxy, in the machine's own network, mount and UTS namespaces.
//
//   - containerd (Debian's, with the CRI plugin) keeps its root, state, socket and CNI
//     configuration in the machine's directory; its images are imported from archives
//     (nothing can be pulled here), its sandbox image is tests/e2e/pause.
//   - Pods get addresses of the machine's PodCIDR on the bridge cni0 inside the
//     machine's namespace; the host routes that range to the machine's address, as a
//     cluster's pod network routes it between nodes.
//   - kube-proxy (iptables mode) in the machine's namespace sends the pods' calls to
//     the kubernetes Service's ClusterIP to the API server.
//
// The runtime (containerd, kube-proxy) and the kubelet are separate processes, so the
// kubelet restarts while containers keep running, as on a real node; PowerOff kills
// everything, containers included.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// podEnv is what every pod machine shares besides machineEnv.
type podEnv struct {
	kubeProxy string
	// proxyKubeconfig: kube-proxy's credentials (system:kube-proxy).
	proxyKubeconfig string
	// images: archives imported into each machine's containerd at boot.
	images []string
	// sandboxImage: the pause image's name, one of images.
	sandboxImage string
	clusterCIDR  string
}

// PodMachine is a machine whose kubelet runs pods.
type PodMachine struct {
	*Machine
	PodCIDR string
	// Copy: a copy of another machine's disk. The host keeps routing the node's pod
	// range to the original, as a cluster's pod network does.
	Copy    bool
	pods    *podEnv
	runtime *exec.Cmd
	// runtimeDone is closed when the runtime's process group leader exits.
	runtimeDone chan struct{}
}

func (p *PodMachine) socket() string { return filepath.Join(p.Dir, "containerd.sock") }

func (p *PodMachine) containerdConfig() string {
	d := p.Dir
	return fmt.Sprintf(`version = 2
root = "%[1]s/containerd/root"
state = "%[1]s/containerd/state"
[grpc]
  address = "%[1]s/containerd.sock"
[ttrpc]
  address = "%[1]s/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%[2]s"
  # This sandbox refuses lowering oom_score_adj (the pause container's -998).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "%[1]s/cni"
`, d, p.pods.sandboxImage)
}

func (p *PodMachine) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "pods",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "%s/cni-ipam", "ranges": [[{"subnet": "%s"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
`, p.Dir, p.PodCIDR)
}

// kubeProxyConfig: iptables mode, and nothing that changes the host's kernel settings
// (conntrack limits and timeouts are left as they are).
func (p *PodMachine) kubeProxyConfig() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
clusterCIDR: %s
bindAddress: 0.0.0.0
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, p.pods.proxyKubeconfig, p.Name, p.pods.clusterCIDR)
}

// kubeletConfig is the machine's kubelet configuration with containerd as its runtime.
func (p *PodMachine) kubeletConfig() string {
	c := p.Machine.kubeletConfig()
	return strings.Replace(c, "unix://"+p.Dir+"/cri.sock", "unix://"+p.socket(), 1)
}

func (p *PodMachine) writeFiles() error {
	if err := p.writeIdentity(); err != nil {
		return err
	}
	for _, d := range []string{"cni", "cni-cache", "cni-ipam", "containerd", "manifests"} {
		if err := os.MkdirAll(filepath.Join(p.Dir, d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"containerd.toml":      p.containerdConfig(),
		"cni/10-pods.conflist": p.cniConfig(),
		"kube-proxy.yaml":      p.kubeProxyConfig(),
		"kubelet-config.yaml":  p.kubeletConfig(),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(p.Dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// RuntimeRunning says whether containerd's process group is up.
func (p *PodMachine) RuntimeRunning() bool {
	if p.runtime == nil {
		return false
	}
	select {
	case <-p.runtimeDone:
		return false
	default:
		return true
	}
}

// Boot brings the machine up: network and host route (once), containerd with its
// images, kube-proxy, then the kubelet.
func (p *PodMachine) Boot() error {
	if err := p.network(); err != nil {
		return err
	}
	if !p.Copy {
		if err := p.route(); err != nil {
			return err
		}
	}
	if err := p.writeFiles(); err != nil {
		return err
	}
	if !p.RuntimeRunning() {
		if err := p.startRuntime(); err != nil {
			return err
		}
	}
	return p.StartKubelet()
}

// route sends the machine's pod range to its address, from the host.
func (p *PodMachine) route() error {
	out, err := exec.Command("ip", "route", "replace", p.PodCIDR, "via", p.nodeIP()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("machine %s: route to %s: %v: %s", p.Name, p.PodCIDR, err, bytes.TrimSpace(out))
	}
	return nil
}

func (p *PodMachine) startRuntime() error {
	d := p.Dir
	imports := []string{}
	for _, img := range p.pods.images {
		imports = append(imports, fmt.Sprintf("ctr --address %s -n k8s.io images import %s >/dev/null", p.socket(), img))
	}
	script := strings.Join([]string{
		"set -e",
		"hostname " + p.Name,
		"mount --bind " + d + "/root /var/lib/kubelet",
		"mount --bind " + d + "/log /var/log",
		// libcni's cache of each pod's network, the machine's own.
		"mount --bind " + d + "/cni-cache /var/lib/cni",
		// Where containerd pins its pods' network namespaces: the machine's own, so none
		// outlives the machine on the host.
		"mount -t tmpfs -o mode=0755 netns /run/netns",
		"mount --bind " + d + "/system-uuid /etc/machine-id",
		"if [ -e /sys/class/dmi/id/product_uuid ]; then mount --bind " + d + "/system-uuid /sys/class/dmi/id/product_uuid; fi",
		"mount --bind " + d + "/sysctl/overcommit_memory /proc/sys/vm/overcommit_memory",
		"mount --bind " + d + "/sysctl/panic /proc/sys/kernel/panic",
		"mount --bind " + d + "/sysctl/panic_on_oops /proc/sys/kernel/panic_on_oops",
		// Per network namespace: the machine routes its pods' traffic.
		"echo 1 >/proc/sys/net/ipv4/ip_forward",
		"rm -f " + p.socket(),
		"containerd --config " + d + "/containerd.toml >>" + d + "/containerd.log 2>&1 &",
		"while [ ! -S " + p.socket() + " ]; do sleep 0.05; done",
		strings.Join(imports, "\n"),
		p.pods.kubeProxy + " --config " + d + "/kube-proxy.yaml >>" + d + "/kube-proxy.log 2>&1 &",
		"echo ready >" + d + "/runtime-ready",
		"wait",
	}, "\n")
	_ = os.Remove(filepath.Join(d, "runtime-ready"))
	log, err := os.OpenFile(filepath.Join(d, "runtime.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+p.env.netns(p.Machine), "--",
		"unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", script)
	done, err := startInGroup(cmd, log)
	if err != nil {
		return fmt.Errorf("machine %s: runtime: %v", p.Name, err)
	}
	p.runtime, p.runtimeDone = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(d, "runtime-ready")); err == nil {
			return nil
		}
		if !p.RuntimeRunning() || time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(d, "runtime.log"))
			c, _ := os.ReadFile(filepath.Join(d, "containerd.log"))
			return fmt.Errorf("machine %s: containerd did not start:\n%s\n%s", p.Name, lastLines(string(b), 10), lastLines(string(c), 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StartKubelet starts the kubelet in the runtime's namespaces.
func (p *PodMachine) StartKubelet() error {
	if p.Running() {
		return nil
	}
	if !p.RuntimeRunning() {
		return fmt.Errorf("machine %s: its runtime is not running", p.Name)
	}
	log, err := os.OpenFile(filepath.Join(p.Dir, "kubelet.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "----- nodeguard-e2e: machine %s starts its kubelet (boot %s)\n", p.Name, p.BootID)
	args := append([]string{"--target", fmt.Sprint(p.runtime.Process.Pid), "--net", "--mount", "--uts", "--",
		p.env.kubelet}, p.kubeletArgs()...)
	cmd := exec.Command("nsenter", args...)
	done, err := startInGroup(cmd, log)
	if err != nil {
		return fmt.Errorf("machine %s: kubelet: %v", p.Name, err)
	}
	p.cmd, p.done = cmd, done
	return nil
}

// RestartKubelet stops the kubelet (SIGTERM) and starts it again; containers run on.
func (p *PodMachine) RestartKubelet() error {
	p.Machine.Stop()
	return p.StartKubelet()
}

// PowerOff stops everything at once, as pulling the plug does: the kubelet, every
// container, containerd and kube-proxy.
func (p *PodMachine) PowerOff() {
	if p.Running() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	if !p.RuntimeRunning() {
		return
	}
	ctr := func(args ...string) ([]byte, error) {
		return exec.Command("ctr", append([]string{"--address", p.socket(), "-n", "k8s.io"}, args...)...).Output()
	}
	if out, err := ctr("tasks", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(string(out)) {
			_, _ = ctr("tasks", "kill", "-s", "SIGKILL", id)
		}
	}
	_ = syscall.Kill(-p.runtime.Process.Pid, syscall.SIGKILL)
	<-p.runtimeDone
	// The shims outlive containerd by design (their own process groups).
	_ = exec.Command("pkill", "-9", "-f", "containerd-shim-runc-v2 .*-address "+regexp.QuoteMeta(p.socket())+"( |$)").Run()
}

// Reboot powers the machine off and boots it with a new boot id.
func (p *PodMachine) Reboot(bootID string) error {
	p.PowerOff()
	p.BootID = bootID
	return p.Boot()
}

// Destroy powers the machine off and removes its network and route.
func (p *PodMachine) Destroy() {
	p.PowerOff()
	if !p.Copy {
		_ = exec.Command("ip", "route", "del", p.PodCIDR).Run()
	}
	p.Machine.Destroy()
}
