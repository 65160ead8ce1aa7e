package main

// The real cluster as the harness acts in it: a client for each identity a step acts
// as (client certificates the cluster CA issues, bootstrap tokens, ServiceAccount
// tokens), the reset between scenarios, and the API server's log.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

var nodeIdentitiesGVR = schema.GroupVersionResource{Group: "nodeguard.io", Version: "v1alpha1", Resource: "nodeidentities"}

// Cluster is the control plane of tests/e2e/up.
type Cluster struct {
	dir    string
	host   string
	caPEM  []byte
	caCert *x509.Certificate
	caKey  crypto.Signer

	admin    *kubernetes.Clientset
	adminDyn dynamic.Interface
	// adminKubeconfig is kubeadm's admin.conf, for `nodeguard forget`.
	adminKubeconfig string

	mu      sync.Mutex
	clients map[string]*kubernetes.Clientset
	// certs: the client certificate of each identity, by the same key as clients.
	certs map[string]*x509.Certificate

	apiserverLog string
	// warnings receives the warnings of every answer to a step's client.
	warnings rest.WarningHandler
}

// NewCluster reads the admin kubeconfig and the cluster CA of CLUSTER_DIR.
func NewCluster(dir, apiserverLog string, warnings rest.WarningHandler) (*Cluster, error) {
	adminConf := filepath.Join(dir, "admin.conf")
	cfg, err := clientcmd.BuildConfigFromFlags("", adminConf)
	if err != nil {
		return nil, err
	}
	fast(cfg)
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return nil, fmt.Errorf("pki/ca.crt: no PEM block")
	}
	caCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.key"))
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("pki/ca.key: no PEM block")
	}
	var caKey crypto.Signer
	if k, err := x509.ParsePKCS8PrivateKey(kb.Bytes); err == nil {
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki/ca.key: not a signing key")
		}
		caKey = s
	} else if k, err := x509.ParsePKCS1PrivateKey(kb.Bytes); err == nil {
		caKey = k
	} else {
		return nil, fmt.Errorf("pki/ca.key: %v", err)
	}
	return &Cluster{
		dir: dir, host: cfg.Host, caPEM: caPEM, caCert: caCert, caKey: caKey,
		admin: admin, adminDyn: dyn, adminKubeconfig: adminConf,
		clients: map[string]*kubernetes.Clientset{}, certs: map[string]*x509.Certificate{},
		apiserverLog: apiserverLog, warnings: warnings,
	}, nil
}

