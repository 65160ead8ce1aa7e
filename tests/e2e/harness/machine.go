package main

// Machines: a real kubelet (the pinned release's) with a fake CRI runtime, in its own
// network namespace (its own address on the cluster's bridge), mount namespace (its own
// /var/lib/kubelet, /var/log and system UUID) and UTS namespace (its own hostname),
// with its own machine-id and boot id files.
//
// Where the kubelet reads each identity value:
//   - machineID: --machine-id-file (a file of the machine's directory);
//   - bootID: --boot-id-file (the same);
//   - systemUUID: cadvisor reads /sys/class/dmi/id/product_uuid, and on a host without
//     DMI (a Firecracker VM, as CI's) falls back to the literal /etc/machine-id; the
//     machine's UUID file is bind-mounted over whichever the host has.
// The kubelet's kernel tunables (vm/overcommit_memory, kernel/panic,
// kernel/panic_on_oops) are bind-mounted inside the namespace with the values it
// wants, and protectKernelDefaults is on, so it never changes the host's.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// MachineSpec is what makes one machine.
type MachineSpec struct {
	Name       string // hostname, and so the node's name
	IP         string // the address on the bridge
	NodeIP     string // the InternalIP the kubelet reports (default IP), on loopback when it differs
	MachineID  string
	SystemUUID string
	BootID     string
	// StatusReport is the kubelet's nodeStatusReportFrequency (default 5m): how often it
	// writes its status when nothing changed.
	StatusReport string
	// Taint is registered with the Node (key=value:Effect), when set.
	Taint string
}

// Machine is one simulated machine: its directory holds its disk (the kubelet's
// root, certificates, kubeconfig) and its kubelet's log.
type Machine struct {
	MachineSpec
	Dir   string
	index int
	env   *machineEnv
	cmd   *exec.Cmd
	done  chan struct{}
	// networkUp: its namespace and veth are made, by this run.
	networkUp bool
}

// machineEnv is what every machine shares: the binaries, the cluster's CA and address.
type machineEnv struct {
	kubelet, fakecri string
	caFile           string
	server           string // https://10.250.0.1:6443
	bridge           string
	gateway          string
	root             string // where machine directories go
	next             int
}

func (e *machineEnv) netns(m *Machine) string { return fmt.Sprintf("ngm%d", m.index) }

