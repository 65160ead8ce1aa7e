package main

// The in-memory cluster: Nodes and CSRs (typed, written by the harness), NodeIdentities,
// Leases and Events (JSON, written by API clients), one global resourceVersion counter
// and an event log from which watches replay. Every write returns only once its event
// has been written and flushed to every open watch stream of that resource.
//
// Writes through the API follow the API server's registry: AlreadyExists, NotFound,
// resourceVersion preconditions (409 Conflict), create-on-update, the status
// subresource, metadata.generation, finalizers, no-op updates that write nothing. The
// garbage collector is emulated for NodeIdentities owned by Nodes.

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation/field"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
)

const (
	maxLogEvents = 20000
	// How long a write waits for the open watch streams to take its event.
	flushTimeout = 5 * time.Second

	// The API server's message for a resourceVersion precondition that failed.
	optimisticLockErrorMsg = "the object has been modified; please apply your changes to the latest version and try again"
)

// object is what the store keeps: *corev1.Node, *certificatesv1.CertificateSigningRequest
// or *unstructured.Unstructured.
type object interface {
	metav1.Object
	runtime.Object
}

type storedEvent struct {
	rv        uint64
	resource  string
	namespace string
	typ       string // ADDED, MODIFIED, DELETED
	obj       []byte // the object as watch events carry it (with kind and apiVersion)
}

type pendingEvent struct {
	ev   *storedEvent
	done chan struct{}
}

type watchStream struct {
	resource  string
	namespace string // "" for every namespace
	ch        chan pendingEvent
	dead      chan struct{} // closed when the store gave up on it (buffer full)
	deadOnce  sync.Once
}

func (w *watchStream) kill() { w.deadOnce.Do(func() { close(w.dead) }) }

func (w *watchStream) wants(ev *storedEvent) bool {
	return w.resource == ev.resource && (w.namespace == "" || w.namespace == ev.namespace)
}

type Store struct {
	mu       sync.Mutex
	rv       uint64
	objects  map[string]map[string]object // resource -> namespace/name -> object
	log      []*storedEvent
	logStart uint64 // events with rv > logStart are all in log
	watches  map[*watchStream]struct{}
	// counters for diagnostics
	watchesOpened map[string]int
	// logf notes what the emulated garbage collector did.
	logf func(format string, args ...interface{})
}

func NewStore() *Store {
	s := &Store{
		rv:            1000,
		logStart:      1000,
		objects:       map[string]map[string]object{},
		watches:       map[*watchStream]struct{}{},
		watchesOpened: map[string]int{},
		logf:          func(string, ...interface{}) {},
	}
	for r := range resources {
		s.objects[r] = map[string]object{}
	}
	return s
}

func objKey(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}

// encode renders an object as a watch event or a GET carries it (withType) or as a
// list item of a built-in type (kind and apiVersion dropped, as the API server does;
// custom resources keep them in lists too).
func encode(resource string, obj object, withType bool) ([]byte, error) {
	ri := resources[resource]
	tm := metav1.TypeMeta{}
	if withType {
		tm = metav1.TypeMeta{APIVersion: ri.apiVersion(), Kind: ri.kind}
	}
	switch o := obj.(type) {
	case *corev1.Node:
		c := o.DeepCopy()
		c.TypeMeta = tm
		return json.Marshal(c)
	case *certificatesv1.CertificateSigningRequest:
		c := o.DeepCopy()
		c.TypeMeta = tm
		return json.Marshal(c)
	case *unstructured.Unstructured:
		return json.Marshal(o)
	}
	return nil, fmt.Errorf("unknown object type %T", obj)
}

