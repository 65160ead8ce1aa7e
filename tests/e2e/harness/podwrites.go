package main

// What a copy of a node that runs pods does to them. Each kubelet reports its own
// runtime's sandboxes, pod IPs and containers for the node's pods, so their status, and
// the EndpointSlices built from it, follow whichever machine wrote last. The audit log
// (tests/e2e/audit-policy.yaml keeps the pods/status writes of namespace "incident"
// whole) tells the two machines apart by source address, which no admission webhook is
// shown, and records each write as the API server stored it: the sequences a rule that
// tells the two machines' writes apart is tested on.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const incidentNS = "incident"

// podStatusWrite is one pods/status write of the node's kubelets as the API server
// answered it: the pod's status after it, when accepted.
type podStatusWrite struct {
	At     time.Time         `json:"at"`
	Phase  string            `json:"phase"`
	From   string            `json:"from"`
	Code   int               `json:"code"`
	Pod    string            `json:"pod"`
	Status *corev1.PodStatus `json:"status,omitempty"`
}

// copyPodMachine copies a running pod machine's disk to a new machine with spec's
// identity: the kubelet's and containerd's state, the CNI allocations, the pods' logs.
// What lives in memory on a real machine (containerd's state directory, the sockets) is
// left behind.
func (p *podRun) copyPodMachine(from *PodMachine, spec MachineSpec) (*PodMachine, error) {
	m, err := p.copyOf(from.Machine, spec)
	if err != nil {
		return nil, err
	}
	for _, f := range []string{"containerd/state", "containerd.sock", "containerd.sock.ttrpc", "runtime-ready",
		"containerd.log", "runtime.log", "kube-proxy.log"} {
		_ = os.RemoveAll(filepath.Join(m.Dir, f))
	}
	return &PodMachine{Machine: m, PodCIDR: from.PodCIDR, pods: p.pods, Copy: true}, nil
}

// webPods runs a Deployment of the pause image pinned to node, with a Service.
func (p *podRun) webPods(node string, replicas int32) error {
	cx, cancel := ctx()
	defer cancel()
	a := p.r.cluster.admin
	if _, err := a.CoreV1().Namespaces().Create(cx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: incidentNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	labels := map[string]string{"app": "web"}
	_, err := a.AppsV1().Deployments(incidentNS).Create(cx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: incidentNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{Name: "app", Image: p.pods.sandboxImage,
						ImagePullPolicy: corev1.PullNever}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	_, err = a.CoreV1().Services(incidentNS).Create(cx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: incidentNS},
		Spec: corev1.ServiceSpec{Selector: labels,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}}},
	}, metav1.CreateOptions{})
	return err
}

// webView is what the cluster shows of the web pods at one instant.
type webView struct {
	pods      []corev1.Pod
	endpoints []string
}

func (p *podRun) web() (webView, error) {
	cx, cancel := ctx()
	defer cancel()
	a := p.r.cluster.admin
	pods, err := a.CoreV1().Pods(incidentNS).List(cx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return webView{}, err
	}
	slices, err := a.DiscoveryV1().EndpointSlices(incidentNS).List(cx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
	if err != nil {
		return webView{}, err
	}
	v := webView{pods: pods.Items}
	sort.Slice(v.pods, func(i, j int) bool { return v.pods[i].Name < v.pods[j].Name })
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				v.endpoints = append(v.endpoints, e.Addresses...)
			}
		}
	}
	sort.Strings(v.endpoints)
	return v, nil
}

func (v webView) ready() int {
	n := 0
	for _, pod := range v.pods {
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && pod.DeletionTimestamp == nil {
				n++
			}
		}
	}
	return n
}

// key: each pod's IP and its containers' ids and restart counts, as stored.
func (v webView) key() string {
	var parts []string
	for _, pod := range v.pods {
		parts = append(parts, pod.Name+" "+podStatusKey(pod.Status))
	}
	return strings.Join(parts, "; ")
}

