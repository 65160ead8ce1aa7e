package main

// What scenarios check of nodeguard's ledger: NodeIdentities in the cluster (boots, keys,
// status.conflict), the Events nodeguard publishes, nodeguard's ledger gauges, and
// `nodeguard forget`.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
)

const (
	waitForTimeout = 10 * time.Second
	waitForPoll    = 20 * time.Millisecond
	// expect.events and expect.nodeIdentity poll this long for the cluster to match.
	expectSettle      = 2 * time.Second
	resetLedgerWait   = 15 * time.Second
	forgetTimeout     = 30 * time.Second
	gaugeLedgerRecs   = "nodeguard_ledger_records"
	gaugeLedgerConfls = "nodeguard_ledger_conflicts"
)

// niView is a NodeIdentity as the checks read it.
type niView struct {
	name     string
	exists   bool
	boots    []string    // spec.boots[].bootID, in order
	keys     []string    // spec.keys[].fingerprint
	conflict interface{} // status.conflict; nil when absent, null or false
	refused  []string    // spec.refusedMachines[].systemUUID
	proven   int         // how many of them are proven second machines
}

func (v niView) hasConflict() bool { return v.conflict != nil }

func (v niView) lastBoot() string {
	if len(v.boots) == 0 {
		return ""
	}
	return v.boots[len(v.boots)-1]
}

func (v niView) hasKey(fp string) bool {
	for _, k := range v.keys {
		if k == fp {
			return true
		}
	}
	return false
}