// record appends an event and hands it to the open watches of its resource; the
// caller holds s.mu. It returns the channels to wait on.
func (s *Store) record(resource, typ string, obj object) ([]chan struct{}, error) {
	data, err := encode(resource, obj, true)
	if err != nil {
		return nil, err
	}
	ev := &storedEvent{rv: s.rv, resource: resource, namespace: obj.GetNamespace(), typ: typ, obj: data}
	s.log = append(s.log, ev)
	if len(s.log) > maxLogEvents {
		drop := len(s.log) - maxLogEvents
		s.logStart = s.log[drop-1].rv
		s.log = append([]*storedEvent(nil), s.log[drop:]...)
	}
	var waits []chan struct{}
	for w := range s.watches {
		if !w.wants(ev) {
			continue
		}
		done := make(chan struct{})
		select {
		case w.ch <- pendingEvent{ev: ev, done: done}:
			waits = append(waits, done)
		default:
			// A consumer this far behind is stuck: drop it, as the API server would.
			w.kill()
			delete(s.watches, w)
		}
	}
	return waits, nil
}

func waitFlushed(waits []chan struct{}) error {
	deadline := time.NewTimer(flushTimeout)
	defer deadline.Stop()
	for _, w := range waits {
		select {
		case <-w:
		case <-deadline.C:
			return fmt.Errorf("a watch stream did not take an event within %s", flushTimeout)
		}
	}
	return nil
}

func (s *Store) nextRV() string {
	s.rv++
	return strconv.FormatUint(s.rv, 10)
}

// commitLocked stores (ADDED, MODIFIED) or removes (DELETED) a copy of obj with a new
// resourceVersion, records the event, and runs the garbage collector on what it
// touched. The caller holds s.mu. It returns the stored copy.
func (s *Store) commitLocked(resource, typ string, obj object) (object, []chan struct{}, error) {
	obj = obj.DeepCopyObject().(object)
	if typ == "ADDED" && obj.GetUID() == "" {
		obj.SetUID(uuid.NewUUID())
	}
	obj.SetResourceVersion(s.nextRV())
	key := objKey(obj.GetNamespace(), obj.GetName())
	if typ == "DELETED" {
		delete(s.objects[resource], key)
	} else {
		s.objects[resource][key] = obj
	}
	waits, err := s.record(resource, typ, obj)
	if err != nil {
		return nil, nil, err
	}
	more, err := s.collectGarbageLocked(resource, typ, obj)
	return obj, append(waits, more...), err
}

// ---- the garbage collector ----------------------------------------------------------

// collectGarbageLocked does what kube-controller-manager's garbage collector does for
// NodeIdentities owned by Nodes, at once: a dependent whose owners are all gone (no
// Node of that name, or one with another uid) is deleted; one with some owners gone
// loses those ownerReferences.
func (s *Store) collectGarbageLocked(resource, typ string, obj object) ([]chan struct{}, error) {
	var candidates []object
	switch {
	case resource == resNodes && typ == "DELETED":
		for _, key := range sortedKeys(s.objects[resNodeIdentities]) {
			ni := s.objects[resNodeIdentities][key]
			for _, ref := range ni.GetOwnerReferences() {
				if ref.UID == obj.GetUID() {
					candidates = append(candidates, ni)
					break
				}
			}
		}
	case resource == resNodeIdentities && typ != "DELETED":
		candidates = append(candidates, obj)
	default:
		return nil, nil
	}
	var waits []chan struct{}
	for _, dep := range candidates {
		refs := dep.GetOwnerReferences()
		var solid []metav1.OwnerReference
		var gone []string
		for _, ref := range refs {
			if ref.Kind != "Node" {
				solid = append(solid, ref) // not an owner the harness can resolve
				continue
			}
			if ref.APIVersion != "v1" {
				s.logf("gc: %s %s: ownerReference to Node %s has apiVersion %q; the garbage collector resolves Nodes as v1", resNodeIdentities, dep.GetName(), ref.Name, ref.APIVersion)
			}
			owner, ok := s.objects[resNodes][ref.Name]
			if ok && owner.GetUID() == ref.UID {
				solid = append(solid, ref)
				continue
			}
			why := "no such Node"
			if ok {
				why = "Node " + ref.Name + " has uid " + string(owner.GetUID())
			}
			gone = append(gone, fmt.Sprintf("Node %s uid %s (%s)", ref.Name, ref.UID, why))
		}
		if len(gone) == 0 {
			continue
		}
		if len(solid) == 0 {
			s.logf("gc: deleting %s %s: its owner is gone: %s", resNodeIdentities, dep.GetName(), strings.Join(gone, ", "))
			_, w, err := s.commitLocked(resNodeIdentities, "DELETED", dep)
			if err != nil {
				return nil, err
			}
			waits = append(waits, w...)
			continue
		}
		s.logf("gc: removing dangling ownerReferences of %s %s: %s", resNodeIdentities, dep.GetName(), strings.Join(gone, ", "))
		c := dep.DeepCopyObject().(object)
		c.SetOwnerReferences(solid)
		_, w, err := s.commitLocked(resNodeIdentities, "MODIFIED", c)
		if err != nil {
			return nil, err
		}
		waits = append(waits, w...)
	}
	return waits, nil
}

