package main

// nodeguard installed as an admin installs it, and running as pods: the image built by
// .ci/build-image, loaded into containerd on two machines with a real kubelet, and
// deploy/overlays/static applied as the README says. Then what an admin lives through:
// the incident's clone, a rotated certificate, a configuration edit, a rolling restart,
// a drain, and both replicas gone, with reviews flowing and every failed review counted
// on the API server's side.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// podRun is one run of the pod scenarios.
type podRun struct {
	*kubeletRun
	pods      *podEnv
	nodes     []*PodMachine
	root      string // the repository
	install   string // the admin's copy of deploy/, in the directory its commands run in
	bin       string // the cluster's binaries (kubectl)
	nodeguard string // the host's nodeguard binary, for `nodeguard certs` and `forget`
	helm      string // the helm binary, when the Helm scenarios run
	http      *http.Client
}

// noRuntime keeps pods off the machines whose kubelet runs the fake CRI, which starts no
// container: the scheduler would otherwise place a nodeguard replica there.
const noRuntime = "nodeguard-e2e/no-runtime=true:NoSchedule"

// fakeMachine is a machine with the fake CRI, tainted so that no pod lands on it.
func (p *podRun) fakeMachine(spec MachineSpec, tokenID string) (*Machine, error) {
	spec.Taint = noRuntime
	return p.machine(spec, tokenID)
}

// PodOptions are what the pod scenarios need from the command line.
type PodOptions struct {
	ClusterBin, Fakecri, Images, Dir, Root, Nodeguard, Helm, Only string
}

var podNodeSpecs = []struct {
	spec MachineSpec
	cidr string
}{
	{MachineSpec{Name: "pod-node-1", IP: "10.250.0.31", MachineID: "31a2b1c09d8e4f7a6b5c4d3e2f1a0b31",
		SystemUUID: "31d4c3b2-a190-4f8e-9d7c-6b5a4f3e2d31", BootID: "31b0070a-1111-4c2d-8e9f-0a1b2c3d4e31"}, "10.244.1.0/24"},
	{MachineSpec{Name: "pod-node-2", IP: "10.250.0.32", MachineID: "32a2b1c09d8e4f7a6b5c4d3e2f1a0b32",
		SystemUUID: "32d4c3b2-a190-4f8e-9d7c-6b5a4f3e2d32", BootID: "32b0070a-2222-4c2d-8e9f-0a1b2c3d4e32"}, "10.244.2.0/24"},
}

// RunPodScenarios runs the pod scenarios in order: each needs what the one before
// left (the install, then its changes).
func RunPodScenarios(cluster *Cluster, o PodOptions) (passed, failed int) {
	r := &Runner{cluster: cluster, keys: NewKeys(), clock: &clock{}, warnings: &warningLog{},
		kubectl: filepath.Join(o.ClusterBin, "kubectl"), ledger: true,
		ng: &Nodeguard{binary: o.Nodeguard}}
	k, err := newKubeletRun(r, o.ClusterBin, o.Fakecri, filepath.Join(o.Dir, "machines"))
	if err != nil {
		fmt.Printf("FAIL pods / setup\n    %v\n", err)
		return 0, 1
	}
	p := &podRun{kubeletRun: k, root: o.Root, install: filepath.Join(o.Dir, "deploy"), bin: o.ClusterBin,
		nodeguard: o.Nodeguard, helm: o.Helm, http: &http.Client{Timeout: 3 * time.Second}}
	var once sync.Once
	cleanup := func() {
		once.Do(func() {
			for _, n := range p.nodes {
				n.Destroy()
			}
			k.cleanup()
			k.removeMountTargets()
		})
	}
	defer cleanup()
	// Interrupted, the machines are powered off too: their containers and runtimes
	// would outlive this process.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if s, ok := <-sigs; ok {
			fmt.Fprintf(os.Stderr, "nodeguard-e2e: %v: powering the machines off\n", s)
			cleanup()
			os.Exit(130)
		}
	}()
	k.scenario = "pods: setup"
	if !k.step("the machines' kube-proxy credentials and the image archives", p.prepare(o)) {
		return k.passed, k.failed
	}
	for _, sc := range podScenarios {
		if !selected(sc.name, o.Only) {
			continue
		}
		k.scenario = "pods: " + sc.name
		if !sc.run(p) {
			// Each scenario builds on the one before.
			break
		}
	}
	return k.passed, k.failed
}

// selected: only is empty, "pods", or one of its comma-separated parts is in name.
func selected(name, only string) bool {
	if only == "" || strings.Contains("pods", only) {
		return true
	}
	for _, part := range strings.Split(only, ",") {
		if part != "" && strings.Contains(name, part) {
			return true
		}
	}
	return false
}

type podScenario struct {
	name string
	// run reports its steps and says whether the next scenario can build on it.
	run func(p *podRun) bool
}

var podScenarios = []podScenario{
	{"installed as the README says, nodeguard runs as two pods", scenarioPodInstall},
	{"the incident's clone is refused by the pods", scenarioPodClone},
	{"a copy of a machine that runs pods rewrites their status", scenarioPodCopyWrites},
	{"the machines that run pods soak, with no copy", scenarioPodSoak},
	{"the serving certificate is rotated as the README says", scenarioPodRotate},
	{"the configuration goes from warn to enforce", scenarioPodConfig},
	{"a rolling restart and a drain, while reviews flow", scenarioPodRollout},
	{"both replicas gone, failing open", scenarioPodGoneIgnore},
	{"both replicas gone, failing closed", scenarioPodGoneFail},
	{"installed, upgraded under load and uninstalled with Helm", scenarioHelm},
}

