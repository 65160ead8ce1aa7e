package main

// The soak of the machines that run pods, with no copy anywhere: containers crash and
// are restarted by their kubelet, pods are deleted and replaced, kubelets restart,
// machines reboot and one changes address. The pod guard is armed for no node, so none
// of these pods/status writes may be refused; the API server's own counters say how many
// of them its matchConditions sent to nodeguard.

import (
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const podSoakNS = "soak"

// Readdress gives the machine another address (its DHCP lease changed): the kubelet
// restarts reporting it, the containers run on, and the host routes the pod range to it.
func (n *PodMachine) Readdress(ip string) error {
	n.Machine.Stop()
	if err := n.address(ip); err != nil {
		return err
	}
	if err := n.route(); err != nil {
		return err
	}
	return n.StartKubelet()
}

// crash kills the running container of the node's soak pod restarted least, and waits
// until its kubelet has restarted it and reported so.
func (p *podRun) crash(node string) (string, error) {
	cx, cancel := ctx()
	pods, err := p.r.cluster.admin.CoreV1().Pods(podSoakNS).List(cx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	cancel()
	if err != nil {
		return "", err
	}
	var victim *corev1.Pod
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil || len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].State.Running == nil {
			continue
		}
		if victim == nil || pod.Status.ContainerStatuses[0].RestartCount < victim.Status.ContainerStatuses[0].RestartCount {
			victim = pod
		}
	}
	if victim == nil {
		return "", fmt.Errorf("no running soak pod on %s", node)
	}
	before := victim.Status.ContainerStatuses[0]
	machine := p.podMachine(node)
	if machine == nil {
		return "", fmt.Errorf("no machine %s", node)
	}
	if err := machine.killContainer(before.ContainerID); err != nil {
		return "", err
	}
	return p.restarted(podSoakNS, victim.Name, before, 90*time.Second)
}