// ---- the harness's own writes ----------------------------------------------------------

// Reset replaces the whole cluster state but the Leases: DELETED for every Node, CSR,
// NodeIdentity and Event, then ADDED for every new Node and CSR.
func (s *Store) Reset(nodes []*corev1.Node, csrs []*certificatesv1.CertificateSigningRequest) error {
	s.mu.Lock()
	var waits []chan struct{}
	fail := func(err error) error {
		s.mu.Unlock()
		return err
	}
	for _, resource := range []string{resNodes, resCSRs, resNodeIdentities, resEvents} {
		for _, key := range sortedKeys(s.objects[resource]) {
			obj, ok := s.objects[resource][key]
			if !ok {
				continue // collected with its owner
			}
			_, w, err := s.commitLocked(resource, "DELETED", obj)
			if err != nil {
				return fail(err)
			}
			waits = append(waits, w...)
		}
	}
	for _, n := range nodes {
		if _, dup := s.objects[resNodes][n.Name]; dup {
			return fail(fmt.Errorf("setup: node %q twice", n.Name))
		}
		_, w, err := s.commitLocked(resNodes, "ADDED", n)
		if err != nil {
			return fail(err)
		}
		waits = append(waits, w...)
	}
	for _, c := range csrs {
		if _, dup := s.objects[resCSRs][c.Name]; dup {
			return fail(fmt.Errorf("setup: CSR %q twice", c.Name))
		}
		_, w, err := s.commitLocked(resCSRs, "ADDED", c)
		if err != nil {
			return fail(err)
		}
		waits = append(waits, w...)
	}
	s.mu.Unlock()
	return waitFlushed(waits)
}

// write stores (ADDED, MODIFIED) or removes (DELETED) one object, as the API server
// would: create refuses an existing name, update and delete a missing one. No
// resourceVersion check: the harness's writes are the cluster's truth.
func (s *Store) write(resource, event, name string, obj object) error {
	s.mu.Lock()
	current, exists := s.objects[resource][name]
	switch {
	case event == "ADDED" && exists:
		s.mu.Unlock()
		return apierrors.NewAlreadyExists(resources[resource].gr(), name)
	case event != "ADDED" && !exists:
		s.mu.Unlock()
		return apierrors.NewNotFound(resources[resource].gr(), name)
	}
	if event == "DELETED" {
		obj = current
	}
	_, waits, err := s.commitLocked(resource, event, obj)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return waitFlushed(waits)
}

func (s *Store) GetNode(name string) (*corev1.Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.objects[resNodes][name]
	if !ok {
		return nil, false
	}
	return n.(*corev1.Node).DeepCopy(), true
}

func (s *Store) GetCSR(name string) (*certificatesv1.CertificateSigningRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.objects[resCSRs][name]
	if !ok {
		return nil, false
	}
	return c.(*certificatesv1.CertificateSigningRequest).DeepCopy(), true
}

func (s *Store) CreateNode(n *corev1.Node) error { return s.write(resNodes, "ADDED", n.Name, n) }
func (s *Store) UpdateNode(n *corev1.Node) error { return s.write(resNodes, "MODIFIED", n.Name, n) }
func (s *Store) DeleteNode(name string) error    { return s.write(resNodes, "DELETED", name, nil) }
func (s *Store) CreateCSR(c *certificatesv1.CertificateSigningRequest) error {
	return s.write(resCSRs, "ADDED", c.Name, c)
}
func (s *Store) UpdateCSR(c *certificatesv1.CertificateSigningRequest) error {
	return s.write(resCSRs, "MODIFIED", c.Name, c)
}
func (s *Store) DeleteCSR(name string) error { return s.write(resCSRs, "DELETED", name, nil) }

