package main

// The resources the harness's API server serves, and how the API server's registry
// treats each: scope, whether clients may write it, create-on-update, unconditional
// updates, a status subresource, metadata.generation. NodeIdentity's shape comes from
// its CustomResourceDefinition when one is found (in the manifests, else from
// `nodeguard crd`).

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"reflect"

	coordinationv1 "k8s.io/api/coordination/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	resNodes          = "nodes"
	resCSRs           = "certificatesigningrequests"
	resNodeIdentities = "nodeidentities"
	resLeases         = "leases"
	resEvents         = "events"

	ledgerGroup   = "nodeguard.io"
	ledgerVersion = "v1alpha1"
	ledgerCRDName = resNodeIdentities + "." + ledgerGroup
)

type resourceInfo struct {
	group, version, resource string
	kind, listKind           string
	namespaced               bool
	// typed resources (Nodes, CSRs) are written only by the harness; API clients read them.
	typed bool
	// AllowCreateOnUpdate and AllowUnconditionalUpdate of the API server's strategy.
	createOnUpdate, unconditionalUpdate bool
	// A /status subresource: a write to the main resource keeps the stored status, a
	// write to /status changes only the status, and a create drops the status.
	statusSubresource bool
	// Custom resources: generation 1 on create, +1 when anything but metadata changes.
	customResource bool
	// The Go type strategic merge patches are computed against; nil: 415, as for
	// custom resources.
	strategicType reflect.Type
}

func (ri *resourceInfo) apiVersion() string {
	if ri.group == "" {
		return ri.version
	}
	return ri.group + "/" + ri.version
}

func (ri *resourceInfo) gr() schema.GroupResource {
	return schema.GroupResource{Group: ri.group, Resource: ri.resource}
}

// resources is keyed by plural; the plurals the harness serves are unique.
var resources = map[string]*resourceInfo{
	resNodes: {group: "", version: "v1", resource: resNodes, kind: "Node", listKind: "NodeList", typed: true},
	resCSRs: {group: "certificates.k8s.io", version: "v1", resource: resCSRs, kind: "CertificateSigningRequest",
		listKind: "CertificateSigningRequestList", typed: true},
	resNodeIdentities: {group: ledgerGroup, version: ledgerVersion, resource: resNodeIdentities, kind: "NodeIdentity",
		listKind: "NodeIdentityList", customResource: true},
	resLeases: {group: "coordination.k8s.io", version: "v1", resource: resLeases, kind: "Lease", listKind: "LeaseList",
		namespaced: true, createOnUpdate: true, strategicType: reflect.TypeOf(coordinationv1.Lease{})},
	resEvents: {group: "events.k8s.io", version: "v1", resource: resEvents, kind: "Event", listKind: "EventList",
		namespaced: true, createOnUpdate: true, unconditionalUpdate: true, strategicType: reflect.TypeOf(eventsv1.Event{})},
}

// newOf returns a new value of the resource's Go type, for strategic merge patches.
func newOf(ri *resourceInfo) interface{} { return reflect.New(ri.strategicType).Interface() }

func lookupResource(group, version, plural string) *resourceInfo {
	ri, ok := resources[plural]
	if !ok || ri.group != group || ri.version != version {
		return nil
	}
	return ri
}

var schemaNamespaces = schema.GroupResource{Resource: "namespaces"}

// knownNamespaces are the namespaces of the cluster: those every cluster has, and the
// Namespaces of the manifests (AddManifestNamespaces). Creating in another one is a
// 404, as the API server's NamespaceLifecycle admission answers.
var knownNamespaces = map[string]bool{"default": true, "kube-system": true, "kube-public": true, "kube-node-lease": true}

// AddManifestNamespaces adds the Namespaces the manifests create.
func AddManifestNamespaces(raw []byte) error {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var obj struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return err
		}
		if obj.APIVersion == "v1" && obj.Kind == "Namespace" && obj.Metadata.Name != "" {
			knownNamespaces[obj.Metadata.Name] = true
		}
	}
}