// restarted waits until pod ns/name shows its first container, before, restarted: a new
// container, its restart count up, running.
func (p *podRun) restarted(ns, name string, before corev1.ContainerStatus, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		cx, cancel := ctx()
		pod, err := p.r.cluster.admin.CoreV1().Pods(ns).Get(cx, name, metav1.GetOptions{})
		cancel()
		if err == nil && len(pod.Status.ContainerStatuses) > 0 {
			now := pod.Status.ContainerStatuses[0]
			if now.RestartCount > before.RestartCount && now.ContainerID != before.ContainerID && now.State.Running != nil {
				return fmt.Sprintf("%s: %s#%d -> %s#%d, pod IP %s", name, shortID(before.ContainerID), before.RestartCount,
					shortID(now.ContainerID), now.RestartCount, pod.Status.PodIP), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s's container %s was not reported restarted within %s", name, shortID(before.ContainerID), timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (p *podRun) podMachine(name string) *PodMachine {
	for _, n := range p.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// waitSoakPods waits until every soak pod runs, its container ready.
func (p *podRun) waitSoakPods(want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cx, cancel := ctx()
		pods, err := p.r.cluster.admin.CoreV1().Pods(podSoakNS).List(cx, metav1.ListOptions{})
		cancel()
		ready := 0
		if err == nil {
			for _, pod := range pods.Items {
				for _, c := range pod.Status.Conditions {
					if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && pod.DeletionTimestamp == nil {
						ready++
					}
				}
			}
		}
		if ready == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d soak pods ready within %s (%v)", ready, want, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// scenarioPodSoak: both pod machines run soak pods beside nodeguard's own while their
// containers crash, pods are deleted, kubelets restart, machines reboot and one changes
// address. No pod status write may be refused.
func scenarioPodSoak(p *podRun) bool {
	var machines []*Machine
	for _, n := range p.nodes {
		machines = append(machines, n.Machine)
	}
	const per = 2
	want := per * len(machines)
	err := p.podsOn(podSoakNS, machines, per, p.pods.sandboxImage, corev1.PullNever)
	if !p.step(fmt.Sprintf("each machine runs %d soak pods (containerd, runc)", per), err) {
		return false
	}
	for _, n := range p.nodes {
		if err := p.waitGuard(n.Name, false, 10*time.Second); !p.step("the pods of "+n.Name+" are not guarded: no other machine writes as it", err) {
			return false
		}
	}
	start, err := p.apiserverCounts("pod-status.nodeguard.io")
	if !p.step("the API server's counters for pod-status.nodeguard.io at the start", err) {
		return false
	}
	logFrom := map[string]int{}
	for _, n := range p.nodes {
		logFrom[n.Name] = n.LogSize()
	}
	began := time.Now()
	n1, n2 := p.nodes[0], p.nodes[1]
	moved := "10.250.0.36"
	type event struct {
		what string
		do   func() (string, error)
	}
	crash := func(n *PodMachine) event {
		return event{"a container of " + n.Name + " crashes and is restarted", func() (string, error) { return p.crash(n.Name) }}
	}
	restart := func(n *PodMachine) event {
		return event{n.Name + "'s kubelet restarts", func() (string, error) {
			if err := n.RestartKubelet(); err != nil {
				return "", err
			}
			return "", p.waitNodeReady(n.Machine, 90*time.Second)
		}}
	}
	deletion := func(n *PodMachine) event {
		return event{"a soak pod of " + n.Name + " is deleted and replaced", func() (string, error) {
			if err := p.deleteOnePod(podSoakNS, n.Name); err != nil {
				return "", err
			}
			time.Sleep(2 * time.Second)
			return "", p.waitSoakPods(want, 90*time.Second)
		}}
	}
	reboot := func(n *PodMachine) event {
		return event{n.Name + " reboots (every container with it)", func() (string, error) {
			t := time.Now()
			err := n.Reboot(newBootID())
			if err == nil {
				err = p.waitNodeReady(n.Machine, 120*time.Second)
			}
			if err == nil {
				err = p.waitSoakPods(want, 120*time.Second)
			}
			return fmt.Sprintf("pods back after %s", time.Since(t).Round(time.Second)), err
		}}
	}
	readdress := func(n *PodMachine, ip string) event {
		return event{n.Name + " changes address to " + ip, func() (string, error) {
			if err := n.Readdress(ip); err != nil {
				return "", err
			}
			return "", p.waitNodeReady(n.Machine, 90*time.Second)
		}}
	}
	events := []event{crash(n1), crash(n2), restart(n1), deletion(n2), crash(n2), reboot(n1), crash(n1),
		readdress(n2, moved), restart(n2), crash(n1), reboot(n2), deletion(n1), crash(n2), crash(n1),
		readdress(n2, n2.IP)}
	crashes := 0
	for _, e := range events {
		time.Sleep(10 * time.Second)
		info, err := e.do()
		if !p.step("soak: "+e.what, err, info) {
			return false
		}
		if strings.Contains(e.what, "crashes") {
			crashes++
		}
	}
	err = p.waitSoakPods(want, 120*time.Second)
	if err == nil {
		_, _, err = p.waitReplicas(2, 120*time.Second)
	}
	p.step("every soak pod and both nodeguard replicas are ready at the end", err)
	minutes := time.Since(began).Minutes()
	time.Sleep(2 * time.Second) // the audit log is written after the answer
	end, err := p.apiserverCounts("pod-status.nodeguard.io")
	if !p.step("the API server's counters for pod-status.nodeguard.io at the end", err) {
		return false
	}
	audit, err := readAudit(os.Getenv("CLUSTER_AUDIT_LOG"))
	if !p.step("the API server's audit log is read", err) {
		return false
	}
	writes, refused := 0, []string{}
	for _, e := range audit {
		if e.StageTimestamp.Before(began) || e.ObjectRef.Resource != "pods" || e.ObjectRef.Subresource != "status" ||
			!strings.HasPrefix(e.User.Username, "system:node:pod-node-") {
			continue
		}
		writes++
		if strings.Contains(e.ResponseStatus.Message, "nodeguard") {
			refused = append(refused, fmt.Sprintf("%s %s/%s: %s", e.StageTimestamp.Format("15:04:05.000"), e.ObjectRef.Namespace, e.ObjectRef.Name, e.ResponseStatus.Message))
		}
	}
	var logged []string
	for _, n := range p.nodes {
		if i := strings.Index(n.LogSince(logFrom[n.Name]), "nodeguard ["); i >= 0 {
			logged = append(logged, n.Name+": "+lastLines(n.LogSince(logFrom[n.Name])[i:], 1))
		}
	}
	calls, rejected := end.requests-start.requests, end.rejected-start.rejected
	var serr error
	if rejected != 0 || len(refused) > 0 || len(logged) > 0 {
		serr = fmt.Errorf("pod status writes refused: API server counted %v rejections of pod-status.nodeguard.io; audit log: %v; kubelets logged: %v", rejected, refused, logged)
	}
	nodes := float64(len(p.nodes))
	p.step("soak: no pod status write of either machine is refused", serr,
		fmt.Sprintf("%d machines, %.1f minutes, %d events injected (%d container crashes)", len(p.nodes), minutes, len(events), crashes),
		fmt.Sprintf("their kubelets' pods/status writes: %d, %.2f per node per minute", writes, float64(writes)/nodes/minutes),
		fmt.Sprintf("sent to nodeguard by the matchConditions (the API server's count): %.0f, %.2f per node per minute (%.0f%% of the writes)",
			calls, calls/nodes/minutes, 100*calls/float64(max(writes, 1))))
	cx, cancel := ctx()
	defer cancel()
	err = p.r.cluster.admin.CoreV1().Namespaces().Delete(cx, podSoakNS, metav1.DeleteOptions{})
	return p.step("the soak pods are removed", err)
}
