//! The identity a Node object claims: decoded straight from the JSON the kubelet sent,
//! reading only the fields the checks compare (a Node with its image list is ~15 kB;
//! nothing else of it is ever built).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::values::{BootId, Hostname, MachineId, NodeName, ProviderId, SystemUuid};

/// The parts of a Node that carry identity, borrowed from the request body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeDoc<'a> {
    /// `v1` in a review; absent from the items of a list.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub api_version: Option<Cow<'a, str>>,
    /// `Node` in a review; absent from the items of a list.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub kind: Option<Cow<'a, str>>,
    /// `metadata`: name, uid, resource version, creation time and labels.
    #[serde(borrow)]
    pub metadata: Option<NodeMetaDoc<'a>>,
    /// `spec`: the provider ID.
    #[serde(borrow)]
    pub spec: Option<NodeSpecDoc<'a>>,
    /// `status`: node info, addresses and conditions.
    #[serde(borrow)]
    pub status: Option<NodeStatusDoc<'a>>,
}

/// The `metadata` of a Node.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeMetaDoc<'a> {
    /// `metadata.name`: the Node's name.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub name: Option<Cow<'a, str>>,
    /// `metadata.resourceVersion`: orders two observations of this Node.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub resource_version: Option<Cow<'a, str>>,
    /// `metadata.uid`: tells one registration of a name from the next. Absent on CREATE.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub uid: Option<Cow<'a, str>>,
    /// `metadata.creationTimestamp`, RFC 3339. Absent on CREATE.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub creation_timestamp: Option<Cow<'a, str>>,
    /// `metadata.labels`: the hostname label and what an exemption's selector reads.
    #[serde(borrow)]
    pub labels: Option<NodeLabelsDoc<'a>>,
}

/// `metadata.labels`, every one of them: the hostname label is an identity claim, and
/// the others are what an exemption's label selector reads. Only the review being decided
/// holds them; the inventory keeps the hostname alone.
#[derive(Debug, Default)]
pub struct NodeLabelsDoc<'a> {
    /// Each label's name and value, in the order written; null values are left out.
    pub pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl NodeLabelsDoc<'_> {
    /// The label the kubelet sets to the machine's hostname.
    pub const HOSTNAME: &'static str = "kubernetes.io/hostname";

    /// The value of the label `key`; `None` when the Node does not have it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of the [`HOSTNAME`](Self::HOSTNAME) label, as written.
    pub fn hostname(&self) -> Option<&str> {
        self.get(Self::HOSTNAME)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for NodeLabelsDoc<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Labels<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Labels<'a> {
            type Value = NodeLabelsDoc<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of label names to values")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(NodeLabelsDoc::default())
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<super::text::Borrowed<'a>>()? {
                    if let Some(value) = map.next_value::<Option<super::text::Borrowed<'a>>>()? {
                        pairs.push((key.0, value.0));
                    }
                }
                Ok(NodeLabelsDoc { pairs })
            }
        }
        deserializer.deserialize_any(Labels(std::marker::PhantomData))
    }
}

/// The `spec` of a Node.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSpecDoc<'a> {
    /// `spec.providerID`: the cloud's name for the instance, as written.
    #[serde(
        borrow,
        deserialize_with = "super::text::option",
        rename = "providerID"
    )]
    pub provider_id: Option<Cow<'a, str>>,
}

/// The `status` of a Node.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeStatusDoc<'a> {
    /// `status.nodeInfo`: machine-id, system UUID and boot id.
    #[serde(borrow)]
    pub node_info: Option<NodeInfoDoc<'a>>,
    /// `status.addresses`: every address the kubelet reports, of any type.
    #[serde(borrow)]
    pub addresses: Option<Vec<AddressDoc<'a>>>,
    /// `status.conditions`: only `Ready` is read.
    #[serde(borrow)]
    pub conditions: Option<Vec<ConditionDoc<'a>>>,
}

/// `status.nodeInfo`, as far as it names the machine.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NodeInfoDoc<'a> {
    /// `machineID`: `/etc/machine-id`, as the kubelet reports it.
    #[serde(borrow, deserialize_with = "super::text::option", rename = "machineID")]
    pub machine_id: Option<Cow<'a, str>>,
    /// `systemUUID`: `/sys/class/dmi/id/product_uuid`, as the kubelet reports it.
    #[serde(
        borrow,
        deserialize_with = "super::text::option",
        rename = "systemUUID"
    )]
    pub system_uuid: Option<Cow<'a, str>>,
    /// `bootID`: `/proc/sys/kernel/random/boot_id`, as the kubelet reports it.
    #[serde(borrow, deserialize_with = "super::text::option", rename = "bootID")]
    pub boot_id: Option<Cow<'a, str>>,
}

/// One of `status.addresses`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AddressDoc<'a> {
    /// `type`: only `InternalIP`, `ExternalIP` and `Hostname` are read.
    #[serde(borrow, deserialize_with = "super::text::option", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    /// `address`: an IP address or a host name, as `type` says.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub address: Option<Cow<'a, str>>,
}

