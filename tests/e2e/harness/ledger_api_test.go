package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const niURL = "/apis/nodeguard.io/v1alpha1/nodeidentities"

func call(t *testing.T, method, url, contentType, body string) (int, map[string]interface{}) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]interface{}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %s", method, url, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func str(o map[string]interface{}, path ...string) string {
	s, _ := nested(o, path...).(string)
	return s
}

// openWatch starts a watch and waits until the store has registered it.
func openWatch(t *testing.T, store *Store, url, resource string) (*bufio.Reader, func()) {
	t.Helper()
	before := store.OpenWatches()[resource]
	resp := get(t, url)
	deadline := time.Now().Add(2 * time.Second)
	for store.OpenWatches()[resource] == before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return bufio.NewReader(resp.Body), func() { resp.Body.Close() }
}

func ni(name, rv, extra string) string {
	meta := `"name":"` + name + `"`
	if rv != "" {
		meta += `,"resourceVersion":"` + rv + `"`
	}
	return `{"apiVersion":"nodeguard.io/v1alpha1","kind":"NodeIdentity","metadata":{` + meta + `},"spec":{"boots":[{"bootID":"b1"}]}` + extra + `}`
}

func TestNodeIdentityWritesAnswerLikeTheAPIServer(t *testing.T) {
	store, api := startTestAPI(t)
	u := api.URL() + niURL

	events, closeWatch := openWatch(t, store, u+"?watch=true&resourceVersion=1000", resNodeIdentities)
	defer closeWatch()

	code, created := call(t, "POST", u, "application/json", ni("worker-1", "", ""))
	if code != 201 || str(created, "metadata", "uid") == "" || str(created, "metadata", "resourceVersion") == "" ||
		str(created, "metadata", "creationTimestamp") == "" || nested(created, "metadata", "generation") != float64(1) {
		t.Fatalf("create: %d %v", code, created)
	}
	// The event was flushed before the response: it is already readable.
	if ev := readEvent(t, events); ev.Type != "ADDED" {
		t.Fatalf("watch: %s", ev.Type)
	}
	rv := str(created, "metadata", "resourceVersion")

	code, st := call(t, "POST", u, "application/json", ni("worker-1", "", ""))
	if code != 409 || st["kind"] != "Status" || st["apiVersion"] != "v1" || st["status"] != "Failure" || st["reason"] != "AlreadyExists" ||
		st["message"] != `nodeidentities.nodeguard.io "worker-1" already exists` || st["code"] != float64(409) ||
		str(st, "details", "name") != "worker-1" || str(st, "details", "group") != "nodeguard.io" || str(st, "details", "kind") != "nodeidentities" {
		t.Fatalf("second create: %d %v", code, st)
	}

	code, st = call(t, "PUT", u+"/worker-1", "application/json", ni("worker-1", "999", ""))
	if code != 409 || st["reason"] != "Conflict" ||
		st["message"] != `Operation cannot be fulfilled on nodeidentities.nodeguard.io "worker-1": the object has been modified; please apply your changes to the latest version and try again` {
		t.Fatalf("stale update: %d %v", code, st)
	}
	code, st = call(t, "PUT", u+"/worker-1", "application/json", ni("worker-1", "", ""))
	if code != 422 || st["reason"] != "Invalid" {
		t.Fatalf("update without resourceVersion: %d %v", code, st)
	}
	code, st = call(t, "PUT", u+"/worker-2", "application/json", ni("worker-2", "5", ""))
	if code != 404 || st["message"] != `nodeidentities.nodeguard.io "worker-2" not found` {
		t.Fatalf("update of a missing one: %d %v", code, st)
	}

	// An update that changes nothing writes nothing.
	code, same := call(t, "PUT", u+"/worker-1", "application/json", ni("worker-1", rv, ""))
	if code != 200 || str(same, "metadata", "resourceVersion") != rv {
		t.Fatalf("no-op update: %d %v", code, same)
	}

	code, updated := call(t, "PUT", u+"/worker-1", "application/json",
		`{"apiVersion":"nodeguard.io/v1alpha1","kind":"NodeIdentity","metadata":{"name":"worker-1","resourceVersion":"`+rv+`"},"spec":{"boots":[{"bootID":"b1"},{"bootID":"b2"}]},"status":{"conflict":{"check":"two-kubelets"}}}`)
	if code != 200 || str(updated, "metadata", "resourceVersion") == rv || nested(updated, "metadata", "generation") != float64(2) ||
		str(updated, "metadata", "uid") != str(created, "metadata", "uid") || nested(updated, "status", "conflict") == nil {
		t.Fatalf("update: %d %v", code, updated)
	}
	if ev := readEvent(t, events); ev.Type != "MODIFIED" {
		t.Fatalf("watch: %s", ev.Type)
	}
	v := viewOf("worker-1", mustContent(t, store, "worker-1"))
	if len(v.boots) != 2 || v.lastBoot() != "b2" || !v.hasConflict() {
		t.Fatalf("view: %+v", v)
	}

	code, _ = call(t, "DELETE", u+"/worker-1", "application/json", `{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"resourceVersion":"1"}}`)
	if code != 409 {
		t.Fatalf("delete with a stale precondition: %d", code)
	}
	code, _ = call(t, "DELETE", u+"/worker-1", "", "")
	if code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if ev := readEvent(t, events); ev.Type != "DELETED" {
		t.Fatalf("watch: %s", ev.Type)
	}
	if code, _ := call(t, "GET", u+"/worker-1", "", ""); code != 404 {
		t.Fatalf("get after delete: %d", code)
	}
}

