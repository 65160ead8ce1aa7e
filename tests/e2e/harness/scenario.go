package main

// Scenario files (YAML; one scenario per document, several documents per file allowed)
// and how their steps run.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type Scenario struct {
	Name string `json:"name"`
	// Config is nodeguard's configuration file for this scenario (YAML), in force from
	// its start; without it, the shipped one.
	Config string `json:"config,omitempty"`
	Setup  struct {
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
	// HeartbeatAge writes the heartbeat as a kubelet whose clock is that far behind
	// (e.g. "30m"): a status written now, dated earlier.
	HeartbeatAge string `json:"heartbeatAge,omitempty"`
}

type NodeUpdate struct {
	Name       string  `json:"name"`
	ProviderID *string `json:"providerID,omitempty"`
	Hostname   *string `json:"hostname,omitempty"`
	// Labels are set on the Node (as `kubectl label node` does, by an administrator).
	Labels map[string]string `json:"labels,omitempty"`
}

type Expect struct {
	// Admitted steps.
	Allowed *bool   `json:"allowed,omitempty"`
	Code    *int32  `json:"code,omitempty"`
	Error   *string `json:"error,omitempty"`
	// ErrorContains is a part of the error, for a message that names a moment.
	ErrorContains *string   `json:"errorContains,omitempty"`
	Warnings      *[]string `json:"warnings,omitempty"`
	Reached       *bool     `json:"reached,omitempty"`
	// forget and audit.
	ExitCode *int    `json:"exitCode,omitempty"`
	Output   *string `json:"output,omitempty"`
	// audit: exactly these collisions, in the report's order.
	Collisions *[]CollisionExpect `json:"collisions,omitempty"`
	// Any step: the store after it.
	Events       *[]EventExpect      `json:"events,omitempty"`
	NodeIdentity *NodeIdentityExpect `json:"nodeIdentity,omitempty"`
}

func (e *Expect) admission() bool {
	return e.Allowed != nil || e.Code != nil || e.Error != nil || e.ErrorContains != nil || e.Warnings != nil || e.Reached != nil
}