func (p *podRun) prepare(o PodOptions) error {
	for _, f := range []string{"nodeguard.tar", "pause.tar"} {
		if _, err := os.Stat(filepath.Join(o.Images, f)); err != nil {
			return fmt.Errorf("%v (.ci/build-image makes it)", err)
		}
	}
	certPEM, keyPEM, _, err := p.r.cluster.clientCertificate(Identity{User: "system:kube-proxy"})
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: p.r.cluster.host, CertificateAuthorityData: p.r.cluster.caPEM}
	cfg.AuthInfos["kube-proxy"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["kube-proxy"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "kube-proxy"}
	cfg.CurrentContext = "kube-proxy"
	proxyConf := filepath.Join(o.Dir, "kube-proxy.conf")
	if err := clientcmd.WriteToFile(*cfg, proxyConf); err != nil {
		return err
	}
	p.pods = &podEnv{
		kubeProxy: filepath.Join(o.ClusterBin, "kube-proxy"), proxyKubeconfig: proxyConf,
		images:       []string{filepath.Join(o.Images, "pause.tar"), filepath.Join(o.Images, "nodeguard.tar")},
		sandboxImage: "localhost/nodeguard-e2e/pause:1", clusterCIDR: "10.244.0.0/16",
	}
	return nil
}

// ---- the admin's shell -----------------------------------------------------------------

// sh runs a command line as the admin types it: KUBECONFIG the admin's, the cluster's
// kubectl and the host's nodeguard first on PATH, in the admin's copy of the repository.
func (p *podRun) sh(timeout time.Duration, line string) (string, error) {
	cx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(cx, "bash", "-o", "pipefail", "-c", line)
	cmd.Dir = filepath.Dir(p.install)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+p.r.cluster.adminKubeconfig, "NO_COLOR=1",
		"PATH="+p.bin+":"+filepath.Dir(p.nodeguard)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v\n%s", line, err, indent(string(out), "  | "))
	}
	return string(out), nil
}

// ---- nodeguard's pods ---------------------------------------------------------------------

type ngPod struct {
	Name, Node, IP, UID string
	Ready               bool
	Restarts            int32
	Deleting            bool
}

