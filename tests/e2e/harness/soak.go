package main

// The soak: several real kubelets with pods for a while, with reboots, kubelet
// restarts, an address change and a nodeguard restart injected; nothing legitimate may
// be refused or warned of. Prints the figures: admission requests nodeguard received
// per node per minute under the shipped matchConditions, and the findings.

import (
	"fmt"
	"math/rand"
	"os"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeImage: the fake CRI runs any image; this one is what a real node would pull.
const fakeImage = "registry.k8s.io/pause:3.10.1"

// RunSoak runs n machines for d and reports; it returns whether nothing was refused.
func (r *Runner) RunSoak(clusterBin, fakecri, dir string, n int, d time.Duration) bool {
	k, err := newKubeletRun(r, clusterBin, fakecri, dir)
	if err != nil {
		fmt.Printf("soak: %v\n", err)
		return false
	}
	k.scenario = "soak"
	defer k.removeMountTargets()
	defer k.cleanup()
	if !k.step("the cluster is cleared", r.cluster.Clear()) {
		return false
	}
	var machines []*Machine
	for i := 1; i <= n; i++ {
		spec := MachineSpec{Name: fmt.Sprintf("soak-%d", i), IP: fmt.Sprintf("10.250.0.%d", 100+i),
			MachineID: fmt.Sprintf("%032x", 0x50a0000+i), SystemUUID: fmt.Sprintf("5a000000-0000-4000-8000-%012x", i),
			BootID: fmt.Sprintf("b0000000-0000-4000-8000-%012x", i)}
		m, ok := k.joined(spec, "50a4ed")
		if !ok {
			return false
		}
		machines = append(machines, m)
	}
	if !k.step("each machine runs 2 pods", k.podsOn("soak", machines, 2, fakeImage, "")) {
		return false
	}
	start, err := r.ng.Metrics()
	if !k.step("nodeguard's counters at the start", err) {
		return false
	}
	began := time.Now()
	rng := rand.New(rand.NewSource(1))
	var injected []string
	restartedNodeguard, readdressed, deleted := false, false, false
	counted := &soakCounts{}
	boots := 0
	for time.Since(began) < d {
		time.Sleep(time.Duration(20+rng.Intn(20)) * time.Second)
		m := machines[rng.Intn(len(machines))]
		switch {
		case !restartedNodeguard && time.Since(began) > d/2:
			restartedNodeguard = true
			injected = append(injected, "nodeguard restarted")
			// Its counters restart from zero: keep what it had counted.
			before, err := r.ng.Metrics()
			if err == nil {
				counted.add(before, start)
			}
			if err := firstErr(err, r.ng.Stop(), r.ng.Start(r.readyWait)); err != nil {
				k.step("nodeguard restarts", err)
				return false
			}
			if start, err = r.ng.Metrics(); err != nil {
				k.step("nodeguard's counters after its restart", err)
				return false
			}
		case !readdressed && time.Since(began) > d/4:
			readdressed = true
			injected = append(injected, m.Name+" changes address")
			if err := m.Readdress(fmt.Sprintf("10.250.0.%d", 200+m.index%50)); err != nil {
				k.step("an address change", err)
				return false
			}
		case !deleted && time.Since(began) > d/3 || rng.Intn(4) == 0:
			deleted = true
			injected = append(injected, "a pod of "+m.Name+" is deleted")
			if err := k.deleteOnePod("soak", m.Name); err != nil {
				k.step("a pod deletion", err)
				return false
			}
		case rng.Intn(2) == 0:
			boots++
			injected = append(injected, m.Name+" reboots")
			if err := m.Reboot(fmt.Sprintf("b%07x-0000-4000-8000-%012x", boots, m.index)); err != nil {
				k.step("a reboot", err)
				return false
			}
		default:
			injected = append(injected, m.Name+"'s kubelet restarts")
			m.Stop()
			if err := m.Start(); err != nil {
				k.step("a kubelet restart", err)
				return false
			}
		}
	}
	for _, m := range machines {
		if err := k.waitNodeReady(m, 90*time.Second); err != nil {
			k.step("every machine is Ready at the end", err)
			return false
		}
	}
	end, err := r.ng.Metrics()
	if !k.step("nodeguard's counters at the end", err) {
		return false
	}
	minutes := time.Since(began).Minutes()
	counted.add(end, start)
	requests, findings := counted.requests, counted.findings
	var logged []string
	for _, m := range machines {
		if err := noRefusal(m, 0); err != nil {
			logged = append(logged, err.Error())
		}
	}
	var ferr error
	if findings != 0 || len(logged) > 0 {
		ferr = fmt.Errorf("%v findings in nodeguard's counters; kubelets logged: %s", findings, strings.Join(logged, "\n"))
	}
	k.step("no refusal and no warning for any legitimate write", ferr,
		fmt.Sprintf("%d machines, %.1f minutes, %d events injected: %s", n, minutes, len(injected), strings.Join(injected, ", ")),
		fmt.Sprintf("admission requests nodeguard answered: %v, %.3f per node per minute; findings (refusals and warnings): %v", requests, requests/float64(n)/minutes, findings),
		fmt.Sprintf("of which pods/status writes (pod-status.nodeguard.io): %v, %.3f per node per minute", counted.pods, counted.pods/float64(n)/minutes))
	events, err := readAudit(os.Getenv("CLUSTER_AUDIT_LOG"))
	if err == nil {
		reached, podWrites := 0, 0
		for _, e := range events {
			if e.StageTimestamp.Before(began) {
				continue
			}
			switch e.resource() {
			case "create nodes", "patch nodes/status", "patch nodes", "update nodes/status", "create certificatesigningrequests":
				reached++
			case "patch pods/status", "update pods/status":
				podWrites++
			}
		}
		k.step("the load the kubelets put on the API server", nil,
			fmt.Sprintf("kubelet writes of the kinds nodeguard's node and CSR webhooks match: %d, %.2f per node per minute (nodeguard sees only those that change identity)", reached, float64(reached)/float64(n)/minutes),
			fmt.Sprintf("kubelet pods/status writes: %d, %.2f per node per minute; %.0f reached nodeguard (%.0f%%: those that move a sandbox or change a container)", podWrites, float64(podWrites)/float64(n)/minutes, counted.pods, 100*counted.pods/float64(max(podWrites, 1))))
	}
	return k.failed == 0
}

// soakCounts adds up nodeguard's counters over its restarts.
type soakCounts struct{ requests, findings, pods float64 }

func (c *soakCounts) add(now, since map[string]float64) {
	c.requests += now["nodeguard_admission_requests_total"] - since["nodeguard_admission_requests_total"]
	c.findings += now["nodeguard_admission_findings_total"] - since["nodeguard_admission_findings_total"]
	pods := `nodeguard_admission_requests_total{webhook="pods"}`
	c.pods += now[pods] - since[pods]
}

// deleteOnePod deletes one pod of ns running on node; its Deployment makes another.
func (k *kubeletRun) deleteOnePod(ns, node string) error {
	cx, cancel := ctx()
	defer cancel()
	pods, err := k.r.cluster.admin.CoreV1().Pods(ns).List(cx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return err
	}
	for _, pod := range pods.Items {
		if pod.DeletionTimestamp == nil {
			return k.r.cluster.admin.CoreV1().Pods(ns).Delete(cx, pod.Name, metav1.DeleteOptions{})
		}
	}
	return nil
}

// podsOn runs, for each machine, a Deployment of per pods of image pinned to it by
// nodeName (no scheduler runs), and waits until they all run.
func (k *kubeletRun) podsOn(ns string, machines []*Machine, per int32, image string, pull corev1.PullPolicy) error {
	cx, cancel := ctx()
	defer cancel()
	if _, err := k.r.cluster.admin.CoreV1().Namespaces().Create(cx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for _, m := range machines {
		labels := map[string]string{"app": ns, "node": m.Name}
		_, err := k.r.cluster.admin.AppsV1().Deployments(ns).Create(cx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: ns},
			Spec: appsv1.DeploymentSpec{
				Replicas: &per,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{NodeName: m.Name,
						Containers: []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: pull}}},
				},
			},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	want := int(per) * len(machines)
	deadline := time.Now().Add(120 * time.Second)
	for {
		running, desc := k.pods(ns)
		if running == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d pods Running within 120 s: %s", running, want, desc)
		}
		time.Sleep(time.Second)
	}
}

// pods counts the Running pods of ns and describes each (phase, hostIP).
func (k *kubeletRun) pods(ns string) (running int, desc string) {
	cx, cancel := ctx()
	defer cancel()
	pods, err := k.r.cluster.admin.CoreV1().Pods(ns).List(cx, metav1.ListOptions{})
	if err != nil {
		return 0, err.Error()
	}
	var each []string
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning {
			running++
		}
		each = append(each, fmt.Sprintf("%s %s hostIP %s", p.Name, p.Status.Phase, p.Status.HostIP))
	}
	return running, strings.Join(each, ", ")
}