// Counts returns the number of Nodes and of key bindings nodeguard should hold.
func (s *Store) Counts() (nodes, bindings int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.objects[resCSRs] {
		if bindsKey(c.(*certificatesv1.CertificateSigningRequest)) {
			bindings++
		}
	}
	return len(s.objects[resNodes]), bindings
}

// Contents returns a copy of every JSON object of resource, in key order.
func (s *Store) Contents(resource string) []map[string]interface{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]interface{}
	for _, key := range sortedKeys(s.objects[resource]) {
		if u, ok := s.objects[resource][key].(*unstructured.Unstructured); ok {
			out = append(out, u.DeepCopy().Object)
		}
	}
	return out
}

// Content returns a copy of one JSON object.
func (s *Store) Content(resource, namespace, name string) (map[string]interface{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.objects[resource][objKey(namespace, name)].(*unstructured.Unstructured)
	if !ok {
		return nil, false
	}
	return u.DeepCopy().Object, true
}

// ---- reads for the API -----------------------------------------------------------

// List returns the items of resource in namespace ("" for all), encoded for a list,
// and the list's resourceVersion.
func (s *Store) List(resource, namespace string) ([][]byte, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var items [][]byte
	for _, key := range sortedKeys(s.objects[resource]) {
		obj := s.objects[resource][key]
		if namespace != "" && obj.GetNamespace() != namespace {
			continue
		}
		b, err := encode(resource, obj, false)
		if err != nil {
			return nil, "", err
		}
		items = append(items, b)
	}
	return items, strconv.FormatUint(s.rv, 10), nil
}

// Get returns one object encoded as a GET answers it.
func (s *Store) Get(resource, namespace, name string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	obj, ok := s.objects[resource][objKey(namespace, name)]
	if !ok {
		return nil, false, nil
	}
	b, err := encode(resource, obj, true)
	return b, true, err
}

// errExpired is returned by OpenWatch for a resourceVersion older than the log.
type errExpired struct{ requested, oldest uint64 }

func (e errExpired) Error() string {
	return fmt.Sprintf("too old resource version: %d (%d)", e.requested, e.oldest+1)
}

// OpenWatch registers a watch stream of resource in namespace ("" for all) from
// resourceVersion rv ("" or "0": the current state as ADDED events, then changes). It
// returns the events to replay first; later ones arrive on the stream's channel.
func (s *Store) OpenWatch(resource, namespace, rv string) (*watchStream, []*storedEvent, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &watchStream{resource: resource, namespace: namespace, ch: make(chan pendingEvent, 4096), dead: make(chan struct{})}
	var replay []*storedEvent
	if rv == "" || rv == "0" {
		for _, key := range sortedKeys(s.objects[resource]) {
			obj := s.objects[resource][key]
			if namespace != "" && obj.GetNamespace() != namespace {
				continue
			}
			data, err := encode(resource, obj, true)
			if err != nil {
				return nil, nil, "", err
			}
			replay = append(replay, &storedEvent{resource: resource, namespace: obj.GetNamespace(), typ: "ADDED", obj: data})
		}
	} else {
		from, err := strconv.ParseUint(rv, 10, 64)
		if err != nil {
			return nil, nil, "", apierrors.NewBadRequest(fmt.Sprintf("invalid resource version %q", rv))
		}
		if from < s.logStart {
			return nil, nil, "", errExpired{requested: from, oldest: s.logStart}
		}
		for _, ev := range s.log {
			if ev.rv > from && w.wants(ev) {
				replay = append(replay, ev)
			}
		}
	}
	s.watches[w] = struct{}{}
	s.watchesOpened[resource]++
	return w, replay, strconv.FormatUint(s.rv, 10), nil
}

// CloseWatch unregisters a stream and releases writers waiting on it.
func (s *Store) CloseWatch(w *watchStream) {
	s.mu.Lock()
	delete(s.watches, w)
	s.mu.Unlock()
	for {
		select {
		case p := <-w.ch:
			close(p.done)
		default:
			return
		}
	}
}

func (s *Store) OpenWatches() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for w := range s.watches {
		out[w.resource]++
	}
	return out
}

