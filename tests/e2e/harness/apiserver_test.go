package main

import (
	"bufio"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type watchLine struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

func startTestAPI(t *testing.T) (*Store, *APIServer) {
	t.Helper()
	store := NewStore()
	api, err := StartAPIServer(store, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	return store, api
}

func get(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func readEvent(t *testing.T, r *bufio.Reader) watchLine {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading a watch event: %v", err)
	}
	var ev watchLine
	if err := json.Unmarshal(line, &ev); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	return ev
}

func TestListThenWatchSeesLaterWritesFlushedBeforeTheWriteReturns(t *testing.T) {
	store, api := startTestAPI(t)
	ready := true
	n1 := buildNode(NodeSpec{Name: "worker-1", MachineID: "m1", SystemUUID: "u1", BootID: "b1", InternalIP: "10.0.0.1", Ready: &ready}, metav1.Now())
	if err := store.Reset([]*corev1.Node{n1}, nil); err != nil {
		t.Fatal(err)
	}

	resp := get(t, api.URL()+"/api/v1/nodes?&limit=500")
	var list struct {
		Kind     string `json:"kind"`
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []map[string]interface{} `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if list.Kind != "NodeList" || len(list.Items) != 1 || list.Metadata.ResourceVersion == "" {
		t.Fatalf("list: %+v", list)
	}
	if _, hasKind := list.Items[0]["kind"]; hasKind {
		t.Errorf("list items carry kind; the API server omits it")
	}

	resp = get(t, api.URL()+"/api/v1/nodes?&watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion="+list.Metadata.ResourceVersion)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	// Wait until the stream is registered before writing.
	deadline := time.Now().Add(2 * time.Second)
	for store.OpenWatches()[resNodes] == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := store.DeleteNode("worker-1"); err != nil {
		t.Fatal(err)
	}
	ev := readEvent(t, r)
	if ev.Type != "DELETED" || !strings.Contains(string(ev.Object), `"kind":"Node"`) {
		t.Fatalf("event: %s %s", ev.Type, ev.Object)
	}
	// On timeout, a bookmark, then the end of the stream.
	ev = readEvent(t, r)
	if ev.Type != "BOOKMARK" {
		t.Fatalf("expected a BOOKMARK before the timeout ends the watch, got %s", ev.Type)
	}
	if _, err := r.ReadBytes('\n'); err != io.EOF {
		t.Fatalf("expected the stream to end, got %v", err)
	}
}

func TestWatchFromAnExpiredVersionIsA410Event(t *testing.T) {
	_, api := startTestAPI(t)
	resp := get(t, api.URL()+"/apis/certificates.k8s.io/v1/certificatesigningrequests?watch=true&resourceVersion=5")
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ev := readEvent(t, bufio.NewReader(resp.Body))
	var st metav1.Status
	if err := json.Unmarshal(ev.Object, &st); err != nil {
		t.Fatal(err)
	}
	if ev.Type != "ERROR" || st.Code != 410 || st.Reason != metav1.StatusReasonExpired {
		t.Fatalf("got %s %+v", ev.Type, st)
	}
}

func TestWatchFromZeroReplaysTheCurrentState(t *testing.T) {
	store, api := startTestAPI(t)
	n := buildNode(NodeSpec{Name: "worker-1"}, metav1.Now())
	if err := store.CreateNode(n); err != nil {
		t.Fatal(err)
	}
	resp := get(t, api.URL()+"/api/v1/nodes?watch=1&resourceVersion=0&timeoutSeconds=1")
	defer resp.Body.Close()
	ev := readEvent(t, bufio.NewReader(resp.Body))
	if ev.Type != "ADDED" || !strings.Contains(string(ev.Object), `"name":"worker-1"`) {
		t.Fatalf("got %s %s", ev.Type, ev.Object)
	}
}