// fast lifts client-go's default rate limit (5 QPS), which a test's bursts exceed.
func fast(cfg *rest.Config) {
	cfg.QPS = 200
	cfg.Burst = 400
	cfg.Timeout = 30 * time.Second
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// Identity is who a step acts as.
type Identity struct {
	User   string
	Groups []string // nil: the groups this kind of user has
	// Certificate names one of several client certificates of the same user (two
	// kubelets with their own certificate for one node).
	Certificate string
}

func (id Identity) key() string {
	return id.User + "|" + strings.Join(id.Groups, ",") + "|" + id.Certificate
}

func (id Identity) String() string {
	s := id.User
	if id.Groups != nil {
		s += fmt.Sprintf(" %v", id.Groups)
	}
	if id.Certificate != "" {
		s += " (certificate " + id.Certificate + ")"
	}
	return s
}

// Client returns a client that authenticates as id the way such a user does:
//   - system:bootstrap:<id>: the bootstrap token <id> (its Secret is made on first use);
//   - system:serviceaccount:<ns>:<name>: a token of that ServiceAccount (made, and
//     allowed to write Nodes as a cloud controller is, if the cluster lacks it);
//   - anyone else: a client certificate from the cluster CA with CN=user and O=groups,
//     as kubelets' (system:node:<name>, O=system:nodes) and kubeadm's admin.conf
//     (kubernetes-admin, O=kubeadm:cluster-admins) are.
func (c *Cluster) Client(id Identity) (*kubernetes.Clientset, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.clients[id.key()]; ok {
		return cl, nil
	}
	cfg := &rest.Config{Host: c.host, TLSClientConfig: rest.TLSClientConfig{CAData: c.caPEM}, WarningHandler: c.warnings}
	fast(cfg)
	switch {
	case strings.HasPrefix(id.User, "system:bootstrap:"):
		if id.Groups != nil || id.Certificate != "" {
			return nil, fmt.Errorf("%s: a bootstrap token has the groups system:bootstrappers and its auth-extra-groups, and no certificate", id.User)
		}
		token, err := c.bootstrapToken(strings.TrimPrefix(id.User, "system:bootstrap:"))
		if err != nil {
			return nil, err
		}
		cfg.BearerToken = token
	case strings.HasPrefix(id.User, "system:serviceaccount:"):
		if id.Groups != nil || id.Certificate != "" {
			return nil, fmt.Errorf("%s: a ServiceAccount token has the ServiceAccount's groups, and no certificate", id.User)
		}
		token, err := c.serviceAccountToken(id.User)
		if err != nil {
			return nil, err
		}
		cfg.BearerToken = token
	default:
		certPEM, keyPEM, cert, err := c.clientCertificate(id)
		if err != nil {
			return nil, err
		}
		cfg.CertData, cfg.KeyData = certPEM, keyPEM
		c.certs[id.key()] = cert
	}
	if strings.HasPrefix(id.User, "system:node:") {
		// The kubelet talks protobuf (its --kube-api-content-type default).
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
		cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	cl, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := waitAuthenticated(cl, id.User); err != nil {
		return nil, err
	}
	c.clients[id.key()] = cl
	return cl, nil
}

// waitAuthenticated waits until the API server knows the new credential: the bootstrap
// token authenticator reads token Secrets through an informer, so a token used the
// moment its Secret is created is answered 401 Unauthorized.
func waitAuthenticated(cl *kubernetes.Clientset, user string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cx, cancel := ctx()
		review, err := cl.AuthenticationV1().SelfSubjectReviews().Create(cx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		cancel()
		if err == nil {
			if got := review.Status.UserInfo.Username; got != user {
				return fmt.Errorf("the credentials made for %s authenticate as %s", user, got)
			}
			return nil
		}
		if !apierrors.IsUnauthorized(err) || time.Now().After(deadline) {
			return fmt.Errorf("authenticating as %s: %v", user, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tokenClient is a client that authenticates with a bearer token.
func (c *Cluster) tokenClient(token string) (*kubernetes.Clientset, error) {
	cfg := &rest.Config{Host: c.host, TLSClientConfig: rest.TLSClientConfig{CAData: c.caPEM}, BearerToken: token}
	fast(cfg)
	return kubernetes.NewForConfig(cfg)
}

// CredentialID is what the API server puts in the user's extra
// authentication.kubernetes.io/credential-id for id's client certificate.
func (c *Cluster) CredentialID(id Identity) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	cert, ok := c.certs[id.key()]
	if !ok {
		return ""
	}
	sum := sha256.Sum256(cert.Raw)
	return "X509SHA256=" + hex.EncodeToString(sum[:])
}

func certGroups(id Identity) []string {
	groups := id.Groups
	if groups == nil {
		switch {
		case strings.HasPrefix(id.User, "system:node:"):
			groups = []string{"system:nodes"}
		case id.User == "kubernetes-admin":
			groups = []string{"kubeadm:cluster-admins"}
		}
	}
	var out []string
	for _, g := range groups {
		// The API server adds it to every authenticated user.
		if g != "system:authenticated" {
			out = append(out, g)
		}
	}
	return out
}

// clientCertificate issues a client certificate for id, with an ECDSA P-256 key as a
// kubelet makes.
func (c *Cluster) clientCertificate(id Identity) (certPEM, keyPEM []byte, cert *x509.Certificate, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id.User, Organization: certGroups(id)},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.caCert, &key.PublicKey, c.caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), cert, nil
}

const tokenChars = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = tokenChars[int(b[i])%len(tokenChars)]
	}
	return string(b), nil
}

// bootstrapToken makes the bootstrap token tokenID as `kubeadm token create` does and
// returns it.
func (c *Cluster) bootstrapToken(tokenID string) (string, error) {
	secret, err := randomToken(16)
	if err != nil {
		return "", err
	}
	cx, cancel := ctx()
	defer cancel()
	_ = c.admin.CoreV1().Secrets("kube-system").Delete(cx, "bootstrap-token-"+tokenID, metav1.DeleteOptions{})
	_, err = c.admin.CoreV1().Secrets("kube-system").Create(cx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + tokenID, Namespace: "kube-system"},
		Type:       corev1.SecretTypeBootstrapToken,
		StringData: map[string]string{
			"token-id":                       tokenID,
			"token-secret":                   secret,
			"usage-bootstrap-authentication": "true",
			"usage-bootstrap-signing":        "true",
			"auth-extra-groups":              "system:bootstrappers:kubeadm:default-node-token",
			"expiration":                     time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating bootstrap token %s: %v", tokenID, err)
	}
	return tokenID + "." + secret, nil
}

// serviceAccountToken returns a token of system:serviceaccount:<ns>:<name>.
func (c *Cluster) serviceAccountToken(user string) (string, error) {
	parts := strings.Split(user, ":")
	if len(parts) != 4 {
		return "", fmt.Errorf("%q is not system:serviceaccount:<namespace>:<name>", user)
	}
	ns, name := parts[2], parts[3]
	cx, cancel := ctx()
	defer cancel()
	sas := c.admin.CoreV1().ServiceAccounts(ns)
	if _, err := sas.Get(cx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := sas.Create(cx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}, metav1.CreateOptions{}); err != nil {
			return "", err
		}
		if err := c.grantNodeWrites(ns, name); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	expiry := int64(24 * 3600)
	tr, err := sas.CreateToken(cx, name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("a token for %s: %v", user, err)
	}
	return tr.Status.Token, nil
}

// grantNodeWrites lets a ServiceAccount the cluster does not have write Nodes, as a
// cloud provider's manifests let its node manager.
func (c *Cluster) grantNodeWrites(ns, name string) error {
	cx, cancel := ctx()
	defer cancel()
	role := "nodeguard-e2e:node-writer"
	_, err := c.admin.RbacV1().ClusterRoles().Create(cx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "update", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"update", "patch"}},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	_, err = c.admin.RbacV1().ClusterRoleBindings().Create(cx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role + ":" + ns + ":" + name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: name}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// ---- the API server's log ------------------------------------------------------------

// LogSize is the size of the API server's log now.
func (c *Cluster) LogSize() int64 {
	st, err := os.Stat(c.apiserverLog)
	if err != nil {
		return 0
	}
	return st.Size()
}

// WebhookTrouble returns the lines the API server logged since offset about a webhook
// call that failed (and, under failurePolicy Ignore, was skipped) or a matchCondition
// that could not be evaluated.
func (c *Cluster) WebhookTrouble(offset int64) (failedOpen, cel []string) {
	f, err := os.Open(c.apiserverLog)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, nil
	}
	b, _ := io.ReadAll(f)
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case !strings.Contains(line, "nodeguard.io"):
		case strings.Contains(line, "failing open"), strings.Contains(line, "Failed calling webhook"):
			failedOpen = append(failedOpen, strings.TrimSpace(line))
		case strings.Contains(line, "matchCondition"), strings.Contains(line, "match condition"):
			cel = append(cel, strings.TrimSpace(line))
		}
	}
	return failedOpen, cel
}