/// One of `status.conditions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConditionDoc<'a> {
    /// `type`: e.g. `Ready`, the only one read.
    #[serde(borrow, deserialize_with = "super::text::option", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    /// `status`: `True`, `False` or `Unknown`.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub status: Option<Cow<'a, str>>,
    /// `lastTransitionTime`, RFC 3339: when `status` last changed.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub last_transition_time: Option<Cow<'a, str>>,
    /// `lastHeartbeatTime`, RFC 3339: when the kubelet last wrote the condition.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub last_heartbeat_time: Option<Cow<'a, str>>,
}

/// Whether the node's kubelet is posting Ready, since when, and when it last said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// The Ready condition's `status` is `True`; false if it is anything else or missing.
    pub ready: bool,
    /// The Ready condition's `lastTransitionTime`.
    pub since: Option<Timestamp>,
    /// The Ready condition's `lastHeartbeatTime`: moved only by the kubelet's status
    /// writes (at least every 5 minutes from a live kubelet), never by its Lease.
    pub heartbeat: Option<Timestamp>,
}

impl Readiness {
    /// Whether a kubelet is running this node now: Ready, and its status written within
    /// `heartbeat_timeout`. Ready alone is no proof: the node lifecycle controller keeps
    /// a node Ready while its Lease is renewed, and a kubelet renews the Lease even
    /// while its own registration is refused. A heartbeat from the future (clock skew)
    /// counts as fresh.
    pub fn is_live(&self, now: Timestamp, heartbeat_timeout: SignedDuration) -> bool {
        self.ready
            && self
                .heartbeat
                .is_some_and(|beat| now.duration_since(beat) <= heartbeat_timeout)
    }
}

/// Addresses of one type kept per node: real kubelets report a handful; a node writing
/// hundreds of addresses into its own status cannot make them all its own.
pub const MAX_ADDRESSES_PER_TYPE: usize = 16;

/// Everything a Node says about which machine it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClaim {
    /// `metadata.name`: the Node's name, trimmed.
    pub name: NodeName,
    /// `metadata.uid`: tells one registration of a name from the next. Absent on CREATE.
    pub uid: Option<Arc<str>>,
    /// `metadata.resourceVersion`: orders two observations of this Node.
    pub resource_version: Option<Arc<str>>,
    /// `metadata.creationTimestamp`: absent on CREATE.
    pub created: Option<Timestamp>,
    /// `status.nodeInfo.machineID`, normalised; `None` when empty.
    pub machine_id: Option<MachineId>,
    /// `status.nodeInfo.systemUUID`, normalised; `None` when empty.
    pub system_uuid: Option<SystemUuid>,
    /// `status.nodeInfo.bootID`, normalised; `None` when empty.
    pub boot_id: Option<BootId>,
    /// `spec.providerID`, normalised; `None` when empty.
    pub provider_id: Option<ProviderId>,
    /// Parsed `InternalIP` addresses, deduplicated; at most [`MAX_ADDRESSES_PER_TYPE`].
    pub internal_ips: Vec<IpAddr>,
    /// Parsed `ExternalIP` addresses, deduplicated; at most [`MAX_ADDRESSES_PER_TYPE`].
    pub external_ips: Vec<IpAddr>,
    /// The `kubernetes.io/hostname` label and every `Hostname` address, deduplicated.
    pub hostnames: Vec<Hostname>,
    /// The Ready condition: its status, last transition and last heartbeat.
    pub readiness: Readiness,
    /// Labels only an admin can set (see [`is_admin_label`]): what an exemption by label
    /// reads on the stored Node.
    pub admin_labels: Vec<(Box<str>, Box<str>)>,
}

/// The label prefix NodeRestriction reserves to admins: a kubelet can neither set, change
/// nor remove a label under it (or under a subdomain of it) on its own Node.
pub const ADMIN_LABEL_PREFIX: &str = "node-restriction.kubernetes.io/";

/// A label under [`ADMIN_LABEL_PREFIX`], as NodeRestriction reads the prefix.
pub fn is_admin_label(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| {
        prefix == "node-restriction.kubernetes.io"
            || prefix.ends_with(".node-restriction.kubernetes.io")
    })
}

impl NodeClaim {
    /// The value of an admin label of this Node.
    pub fn admin_label(&self, key: &str) -> Option<&str> {
        self.admin_labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }
}

/// Adds a value once, up to [`MAX_ADDRESSES_PER_TYPE`] values.
fn push_unique<T: PartialEq>(values: &mut Vec<T>, value: T) {
    if values.len() < MAX_ADDRESSES_PER_TYPE && !values.contains(&value) {
        values.push(value);
    }
}

