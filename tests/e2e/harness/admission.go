package main

// kube-apiserver's ValidatingAdmissionWebhook plugin (k8s.io/apiserver), fed the
// ValidatingWebhookConfiguration of deploy/ and driven with attributes built as the
// API server builds them.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/validating"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/apiserver/pkg/endpoints/filters"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"
)

// ---- the webhook configuration ---------------------------------------------------

// LoadWebhookConfig reads the rendered manifests, takes the one
// ValidatingWebhookConfiguration, sets every webhook's caBundle, and applies the
// defaults and (a subset of) the validation the API server applies when it is created.
func LoadWebhookConfig(manifests, caFile string) (*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	raw, err := os.ReadFile(manifests)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	if err := checkPEMCerts(ca); err != nil {
		return nil, fmt.Errorf("--ca %s: %v", caFile, err)
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var found []*admissionregistrationv1.ValidatingWebhookConfiguration
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", manifests, err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("%s: %v", manifests, err)
		}
		if meta.Kind != "ValidatingWebhookConfiguration" {
			continue
		}
		if meta.APIVersion != "admissionregistration.k8s.io/v1" {
			return nil, fmt.Errorf("%s: ValidatingWebhookConfiguration of apiVersion %q, want admissionregistration.k8s.io/v1", manifests, meta.APIVersion)
		}
		var vwc admissionregistrationv1.ValidatingWebhookConfiguration
		// Strict, as `kubectl apply` with server-side field validation is.
		if err := yaml.UnmarshalStrict(doc, &vwc); err != nil {
			return nil, fmt.Errorf("%s: ValidatingWebhookConfiguration: %v", manifests, err)
		}
		found = append(found, &vwc)
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%s: %d ValidatingWebhookConfigurations, want exactly one", manifests, len(found))
	}
	vwc := found[0]
	for i := range vwc.Webhooks {
		vwc.Webhooks[i].ClientConfig.CABundle = ca
	}
	setWebhookDefaults(vwc)
	if errs := validateWebhookConfig(vwc); len(errs) > 0 {
		return nil, fmt.Errorf("%s: the API server would refuse this ValidatingWebhookConfiguration:\n  %s", manifests, strings.Join(errs, "\n  "))
	}
	return vwc, nil
}