// crdSource says where the NodeIdentity CRD came from, for the log.
type crdSource struct {
	found  bool
	origin string // "the manifests" or "`nodeguard crd`"
	status bool   // the served version has a status subresource
}

// findLedgerCRD looks for the NodeIdentity CRD among the YAML documents of raw.
// It returns nil, nil when there is none; an error when one is there but does not
// match the contract the harness serves.
func findLedgerCRD(raw []byte, origin string) (*crdSource, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", origin, err)
		}
		var crd struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Spec struct {
				Group string `json:"group"`
				Scope string `json:"scope"`
				Names struct {
					Plural   string `json:"plural"`
					Kind     string `json:"kind"`
					ListKind string `json:"listKind"`
				} `json:"names"`
				Versions []struct {
					Name         string                 `json:"name"`
					Served       bool                   `json:"served"`
					Storage      bool                   `json:"storage"`
					Subresources map[string]interface{} `json:"subresources"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &crd); err != nil {
			return nil, fmt.Errorf("%s: %v", origin, err)
		}
		if crd.Kind != "CustomResourceDefinition" || crd.Spec.Group != ledgerGroup || crd.Spec.Names.Plural != resNodeIdentities {
			continue
		}
		bad := func(format string, args ...interface{}) (*crdSource, error) {
			return nil, fmt.Errorf("%s: CustomResourceDefinition %s: %s", origin, crd.Metadata.Name, fmt.Sprintf(format, args...))
		}
		listKind := crd.Spec.Names.ListKind
		if listKind == "" {
			listKind = crd.Spec.Names.Kind + "List"
		}
		switch {
		case crd.APIVersion != "apiextensions.k8s.io/v1":
			return bad("apiVersion %q, want apiextensions.k8s.io/v1", crd.APIVersion)
		case crd.Metadata.Name != ledgerCRDName:
			return bad("the API server requires the name <plural>.<group>, %s", ledgerCRDName)
		case crd.Spec.Scope != "Cluster":
			return bad("scope %q, the harness serves NodeIdentity cluster-scoped", crd.Spec.Scope)
		case crd.Spec.Names.Kind != "NodeIdentity" || listKind != "NodeIdentityList":
			return bad("kind %q, listKind %q; the harness serves NodeIdentity, NodeIdentityList", crd.Spec.Names.Kind, listKind)
		}
		storage := 0
		var src *crdSource
		for _, v := range crd.Spec.Versions {
			if v.Storage {
				storage++
			}
			if v.Name == ledgerVersion {
				if !v.Served {
					return bad("version %s is not served", ledgerVersion)
				}
				_, status := v.Subresources["status"]
				src = &crdSource{found: true, origin: origin, status: status}
			}
		}
		if storage != 1 {
			return bad("%d storage versions, the API server requires exactly one", storage)
		}
		if src == nil {
			return bad("no version %s", ledgerVersion)
		}
		return src, nil
	}
}

// LoadLedgerCRD finds the NodeIdentity CRD in the manifests or, failing that, in the
// output of `<nodeguard> crd`, and configures how NodeIdentity is served.
func LoadLedgerCRD(manifests []byte, nodeguard string) (*crdSource, error) {
	src, err := findLedgerCRD(manifests, "the manifests")
	if err != nil || src != nil {
		if src != nil {
			resources[resNodeIdentities].statusSubresource = src.status
		}
		return src, err
	}
	out, err := exec.Command(nodeguard, "crd").Output()
	if err != nil {
		// A nodeguard without the subcommand: no CRD anywhere.
		return &crdSource{}, nil
	}
	src, err = findLedgerCRD(out, "`nodeguard crd`")
	if err != nil {
		return nil, err
	}
	if src == nil {
		return &crdSource{}, nil
	}
	resources[resNodeIdentities].statusSubresource = src.status
	return src, nil
}
