package main

// Authentication and RBAC as the API server would apply them to nodeguard: `serve`
// authenticates as the ServiceAccount of the manifests' Deployment and may do what the
// manifests' (Cluster)Roles bound to it allow; an administrator (`nodeguard forget`)
// may do anything. A request RBAC would refuse gets the API server's 403.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	"sigs.k8s.io/yaml"
)

const (
	// The bearer tokens of the kubeconfigs the harness writes.
	serviceAccountToken = "nodeguard-e2e-dummy-token"
	adminToken          = "nodeguard-e2e-admin-token"
)

// RBAC is the manifests' authorization of nodeguard's ServiceAccount.
type RBAC struct {
	sa           user.Info
	clusterRoles map[string][]rbacv1.PolicyRule
	roles        map[string][]rbacv1.PolicyRule // namespace/name
	crbs         []rbacv1.ClusterRoleBinding
	rbs          []rbacv1.RoleBinding
}

// LoadRBAC reads the Deployment's ServiceAccount and the RBAC objects of the
// manifests. Without a Deployment it returns nil: nothing to authorize against.
func LoadRBAC(raw []byte) (*RBAC, error) {
	p := &RBAC{clusterRoles: map[string][]rbacv1.PolicyRule{}, roles: map[string][]rbacv1.PolicyRule{}}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, err
		}
		switch {
		case tm.APIVersion == "apps/v1" && tm.Kind == "Deployment":
			var d appsv1.Deployment
			if err := yaml.Unmarshal(doc, &d); err != nil {
				return nil, err
			}
			if p.sa != nil {
				return nil, fmt.Errorf("more than one Deployment; the harness cannot tell which one is nodeguard")
			}
			ns := d.Namespace
			if ns == "" {
				ns = "default"
			}
			name := d.Spec.Template.Spec.ServiceAccountName
			if name == "" {
				name = "default"
			}
			p.sa = &user.DefaultInfo{Name: serviceaccount.MakeUsername(ns, name), Groups: append(serviceaccount.MakeGroupNames(ns), user.AllAuthenticated)}
		case tm.APIVersion == "rbac.authorization.k8s.io/v1" && tm.Kind == "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.Unmarshal(doc, &r); err != nil {
				return nil, err
			}
			p.clusterRoles[r.Name] = r.Rules
		case tm.APIVersion == "rbac.authorization.k8s.io/v1" && tm.Kind == "Role":
			var r rbacv1.Role
			if err := yaml.Unmarshal(doc, &r); err != nil {
				return nil, err
			}
			p.roles[r.Namespace+"/"+r.Name] = r.Rules
		case tm.APIVersion == "rbac.authorization.k8s.io/v1" && tm.Kind == "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := yaml.Unmarshal(doc, &b); err != nil {
				return nil, err
			}
			p.crbs = append(p.crbs, b)
		case tm.APIVersion == "rbac.authorization.k8s.io/v1" && tm.Kind == "RoleBinding":
			var b rbacv1.RoleBinding
			if err := yaml.Unmarshal(doc, &b); err != nil {
				return nil, err
			}
			p.rbs = append(p.rbs, b)
		}
	}
	if p.sa == nil {
		return nil, nil
	}
	return p, nil
}

func (p *RBAC) ServiceAccount() user.Info { return p.sa }

func subjectMatches(s rbacv1.Subject, bindingNamespace string, u user.Info) bool {
	switch s.Kind {
	case rbacv1.UserKind:
		return s.Name == u.GetName()
	case rbacv1.GroupKind:
		for _, g := range u.GetGroups() {
			if g == s.Name {
				return true
			}
		}
	case rbacv1.ServiceAccountKind:
		ns := s.Namespace
		if ns == "" {
			ns = bindingNamespace
		}
		return serviceaccount.MakeUsername(ns, s.Name) == u.GetName()
	}
	return false
}

func has(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// ruleAllows is RBAC's rule match for a resource request.
func ruleAllows(r rbacv1.PolicyRule, a authorizer.Attributes) bool {
	if !has(r.Verbs, a.GetVerb()) && !has(r.Verbs, rbacv1.VerbAll) {
		return false
	}
	if !has(r.APIGroups, a.GetAPIGroup()) && !has(r.APIGroups, rbacv1.APIGroupAll) {
		return false
	}
	res := a.GetResource()
	if a.GetSubresource() != "" {
		res += "/" + a.GetSubresource()
	}
	if !has(r.Resources, res) && !has(r.Resources, rbacv1.ResourceAll) &&
		!(a.GetSubresource() != "" && has(r.Resources, "*/"+a.GetSubresource())) {
		return false
	}
	return len(r.ResourceNames) == 0 || (a.GetName() != "" && has(r.ResourceNames, a.GetName()))
}

func (p *RBAC) roleRules(ref rbacv1.RoleRef, namespace string) []rbacv1.PolicyRule {
	if ref.Kind == "ClusterRole" {
		return p.clusterRoles[ref.Name]
	}
	return p.roles[namespace+"/"+ref.Name]
}

// Allows says whether RBAC lets the attributes' user do the request.
func (p *RBAC) Allows(a authorizer.Attributes) bool {
	for _, b := range p.crbs {
		for _, s := range b.Subjects {
			if subjectMatches(s, "", a.GetUser()) {
				for _, r := range p.roleRules(b.RoleRef, "") {
					if ruleAllows(r, a) {
						return true
					}
				}
			}
		}
	}
	if a.GetNamespace() == "" {
		return false
	}
	for _, b := range p.rbs {
		if b.Namespace != a.GetNamespace() {
			continue
		}
		for _, s := range b.Subjects {
			if subjectMatches(s, b.Namespace, a.GetUser()) {
				for _, r := range p.roleRules(b.RoleRef, b.Namespace) {
					if ruleAllows(r, a) {
						return true
					}
				}
			}
		}
	}
	return false
}

// requestVerb is the API server's verb for a resource request.
func requestVerb(r *http.Request, name string) string {
	switch r.Method {
	case http.MethodGet:
		switch {
		case name != "":
			return "get"
		case r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1":
			return "watch"
		}
		return "list"
	case http.MethodPost:
		return "create"
	case http.MethodPut:
		return "update"
	case http.MethodPatch:
		return "patch"
	case http.MethodDelete:
		if name == "" {
			return "deletecollection"
		}
		return "delete"
	}
	return strings.ToLower(r.Method)
}

// authenticate maps the bearer token to a user: nil and a 401 for an unknown one.
func (a *APIServer) authenticate(r *http.Request) (user.Info, error) {
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch token {
	case serviceAccountToken:
		return a.rbac.ServiceAccount(), nil
	case adminToken:
		return &user.DefaultInfo{Name: "kubernetes-admin", Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated}}, nil
	}
	return nil, apierrors.NewUnauthorized("Unauthorized")
}

// authorize returns the API server's 403 when RBAC would refuse the request.
func (a *APIServer) authorize(r *http.Request, u user.Info, p apiPath) error {
	if has(u.GetGroups(), user.SystemPrivilegedGroup) {
		return nil
	}
	attrs := authorizer.AttributesRecord{
		User: u, Verb: requestVerb(r, p.name), Namespace: p.namespace, APIGroup: p.group, APIVersion: p.version,
		Resource: p.resource, Subresource: p.subresource, Name: p.name, ResourceRequest: true, Path: r.URL.Path,
	}
	if a.rbac.Allows(attrs) {
		return nil
	}
	return responsewriters.ForbiddenStatusError(attrs, "")
}
