package main

// Scenarios with real kubelets: machines join by TLS bootstrap, clones of them are
// refused, and legitimate changes never are. Each asserts on the kubelet's own log
// and on the cluster's state.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeletRun is one run of the kubelet scenarios.
type kubeletRun struct {
	r        *Runner
	env      *machineEnv
	machines []*Machine
	// made: mount targets this run created on the host, removed at the end.
	made []string
	// steps of the scenario running now, reported as PASS/FAIL lines.
	scenario       string
	passed, failed int
}

func newKubeletRun(r *Runner, clusterBin, fakecri, dir string) (*kubeletRun, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Mount targets the machines bind their own directories on.
	var made []string
	for _, d := range []string{"/var/lib/kubelet", "/var/log", "/var/lib/cni"} {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			made = append(made, d)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return &kubeletRun{r: r, made: made, env: &machineEnv{
		kubelet: filepath.Join(clusterBin, "kubelet"), fakecri: fakecri,
		caFile: filepath.Join(r.cluster.dir, "pki", "ca.crt"), server: r.cluster.host,
		bridge: "nodeguard0", gateway: "10.250.0.1", root: dir,
	}}, nil
}

// bootstrapKubeconfig is a kubeconfig with a fresh bootstrap token, as `kubeadm join`
// writes /etc/kubernetes/bootstrap-kubelet.conf.
func (k *kubeletRun) bootstrapKubeconfig(tokenID string) ([]byte, error) {
	token, err := k.r.cluster.bootstrapToken(tokenID)
	if err != nil {
		return nil, err
	}
	if err := waitTokenAuthenticates(k.r.cluster, token, "system:bootstrap:"+tokenID); err != nil {
		return nil, err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: k.r.cluster.host, CertificateAuthorityData: k.r.cluster.caPEM}
	cfg.AuthInfos["tls-bootstrap-token-user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["tls-bootstrap-token-user@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "tls-bootstrap-token-user"}
	cfg.CurrentContext = "tls-bootstrap-token-user@kubernetes"
	return clientcmd.Write(*cfg)
}

func (k *kubeletRun) machine(spec MachineSpec, tokenID string) (*Machine, error) {
	boot, err := k.bootstrapKubeconfig(tokenID)
	if err != nil {
		return nil, err
	}
	m, err := k.env.NewMachine(spec, boot)
	if err != nil {
		return nil, err
	}
	k.machines = append(k.machines, m)
	return m, nil
}

func (k *kubeletRun) copyOf(from *Machine, spec MachineSpec) (*Machine, error) {
	m, err := k.env.CopyOf(from, spec)
	if err != nil {
		return nil, err
	}
	k.machines = append(k.machines, m)
	return m, nil
}

// cleanup stops and removes every machine.
func (k *kubeletRun) cleanup() {
	for _, m := range k.machines {
		m.Destroy()
	}
	k.machines = nil
}

// removeMountTargets removes the (empty) mount targets the run created.
func (k *kubeletRun) removeMountTargets() {
	for _, d := range k.made {
		_ = os.Remove(d)
	}
}

// step reports one assertion of the current scenario.
func (k *kubeletRun) step(name string, err error, info ...string) bool {
	if err == nil {
		k.passed++
		fmt.Printf("PASS %s / %s\n", k.scenario, name)
		for _, i := range info {
			fmt.Println(indent(i, "    "))
		}
		return true
	}
	k.failed++
	fmt.Printf("FAIL %s / %s\n", k.scenario, name)
	fmt.Println(indent(err.Error(), "    "))
	for _, i := range info {
		fmt.Println(indent(i, "    "))
	}
	for _, m := range k.machines {
		if l := m.Log(); l != "" {
			fmt.Printf("    kubelet log of %s (%s), last lines:\n", m.Name, m.Dir)
			fmt.Println(indent(lastLines(l, 15), "    | "))
		}
	}
	return false
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitNodeReady waits until the Node exists, is Ready, and reports the machine's boot.
func (k *kubeletRun) waitNodeReady(m *Machine, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no Node"
	for {
		cx, cancel := ctx()
		n, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, m.Name, metav1.GetOptions{})
		cancel()
		if err == nil {
			ready := readyStatus(n)
			last = fmt.Sprintf("Ready=%s boot %s", ready, n.Status.NodeInfo.BootID)
			if ready == corev1.ConditionTrue && n.Status.NodeInfo.BootID == m.BootID {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready with boot %s within %s: %s", m.Name, m.BootID, timeout, last)
		}
		if !m.Running() {
			return fmt.Errorf("machine %s: its kubelet exited (last: %s)", m.Name, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readyStatus(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return corev1.ConditionUnknown
}

func heartbeatOf(n *corev1.Node) time.Time {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.LastHeartbeatTime.Time
		}
	}
	return time.Time{}
}

// noRefusal says whether the machine's log since offset holds no refusal or warning
// from nodeguard.
func noRefusal(m *Machine, offset int) error {
	var bad []string
	for _, line := range strings.Split(m.LogSince(offset), "\n") {
		if strings.Contains(line, "nodeguard [") || strings.Contains(line, "nodeguard.io") {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("kubelet %s logged nodeguard's answers:\n%s", m.Name, strings.Join(bad, "\n"))
	}
	return nil
}

// findings is nodeguard's count of refusals and warnings it answered.
func (k *kubeletRun) findings() float64 {
	m, err := k.r.ng.Metrics()
	if err != nil {
		return -1
	}
	return m["nodeguard_admission_findings_total"]
}

// RunKubeletScenarios runs every kubelet scenario whose name contains only.
func (r *Runner) RunKubeletScenarios(clusterBin, fakecri, dir, only string, long bool) (passed, failed int) {
	k, err := newKubeletRun(r, clusterBin, fakecri, dir)
	if err != nil {
		fmt.Printf("FAIL kubelets / setup\n    %v\n", err)
		return 0, 1
	}
	for _, sc := range kubeletScenarios {
		if only != "" && !strings.Contains(sc.name, only) && !strings.Contains("kubelets", only) {
			continue
		}
		if sc.long && !long {
			continue
		}
		k.scenario = "kubelets: " + sc.name
		if err := r.ng.Start(r.readyWait); err != nil {
			k.step("nodeguard starts", err)
			continue
		}
		if err := r.cluster.Clear(); err != nil {
			k.step("the cluster is cleared", err)
			continue
		}
		sc.run(k)
		k.cleanup()
	}
	k.removeMountTargets()
	return k.passed, k.failed
}

type kubeletScenario struct {
	name string
	run  func(k *kubeletRun)
	// long: minutes of waiting, run only with --long (not in CI).
	long bool
}

var kubeletScenarios = []kubeletScenario{
	{name: "a machine joins by TLS bootstrap and registers", run: scenarioJoin},
	{name: "a clone under a new name is refused at registration", run: scenarioCloneNewName},
	{name: "a clone that keeps the name and re-joins with a token is refused its CSR", run: scenarioCloneSameNameToken},
	{name: "the incident: a perfect copy started while the original runs", run: scenarioIncident},
	{name: "the incident's damage: what a perfect copy writes of the original's pods", run: scenarioIncidentPods},
	{name: "a reboot, a kubelet restart and a new address are never refused", run: scenarioOneMachineChanges},
	{name: "a node deleted, and a new machine joins under its name", run: scenarioRejoinAfterDelete},
	{name: "a machine replaces a node that has gone NotReady", run: scenarioReplaceNotReady},
	{name: "the clone that waits: refused while the original runs, and while it reboots", run: scenarioCloneWaits},
	{name: "a refused bootstrap: the kubelet gives up after 5 minutes", run: scenarioBootstrapGivesUp, long: true},
}

var worker1 = MachineSpec{Name: "worker-1", IP: "10.250.0.11", MachineID: "11c1f8e2fbf5540cd8ff218ef016ba11",
	SystemUUID: "1139a350-3cd4-400f-875d-c270379811b0", BootID: "11a0427b-40ea-4cf5-9f24-53d6e200ef11"}

func scenarioJoin(k *kubeletRun) {
	m, err := k.machine(worker1, "abcdef")
	if !k.step("worker-1's machine is prepared", err) {
		return
	}
	before := k.findings()
	if !k.step("its kubelet starts", m.Start()) {
		return
	}
	line, err := m.WaitLog(0, 60*time.Second, "Successfully registered node")
	if !k.step("it bootstraps with the token and registers (its log says so)", err, line) {
		return
	}
	if !k.step("the Node is Ready with its boot", k.waitNodeReady(m, 60*time.Second)) {
		return
	}
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	csrs, err := k.r.cluster.admin.CertificatesV1().CertificateSigningRequests().List(cx, metav1.ListOptions{})
	issued := []string{}
	if err == nil {
		for _, c := range csrs.Items {
			if len(c.Status.Certificate) > 0 {
				issued = append(issued, fmt.Sprintf("%s by %s (%s, %s)", c.Name, c.Spec.Username, c.Spec.SignerName, approver(&c)))
			}
		}
	}
	if err == nil && len(issued) == 0 {
		err = fmt.Errorf("no issued CSR")
	}
	k.step("its client CSR was approved and signed by kube-controller-manager", err, issued...)
	w := &WaitFor{NodeIdentity: "worker-1", Boots: intp(1)}
	res := k.r.waitFor(w)
	var werr error
	if !res.Pass {
		werr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	k.step("nodeguard recorded its NodeIdentity", werr, res.Info...)
	var derr error
	if after := k.findings(); after != before {
		derr = fmt.Errorf("nodeguard_admission_findings_total went from %v to %v", before, after)
	}
	k.step("nothing was refused or warned of", firstErr(derr, noRefusal(m, 0)))
}

func intp(i int) *int { return &i }

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// waitTokenAuthenticates waits until the API server accepts a new bootstrap token.
func waitTokenAuthenticates(c *Cluster, token, user string) error {
	cl, err := c.tokenClient(token)
	if err != nil {
		return err
	}
	return waitAuthenticated(cl, user)
}

// joined starts a machine and waits until it is a Ready node nodeguard recorded.
func (k *kubeletRun) joined(spec MachineSpec, tokenID string) (*Machine, bool) {
	m, err := k.machine(spec, tokenID)
	if !k.step(spec.Name+"'s machine is prepared", err) {
		return nil, false
	}
	if !k.step(spec.Name+" joins and is Ready", firstErr(m.Start(), k.waitNodeReady(m, 90*time.Second))) {
		return nil, false
	}
	res := k.r.waitFor(&WaitFor{NodeIdentity: spec.Name, Boots: intp(1)})
	if !res.Pass {
		k.step("nodeguard records "+spec.Name, fmt.Errorf("%s", strings.Join(res.Details, "; ")))
		return nil, false
	}
	return m, true
}

// leaseRenewed waits until the machine's node Lease is renewed after since.
func (k *kubeletRun) leaseRenewed(name string, since time.Time, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cx, cancel := ctx()
		l, err := k.r.cluster.admin.CoordinationV1().Leases("kube-node-lease").Get(cx, name, metav1.GetOptions{})
		cancel()
		if err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.After(since) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the Lease of %s was not renewed within %s (%v)", name, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (k *kubeletRun) nodeAbsent(name string) error {
	cx, cancel := ctx()
	defer cancel()
	if _, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, name, metav1.GetOptions{}); err == nil {
		return fmt.Errorf("node %s exists", name)
	}
	return nil
}

// A clone under a new name: worker-1's disk on a new VM, hostname worker-5, re-joined
// with a token as `kubeadm join` does (kubelet.conf and pki removed: a copied
// kubelet.conf would carry worker-1's certificate, which NodeRestriction refuses for
// another name before any webhook).
func scenarioCloneNewName(k *kubeletRun) {
	orig, origLog, clone, started, ok := k.rejoiningClone("worker-5", "10.250.0.15")
	if !ok {
		return
	}
	line, err := clone.WaitLog(0, 90*time.Second, "Unable to register node with API server",
		`admission webhook \"nodes.nodeguard.io\" denied the request: nodeguard [machine-id]: machine-id 11c1f8e2fbf5540cd8ff218ef016ba11 is already used by node \"worker-1\"; this machine looks like a clone of worker-1`)
	k.step("its registration is refused with nodeguard's message in its log", err,
		fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), line))
	k.step("no node worker-5 exists", k.nodeAbsent("worker-5"))
	k.originalUnharmed(orig, origLog)
}

// The copy keeps the name worker-1 and re-joins with a bootstrap token: its CSR for
// worker-1's credentials is refused while worker-1 runs.
func scenarioCloneSameNameToken(k *kubeletRun) {
	orig, origLog, clone, started, ok := k.rejoiningClone("worker-1", "10.250.0.16")
	if !ok {
		return
	}
	line, err := clone.WaitLog(0, 90*time.Second,
		`admission webhook \"csrs.nodeguard.io\" denied the request: nodeguard [name-takeover]: a bootstrap token asks for the credentials of node \"worker-1\", which a kubelet on another machine is running`)
	k.step("its bootstrap CSR is refused with nodeguard's message in its log", err,
		fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), line))
	k.originalUnharmed(orig, origLog)
}

// rejoiningClone joins worker-1, copies its disk to a new VM (new system UUID, boot and
// address; /etc/machine-id kept) with hostname name, removes worker-1's credentials for
// a re-join, and starts the clone's kubelet. origLog is the original's log offset
// before the clone existed.
func (k *kubeletRun) rejoiningClone(name, ip string) (orig *Machine, origLog int, clone *Machine, started time.Time, ok bool) {
	orig, ok = k.joined(worker1, "abcdef")
	if !ok {
		return nil, 0, nil, time.Time{}, false
	}
	origLog = orig.LogSize()
	clone, err := k.copyOf(orig, MachineSpec{Name: name, IP: ip, MachineID: worker1.MachineID,
		SystemUUID: "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61", BootID: "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60"})
	if err == nil {
		err = clone.ForgetCredentials()
	}
	if !k.step(fmt.Sprintf("worker-1's disk is copied to a machine named %s, its credentials removed for a re-join", name), err) {
		return nil, 0, nil, time.Time{}, false
	}
	started = time.Now()
	if !k.step("the clone's kubelet starts", clone.Start()) {
		return nil, 0, nil, time.Time{}, false
	}
	return orig, origLog, clone, started, true
}

// originalUnharmed checks that the original keeps renewing its Lease, stays Ready and
// was refused nothing since offset of its log.
func (k *kubeletRun) originalUnharmed(orig *Machine, offset int) {
	k.step("the original keeps renewing its Lease", k.leaseRenewed("worker-1", time.Now(), 30*time.Second))
	k.step("the original was refused nothing", firstErr(noRefusal(orig, offset), k.waitNodeReady(orig, 5*time.Second)))
}

// The incident: a full copy (same name, kubeconfig, client certificate, machine-id,
// system UUID and reported address; only the boot id differs) started while the
// original runs.
func scenarioIncident(k *kubeletRun) {
	orig, ok := k.joined(worker1, "abcdef")
	if !ok {
		return
	}
	origLog := orig.LogSize()
	copySpec := perfectCopy(worker1)
	cp, err := k.copyOf(orig, copySpec)
	if !k.step("worker-1's disk is copied whole (kubelet.conf, client certificate, machine-id, system UUID)", err) {
		return
	}
	started := time.Now()
	if !k.step("the copy's kubelet starts while the original runs", cp.Start()) {
		return
	}
	line, err := cp.WaitLog(0, 120*time.Second, "denied the request: nodeguard [two-kubelets]")
	took := time.Since(started)
	k.step("the copy is refused [two-kubelets], in its own log", err, fmt.Sprintf("after %s: %s", took.Round(time.Millisecond), line))
	if err != nil {
		return
	}
	var within error
	if took > 2*10*time.Second+5*time.Second {
		within = fmt.Errorf("first refusal after %s, more than two status periods (2 x 10 s)", took.Round(time.Millisecond))
	}
	k.step("within two status periods of the copy's start", within, fmt.Sprintf("%s", took.Round(time.Millisecond)))
	res := k.r.waitFor(&WaitFor{NodeIdentity: "worker-1", Conflict: boolp(true)})
	var cerr error
	if !res.Pass {
		cerr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	out, kerr := exec.Command(k.r.kubectl, "--kubeconfig", k.r.cluster.adminKubeconfig, "get", "nodeidentities").CombinedOutput()
	k.step("kubectl get nodeidentities shows the conflict", firstErr(cerr, kerr, conflictShown(string(out))), string(out))
	k.step("the original keeps renewing its Lease", k.leaseRenewed("worker-1", time.Now(), 30*time.Second))
	k.step("the original was refused nothing", noRefusal(orig, origLog))

	cpLog := cp.LogSize()
	cp.Stop()
	err = cp.Start()
	if err == nil {
		line, err = cp.WaitLog(cpLog, 60*time.Second, "Unable to register node with API server",
			`admission webhook \"nodes.nodeguard.io\" denied the request: nodeguard [two-kubelets]`)
	}
	k.step("the copy's kubelet restarts: its re-registration is refused, in its log", err, line)

	cp.Stop()
	res = k.r.forget("worker-1", nil)
	var ferr error
	if !res.Pass {
		ferr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	k.step("the copy is stopped and nodeguard forget worker-1 runs", ferr, res.Info...)
	res = k.r.waitFor(&WaitFor{NodeIdentity: "worker-1", Conflict: boolp(false)})
	var clean error
	if !res.Pass {
		clean = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	k.step("the conflict is gone", clean, res.Info...)
	after := orig.LogSize()
	k.step("worker-1 reports the original's boot again and stays Ready", k.waitNodeReady(orig, 60*time.Second))
	time.Sleep(15 * time.Second)
	k.step("the original is refused nothing afterwards", firstErr(noRefusal(orig, after), k.nodeBootIs("worker-1", worker1.BootID)))
}

func (k *kubeletRun) nodeBootIs(name, boot string) error {
	cx, cancel := ctx()
	defer cancel()
	n, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if n.Status.NodeInfo.BootID != boot {
		return fmt.Errorf("node %s reports boot %s, not %s", name, n.Status.NodeInfo.BootID, boot)
	}
	return nil
}

func boolp(b bool) *bool { return &b }

// perfectCopy is a copy of the machine identical but for its boot: it reports the same
// InternalIP (held on its loopback) while reaching the cluster from its own address.
func perfectCopy(of MachineSpec) MachineSpec {
	c := of
	c.IP, c.NodeIP = "10.250.0.21", of.IP
	c.BootID = "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60"
	return c
}

// conflictShown says whether `kubectl get nodeidentities` prints a CONFLICT for worker-1.
func conflictShown(out string) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		return fmt.Errorf("no NodeIdentity listed")
	}
	header := lines[0]
	col := strings.Index(header, "CONFLICT")
	if col < 0 {
		return fmt.Errorf("no CONFLICT column")
	}
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "worker-1 ") && len(l) > col && strings.TrimSpace(l[col:]) != "" && !strings.HasPrefix(strings.TrimSpace(l[col:]), "<none>") {
			return nil
		}
	}
	return fmt.Errorf("worker-1's CONFLICT column is empty")
}

