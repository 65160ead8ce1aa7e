package main

// The slice of the Kubernetes API nodeguard uses, over plain HTTP on a loopback port:
// list/watch/get of Nodes and CertificateSigningRequests (read-only), NodeIdentities
// (list/watch/get/create/update/patch/delete, and /status when the CRD declares it),
// Leases and Events (get/create/update/patch/delete in a namespace). Anything else is
// answered 404 and recorded as unserved, so that a request the harness does not know
// shows up in the report instead of passing unnoticed. With the manifests' RBAC
// (SetRBAC), requests are authenticated by token and authorized as the API server
// would; a 403 is recorded the same way.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apiserver/pkg/authentication/user"
)

const maxBody = 3 << 20

type APIServer struct {
	store    *Store
	logger   *log.Logger
	listener net.Listener
	server   *http.Server

	rbac *RBAC // nil: no authentication, no authorization

	mu       sync.Mutex
	unserved []string // every unserved or forbidden request, in order
	taken    int      // how many of them TakeUnserved already returned
}

// SetRBAC turns on authentication (the kubeconfigs' tokens) and authorization.
func (a *APIServer) SetRBAC(p *RBAC) { a.rbac = p }

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

// WriteKubeconfig writes a kubeconfig pointing at this server with a token:
// serviceAccountToken (nodeguard's ServiceAccount) or adminToken.
func (a *APIServer) WriteKubeconfig(path, token string) error {
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
      token: %s
`, a.URL(), token)
	return os.WriteFile(path, []byte(kc), 0o600)
}

// TakeUnserved returns the unserved requests since the last call.
func (a *APIServer) TakeUnserved() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := append([]string(nil), a.unserved[a.taken:]...)
	a.taken = len(a.unserved)
	return out
}

// UnservedSummary counts every unserved or forbidden request of the run by what it was.
func (a *APIServer) UnservedSummary() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	counts := map[string]int{}
	for _, u := range a.unserved {
		counts[u]++
	}
	var out []string
	for _, k := range sortedKeys(counts) {
		out = append(out, fmt.Sprintf("%dx %s", counts[k], k))
	}
	return out
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

// unserved answers 404 as the API server does for a path it does not know, logs the
// request and keeps it for the report.
func (a *APIServer) unservedRequest(w http.ResponseWriter, r *http.Request, why string) {
	what := fmt.Sprintf("404 %s %s (%s)", r.Method, r.URL.Path, why)
	a.logger.Printf("api: UNSERVED %s %s: %s", r.Method, r.URL.RequestURI(), why)
	a.mu.Lock()
	a.unserved = append(a.unserved, what)
	a.mu.Unlock()
	writeStatus(w, &apierrors.StatusError{ErrStatus: metav1.Status{
		Status:  metav1.StatusFailure,
		Message: "the server could not find the requested resource (nodeguard-e2e does not serve this: " + why + ")",
		Reason:  metav1.StatusReasonNotFound,
		Details: &metav1.StatusDetails{},
		Code:    http.StatusNotFound,
	}})
}

// apiPath is a request path taken apart.
type apiPath struct {
	group, version, namespace, resource, name, subresource string
}

func parsePath(p string) (apiPath, bool) {
	var out apiPath
	var rest []string
	segs := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case len(segs) >= 3 && segs[0] == "api" && segs[1] == "v1":
		out.version = "v1"
		rest = segs[2:]
	case len(segs) >= 4 && segs[0] == "apis":
		out.group, out.version = segs[1], segs[2]
		rest = segs[3:]
	default:
		return out, false
	}
	if len(rest) >= 3 && rest[0] == "namespaces" {
		out.namespace = rest[1]
		rest = rest[2:]
	}
	if len(rest) == 0 || len(rest) > 3 {
		return out, false
	}
	out.resource = rest[0]
	if len(rest) > 1 {
		out.name = rest[1]
	}
	if len(rest) > 2 {
		out.subresource = rest[2]
	}
	for _, s := range rest {
		if s == "" {
			return out, false
		}
	}
	return out, true
}

func (a *APIServer) serve(w http.ResponseWriter, r *http.Request) {
	a.logger.Printf("api: %s %s", r.Method, r.URL.RequestURI())
	if r.URL.Path == "/version" && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"major":"1","minor":"36","gitVersion":"v1.36.0-nodeguard-e2e","platform":"linux/amd64"}`))
		return
	}
	var u user.Info
	if a.rbac != nil {
		var err error
		if u, err = a.authenticate(r); err != nil {
			a.logger.Printf("api: -> 401: no known bearer token")
			writeStatus(w, err)
			return
		}
	}
	p, ok := parsePath(r.URL.Path)
	if !ok {
		a.unservedRequest(w, r, "not a resource path")
		return
	}
	if a.rbac != nil {
		if err := a.authorize(r, u, p); err != nil {
			msg := err.(apierrors.APIStatus).Status().Message
			a.logger.Printf("api: FORBIDDEN %s %s: %s", r.Method, r.URL.RequestURI(), msg)
			a.mu.Lock()
			a.unserved = append(a.unserved, fmt.Sprintf("403 %s %s (%s)", r.Method, r.URL.Path, msg))
			a.mu.Unlock()
			writeStatus(w, err)
			return
		}
	}
	ri := lookupResource(p.group, p.version, p.resource)
	if ri == nil {
		a.unservedRequest(w, r, "no resource "+p.resource+" in "+strings.TrimPrefix(p.group+"/"+p.version, "/"))
		return
	}
	switch {
	case !ri.namespaced && p.namespace != "":
		a.unservedRequest(w, r, ri.resource+" are cluster-scoped")
		return
	case ri.namespaced && p.namespace == "" && (p.name != "" || r.Method != http.MethodGet):
		a.unservedRequest(w, r, ri.resource+" are namespaced")
		return
	case p.subresource != "" && !(p.subresource == "status" && ri.statusSubresource):
		a.unservedRequest(w, r, "no subresource "+p.subresource+" of "+ri.resource)
		return
	}
	q := r.URL.Query()
	for _, param := range []string{"labelSelector", "fieldSelector", "continue", "dryRun"} {
		if q.Get(param) != "" {
			a.unservedRequest(w, r, "query parameter "+param)
			return
		}
	}
	if q.Get("sendInitialEvents") == "true" {
		a.unservedRequest(w, r, "query parameter sendInitialEvents=true (streaming lists)")
		return
	}
	if ri.typed && r.Method != http.MethodGet {
		a.unservedRequest(w, r, ri.resource+" are read-only here: only the harness writes them")
		return
	}

	if p.name == "" {
		switch r.Method {
		case http.MethodGet:
			if watch := q.Get("watch"); watch == "true" || watch == "1" {
				a.watch(w, r, ri, p.namespace)
			} else {
				a.list(w, ri, p.namespace)
			}
		case http.MethodPost:
			u, err := a.readObject(r)
			if err != nil {
				a.answerBodyError(w, r, err)
				return
			}
			if ri.namespaced && !knownNamespaces[p.namespace] {
				// The NamespaceLifecycle admission plugin.
				writeStatus(w, apierrors.NewNotFound(schemaNamespaces, p.namespace))
				return
			}
			obj, err := a.store.Create(ri, p.namespace, u)
			a.answer(w, ri, obj, http.StatusCreated, err)
		default:
			a.unservedRequest(w, r, r.Method+" of a collection")
		}
		return
	}

	switch r.Method {
	case http.MethodGet:
		b, ok, err := a.store.Get(ri.resource, p.namespace, p.name)
		switch {
		case err != nil:
			writeStatus(w, err)
		case !ok:
			writeStatus(w, apierrors.NewNotFound(ri.gr(), p.name))
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(b)
		}
	case http.MethodPut:
		u, err := a.readObject(r)
		if err != nil {
			a.answerBodyError(w, r, err)
			return
		}
		if ri.namespaced && !knownNamespaces[p.namespace] {
			writeStatus(w, apierrors.NewNotFound(schemaNamespaces, p.namespace))
			return
		}
		obj, created, err := a.store.Update(ri, p.namespace, p.name, p.subresource, u)
		code := http.StatusOK
		if created {
			code = http.StatusCreated
		}
		a.answer(w, ri, obj, code, err)
	case http.MethodPatch:
		ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if ct != patchMerge && ct != patchJSON && ct != patchStrategic {
			a.unservedRequest(w, r, "PATCH of type "+ct)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest(err.Error()))
			return
		}
		obj, err := a.store.Patch(ri, p.namespace, p.name, p.subresource, ct, body)
		a.answer(w, ri, obj, http.StatusOK, err)
	case http.MethodDelete:
		if p.subresource != "" {
			a.unservedRequest(w, r, "DELETE of a subresource")
			return
		}
		var opts metav1.DeleteOptions
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		if err == nil && len(bytes.TrimSpace(body)) > 0 {
			err = json.Unmarshal(body, &opts)
		}
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest(err.Error()))
			return
		}
		if len(opts.DryRun) > 0 {
			a.unservedRequest(w, r, "DeleteOptions.dryRun")
			return
		}
		obj, deleted, err := a.store.Delete(ri, p.namespace, p.name, opts.Preconditions)
		code := http.StatusOK
		if !deleted {
			code = http.StatusAccepted
		}
		a.answer(w, ri, obj, code, err)
	default:
		a.unservedRequest(w, r, r.Method)
	}
}