// ---- writes through the API, as the API server's registry does them ---------------

// checkNamespace is the API server's EnsureObjectNamespaceMatchesRequestNamespace: an
// empty namespace in the object takes the request's.
func checkNamespace(ri *resourceInfo, namespace string, u *unstructured.Unstructured) error {
	switch {
	case !ri.namespaced && u.GetNamespace() != "":
		return apierrors.NewBadRequest("the namespace of the object (" + u.GetNamespace() + ") does not match the namespace on the request ()")
	case ri.namespaced && u.GetNamespace() == "":
		u.SetNamespace(namespace)
	case ri.namespaced && u.GetNamespace() != namespace:
		return apierrors.NewBadRequest("the namespace of the provided object does not match the namespace sent on the request")
	}
	return nil
}

// checkType refuses a body of another kind or apiVersion, and fills them in if absent.
func checkType(ri *resourceInfo, u *unstructured.Unstructured) error {
	if v := u.GetAPIVersion(); v != "" && v != ri.apiVersion() {
		return apierrors.NewBadRequest(fmt.Sprintf("the API version in the data (%s) does not match the expected API version (%s)", v, ri.apiVersion()))
	}
	if k := u.GetKind(); k != "" && k != ri.kind {
		return apierrors.NewBadRequest(fmt.Sprintf("the kind in the data (%s) does not match the expected kind (%s)", k, ri.kind))
	}
	u.SetAPIVersion(ri.apiVersion())
	u.SetKind(ri.kind)
	return nil
}

func invalid(ri *resourceInfo, name string, errs ...*field.Error) error {
	// The API server's registry names the resource where the kind would be.
	return apierrors.NewInvalid(schema.GroupKind{Group: ri.group, Kind: ri.resource}, name, errs)
}

// Create is a POST.
func (s *Store) Create(ri *resourceInfo, namespace string, u *unstructured.Unstructured) (object, error) {
	s.mu.Lock()
	obj, waits, err := s.createLocked(ri, namespace, u)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return obj, waitFlushed(waits)
}

func (s *Store) createLocked(ri *resourceInfo, namespace string, u *unstructured.Unstructured) (object, []chan struct{}, error) {
	if err := checkType(ri, u); err != nil {
		return nil, nil, err
	}
	if err := checkNamespace(ri, namespace, u); err != nil {
		return nil, nil, err
	}
	if u.GetName() == "" && u.GetGenerateName() != "" {
		u.SetName(u.GetGenerateName() + utilrand.String(5))
	}
	if u.GetName() == "" {
		return nil, nil, invalid(ri, "", field.Required(field.NewPath("metadata", "name"), "name or generateName is required"))
	}
	if _, exists := s.objects[ri.resource][objKey(u.GetNamespace(), u.GetName())]; exists {
		return nil, nil, apierrors.NewAlreadyExists(ri.gr(), u.GetName())
	}
	if u.GetResourceVersion() != "" {
		return nil, nil, apierrors.NewInternalError(errors.New("resourceVersion should not be set on objects to be created"))
	}
	u.SetUID(uuid.NewUUID())
	u.SetCreationTimestamp(metav1.Now())
	u.SetDeletionTimestamp(nil)
	if ri.statusSubresource {
		delete(u.Object, "status") // create cannot set status
	}
	if ri.customResource {
		u.SetGeneration(1)
	}
	obj, waits, err := s.commitLocked(ri.resource, "ADDED", u)
	if err != nil {
		return nil, nil, err
	}
	return obj.DeepCopyObject().(object), waits, nil
}

