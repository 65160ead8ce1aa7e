package main

// The in-memory cluster: Nodes and CSRs, one global resourceVersion counter and an
// event log from which watches replay. Every write returns only once its event has
// been written and flushed to every open watch stream of that resource.

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

const (
	resNodes = "nodes"
	resCSRs  = "certificatesigningrequests"

	maxLogEvents = 20000
	// How long a write waits for the open watch streams to take its event.
	flushTimeout = 5 * time.Second
)

var groupResources = map[string]schema.GroupResource{
	resNodes: {Group: "", Resource: resNodes},
	resCSRs:  {Group: "certificates.k8s.io", Resource: resCSRs},
}

type storedEvent struct {
	rv       uint64
	resource string
	typ      string // ADDED, MODIFIED, DELETED
	obj      []byte // the object as watch events carry it (with kind and apiVersion)
}

type pendingEvent struct {
	ev   *storedEvent
	done chan struct{}
}

type watchStream struct {
	resource string
	ch       chan pendingEvent
	dead     chan struct{} // closed when the store gave up on it (buffer full)
	deadOnce sync.Once
}

func (w *watchStream) kill() { w.deadOnce.Do(func() { close(w.dead) }) }

type Store struct {
	mu       sync.Mutex
	rv       uint64
	nodes    map[string]*corev1.Node
	csrs     map[string]*certificatesv1.CertificateSigningRequest
	log      []*storedEvent
	logStart uint64 // events with rv > logStart are all in log
	watches  map[*watchStream]struct{}
	// counters for diagnostics
	watchesOpened map[string]int
}

func NewStore() *Store {
	return &Store{
		rv:            1000,
		logStart:      1000,
		nodes:         map[string]*corev1.Node{},
		csrs:          map[string]*certificatesv1.CertificateSigningRequest{},
		watches:       map[*watchStream]struct{}{},
		watchesOpened: map[string]int{},
	}
}

func encodeForWatch(resource string, obj interface{}) ([]byte, error) {
	switch o := obj.(type) {
	case *corev1.Node:
		c := o.DeepCopy()
		c.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
		return json.Marshal(c)
	case *certificatesv1.CertificateSigningRequest:
		c := o.DeepCopy()
		c.TypeMeta = metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"}
		return json.Marshal(c)
	}
	return nil, fmt.Errorf("unknown object type %T", obj)
}

// encodeForList drops kind and apiVersion from items, as the API server does in lists.
func encodeForList(obj interface{}) ([]byte, error) {
	switch o := obj.(type) {
	case *corev1.Node:
		c := o.DeepCopy()
		c.TypeMeta = metav1.TypeMeta{}
		return json.Marshal(c)
	case *certificatesv1.CertificateSigningRequest:
		c := o.DeepCopy()
		c.TypeMeta = metav1.TypeMeta{}
		return json.Marshal(c)
	}
	return nil, fmt.Errorf("unknown object type %T", obj)
}