func (p *podRun) ngPods() ([]ngPod, error) {
	cx, cancel := ctx()
	defer cancel()
	list, err := p.r.cluster.admin.CoreV1().Pods("nodeguard").List(cx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nodeguard"})
	if err != nil {
		return nil, err
	}
	var out []ngPod
	for _, pod := range list.Items {
		np := ngPod{Name: pod.Name, Node: pod.Spec.NodeName, IP: pod.Status.PodIP, UID: string(pod.UID), Deleting: pod.DeletionTimestamp != nil}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				np.Ready = true
			}
		}
		for _, cs := range pod.Status.ContainerStatuses {
			np.Restarts += cs.RestartCount
		}
		out = append(out, np)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func describePods(pods []ngPod) string {
	var s []string
	for _, x := range pods {
		st := "not ready"
		if x.Ready {
			st = "ready"
		}
		if x.Deleting {
			st += ", terminating"
		}
		s = append(s, fmt.Sprintf("%s on %s (%s, %s, %d restarts)", x.Name, x.Node, x.IP, st, x.Restarts))
	}
	if len(s) == 0 {
		return "no nodeguard pod"
	}
	return strings.Join(s, "; ")
}

// answers is whether the pod's /readyz answers 200 on its address: a pod the API server
// still shows Ready may be on a machine that has lost power.
func (p *podRun) answers(pod ngPod) bool {
	resp, err := p.http.Get("http://" + net.JoinHostPort(pod.IP, "8080") + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReplicas waits until exactly n nodeguard pods exist, all Ready and answering on
// their addresses, none terminating.
func (p *podRun) waitReplicas(n int, timeout time.Duration) ([]ngPod, time.Duration, error) {
	started := time.Now()
	deadline := started.Add(timeout)
	last := ""
	for {
		pods, err := p.ngPods()
		if err == nil {
			last = describePods(pods)
			ready := 0
			for _, x := range pods {
				if x.Ready && !x.Deleting && p.answers(x) {
					ready++
				}
			}
			if ready == n && len(pods) == n {
				return pods, time.Since(started), nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return nil, time.Since(started), fmt.Errorf("not %d ready nodeguard pods within %s: %s", n, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// metrics scrapes one pod's /metrics (its admin port, through the pod network).
func (p *podRun) metrics(pod ngPod) (map[string]float64, string, error) {
	resp, err := p.http.Get("http://" + net.JoinHostPort(pod.IP, "8080") + "/metrics")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	return parseMetrics(string(b)), string(b), nil
}

// requestsOnPods is the sum of nodeguard_admission_requests_total over the ready pods.
func (p *podRun) requestsOnPods() float64 {
	pods, err := p.ngPods()
	if err != nil {
		return -1
	}
	total := 0.0
	for _, x := range pods {
		if m, _, err := p.metrics(x); err == nil {
			total += m["nodeguard_admission_requests_total"]
		}
	}
	return total
}

// diagnose is what an admin looks at when the pods do not come up.
func (p *podRun) diagnose() string {
	out, _ := p.sh(time.Minute, "kubectl -n nodeguard get deployment,replicaset,pods,endpointslices -o wide; kubectl -n nodeguard get events --sort-by=.lastTimestamp | tail -20")
	return out
}

// podLogs is what `kubectl logs` shows of every nodeguard pod.
func (p *podRun) podLogs() string {
	out, _ := p.sh(30*time.Second, "kubectl -n nodeguard logs -l app.kubernetes.io/name=nodeguard --tail=-1 --prefix")
	return out
}

// ---- the API server's count of webhook calls ---------------------------------------------

// webhookCalls are the API server's counters for nodeguard's webhooks.
type webhookCalls struct {
	requests, rejected, failOpen, callErrors float64
}

// apiserverCounts reads the API server's counters for the webhook named name, or for all
// of nodeguard's webhooks when name is empty.
func (p *podRun) apiserverCounts(name string) (webhookCalls, error) {
	cx, cancel := ctx()
	defer cancel()
	b, err := p.r.cluster.admin.RESTClient().Get().AbsPath("/metrics").DoRaw(cx)
	if err != nil {
		return webhookCalls{}, err
	}
	match := `.nodeguard.io"`
	if name != "" {
		match = `name="` + name + `"`
	}
	var c webhookCalls
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "#") || !strings.Contains(line, match) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, "apiserver_admission_webhook_request_total{"):
			c.requests += v
			if strings.Contains(line, `rejected="true"`) {
				c.rejected += v
			}
		case strings.HasPrefix(line, "apiserver_admission_webhook_fail_open_count{"):
			c.failOpen += v
		case strings.HasPrefix(line, "apiserver_admission_webhook_rejection_count{") && strings.Contains(line, `error_type="calling_webhook_error"`):
			c.callErrors += v
		}
	}
	return c, nil
}

// ---- reviews flowing -----------------------------------------------------------------------

// reviewLoad sends the README's dry run (a copy of worker-1 under a new name) ten times
// a second; each must be refused by nodeguard.
type reviewLoad struct {
	p                *podRun
	stop             chan struct{}
	done             chan struct{}
	mu               sync.Mutex
	sent, refused    int
	failures         []string
	apiserverBefore  webhookCalls
	apiserverLogSize int64
	started          time.Time
}

func (p *podRun) probeNode() (*corev1.Node, error) {
	cx, cancel := ctx()
	defer cancel()
	n, err := p.r.cluster.admin.CoreV1().Nodes().Get(cx, "worker-1", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "nodeguard-probe"}, Status: n.Status}, nil
}

// readmeCheckRefused runs the README's check and says how its answer differs from the
// documented refusal.
func (p *podRun) readmeCheckRefused() error {
	out, err := p.sh(time.Minute, readmeDryRun)
	if err == nil || !strings.Contains(out, probeRefusal) {
		return fmt.Errorf("not refused:\n%s", out)
	}
	return nil
}

// readmeDryRun is the README's "Check that it works": a copy of worker-1 under a new
// name, created as a server-side dry run.
const readmeDryRun = `kubectl get node worker-1 -o json \
  | jq '{apiVersion, kind, metadata: {name: "nodeguard-probe"}, status}' \
  | kubectl create --dry-run=server -f -`

const probeRefusal = `admission webhook "nodes.nodeguard.io" denied the request: nodeguard [machine-id]: machine-id 11c1f8e2fbf5540cd8ff218ef016ba11 is already used by node "worker-1"`

func (p *podRun) startLoad() (*reviewLoad, error) {
	probe, err := p.probeNode()
	if err != nil {
		return nil, err
	}
	before, err := p.apiserverCounts("")
	if err != nil {
		return nil, err
	}
	l := &reviewLoad{p: p, stop: make(chan struct{}), done: make(chan struct{}), apiserverBefore: before,
		apiserverLogSize: p.r.cluster.LogSize(), started: time.Now()}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			cx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			at := time.Now()
			_, err := p.r.cluster.admin.CoreV1().Nodes().Create(cx, probe.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			cancel()
			l.mu.Lock()
			l.sent++
			switch {
			case err != nil && strings.Contains(err.Error(), probeRefusal):
				l.refused++
			case err == nil:
				l.failures = append(l.failures, fmt.Sprintf("%s: allowed (nodeguard was not asked)", at.Format("15:04:05.000")))
			default:
				l.failures = append(l.failures, fmt.Sprintf("%s: %v", at.Format("15:04:05.000"), err))
			}
			l.mu.Unlock()
		}
	}()
	return l, nil
}

// finish stops the load and reports: an error when any review failed, seen by the
// client or by the API server (its counters and its log).
func (l *reviewLoad) finish() (string, error) {
	close(l.stop)
	<-l.done
	after, err := l.p.apiserverCounts("")
	if err != nil {
		return "", err
	}
	failedOpen, _ := l.p.r.cluster.WebhookTrouble(l.apiserverLogSize)
	l.mu.Lock()
	defer l.mu.Unlock()
	d := webhookCalls{requests: after.requests - l.apiserverBefore.requests,
		failOpen:   after.failOpen - l.apiserverBefore.failOpen,
		callErrors: after.callErrors - l.apiserverBefore.callErrors}
	summary := fmt.Sprintf("%d reviews in %s, %d refused as expected; the API server counted %.0f calls to nodeguard, %.0f failed open, %.0f failed calling it",
		l.sent, time.Since(l.started).Round(time.Second), l.refused, d.requests, d.failOpen, d.callErrors)
	var problems []string
	if len(l.failures) > 0 {
		shown := l.failures
		if len(shown) > 10 {
			shown = shown[:10]
		}
		problems = append(problems, fmt.Sprintf("%d reviews were not refused by nodeguard:\n%s", len(l.failures), strings.Join(shown, "\n")))
	}
	if d.failOpen > 0 || d.callErrors > 0 || len(failedOpen) > 0 {
		problems = append(problems, fmt.Sprintf("the API server failed to call nodeguard:\n%s", strings.Join(failedOpen, "\n")))
	}
	if l.sent == 0 {
		problems = append(problems, "no review was sent")
	}
	if len(problems) > 0 {
		return summary, fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return summary, nil
}

// ---- the scenarios ---------------------------------------------------------------------

func (p *podRun) bootPodNodes() bool {
	for i, s := range podNodeSpecs {
		boot, err := p.bootstrapKubeconfig(fmt.Sprintf("podn%02d", i+1))
		var m *Machine
		if err == nil {
			m, err = p.env.NewMachine(s.spec, boot)
		}
		if !p.step(s.spec.Name+"'s machine is prepared (containerd, runc, a CNI bridge for "+s.cidr+", kube-proxy)", err) {
			return false
		}
		n := &PodMachine{Machine: m, PodCIDR: s.cidr, pods: p.pods}
		p.nodes = append(p.nodes, n)
		// Their kubelets' logs are shown under a failed step, as every machine's.
		p.machines = append(p.machines, m)
		started := time.Now()
		err = n.Boot()
		if err == nil {
			err = p.waitNodeReady(m, 120*time.Second)
		}
		if !p.step(s.spec.Name+" boots, joins by TLS bootstrap and is Ready", err, fmt.Sprintf("after %s", time.Since(started).Round(time.Millisecond))) {
			return false
		}
	}
	return true
}

// scenarioPodInstall: two machines that run pods and worker-1 join; the admin builds
// nothing here but installs the image .ci/build-image made, exactly as the README says.
func scenarioPodInstall(p *podRun) bool {
	if !p.bootPodNodes() {
		return false
	}
	// worker-1 runs no pods: a kubelet with fakecri, as in the other kubelet scenarios.
	w, err := p.fakeMachine(worker1, "abcdef")
	if err == nil {
		err = w.Start()
	}
	if !p.step("worker-1 joins and is Ready", firstErr(err, p.waitNodeReady(w, 90*time.Second))) {
		return false
	}
	// The admin's copy of the repository's deploy/.
	_ = os.RemoveAll(p.install)
	copied, err := exec.Command("cp", "-r", filepath.Join(p.root, "deploy"), p.install).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%v: %s", err, copied)
	}
	if !p.step("the admin's copy of deploy/", err) {
		return false
	}
	started := time.Now()
	out, err := p.sh(2*time.Minute, "nodeguard certs --out deploy/overlays/static && kubectl apply -k deploy/overlays/static")
	if !p.step("nodeguard certs --out deploy/overlays/static; kubectl apply -k deploy/overlays/static", err, out) {
		return false
	}
	out, err = p.sh(4*time.Minute, "kubectl -n nodeguard rollout status deployment/nodeguard --timeout=180s")
	pods, _, werr := p.waitReplicas(2, 30*time.Second)
	if !p.step("kubectl -n nodeguard rollout status: both replicas become Ready", firstErr(err, werr),
		fmt.Sprintf("%s after the apply: %s", time.Since(started).Round(time.Millisecond), describePods(pods)), out) {
		fmt.Println(indent(p.diagnose(), "    "))
		return false
	}
	var spread error
	if len(pods) == 2 && pods[0].Node == pods[1].Node {
		spread = fmt.Errorf("both replicas run on %s", pods[0].Node)
	}
	p.step("the replicas run on different nodes", spread, describePods(pods))
	p.step("each runs as user 65532 on a read-only root filesystem, as the image and Deployment say", p.processesConfined(2))
	p.step("the recorder writes a NodeIdentity per node", p.waitRecorded([]string{"pod-node-1", "pod-node-2", "worker-1"}, 60*time.Second))

	before := p.requestsOnPods()
	out, err = p.sh(time.Minute, readmeDryRun)
	var refused error
	switch {
	case err == nil:
		refused = fmt.Errorf("the dry run was accepted:\n%s", out)
	case !strings.Contains(out, `The request is invalid: error when creating "STDIN": admission webhook "nodes.nodeguard.io" denied the request: nodeguard [machine-id]: machine-id 11c1f8e2fbf5540cd8ff218ef016ba11 is already used by node "worker-1";`):
		refused = fmt.Errorf("not the README's message:\n%s", out)
	}
	var answered error
	if after := p.requestsOnPods(); after <= before {
		answered = fmt.Errorf("nodeguard_admission_requests_total on the pods went from %v to %v", before, after)
	}
	return p.step("the README's check: the dry-run copy of worker-1 is refused, by the pods", firstErr(refused, answered), strings.TrimSpace(out))
}

// processesConfined finds each nodeguard process on this machine and reads its user and
// its root mount from /proc: what the runtime made of the image and the Deployment.
func (p *podRun) processesConfined(want int) error {
	out, err := exec.Command("pgrep", "-f", "^/nodeguard serve").Output()
	if err != nil {
		return fmt.Errorf("no nodeguard process found: %v", err)
	}
	pids := strings.Fields(string(out))
	if len(pids) != want {
		return fmt.Errorf("%d nodeguard processes (%v), expected %d", len(pids), pids, want)
	}
	for _, pid := range pids {
		status, err := os.ReadFile("/proc/" + pid + "/status")
		if err != nil {
			return err
		}
		uid := ""
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "Uid:") {
				uid = strings.Join(strings.Fields(l)[1:], " ")
			}
		}
		if uid != "65532 65532 65532 65532" {
			return fmt.Errorf("process %s runs as uids %q", pid, uid)
		}
		mounts, err := os.ReadFile("/proc/" + pid + "/mountinfo")
		if err != nil {
			return err
		}
		rootRO := false
		for _, l := range strings.Split(string(mounts), "\n") {
			f := strings.Fields(l)
			if len(f) > 5 && f[4] == "/" {
				rootRO = strings.HasPrefix(f[5], "ro")
			}
		}
		if !rootRO {
			return fmt.Errorf("process %s: its root filesystem is writable", pid)
		}
	}
	return nil
}

