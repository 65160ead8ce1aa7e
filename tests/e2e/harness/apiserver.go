package main

// The slice of the Kubernetes API nodeguard's watchers use: list and watch (and get)
// of Nodes and CertificateSigningRequests, over plain HTTP on a loopback port.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type APIServer struct {
	store    *Store
	logger   *log.Logger
	listener net.Listener
	server   *http.Server
}

type resourcePath struct {
	prefix   string // up to and including the plural
	resource string
	listKind string
	version  string
	kind     string
}

var apiPaths = []resourcePath{
	{prefix: "/api/v1/nodes", resource: resNodes, listKind: "NodeList", version: "v1", kind: "Node"},
	{prefix: "/apis/certificates.k8s.io/v1/certificatesigningrequests", resource: resCSRs, listKind: "CertificateSigningRequestList", version: "certificates.k8s.io/v1", kind: "CertificateSigningRequest"},
}

func StartAPIServer(store *Store, logger *log.Logger) (*APIServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &APIServer{store: store, logger: logger, listener: l}
	a.server = &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.server.Serve(l) }()
	return a, nil
}

func (a *APIServer) URL() string { return "http://" + a.listener.Addr().String() }

func (a *APIServer) Close() { _ = a.server.Close() }

// WriteKubeconfig writes a kubeconfig pointing at this server with a dummy token.
func (a *APIServer) WriteKubeconfig(path string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster:
      server: %s
contexts:
  - name: e2e
    context:
      cluster: e2e
      user: nodeguard
current-context: e2e
users:
  - name: nodeguard
    user:
      token: nodeguard-e2e-dummy-token
`, a.URL())
	return os.WriteFile(path, []byte(kc), 0o600)
}

func writeStatus(w http.ResponseWriter, err error) {
	status := apierrors.NewInternalError(err).ErrStatus
	if se, ok := err.(apierrors.APIStatus); ok {
		status = se.Status()
	}
	status.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	b, _ := json.Marshal(status)
	w.Header().Set("Content-Type", "application/json")
	code := int(status.Code)
	if code == 0 {
		code = http.StatusInternalServerError
	}
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func (a *APIServer) serve(w http.ResponseWriter, r *http.Request) {
	a.logger.Printf("api: %s %s", r.Method, r.URL.RequestURI())
	if r.URL.Path == "/version" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"major":"1","minor":"36","gitVersion":"v1.36.0-nodeguard-e2e","platform":"linux/amd64"}`))
		return
	}
	if r.Method != http.MethodGet {
		writeStatus(w, apierrors.NewMethodNotSupported(groupResources[resNodes], r.Method))
		return
	}
	for _, p := range apiPaths {
		switch {
		case r.URL.Path == p.prefix:
			q := r.URL.Query()
			if watch := q.Get("watch"); watch == "true" || watch == "1" {
				a.watch(w, r, p)
				return
			}
			a.list(w, r, p)
			return
		case strings.HasPrefix(r.URL.Path, p.prefix+"/") && !strings.Contains(r.URL.Path[len(p.prefix)+1:], "/"):
			name := r.URL.Path[len(p.prefix)+1:]
			b, ok, err := a.store.Get(p.resource, name)
			if err != nil {
				writeStatus(w, err)
				return
			}
			if !ok {
				writeStatus(w, apierrors.NewNotFound(groupResources[p.resource], name))
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(b)
			return
		}
	}
	writeStatus(w, apierrors.NewNotFound(groupResources[resNodes], r.URL.Path))
}

func (a *APIServer) list(w http.ResponseWriter, r *http.Request, p resourcePath) {
	items, rv, err := a.store.List(p.resource)
	if err != nil {
		writeStatus(w, err)
		return
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `{"kind":%q,"apiVersion":%q,"metadata":{"resourceVersion":%q},"items":[`, p.listKind, p.version, rv)
	for i, it := range items {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(it)
	}
	buf.WriteString("]}\n")
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(buf.Bytes())
}

func (a *APIServer) watch(w http.ResponseWriter, r *http.Request, p resourcePath) {
	q := r.URL.Query()
	rv := q.Get("resourceVersion")
	bookmarks := q.Get("allowWatchBookmarks") == "true"
	timeout := 30 * time.Minute
	if t := q.Get("timeoutSeconds"); t != "" {
		secs, err := strconv.Atoi(t)
		if err != nil || secs < 0 {
			writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("invalid timeoutSeconds %q", t)))
			return
		}
		if secs > 0 {
			timeout = time.Duration(secs) * time.Second
		}
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeStatus(w, fmt.Errorf("streaming unsupported"))
		return
	}

	stream, replay, startRV, err := a.store.OpenWatch(p.resource, rv)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if expired, ok := err.(errExpired); ok {
		// As the API server does: a 200 whose first event is an ERROR 410 Expired.
		st := apierrors.NewResourceExpired(expired.Error()).ErrStatus
		st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
		b, _ := json.Marshal(st)
		fmt.Fprintf(w, `{"type":"ERROR","object":%s}`+"\n", b)
		flusher.Flush()
		a.logger.Printf("api: watch %s from %s: 410 Expired", p.resource, rv)
		return
	}
	if err != nil {
		st := apierrors.NewInternalError(err).ErrStatus
		if se, ok := err.(apierrors.APIStatus); ok {
			st = se.Status()
		}
		st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
		b, _ := json.Marshal(st)
		fmt.Fprintf(w, `{"type":"ERROR","object":%s}`+"\n", b)
		flusher.Flush()
		return
	}
	defer a.store.CloseWatch(stream)
	flusher.Flush()

	lastRV := startRV
	write := func(ev *storedEvent) error {
		if _, err := fmt.Fprintf(w, `{"type":%q,"object":%s}`+"\n", ev.typ, ev.obj); err != nil {
			return err
		}
		flusher.Flush()
		if ev.rv != 0 {
			lastRV = strconv.FormatUint(ev.rv, 10)
		}
		return nil
	}
	for _, ev := range replay {
		if err := write(ev); err != nil {
			return
		}
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case pe := <-stream.ch:
			err := write(pe.ev)
			close(pe.done)
			if err != nil {
				return
			}
		case <-stream.dead:
			return
		case <-r.Context().Done():
			return
		case <-timer.C:
			if bookmarks && len(stream.ch) == 0 {
				// The API server sends a bookmark right before it ends a watch on timeout.
				fmt.Fprintf(w, `{"type":"BOOKMARK","object":{"kind":%q,"apiVersion":%q,"metadata":{"resourceVersion":%q}}}`+"\n", p.kind, p.version, lastRV)
				flusher.Flush()
			}
			return
		}
	}
}
