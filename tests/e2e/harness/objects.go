package main

// Kubelet-shaped objects: Nodes as a kubelet registers them (full status, labels,
// conditions, images) and kubelet CSRs made with real ECDSA P-256 keys, plus the
// user identities the API server attaches to a request.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"regexp"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	signerClientKubelet  = "kubernetes.io/kube-apiserver-client-kubelet"
	signerKubeletServing = "kubernetes.io/kubelet-serving"
)

// ---- keys ------------------------------------------------------------------------

// Keys holds the named ECDSA P-256 keys of a run: the same name is the same key in
// every scenario of the run.
type Keys struct {
	mu   sync.Mutex
	keys map[string]*ecdsa.PrivateKey
}

func NewKeys() *Keys { return &Keys{keys: map[string]*ecdsa.PrivateKey{}} }

func (k *Keys) Get(name string) (*ecdsa.PrivateKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.keys[name]; ok {
		return key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	k.keys[name] = key
	return key, nil
}

// Fingerprint is the lowercase hex SHA-256 of the key's DER SubjectPublicKeyInfo.
func (k *Keys) Fingerprint(name string) (string, error) {
	key, err := k.Get(name)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// NameOf returns the name of the key with that fingerprint, or the fingerprint itself
// for a key the run does not know.
func (k *Keys) NameOf(fp string) string {
	k.mu.Lock()
	names := make([]string, 0, len(k.keys))
	for name := range k.keys {
		names = append(names, name)
	}
	k.mu.Unlock()
	for _, name := range names {
		if f, err := k.Fingerprint(name); err == nil && f == fp {
			return name
		}
	}
	return fp
}

var placeholderRe = regexp.MustCompile(`\{fingerprint:([^{}]+)\}`)

// Expand replaces `{fingerprint:KEYNAME}` placeholders.
func (k *Keys) Expand(s string) (string, error) {
	var firstErr error
	out := placeholderRe.ReplaceAllStringFunc(s, func(m string) string {
		name := placeholderRe.FindStringSubmatch(m)[1]
		fp, err := k.Fingerprint(name)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return fp
	})
	return out, firstErr
}

// ---- nodes -----------------------------------------------------------------------

// NodeSpec is a Node as scenarios describe it: the identity a machine reports.
type NodeSpec struct {
	Name       string `json:"name"`
	MachineID  string `json:"machineID"`
	SystemUUID string `json:"systemUUID"`
	BootID     string `json:"bootID"`
	InternalIP string `json:"internalIP"`
	ProviderID string `json:"providerID,omitempty"`
	Hostname   string `json:"hostname,omitempty"`
	Ready      *bool  `json:"ready,omitempty"`
	// HeartbeatAge is how long before the step the kubelet last wrote its status (the
	// Ready condition's lastHeartbeatTime), e.g. "11m"; by default it just did. A
	// kubelet whose writes are refused keeps renewing its Lease, so the node lifecycle
	// controller keeps such a Node Ready while its heartbeat ages.
	HeartbeatAge string `json:"heartbeatAge,omitempty"`
	// Labels are further labels its kubelet sets on its Node (--node-labels).
	Labels map[string]string `json:"labels,omitempty"`
}

// heartbeat is when the node's kubelet last wrote its status: now, or heartbeatAge
// before the wall clock (the harness clock runs ahead of it to make every heartbeat
// differ, and an age is measured against nodeguard's clock).
func (s NodeSpec) heartbeat(now metav1.Time) (metav1.Time, error) {
	if s.HeartbeatAge == "" {
		return now, nil
	}
	age, err := time.ParseDuration(s.HeartbeatAge)
	if err != nil || age < 0 {
		return now, fmt.Errorf("heartbeatAge %q is not a duration such as 11m", s.HeartbeatAge)
	}
	return metav1.NewTime(time.Now().UTC().Truncate(time.Second).Add(-age)), nil
}

// setHeartbeat sets the Ready condition's lastHeartbeatTime.
func setHeartbeat(n *corev1.Node, at metav1.Time) {
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			n.Status.Conditions[i].LastHeartbeatTime = at
		}
	}
}

// clock hands out heartbeat times that always move forward, by at least a second
// (metav1.Time serialises at second precision), so every heartbeat changes the object.
type clock struct {
	mu   sync.Mutex
	last time.Time
}