// waitRecorded waits until each node has a NodeIdentity with at least one boot.
func (p *podRun) waitRecorded(names []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		for _, n := range names {
			if v := p.r.nodeIdentity(n); !v.exists || len(v.boots) == 0 {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no NodeIdentity with a boot for %v within %s", missing, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// scenarioPodClone: the incident's perfect copy of worker-1 starts; the pods refuse it.
func scenarioPodClone(p *podRun) bool {
	orig := p.machineNamed("worker-1")
	origLog := orig.LogSize()
	before := p.requestsOnPods()
	cp, err := p.copyOf(orig, perfectCopy(orig.MachineSpec))
	if !p.step("worker-1's disk is copied whole to another machine", err) {
		return false
	}
	started := time.Now()
	if !p.step("the copy's kubelet starts while worker-1 runs", cp.Start()) {
		return false
	}
	line, err := cp.WaitLog(0, 120*time.Second, "denied the request: nodeguard [two-kubelets]")
	p.step("the copy is refused [two-kubelets], in its own log", err, fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), line))
	var answered error
	if after := p.requestsOnPods(); after <= before {
		answered = fmt.Errorf("nodeguard_admission_requests_total on the pods went from %v to %v", before, after)
	}
	logs := p.podLogs()
	if !strings.Contains(logs, "two-kubelets") {
		answered = firstErr(answered, fmt.Errorf("no pod logged the refusal:\n%s", lastLines(logs, 20)))
	}
	p.step("the pods answered it, and kubectl logs shows the refusal", answered)
	p.step("worker-1 was refused nothing and stays Ready", firstErr(noRefusal(orig, origLog), p.waitNodeReady(orig, 10*time.Second)))
	cp.Stop()
	res := p.r.forget("worker-1", nil)
	var ferr error
	if !res.Pass {
		ferr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	return p.step("the copy is stopped and nodeguard forget worker-1 clears the conflict", firstErr(ferr, p.waitConflict("worker-1", false, 60*time.Second)))
}

func (p *podRun) machineNamed(name string) *Machine {
	for _, m := range p.machines {
		if m.Name == name {
			return m
		}
	}
	return nil
}

func (p *podRun) waitConflict(name string, want bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if v := p.r.nodeIdentity(name); v.exists && v.hasConflict() == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("NodeIdentity %s: conflict is not %v within %s", name, want, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// servedCertificate is the leaf certificate a pod's webhook port serves.
func servedCertificate(ip string) ([]byte, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", net.JoinHostPort(ip, "8443"),
		&tls.Config{InsecureSkipVerify: true, ServerName: "nodeguard.nodeguard.svc"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	certs := conn.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, fmt.Errorf("no certificate")
	}
	return certs[0].Raw, nil
}

func certificateFile(path string) ([]byte, *x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	return block.Bytes, c, err
}

// scenarioPodRotate: `nodeguard certs` and `kubectl apply -k` again, as the README
// says; the pods serve the new pair without a restart, and no review fails.
func scenarioPodRotate(p *podRun) bool {
	before, err := p.ngPods()
	if !p.step("the replicas before", err, describePods(before)) {
		return false
	}
	load, err := p.startLoad()
	if !p.step("reviews flow: the README's dry run, ten a second", err) {
		return false
	}
	started := time.Now()
	out, err := p.sh(2*time.Minute, "nodeguard certs --out deploy/overlays/static && kubectl apply -k deploy/overlays/static")
	if !p.step("nodeguard certs --out deploy/overlays/static; kubectl apply -k deploy/overlays/static", err, out) {
		_, _ = load.finish()
		return false
	}
	newCert, parsed, err := certificateFile(filepath.Join(p.install, "overlays/static/tls.crt"))
	if !p.step("the new serving certificate", err) {
		_, _ = load.finish()
		return false
	}
	deadline := time.Now().Add(4 * time.Minute)
	served := map[string]time.Duration{}
	for len(served) < len(before) && time.Now().Before(deadline) {
		for _, x := range before {
			if _, ok := served[x.Name]; ok {
				continue
			}
			if raw, err := servedCertificate(x.IP); err == nil && bytes.Equal(raw, newCert) {
				served[x.Name] = time.Since(started)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	var info []string
	for name, d := range served {
		info = append(info, fmt.Sprintf("%s serves the certificate %x after %s", name, parsed.SerialNumber.Bytes()[:4], d.Round(time.Millisecond)))
	}
	sort.Strings(info)
	var rerr error
	if len(served) < len(before) {
		rerr = fmt.Errorf("%d of %d pods serve the new certificate within 4 minutes", len(served), len(before))
	}
	p.step("every pod serves the new certificate", rerr, info...)
	time.Sleep(5 * time.Second)
	after, err := p.ngPods()
	same := err
	if err == nil {
		for i := range before {
			if i >= len(after) || after[i].UID != before[i].UID || after[i].Restarts != before[i].Restarts {
				same = fmt.Errorf("the pods changed: before %s; after %s", describePods(before), describePods(after))
			}
		}
	}
	p.step("without a restart: the same pods, no container restarted", same, describePods(after))
	summary, err := load.finish()
	return p.step("no review failed meanwhile", err, summary)
}

// configMode is the mode nodeguard_config_info reports on one pod.
func (p *podRun) configMode(pod ngPod) string {
	_, text, err := p.metrics(pod)
	if err != nil {
		return "unreachable: " + err.Error()
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "nodeguard_config_info{") {
			if i := strings.Index(l, `mode="`); i >= 0 {
				rest := l[i+len(`mode="`):]
				return rest[:strings.Index(rest, `"`)]
			}
		}
	}
	return "no nodeguard_config_info"
}

// setMode edits the ConfigMap's mode as `kubectl edit` would, and measures how long until
// every pod reports it.
func (p *podRun) setMode(mode string) (string, error) {
	pods, err := p.ngPods()
	if err != nil {
		return "", err
	}
	started := time.Now()
	line := fmt.Sprintf(`kubectl -n nodeguard get configmap nodeguard-config -o json \
  | jq '.data["config.yaml"] |= sub("(?<k>(^|\n)mode: )[a-z]+"; "\(.k)%s")' \
  | kubectl replace -f -`, mode)
	if out, err := p.sh(time.Minute, line); err != nil {
		return out, err
	}
	cx, cancel := ctx()
	defer cancel()
	cm, err := p.r.cluster.admin.CoreV1().ConfigMaps("nodeguard").Get(cx, "nodeguard-config", metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if !strings.Contains("\n"+cm.Data["config.yaml"], "\nmode: "+mode+"\n") {
		return "", fmt.Errorf("the edit did not take: the ConfigMap's config.yaml does not say mode: %s:\n%s", mode, cm.Data["config.yaml"])
	}
	deadline := started.Add(4 * time.Minute)
	seen := map[string]time.Duration{}
	for len(seen) < len(pods) && time.Now().Before(deadline) {
		for _, x := range pods {
			if _, ok := seen[x.Name]; !ok && p.configMode(x) == mode {
				seen[x.Name] = time.Since(started)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	var info []string
	for _, x := range pods {
		if d, ok := seen[x.Name]; ok {
			info = append(info, fmt.Sprintf("%s: mode %s after %s", x.Name, mode, d.Round(time.Second)))
		} else {
			info = append(info, fmt.Sprintf("%s: still %s", x.Name, p.configMode(x)))
		}
	}
	if len(seen) < len(pods) {
		return strings.Join(info, "; "), fmt.Errorf("not every pod reports mode %s within 4 minutes", mode)
	}
	return strings.Join(info, "; "), nil
}

// scenarioPodConfig: the rollout the README describes, on the running install: warn,
// then enforce, each in force within the time it states (about a minute and a half).
func scenarioPodConfig(p *podRun) bool {
	info, err := p.setMode("warn")
	if !p.step("mode: warn in the ConfigMap reaches both pods, without a restart", err, info) {
		return false
	}
	out, err := p.sh(time.Minute, readmeDryRun)
	var warned error
	switch {
	case err != nil:
		warned = err
	case !strings.Contains(out, "Warning: nodeguard [machine-id]: machine-id 11c1f8e2fbf55… is already used by node \"worker-1\""):
		warned = fmt.Errorf("no warning:\n%s", out)
	case !strings.Contains(out, "node/nodeguard-probe created (server dry run)"):
		warned = fmt.Errorf("not let through:\n%s", out)
	}
	p.step("the dry-run copy is let through with nodeguard's warning", warned, strings.TrimSpace(out))
	info, err = p.setMode("enforce")
	if !p.step("mode: enforce in the ConfigMap reaches both pods, without a restart", err, info) {
		return false
	}
	return p.step("the dry-run copy is refused again", p.readmeCheckRefused())
}

// scenarioPodRollout: kubectl rollout restart, then a drain of the node running one
// replica, each while reviews flow.
func scenarioPodRollout(p *podRun) bool {
	load, err := p.startLoad()
	if !p.step("reviews flow: the README's dry run, ten a second", err) {
		return false
	}
	started := time.Now()
	out, err := p.sh(5*time.Minute, "kubectl -n nodeguard rollout restart deployment/nodeguard && kubectl -n nodeguard rollout status deployment/nodeguard --timeout=240s")
	pods, _, werr := p.waitReplicas(2, 60*time.Second)
	p.step("kubectl rollout restart: both replicas replaced and Ready", firstErr(err, werr),
		fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), describePods(pods)), out)
	summary, err := load.finish()
	if !p.step("no review failed during the rolling restart", err, summary) {
		return false
	}
	if len(pods) == 0 {
		return false
	}
	node := pods[0].Node
	load, err = p.startLoad()
	if !p.step("reviews flow again", err) {
		return false
	}
	started = time.Now()
	out, err = p.sh(5*time.Minute, "kubectl drain "+node+" --ignore-daemonsets --delete-emptydir-data --timeout=240s")
	drained := time.Since(started)
	pods, _, werr = p.waitReplicas(2, 120*time.Second)
	p.step("kubectl drain "+node+": the replica moves, the PodDisruptionBudget holds", firstErr(err, werr),
		fmt.Sprintf("drained in %s; both Ready after %s: %s", drained.Round(time.Millisecond), time.Since(started).Round(time.Millisecond), describePods(pods)), out)
	summary, err = load.finish()
	ok := p.step("no review failed during the drain", err, summary)
	out, err = p.sh(time.Minute, "kubectl uncordon "+node)
	p.step("kubectl uncordon "+node, err, out)
	return ok
}

// powerOffPodNodes pulls the plug of both machines that run pods.
func (p *podRun) powerOffPodNodes() {
	for _, n := range p.nodes {
		n.PowerOff()
	}
}

// scenarioPodGoneIgnore: both machines running nodeguard lose power. With the shipped
// failurePolicy Ignore, a new machine joins and worker-1's kubelet restarts meanwhile;
// both are let through without nodeguard, as the README says.
func scenarioPodGoneIgnore(p *podRun) bool {
	p.powerOffPodNodes()
	started := time.Now()
	logSize := p.r.cluster.LogSize()
	m, err := p.fakeMachine(worker2, "abcdeg")
	if err == nil {
		err = m.Start()
	}
	if err == nil {
		err = p.waitNodeReady(m, 3*time.Minute)
	}
	joined := time.Since(started)
	failedOpen, _ := p.r.cluster.WebhookTrouble(logSize)
	var open error
	if len(failedOpen) == 0 {
		open = fmt.Errorf("the API server logged no call to nodeguard failing open: was nodeguard still answering?")
	}
	p.step("both machines running nodeguard lose power; a new machine joins meanwhile (the API server fails open)", firstErr(err, open),
		fmt.Sprintf("worker-2 Ready %s after the power loss; the API server failed open %d times, first: %s", joined.Round(time.Millisecond), len(failedOpen), firstOf(failedOpen)))
	orig := p.machineNamed("worker-1")
	offset := orig.LogSize()
	orig.Stop()
	restarted := time.Now()
	err = orig.Start()
	if err == nil {
		_, err = orig.WaitLog(offset, 2*time.Minute, "Successfully registered node")
	}
	p.step("worker-1's kubelet restarts meanwhile and registers again", err, fmt.Sprintf("after %s", time.Since(restarted).Round(time.Millisecond)))
	return p.restorePodNodes()
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return s[0]
}

// restorePodNodes boots both pod machines again (a new boot each) and waits for both
// replicas.
func (p *podRun) restorePodNodes() bool {
	started := time.Now()
	for _, n := range p.nodes {
		if err := n.Reboot(newBootID()); err != nil {
			return p.step(n.Name+" boots again", err)
		}
	}
	pods, _, err := p.waitReplicas(2, 4*time.Minute)
	return p.step("power back: both machines boot and both replicas are Ready again", err,
		fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), describePods(pods)))
}

// scenarioPodGoneFail: the same loss of power under deploy/components/fail-closed:
// what a kubelet restarted meanwhile does, and whether nodeguard's pods come back.
func scenarioPodGoneFail(p *podRun) bool {
	overlay := filepath.Join(p.install, "overlays", "static-fail-closed")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return p.step("the admin's overlay with components/fail-closed", err)
	}
	kz := "resources: [../static]\ncomponents: [../../components/fail-closed]\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kz), 0o644); err != nil {
		return p.step("the admin's overlay with components/fail-closed", err)
	}
	out, err := p.sh(time.Minute, "kubectl apply -k deploy/overlays/static-fail-closed")
	if !p.step("kubectl apply -k of an overlay adding components/fail-closed", err, out) {
		return false
	}
	defer func() {
		out, err := p.sh(time.Minute, "kubectl apply -k deploy/overlays/static")
		p.step("back to the shipped failurePolicy Ignore", err, out)
	}()
	// Which machines run the replicas: after the drain, both run on one.
	before, _ := p.ngPods()
	runsReplica := map[string]bool{}
	for _, x := range before {
		runsReplica[x.Node] = true
	}
	var holding, empty []*PodMachine
	for _, n := range p.nodes {
		if runsReplica[n.Name] {
			holding = append(holding, n)
		} else {
			empty = append(empty, n)
		}
	}
	p.powerOffPodNodes()
	lost := time.Now()
	orig := p.machineNamed("worker-1")
	offset := orig.LogSize()
	orig.Stop()
	if err := orig.Start(); err != nil {
		return p.step("worker-1's kubelet restarts while both replicas are gone", err)
	}
	line, err := orig.WaitLog(offset, 2*time.Minute, "Unable to register node with API server", `failed calling webhook \"nodes.nodeguard.io\"`)
	p.step("worker-1's kubelet restarts while both replicas are gone: its registration fails, in its log", err,
		fmt.Sprintf("after %s: %s", time.Since(lost).Round(time.Millisecond), line))
	// What a node whose kubelet cannot register looks like meanwhile.
	time.Sleep(20 * time.Second)
	cx, cancel := ctx()
	n, nerr := p.r.cluster.admin.CoreV1().Nodes().Get(cx, "worker-1", metav1.GetOptions{})
	cancel()
	state := ""
	if nerr == nil {
		state = fmt.Sprintf("worker-1: Ready=%s, last heartbeat %s ago, boot %s", readyStatus(n), time.Since(heartbeatOf(n)).Round(time.Second), n.Status.NodeInfo.BootID)
	}
	p.step("meanwhile: worker-1's Node as the control plane sees it", nerr, state)

	// A machine that runs no replica boots first: nothing can answer for it.
	emptyLogs := map[string]int{}
	for _, m := range empty {
		emptyLogs[m.Name] = m.LogSize()
		booted := time.Now()
		err := m.Reboot(newBootID())
		var line string
		if err == nil {
			line, err = m.WaitLog(emptyLogs[m.Name], 2*time.Minute, "Unable to register node with API server", `failed calling webhook \"nodes.nodeguard.io\"`)
		}
		p.step(m.Name+", which runs no replica, gets power back: its registration fails while no replica answers", err,
			fmt.Sprintf("after %s: %s", time.Since(booted).Round(time.Millisecond), line))
	}
	// The machine that runs them starts them before it has registered, and registers
	// through them.
	for _, m := range holding {
		logSize := m.LogSize()
		booted := time.Now()
		err := m.Reboot(newBootID())
		var line string
		if err == nil {
			line, err = m.WaitLog(logSize, 5*time.Minute, "Successfully registered node")
		}
		pods, _ := p.ngPods()
		p.step(m.Name+", which runs the replicas, gets power back: nodeguard comes back on it, and it registers", err,
			fmt.Sprintf("registered %s after its boot: %s; nodeguard pods: %s", time.Since(booted).Round(time.Millisecond), line, describePods(pods)))
	}
	for _, m := range empty {
		_, err := m.WaitLog(emptyLogs[m.Name], 5*time.Minute, "Successfully registered node")
		p.step(m.Name+" registers once nodeguard answers again", err, fmt.Sprintf("%s after the power loss", time.Since(lost).Round(time.Millisecond)))
	}
	_, err = orig.WaitLog(offset, 5*time.Minute, "Successfully registered node")
	p.step("worker-1's kubelet registers once nodeguard answers again", err, fmt.Sprintf("%s after the power loss", time.Since(lost).Round(time.Millisecond)))
	pods, took, err := p.waitReplicas(2, 4*time.Minute)
	return p.step("both replicas are Ready again", err, fmt.Sprintf("after %s more: %s", took.Round(time.Millisecond), describePods(pods)))
}

// ---- Helm -------------------------------------------------------------------------------

func (p *podRun) webhookConfigurations() ([]string, error) {
	cx, cancel := ctx()
	defer cancel()
	list, err := p.r.cluster.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(cx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, w := range list.Items {
		names = append(names, w.Name)
	}
	return names, nil
}

// scenarioHelm: the kustomize install removed as the README says, the chart installed in
// its place, a value changed with helm upgrade while reviews flow, and helm uninstall.
func scenarioHelm(p *podRun) bool {
	if p.helm == "" {
		return p.step("helm is built", fmt.Errorf("no --helm binary given"))
	}
	out, err := p.sh(3*time.Minute, "kubectl delete -k deploy/overlays/static --wait=true")
	if !p.step("kubectl delete -k deploy/overlays/static removes the kustomize install", err, out) {
		return false
	}
	chart := filepath.Join(p.root, "deploy", "helm", "nodeguard")
	started := time.Now()
	// The README's commands; the image's repository is the one the machines hold.
	out, err = p.sh(5*time.Minute, fmt.Sprintf(`%s install nodeguard %s -n nodeguard --create-namespace \
  --set image.repository=nodeguard/nodeguard &&
kubectl label namespace nodeguard pod-security.kubernetes.io/enforce=restricted &&
kubectl -n nodeguard rollout status deployment/nodeguard --timeout=4m`, p.helm, chart))
	pods, _, werr := p.waitReplicas(2, time.Minute)
	if !p.step("helm install nodeguard deploy/helm/nodeguard -n nodeguard --create-namespace; kubectl label namespace (restricted); rollout status: both replicas Ready", firstErr(err, werr),
		fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), describePods(pods)), out) {
		return false
	}
	p.step("the recorder writes the NodeIdentities again", p.waitRecorded([]string{"pod-node-1", "pod-node-2", "worker-1"}, 90*time.Second))
	p.step("the README's check: the dry-run copy is refused", p.readmeCheckRefused())

	load, err := p.startLoad()
	if !p.step("reviews flow", err) {
		return false
	}
	started = time.Now()
	out, err = p.sh(5*time.Minute, fmt.Sprintf("%s upgrade nodeguard %s -n nodeguard --reuse-values --set resources.requests.cpu=150m --wait --timeout 4m", p.helm, chart))
	pods, _, werr = p.waitReplicas(2, time.Minute)
	p.step("helm upgrade --set resources.requests.cpu=150m: the pods roll, admitted under the restricted Pod Security Standard", firstErr(err, werr),
		fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), describePods(pods)), out)
	summary, err := load.finish()
	p.step("no review failed during the upgrade", err, summary)

	out, err = p.sh(3*time.Minute, p.helm+" uninstall nodeguard -n nodeguard --wait")
	p.step("helm uninstall nodeguard", err, out)
	names, err := p.webhookConfigurations()
	var left error
	for _, n := range names {
		if strings.Contains(n, "nodeguard") {
			left = fmt.Errorf("left behind: ValidatingWebhookConfiguration %s", n)
		}
	}
	p.step("no webhook configuration is left behind", firstErr(err, left), fmt.Sprintf("%v", names))
	cx, cancel := ctx()
	_, err = p.r.cluster.adminDyn.Resource(nodeIdentitiesGVR).List(cx, metav1.ListOptions{})
	cancel()
	kept := err
	if apierrors.IsNotFound(err) {
		kept = fmt.Errorf("the NodeIdentity CRD was removed")
	}
	out, _ = p.sh(time.Minute, "kubectl get nodeidentities")
	return p.step("the ledger's CRD and records are kept", kept, out)
}

// newBootID is a boot id as the kernel makes one at each boot (a random UUID).
func newBootID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
