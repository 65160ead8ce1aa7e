package main

// Scenario files (YAML; one scenario per document, several documents per file allowed)
// and how their steps run.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission"
	"sigs.k8s.io/yaml"
)

type Scenario struct {
	Name  string `json:"name"`
	Setup struct {
		Nodes []NodeSpec `json:"nodes,omitempty"`
		CSRs  []CSRSpec  `json:"csrs,omitempty"`
	} `json:"setup"`
	Steps []Step `json:"steps"`

	file string
}

type NameRef struct {
	Name string `json:"name"`
}

type StatusUpdate struct {
	Name       string  `json:"name"`
	MachineID  *string `json:"machineID,omitempty"`
	SystemUUID *string `json:"systemUUID,omitempty"`
	BootID     *string `json:"bootID,omitempty"`
	InternalIP *string `json:"internalIP,omitempty"`
	Ready      *bool   `json:"ready,omitempty"`
	Heartbeat  bool    `json:"heartbeat,omitempty"`
}

type NodeUpdate struct {
	Name       string  `json:"name"`
	ProviderID *string `json:"providerID,omitempty"`
	Hostname   *string `json:"hostname,omitempty"`
}

type Expect struct {
	// Admitted steps.
	Allowed  *bool     `json:"allowed,omitempty"`
	Code     *int32    `json:"code,omitempty"`
	Error    *string   `json:"error,omitempty"`
	Warnings *[]string `json:"warnings,omitempty"`
	Reached  *bool     `json:"reached,omitempty"`
	// forget.
	ExitCode *int    `json:"exitCode,omitempty"`
	Output   *string `json:"output,omitempty"`
	// Any step: the store after it.
	Events       *[]EventExpect      `json:"events,omitempty"`
	NodeIdentity *NodeIdentityExpect `json:"nodeIdentity,omitempty"`
}

func (e *Expect) admission() bool {
	return e.Allowed != nil || e.Code != nil || e.Error != nil || e.Warnings != nil || e.Reached != nil
}