func mustContent(t *testing.T, store *Store, name string) map[string]interface{} {
	t.Helper()
	o, ok := store.Content(resNodeIdentities, "", name)
	if !ok {
		t.Fatalf("no NodeIdentity %s", name)
	}
	return o
}

func TestNodeIdentityStatusSubresource(t *testing.T) {
	resources[resNodeIdentities].statusSubresource = true
	defer func() { resources[resNodeIdentities].statusSubresource = false }()
	store, api := startTestAPI(t)
	u := api.URL() + niURL

	code, created := call(t, "POST", u, "application/json", ni("worker-1", "", `,"status":{"boots":1}`))
	if code != 201 || created["status"] != nil {
		t.Fatalf("a create keeps no status: %d %v", code, created)
	}
	rv := str(created, "metadata", "resourceVersion")
	// The main resource ignores the status...
	code, updated := call(t, "PUT", u+"/worker-1", "application/json", ni("worker-1", rv, `,"status":{"conflict":{"check":"x"}}`))
	if code != 200 || updated["status"] != nil || str(updated, "metadata", "resourceVersion") != rv {
		t.Fatalf("main update with a status: %d %v", code, updated)
	}
	// ...which /status writes, and only it.
	code, updated = call(t, "PUT", u+"/worker-1/status", "application/json",
		`{"apiVersion":"nodeguard.io/v1alpha1","kind":"NodeIdentity","metadata":{"name":"worker-1","resourceVersion":"`+rv+`"},"spec":{},"status":{"conflict":{"check":"x"}}}`)
	if code != 200 || nested(updated, "status", "conflict") == nil || len(viewOf("", updated).boots) != 1 || nested(updated, "metadata", "generation") != float64(1) {
		t.Fatalf("status update: %d %v", code, updated)
	}
	if !viewOf("worker-1", mustContent(t, store, "worker-1")).hasConflict() {
		t.Fatal("status not stored")
	}
	code, patched := call(t, "PATCH", u+"/worker-1/status", patchMerge, `{"status":{"conflict":null}}`)
	if code != 200 || nested(patched, "status", "conflict") != nil {
		t.Fatalf("status merge patch: %d %v", code, patched)
	}
}