func podStatusKey(s corev1.PodStatus) string {
	var cs []string
	for _, c := range s.ContainerStatuses {
		last := ""
		if c.LastTerminationState.Terminated != nil {
			last = shortID(c.LastTerminationState.Terminated.ContainerID)
		}
		cs = append(cs, fmt.Sprintf("%s=%s#%d(last %s)", c.Name, shortID(c.ContainerID), c.RestartCount, last))
	}
	return fmt.Sprintf("ip %s %s", s.PodIP, strings.Join(cs, ","))
}

func shortID(id string) string {
	if i := strings.Index(id, "://"); i >= 0 {
		id = id[i+3:]
	}
	if len(id) > 12 {
		id = id[:12]
	}
	if id == "" {
		return "-"
	}
	return id
}

func (p *podRun) waitWeb(want int, timeout time.Duration) (webView, error) {
	deadline := time.Now().Add(timeout)
	for {
		v, err := p.web()
		if err == nil && v.ready() == want && len(v.endpoints) == want {
			return v, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%d of %d web pods Ready, endpoints %v: %s", v.ready(), want, v.endpoints, v.key())
			}
			return v, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitEndpoints waits for the web Service's ready endpoints to be want.
func (p *podRun) waitEndpoints(want []string, timeout time.Duration) (webView, error) {
	deadline := time.Now().Add(timeout)
	for {
		v, err := p.web()
		if err == nil && strings.Join(v.endpoints, ",") == strings.Join(want, ",") {
			return v, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("endpoints %v, not %v, after %s", v.endpoints, want, timeout)
			}
			return v, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// killContainer kills one container's process in the machine's containerd, as a crash.
func (n *PodMachine) killContainer(containerID string) error {
	id := containerID
	if i := strings.Index(id, "://"); i >= 0 {
		id = id[i+3:]
	}
	out, err := exec.Command("ctr", "--address", n.socket(), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr tasks kill %s: %v: %s", id, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// crashWeb kills the container of the web pod that has not crashed yet and waits until
// the pod shows it restarted: a new container, restart count up, running.
func (p *podRun) crashWeb(orig *PodMachine) (string, error) {
	v, err := p.web()
	if err != nil {
		return "", err
	}
	if len(v.pods) < 2 || len(v.pods[1].Status.ContainerStatuses) == 0 {
		return "", fmt.Errorf("no second web pod: %s", v.key())
	}
	name, before := v.pods[1].Name, v.pods[1].Status.ContainerStatuses[0]
	if err := orig.killContainer(before.ContainerID); err != nil {
		return "", err
	}
	return p.restarted(incidentNS, name, before, 45*time.Second)
}

// statusWrites are the pods/status writes in the audit log since from, attributed by
// source address.
func statusWrites(events []auditEvent, from time.Time, machines map[string]string) []podStatusWrite {
	var out []podStatusWrite
	for _, e := range events {
		if e.ObjectRef.Resource != "pods" || e.ObjectRef.Subresource != "status" || e.ObjectRef.Namespace != incidentNS || e.StageTimestamp.Before(from) {
			continue
		}
		w := podStatusWrite{At: e.StageTimestamp, Code: e.ResponseStatus.Code, Pod: e.ObjectRef.Name, From: "?"}
		for ip, who := range machines {
			if e.from(ip) {
				w.From = who
			}
		}
		if w.Code < 400 && len(e.ResponseObject) > 0 {
			var pod corev1.Pod
			if json.Unmarshal(e.ResponseObject, &pod) == nil {
				w.Status = &pod.Status
			}
		}
		out = append(out, w)
	}
	return out
}

// copyPass is one copy of the machine run beside it, and when things happened to it.
type copyPass struct {
	label   string
	spec    MachineSpec
	refusal string // the first refusal its kubelet logs
	// crash: a container of the original crashes while this copy runs.
	crash                   bool
	started, armed, stopped time.Time
}

// waitGuard waits until the node's pods are guarded (the ledger records a conflict or a
// refused machine for it), or are not.
func (p *podRun) waitGuard(name string, want bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		v := p.r.nodeIdentity(name)
		if v.exists && (v.hasConflict() || len(v.refused) > 0) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("NodeIdentity %s: guarded is not %v within %s: %s", name, want, timeout, p.r.describe(v))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// podRefusalEvent waits for nodeguard's Event on node about a refused pod status write.
func (p *podRun) podRefusalEvent(node string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		events, _ := p.r.nodeEvents()
		var seen []string
		for _, e := range events {
			if e.node != node {
				continue
			}
			seen = append(seen, e.String())
			if e.typ == corev1.EventTypeWarning && e.reason == "NodeIdentityConflict" && strings.Contains(e.note, "its status of pod") {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no Warning NodeIdentityConflict about a pod's status on node %s; nodeguard's Events on it:\n%s", node, strings.Join(seen, "\n"))
		}
		time.Sleep(time.Second)
	}
}

// runCopy boots a copy of orig's whole disk with c's identity for a minute beside it,
// watching the web pods, then powers it off.
func (p *podRun) runCopy(orig *PodMachine, kept webView, c *copyPass) bool {
	cp, err := p.copyPodMachine(orig, c.spec)
	if !p.step(c.label+": "+orig.Name+"'s disk is copied whole to another machine ("+c.spec.IP+"), pods and runtime included", err) {
		return false
	}
	c.started = time.Now()
	err = cp.Boot()
	if !p.step(c.label+" boots while "+orig.Name+" runs", err) {
		cp.Destroy()
		return false
	}
	err = p.waitGuard(orig.Name, true, 60*time.Second)
	c.armed = time.Now()
	if !p.step(c.label+": the ledger records it; the node's pods are guarded", err, fmt.Sprintf("%s after its boot", c.armed.Sub(c.started).Round(time.Millisecond))) {
		cp.Destroy()
		return false
	}
	line, err := cp.WaitLog(0, 60*time.Second, c.refusal)
	p.step(c.label+": its node writes are refused, in its kubelet's log", err, fmt.Sprintf("after %s: %s", time.Since(c.started).Round(time.Millisecond), lastLines(line, 1)))
	if c.crash {
		info, err := p.crashWeb(orig)
		p.step(c.label+": while the pods are guarded, a container of the original crashes: its restart is let through", err, info)
	}

	// Watch what the cluster shows for a minute.
	seen := map[string]int{}
	endpoints := map[string]int{}
	var lastOther time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if w, err := p.web(); err == nil {
			seen[w.key()]++
			ep := strings.Join(w.endpoints, ",")
			endpoints[ep]++
			if ep != strings.Join(kept.endpoints, ",") {
				lastOther = time.Since(c.armed)
			}
		}
		time.Sleep(time.Second)
	}
	refusedLine, refusedErr := cp.WaitLog(0, time.Second, "another machine is writing as node")
	cp.Destroy()
	c.stopped = time.Now()
	var views, eps []string
	for k, n := range seen {
		views = append(views, fmt.Sprintf("%3d s: %s", n, k))
	}
	sort.Strings(views)
	for k, n := range endpoints {
		eps = append(eps, fmt.Sprintf("%3d s: [%s]", n, k))
	}
	sort.Strings(eps)
	var werr error
	if lastOther > 15*time.Second {
		werr = fmt.Errorf("the Service still had addresses that are not the original's %s after the guard armed", lastOther.Round(time.Second))
	}
	p.step(c.label+": within one status report of arming the original's pods are back, and stay for the minute it runs", werr,
		"pods (seconds per view):\n"+strings.Join(views, "\n"), "EndpointSlice (seconds per view):\n"+strings.Join(eps, "\n"))
	p.step(c.label+": its kubelet logs its refused pod writes", refusedErr, lastLines(refusedLine, 1))
	p.step(c.label+": a Warning Event on the Node says another machine writes its pods", p.podRefusalEvent(orig.Name))
	v, err := p.waitEndpoints(kept.endpoints, 30*time.Second)
	return p.step(c.label+" powered off: the original's status and endpoints are there", err, v.key())
}

// scenarioPodCopyWrites: a Deployment with a Service runs on pod-node-2; one of its
// containers crashes and is restarted; then a copy of the machine's whole disk boots
// while it runs, is powered off, and the original reboots. Every pods/status write of
// the two machines is kept (pod-status-writes.json) and the EndpointSlice watched.
func scenarioPodCopyWrites(p *podRun) bool {
	orig := p.nodes[1]
	started := time.Now()
	err := p.webPods(orig.Name, 2)
	var v webView
	if err == nil {
		v, err = p.waitWeb(2, 120*time.Second)
	}
	if !p.step("a Deployment of 2 pause pods with a Service runs on "+orig.Name, err, v.key(), fmt.Sprintf("endpoints %v", v.endpoints)) {
		return false
	}
	crashed := v.pods[0].Status.ContainerStatuses[0]
	err = orig.killContainer(crashed.ContainerID)
	if err == nil {
		deadline := time.Now().Add(90 * time.Second)
		for {
			v, err = p.web()
			if err == nil && v.ready() == 2 && v.pods[0].Status.ContainerStatuses[0].RestartCount > crashed.RestartCount {
				break
			}
			if time.Now().After(deadline) {
				err = fmt.Errorf("not restarted within 90 s: %s", v.key())
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	if !p.step("a container is killed and restarted by its kubelet", err, v.key()) {
		return false
	}
	kept := v

	perfect := orig.MachineSpec
	perfect.IP, perfect.NodeIP = "10.250.0.42", ""
	perfect.BootID = "42b0070a-4242-4c2d-8e9f-0a1b2c3d4e42"
	passes := []*copyPass{{label: "the perfect copy", spec: perfect, refusal: "nodeguard [two-kubelets]"}}
	clone := perfect
	clone.IP, clone.BootID = "10.250.0.43", "43b0070a-4343-4c2d-8e9f-0a1b2c3d4e43"
	clone.SystemUUID = "43d4c3b2-a190-4f8e-9d7c-6b5a4f3e2d43"
	passes = append(passes, &copyPass{label: "the incident's clone (its own system UUID)", spec: clone, refusal: "denied the request: nodeguard [", crash: true})
	for i, c := range passes {
		if !p.runCopy(orig, kept, c) {
			return false
		}
		if i == 0 {
			// The next copy arms the guard itself.
			res := p.r.forget(orig.Name, nil)
			var ferr error
			if !res.Pass {
				ferr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
			}
			p.step("nodeguard forget "+orig.Name+" clears the conflict", firstErr(ferr, p.waitConflict(orig.Name, false, 60*time.Second)))
		}
	}

	rebooted := time.Now()
	err = orig.Reboot(newBootID())
	if err == nil {
		err = p.waitNodeReady(orig.Machine, 120*time.Second)
	}
	if err == nil {
		v, err = p.waitWeb(2, 120*time.Second)
	}
	if err == nil {
		// Its pods report new sandboxes: other addresses than before the reboot.
		deadline := time.Now().Add(90 * time.Second)
		for strings.Join(v.endpoints, ",") == strings.Join(kept.endpoints, ",") && time.Now().Before(deadline) {
			time.Sleep(500 * time.Millisecond)
			v, _ = p.web()
		}
		if strings.Join(v.endpoints, ",") == strings.Join(kept.endpoints, ",") {
			err = fmt.Errorf("the pods still show the addresses from before the reboot: %s", v.key())
		}
	}
	p.step(orig.Name+" reboots with the guard still armed: its pods' new sandboxes are let through", err, fmt.Sprintf("after %s: %s", time.Since(rebooted).Round(time.Second), v.key()))
	_, _, err = p.waitReplicas(2, 120*time.Second)
	p.step("both nodeguard replicas are Ready again", err)

	time.Sleep(2 * time.Second) // the audit log is written after the answer
	events, err := readAudit(os.Getenv("CLUSTER_AUDIT_LOG"))
	if !p.step("the API server's audit log is read", err) {
		return false
	}
	who := map[string]string{orig.IP: "original"}
	for _, c := range passes {
		who[c.spec.IP] = "copy"
	}
	writes := statusWrites(events, started, who)
	for i := range writes {
		writes[i].Phase = "restart"
		for _, c := range passes {
			if !writes[i].At.Before(c.started) {
				writes[i].Phase = "copy"
			}
			if !writes[i].At.Before(c.stopped) {
				writes[i].Phase = "after-copy"
			}
		}
		if !writes[i].At.Before(rebooted) {
			writes[i].Phase = "reboot"
		}
	}
	record := filepath.Join(filepath.Dir(p.install), "pod-status-writes.json")
	b, err := json.MarshalIndent(writes, "", "  ")
	if err == nil {
		err = os.WriteFile(record, b, 0o644)
	}
	counts := map[string]*[2]int{}
	for _, w := range writes {
		k := w.Phase + ", " + w.From
		if counts[k] == nil {
			counts[k] = &[2]int{}
		}
		if w.Code < 400 {
			counts[k][0]++
		} else {
			counts[k][1]++
		}
	}
	var lines []string
	for k, c := range counts {
		lines = append(lines, fmt.Sprintf("%s: %d accepted, %d refused", k, c[0], c[1]))
	}
	sort.Strings(lines)
	p.step("every pods/status write of the machines is recorded", err, append([]string{record}, lines...)...)
	for _, c := range passes {
		var before, after []string
		firstRefused := time.Duration(-1)
		for _, w := range writes {
			if w.From != "copy" || w.At.Before(c.started) || !w.At.Before(c.stopped) {
				continue
			}
			switch {
			case w.Code < 400 && w.At.Before(c.armed):
				before = append(before, w.At.Format("15:04:05.000")+" "+w.Pod)
			case w.Code < 400:
				after = append(after, w.At.Format("15:04:05.000")+" "+w.Pod)
			case firstRefused < 0:
				firstRefused = w.At.Sub(c.armed)
			}
		}
		var aerr error
		if len(after) > 0 {
			aerr = fmt.Errorf("its pod writes accepted after the guard armed: %v", after)
		}
		p.step(c.label+": after the guard armed, none of its pod writes is accepted", aerr,
			fmt.Sprintf("accepted before arming: %d %v; after: %d; first refused %s after arming (%s after its boot)",
				len(before), before, len(after), firstRefused.Round(time.Millisecond), c.armed.Sub(c.started).Round(time.Millisecond)))
	}
	var origRefused []string
	var oerr error
	for _, w := range writes {
		if w.From == "original" && w.Code >= 400 {
			origRefused = append(origRefused, w.Phase+" "+w.At.Format("15:04:05.000")+" "+w.Pod)
			if w.Phase != "reboot" {
				oerr = fmt.Errorf("the original's pod writes refused: %v", origRefused)
			}
		}
	}
	p.step("no pod write of the original is refused while it runs", oerr, fmt.Sprintf("refused around its reboot, while its new boot was not yet recorded: %v", origRefused))
	res := p.r.forget(orig.Name, nil)
	var ferr error
	if !res.Pass {
		ferr = fmt.Errorf("%s", strings.Join(res.Details, "; "))
	}
	p.step("nodeguard forget "+orig.Name+" clears what the ledger holds of the clone", firstErr(ferr, p.waitGuard(orig.Name, false, 60*time.Second)))

	cx, cancel := ctx()
	defer cancel()
	err = p.r.cluster.admin.CoreV1().Namespaces().Delete(cx, incidentNS, metav1.DeleteOptions{})
	return p.step("the web pods are removed", err)
}