// ---- reset -------------------------------------------------------------------------

// Clear deletes every Node, CSR and Event in namespace default, lets the garbage
// collector remove the NodeIdentities the Nodes own, deletes those no Node owns, and
// waits until all are gone.
func (c *Cluster) Clear() error {
	cx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	all := metav1.ListOptions{}
	if err := c.admin.CoreV1().Nodes().DeleteCollection(cx, metav1.DeleteOptions{}, all); err != nil {
		return fmt.Errorf("deleting Nodes: %v", err)
	}
	if err := c.admin.CertificatesV1().CertificateSigningRequests().DeleteCollection(cx, metav1.DeleteOptions{}, all); err != nil {
		return fmt.Errorf("deleting CSRs: %v", err)
	}
	if err := c.admin.EventsV1().Events("default").DeleteCollection(cx, metav1.DeleteOptions{}, all); err != nil {
		return fmt.Errorf("deleting Events: %v", err)
	}
	// The garbage collector finds a new resource at its next discovery (every 30 s), so
	// right after nodeguard's CRD is installed it can take that long to start.
	deadline := time.Now().Add(60 * time.Second)
	for {
		nis, err := c.adminDyn.Resource(nodeIdentitiesGVR).List(cx, all)
		if err != nil {
			return err
		}
		for _, o := range nis.Items {
			if len(o.GetOwnerReferences()) == 0 {
				_ = c.adminDyn.Resource(nodeIdentitiesGVR).Delete(cx, o.GetName(), metav1.DeleteOptions{})
			}
		}
		left, err := c.leftovers()
		if err != nil {
			return err
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not gone within 60 s: %s", strings.Join(left, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) leftovers() ([]string, error) {
	cx, cancel := ctx()
	defer cancel()
	var left []string
	nodes, err := c.admin.CoreV1().Nodes().List(cx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, n := range nodes.Items {
		left = append(left, "node "+n.Name)
	}
	csrs, err := c.admin.CertificatesV1().CertificateSigningRequests().List(cx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, r := range csrs.Items {
		left = append(left, "csr "+r.Name)
	}
	nis, err := c.adminDyn.Resource(nodeIdentitiesGVR).List(cx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, o := range nis.Items {
		left = append(left, "nodeidentity "+o.GetName())
	}
	sort.Strings(left)
	return left, nil
}

// ---- reading -------------------------------------------------------------------------

var eventsGVR = schema.GroupVersionResource{Group: "events.k8s.io", Version: "v1", Resource: "events"}

// NodeIdentity is the NodeIdentity name as JSON, or nil when there is none.
func (c *Cluster) NodeIdentity(name string) map[string]interface{} {
	cx, cancel := ctx()
	defer cancel()
	o, err := c.adminDyn.Resource(nodeIdentitiesGVR).Get(cx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return o.Object
}

// NodeIdentities are every NodeIdentity as JSON.
func (c *Cluster) NodeIdentities() []map[string]interface{} {
	return c.list(nodeIdentitiesGVR)
}

// Events are every Event (events.k8s.io/v1) as JSON.
func (c *Cluster) Events() []map[string]interface{} {
	return c.list(eventsGVR)
}

func (c *Cluster) list(gvr schema.GroupVersionResource) []map[string]interface{} {
	cx, cancel := ctx()
	defer cancel()
	l, err := c.adminDyn.Resource(gvr).List(cx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	out := make([]map[string]interface{}, 0, len(l.Items))
	for _, o := range l.Items {
		out = append(out, o.Object)
	}
	return out
}