func TestGarbageCollectionOfNodeIdentities(t *testing.T) {
	store, api := startTestAPI(t)
	u := api.URL() + niURL
	n := buildNode(NodeSpec{Name: "worker-1", BootID: "b1"}, metav1.Now())
	n.UID = ""
	if err := store.CreateNode(n); err != nil {
		t.Fatal(err)
	}
	node, _ := store.GetNode("worker-1")
	if node.UID == "" {
		t.Fatal("a Node without a uid gets one at create")
	}
	owned := func(name, uid string) string {
		return `{"apiVersion":"nodeguard.io/v1alpha1","kind":"NodeIdentity","metadata":{"name":"` + name +
			`","ownerReferences":[{"apiVersion":"v1","kind":"Node","name":"worker-1","uid":"` + uid + `"}]},"spec":{}}`
	}
	if code, _ := call(t, "POST", u, "application/json", owned("worker-1", string(node.UID))); code != 201 {
		t.Fatalf("create: %d", code)
	}
	// An owner that is not there (a uid no Node has): the garbage collector deletes it.
	if code, _ := call(t, "POST", u, "application/json", owned("stale", "0000-not-a-node")); code != 201 {
		t.Fatalf("create: %d", code)
	}
	if _, ok := store.Content(resNodeIdentities, "", "stale"); ok {
		t.Fatal("a NodeIdentity whose owner does not exist is collected")
	}

	events, closeWatch := openWatch(t, store, u+"?watch=true&resourceVersion="+node.ResourceVersion, resNodeIdentities)
	defer closeWatch()
	for { // skip to after the stale one's events
		ev := readEvent(t, events)
		if ev.Type == "DELETED" && strings.Contains(string(ev.Object), `"stale"`) {
			break
		}
	}
	if err := store.DeleteNode("worker-1"); err != nil {
		t.Fatal(err)
	}
	ev := readEvent(t, events)
	if ev.Type != "DELETED" || !strings.Contains(string(ev.Object), `"name":"worker-1"`) {
		t.Fatalf("after the Node's deletion: %s %s", ev.Type, ev.Object)
	}
	if _, ok := store.Content(resNodeIdentities, "", "worker-1"); ok {
		t.Fatal("the owned NodeIdentity outlived its Node")
	}
}

func TestLeases(t *testing.T) {
	_, api := startTestAPI(t)
	u := api.URL() + "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
	lease := func(rv, holder string) string {
		meta := `"name":"nodeguard-recorder"`
		if rv != "" {
			meta += `,"resourceVersion":"` + rv + `"`
		}
		return `{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{` + meta + `},"spec":{"holderIdentity":"` + holder + `","leaseDurationSeconds":15}}`
	}
	if code, st := call(t, "GET", u+"/nodeguard-recorder", "", ""); code != 404 || st["message"] != `leases.coordination.k8s.io "nodeguard-recorder" not found` {
		t.Fatalf("get: %d %v", code, st)
	}
	code, created := call(t, "POST", u, "application/json", lease("", "a"))
	if code != 201 || str(created, "metadata", "namespace") != "kube-system" {
		t.Fatalf("create: %d %v", code, created)
	}
	rv := str(created, "metadata", "resourceVersion")
	if code, _ := call(t, "POST", u, "application/json", lease("", "b")); code != 409 {
		t.Fatalf("second create: %d", code)
	}
	code, updated := call(t, "PUT", u+"/nodeguard-recorder", "application/json", lease(rv, "b"))
	if code != 200 || str(updated, "spec", "holderIdentity") != "b" {
		t.Fatalf("update: %d %v", code, updated)
	}
	if code, st := call(t, "PUT", u+"/nodeguard-recorder", "application/json", lease(rv, "c")); code != 409 || st["reason"] != "Conflict" {
		t.Fatalf("stale update: %d %v", code, st)
	}
	// A lease can be created by a PUT, as the API server's lease strategy allows.
	code, _ = call(t, "PUT", api.URL()+"/apis/coordination.k8s.io/v1/namespaces/default/leases/nodeguard-recorder", "application/json", lease("", "d"))
	if code != 201 {
		t.Fatalf("create on update: %d", code)
	}
	if code, st := call(t, "POST", api.URL()+"/apis/coordination.k8s.io/v1/namespaces/nope/leases", "application/json", lease("", "a")); code != 404 || st["message"] != `namespaces "nope" not found` {
		t.Fatalf("create in a missing namespace: %d %v", code, st)
	}
}