// Update is a PUT of the main resource (subresource "") or of /status. created says
// whether it created the object (create-on-update).
func (s *Store) Update(ri *resourceInfo, namespace, name, subresource string, u *unstructured.Unstructured) (object, bool, error) {
	s.mu.Lock()
	if err := checkType(ri, u); err != nil {
		s.mu.Unlock()
		return nil, false, err
	}
	if u.GetName() != name {
		s.mu.Unlock()
		return nil, false, apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", u.GetName(), name))
	}
	if err := checkNamespace(ri, namespace, u); err != nil {
		s.mu.Unlock()
		return nil, false, err
	}
	current, exists := s.objects[ri.resource][objKey(namespace, name)]
	if !exists {
		if !ri.createOnUpdate || subresource != "" {
			s.mu.Unlock()
			return nil, false, apierrors.NewNotFound(ri.gr(), name)
		}
		u.SetResourceVersion("")
		obj, waits, err := s.createLocked(ri, namespace, u)
		s.mu.Unlock()
		if err != nil {
			return nil, false, err
		}
		return obj, true, waitFlushed(waits)
	}
	obj, waits, err := s.updateLocked(ri, current.(*unstructured.Unstructured), subresource, u)
	s.mu.Unlock()
	if err != nil {
		return nil, false, err
	}
	return obj, false, waitFlushed(waits)
}

// updateLocked checks the resourceVersion precondition and stores u over current, as
// rest.BeforeUpdate and the strategy prepare it.
func (s *Store) updateLocked(ri *resourceInfo, current *unstructured.Unstructured, subresource string, u *unstructured.Unstructured) (object, []chan struct{}, error) {
	name := current.GetName()
	switch rv := u.GetResourceVersion(); {
	case rv == "" && !ri.unconditionalUpdate:
		return nil, nil, invalid(ri, name, field.Invalid(field.NewPath("metadata", "resourceVersion"), uint64(0), "must be specified for an update"))
	case rv != "" && rv != current.GetResourceVersion():
		return nil, nil, apierrors.NewConflict(ri.gr(), name, errors.New(optimisticLockErrorMsg))
	}
	next := u.DeepCopy()
	if subresource == "status" {
		// Only the status changes.
		next = current.DeepCopy()
		if st, ok := u.Object["status"]; ok {
			next.Object["status"] = st
		} else {
			delete(next.Object, "status")
		}
	} else if ri.statusSubresource {
		if st, ok := current.Object["status"]; ok {
			next.Object["status"] = st
		} else {
			delete(next.Object, "status")
		}
	}
	if next.GetUID() == "" {
		next.SetUID(current.GetUID())
	} else if next.GetUID() != current.GetUID() {
		return nil, nil, invalid(ri, name, field.Invalid(field.NewPath("metadata", "uid"), next.GetUID(), "field is immutable"))
	}
	next.SetCreationTimestamp(current.GetCreationTimestamp())
	next.SetDeletionTimestamp(current.GetDeletionTimestamp())
	next.SetDeletionGracePeriodSeconds(current.GetDeletionGracePeriodSeconds())
	next.SetResourceVersion(current.GetResourceVersion())
	if ri.customResource {
		next.SetGeneration(current.GetGeneration())
		if subresource == "" && !equality.Semantic.DeepEqual(withoutMetadata(next.Object), withoutMetadata(current.Object)) {
			next.SetGeneration(current.GetGeneration() + 1)
		}
	} else {
		next.SetGeneration(current.GetGeneration())
	}
	if current.GetDeletionTimestamp() != nil && len(next.GetFinalizers()) == 0 {
		// The last finalizer is gone: the deletion completes.
		obj, waits, err := s.commitLocked(ri.resource, "DELETED", next)
		if err != nil {
			return nil, nil, err
		}
		return obj.DeepCopyObject().(object), waits, nil
	}
	if equality.Semantic.DeepEqual(next.Object, current.Object) {
		// A write that changes nothing is not written: same resourceVersion, no event.
		return current.DeepCopy(), nil, nil
	}
	obj, waits, err := s.commitLocked(ri.resource, "MODIFIED", next)
	if err != nil {
		return nil, nil, err
	}
	return obj.DeepCopyObject().(object), waits, nil
}

func withoutMetadata(o map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range o {
		if k != "metadata" {
			out[k] = v
		}
	}
	return out
}

const (
	patchMerge     = "application/merge-patch+json"
	patchJSON      = "application/json-patch+json"
	patchStrategic = "application/strategic-merge-patch+json"
)