func (c *clock) Now() metav1.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now().UTC().Truncate(time.Second)
	if !now.After(c.last) {
		now = c.last.Add(time.Second)
	}
	c.last = now
	return metav1.NewTime(now)
}

var images = []corev1.ContainerImage{
	{Names: []string{"registry.k8s.io/kube-proxy@sha256:e4e2e7c0bdd61a4e2d2e7fb2cd1dc3bd1d0b1c4a1f1e3a1f5f2b3d7f4f4b2c11", "registry.k8s.io/kube-proxy:v1.36.0"}, SizeBytes: 30873113},
	{Names: []string{"docker.io/calico/node@sha256:3a1b5f2c4e6d8a0b9c7e5f3d1a2b4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f2a4b6c", "docker.io/calico/node:v3.30.2"}, SizeBytes: 158432097},
	{Names: []string{"docker.io/calico/cni@sha256:7c9e1a3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c", "docker.io/calico/cni:v3.30.2"}, SizeBytes: 94513120},
	{Names: []string{"registry.k8s.io/coredns/coredns@sha256:4f7a57135719628cf2070c5e3cbde64b013e90d4c560c5ecbf14004181f91998", "registry.k8s.io/coredns/coredns:v1.12.1"}, SizeBytes: 22382433},
	{Names: []string{"registry.k8s.io/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a", "registry.k8s.io/pause:3.10.1"}, SizeBytes: 320368},
}

func (s NodeSpec) hostname() string {
	if s.Hostname != "" {
		return s.Hostname
	}
	return s.Name
}

func (s NodeSpec) ready() bool { return s.Ready == nil || *s.Ready }

// buildNode makes the Node a kubelet sends to register.
func buildNode(s NodeSpec, now metav1.Time) *corev1.Node {
	hostname := s.hostname()
	cpu := resource.MustParse("4")
	mem := resource.MustParse("16369604Ki")
	memAlloc := resource.MustParse("16267204Ki")
	storage := resource.MustParse("101430960Ki")
	storageAlloc := resource.MustParse("93478772582")
	zero := resource.MustParse("0")
	pods := resource.MustParse("110")
	supplemental := true
	n := &corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{
			Name: s.Name,
			Labels: map[string]string{
				"beta.kubernetes.io/arch": "amd64",
				"beta.kubernetes.io/os":   "linux",
				"kubernetes.io/arch":      "amd64",
				"kubernetes.io/hostname":  hostname,
				"kubernetes.io/os":        "linux",
			},
			Annotations: map[string]string{
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
			},
		},
		Spec: corev1.NodeSpec{ProviderID: s.ProviderID},
		Status: corev1.NodeStatus{
			Capacity: corev1.ResourceList{
				corev1.ResourceCPU: cpu, corev1.ResourceEphemeralStorage: storage,
				"hugepages-1Gi": zero, "hugepages-2Mi": zero,
				corev1.ResourceMemory: mem, corev1.ResourcePods: pods,
			},
			Allocatable: corev1.ResourceList{
				corev1.ResourceCPU: cpu, corev1.ResourceEphemeralStorage: storageAlloc,
				"hugepages-1Gi": zero, "hugepages-2Mi": zero,
				corev1.ResourceMemory: memAlloc, corev1.ResourcePods: pods,
			},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
				{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
				readyCondition(s.ready(), now),
			},
			Addresses:       nodeAddresses(s.InternalIP, hostname),
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID:               s.MachineID,
				SystemUUID:              s.SystemUUID,
				BootID:                  s.BootID,
				KernelVersion:           "6.12.48+deb13-amd64",
				OSImage:                 "Debian GNU/Linux 13 (trixie)",
				ContainerRuntimeVersion: "containerd://2.1.4",
				KubeletVersion:          "v1.36.0",
				OperatingSystem:         "linux",
				Architecture:            "amd64",
			},
			Images: images,
			RuntimeHandlers: []corev1.NodeRuntimeHandler{
				{Name: "runc", Features: &corev1.NodeRuntimeHandlerFeatures{RecursiveReadOnlyMounts: &supplemental, UserNamespaces: &supplemental}},
				{Name: "", Features: &corev1.NodeRuntimeHandlerFeatures{RecursiveReadOnlyMounts: &supplemental, UserNamespaces: &supplemental}},
			},
			Features: &corev1.NodeFeatures{SupplementalGroupsPolicy: &supplemental},
		},
	}
	for k, v := range s.Labels {
		n.Labels[k] = v
	}
	return n
}