func TestEventsCreateThenMergePatchASeries(t *testing.T) {
	store, api := startTestAPI(t)
	u := api.URL() + "/apis/events.k8s.io/v1/namespaces/default/events"
	ev := `{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"worker-1.17f0"},"eventTime":"2026-01-01T00:00:00.000000Z",` +
		`"action":"Recording","reason":"NodeIdentityConflict","type":"Warning","note":"two machines","reportingController":"nodeguard","reportingInstance":"nodeguard-0",` +
		`"regarding":{"kind":"Node","name":"worker-1","apiVersion":"v1"}}`
	if code, created := call(t, "POST", u, "application/json", ev); code != 201 || str(created, "metadata", "namespace") != "default" {
		t.Fatalf("create: %d %v", code, created)
	}
	series := strings.TrimSuffix(ev, "}") + `,"series":{"count":2,"lastObservedTime":"2026-01-01T00:01:00.000000Z"}}`
	code, patched := call(t, "PATCH", u+"/worker-1.17f0", patchMerge, series)
	if code != 200 || nested(patched, "series", "count") != float64(2) {
		t.Fatalf("patch: %d %v", code, patched)
	}
	if code, _ := call(t, "PATCH", u+"/worker-2.1", patchMerge, series); code != 404 {
		t.Fatalf("patch of a missing event: %d", code)
	}
	r := &Runner{store: store}
	got, others := r.nodeEvents()
	note := "two machines"
	missing, extra := matchEvents([]EventExpect{{Node: "worker-1", Reason: "NodeIdentityConflict", Type: "Warning", Note: &note}}, []string{note}, got)
	if len(missing) > 0 || len(extra) > 0 || others != 0 || got[0].count != 2 {
		t.Fatalf("events: %v missing %v extra %v", got, missing, extra)
	}
	missing, extra = matchEvents(nil, nil, got)
	if len(missing) != 0 || len(extra) != 1 {
		t.Fatalf("expecting none: missing %v extra %v", missing, extra)
	}
}

func TestResetClearsLedgerAndEventsButKeepsLeases(t *testing.T) {
	store, api := startTestAPI(t)
	call(t, "POST", api.URL()+niURL, "application/json", ni("worker-1", "", ""))
	call(t, "POST", api.URL()+"/apis/events.k8s.io/v1/namespaces/default/events", "application/json",
		`{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"e1"},"regarding":{"kind":"Node","name":"worker-1"}}`)
	call(t, "POST", api.URL()+"/apis/coordination.k8s.io/v1/namespaces/default/leases", "application/json",
		`{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l"}}`)
	if err := store.Reset([]*corev1.Node{buildNode(NodeSpec{Name: "worker-2"}, metav1.Now())}, nil); err != nil {
		t.Fatal(err)
	}
	if len(store.Contents(resNodeIdentities)) != 0 || len(store.Contents(resEvents)) != 0 || len(store.Contents(resLeases)) != 1 {
		t.Fatalf("after reset: %d NodeIdentities, %d events, %d leases", len(store.Contents(resNodeIdentities)), len(store.Contents(resEvents)), len(store.Contents(resLeases)))
	}
}

func TestListAndWatchNodeIdentitiesLikeNodes(t *testing.T) {
	store, api := startTestAPI(t)
	call(t, "POST", api.URL()+niURL, "application/json", ni("worker-1", "", ""))
	code, list := call(t, "GET", api.URL()+niURL+"?&limit=500", "", "")
	items, _ := list["items"].([]interface{})
	if code != 200 || list["kind"] != "NodeIdentityList" || list["apiVersion"] != "nodeguard.io/v1alpha1" || len(items) != 1 {
		t.Fatalf("list: %d %v", code, list)
	}
	if items[0].(map[string]interface{})["kind"] != "NodeIdentity" {
		t.Errorf("custom resources keep kind in list items")
	}
	rv := str(list, "metadata", "resourceVersion")
	events, closeWatch := openWatch(t, store, api.URL()+niURL+"?&watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion="+rv, resNodeIdentities)
	defer closeWatch()
	call(t, "POST", api.URL()+niURL, "application/json", ni("worker-2", "", ""))
	if ev := readEvent(t, events); ev.Type != "ADDED" || !strings.Contains(string(ev.Object), `"worker-2"`) {
		t.Fatalf("watch: %s %s", ev.Type, ev.Object)
	}
	if ev := readEvent(t, events); ev.Type != "BOOKMARK" || !strings.Contains(string(ev.Object), `"kind":"NodeIdentity"`) {
		t.Fatalf("expected a NodeIdentity BOOKMARK at the timeout, got %s %s", ev.Type, ev.Object)
	}
}