// Patch is a PATCH of the main resource or of /status. A resourceVersion in the
// patch is a precondition; without one the patch applies to the current object.
func (s *Store) Patch(ri *resourceInfo, namespace, name, subresource, patchType string, patch []byte) (object, error) {
	s.mu.Lock()
	cur, exists := s.objects[ri.resource][objKey(namespace, name)]
	if !exists {
		s.mu.Unlock()
		return nil, apierrors.NewNotFound(ri.gr(), name)
	}
	current := cur.(*unstructured.Unstructured)
	curJSON, err := json.Marshal(current)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	var patched []byte
	switch patchType {
	case patchMerge:
		patched, err = jsonpatch.MergePatch(curJSON, patch)
	case patchJSON:
		var p jsonpatch.Patch
		if p, err = jsonpatch.DecodePatch(patch); err == nil {
			patched, err = p.Apply(curJSON)
		}
	case patchStrategic:
		if ri.strategicType == nil {
			s.mu.Unlock()
			return nil, apierrors.NewGenericServerResponse(415, "patch", ri.gr(), name,
				"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml", 0, false)
		}
		patched, err = strategicpatch.StrategicMergePatch(curJSON, patch, newOf(ri))
	default:
		s.mu.Unlock()
		return nil, fmt.Errorf("patch type %q", patchType)
	}
	if err != nil {
		s.mu.Unlock()
		return nil, apierrors.NewBadRequest(err.Error())
	}
	var m map[string]interface{}
	if err := utiljson.Unmarshal(patched, &m); err != nil || m == nil {
		s.mu.Unlock()
		return nil, apierrors.NewBadRequest(fmt.Sprintf("the patched object is not a JSON object: %v", err))
	}
	u := &unstructured.Unstructured{Object: m}
	if u.GetName() != name || u.GetNamespace() != namespace || u.GetKind() != ri.kind || u.GetAPIVersion() != ri.apiVersion() {
		s.mu.Unlock()
		return nil, apierrors.NewBadRequest("the patch changes the object's name, namespace, kind or apiVersion")
	}
	if u.GetResourceVersion() == "" {
		u.SetResourceVersion(current.GetResourceVersion())
	}
	obj, waits, err := s.updateLocked(ri, current, subresource, u)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return obj, waitFlushed(waits)
}

// Delete is a DELETE with optional preconditions. An object with finalizers gets a
// deletionTimestamp and stays (deleted false).
func (s *Store) Delete(ri *resourceInfo, namespace, name string, pre *metav1.Preconditions) (object, bool, error) {
	s.mu.Lock()
	cur, exists := s.objects[ri.resource][objKey(namespace, name)]
	if !exists {
		s.mu.Unlock()
		return nil, false, apierrors.NewNotFound(ri.gr(), name)
	}
	if pre != nil {
		if pre.UID != nil && *pre.UID != cur.GetUID() {
			s.mu.Unlock()
			return nil, false, apierrors.NewConflict(ri.gr(), name, fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", *pre.UID, cur.GetUID()))
		}
		if pre.ResourceVersion != nil && *pre.ResourceVersion != cur.GetResourceVersion() {
			s.mu.Unlock()
			return nil, false, apierrors.NewConflict(ri.gr(), name, fmt.Errorf("Precondition failed: ResourceVersion in precondition: %v, ResourceVersion in object meta: %v", *pre.ResourceVersion, cur.GetResourceVersion()))
		}
	}
	typ := "DELETED"
	obj := cur
	if len(cur.GetFinalizers()) > 0 {
		if cur.GetDeletionTimestamp() != nil {
			s.mu.Unlock()
			return cur.DeepCopyObject().(object), false, nil
		}
		typ = "MODIFIED"
		obj = cur.DeepCopyObject().(object)
		now := metav1.Now()
		zero := int64(0)
		obj.SetDeletionTimestamp(&now)
		obj.SetDeletionGracePeriodSeconds(&zero)
	}
	stored, waits, err := s.commitLocked(ri.resource, typ, obj)
	s.mu.Unlock()
	if err != nil {
		return nil, false, err
	}
	return stored, typ == "DELETED", waitFlushed(waits)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