func checkPEMCerts(b []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

// setWebhookDefaults applies k8s.io/kubernetes/pkg/apis/admissionregistration/v1's
// defaulting, as the API server does when the object is created.
func setWebhookDefaults(vwc *admissionregistrationv1.ValidatingWebhookConfiguration) {
	for i := range vwc.Webhooks {
		h := &vwc.Webhooks[i]
		if h.FailurePolicy == nil {
			p := admissionregistrationv1.Fail
			h.FailurePolicy = &p
		}
		if h.MatchPolicy == nil {
			p := admissionregistrationv1.Equivalent
			h.MatchPolicy = &p
		}
		if h.NamespaceSelector == nil {
			h.NamespaceSelector = &metav1.LabelSelector{}
		}
		if h.ObjectSelector == nil {
			h.ObjectSelector = &metav1.LabelSelector{}
		}
		if h.TimeoutSeconds == nil {
			t := int32(10)
			h.TimeoutSeconds = &t
		}
		if s := h.ClientConfig.Service; s != nil && s.Port == nil {
			p := int32(443)
			s.Port = &p
		}
		for j := range h.Rules {
			if h.Rules[j].Scope == nil {
				s := admissionregistrationv1.AllScopes
				h.Rules[j].Scope = &s
			}
		}
	}
}

func newCELCompiler() plugincel.ConditionCompiler {
	return plugincel.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
}

func matchConditionAccessors(h *admissionregistrationv1.ValidatingWebhook) []plugincel.ExpressionAccessor {
	out := make([]plugincel.ExpressionAccessor, len(h.MatchConditions))
	for i, mc := range h.MatchConditions {
		out[i] = &matchconditions.MatchCondition{Name: mc.Name, Expression: mc.Expression}
	}
	return out
}

var celDecls = plugincel.OptionalVariableDeclarations{HasParams: false, HasAuthorizer: true}

// validateWebhookConfig is the part of the API server's validation of a
// ValidatingWebhookConfiguration that a hand-written manifest can get wrong.
func validateWebhookConfig(vwc *admissionregistrationv1.ValidatingWebhookConfiguration) []string {
	var errs []string
	bad := func(i int, format string, args ...interface{}) {
		errs = append(errs, fmt.Sprintf("webhooks[%d]: ", i)+fmt.Sprintf(format, args...))
	}
	names := map[string]bool{}
	compiler := newCELCompiler()
	for i := range vwc.Webhooks {
		h := &vwc.Webhooks[i]
		if strings.Count(h.Name, ".") < 2 {
			bad(i, "name %q: must be a fully qualified name with at least three segments", h.Name)
		}
		if names[h.Name] {
			bad(i, "name %q: duplicate", h.Name)
		}
		names[h.Name] = true
		if h.SideEffects == nil {
			bad(i, "sideEffects: required")
		} else if *h.SideEffects != admissionregistrationv1.SideEffectClassNone && *h.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun {
			bad(i, "sideEffects: %q is not None or NoneOnDryRun", *h.SideEffects)
		}
		hasKnown := false
		for _, v := range h.AdmissionReviewVersions {
			if v == "v1" || v == "v1beta1" {
				hasKnown = true
			}
		}
		if !hasKnown {
			bad(i, "admissionReviewVersions: must include v1 or v1beta1")
		}
		if t := *h.TimeoutSeconds; t < 1 || t > 30 {
			bad(i, "timeoutSeconds: %d is not between 1 and 30", t)
		}
		switch {
		case h.ClientConfig.Service != nil && h.ClientConfig.URL != nil:
			bad(i, "clientConfig: exactly one of url or service")
		case h.ClientConfig.Service == nil && h.ClientConfig.URL == nil:
			bad(i, "clientConfig: exactly one of url or service")
		case h.ClientConfig.Service != nil:
			s := h.ClientConfig.Service
			if s.Name == "" || s.Namespace == "" {
				bad(i, "clientConfig.service: name and namespace required")
			}
			if s.Path != nil && !strings.HasPrefix(*s.Path, "/") {
				bad(i, "clientConfig.service.path %q must start with /", *s.Path)
			}
			if p := *s.Port; p < 1 || p > 65535 {
				bad(i, "clientConfig.service.port %d", p)
			}
		}
		if len(h.Rules) == 0 {
			bad(i, "rules: none (the webhook would never be called)")
		}
		for j, r := range h.Rules {
			for _, op := range r.Operations {
				switch op {
				case admissionregistrationv1.OperationAll, admissionregistrationv1.Create, admissionregistrationv1.Update, admissionregistrationv1.Delete, admissionregistrationv1.Connect:
				default:
					bad(i, "rules[%d].operations: unknown %q", j, op)
				}
			}
			if len(r.Resources) == 0 || len(r.APIGroups) == 0 || len(r.APIVersions) == 0 || len(r.Operations) == 0 {
				bad(i, "rules[%d]: apiGroups, apiVersions, operations and resources are required", j)
			}
			for _, res := range r.Resources {
				if parts := strings.Split(res, "/"); len(parts) > 2 || parts[0] == "" {
					bad(i, "rules[%d].resources: %q", j, res)
				}
			}
		}
		if len(h.MatchConditions) > 64 {
			bad(i, "matchConditions: at most 64")
		}
		mcNames := map[string]bool{}
		for j, mc := range h.MatchConditions {
			if mc.Name == "" || mcNames[mc.Name] {
				bad(i, "matchConditions[%d].name %q: empty or duplicate", j, mc.Name)
			}
			mcNames[mc.Name] = true
			if strings.TrimSpace(mc.Expression) == "" {
				bad(i, "matchConditions[%d].expression: required", j)
			}
		}
		if len(h.MatchConditions) > 0 {
			// New and modified expressions are checked in the NewExpressions environment.
			eval := compiler.CompileCondition(matchConditionAccessors(h), celDecls, environment.NewExpressions)
			for _, err := range eval.CompilationErrors() {
				bad(i, "matchConditions: %v", err)
			}
		}
	}
	return errs
}

// ---- the plugin ------------------------------------------------------------------

// serviceResolver sends the webhook's Service to nodeguard's loopback port; the
// plugin's client still verifies the certificate for <service>.<namespace>.svc.
type serviceResolver struct {
	namespace, name string
	port            int32
	target          string
}

func (r serviceResolver) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	if namespace != r.namespace || name != r.name || port != r.port {
		return nil, fmt.Errorf("service %s/%s:%d is not nodeguard's (%s/%s:%d)", namespace, name, port, r.namespace, r.name, r.port)
	}
	return &url.URL{Scheme: "https", Host: r.target}, nil
}