impl NodeClaim {
    /// Builds the claim of a decoded Node; `None` when the object has no name (such a
    /// Node cannot be stored, so it collides with nothing).
    pub fn from_doc(doc: &NodeDoc<'_>) -> Option<Self> {
        let meta = doc.metadata.as_ref()?;
        let name = meta
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())?;
        let status = doc.status.as_ref();
        let info = status.and_then(|s| s.node_info.as_ref());

        let mut internal_ips = Vec::new();
        let mut external_ips = Vec::new();
        let mut hostnames = Vec::new();
        if let Some(label) = meta.labels.as_ref().and_then(NodeLabelsDoc::hostname) {
            hostnames.extend(Hostname::parse(label));
        }
        let non_empty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(Arc::from);
        for address in status
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default()
        {
            let (Some(kind), Some(value)) = (address.kind.as_deref(), address.address.as_deref())
            else {
                continue;
            };
            match kind {
                "InternalIP" => {
                    if let Ok(ip) = value.trim().parse() {
                        push_unique(&mut internal_ips, ip);
                    }
                }
                "ExternalIP" => {
                    if let Ok(ip) = value.trim().parse() {
                        push_unique(&mut external_ips, ip);
                    }
                }
                "Hostname" => {
                    if let Some(host) = Hostname::parse(value) {
                        push_unique(&mut hostnames, host);
                    }
                }
                _ => {}
            }
        }

        Some(NodeClaim {
            name: NodeName::from(name),
            uid: non_empty(meta.uid.as_deref()),
            resource_version: non_empty(meta.resource_version.as_deref()),
            created: meta
                .creation_timestamp
                .as_deref()
                .and_then(|t| t.parse().ok()),
            machine_id: info
                .and_then(|i| i.machine_id.as_deref())
                .and_then(MachineId::parse),
            system_uuid: info
                .and_then(|i| i.system_uuid.as_deref())
                .and_then(SystemUuid::parse),
            boot_id: info
                .and_then(|i| i.boot_id.as_deref())
                .and_then(BootId::parse),
            provider_id: doc
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(ProviderId::parse),
            internal_ips,
            external_ips,
            hostnames,
            readiness: readiness(status),
            admin_labels: meta
                .labels
                .iter()
                .flat_map(|labels| labels.pairs.iter())
                .filter(|(key, _)| is_admin_label(key))
                .take(MAX_ADDRESSES_PER_TYPE)
                .map(|(key, value)| (Box::from(&**key), Box::from(&**value)))
                .collect(),
        })
    }
}

fn readiness(status: Option<&NodeStatusDoc<'_>>) -> Readiness {
    let ready = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| c.kind.as_deref() == Some("Ready"));
    match ready {
        None => Readiness::default(),
        Some(c) => Readiness {
            ready: c.status.as_deref() == Some("True"),
            since: c
                .last_transition_time
                .as_deref()
                .and_then(|t| t.parse().ok()),
            heartbeat: c
                .last_heartbeat_time
                .as_deref()
                .and_then(|t| t.parse().ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_a_node_borrows_its_strings_from_the_body() {
        let body = r#"{"metadata":{"name":"worker-1","labels":{"kubernetes.io/hostname":"worker-1"}},
            "status":{"nodeInfo":{"machineID":"9cbf8e2fbf5540cd8ff218ef016ba690"},
            "addresses":[{"type":"InternalIP","address":"10.0.0.11"}],
            "images":[{"names":["registry.k8s.io/etcd:3.5.4-0"],"sizeBytes":102157811}]}}"#;
        let doc: NodeDoc<'_> = serde_json::from_str(body).unwrap();
        let meta = doc.metadata.as_ref().unwrap();
        assert!(matches!(meta.name, Some(Cow::Borrowed("worker-1"))));
        let info = doc
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .unwrap();
        assert!(matches!(info.machine_id, Some(Cow::Borrowed(_))));
        let claim = NodeClaim::from_doc(&doc).unwrap();
        assert_eq!(
            claim.internal_ips,
            vec!["10.0.0.11".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_node_holds_a_bounded_number_of_addresses_of_each_type() {
        let addresses: Vec<serde_json::Value> = (0..200)
            .map(|i| serde_json::json!({"type": "InternalIP", "address": format!("10.1.{}.{}", i / 250, i % 250)}))
            .chain((0..50).map(|i| serde_json::json!({"type": "Hostname", "address": format!("h{i}")})))
            .collect();
        let body = serde_json::json!({
            "metadata": {"name": "worker-1", "labels": {"kubernetes.io/hostname": "worker-1"}},
            "status": {"addresses": addresses},
        })
        .to_string();
        let doc: NodeDoc<'_> = serde_json::from_str(&body).unwrap();
        let claim = NodeClaim::from_doc(&doc).unwrap();
        assert_eq!(claim.internal_ips.len(), MAX_ADDRESSES_PER_TYPE);
        assert_eq!(claim.hostnames.len(), MAX_ADDRESSES_PER_TYPE);
        assert_eq!(
            claim.hostnames[0].as_str(),
            "worker-1",
            "the label comes first"
        );
    }
}