// legitimate checks that since offset the machine was refused and warned nothing, in
// its log and in nodeguard's counters.
func (k *kubeletRun) legitimate(m *Machine, offset int, findingsBefore float64) error {
	if err := noRefusal(m, offset); err != nil {
		return err
	}
	if after := k.findings(); after != findingsBefore {
		return fmt.Errorf("nodeguard_admission_findings_total went from %v to %v", findingsBefore, after)
	}
	return nil
}

func (k *kubeletRun) nodeAddressIs(name, ip string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cx, cancel := ctx()
		n, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, name, metav1.GetOptions{})
		cancel()
		if err == nil {
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP && a.Address == ip {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s does not report InternalIP %s within %s", name, ip, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func scenarioOneMachineChanges(k *kubeletRun) {
	m, ok := k.joined(worker1, "abcdef")
	if !ok {
		return
	}
	findings := k.findings()
	off := m.LogSize()
	err := m.Reboot("5d6e7f80-91a2-4b3c-8d4e-5f60718293a4")
	k.step("worker-1 reboots: a new boot id, its kubelet restarted", firstErr(err, k.waitNodeReady(m, 60*time.Second), k.legitimate(m, off, findings)))
	res := k.r.waitFor(&WaitFor{NodeIdentity: "worker-1", Boots: intp(2)})
	var rerr error
	if !res.Pass {
		rerr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	k.step("nodeguard records the second boot, no conflict", firstErr(rerr, k.noConflict("worker-1")), res.Info...)

	off = m.LogSize()
	m.Stop()
	err = m.Start()
	if err == nil {
		_, err = m.WaitLog(off, 60*time.Second, "Node was previously registered")
	}
	k.step("its kubelet restarts without a reboot (and re-sends its registration)", firstErr(err, k.waitNodeReady(m, 60*time.Second), k.legitimate(m, off, findings)))

	off = m.LogSize()
	err = m.Readdress("10.250.0.111")
	k.step("its address changes", firstErr(err, k.nodeAddressIs("worker-1", "10.250.0.111", 60*time.Second), k.waitNodeReady(m, 30*time.Second), k.legitimate(m, off, findings)))
	time.Sleep(3 * time.Second)
	k.step("still no conflict, nothing refused or warned of", firstErr(k.noConflict("worker-1"), k.legitimate(m, 0, findings)))
}

func (k *kubeletRun) noConflict(name string) error {
	if v := k.r.nodeIdentity(name); v.hasConflict() {
		return fmt.Errorf("%s", k.r.describe(v))
	}
	return nil
}

var worker2 = MachineSpec{Name: "worker-2", IP: "10.250.0.12", MachineID: "12c1f8e2fbf5540cd8ff218ef016ba12",
	SystemUUID: "1239a350-3cd4-400f-875d-c270379812b0", BootID: "12a0427b-40ea-4cf5-9f24-53d6e200ef12"}

// A new machine of its own (new machine-id, UUID, address) joining under a name.
func newMachineAs(name, ip string) MachineSpec {
	return MachineSpec{Name: name, IP: ip, MachineID: "4de3b2a1c0f94e8d7c6b5a4938271605",
		SystemUUID: "7e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a21", BootID: "4e5f6071-8293-4a4b-9c5d-6e7f80910a1b"}
}

func scenarioRejoinAfterDelete(k *kubeletRun) {
	old, ok := k.joined(worker1, "abcdef")
	if !ok {
		return
	}
	old.Stop()
	cx, cancel := ctx()
	err := k.r.cluster.admin.CoreV1().Nodes().Delete(cx, "worker-1", metav1.DeleteOptions{})
	cancel()
	if !k.step("worker-1's machine is retired and node worker-1 deleted", err) {
		return
	}
	findings := k.findings()
	m, err := k.machine(newMachineAs("worker-1", "10.250.0.41"), "07401b")
	if !k.step("a new machine is prepared as worker-1", err) {
		return
	}
	err = m.Start()
	k.step("it joins under the name, with nothing refused or warned of", firstErr(err, k.waitNodeReady(m, 90*time.Second), k.legitimate(m, 0, findings)))
}

// withConfig runs a scenario with nodeguard restarted on its own configuration, then
// restarts it on the shipped one.
func (k *kubeletRun) withConfig(config string, run func()) {
	restart := func(config string) error {
		if err := k.r.ng.Stop(); err != nil {
			return err
		}
		if err := k.r.configure(config); err != nil {
			return err
		}
		return k.r.ng.Start(k.r.readyWait)
	}
	if !k.step("nodeguard restarts with "+strings.TrimSpace(config), restart(config)) {
		return
	}
	run()
	if err := restart(""); err != nil {
		k.step("nodeguard restarts with the shipped configuration", err)
	}
}

// A machine replaces a node whose machine died, without the node being deleted: it is
// another machine (its own UUID, its own machine-id), refused while the node's status
// was written within the heartbeat timeout, let through once it was not. Not Ready alone
// proves nothing: a kubelet's status writes do.
func scenarioReplaceNotReady(k *kubeletRun) {
	k.withConfig("heartbeatTimeout: 1m\n", func() {
		old, ok := k.joined(worker2, "abcdef")
		if !ok {
			return
		}
		old.Stop()
		stopped := time.Now()
		// The node lifecycle controller marks it Unknown after nodeMonitorGracePeriod (50 s).
		deadline := time.Now().Add(120 * time.Second)
		var nerr error
		for {
			cx, cancel := ctx()
			n, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, "worker-2", metav1.GetOptions{})
			cancel()
			if err == nil && readyStatus(n) != corev1.ConditionTrue {
				break
			}
			if time.Now().After(deadline) {
				nerr = fmt.Errorf("worker-2 still Ready 120 s after its kubelet stopped")
				break
			}
			time.Sleep(time.Second)
		}
		if !k.step("worker-2's machine dies and the node lifecycle controller marks it NotReady", nerr,
			fmt.Sprintf("after %s", time.Since(stopped).Round(time.Second))) {
			return
		}
		m, err := k.machine(newMachineAs("worker-2", "10.250.0.42"), "07401b")
		if !k.step("a replacement machine is prepared as worker-2", err) {
			return
		}
		err = m.Start()
		err = firstErr(err, k.waitNodeReady(m, 150*time.Second))
		// Its fast status update after turning ready may patch the existing Node before its
		// registration CREATE is sent: wait for both.
		if err == nil {
			_, err = m.WaitLog(0, 60*time.Second, "Node was previously registered")
		}
		k.step("it joins under the name once worker-2 has had no status written for the timeout", err,
			fmt.Sprintf("Ready %s after the old machine stopped", time.Since(stopped).Round(time.Second)))
		// What its kubelet logged of nodeguard: refusals while the old status was recent,
		// then the warnings of the takeover (which ones depends on the kubelet's order).
		known := []string{
			`nodeguard [name-takeover]: node \"worker-2\" is registered to another machine that is running`,
			`nodeguard [name-takeover]: a bootstrap token asks for the credentials of node \"worker-2\", which a kubelet on another machine is running`,
			`"Warning: nodeguard [name-takeover]: taking over node \"worker-2\" from another machine (no status for `,
			`"Warning: nodeguard [identity-drift]: node \"worker-2\" changed system UUID (no status for `,
		}
		got := nodeguardLines(m)
		var werr error
		warned := 0
		for _, line := range strings.Split(got, "\n") {
			if line == "" {
				continue
			}
			ok := false
			for i, part := range known {
				if strings.Contains(line, part) {
					ok = true
					if i > 1 {
						warned++
					}
				}
			}
			if !ok {
				werr = fmt.Errorf("an unexpected nodeguard line: %s", line)
			}
		}
		if werr == nil && warned == 0 {
			werr = fmt.Errorf("no nodeguard warning of the takeover in its log")
		}
		k.step("its kubelet logs nodeguard's refusals while worker-2 ran, then its warnings of the takeover", werr,
			"its log's nodeguard lines:\n"+got)
	})
}

// The founding incident, left running: the clone has worker-1's disk and credentials
// and its own VM UUID. Refused while worker-1 runs, its kubelet retries for ever. Once
// worker-1 wrote its status after that refusal, two machines are proven, and the clone
// stays refused when worker-1 reboots and writes nothing for longer than the heartbeat
// timeout; worker-1 itself registers and reports again at once.
func scenarioCloneWaits(k *kubeletRun) {
	k.withConfig("heartbeatTimeout: 1m\n", func() {
		spec := worker1
		// Its status written every 20 s when nothing changes (default 5 min), so that the
		// proof the scenario waits for comes within seconds.
		spec.StatusReport = "20s"
		orig, ok := k.joined(spec, "abcdef")
		if !ok {
			return
		}
		origLog := orig.LogSize()
		cloneSpec := spec
		cloneSpec.IP = "10.250.0.17"
		cloneSpec.SystemUUID = "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61"
		cloneSpec.BootID = "c10e0000-5b7a-4d8e-a6f1-0b2c3d4e5f60"
		clone, err := k.copyOf(orig, cloneSpec)
		if !k.step("worker-1's disk and credentials are copied to a VM with its own UUID", err) {
			return
		}
		started := time.Now()
		if !k.step("the clone's kubelet starts while worker-1 runs", clone.Start()) {
			return
		}
		refusal := `admission webhook \"nodes.nodeguard.io\" denied the request: nodeguard [name-takeover]: node \"worker-1\" is registered to another machine that is running`
		line, err := clone.WaitLog(0, 60*time.Second, "Unable to register node with API server", refusal)
		k.step("its registration is refused [name-takeover], in its log", err,
			fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), line))
		res := k.r.waitFor(&WaitFor{NodeIdentity: "worker-1", Refused: intp(1)})
		k.step("the ledger records the refused machine", resultErr(res), res.Info...)
		// The proof: worker-1's next status write, within a report period.
		proofWait := time.Now()
		var perr error
		for {
			if v := k.r.nodeIdentity("worker-1"); v.proven == 1 {
				break
			}
			if time.Since(proofWait) > 60*time.Second {
				perr = fmt.Errorf("not proven within 60 s: %s", k.r.describe(k.r.nodeIdentity("worker-1")))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		k.step("worker-1 writes its status: two machines proven", perr,
			fmt.Sprintf("%s after the clone started", time.Since(started).Round(time.Second)))

		// worker-1 reboots and stays down longer than the heartbeat timeout.
		down := orig.LogSize()
		orig.Stop()
		stopped := time.Now()
		cloneLog := clone.LogSize()
		leftReady := true
		for time.Since(stopped) < 100*time.Second {
			cx, cancel := ctx()
			n, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, "worker-1", metav1.GetOptions{})
			cancel()
			if err == nil && readyStatus(n) != corev1.ConditionTrue {
				leftReady = false
			}
			time.Sleep(2 * time.Second)
		}
		readiness := "stayed Ready throughout (the refused clone renews its Lease)"
		if !leftReady {
			readiness = "went NotReady"
		}
		during := clone.LogSince(cloneLog)
		refusals := strings.Count(during, "denied the request: nodeguard [name-takeover]")
		var cerr error
		switch {
		case strings.Contains(during, "Successfully registered node") || strings.Contains(during, "Node was previously registered"):
			cerr = fmt.Errorf("the clone registered while worker-1 was down")
		case refusals == 0:
			cerr = fmt.Errorf("no refusal in the clone's log while worker-1 was down")
		case !strings.Contains(during, "stays refused for the name even while worker-1 is down"):
			cerr = fmt.Errorf("the clone's refusals do not say it stays refused")
		}
		k.step("the clone retries while worker-1 is down 100 s, and is refused every time", firstErr(cerr, noAdmitted(clone, cloneLog)),
			fmt.Sprintf("%d refusals in its log; worker-1 %s", refusals, readiness))
		k.step("the Node still holds worker-1's machine", k.nodeUUIDIs("worker-1", worker1.SystemUUID))

		// worker-1 comes back with a new boot.
		orig.BootID = "1b007b00-40ea-4cf5-9f24-53d6e200ef11"
		restarted := time.Now()
		err = orig.Start()
		err = firstErr(err, k.nodeBootIsWithin("worker-1", orig.BootID, 60*time.Second))
		k.step("worker-1 reboots, registers and reports its new boot", firstErr(err, noRefusal(orig, down)),
			fmt.Sprintf("its status written %s after its kubelet started, %s after it stopped",
				time.Since(restarted).Round(time.Millisecond), time.Since(stopped).Round(time.Second)))
		after := clone.LogSize()
		time.Sleep(20 * time.Second)
		k.step("the clone is still refused, and worker-1 refused nothing",
			firstErr(noAdmitted(clone, after), noRefusal(orig, origLog), k.waitNodeReady(orig, 5*time.Second)))
		clone.Stop()
	})
}