type hookDiag struct {
	hook    admissionregistrationv1.ValidatingWebhook
	matcher matchconditions.Matcher // nil without matchConditions; evaluates with failurePolicy Fail
}

type Admission struct {
	plugin *validating.Plugin
	oi     admission.ObjectInterfaces
	hooks  []hookDiag
	stop   chan struct{}
}

func NewAdmission(vwc *admissionregistrationv1.ValidatingWebhookConfiguration, webhookPort int) (*Admission, error) {
	plugin, err := validating.NewValidatingAdmissionWebhook(nil)
	if err != nil {
		return nil, err
	}
	target := "127.0.0.1:" + strconv.Itoa(webhookPort)
	var resolver *serviceResolver
	for _, h := range vwc.Webhooks {
		s := h.ClientConfig.Service
		if s == nil {
			return nil, fmt.Errorf("webhook %s: clientConfig has no service; only a Service can be mapped to nodeguard's port", h.Name)
		}
		if resolver == nil {
			resolver = &serviceResolver{namespace: s.Namespace, name: s.Name, port: *s.Port, target: target}
		} else if resolver.namespace != s.Namespace || resolver.name != s.Name || resolver.port != *s.Port {
			return nil, fmt.Errorf("webhook %s: service %s/%s:%d differs from the other webhooks'", h.Name, s.Namespace, s.Name, *s.Port)
		}
	}
	if resolver == nil {
		return nil, errors.New("the ValidatingWebhookConfiguration has no webhooks")
	}
	plugin.SetServiceResolver(*resolver)

	stop := make(chan struct{})
	client := fake.NewSimpleClientset(vwc.DeepCopy())
	factory := informers.NewSharedInformerFactory(client, 0)
	plugin.SetExternalKubeClientSet(client)
	plugin.SetExternalKubeInformerFactory(factory)
	factory.Start(stop)
	factory.WaitForCacheSync(stop)
	if err := plugin.ValidateInitialization(); err != nil {
		close(stop)
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for !plugin.WaitForReady() {
		if time.Now().After(deadline) {
			close(stop)
			return nil, errors.New("the webhook plugin did not become ready")
		}
	}

	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := certificatesv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	a := &Admission{plugin: plugin, oi: admission.NewObjectInterfacesFromScheme(scheme), stop: stop}

	compiler := newCELCompiler()
	fail := admissionregistrationv1.Fail
	for _, h := range vwc.Webhooks {
		d := hookDiag{hook: h}
		if len(h.MatchConditions) > 0 {
			d.matcher = matchconditions.NewMatcher(
				compiler.CompileCondition(matchConditionAccessors(&h), celDecls, environment.StoredExpressions),
				&fail, "webhook", "validating", h.Name)
		}
		a.hooks = append(a.hooks, d)
	}
	return a, nil
}

func (a *Admission) Close() { close(a.stop) }

// recordingAttributes keeps the audit annotations the plugin adds, among them
// `failed-open.validating.webhook.admission.k8s.io/...` when a call failed and
// failurePolicy Ignore let the request through.
type recordingAttributes struct {
	admission.Attributes
	mu          sync.Mutex
	annotations map[string]string
}

func (r *recordingAttributes) AddAnnotation(key, value string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.annotations == nil {
		r.annotations = map[string]string{}
	}
	r.annotations[key] = value
	return r.Attributes.AddAnnotation(key, value)
}

// Request is one write as the API server hands it to admission.
type Request struct {
	Operation   admission.Operation
	Object      runtime.Object
	OldObject   runtime.Object
	Kind        schema.GroupVersionKind
	Resource    schema.GroupVersionResource
	Subresource string
	Name        string
	User        user.Info
}

// Outcome is what the API server would answer, and what led to it.
type Outcome struct {
	Allowed    bool
	Err        error
	Code       int32
	Reason     metav1.StatusReason
	Warnings   []string
	FailedOpen []string // webhooks whose call failed and were ignored (failurePolicy Ignore)
	Routing    []string // per webhook: called or why not
	CELErrors  []string // matchCondition evaluation errors (hidden by Ignore in the real plugin)
}

func (a *Admission) attributes(req Request) *recordingAttributes {
	var options runtime.Object
	switch req.Operation {
	case admission.Create:
		options = &metav1.CreateOptions{TypeMeta: metav1.TypeMeta{Kind: "CreateOptions", APIVersion: "meta.k8s.io/v1"}}
	case admission.Update:
		options = &metav1.UpdateOptions{TypeMeta: metav1.TypeMeta{Kind: "UpdateOptions", APIVersion: "meta.k8s.io/v1"}}
	}
	attr := admission.NewAttributesRecord(req.Object, req.OldObject, req.Kind, "", req.Name,
		req.Resource, req.Subresource, req.Operation, options, false, req.User)
	return &recordingAttributes{Attributes: attr}
}

// Validate runs the plugin as the API server's handler chain does: inside the
// warning-recorder filter, so warnings come back as the `Warning` headers a client
// (kubectl, the kubelet's client-go) receives.
func (a *Admission) Validate(req Request) Outcome {
	attr := a.attributes(req)
	var err error
	handler := filters.WithWarningRecorder(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The API server's default request timeout.
		ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
		defer cancel()
		err = a.plugin.Validate(ctx, attr, a.oi)
	}))
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))

	out := Outcome{Allowed: err == nil, Err: err, Warnings: []string{}}
	if err != nil {
		if st, ok := err.(apierrors.APIStatus); ok {
			out.Code = st.Status().Code
			out.Reason = st.Status().Reason
		}
	}
	parsed, perrs := utilnet.ParseWarningHeaders(rec.Header().Values("Warning"))
	for _, w := range parsed {
		out.Warnings = append(out.Warnings, w.Text)
	}
	for _, e := range perrs {
		out.Warnings = append(out.Warnings, "<unparsable Warning header: "+e.Error()+">")
	}
	attr.mu.Lock()
	for k, v := range attr.annotations {
		if strings.HasPrefix(k, validating.ValidatingAuditAnnotationFailedOpenKeyPrefix) {
			out.FailedOpen = append(out.FailedOpen, v)
		}
	}
	attr.mu.Unlock()
	out.Routing, out.CELErrors = a.route(req)
	return out
}