type Step struct {
	Name   string   `json:"name,omitempty"`
	As     string   `json:"as,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Certificate names one of the user's client certificates, when a step needs two
	// writers with the same name and different certificates (and so different
	// authentication.kubernetes.io/credential-id extras). Node steps only.
	Certificate string `json:"certificate,omitempty"`

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
	// Audit runs `nodeguard audit` against the cluster with these extra arguments.
	Audit *[]string `json:"audit,omitempty"`
	// Repeat makes an admitted write this many times in all (a kubelet retrying); every
	// answer must be the same, and the expectations hold after the last.
	Repeat int `json:"repeat,omitempty"`
	// DryRun sends an admitted write with dryRun=All.
	DryRun bool `json:"dryRun,omitempty"`
	// Sleep waits this long (e.g. "65s"): time passing on nodeguard's clock.
	Sleep string `json:"sleep,omitempty"`

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
	if s.Audit != nil {
		names = append(names, "audit")
	}
	if s.Forget != "" {
		names = append(names, "forget")
	}
	if s.Sleep != "" {
		names = append(names, "sleep")
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
	case s.Sleep != "":
		return "sleep " + s.Sleep
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
			case (e.ExitCode != nil || e.Output != nil) && st.Forget == "" && st.Audit == nil:
				return nil, fmt.Errorf("%s: expect.exitCode and output are only for forget and audit", where)
			case e.Collisions != nil && st.Audit == nil:
				return nil, fmt.Errorf("%s: expect.collisions is only for audit", where)
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
		if st.Certificate != "" && st.CreateNode == nil && st.UpdateNodeStatus == nil && st.UpdateNode == nil {
			return nil, fmt.Errorf("%s: certificate is only for createNode, updateNodeStatus and updateNode", where)
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
	cluster   *Cluster
	ng        *Nodeguard
	keys      *Keys
	clock     *clock
	warnings  *warningLog
	grace     time.Duration
	readyWait time.Duration
	kubectl   string
	// ledger: the reset waits for nodeguard's recorder, and ledger steps run. When
	// false, noLedger says why.
	ledger   bool
	noLedger string
	// configFile is nodeguard's configuration file, which a scenario may replace;
	// shippedConfig its content when the run started.
	configFile    string
	shippedConfig string
}

// StepResult is one line of the report.
type StepResult struct {
	Pass    bool
	Details []string // why it failed
	Info    []string // what happened: shown on failure, and with -v
}

// Reset puts the cluster in the scenario's setup state and waits until nodeguard's
// inventory holds it and, with a ledger, until the recorder recorded it.
//
// The setup is the cluster as it was before nodeguard saw it, so it is made while
// nodeguard is stopped (the shipped failurePolicy Ignore lets it through): values
// nodes already share, as a cluster can hold from before nodeguard, are there. The
// CSRs come first, made by their requesters, approved and signed by
// kube-controller-manager (a kubelet bootstraps before it registers); then the Nodes,
// each registered by its kubelet with the status it reports.
func (r *Runner) Reset(sc *Scenario) error {
	if err := r.ng.Stop(); err != nil {
		return err
	}
	if err := r.configure(sc.Config); err != nil {
		return err
	}
	if err := r.cluster.Clear(); err != nil {
		return err
	}
	var csrs []*certificatesv1.CertificateSigningRequest
	for _, cs := range sc.Setup.CSRs {
		csr, err := r.setupCSR(cs)
		if err != nil {
			return err
		}
		csrs = append(csrs, csr)
	}
	var nodes []*corev1.Node
	cx, cancel := ctx()
	defer cancel()
	for _, ns := range sc.Setup.Nodes {
		node := buildNode(ns, r.clock.Now())
		// Written by its kubelet just now (or heartbeatAge ago).
		heartbeat, err := ns.heartbeat(r.clock.Now())
		if err != nil {
			return err
		}
		setHeartbeat(node, heartbeat)
		kubelet, err := r.cluster.Client(Identity{User: "system:node:" + ns.Name})
		if err != nil {
			return err
		}
		created, err := kubelet.CoreV1().Nodes().Create(cx, node, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating node %s as its kubelet: %v", ns.Name, err)
		}
		nodes = append(nodes, created)
	}
	// Creation times are whole seconds: the setup's Nodes are older than the ledger's
	// first record (nodeguard's first sight) only if a second passes in between.
	time.Sleep(secondTick)
	if err := r.ng.Start(r.readyWait); err != nil {
		return err
	}
	bindings := 0
	for _, c := range csrs {
		if bindsKey(c) {
			bindings++
		}
	}
	if err := r.ng.WaitInventory(len(nodes), bindings, 20*time.Second); err != nil {
		return err
	}
	if r.ledger {
		if err := r.waitLedgerSetup(nodes, csrs, sc.Setup.CSRs); err != nil {
			return err
		}
	}
	r.warnings.Take()
	// And the steps' Nodes are newer than every record the setup made: they join under
	// nodeguard.
	time.Sleep(max(r.grace, secondTick))
	return nil
}

// secondTick is more than the second to which the API server stamps creation times.
const secondTick = 1100 * time.Millisecond

// configure writes nodeguard's configuration file for a scenario: its own, or the one
// the run started with.
func (r *Runner) configure(config string) error {
	if r.configFile == "" {
		if config != "" {
			return fmt.Errorf("the scenario sets a configuration, and nodeguard's file is unknown (NODEGUARD_CONFIG)")
		}
		return nil
	}
	if config == "" {
		config = r.shippedConfig
	}
	return os.WriteFile(r.configFile, []byte(config), 0o644)
}

// setupCSR creates a setup CSR as its requester; an approved one is then approved
// (by kube-controller-manager's approver, or by the administrator for a signer it
// does not approve) and signed by kube-controller-manager. A CSR left pending is
// denied by nobody and stays so, unless kube-controller-manager approves it.
func (r *Runner) setupCSR(cs CSRSpec) (*certificatesv1.CertificateSigningRequest, error) {
	csr, err := buildCSR(cs, r.keys)
	if err != nil {
		return nil, err
	}
	client, err := r.cluster.Client(Identity{User: cs.Requester})
	if err != nil {
		return nil, err
	}
	cx, cancel := ctx()
	defer cancel()
	if _, err := client.CertificatesV1().CertificateSigningRequests().Create(cx, csr, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("setup CSR %s, created by %s: %v", cs.Name, cs.Requester, err)
	}
	if !cs.Approved {
		return r.cluster.admin.CertificatesV1().CertificateSigningRequests().Get(cx, cs.Name, metav1.GetOptions{})
	}
	return r.approveAndWait(cs.Name)
}

// approveAndWait approves the CSR as the administrator unless kube-controller-manager
// did already (within a moment), then waits until kube-controller-manager signed it.
func (r *Runner) approveAndWait(name string) (*certificatesv1.CertificateSigningRequest, error) {
	csrs := r.cluster.admin.CertificatesV1().CertificateSigningRequests()
	deadline := time.Now().Add(15 * time.Second)
	autoApprovalWait := time.Now().Add(2 * time.Second)
	for {
		cx, cancel := ctx()
		csr, err := csrs.Get(cx, name, metav1.GetOptions{})
		cancel()
		if err != nil {
			return nil, err
		}
		switch {
		case len(csr.Status.Certificate) > 0:
			return csr, nil
		case !isApproved(csr) && (!isKubeletClient(csr) || time.Now().After(autoApprovalWait)):
			csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
				Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
				Reason: "KubectlApprove", Message: "This CSR was approved by kubectl certificate approve.",
				LastUpdateTime: metav1.Now(),
			})
			cx, cancel := ctx()
			_, err := csrs.UpdateApproval(cx, name, csr, metav1.UpdateOptions{})
			cancel()
			if err != nil && !apierrors.IsConflict(err) {
				return nil, fmt.Errorf("approving CSR %s: %v", name, err)
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("CSR %s was not signed within 15 s (conditions %v); see kube-controller-manager's log", name, csr.Status.Conditions)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isApproved(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// dryRun is the dryRun option of the step's write.
func dryRun(st *Step) []string {
	if st.DryRun {
		return []string{metav1.DryRunAll}
	}
	return nil
}

func isKubeletClient(csr *certificatesv1.CertificateSigningRequest) bool {
	return csr.Spec.SignerName == signerClientKubelet
}

func (r *Runner) settle() { time.Sleep(r.grace) }

// Run executes one step, then checks what its expect says of the cluster.
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
	cx, cancel := ctx()
	defer cancel()
	switch {
	case st.Sleep != "":
		d, err := time.ParseDuration(st.Sleep)
		if err != nil || d <= 0 {
			return StepResult{Details: []string{fmt.Sprintf("sleep %q is not a duration such as 65s", st.Sleep)}}
		}
		time.Sleep(d)
		return StepResult{Pass: true}
	case st.WaitFor != nil:
		return r.waitFor(st.WaitFor)
	case st.Forget != "":
		return r.forget(st.Forget, st.Expect)
	case st.Audit != nil:
		return r.audit(*st.Audit, st.Expect)
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
		return r.adminOnly(r.cluster.admin.CoreV1().Nodes().Delete(cx, st.DeleteNode.Name, metav1.DeleteOptions{}))
	case st.DeleteCSR != nil:
		return r.adminOnly(r.cluster.admin.CertificatesV1().CertificateSigningRequests().Delete(cx, st.DeleteCSR.Name, metav1.DeleteOptions{}))
	case st.ApproveCSR != nil:
		csr, err := r.approveAndWait(st.ApproveCSR.Name)
		if err != nil {
			return StepResult{Details: []string{"approveCSR: " + err.Error()}}
		}
		r.settle()
		return StepResult{Pass: true, Info: []string{fmt.Sprintf("CSR %s approved (%s) and signed", csr.Name, approver(csr))}}
	}
	return r.admit(st)
}

func approver(csr *certificatesv1.CertificateSigningRequest) string {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			return c.Reason
		}
	}
	return "not approved"
}

func (r *Runner) adminOnly(err error) StepResult {
	if err != nil {
		return StepResult{Details: []string{"as the administrator: " + err.Error()}}
	}
	r.settle()
	return StepResult{Pass: true}
}

// outcome is what the API server answered a write.
type outcome struct {
	Allowed  bool
	Code     int32
	Reason   string
	Err      string
	Warnings []string
	// AlreadyExists: admission let a CREATE through and storage refused it.
	AlreadyExists bool
}

func outcomeOf(err error, warnings []string) outcome {
	out := outcome{Allowed: err == nil, Warnings: warnings}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	if err == nil {
		return out
	}
	out.Err = err.Error()
	if se, ok := err.(apierrors.APIStatus); ok {
		out.Code = se.Status().Code
		out.Reason = string(se.Status().Reason)
		if apierrors.IsAlreadyExists(err) {
			out.Allowed, out.AlreadyExists = true, true
		}
	}
	return out
}

// identityOf is who the step acts as: `as`, or the node or requester it names.
func identityOf(st *Step) Identity {
	id := Identity{User: st.As, Groups: st.Groups, Certificate: st.Certificate}
	if id.User == "" {
		switch {
		case st.CreateNode != nil:
			id.User = "system:node:" + st.CreateNode.Name
		case st.UpdateNodeStatus != nil:
			id.User = "system:node:" + st.UpdateNodeStatus.Name
		case st.UpdateNode != nil:
			id.User = "system:node:" + st.UpdateNode.Name
		case st.CreateCSR != nil:
			id.User = st.CreateCSR.Requester
		}
	}
	return id
}

// admit makes the step's write as its writer makes it: a kubelet's registration is a
// POST of the whole Node, its status a strategic-merge PATCH of nodes/status computed
// from the Node it last read, a spec change a PATCH of the Node, a CSR a POST.
func (r *Runner) admit(st *Step) StepResult {
	id := identityOf(st)
	client, err := r.cluster.Client(id)
	if err != nil {
		return StepResult{Details: []string{fmt.Sprintf("a client for %s: %v", id, err)}}
	}
	cx, cancel := ctx()
	defer cancel()
	now := r.clock.Now()
	var request string
	var write func() error
	switch {
	case st.CreateNode != nil:
		node := buildNode(*st.CreateNode, now)
		if heartbeat, err := st.CreateNode.heartbeat(now); err == nil {
			setHeartbeat(node, heartbeat)
		}
		request = "POST nodes " + node.Name
		write = func() error {
			_, err := client.CoreV1().Nodes().Create(cx, node, metav1.CreateOptions{DryRun: dryRun(st)})
			return err
		}
	case st.UpdateNodeStatus != nil, st.UpdateNode != nil:
		name := ""
		if st.UpdateNodeStatus != nil {
			name = st.UpdateNodeStatus.Name
		} else {
			name = st.UpdateNode.Name
		}
		old, err := r.cluster.admin.CoreV1().Nodes().Get(cx, name, metav1.GetOptions{})
		if err != nil {
			return StepResult{Details: []string{fmt.Sprintf("reading node %s to update: %v", name, err)}}
		}
		node := old.DeepCopy()
		sub := []string{}
		if u := st.UpdateNodeStatus; u != nil {
			sub = []string{"status"}
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
			if u.Heartbeat || u.HeartbeatAge != "" {
				beat := now
				if u.HeartbeatAge != "" {
					age, err := time.ParseDuration(u.HeartbeatAge)
					if err != nil {
						return StepResult{Details: []string{fmt.Sprintf("heartbeatAge %q is not a duration such as 30m", u.HeartbeatAge)}}
					}
					beat = metav1.NewTime(now.Add(-age))
				}
				for i := range node.Status.Conditions {
					node.Status.Conditions[i].LastHeartbeatTime = beat
				}
			}
		} else {
			u := st.UpdateNode
			if u.ProviderID != nil {
				node.Spec.ProviderID = *u.ProviderID
			}
			if node.Labels == nil {
				node.Labels = map[string]string{}
			}
			if u.Hostname != nil {
				node.Labels["kubernetes.io/hostname"] = *u.Hostname
			}
			for k, v := range u.Labels {
				node.Labels[k] = v
			}
		}
		patch, err := twoWayPatch(old, node)
		if err != nil {
			return StepResult{Details: []string{err.Error()}}
		}
		request = fmt.Sprintf("PATCH nodes %s%s (strategic merge) %s", name, subSuffix(strings.Join(sub, "")), patch)
		write = func() error {
			_, err := client.CoreV1().Nodes().Patch(cx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{DryRun: dryRun(st)}, sub...)
			return err
		}
	case st.CreateCSR != nil:
		csr, err := buildCSR(*st.CreateCSR, r.keys)
		if err != nil {
			return StepResult{Details: []string{err.Error()}}
		}
		request = "POST certificatesigningrequests " + csr.Name
		write = func() error {
			_, err := client.CertificatesV1().CertificateSigningRequests().Create(cx, csr, metav1.CreateOptions{DryRun: dryRun(st)})
			return err
		}
	}

	r.warnings.Take()
	logOffset := r.cluster.LogSize()
	before := r.ng.RequestsTotal()
	werr := write()
	out := outcomeOf(werr, r.warnings.Take())
	var repeatErrors []string
	for i := 1; i < st.Repeat; i++ {
		again := outcomeOf(write(), r.warnings.Take())
		if again.Allowed != out.Allowed || again.Err != out.Err {
			repeatErrors = append(repeatErrors, fmt.Sprintf("write %d of %d answered otherwise: %v", i+1, st.Repeat, again.Err))
		}
		out = again
	}
	after := r.ng.RequestsTotal()
	reached := before >= 0 && after > before
	if out.Allowed {
		r.settle()
	}
	failedOpen, celErrors := r.cluster.WebhookTrouble(logOffset)

	details := repeatErrors
	pass := len(repeatErrors) == 0
	if len(failedOpen) > 0 && r.ng.Running() {
		pass = false
		details = append(details, "the call to nodeguard failed while it was running, and failurePolicy Ignore let the request through: "+strings.Join(failedOpen, "; "))
	}
	if len(celErrors) > 0 {
		pass = false
		details = append(details, "matchConditions evaluation failed (failurePolicy Ignore would silently skip the webhook): "+strings.Join(celErrors, "; "))
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
			} else if want != out.Err && !(want == "" && out.AlreadyExists) {
				mismatches = append(mismatches, fmt.Sprintf("error:\n        expected %q\n        got      %q", want, out.Err))
			}
		}
		if e.ErrorContains != nil && !strings.Contains(out.Err, *e.ErrorContains) {
			mismatches = append(mismatches, fmt.Sprintf("error:\n        expected to contain %q\n        got      %q", *e.ErrorContains, out.Err))
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
		fmt.Sprintf("got error: %q", out.Err),
		fmt.Sprintf("request: %s by %s", request, id),
	}
	if cred := r.cluster.CredentialID(id); cred != "" {
		info = append(info, "credential: "+cred)
	}
	if out.AlreadyExists {
		info = append(info, "the API server answered AlreadyExists: admission let the CREATE through")
	}
	return StepResult{Pass: pass, Details: details, Info: info}
}

// twoWayPatch is the strategic merge patch from old to node, as the kubelet computes
// its status patches (k8s.io/component-helpers/node/util.PatchNodeStatus).
func twoWayPatch(old, node *corev1.Node) ([]byte, error) {
	oldJSON, err := json.Marshal(old)
	if err != nil {
		return nil, err
	}
	newJSON, err := json.Marshal(node)
	if err != nil {
		return nil, err
	}
	patch, err := strategicpatch.CreateTwoWayMergePatch(oldJSON, newJSON, corev1.Node{})
	if err != nil {
		return nil, fmt.Errorf("computing the patch of node %s: %v", node.Name, err)
	}
	return patch, nil
}

// warningLog collects the warnings the API server sends with its answers.
type warningLog struct {
	mu  sync.Mutex
	got []string
}

func (w *warningLog) HandleWarningHeader(code int, agent string, text string) {
	if code != 299 || text == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, text)
}

func (w *warningLog) Take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.got
	w.got = nil
	return out
}

func subSuffix(s string) string {
	if s == "" {
		return ""
	}
	return "/" + s
}