// noAdmitted says whether the machine's kubelet registered since offset.
func noAdmitted(m *Machine, offset int) error {
	log := m.LogSince(offset)
	for _, mark := range []string{"Successfully registered node", "Node was previously registered"} {
		if strings.Contains(log, mark) {
			return fmt.Errorf("kubelet %s registered: %q in its log", m.Name, mark)
		}
	}
	return nil
}

func resultErr(res StepResult) error {
	if res.Pass {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(res.Details, "; "))
}

func (k *kubeletRun) nodeUUIDIs(name, uuid string) error {
	cx, cancel := ctx()
	defer cancel()
	n, err := k.r.cluster.admin.CoreV1().Nodes().Get(cx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if n.Status.NodeInfo.SystemUUID != uuid {
		return fmt.Errorf("node %s reports system UUID %s, not %s", name, n.Status.NodeInfo.SystemUUID, uuid)
	}
	return nil
}

func (k *kubeletRun) nodeBootIsWithin(name, boot string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := k.nodeBootIs(name, boot)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// noDenial says whether the machine's log since offset holds no refusal by nodeguard.
func noDenial(m *Machine, offset int) error {
	for _, line := range strings.Split(m.LogSince(offset), "\n") {
		if strings.Contains(line, "denied the request: nodeguard") {
			return fmt.Errorf("kubelet %s was refused: %s", m.Name, line)
		}
	}
	return nil
}

func nodeguardLines(m *Machine) string {
	var out []string
	for _, l := range strings.Split(m.Log(), "\n") {
		if strings.Contains(l, "nodeguard [") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The incident's damage: pods bound to the original, then the perfect copy started.
// The audit log tells the two machines apart by source address (which no admission
// webhook sees) and counts every write of the copy the API server accepted, before
// nodeguard refuses it and after.
func scenarioIncidentPods(k *kubeletRun) {
	orig, ok := k.joined(worker1, "abcdef")
	if !ok {
		return
	}
	ns := "incident"
	err := k.podsOn(ns, []*Machine{orig}, 3, fakeImage, "")
	_, desc := k.pods(ns)
	if !k.step("a Deployment of 3 replicas pinned to worker-1 runs (on the fake runtime)", err, desc) {
		return
	}

	copySpec := perfectCopy(worker1)
	cp, err := k.copyOf(orig, copySpec)
	if !k.step("worker-1's disk is copied whole", err) {
		return
	}
	t0 := time.Now()
	if !k.step("the copy starts while the original runs", cp.Start()) {
		return
	}
	_, err = cp.WaitLog(0, 120*time.Second, "denied the request: nodeguard [two-kubelets]")
	t1 := time.Now()
	if !k.step("the copy is refused [two-kubelets]", err, fmt.Sprintf("after %s", t1.Sub(t0).Round(time.Millisecond))) {
		return
	}
	time.Sleep(40 * time.Second)
	t2 := time.Now()
	cp.Stop()
	time.Sleep(time.Second) // the audit log is written after the answer
	events, err := readAudit(os.Getenv("CLUSTER_AUDIT_LOG"))
	if !k.step("the API server's audit log is read", err) {
		return
	}
	before := countWrites(events, copySpec.IP, t0, t1)
	after := countWrites(events, copySpec.IP, t1, t2)
	origAfter := countWrites(events, worker1.IP, t1, t2)
	info := []string{
		fmt.Sprintf("the copy, start to first refusal (%s): %s", t1.Sub(t0).Round(time.Second), before),
		fmt.Sprintf("the copy, the %s after: %s", t2.Sub(t1).Round(time.Second), after),
		fmt.Sprintf("the original, the same %s: %s", t2.Sub(t1).Round(time.Second), origAfter),
	}
	var nerr error
	if n := after.accepted("patch nodes/status"); n > 0 {
		nerr = fmt.Errorf("%d node status writes of the copy accepted after its first refusal", n)
	}
	k.step("after the refusal no node status write of the copy is accepted", nerr, info...)
	// What tells the copy's pod writes apart, if anything: the audit log's user and its
	// credential id, against the original's.
	k.step("what the copy's pod writes look like to admission", nil, podWriteSignals(events, copySpec.IP, worker1.IP, t0, t2)...)
	_, desc = k.pods(ns)
	k.step("the pods after the copy stopped", nil, desc)
}

// podWriteSignals compares what admission is shown of the two machines' pod status
// writes: user and credential id.
func podWriteSignals(events []auditEvent, copyIP, origIP string, from, to time.Time) []string {
	seen := map[string]map[string]bool{copyIP: {}, origIP: {}}
	for _, e := range events {
		if e.ObjectRef.Resource != "pods" || e.ObjectRef.Subresource != "status" || e.StageTimestamp.Before(from) || !e.StageTimestamp.Before(to) {
			continue
		}
		for ip := range seen {
			if e.from(ip) {
				seen[ip][fmt.Sprintf("user %s, credential %v", e.User.Username, e.User.Extra["authentication.kubernetes.io/credential-id"])] = true
			}
		}
	}
	var out []string
	for _, ip := range []string{copyIP, origIP} {
		var who []string
		for w := range seen[ip] {
			who = append(who, w)
		}
		sort.Strings(who)
		out = append(out, fmt.Sprintf("pods/status writes from %s: %s", ip, strings.Join(who, "; ")))
	}
	return out
}

// A copy that re-joins under a running node's name with a token keeps being refused
// its CSR; the kubelet exits once it has had no client certificate for 5 minutes while
// the API server answers (a 403 counts as answering).
func scenarioBootstrapGivesUp(k *kubeletRun) {
	_, _, clone, started, ok := k.rejoiningClone("worker-1", "10.250.0.16")
	if !ok {
		return
	}
	_, err := clone.WaitLog(0, 90*time.Second, `denied the request: nodeguard [name-takeover]`)
	if !k.step("its bootstrap CSR is refused", err) {
		return
	}
	deadline := time.Now().Add(8 * time.Minute)
	for clone.Running() && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	var eerr error
	if clone.Running() {
		eerr = fmt.Errorf("its kubelet still runs %s after its start", time.Since(started).Round(time.Second))
	}
	refusals := strings.Count(clone.Log(), "denied the request: nodeguard [name-takeover]")
	k.step("its kubelet exits", eerr,
		fmt.Sprintf("after %s, %d refused CSRs", time.Since(started).Round(time.Second), refusals),
		lastLines(clone.Log(), 3))
}