type Step struct {
	Name   string   `json:"name,omitempty"`
	As     string   `json:"as,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// CredentialID goes into the user's extra authentication.kubernetes.io/credential-id
	// (Node steps).
	CredentialID string `json:"credentialID,omitempty"`

	CreateNode       *NodeSpec     `json:"createNode,omitempty"`
	UpdateNodeStatus *StatusUpdate `json:"updateNodeStatus,omitempty"`
	UpdateNode       *NodeUpdate   `json:"updateNode,omitempty"`
	CreateCSR        *CSRSpec      `json:"createCSR,omitempty"`
	ApproveCSR       *NameRef      `json:"approveCSR,omitempty"`
	DeleteNode       *NameRef      `json:"deleteNode,omitempty"`
	DeleteCSR        *NameRef      `json:"deleteCSR,omitempty"`
	Nodeguard        string        `json:"nodeguard,omitempty"`
	WaitFor          *WaitFor      `json:"waitFor,omitempty"`
	Forget           string        `json:"forget,omitempty"`

	Expect *Expect `json:"expect,omitempty"`
}

func (s *Step) action() (string, bool) {
	var names []string
	if s.CreateNode != nil {
		names = append(names, "createNode")
	}
	if s.UpdateNodeStatus != nil {
		names = append(names, "updateNodeStatus")
	}
	if s.UpdateNode != nil {
		names = append(names, "updateNode")
	}
	if s.CreateCSR != nil {
		names = append(names, "createCSR")
	}
	if s.ApproveCSR != nil {
		names = append(names, "approveCSR")
	}
	if s.DeleteNode != nil {
		names = append(names, "deleteNode")
	}
	if s.DeleteCSR != nil {
		names = append(names, "deleteCSR")
	}
	if s.Nodeguard != "" {
		names = append(names, "nodeguard")
	}
	if s.WaitFor != nil {
		names = append(names, "waitFor")
	}
	if s.Forget != "" {
		names = append(names, "forget")
	}
	if len(names) != 1 {
		return strings.Join(names, ", "), false
	}
	return names[0], true
}

func (s *Step) admitted() bool {
	return s.CreateNode != nil || s.UpdateNodeStatus != nil || s.UpdateNode != nil || s.CreateCSR != nil
}

// title is the step's name, or a description of it.
func (s *Step) title() string {
	if s.Name != "" {
		return s.Name
	}
	a, _ := s.action()
	switch {
	case s.CreateNode != nil:
		return a + " " + s.CreateNode.Name
	case s.UpdateNodeStatus != nil:
		return a + " " + s.UpdateNodeStatus.Name
	case s.UpdateNode != nil:
		return a + " " + s.UpdateNode.Name
	case s.CreateCSR != nil:
		return a + " " + s.CreateCSR.Name
	case s.ApproveCSR != nil:
		return a + " " + s.ApproveCSR.Name
	case s.DeleteNode != nil:
		return a + " " + s.DeleteNode.Name
	case s.DeleteCSR != nil:
		return a + " " + s.DeleteCSR.Name
	case s.WaitFor != nil:
		return s.WaitFor.String()
	case s.Forget != "":
		return "forget " + s.Forget
	default:
		return "nodeguard " + s.Nodeguard
	}
}

func checkNodeSpec(where string, n *NodeSpec) error {
	if n.Name == "" {
		return fmt.Errorf("%s: name is required", where)
	}
	if _, err := n.heartbeat(metav1.Now()); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	return nil
}

func checkCSRSpec(where string, c *CSRSpec) error {
	if c.Name == "" || c.Node == "" || c.Key == "" || c.Signer == "" || c.Requester == "" {
		return fmt.Errorf("%s: name, node, key, signer and requester are required", where)
	}
	return nil
}

// LoadScenarios reads every *.yaml of dir in name order, strictly (an unknown key is
// an error), keeping those whose file or scenario name contains only.
func LoadScenarios(dir, only string) ([]*Scenario, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []*Scenario
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		docs, err := yamlDocuments(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		for d, doc := range docs {
			where := f
			if len(docs) > 1 {
				where = fmt.Sprintf("%s (document %d)", f, d+1)
			}
			sc, err := loadScenario(where, doc)
			if err != nil {
				return nil, err
			}
			sc.file = f
			if sc.Name == "" {
				sc.Name = strings.TrimSuffix(filepath.Base(f), ".yaml")
				if len(docs) > 1 {
					sc.Name += fmt.Sprintf(" #%d", d+1)
				}
			}
			if only != "" && !strings.Contains(sc.Name, only) && !strings.Contains(filepath.Base(f), only) {
				continue
			}
			out = append(out, sc)
		}
	}
	return out, nil
}

// yamlDocuments splits a file at `---`, dropping empty documents.
func yamlDocuments(raw []byte) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var probe interface{}
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			return nil, err
		}
		if probe == nil {
			continue // only comments
		}
		docs = append(docs, doc)
	}
}

// loadScenario decodes one scenario strictly (an unknown key is an error) and checks it.
func loadScenario(f string, raw []byte) (*Scenario, error) {
	var sc Scenario
	if err := yaml.UnmarshalStrict(raw, &sc); err != nil {
		return nil, fmt.Errorf("%s: %v", f, err)
	}
	for i := range sc.Setup.Nodes {
		if err := checkNodeSpec(fmt.Sprintf("%s: setup.nodes[%d]", f, i), &sc.Setup.Nodes[i]); err != nil {
			return nil, err
		}
	}
	for i := range sc.Setup.CSRs {
		if err := checkCSRSpec(fmt.Sprintf("%s: setup.csrs[%d]", f, i), &sc.Setup.CSRs[i]); err != nil {
			return nil, err
		}
	}
	if len(sc.Steps) == 0 {
		return nil, fmt.Errorf("%s: no steps", f)
	}
	for i := range sc.Steps {
		st := &sc.Steps[i]
		where := fmt.Sprintf("%s: steps[%d] (%s)", f, i, st.Name)
		a, ok := st.action()
		if !ok {
			if a == "" {
				return nil, fmt.Errorf("%s: no action (createNode, updateNodeStatus, updateNode, createCSR, approveCSR, deleteNode, deleteCSR, nodeguard, waitFor or forget)", where)
			}
			return nil, fmt.Errorf("%s: more than one action: %s", where, a)
		}
		if e := st.Expect; e != nil {
			switch {
			case e.admission() && !st.admitted():
				return nil, fmt.Errorf("%s: expect.allowed, code, error, warnings and reached are only for createNode, updateNodeStatus, updateNode and createCSR", where)
			case (e.ExitCode != nil || e.Output != nil) && st.Forget == "":
				return nil, fmt.Errorf("%s: expect.exitCode and output are only for forget", where)
			case e.NodeIdentity != nil && e.NodeIdentity.Name == "":
				return nil, fmt.Errorf("%s: expect.nodeIdentity: name is required", where)
			}
			if e.Events != nil {
				for j, ev := range *e.Events {
					if ev.Node == "" || ev.Reason == "" || ev.Type == "" {
						return nil, fmt.Errorf("%s: expect.events[%d]: node, reason and type are required", where, j)
					}
				}
			}
		}
		if st.CredentialID != "" && st.CreateNode == nil && st.UpdateNodeStatus == nil && st.UpdateNode == nil {
			return nil, fmt.Errorf("%s: credentialID is only for createNode, updateNodeStatus and updateNode", where)
		}
		if st.WaitFor != nil {
			if err := st.WaitFor.check(); err != nil {
				return nil, fmt.Errorf("%s: %v", where, err)
			}
		}
		switch {
		case st.CreateNode != nil:
			if err := checkNodeSpec(where+": createNode", st.CreateNode); err != nil {
				return nil, err
			}
		case st.CreateCSR != nil:
			if err := checkCSRSpec(where+": createCSR", st.CreateCSR); err != nil {
				return nil, err
			}
			if st.CreateCSR.Approved {
				return nil, fmt.Errorf("%s: createCSR: approved is for setup; approve with an approveCSR step", where)
			}
		case st.UpdateNodeStatus != nil && st.UpdateNodeStatus.Name == "",
			st.UpdateNode != nil && st.UpdateNode.Name == "",
			st.ApproveCSR != nil && st.ApproveCSR.Name == "",
			st.DeleteNode != nil && st.DeleteNode.Name == "",
			st.DeleteCSR != nil && st.DeleteCSR.Name == "":
			return nil, fmt.Errorf("%s: %s: name is required", where, a)
		case st.Nodeguard != "" && st.Nodeguard != "stop" && st.Nodeguard != "start":
			return nil, fmt.Errorf("%s: nodeguard: %q is not stop or start", where, st.Nodeguard)
		}
	}
	return &sc, nil
}

// ---- running ---------------------------------------------------------------------

type Runner struct {
	store     *Store
	adm       *Admission
	ng        *Nodeguard
	keys      *Keys
	ca        *clusterCA
	clock     *clock
	grace     time.Duration
	readyWait time.Duration
	// kubeconfig is the harness's kubeconfig, for `nodeguard forget`.
	kubeconfig string
	// ledger: the reset waits for nodeguard's recorder, and ledger steps run. When
	// false, noLedger says why.
	ledger   bool
	noLedger string
}

// StepResult is one line of the report.
type StepResult struct {
	Pass    bool
	Details []string // why it failed
	Info    []string // what happened: shown on failure, and with -v
}

var (
	nodeGVK  = corev1.SchemeGroupVersion.WithKind("Node")
	nodeGVR  = corev1.SchemeGroupVersion.WithResource("nodes")
	csrGVK   = certificatesv1.SchemeGroupVersion.WithKind("CertificateSigningRequest")
	csrGVR   = certificatesv1.SchemeGroupVersion.WithResource("certificatesigningrequests")
	nodeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
	csrMeta  = metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"}
)

// Reset puts the cluster in the scenario's setup state and waits until nodeguard's
// inventory holds it and, with a ledger, until the recorder recorded it.
func (r *Runner) Reset(sc *Scenario) error {
	if !r.ng.Running() {
		if err := r.ng.Start(r.readyWait); err != nil {
			return err
		}
	}
	created := metav1.NewTime(time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second))
	var nodes []*corev1.Node
	for _, ns := range sc.Setup.Nodes {
		node := buildNode(ns, created)
		// Created a day ago; written by its kubelet just now (or heartbeatAge ago).
		heartbeat, err := ns.heartbeat(r.clock.Now())
		if err != nil {
			return err
		}
		setHeartbeat(node, heartbeat)
		nodes = append(nodes, node)
	}
	var csrs []*certificatesv1.CertificateSigningRequest
	for _, cs := range sc.Setup.CSRs {
		csr, err := buildCSR(cs, r.keys, userInfo(cs.Requester, nil), created)
		if err != nil {
			return err
		}
		if cs.Approved {
			approve(csr, created)
			cert, err := r.ca.issue(csr)
			if err != nil {
				return err
			}
			csr.Status.Certificate = cert
		}
		csrs = append(csrs, csr)
	}
	if err := r.store.Reset(nodes, csrs); err != nil {
		return err
	}
	wantNodes, wantBindings := r.store.Counts()
	if err := r.ng.WaitInventory(wantNodes, wantBindings, 10*time.Second); err != nil {
		return err
	}
	if r.ledger {
		if err := r.waitLedgerSetup(nodes, csrs, sc.Setup.CSRs); err != nil {
			return err
		}
	}
	time.Sleep(r.grace)
	return nil
}

func (r *Runner) settle() { time.Sleep(r.grace) }

// Run executes one step, then checks what its expect says of the store.
func (r *Runner) Run(st *Step) StepResult {
	res := r.act(st)
	e := st.Expect
	if e == nil || (e.Events == nil && e.NodeIdentity == nil) {
		return res
	}
	if !r.ledger {
		res.Pass = false
		res.Details = append(res.Details, "expect.events and expect.nodeIdentity: "+r.noLedger)
		return res
	}
	if e.NodeIdentity != nil {
		d, i := r.checkNodeIdentity(e.NodeIdentity)
		res.Details = append(res.Details, d...)
		res.Info = append(res.Info, i...)
		if len(d) > 0 {
			res.Pass = false
		}
	}
	if e.Events != nil {
		d, i := r.checkEvents(*e.Events)
		res.Details = append(res.Details, d...)
		res.Info = append(res.Info, i...)
		if len(d) > 0 {
			res.Pass = false
		}
	}
	return res
}

// act runs the step's action.
func (r *Runner) act(st *Step) StepResult {
	switch {
	case st.WaitFor != nil:
		return r.waitFor(st.WaitFor)
	case st.Forget != "":
		return r.forget(st.Forget, st.Expect)
	case st.Nodeguard == "stop":
		if err := r.ng.Stop(); err != nil {
			return StepResult{Details: []string{err.Error()}}
		}
		return StepResult{Pass: true}
	case st.Nodeguard == "start":
		if err := r.ng.Start(r.readyWait); err != nil {
			return StepResult{Details: []string{err.Error()}}
		}
		return StepResult{Pass: true}
	case st.DeleteNode != nil:
		return r.storeOnly(r.store.DeleteNode(st.DeleteNode.Name))
	case st.DeleteCSR != nil:
		return r.storeOnly(r.store.DeleteCSR(st.DeleteCSR.Name))
	case st.ApproveCSR != nil:
		csr, ok := r.store.GetCSR(st.ApproveCSR.Name)
		if !ok {
			return StepResult{Details: []string{fmt.Sprintf("approveCSR: no CSR %q in the store", st.ApproveCSR.Name)}}
		}
		// The approver's write, then the signer's, as two events like in a cluster.
		approve(csr, r.clock.Now())
		if err := r.store.UpdateCSR(csr); err != nil {
			return r.storeOnly(err)
		}
		cert, err := r.ca.issue(csr)
		if err != nil {
			return StepResult{Details: []string{"issuing the certificate: " + err.Error()}}
		}
		csr, _ = r.store.GetCSR(csr.Name)
		csr.Status.Certificate = cert
		return r.storeOnly(r.store.UpdateCSR(csr))
	}
	return r.admit(st)
}

func (r *Runner) storeOnly(err error) StepResult {
	if err != nil {
		return StepResult{Details: []string{"store: " + err.Error()}}
	}
	r.settle()
	return StepResult{Pass: true}
}

// admit builds the request, runs the plugin, and applies the write if allowed.
func (r *Runner) admit(st *Step) StepResult {
	var req Request
	var apply func() error
	now := r.clock.Now()
	switch {
	case st.CreateNode != nil:
		node := buildNode(*st.CreateNode, now)
		if heartbeat, err := st.CreateNode.heartbeat(now); err == nil {
			setHeartbeat(node, heartbeat)
		}
		req = Request{Operation: admission.Create, Object: node, Kind: nodeGVK, Resource: nodeGVR, Name: node.Name,
			User: withCredentialID(userInfo(orDefault(st.As, "system:node:"+node.Name), st.Groups), st.CredentialID)}
		apply = func() error { return r.store.CreateNode(node) }
	case st.UpdateNodeStatus != nil, st.UpdateNode != nil:
		name := ""
		if st.UpdateNodeStatus != nil {
			name = st.UpdateNodeStatus.Name
		} else {
			name = st.UpdateNode.Name
		}
		old, ok := r.store.GetNode(name)
		if !ok {
			return StepResult{Details: []string{fmt.Sprintf("no node %q in the store to update", name)}}
		}
		old.TypeMeta = nodeMeta
		node := old.DeepCopy()
		sub := ""
		if u := st.UpdateNodeStatus; u != nil {
			sub = "status"
			if u.MachineID != nil {
				node.Status.NodeInfo.MachineID = *u.MachineID
			}
			if u.SystemUUID != nil {
				node.Status.NodeInfo.SystemUUID = *u.SystemUUID
			}
			if u.BootID != nil {
				node.Status.NodeInfo.BootID = *u.BootID
			}
			if u.InternalIP != nil {
				setInternalIP(node, *u.InternalIP)
			}
			if u.Ready != nil {
				setReady(node, *u.Ready, now)
			}
			if u.Heartbeat {
				for i := range node.Status.Conditions {
					node.Status.Conditions[i].LastHeartbeatTime = now
				}
			}
		} else {
			u := st.UpdateNode
			if u.ProviderID != nil {
				node.Spec.ProviderID = *u.ProviderID
			}
			if u.Hostname != nil {
				if node.Labels == nil {
					node.Labels = map[string]string{}
				}
				node.Labels["kubernetes.io/hostname"] = *u.Hostname
			}
		}
		req = Request{Operation: admission.Update, Object: node, OldObject: old, Kind: nodeGVK, Resource: nodeGVR,
			Subresource: sub, Name: name, User: withCredentialID(userInfo(orDefault(st.As, "system:node:"+name), st.Groups), st.CredentialID)}
		apply = func() error { return r.store.UpdateNode(node) }
	case st.CreateCSR != nil:
		cs := *st.CreateCSR
		var groups []string
		if st.As == "" || st.As == cs.Requester {
			groups = st.Groups
		}
		csr, err := buildCSR(cs, r.keys, userInfo(cs.Requester, groups), now)
		if err != nil {
			return StepResult{Details: []string{err.Error()}}
		}
		req = Request{Operation: admission.Create, Object: csr, Kind: csrGVK, Resource: csrGVR, Name: csr.Name,
			User: userInfo(orDefault(st.As, cs.Requester), st.Groups)}
		apply = func() error { return r.store.CreateCSR(csr) }
	}

	before := r.ng.RequestsTotal()
	out := r.adm.Validate(req)
	after := r.ng.RequestsTotal()
	reached := before >= 0 && after > before

	var details []string
	pass := true
	storeNote := ""
	if out.Allowed {
		if err := apply(); err != nil {
			if apierrors.IsAlreadyExists(err) {
				storeNote = "the store answered AlreadyExists (as the API server would after admission)"
			} else {
				pass = false
				details = append(details, "store: "+err.Error())
			}
		} else {
			r.settle()
		}
	}
	if len(out.FailedOpen) > 0 && r.ng.Running() {
		pass = false
		details = append(details, "the call to nodeguard failed while it was running, and failurePolicy Ignore let the request through (see the plugin log below)")
	}
	if len(out.CELErrors) > 0 {
		pass = false
		details = append(details, "matchConditions evaluation failed (failurePolicy Ignore would silently skip the webhook): "+strings.Join(out.CELErrors, "; "))
	}

	gotErr := ""
	if out.Err != nil {
		gotErr = out.Err.Error()
	}
	if e := st.Expect; e != nil {
		var mismatches []string
		if e.Allowed != nil && *e.Allowed != out.Allowed {
			mismatches = append(mismatches, fmt.Sprintf("allowed: expected %v, got %v", *e.Allowed, out.Allowed))
		}
		if e.Code != nil && *e.Code != out.Code {
			mismatches = append(mismatches, fmt.Sprintf("code: expected %d, got %d", *e.Code, out.Code))
		}
		if e.Error != nil {
			want, err := r.keys.Expand(*e.Error)
			if err != nil {
				mismatches = append(mismatches, "error: cannot expand placeholders: "+err.Error())
			} else if want != gotErr {
				mismatches = append(mismatches, fmt.Sprintf("error:\n        expected %q\n        got      %q", want, gotErr))
			}
		}
		if e.Warnings != nil {
			want := []string{}
			for _, w := range *e.Warnings {
				x, err := r.keys.Expand(w)
				if err != nil {
					mismatches = append(mismatches, "warnings: cannot expand placeholders: "+err.Error())
				}
				want = append(want, x)
			}
			if !reflect.DeepEqual(want, out.Warnings) {
				mismatches = append(mismatches, fmt.Sprintf("warnings:\n        expected %q\n        got      %q", want, out.Warnings))
			}
		}
		if e.Reached != nil && *e.Reached != reached {
			mismatches = append(mismatches, fmt.Sprintf("reached: expected %v, got %v", *e.Reached, reached))
		}
		if len(mismatches) > 0 {
			pass = false
			details = append(details, mismatches...)
		}
	}
	info := []string{
		fmt.Sprintf("got: allowed=%v code=%d reason=%q reached=%v warnings=%q", out.Allowed, out.Code, out.Reason, reached, out.Warnings),
		fmt.Sprintf("got error: %q", gotErr),
		fmt.Sprintf("request: %s %s%s %q by %s %v%s", req.Operation, req.Resource.Resource, subSuffix(req.Subresource), req.Name, req.User.GetName(), req.User.GetGroups(), extraSuffix(req.User.GetExtra())),
		"routing: " + strings.Join(out.Routing, "; "),
	}
	if len(out.FailedOpen) > 0 {
		info = append(info, "failed open (call failed, failurePolicy Ignore): "+strings.Join(out.FailedOpen, ", "))
	}
	if storeNote != "" {
		info = append(info, storeNote)
	}
	return StepResult{Pass: pass, Details: details, Info: info}
}

func extraSuffix(extra map[string][]string) string {
	if len(extra) == 0 {
		return ""
	}
	return fmt.Sprintf(" extra %v", extra)
}

func subSuffix(s string) string {
	if s == "" {
		return ""
	}
	return "/" + s
}

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}