// errUnsupportedBody marks a body the harness does not decode (YAML, protobuf).
type errUnsupportedBody struct{ contentType string }

func (e errUnsupportedBody) Error() string { return "a body of type " + e.contentType }

// readObject decodes a JSON body into an object, with integers as int64.
func (a *APIServer) readObject(r *http.Request) (*unstructured.Unstructured, error) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "" && ct != "application/json" {
		return nil, errUnsupportedBody{ct}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	var m map[string]interface{}
	if err := utiljson.Unmarshal(body, &m); err != nil || m == nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("the body is not a JSON object: %v", err))
	}
	return &unstructured.Unstructured{Object: m}, nil
}

func (a *APIServer) answerBodyError(w http.ResponseWriter, r *http.Request, err error) {
	if u, ok := err.(errUnsupportedBody); ok {
		a.unservedRequest(w, r, u.Error())
		return
	}
	writeStatus(w, err)
}

func (a *APIServer) answer(w http.ResponseWriter, ri *resourceInfo, obj object, code int, err error) {
	if err != nil {
		a.logger.Printf("api: -> %v", err)
		writeStatus(w, err)
		return
	}
	b, err := encode(ri.resource, obj, true)
	if err != nil {
		writeStatus(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func (a *APIServer) list(w http.ResponseWriter, ri *resourceInfo, namespace string) {
	items, rv, err := a.store.List(ri.resource, namespace)
	if err != nil {
		writeStatus(w, err)
		return
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `{"kind":%q,"apiVersion":%q,"metadata":{"resourceVersion":%q},"items":[`, ri.listKind, ri.apiVersion(), rv)
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

func (a *APIServer) watch(w http.ResponseWriter, r *http.Request, ri *resourceInfo, namespace string) {
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

	stream, replay, startRV, err := a.store.OpenWatch(ri.resource, namespace, rv)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if expired, ok := err.(errExpired); ok {
		// As the API server does: a 200 whose first event is an ERROR 410 Expired.
		st := apierrors.NewResourceExpired(expired.Error()).ErrStatus
		st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
		b, _ := json.Marshal(st)
		fmt.Fprintf(w, `{"type":"ERROR","object":%s}`+"\n", b)
		flusher.Flush()
		a.logger.Printf("api: watch %s from %s: 410 Expired", ri.resource, rv)
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
				fmt.Fprintf(w, `{"type":"BOOKMARK","object":{"kind":%q,"apiVersion":%q,"metadata":{"resourceVersion":%q}}}`+"\n", ri.kind, ri.apiVersion(), lastRV)
				flusher.Flush()
			}
			return
		}
	}
}