// record appends an event and hands it to the open watches of its resource; the
// caller holds s.mu. It returns the channels to wait on.
func (s *Store) record(resource, typ string, obj interface{}) ([]chan struct{}, error) {
	data, err := encodeForWatch(resource, obj)
	if err != nil {
		return nil, err
	}
	ev := &storedEvent{rv: s.rv, resource: resource, typ: typ, obj: data}
	s.log = append(s.log, ev)
	if len(s.log) > maxLogEvents {
		drop := len(s.log) - maxLogEvents
		s.logStart = s.log[drop-1].rv
		s.log = append([]*storedEvent(nil), s.log[drop:]...)
	}
	var waits []chan struct{}
	for w := range s.watches {
		if w.resource != resource {
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

// ---- writes ----------------------------------------------------------------------

// Reset replaces the whole store: DELETED for every current object, ADDED for every
// new one.
func (s *Store) Reset(nodes []*corev1.Node, csrs []*certificatesv1.CertificateSigningRequest) error {
	s.mu.Lock()
	var waits []chan struct{}
	add := func(w []chan struct{}, err error) error {
		waits = append(waits, w...)
		return err
	}
	for _, name := range sortedKeys(s.nodes) {
		n := s.nodes[name].DeepCopy()
		n.ResourceVersion = s.nextRV()
		delete(s.nodes, name)
		if err := add(s.record(resNodes, "DELETED", n)); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	for _, name := range sortedKeys(s.csrs) {
		c := s.csrs[name].DeepCopy()
		c.ResourceVersion = s.nextRV()
		delete(s.csrs, name)
		if err := add(s.record(resCSRs, "DELETED", c)); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	for _, n := range nodes {
		n = n.DeepCopy()
		if _, dup := s.nodes[n.Name]; dup {
			s.mu.Unlock()
			return fmt.Errorf("setup: node %q twice", n.Name)
		}
		n.ResourceVersion = s.nextRV()
		s.nodes[n.Name] = n
		if err := add(s.record(resNodes, "ADDED", n)); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	for _, c := range csrs {
		c = c.DeepCopy()
		if _, dup := s.csrs[c.Name]; dup {
			s.mu.Unlock()
			return fmt.Errorf("setup: CSR %q twice", c.Name)
		}
		c.ResourceVersion = s.nextRV()
		s.csrs[c.Name] = c
		if err := add(s.record(resCSRs, "ADDED", c)); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.mu.Unlock()
	return waitFlushed(waits)
}

func (s *Store) GetNode(name string) (*corev1.Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[name]
	if !ok {
		return nil, false
	}
	return n.DeepCopy(), true
}

func (s *Store) GetCSR(name string) (*certificatesv1.CertificateSigningRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.csrs[name]
	if !ok {
		return nil, false
	}
	return c.DeepCopy(), true
}

// stored is what the store keeps: a typed object that copies itself.
type stored interface {
	*corev1.Node | *certificatesv1.CertificateSigningRequest
	metav1.Object
	runtime.Object
}

// write stores (ADDED, MODIFIED) or removes (DELETED) one object of `resource` in
// `objects`, as the API server would: create refuses an existing name, update and delete
// a missing one. It returns once the event has reached every open watch.
func write[T stored](s *Store, resource string, objects map[string]T, event, name string, obj T) error {
	s.mu.Lock()
	current, exists := objects[name]
	switch {
	case event == "ADDED" && exists:
		s.mu.Unlock()
		return apierrors.NewAlreadyExists(groupResources[resource], name)
	case event != "ADDED" && !exists:
		s.mu.Unlock()
		return apierrors.NewNotFound(groupResources[resource], name)
	}
	if event == "DELETED" {
		obj = current
		delete(objects, name)
	}
	obj = obj.DeepCopyObject().(T)
	obj.SetResourceVersion(s.nextRV())
	if event != "DELETED" {
		objects[name] = obj
	}
	waits, err := s.record(resource, event, obj)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return waitFlushed(waits)
}

func (s *Store) CreateNode(n *corev1.Node) error {
	return write(s, resNodes, s.nodes, "ADDED", n.Name, n)
}

func (s *Store) UpdateNode(n *corev1.Node) error {
	return write(s, resNodes, s.nodes, "MODIFIED", n.Name, n)
}

func (s *Store) DeleteNode(name string) error {
	return write[*corev1.Node](s, resNodes, s.nodes, "DELETED", name, nil)
}

func (s *Store) CreateCSR(c *certificatesv1.CertificateSigningRequest) error {
	return write(s, resCSRs, s.csrs, "ADDED", c.Name, c)
}

func (s *Store) UpdateCSR(c *certificatesv1.CertificateSigningRequest) error {
	return write(s, resCSRs, s.csrs, "MODIFIED", c.Name, c)
}

func (s *Store) DeleteCSR(name string) error {
	return write[*certificatesv1.CertificateSigningRequest](s, resCSRs, s.csrs, "DELETED", name, nil)
}

// Counts returns the number of Nodes and of key bindings nodeguard should hold.
func (s *Store) Counts() (nodes, bindings int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.csrs {
		if bindsKey(c) {
			bindings++
		}
	}
	return len(s.nodes), bindings
}

// ---- reads for the API -----------------------------------------------------------

// List returns the items (encoded for a list) and the list's resourceVersion.
func (s *Store) List(resource string) ([][]byte, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var items [][]byte
	switch resource {
	case resNodes:
		for _, name := range sortedKeys(s.nodes) {
			b, err := encodeForList(s.nodes[name])
			if err != nil {
				return nil, "", err
			}
			items = append(items, b)
		}
	case resCSRs:
		for _, name := range sortedKeys(s.csrs) {
			b, err := encodeForList(s.csrs[name])
			if err != nil {
				return nil, "", err
			}
			items = append(items, b)
		}
	}
	return items, strconv.FormatUint(s.rv, 10), nil
}

// Get returns one object encoded as a GET answers it.
func (s *Store) Get(resource, name string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var obj interface{}
	switch resource {
	case resNodes:
		n, ok := s.nodes[name]
		if !ok {
			return nil, false, nil
		}
		obj = n
	case resCSRs:
		c, ok := s.csrs[name]
		if !ok {
			return nil, false, nil
		}
		obj = c
	}
	b, err := encodeForWatch(resource, obj)
	return b, true, err
}

// errExpired is returned by OpenWatch for a resourceVersion older than the log.
type errExpired struct{ requested, oldest uint64 }

func (e errExpired) Error() string {
	return fmt.Sprintf("too old resource version: %d (%d)", e.requested, e.oldest+1)
}

// OpenWatch registers a watch stream of resource from resourceVersion rv ("" or "0":
// the current state as ADDED events, then changes). It returns the events to replay
// first; later ones arrive on the stream's channel.
func (s *Store) OpenWatch(resource, rv string) (*watchStream, []*storedEvent, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var replay []*storedEvent
	if rv == "" || rv == "0" {
		var objs []interface{}
		switch resource {
		case resNodes:
			for _, name := range sortedKeys(s.nodes) {
				objs = append(objs, s.nodes[name])
			}
		case resCSRs:
			for _, name := range sortedKeys(s.csrs) {
				objs = append(objs, s.csrs[name])
			}
		}
		for _, o := range objs {
			data, err := encodeForWatch(resource, o)
			if err != nil {
				return nil, nil, "", err
			}
			replay = append(replay, &storedEvent{resource: resource, typ: "ADDED", obj: data})
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
			if ev.rv > from && ev.resource == resource {
				replay = append(replay, ev)
			}
		}
	}
	w := &watchStream{resource: resource, ch: make(chan pendingEvent, 4096), dead: make(chan struct{})}
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
