//! What the watchers decode of a Node or a CSR: the name and resourceVersion the
//! watcher needs to resume, and the identity the inventory keeps. Everything else
//! (images, managedFields, annotations, the certificate) is skipped by the decoder and
//! never allocated, so a re-list of thousands of 15 kB Nodes stays small.

use std::borrow::Cow;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ClusterResourceScope;
use serde::{Deserialize, Deserializer};

use crate::identity::csr::CsrDoc;
use crate::identity::node::NodeDoc;
use crate::identity::{KeyBinding, NodeClaim};

/// A Node as the watcher sees it: only its name, resourceVersion and identity claim.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchedNode {
    /// Only `name` and `resourceVersion` are filled.
    pub meta: ObjectMeta,
    /// `None` for a Node without a name, which cannot be stored and so holds nothing.
    pub claim: Option<NodeClaim>,
}

/// A CertificateSigningRequest as the watcher sees it: only its name, resourceVersion
/// and the key binding it establishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchedCsr {
    /// Only `name` and `resourceVersion` are filled.
    pub meta: ObjectMeta,
    /// `None` unless it is an approved or issued kubelet request (see
    /// [`KeyBinding::from_doc`]).
    pub binding: Option<KeyBinding>,
}

fn compact_meta(name: Option<Cow<'_, str>>, resource_version: Option<Cow<'_, str>>) -> ObjectMeta {
    ObjectMeta {
        name: name.map(Cow::into_owned),
        resource_version: resource_version.map(Cow::into_owned),
        ..ObjectMeta::default()
    }
}

impl<'de> Deserialize<'de> for WatchedNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut doc = NodeDoc::deserialize(deserializer)?;
        let claim = NodeClaim::from_doc(&doc);
        let meta = doc
            .metadata
            .take()
            .map(|m| compact_meta(m.name, m.resource_version))
            .unwrap_or_default();
        Ok(Self { meta, claim })
    }
}

impl<'de> Deserialize<'de> for WatchedCsr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut doc = CsrDoc::deserialize(deserializer)?;
        let binding = KeyBinding::from_doc(&doc);
        let meta = doc
            .metadata
            .take()
            .map(|m| compact_meta(m.name, m.resource_version))
            .unwrap_or_default();
        Ok(Self { meta, binding })
    }
}

/// Implements `kube::Resource` with the coordinates of the k8s-openapi type, so the
/// compact type is listed and watched at exactly the same URL.
macro_rules! cluster_resource {
    ($compact:ty, $full:ty) => {
        impl kube::Resource for $compact {
            type DynamicType = ();
            type Scope = ClusterResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::KIND)
            }

            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::GROUP)
            }

            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::VERSION)
            }

            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::API_VERSION)
            }

            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::URL_PATH_SEGMENT)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.meta
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.meta
            }
        }
    };
}

cluster_resource!(WatchedNode, Node);
cluster_resource!(WatchedCsr, CertificateSigningRequest);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn urls_are_those_of_the_full_types() {
        assert_eq!(WatchedNode::url_path(&(), None), "/api/v1/nodes");
        assert_eq!(
            WatchedCsr::url_path(&(), None),
            "/apis/certificates.k8s.io/v1/certificatesigningrequests"
        );
        assert_eq!(WatchedNode::api_version(&()), "v1");
        assert_eq!(WatchedCsr::api_version(&()), "certificates.k8s.io/v1");
    }

    #[test]
    fn a_node_keeps_its_name_version_and_claim_only() {
        let json = r#"{"apiVersion":"v1","kind":"Node",
            "metadata":{"name":"w1","resourceVersion":"42","uid":"u",
                "labels":{"kubernetes.io/hostname":"w1"},
                "managedFields":[{"manager":"kubelet","fieldsV1":{"f:status":{}}}]},
            "spec":{"providerID":"kind://docker/k/w1"},
            "status":{"nodeInfo":{"machineID":"ABC","systemUUID":"u-1","bootID":"b"},
                "images":[{"names":["registry.k8s.io/pause:3.9"],"sizeBytes":1}],
                "addresses":[{"type":"InternalIP","address":"10.0.0.1"}]}}"#;
        let node: WatchedNode = serde_json::from_str(json).unwrap();
        assert_eq!(node.meta.name.as_deref(), Some("w1"));
        assert_eq!(node.meta.resource_version.as_deref(), Some("42"));
        assert!(node.meta.uid.is_none() && node.meta.managed_fields.is_none());
        let claim = node.claim.unwrap();
        assert_eq!(claim.machine_id.unwrap().as_str(), "abc");
        assert_eq!(
            claim.internal_ips,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_nameless_node_claims_nothing() {
        let node: WatchedNode = serde_json::from_str(r#"{"metadata":{}}"#).unwrap();
        assert!(node.claim.is_none());
        assert!(node.meta.name.is_none());
    }

    #[test]
    fn a_pending_csr_binds_nothing_but_keeps_its_name() {
        let json = r#"{"metadata":{"name":"csr-1","resourceVersion":"7"},
            "spec":{"signerName":"kubernetes.io/kube-apiserver-client-kubelet","request":"AAAA"},
            "status":{}}"#;
        let csr: WatchedCsr = serde_json::from_str(json).unwrap();
        assert_eq!(csr.meta.name.as_deref(), Some("csr-1"));
        assert_eq!(csr.meta.resource_version.as_deref(), Some("7"));
        assert!(csr.binding.is_none());
    }
}