func TestUnservedRequestsAre404AndRecorded(t *testing.T) {
	_, api := startTestAPI(t)
	for _, c := range []struct{ method, path, ct string }{
		{"GET", "/apis/apps/v1/deployments", ""},
		{"GET", "/api/v1/nodes?labelSelector=a%3Db", ""},
		{"PATCH", niURL + "/worker-1", "application/apply-patch+yaml"},
		{"PUT", "/api/v1/nodes/worker-1", "application/json"},
		{"GET", niURL + "/worker-1/status", ""}, // no status subresource declared
	} {
		code, st := call(t, c.method, api.URL()+c.path, c.ct, "{}")
		if code != 404 || st["reason"] != "NotFound" {
			t.Errorf("%s %s: %d %v", c.method, c.path, code, st)
		}
	}
	if got := api.TakeUnserved(); len(got) != 5 {
		t.Fatalf("unserved: %q", got)
	}
	if got := api.TakeUnserved(); len(got) != 0 {
		t.Fatalf("taken twice: %q", got)
	}
}

func TestScenarioFilesWithSeveralDocumentsAndLedgerSteps(t *testing.T) {
	dir := t.TempDir()
	good := `name: one
setup: {nodes: [{name: worker-1, bootID: a}]}
steps:
  - credentialID: X509SHA256=00
    updateNodeStatus: {name: worker-1, bootID: b}
  - waitFor: {nodeIdentity: worker-1, boots: 2}
    expect:
      nodeIdentity: {name: worker-1, conflict: false}
      events: []
  - forget: worker-1
    expect: {exitCode: 0, output: done}
---
# the second scenario
steps:
  - nodeguard: stop
`
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	scs, err := LoadScenarios(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(scs) != 2 || scs[0].Name != "one" || scs[1].Name != "a #2" || scs[0].Steps[1].title() != "waitFor worker-1 boots=2" {
		t.Fatalf("%d scenarios: %+v", len(scs), scs)
	}
	for _, bad := range []string{
		"steps: [{waitFor: {nodeIdentity: w, boots: 1, conflict: true}}]",
		"steps: [{waitFor: {boots: 1}}]",
		"steps: [{nodeguard: stop, expect: {allowed: true}}]",
		"steps: [{nodeguard: stop, expect: {exitCode: 1}}]",
		"steps: [{credentialID: x, createCSR: {name: c, node: n, key: k, signer: s, requester: r}}]",
		"steps: [{forget: w, expect: {events: [{node: w}]}}]",
	} {
		if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadScenarios(dir, ""); err == nil {
			t.Errorf("accepted: %s", bad)
		}
	}
}

func TestFindLedgerCRD(t *testing.T) {
	crd := `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: nodeidentities.nodeguard.io}
spec:
  group: nodeguard.io
  scope: Cluster
  names: {plural: nodeidentities, singular: nodeidentity, kind: NodeIdentity}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: {status: {}}
      schema: {openAPIV3Schema: {type: object}}
`
	src, err := findLedgerCRD([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n"+crd), "m")
	if err != nil || src == nil || !src.status {
		t.Fatalf("%+v %v", src, err)
	}
	if _, err := findLedgerCRD([]byte(strings.Replace(crd, "Cluster", "Namespaced", 1)), "m"); err == nil {
		t.Fatal("a namespaced NodeIdentity CRD is accepted")
	}
	if src, err := findLedgerCRD([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"), "m"); src != nil || err != nil {
		t.Fatalf("no CRD: %+v %v", src, err)
	}
}

const rbacManifests = `apiVersion: apps/v1
kind: Deployment
metadata: {name: nodeguard, namespace: nodeguard}
spec:
  selector: {matchLabels: {app: nodeguard}}
  template:
    metadata: {labels: {app: nodeguard}}
    spec:
      serviceAccountName: nodeguard
      containers: [{name: nodeguard, image: nodeguard}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: nodeguard}
rules:
  - {apiGroups: ["nodeguard.io"], resources: ["nodeidentities"], verbs: ["get", "list", "watch", "create", "update"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: nodeguard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodeguard}
subjects: [{kind: ServiceAccount, name: nodeguard, namespace: nodeguard}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lease, namespace: nodeguard}
rules:
  - {apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"]}
  - {apiGroups: ["coordination.k8s.io"], resources: ["leases"], resourceNames: ["nodeguard-recorder"], verbs: ["get", "update"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lease, namespace: nodeguard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}
subjects: [{kind: ServiceAccount, name: nodeguard, namespace: nodeguard}]
`

func callAs(t *testing.T, token, method, url, body string) (int, map[string]interface{}) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]interface{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestRBACOfTheManifestsAppliesToNodeguardsServiceAccount(t *testing.T) {
	knownNamespaces["nodeguard"] = true
	p, err := LoadRBAC([]byte(rbacManifests))
	if err != nil || p == nil || p.ServiceAccount().GetName() != "system:serviceaccount:nodeguard:nodeguard" {
		t.Fatalf("%+v %v", p, err)
	}
	_, api := startTestAPI(t)
	api.SetRBAC(p)
	sa := serviceAccountToken
	leases := api.URL() + "/apis/coordination.k8s.io/v1/namespaces/nodeguard/leases"
	lease := `{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"nodeguard-recorder"}}`

	if code, _ := callAs(t, "", "GET", api.URL()+niURL, ""); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := callAs(t, sa, "POST", api.URL()+niURL, ni("worker-1", "", "")); code != 201 {
		t.Fatalf("create a NodeIdentity: %d", code)
	}
	code, st := callAs(t, sa, "DELETE", api.URL()+niURL+"/worker-1", "")
	if code != 403 || st["reason"] != "Forbidden" || st["message"] != `nodeidentities.nodeguard.io "worker-1" is forbidden: User "system:serviceaccount:nodeguard:nodeguard" cannot delete resource "nodeidentities" in API group "nodeguard.io" at the cluster scope` {
		t.Fatalf("delete: %d %v", code, st)
	}
	if code, _ := callAs(t, sa, "POST", leases, lease); code != 201 {
		t.Fatalf("create the lease: %d", code)
	}
	if code, _ := callAs(t, sa, "GET", leases+"/nodeguard-recorder", ""); code != 200 {
		t.Fatalf("get the lease: %d", code)
	}
	code, st = callAs(t, sa, "GET", leases+"/other", "")
	if code != 403 || st["message"] != `leases.coordination.k8s.io "other" is forbidden: User "system:serviceaccount:nodeguard:nodeguard" cannot get resource "leases" in API group "coordination.k8s.io" in the namespace "nodeguard"` {
		t.Fatalf("another lease: %d %v", code, st)
	}
	code, st = callAs(t, sa, "POST", api.URL()+"/apis/events.k8s.io/v1/namespaces/default/events", `{"metadata":{"name":"e"}}`)
	if code != 403 || st["message"] != `events.events.k8s.io is forbidden: User "system:serviceaccount:nodeguard:nodeguard" cannot create resource "events" in API group "events.k8s.io" in the namespace "default"` {
		t.Fatalf("an event without a grant: %d %v", code, st)
	}
	if code, _ := callAs(t, adminToken, "DELETE", api.URL()+niURL+"/worker-1", ""); code != 200 {
		t.Fatalf("an administrator deletes: %d", code)
	}
	if got := api.TakeUnserved(); len(got) != 3 || !strings.HasPrefix(got[0], "403 DELETE") {
		t.Fatalf("forbidden requests recorded: %q", got)
	}
}