func readyCondition(ready bool, now metav1.Time) corev1.NodeCondition {
	if ready {
		return corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletReady", Message: "kubelet is posting ready status"}
	}
	// What the node lifecycle controller writes once a kubelet stops reporting.
	return corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionUnknown, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "NodeStatusUnknown", Message: "Kubelet stopped posting node status."}
}

func nodeAddresses(internalIP, hostname string) []corev1.NodeAddress {
	var out []corev1.NodeAddress
	if internalIP != "" {
		out = append(out, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: internalIP})
	}
	if hostname != "" {
		out = append(out, corev1.NodeAddress{Type: corev1.NodeHostName, Address: hostname})
	}
	return out
}

// setInternalIP replaces the InternalIP addresses (or adds one, first).
func setInternalIP(n *corev1.Node, ip string) {
	var out []corev1.NodeAddress
	replaced := false
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			if !replaced && ip != "" {
				out = append(out, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
			}
			replaced = true
			continue
		}
		out = append(out, a)
	}
	if !replaced && ip != "" {
		out = append([]corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}, out...)
	}
	n.Status.Addresses = out
}

func setReady(n *corev1.Node, ready bool, now metav1.Time) {
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			was := c.Status == corev1.ConditionTrue
			if was != ready {
				n.Status.Conditions[i] = readyCondition(ready, now)
				n.Status.Conditions[i].LastHeartbeatTime = c.LastHeartbeatTime
			}
			return
		}
	}
	n.Status.Conditions = append(n.Status.Conditions, readyCondition(ready, now))
}

// ---- CSRs ------------------------------------------------------------------------

// CSRSpec is a kubelet CSR as scenarios describe it.
type CSRSpec struct {
	Name      string   `json:"name"`
	Node      string   `json:"node"`
	Key       string   `json:"key"`
	Signer    string   `json:"signer"`
	Requester string   `json:"requester"`
	Approved  bool     `json:"approved,omitempty"`
	IPSANs    []string `json:"ipSANs,omitempty"`
	DNSSANs   []string `json:"dnsSANs,omitempty"`
	// CommonName replaces the subject's CN (by default system:node:<node>), for
	// requests that are not what a kubelet sends.
	CommonName string `json:"commonName,omitempty"`
	// ExtraCommonNames are further CN attributes after the first: Go's crypto/x509,
	// which the API server, approver and signer read subjects with, keeps the last.
	ExtraCommonNames []string `json:"extraCommonNames,omitempty"`
}

// buildCSR makes the CSR a kubelet creates (the API server fills in spec.username and
// groups from the requesting user).
func buildCSR(s CSRSpec, keys *Keys) (*certificatesv1.CertificateSigningRequest, error) {
	key, err := keys.Get(s.Key)
	if err != nil {
		return nil, err
	}
	commonName := "system:node:" + s.Node
	if s.CommonName != "" {
		commonName = s.CommonName
	}
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{
			Organization: []string{"system:nodes"},
			CommonName:   commonName,
		},
		DNSNames: s.DNSSANs,
	}
	if len(s.ExtraCommonNames) > 0 {
		// ToRDNSequence drops Subject.CommonName when ExtraNames hold a CN: all go there.
		for _, cn := range append([]string{commonName}, s.ExtraCommonNames...) {
			tmpl.Subject.ExtraNames = append(tmpl.Subject.ExtraNames,
				pkix.AttributeTypeAndValue{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: cn})
		}
	}
	for _, ip := range s.IPSANs {
		parsed := net.ParseIP(ip)
		if parsed == nil {
			return nil, fmt.Errorf("CSR %s: ipSANs: %q is not an IP address", s.Name, ip)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, err
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	if s.Signer == signerKubeletServing {
		usages = []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}
	}
	csr := &certificatesv1.CertificateSigningRequest{
		TypeMeta:   metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Name},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: s.Signer,
			Usages:     usages,
		},
	}
	return csr, nil
}

func isKubeletSigner(s string) bool { return s == signerClientKubelet || s == signerKubeletServing }

// bindsKey says whether nodeguard should count this CSR as a key binding: approved or
// issued, under a kubelet signer.
func bindsKey(csr *certificatesv1.CertificateSigningRequest) bool {
	if !isKubeletSigner(csr.Spec.SignerName) {
		return false
	}
	if len(csr.Status.Certificate) > 0 {
		return true
	}
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}