// NewMachine prepares a machine's directory; bootstrap is the kubeconfig it joins with.
func (e *machineEnv) NewMachine(spec MachineSpec, bootstrap []byte) (*Machine, error) {
	e.next++
	m := &Machine{MachineSpec: spec, Dir: filepath.Join(e.root, fmt.Sprintf("%02d-%s", e.next, spec.Name)), index: e.next, env: e}
	for _, d := range []string{"root", "log", "pki", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(m.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(m.Dir, "bootstrap-kubelet.conf"), bootstrap, 0o600); err != nil {
		return nil, err
	}
	return m, m.writeIdentity()
}

// CopyOf makes a machine whose disk is a copy of from's (the kubelet's root,
// kubeconfig, certificates: what cloning a VM copies), with spec's identity.
func (e *machineEnv) CopyOf(from *Machine, spec MachineSpec) (*Machine, error) {
	e.next++
	m := &Machine{MachineSpec: spec, Dir: filepath.Join(e.root, fmt.Sprintf("%02d-%s-copy", e.next, spec.Name)), index: e.next, env: e}
	if out, err := exec.Command("cp", "-a", from.Dir, m.Dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copying %s: %v: %s", from.Dir, err, out)
	}
	_ = os.Remove(filepath.Join(m.Dir, "kubelet.log"))
	_ = os.Remove(filepath.Join(m.Dir, "cri.sock"))
	return m, m.writeIdentity()
}

func (m *Machine) writeIdentity() error {
	files := map[string]string{
		"machine-id":               m.MachineID + "\n",
		"boot_id":                  m.BootID + "\n",
		"system-uuid":              m.SystemUUID + "\n",
		"sysctl/overcommit_memory": "1\n",
		"sysctl/panic":             "10\n",
		"sysctl/panic_on_oops":     "1\n",
		"kubelet-config.yaml":      m.kubeletConfig(),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(m.Dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Forget removes the kubelet's credentials, as `kubeadm reset` does before a re-join.
func (m *Machine) ForgetCredentials() error {
	_ = os.Remove(filepath.Join(m.Dir, "kubelet.conf"))
	return os.RemoveAll(filepath.Join(m.Dir, "pki"))
}

func (m *Machine) nodeIP() string {
	if m.NodeIP != "" {
		return m.NodeIP
	}
	return m.IP
}

func (m *Machine) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%[1]s/cri.sock
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: ["none"]
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
makeIPTablesUtilChains: false
rotateCertificates: true
serverTLSBootstrap: false
readOnlyPort: 0
staticPodPath: %[1]s/manifests
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[2]s}
authorization: {mode: Webhook}
# Every machine's disk is a directory of the host's, shared with builds and other
# checkouts: the host's free space is no measure of a machine's, so disk pressure
# neither evicts pods nor taints the node, and image GC never removes the image
# loaded into the runtime (it cannot be pulled back).
evictionHard: {memory.available: 100Mi, nodefs.available: "0%%", nodefs.inodesFree: "0%%", imagefs.available: "0%%", imagefs.inodesFree: "0%%"}
imageGCHighThresholdPercent: 100
`, m.Dir, m.env.caFile) + m.statusReport()
}

func (m *Machine) statusReport() string {
	if m.StatusReport == "" {
		return ""
	}
	return "nodeStatusReportFrequency: " + m.StatusReport + "\n"
}

// Start brings the machine's network up (once) and starts fakecri and the kubelet.
func (m *Machine) Start() error {
	if m.Running() {
		return nil
	}
	if err := m.network(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(m.Dir, "manifests"), 0o755); err != nil {
		return err
	}
	if err := m.writeIdentity(); err != nil {
		return err
	}
	log, err := os.OpenFile(filepath.Join(m.Dir, "kubelet.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "----- nodeguard-e2e: machine %s starts (boot %s)\n", m.Name, m.BootID)
	d := m.Dir
	script := strings.Join([]string{
		"set -e",
		"hostname " + m.Name,
		"mount --bind " + d + "/root /var/lib/kubelet",
		"mount --bind " + d + "/log /var/log",
		"mount --bind " + d + "/system-uuid /etc/machine-id",
		"if [ -e /sys/class/dmi/id/product_uuid ]; then mount --bind " + d + "/system-uuid /sys/class/dmi/id/product_uuid; fi",
		"mount --bind " + d + "/sysctl/overcommit_memory /proc/sys/vm/overcommit_memory",
		"mount --bind " + d + "/sysctl/panic /proc/sys/kernel/panic",
		"mount --bind " + d + "/sysctl/panic_on_oops /proc/sys/kernel/panic_on_oops",
		"rm -f " + d + "/cri.sock",
		m.env.fakecri + " unix://" + d + "/cri.sock " + d + "/root &",
		"while [ ! -S " + d + "/cri.sock ]; do sleep 0.05; done",
		"exec " + strings.Join(append([]string{m.env.kubelet}, m.kubeletArgs()...), " "),
	}, "\n")
	cmd := exec.Command("nsenter", "--net=/run/netns/"+m.env.netns(m), "--",
		"unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", script)
	done, err := startInGroup(cmd, log)
	if err != nil {
		return fmt.Errorf("machine %s: %v", m.Name, err)
	}
	m.cmd, m.done = cmd, done
	return nil
}

// kubeletArgs are the kubelet's flags: everything else is in its config file.
func (m *Machine) kubeletArgs() []string {
	d := m.Dir
	args := []string{
		"--config=" + d + "/kubelet-config.yaml",
		"--bootstrap-kubeconfig=" + d + "/bootstrap-kubelet.conf",
		"--kubeconfig=" + d + "/kubelet.conf",
		"--cert-dir=" + d + "/pki",
		"--node-ip=" + m.nodeIP(),
		"--machine-id-file=" + d + "/machine-id",
		"--boot-id-file=" + d + "/boot_id",
	}
	if m.Taint != "" {
		args = append(args, "--register-with-taints="+m.Taint)
	}
	return args
}

// startInGroup starts cmd in a process group of its own (so that the whole machine can
// be stopped at once), killed if the harness dies, its output appended to log; the
// channel closes when it has exited, and log with it.
func startInGroup(cmd *exec.Cmd, log *os.File) (chan struct{}, error) {
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(done)
	}()
	return done, nil
}

func (m *Machine) Running() bool {
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Stop stops the kubelet and its runtime (SIGTERM to the group, SIGKILL after 10 s).
func (m *Machine) Stop() {
	if !m.Running() {
		return
	}
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
	// fakecri may outlive the kubelet's exit in the group.
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
}

// Reboot stops the machine and starts it with a new boot id.
func (m *Machine) Reboot(bootID string) error {
	m.Stop()
	m.BootID = bootID
	return m.Start()
}

// Readdress stops the kubelet, gives the machine another address (its DHCP lease
// changed), and starts it reporting that address.
func (m *Machine) Readdress(ip string) error {
	m.Stop()
	if err := m.address(ip); err != nil {
		return err
	}
	return m.Start()
}

// address gives the machine ip beside the addresses it has (already having it is no
// error), and makes it the one its kubelet reports.
func (m *Machine) address(ip string) error {
	peer := fmt.Sprintf("ngm%dn", m.index)
	if out, err := exec.Command("ip", "-n", m.env.netns(m), "addr", "replace", ip+"/24", "dev", peer).CombinedOutput(); err != nil {
		return fmt.Errorf("machine %s: adding %s: %v: %s", m.Name, ip, err, bytes.TrimSpace(out))
	}
	m.NodeIP = ip
	return nil
}

// Destroy stops the machine and removes its network namespace.
func (m *Machine) Destroy() {
	m.Stop()
	m.networkUp = false
	_ = exec.Command("ip", "netns", "del", m.env.netns(m)).Run()
	// The namespace may outlive its processes while its sockets linger, and its end
	// of the veth with it.
	_ = exec.Command("ip", "link", "del", fmt.Sprintf("ngm%dh", m.index)).Run()
}

// network makes the namespace, a veth into the bridge with the machine's address, a
// default route via the host, and the node IP on loopback when it differs.
func (m *Machine) network() error {
	if m.networkUp {
		return nil
	}
	ns := m.env.netns(m)
	host, peer := fmt.Sprintf("ngm%dh", m.index), fmt.Sprintf("ngm%dn", m.index)
	// A namespace of that name left by an interrupted run is not this machine's network.
	_ = exec.Command("ip", "netns", "del", ns).Run()
	_ = exec.Command("ip", "link", "del", host).Run()
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", ns},
		{"ip", "link", "set", host, "master", m.env.bridge, "up"},
		{"ip", "-n", ns, "addr", "add", m.IP + "/24", "dev", peer},
		{"ip", "-n", ns, "link", "set", peer, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", m.env.gateway},
	}
	if m.NodeIP != "" && m.NodeIP != m.IP {
		// On loopback: reported, never answered for on the bridge (no dummy
		// interfaces in CI's kernel).
		steps = append(steps, []string{"ip", "-n", ns, "addr", "add", m.NodeIP + "/32", "dev", "lo"})
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("machine %s: %s: %v: %s", m.Name, strings.Join(s, " "), err, bytes.TrimSpace(out))
		}
	}
	m.networkUp = true
	return nil
}

// Log is the kubelet's log (stderr: what journalctl -u kubelet shows).
func (m *Machine) Log() string {
	b, _ := os.ReadFile(filepath.Join(m.Dir, "kubelet.log"))
	return string(b)
}

// LogSize is the current length of the log, to read what came after.
func (m *Machine) LogSize() int {
	return len(m.Log())
}

// LogSince is the log after offset.
func (m *Machine) LogSince(offset int) string {
	l := m.Log()
	if offset > len(l) {
		return ""
	}
	return l[offset:]
}

// WaitLog waits until the log after offset has a line containing every one of parts.
func (m *Machine) WaitLog(offset int, timeout time.Duration, parts ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(m.LogSince(offset), "\n") {
			all := true
			for _, p := range parts {
				if !strings.Contains(line, p) {
					all = false
					break
				}
			}
			if all {
				return line, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("machine %s: no kubelet log line with %q within %s", m.Name, parts, timeout)
		}
		if !m.Running() {
			return "", fmt.Errorf("machine %s: its kubelet exited; no log line with %q", m.Name, parts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