// route says, per webhook, whether the plugin would call it: rules, then
// matchConditions (evaluated again here with failurePolicy Fail so that evaluation
// errors, which Ignore hides, surface).
func (a *Admission) route(req Request) (routing, celErrors []string) {
	attr := a.attributes(req)
	for _, d := range a.hooks {
		matched := false
		for _, r := range d.hook.Rules {
			m := rules.Matcher{Rule: r, Attr: attr}
			if m.Matches() {
				matched = true
				break
			}
		}
		if !matched {
			routing = append(routing, d.hook.Name+": no rule matches")
			continue
		}
		if d.matcher == nil {
			routing = append(routing, d.hook.Name+": called")
			continue
		}
		va, err := admission.NewVersionedAttributes(attr, req.Kind, a.oi)
		if err != nil {
			celErrors = append(celErrors, d.hook.Name+": "+err.Error())
			continue
		}
		res := d.matcher.Match(context.Background(), va, nil, nil)
		switch {
		case res.Error != nil:
			routing = append(routing, d.hook.Name+": matchConditions error")
			celErrors = append(celErrors, d.hook.Name+": "+res.Error.Error())
		case !res.Matches:
			routing = append(routing, fmt.Sprintf("%s: skipped, matchCondition %q is false", d.hook.Name, res.FailedConditionName))
		default:
			routing = append(routing, d.hook.Name+": called")
		}
	}
	return routing, celErrors
}