func nested(o map[string]interface{}, path ...string) interface{} {
	var cur interface{} = o
	for _, p := range path {
		m, ok := cur.(map[string]interface{})
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// strings of field `field` of every object of the list at path.
func listField(o map[string]interface{}, field string, path ...string) []string {
	items, _ := nested(o, path...).([]interface{})
	var out []string
	for _, it := range items {
		m, _ := it.(map[string]interface{})
		s, _ := m[field].(string)
		out = append(out, s)
	}
	return out
}

func viewOf(name string, o map[string]interface{}) niView {
	v := niView{name: name, exists: o != nil}
	if o == nil {
		return v
	}
	v.boots = listField(o, "bootID", "spec", "boots")
	v.keys = listField(o, "fingerprint", "spec", "keys")
	v.refused = listField(o, "systemUUID", "spec", "refusedMachines")
	for _, p := range listField(o, "proven", "spec", "refusedMachines") {
		if p != "" {
			v.proven++
		}
	}
	switch c := nested(o, "status", "conflict").(type) {
	case nil:
	case bool:
		if c {
			v.conflict = c
		}
	default:
		v.conflict = c
	}
	return v
}

func (r *Runner) nodeIdentity(name string) niView {
	return viewOf(name, r.cluster.NodeIdentity(name))
}

// ledgerCounts is what nodeguard's ledger gauges should say: NodeIdentities, and those
// with a status.conflict.
func (r *Runner) ledgerCounts() (records, conflicts int) {
	for _, o := range r.cluster.NodeIdentities() {
		records++
		if viewOf("", o).hasConflict() {
			conflicts++
		}
	}
	return
}

func (r *Runner) describe(v niView) string {
	if !v.exists {
		return fmt.Sprintf("no NodeIdentity %s", v.name)
	}
	keys := make([]string, len(v.keys))
	for i, fp := range v.keys {
		keys[i] = r.keys.NameOf(fp)
	}
	conflict := "absent"
	if v.hasConflict() {
		b, _ := json.Marshal(v.conflict)
		conflict = string(b)
	}
	return fmt.Sprintf("NodeIdentity %s: boots [%s], keys [%s], refused machines [%s] (%d proven), status.conflict %s",
		v.name, strings.Join(v.boots, ", "), strings.Join(keys, ", "), strings.Join(v.refused, ", "), v.proven, conflict)
}

// ledgerState describes every NodeIdentity and nodeguard's ledger gauges, for the
// report of a failed step.
func (r *Runner) ledgerState() []string {
	var out []string
	for _, o := range r.cluster.NodeIdentities() {
		name, _ := nested(o, "metadata", "name").(string)
		out = append(out, "ledger: "+r.describe(viewOf(name, o)))
	}
	if len(out) == 0 {
		out = append(out, "ledger: no NodeIdentity")
	}
	if r.ng.Running() {
		if m, err := r.ng.Metrics(); err == nil {
			out = append(out, fmt.Sprintf("ledger: nodeguard says %s %v, %s %v", gaugeLedgerRecs, m[gaugeLedgerRecs], gaugeLedgerConfls, m[gaugeLedgerConfls]))
		}
	}
	return out
}

// gaugesCaughtUp says whether nodeguard's ledger gauges equal the cluster's counts, and
// what they were.
func (r *Runner) gaugesCaughtUp() (bool, string) {
	m, err := r.ng.Metrics()
	if err != nil {
		return false, "nodeguard's /metrics: " + err.Error()
	}
	records, conflicts := r.ledgerCounts()
	gr, okR := m[gaugeLedgerRecs]
	gc, okC := m[gaugeLedgerConfls]
	switch {
	case !okR || !okC:
		return false, gaugeLedgerRecs + " or " + gaugeLedgerConfls + " missing from /metrics"
	case int(gr) == records && int(gc) == conflicts:
		return true, ""
	}
	return false, fmt.Sprintf("%s %v, %s %v; the cluster holds %d NodeIdentities, %d with status.conflict",
		gaugeLedgerRecs, gr, gaugeLedgerConfls, gc, records, conflicts)
}

// ---- reset -------------------------------------------------------------------------

// waitLedgerSetup waits until the recorder recorded the setup: for every Node a
// NodeIdentity whose last boot is the Node's, for every issued kubelet CSR its key in
// the NodeIdentity of its node, no NodeIdentity of another name, and nodeguard's own
// view (the gauges) caught up.
func (r *Runner) waitLedgerSetup(nodes []*corev1.Node, csrs []*certificatesv1.CertificateSigningRequest, specs []CSRSpec) error {
	names := map[string]bool{}
	for _, n := range nodes {
		names[n.Name] = true
	}
	for _, c := range specs {
		names[c.Node] = true
	}
	deadline := time.Now().Add(resetLedgerWait)
	for {
		var missing []string
		for _, n := range nodes {
			v := r.nodeIdentity(n.Name)
			if v.lastBoot() != n.Status.NodeInfo.BootID {
				missing = append(missing, fmt.Sprintf("node %s (boot %s): %s", n.Name, n.Status.NodeInfo.BootID, r.describe(v)))
			}
		}
		for i, c := range csrs {
			if !bindsKey(c) {
				continue
			}
			fp, err := r.keys.Fingerprint(specs[i].Key)
			if err != nil {
				return err
			}
			if v := r.nodeIdentity(specs[i].Node); !v.hasKey(fp) {
				missing = append(missing, fmt.Sprintf("CSR %s: key %s (%s) not in spec.keys: %s", c.Name, specs[i].Key, fp, r.describe(v)))
			}
		}
		for _, o := range r.cluster.NodeIdentities() {
			name, _ := nested(o, "metadata", "name").(string)
			if !names[name] {
				missing = append(missing, fmt.Sprintf("NodeIdentity %s is neither a setup node nor a setup CSR's node (left over from the previous scenario?)", name))
			}
		}
		if len(missing) == 0 {
			ok, last := r.gaugesCaughtUp()
			if ok {
				return nil
			}
			missing = append(missing, "nodeguard's view: "+last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodeguard's recorder did not record the setup within %s:\n  %s", resetLedgerWait, strings.Join(missing, "\n  "))
		}
		time.Sleep(waitForPoll)
	}
}

// ---- waitFor -----------------------------------------------------------------------

// WaitFor waits (10 s at most) until a NodeIdentity reaches a state, then until
// nodeguard's ledger gauges match the cluster.
type WaitFor struct {
	NodeIdentity string `json:"nodeIdentity"`
	Conflict     *bool  `json:"conflict,omitempty"`
	Boots        *int   `json:"boots,omitempty"`
	Key          string `json:"key,omitempty"`
	// Refused is how many machines the record holds as refused for the name; Proven,
	// how many of them are proven second machines.
	Refused *int `json:"refused,omitempty"`
	Proven  *int `json:"proven,omitempty"`
}

func (w *WaitFor) check() error {
	n := 0
	for _, set := range []bool{w.Conflict != nil, w.Boots != nil, w.Key != "", w.Refused != nil, w.Proven != nil} {
		if set {
			n++
		}
	}
	switch {
	case w.NodeIdentity == "":
		return fmt.Errorf("waitFor: nodeIdentity is required")
	case n != 1:
		return fmt.Errorf("waitFor: exactly one of conflict, boots, key, refused and proven")
	}
	return nil
}

func (w *WaitFor) String() string {
	switch {
	case w.Conflict != nil:
		return fmt.Sprintf("waitFor %s conflict=%v", w.NodeIdentity, *w.Conflict)
	case w.Boots != nil:
		return fmt.Sprintf("waitFor %s boots=%d", w.NodeIdentity, *w.Boots)
	case w.Refused != nil:
		return fmt.Sprintf("waitFor %s refused=%d", w.NodeIdentity, *w.Refused)
	case w.Proven != nil:
		return fmt.Sprintf("waitFor %s proven=%d", w.NodeIdentity, *w.Proven)
	}
	return fmt.Sprintf("waitFor %s key=%s", w.NodeIdentity, w.Key)
}

func (r *Runner) waitFor(w *WaitFor) StepResult {
	if !r.ledger {
		return StepResult{Details: []string{"waitFor: " + r.noLedger}}
	}
	fp := ""
	if w.Key != "" {
		var err error
		if fp, err = r.keys.Fingerprint(w.Key); err != nil {
			return StepResult{Details: []string{err.Error()}}
		}
	}
	deadline := time.Now().Add(waitForTimeout)
	started := time.Now()
	var last string
	reached := false
	for {
		v := r.nodeIdentity(w.NodeIdentity)
		switch {
		case !v.exists:
			reached = false
		case w.Conflict != nil:
			reached = v.hasConflict() == *w.Conflict
		case w.Boots != nil:
			reached = len(v.boots) == *w.Boots
		case w.Refused != nil:
			reached = len(v.refused) == *w.Refused
		case w.Proven != nil:
			reached = v.proven == *w.Proven
		default:
			reached = v.hasKey(fp)
		}
		last = r.describe(v)
		if reached {
			if !r.ng.Running() {
				return StepResult{Pass: true, Info: []string{last, "nodeguard is stopped: its gauges were not checked"}}
			}
			ok, g := r.gaugesCaughtUp()
			if ok {
				return StepResult{Pass: true, Info: []string{fmt.Sprintf("after %s: %s", time.Since(started).Round(time.Millisecond), last)}}
			}
			last += "; nodeguard's view: " + g
		}
		if time.Now().After(deadline) {
			return StepResult{Details: []string{fmt.Sprintf("%s: not within %s; last seen: %s", w, waitForTimeout, last)}}
		}
		time.Sleep(waitForPoll)
	}
}

// ---- expectations on the ledger and events ----------------------------------------

// EventExpect is one Event nodeguard published about a Node (events.k8s.io/v1, in
// namespace default).
type EventExpect struct {
	Node   string  `json:"node"`
	Reason string  `json:"reason"`
	Type   string  `json:"type"`
	Note   *string `json:"note,omitempty"`
	Action *string `json:"action,omitempty"`
	// Count is the Event's series count (1 for an Event with no series).
	Count *int64 `json:"count,omitempty"`
}

// NodeIdentityExpect is the state of one NodeIdentity after the step.
type NodeIdentityExpect struct {
	Name     string `json:"name"`
	Exists   *bool  `json:"exists,omitempty"`
	Conflict *bool  `json:"conflict,omitempty"`
	Boots    *int   `json:"boots,omitempty"`
	Refused  *int   `json:"refused,omitempty"`
	Proven   *int   `json:"proven,omitempty"`
}

type seenEvent struct {
	namespace, node, reason, typ, note, controller, action string
	count                                                  int64
}

func (e seenEvent) String() string {
	return fmt.Sprintf("{namespace: %s, node: %s, reason: %s, type: %s, action: %s, note: %q, reportingController: %s, count: %d}",
		e.namespace, e.node, e.reason, e.typ, e.action, e.note, e.controller, e.count)
}

// nodeEvents are nodeguard's Events (reportingController nodeguard) whose regarding
// is a Node. Other controllers post their own about Nodes (kube-controller-manager's
// node lifecycle controller a RegisteredNode for each); they are counted in others.
func (r *Runner) nodeEvents() (nodes []seenEvent, others int) {
	for _, o := range r.cluster.Events() {
		str := func(path ...string) string { s, _ := nested(o, path...).(string); return s }
		if str("regarding", "kind") != "Node" || str("reportingController") != "nodeguard" {
			others++
			continue
		}
		count := int64(1)
		if c, ok := nested(o, "series", "count").(int64); ok {
			count = c
		}
		nodes = append(nodes, seenEvent{
			namespace: str("metadata", "namespace"), node: str("regarding", "name"), reason: str("reason"),
			typ: str("type"), note: str("note"), controller: str("reportingController"), action: str("action"), count: count,
		})
	}
	return nodes, others
}

// matchEvents pairs every expected event with a distinct stored one (in namespace
// default); it says what is missing and what is left over.
func matchEvents(want []EventExpect, notes []string, got []seenEvent) (missing []string, extra []string) {
	used := make([]bool, len(got))
	// Expectations with a note first, so that a note-less one does not take their event.
	order := make([]int, len(want))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return want[order[a]].Note != nil && want[order[b]].Note == nil })
	for _, i := range order {
		w := want[i]
		found := false
		for j, g := range got {
			if used[j] || g.namespace != "default" || g.node != w.Node || g.reason != w.Reason || g.typ != w.Type {
				continue
			}
			if w.Note != nil && notes[i] != g.note {
				continue
			}
			if (w.Action != nil && *w.Action != g.action) || (w.Count != nil && *w.Count != g.count) {
				continue
			}
			used[j], found = true, true
			break
		}
		if !found {
			note := "any note"
			if w.Note != nil {
				note = fmt.Sprintf("note %q", notes[i])
			}
			if w.Action != nil {
				note += ", action " + *w.Action
			}
			if w.Count != nil {
				note += fmt.Sprintf(", count %d", *w.Count)
			}
			missing = append(missing, fmt.Sprintf("{node: %s, reason: %s, type: %s, %s}", w.Node, w.Reason, w.Type, note))
		}
	}
	for j, g := range got {
		if !used[j] {
			extra = append(extra, g.String())
		}
	}
	return missing, extra
}

// checkEvents polls until the Node events in the cluster are exactly want.
func (r *Runner) checkEvents(want []EventExpect) (details, info []string) {
	notes := make([]string, len(want))
	for i, w := range want {
		if w.Note != nil {
			n, err := r.keys.Expand(*w.Note)
			if err != nil {
				return []string{"events: cannot expand placeholders: " + err.Error()}, nil
			}
			notes[i] = n
		}
	}
	deadline := time.Now().Add(expectSettle)
	stableOnce := false
	for {
		got, others := r.nodeEvents()
		missing, extra := matchEvents(want, notes, got)
		if len(missing) == 0 && len(extra) == 0 {
			if stableOnce {
				if d := r.describeShows(want); len(d) > 0 {
					return d, nil
				}
				return nil, []string{fmt.Sprintf("events: %d of nodeguard about Nodes as expected (%d others)", len(got), others)}
			}
			// Once more after a grace, so that one arriving right now is not missed.
			stableOnce = true
			time.Sleep(r.grace)
			continue
		}
		stableOnce = false
		if time.Now().After(deadline) {
			var d []string
			for _, m := range missing {
				d = append(d, "events: missing "+m)
			}
			for _, e := range extra {
				d = append(d, "events: not expected "+e)
			}
			return d, nil
		}
		time.Sleep(waitForPoll)
	}
}

// describeShows checks that `kubectl describe node` shows each expected event in its
// Events section, which is where an administrator looks; for a Node that does not exist
// (a registration refused), that `kubectl get events` lists it against node/NAME.
func (r *Runner) describeShows(want []EventExpect) (details []string) {
	for _, w := range want {
		cx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
		out, err := exec.CommandContext(cx, r.kubectl, "--kubeconfig", r.cluster.adminKubeconfig, "describe", "node", w.Node).CombinedOutput()
		cancel()
		if err != nil && strings.Contains(string(out), "NotFound") {
			if d := r.getEventsShows(w); d != "" {
				details = append(details, d)
			}
			continue
		}
		if err != nil {
			details = append(details, fmt.Sprintf("kubectl describe node %s: %v: %s", w.Node, err, out))
			continue
		}
		text := string(out)
		i := strings.Index(text, "\nEvents:")
		shown := false
		if i >= 0 {
			for _, line := range strings.Split(text[i:], "\n") {
				f := strings.Fields(line)
				if len(f) >= 2 && f[0] == w.Type && f[1] == w.Reason {
					shown = true
				}
			}
		}
		if !shown {
			details = append(details, fmt.Sprintf("kubectl describe node %s does not show the %s %s event:\n%s", w.Node, w.Type, w.Reason, indent(text[max(i, 0):], "  | ")))
		}
	}
	return details
}

// getEventsShows checks that `kubectl get events` lists the event against node/NAME;
// it says what is wrong, or nothing.
func (r *Runner) getEventsShows(w EventExpect) string {
	cx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
	defer cancel()
	out, err := exec.CommandContext(cx, r.kubectl, "--kubeconfig", r.cluster.adminKubeconfig, "get", "events", "-n", "default",
		"--field-selector", "involvedObject.kind=Node,involvedObject.name="+w.Node).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("kubectl get events for node %s: %v: %s", w.Node, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == w.Type && f[2] == w.Reason && f[3] == "node/"+w.Node {
			return ""
		}
	}
	return fmt.Sprintf("kubectl get events does not list the %s %s event of node/%s:\n%s", w.Type, w.Reason, w.Node, indent(string(out), "  | "))
}

// checkNodeIdentity polls until the NodeIdentity is as expected.
func (r *Runner) checkNodeIdentity(e *NodeIdentityExpect) (details, info []string) {
	deadline := time.Now().Add(expectSettle)
	for {
		v := r.nodeIdentity(e.Name)
		var mismatches []string
		wantExists := e.Exists == nil || *e.Exists
		if v.exists != wantExists {
			mismatches = append(mismatches, fmt.Sprintf("nodeIdentity %s: expected exists=%v", e.Name, wantExists))
		}
		if v.exists && e.Conflict != nil && v.hasConflict() != *e.Conflict {
			mismatches = append(mismatches, fmt.Sprintf("nodeIdentity %s: expected conflict=%v", e.Name, *e.Conflict))
		}
		if v.exists && e.Boots != nil && len(v.boots) != *e.Boots {
			mismatches = append(mismatches, fmt.Sprintf("nodeIdentity %s: expected %d boots, got %d", e.Name, *e.Boots, len(v.boots)))
		}
		if v.exists && e.Refused != nil && len(v.refused) != *e.Refused {
			mismatches = append(mismatches, fmt.Sprintf("nodeIdentity %s: expected %d refused machines, got %d", e.Name, *e.Refused, len(v.refused)))
		}
		if v.exists && e.Proven != nil && v.proven != *e.Proven {
			mismatches = append(mismatches, fmt.Sprintf("nodeIdentity %s: expected %d proven second machines, got %d", e.Name, *e.Proven, v.proven))
		}
		if len(mismatches) == 0 {
			return nil, []string{r.describe(v)}
		}
		if time.Now().After(deadline) {
			return append(mismatches, "got: "+r.describe(v)), nil
		}
		time.Sleep(waitForPoll)
	}
}

// ---- forget ------------------------------------------------------------------------

// forget runs `nodeguard forget NODE` as the cluster's administrator.
func (r *Runner) forget(node string, e *Expect) StepResult {
	res, _ := r.command(e, "forget", node, "--kubeconfig", r.cluster.adminKubeconfig)
	return res
}

// CollisionExpect is one collision `nodeguard audit --output json` reports.
type CollisionExpect struct {
	Check string   `json:"check"`
	Kind  string   `json:"kind"`
	Nodes []string `json:"nodes"`
}

// audit runs `nodeguard audit` against the live cluster as the administrator and
// checks its exit code and the collisions of its JSON report.
func (r *Runner) audit(args []string, e *Expect) StepResult {
	argv := append([]string{"audit", "--kubeconfig", r.cluster.adminKubeconfig, "--output", "json"}, args...)
	res, out := r.command(e, argv...)
	if e == nil || e.Collisions == nil {
		return res
	}
	var report struct {
		Collisions []CollisionExpect `json:"collisions"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		res.Pass = false
		res.Details = append(res.Details, "the report is not JSON: "+err.Error())
		return res
	}
	if report.Collisions == nil {
		report.Collisions = []CollisionExpect{}
	}
	if !reflect.DeepEqual(report.Collisions, *e.Collisions) {
		res.Pass = false
		res.Details = append(res.Details, fmt.Sprintf("collisions:\n        expected %+v\n        got      %+v", *e.Collisions, report.Collisions))
	}
	return res
}

// command runs the nodeguard binary with args, checks its exit code and (when given)
// its whole output against e, and returns its standard output.
func (r *Runner) command(e *Expect, args ...string) (StepResult, string) {
	ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
	defer cancel()
	argv := append([]string{r.ng.binary}, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(cmd.Environ(), "NO_COLOR=1")
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok || ctx.Err() != nil {
			return StepResult{Details: []string{fmt.Sprintf("running %s: %v (stderr: %s)", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))}}, ""
		}
		code = ee.ExitCode()
	}
	out := strings.TrimSpace(stdout.String())
	shown := out
	if len(shown) > 2000 {
		shown = shown[:2000] + "…"
	}
	res := StepResult{Pass: true, Info: []string{
		fmt.Sprintf("ran: %s", strings.Join(argv, " ")),
		fmt.Sprintf("exit status %d; stdout %q", code, shown),
	}}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		res.Info = append(res.Info, "stderr:\n"+indent(s, "  | "))
	}
	wantCode := 0
	if e != nil && e.ExitCode != nil {
		wantCode = *e.ExitCode
	}
	if code != wantCode {
		res.Pass = false
		res.Details = append(res.Details, fmt.Sprintf("exitCode: expected %d, got %d", wantCode, code))
	}
	if e != nil && e.Output != nil {
		want, err := r.keys.Expand(*e.Output)
		if err != nil {
			res.Pass = false
			res.Details = append(res.Details, "output: cannot expand placeholders: "+err.Error())
		} else if strings.TrimSpace(want) != out {
			res.Pass = false
			res.Details = append(res.Details, fmt.Sprintf("output:\n        expected %q\n        got      %q", strings.TrimSpace(want), out))
		}
	}
	r.settle()
	return res, out
}
