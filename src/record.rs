//! The NodeIdentity record and how an observation changes it. Pure: no I/O, time is
//! passed in. The recorder applies these functions to the latest stored object and
//! writes the result; every replica keeps of each record only the compact
//! [`LedgerEntry`] made by [`NodeIdentity::entry`], which is what the policy reads.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::CustomResource;
use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::{BootId, KeyBinding, KeyFingerprint, KubeletSigner, NodeClaim};
pub use crate::inventory::UNCLAIMED_RECORD_TTL;
use crate::inventory::{LedgerConflict, LedgerEntry, RecordedDigests};
pub use crate::policy::checks::two_kubelets::conflict_message;

/// The id of the check whose conflicts the ledger records.
pub const TWO_KUBELETS: &str = "two-kubelets";

/// Boots kept per node: enough to see an alternation, bounded so that a node rebooting
/// every day does not grow its record for ever.
pub const MAX_BOOTS: usize = 16;

/// Keys kept per node and signer; the oldest goes first.
pub const MAX_KEYS_PER_SIGNER: usize = 16;

/// Client certificates kept per node.
pub const MAX_CREDENTIAL_IDS: usize = 16;

/// How stale `lastSeen` may get before the recorder refreshes it: a bounded write rate
/// (at most one write per node per interval), not one per heartbeat.
pub const LAST_SEEN_INTERVAL: SignedDuration = SignedDuration::from_hours(1);

/// What the ledger knows about one node name: the machine that holds it, the keys and
/// certificates issued to it, its boots, and a conflict once two machines were seen
/// writing it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "nodeguard.io",
    version = "v1alpha1",
    kind = "NodeIdentity",
    plural = "nodeidentities",
    singular = "nodeidentity",
    shortname = "nid",
    status = "NodeIdentityStatus",
    printcolumn = r#"{"name":"Machine-ID","type":"string","jsonPath":".spec.machineID"}"#,
    printcolumn = r#"{"name":"Boot","type":"string","jsonPath":".status.currentBoot"}"#,
    printcolumn = r#"{"name":"Boots","type":"integer","jsonPath":".status.boots"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Conflict","type":"string","jsonPath":".status.conflict.check"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentitySpec {
    #[serde(rename = "machineID", default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(
        rename = "systemUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_uuid: Option<String>,
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<RecordedAddress>,
    /// Kubelet keys bound to this node by issued CSRs, client and serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<BoundKey>,
    /// Client certificates issued to this node, as the API server identifies a request
    /// made with one (`authentication.kubernetes.io/credential-id`).
    #[serde(
        rename = "credentialIDs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub credential_ids: Vec<RecordedCredential>,
    /// Boots in the order they were first seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boots: Vec<Boot>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RecordedAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundKey {
    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub fingerprint: String,
    pub signer: String,
    pub first_seen: Timestamp,
    /// The CSR the binding was learned from (gone about an hour after it was issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedCredential {
    /// `X509SHA256=<hex>`.
    pub id: String,
    pub first_seen: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    #[serde(rename = "bootID")]
    pub boot_id: String,
    /// The system UUID reported with this boot: tells two machines apart in a conflict.
    #[serde(
        rename = "systemUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_uuid: Option<String>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentityStatus {
    /// The boot the Node reports now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_boot: Option<String>,
    /// Counts for `kubectl get`.
    #[serde(default)]
    pub boots: u32,
    #[serde(default)]
    pub keys: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Conflict>,
    /// The Node's resourceVersion this record reflects: an observation of an older
    /// version of the Node (queued, or from a replica whose watch lags) is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_resource_version: Option<String>,
}

/// Two machines writing one node: the boot seen first is kept, the other refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// The check that found it (`two-kubelets`).
    pub check: String,
    pub kept_boot: String,
    pub refused_boot: String,
    pub detected: Timestamp,
    pub message: String,
}

/// A Node as the recorder sees it in a watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    pub name: String,
    pub uid: Option<String>,
    /// The Node's resourceVersion in this observation.
    pub resource_version: Option<String>,
    pub machine_id: Option<String>,
    pub system_uuid: Option<String>,
    pub provider_id: Option<String>,
    pub addresses: Vec<RecordedAddress>,
    pub boot_id: Option<String>,
}

impl NodeObservation {
    pub fn of(claim: &NodeClaim) -> Self {
        let mut addresses: Vec<RecordedAddress> = claim
            .internal_ips
            .iter()
            .map(|ip| ("InternalIP", ip))
            .chain(claim.external_ips.iter().map(|ip| ("ExternalIP", ip)))
            .map(|(kind, ip)| RecordedAddress {
                kind: kind.to_string(),
                address: ip.to_string(),
            })
            .collect();
        addresses.extend(claim.hostnames.iter().map(|host| RecordedAddress {
            kind: "Hostname".to_string(),
            address: host.to_string(),
        }));
        Self {
            name: claim.name.to_string(),
            uid: claim.uid.as_deref().map(str::to_string),
            resource_version: claim.resource_version.as_deref().map(str::to_string),
            machine_id: claim.machine_id.as_ref().map(|v| v.to_string()),
            system_uuid: claim.system_uuid.as_ref().map(|v| v.to_string()),
            provider_id: claim.provider_id.as_ref().map(|v| v.to_string()),
            addresses,
            boot_id: claim.boot_id.as_ref().map(|v| v.to_string()),
        }
    }
}

impl NodeObservation {
    /// The same identity as `other`, whatever the versions: a heartbeat changes the
    /// Node's version, never what the ledger records.
    pub fn same_identity(&self, other: &NodeObservation) -> bool {
        // Every field but the version, named so that a field added later is compared too.
        let NodeObservation {
            name,
            uid,
            resource_version: _,
            machine_id,
            system_uuid,
            provider_id,
            addresses,
            boot_id,
        } = self;
        (
            name,
            uid,
            machine_id,
            system_uuid,
            provider_id,
            addresses,
            boot_id,
        ) == (
            &other.name,
            &other.uid,
            &other.machine_id,
            &other.system_uuid,
            &other.provider_id,
            &other.addresses,
            &other.boot_id,
        )
    }
}

/// How much an observation of a Node can be trusted to show its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A watch event: current when it was sent, but possibly queued since.
    Watch,
    /// The inventory's copy compared on a resync: possibly older than what the record
    /// holds (a new leader's watch can lag what the old leader wrote). It never moves
    /// the record back to an earlier boot, nor records a conflict.
    Resync,
    /// A fresh read of the Node from the API server, made to confirm a boot that came
    /// back: only this records a conflict.
    Confirmed,
}

/// An issued kubelet CSR as the recorder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyObservation {
    pub csr: String,
    pub binding: KeyBinding,
}

/// What applying an observation did to a record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// The record differs and must be written.
    pub changed: bool,
    /// A conflict found by this observation (already stored in the record).
    pub new_conflict: Option<Conflict>,
    /// An earlier boot came back in a watch event: nothing about the boot was applied;
    /// the Node must be read again and the read applied as [`Evidence::Confirmed`].
    pub needs_confirmation: bool,
}

impl Change {
    fn merge(&mut self, other: Change) {
        self.changed |= other.changed;
        self.needs_confirmation |= other.needs_confirmation;
        if other.new_conflict.is_some() {
            self.new_conflict = other.new_conflict;
        }
    }

    fn changed() -> Self {
        Change {
            changed: true,
            ..Change::default()
        }
    }
}

/// `a` is an older version of the same object than `b`. resourceVersions are etcd
/// revisions: integers that only grow. One that is not an integer orders nothing.
fn older_or_same(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|a| a.parse::<u64>().ok()),
        b.and_then(|b| b.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a <= b,
        _ => false,
    }
}

/// The note of the Warning Event on the Node: for `kubectl describe node`.
pub fn conflict_note(node: &str, conflict: &Conflict) -> String {
    format!(
        "Two machines are writing node {node} with its credentials: boot {} keeps it, boot \
         {} is refused from now on. On the refused machine, cat \
         /proc/sys/kernel/random/boot_id shows {}; give it its own identity, then run \
         nodeguard forget {node}.",
        conflict.kept_boot, conflict.refused_boot, conflict.refused_boot
    )
}

impl NodeIdentity {
    /// An empty record for `name`, before any observation.
    pub fn blank(name: &str) -> Self {
        let mut record = NodeIdentity::new(name, NodeIdentitySpec::default());
        record.status = Some(NodeIdentityStatus::default());
        record
    }

    pub fn conflict(&self) -> Option<&Conflict> {
        self.status.as_ref().and_then(|s| s.conflict.as_ref())
    }

    pub fn current_boot(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.current_boot.as_deref())
    }

    /// A record that no Node ever claimed (made from a CSR, no owner reference) and
    /// that is older than `ttl`, while no Node of its name exists: to be removed.
    /// Records with an owner go with their Node, through the garbage collector.
    pub fn is_unclaimed(&self, node_exists: bool, now: Timestamp, ttl: SignedDuration) -> bool {
        if node_exists || self.owner_uid().is_some() {
            return false;
        }
        self.metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|created| now.duration_since(created.0) >= ttl)
    }

    /// Whether this record can be the one of the Node with `uid`: it is unless both
    /// uids are known and differ (a record left by an earlier Node of that name).
    pub fn may_belong_to(&self, uid: Option<&str>) -> bool {
        match (self.owner_uid(), uid) {
            (Some(owner), Some(uid)) => owner == uid,
            _ => true,
        }
    }

    /// The uid of the Node this record belongs to, once known.
    pub fn owner_uid(&self) -> Option<&str> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Node" && o.api_version == "v1")
            .map(|o| o.uid.as_str())
    }

    /// Position of a boot in first-seen order. Recorded boot ids are already normalised
    /// (they come from `BootId`), so this compares text without parsing again.
    pub fn boot_index(&self, boot: &BootId) -> Option<usize> {
        self.spec
            .boots
            .iter()
            .position(|b| b.boot_id == boot.as_str())
    }

    /// The keys bound to this node, parsed.
    pub fn key_fingerprints(&self) -> impl Iterator<Item = KeyFingerprint> + '_ {
        self.spec
            .keys
            .iter()
            .filter_map(|k| parse_fingerprint(&k.fingerprint))
    }

    /// What a replica keeps of this record: `None` for a record without a name.
    pub fn entry(&self) -> Option<LedgerEntry> {
        let name = self.metadata.name.as_deref().filter(|n| !n.is_empty())?;
        let boxed = |value: &Option<String>| value.as_deref().map(Box::<str>::from);
        let status = self.status.as_ref();
        let current = self.current_boot();
        let keys = self
            .spec
            .keys
            .iter()
            .filter_map(|key| {
                let signer = KubeletSigner::from_name(&key.signer)?;
                Some((parse_fingerprint(&key.fingerprint)?, signer))
            })
            .collect();
        let refresh_due = self
            .spec
            .boots
            .iter()
            .find(|b| Some(b.boot_id.as_str()) == current)
            .and_then(|b| b.last_seen.checked_add(LAST_SEEN_INTERVAL).ok());
        let consistent = status.is_some_and(|status| {
            usize::try_from(status.boots).ok() == Some(self.spec.boots.len())
                && usize::try_from(status.keys).ok() == Some(self.spec.keys.len())
        });
        Some(LedgerEntry {
            name: name.into(),
            uid: boxed(&self.metadata.uid),
            resource_version: boxed(&self.metadata.resource_version),
            created: self.metadata.creation_timestamp.as_ref().map(|t| t.0),
            owner: self.owner_uid().map(Box::from),
            boots: self
                .spec
                .boots
                .iter()
                .filter_map(|b| BootId::parse(&b.boot_id))
                .collect(),
            current_boot: current.and_then(BootId::parse),
            keys,
            conflict: self.conflict().map(|c| {
                Box::new(LedgerConflict {
                    check: c.check.as_str().into(),
                    kept_boot: c.kept_boot.as_str().into(),
                    refused_boot: c.refused_boot.as_str().into(),
                    detected: c.detected,
                    message: c.message.as_str().into(),
                })
            }),
            digests: RecordedDigests {
                machine: machine_digest(MachineFields {
                    owner: self.owner_uid(),
                    machine_id: self.spec.machine_id.as_deref(),
                    system_uuid: self.spec.system_uuid.as_deref(),
                    provider_id: self.spec.provider_id.as_deref(),
                    addresses: &self.spec.addresses,
                    boot: current,
                }),
                refresh_due,
                credentials: self
                    .spec
                    .credential_ids
                    .iter()
                    .map(|c| digest(&c.id))
                    .collect(),
                consistent,
            },
        })
    }

    /// Applies what an observation of the Node shows. An observation of a version of
    /// the Node older than the one the record reflects changes nothing; an earlier boot
    /// coming back is recorded as a conflict only on [`Evidence::Confirmed`].
    pub fn observe_node(
        &mut self,
        node: &NodeObservation,
        now: Timestamp,
        evidence: Evidence,
    ) -> Change {
        if self.may_belong_to(node.uid.as_deref())
            && older_or_same(
                node.resource_version.as_deref(),
                self.status
                    .as_ref()
                    .and_then(|s| s.node_resource_version.as_deref()),
            )
        {
            return Change::default();
        }
        let mut change = Change::default();
        if let Some(uid) = node.uid.as_deref() {
            change.merge(self.own_by(&node.name, uid));
        }
        if let Some(boot) = node.boot_id.as_deref()
            && self.is_return(boot)
            && self.conflict().is_none()
        {
            match evidence {
                // Nothing of this observation is applied: the fresh read will be.
                Evidence::Watch => {
                    change.needs_confirmation = true;
                    return change;
                }
                // Possibly stale: neither an alternation nor a boot to move back to.
                Evidence::Resync => return change,
                Evidence::Confirmed => {}
            }
        }
        let refused = self
            .conflict()
            .is_some_and(|c| node.boot_id.as_deref() == Some(c.refused_boot.as_str()));
        // The refused machine's state can only be stored while nodeguard is not
        // admitting (down, or failing open): never let it rewrite the kept identity.
        if !refused {
            change.merge(self.set_machine(node));
        }
        if let Some(boot) = node.boot_id.as_deref() {
            change.merge(self.observe_boot(&node.name, boot, node.system_uuid.as_deref(), now));
        }
        change.merge(self.refresh_counts());
        // Stored with the next write: on its own not worth one, since a later
        // observation carries a higher version anyway.
        if node.resource_version.is_some() {
            let status = self.status.get_or_insert_with(Default::default);
            status
                .node_resource_version
                .clone_from(&node.resource_version);
        }
        change
    }

    /// `boot` is one this node left earlier: known, and not the current one.
    fn is_return(&self, boot: &str) -> bool {
        let current = self.current_boot();
        current.is_some()
            && current != Some(boot)
            && self.spec.boots.iter().any(|b| b.boot_id == boot)
    }

    /// Applies an issued kubelet CSR: binds its key and, for a client certificate, its
    /// credential id.
    pub fn observe_key(&mut self, key: &KeyObservation, now: Timestamp) -> Change {
        let mut change = Change::default();
        let binding = &key.binding;
        let fingerprint = binding.fingerprint.to_string();
        let signer = binding.signer.name();
        if !self
            .spec
            .keys
            .iter()
            .any(|k| k.fingerprint == fingerprint && k.signer == signer)
        {
            self.spec.keys.push(BoundKey {
                fingerprint,
                signer: signer.to_string(),
                first_seen: now,
                csr: Some(key.csr.clone()),
            });
            let (mut same, other): (Vec<BoundKey>, Vec<BoundKey>) =
                std::mem::take(&mut self.spec.keys)
                    .into_iter()
                    .partition(|k| k.signer == signer);
            trim_oldest(&mut same, MAX_KEYS_PER_SIGNER, |_| true);
            self.spec.keys = other;
            self.spec.keys.append(&mut same);
            change = Change::changed();
        }
        if let Some(id) = binding.credential_id.as_deref()
            && !self.spec.credential_ids.iter().any(|c| c.id == id)
        {
            self.spec.credential_ids.push(RecordedCredential {
                id: id.to_string(),
                first_seen: now,
                csr: Some(key.csr.clone()),
            });
            trim_oldest(&mut self.spec.credential_ids, MAX_CREDENTIAL_IDS, |_| true);
            change = Change::changed();
        }
        change.merge(self.refresh_counts());
        change
    }

    /// Clears a conflict and the boot history but one boot, after the copy was given
    /// its own identity: the kept boot of the conflict (the refused one may be the last
    /// the Node reported, and must not become the machine taken as the node's), or
    /// the current boot when there is no conflict. Returns the conflict it cleared.
    pub fn forget(&mut self) -> Option<Conflict> {
        let status = self.status.get_or_insert_with(Default::default);
        let cleared = status.conflict.take();
        let kept = match &cleared {
            Some(conflict) => Some(conflict.kept_boot.clone()),
            None => status.current_boot.clone(),
        };
        status.current_boot.clone_from(&kept);
        self.spec
            .boots
            .retain(|b| Some(b.boot_id.as_str()) == kept.as_deref());
        self.refresh_counts();
        cleared
    }

    /// Ties the record to the Node registered under its name. A record owned by an
    /// earlier Node of the same name (deleted, its record not yet collected) is stale:
    /// it starts over, since deleting a Node is how an admin releases a name.
    fn own_by(&mut self, name: &str, uid: &str) -> Change {
        match self.owner_uid() {
            Some(owner) if owner == uid => Change::default(),
            Some(_) => {
                let metadata = std::mem::take(&mut self.metadata);
                *self = NodeIdentity::blank(name);
                self.metadata.resource_version = metadata.resource_version;
                self.metadata.uid = metadata.uid;
                self.metadata.creation_timestamp = metadata.creation_timestamp;
                self.set_owner(name, uid);
                Change::changed()
            }
            None => {
                self.set_owner(name, uid);
                Change::changed()
            }
        }
    }

    fn set_owner(&mut self, name: &str, uid: &str) {
        self.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".to_string(),
            kind: "Node".to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            controller: None,
            block_owner_deletion: None,
        }]);
    }

    fn set_machine(&mut self, node: &NodeObservation) -> Change {
        let spec = &mut self.spec;
        let mut changed = false;
        for (field, value) in [
            (&mut spec.machine_id, &node.machine_id),
            (&mut spec.system_uuid, &node.system_uuid),
            (&mut spec.provider_id, &node.provider_id),
        ] {
            if value.is_some() && field != value {
                field.clone_from(value);
                changed = true;
            }
        }
        if !node.addresses.is_empty() && spec.addresses != node.addresses {
            spec.addresses.clone_from(&node.addresses);
            changed = true;
        }
        Change {
            changed,
            ..Change::default()
        }
    }

    /// A boot seen for the first time is a reboot; the current boot only refreshes
    /// `lastSeen` now and then; an earlier boot coming back is two machines, since a
    /// machine never returns to a boot id it has left.
    fn observe_boot(
        &mut self,
        node: &str,
        boot: &str,
        system_uuid: Option<&str>,
        now: Timestamp,
    ) -> Change {
        let status = self.status.get_or_insert_with(Default::default);
        let current = status.current_boot.clone();
        let boots = &mut self.spec.boots;
        let Some(seen) = boots.iter().position(|b| b.boot_id == boot) else {
            boots.push(Boot {
                boot_id: boot.to_string(),
                system_uuid: system_uuid.map(str::to_string),
                first_seen: now,
                last_seen: now,
            });
            let conflict_boots = status
                .conflict
                .as_ref()
                .map(|c| [c.kept_boot.clone(), c.refused_boot.clone()]);
            trim_oldest(boots, MAX_BOOTS, |b| {
                conflict_boots
                    .as_ref()
                    .is_none_or(|kept| !kept.contains(&b.boot_id))
            });
            status.current_boot = Some(boot.to_string());
            return Change::changed();
        };
        if current.as_deref() == Some(boot) {
            let entry = &mut boots[seen];
            if now.duration_since(entry.last_seen) >= LAST_SEEN_INTERVAL {
                entry.last_seen = now;
                return Change::changed();
            }
            return Change::default();
        }
        boots[seen].last_seen = now;
        status.current_boot = Some(boot.to_string());
        let left = current
            .as_deref()
            .and_then(|c| boots.iter().position(|b| b.boot_id == c));
        let mut change = Change::changed();
        if let Some(left) = left
            && status.conflict.is_none()
        {
            // The boot first seen earlier is the machine that registered the name.
            let (kept, refused) = if seen < left {
                (seen, left)
            } else {
                (left, seen)
            };
            let kept = boots[kept].boot_id.clone();
            let refused = boots[refused].boot_id.clone();
            let conflict = Conflict {
                check: TWO_KUBELETS.to_string(),
                message: conflict_message(node, &refused, &kept),
                kept_boot: kept,
                refused_boot: refused,
                detected: now,
            };
            status.conflict = Some(conflict.clone());
            change.new_conflict = Some(conflict);
        }
        change
    }

    fn refresh_counts(&mut self) -> Change {
        let boots = u32::try_from(self.spec.boots.len()).unwrap_or(u32::MAX);
        let keys = u32::try_from(self.spec.keys.len()).unwrap_or(u32::MAX);
        let status = self.status.get_or_insert_with(Default::default);
        if status.boots == boots && status.keys == keys {
            return Change::default();
        }
        status.boots = boots;
        status.keys = keys;
        Change::changed()
    }
}

/// The fields of a record, or of an observation, that an observation of the Node
/// compares, for [`machine_digest`].
struct MachineFields<'a> {
    owner: Option<&'a str>,
    machine_id: Option<&'a str>,
    system_uuid: Option<&'a str>,
    provider_id: Option<&'a str>,
    addresses: &'a [RecordedAddress],
    boot: Option<&'a str>,
}

fn machine_digest(fields: MachineFields<'_>) -> u64 {
    let mut hasher = DefaultHasher::new();
    let MachineFields {
        owner,
        machine_id,
        system_uuid,
        provider_id,
        addresses,
        boot,
    } = fields;
    (owner, machine_id, system_uuid, provider_id, boot).hash(&mut hasher);
    for address in addresses {
        (&address.kind, &address.address).hash(&mut hasher);
    }
    hasher.finish()
}

fn digest(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Whether observing `node` at `now` certainly leaves the record behind `entry`
/// unchanged: the same owner, machine, addresses and current boot, no conflict, and the
/// boot's `lastSeen` not yet due. Anything else (even what would change nothing) is
/// answered `false`, and the recorder reads the record and applies the observation.
pub fn node_leaves_unchanged(entry: &LedgerEntry, node: &NodeObservation, now: Timestamp) -> bool {
    let digests = &entry.digests;
    digests.consistent
        && entry.conflict.is_none()
        && node.boot_id.is_some()
        && digests.refresh_due.is_some_and(|due| now < due)
        && machine_digest(MachineFields {
            owner: node.uid.as_deref(),
            machine_id: node.machine_id.as_deref(),
            system_uuid: node.system_uuid.as_deref(),
            provider_id: node.provider_id.as_deref(),
            addresses: &node.addresses,
            boot: node.boot_id.as_deref(),
        }) == digests.machine
}

/// Whether the record behind `entry` already binds the key of `key` and its
/// credential id.
pub fn key_leaves_unchanged(entry: &LedgerEntry, key: &KeyObservation) -> bool {
    let binding = &key.binding;
    entry.digests.consistent
        && entry.keys.iter().any(|(fingerprint, signer)| {
            *fingerprint == binding.fingerprint && *signer == binding.signer
        })
        && binding
            .credential_id
            .as_deref()
            .is_none_or(|id| entry.digests.credentials.contains(&digest(id)))
}

/// Drops the oldest `removable` entries until at most `max` remain.
fn trim_oldest<T>(entries: &mut Vec<T>, max: usize, removable: impl Fn(&T) -> bool) {
    let mut excess = entries.len().saturating_sub(max);
    entries.retain(|e| {
        if excess > 0 && removable(e) {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

pub fn parse_fingerprint(hex_text: &str) -> Option<KeyFingerprint> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut bytes).ok()?;
    Some(KeyFingerprint(bytes))
}

/// The CRD as the API server takes it. The status is written with the rest of the
/// record in one optimistic-concurrency write, so it is an ordinary field here, not a
/// subresource.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = NodeIdentity::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    let labels: BTreeMap<String, String> = [(
        "app.kubernetes.io/name".to_string(),
        "nodeguard".to_string(),
    )]
    .into();
    crd.metadata = ObjectMeta {
        labels: Some(labels),
        ..crd.metadata
    };
    crd
}

/// The CRD as YAML, the way `deploy/base/crd.yaml` holds it.
pub fn crd_yaml() -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(&crd())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KubeletSigner;

    const A: &str = "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60";
    const B: &str = "d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00";
    const C: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_795_000_000 + seconds).unwrap()
    }

    fn node(boot: &str) -> NodeObservation {
        NodeObservation {
            name: "worker-1".into(),
            uid: Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f".into()),
            resource_version: None,
            machine_id: Some("11c1f8e2fbf5540cd8ff218ef016ba11".into()),
            system_uuid: Some("1139a350-3cd4-400f-875d-c270379811b0".into()),
            provider_id: None,
            addresses: vec![RecordedAddress {
                kind: "InternalIP".into(),
                address: "10.0.0.11".into(),
            }],
            boot_id: Some(boot.into()),
        }
    }

    fn replay(boots: &[&str]) -> (NodeIdentity, Vec<Change>) {
        let mut record = NodeIdentity::blank("worker-1");
        let changes = boots
            .iter()
            .enumerate()
            .map(|(i, boot)| {
                record.observe_node(&node(boot), at(10 * i as i64), Evidence::Confirmed)
            })
            .collect();
        (record, changes)
    }

    #[test]
    fn the_first_observation_records_the_machine_its_boot_and_its_owner() {
        let (record, changes) = replay(&[A]);
        assert!(changes[0].changed);
        assert_eq!(
            record.owner_uid(),
            Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f")
        );
        assert_eq!(
            record.spec.machine_id.as_deref(),
            Some("11c1f8e2fbf5540cd8ff218ef016ba11")
        );
        assert_eq!(record.current_boot(), Some(A));
        assert_eq!(record.status.as_ref().unwrap().boots, 1);
    }

    #[test]
    fn a_kubelet_restart_within_one_boot_records_nothing() {
        let (_, changes) = replay(&[A, A, A]);
        assert_eq!(changes[1], Change::default());
        assert_eq!(changes[2], Change::default());
    }

    #[test]
    fn a_reboot_appends_a_boot_and_never_conflicts() {
        let (record, changes) = replay(&[A, B, B, C]);
        assert!(changes.iter().all(|c| c.new_conflict.is_none()));
        assert_eq!(
            record
                .spec
                .boots
                .iter()
                .map(|b| b.boot_id.as_str())
                .collect::<Vec<_>>(),
            [A, B, C]
        );
        assert!(record.conflict().is_none());
    }

    #[test]
    fn a_boot_coming_back_is_a_conflict_that_keeps_the_earlier_boot() {
        let (record, changes) = replay(&[A, B, A]);
        let conflict = changes[2]
            .new_conflict
            .clone()
            .expect("A → B → A is a conflict");
        assert_eq!(conflict.kept_boot, A);
        assert_eq!(conflict.refused_boot, B);
        assert_eq!(conflict.check, TWO_KUBELETS);
        assert_eq!(conflict.detected, at(20));
        assert_eq!(record.conflict(), Some(&conflict));
        // Found once: the alternation going on (while nodeguard fails open) adds nothing.
        let mut record = record;
        assert!(
            record
                .observe_node(&node(B), at(30), Evidence::Confirmed)
                .new_conflict
                .is_none()
        );
        assert!(
            record
                .observe_node(&node(A), at(40), Evidence::Confirmed)
                .new_conflict
                .is_none()
        );
        assert_eq!(record.conflict().unwrap().refused_boot, B);
    }

    #[test]
    fn the_clone_coming_back_first_still_refuses_the_later_boot() {
        // Seen: A, B, C (reboot of the clone?) then B again: B and C alternate; B was
        // first seen before C, so C is the later machine.
        let (record, changes) = replay(&[A, B, C, B]);
        let conflict = changes[3].new_conflict.clone().unwrap();
        assert_eq!(
            (conflict.kept_boot.as_str(), conflict.refused_boot.as_str()),
            (B, C)
        );
        assert_eq!(record.current_boot(), Some(B));
    }

    #[test]
    fn last_seen_is_refreshed_at_a_bounded_rate() {
        let mut record = NodeIdentity::blank("worker-1");
        record.observe_node(&node(A), at(0), Evidence::Confirmed);
        assert!(
            !record
                .observe_node(&node(A), at(600), Evidence::Confirmed)
                .changed
        );
        let later = at(0) + LAST_SEEN_INTERVAL;
        assert!(
            record
                .observe_node(&node(A), later, Evidence::Confirmed)
                .changed
        );
        assert_eq!(record.spec.boots[0].last_seen, later);
        assert_eq!(record.spec.boots[0].first_seen, at(0));
    }

    #[test]
    fn a_record_of_an_earlier_node_of_that_name_starts_over() {
        let (mut record, _) = replay(&[A, B, A]);
        let mut successor = node(C);
        successor.uid = Some("0b7e3c55-0000-4000-8000-000000000002".into());
        assert!(
            record
                .observe_node(&successor, at(100), Evidence::Watch)
                .changed
        );
        assert!(record.conflict().is_none());
        assert_eq!(record.spec.boots.len(), 1);
        assert_eq!(
            record.owner_uid(),
            Some("0b7e3c55-0000-4000-8000-000000000002")
        );
    }

    #[test]
    fn the_refused_machine_never_rewrites_the_kept_identity() {
        let (mut record, _) = replay(&[A, B, A]);
        let mut clone = node(B);
        clone.system_uuid = Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into());
        record.observe_node(&clone, at(100), Evidence::Watch);
        assert_eq!(
            record.spec.system_uuid.as_deref(),
            Some("1139a350-3cd4-400f-875d-c270379811b0")
        );
    }

    #[test]
    fn boots_are_bounded_but_a_conflict_s_boots_are_kept() {
        let mut boots: Vec<String> = vec![A.into(), B.into(), A.into()];
        boots.extend((0..40).map(|i| format!("00000000-0000-4000-8000-{i:012}")));
        let refs: Vec<&str> = boots.iter().map(String::as_str).collect();
        let (record, _) = replay(&refs);
        assert_eq!(record.spec.boots.len(), MAX_BOOTS);
        assert!(record.spec.boots.iter().any(|b| b.boot_id == A));
        assert!(record.spec.boots.iter().any(|b| b.boot_id == B));
    }

    fn key(byte: u8, signer: KubeletSigner, credential: Option<&str>) -> KeyObservation {
        KeyObservation {
            csr: format!("csr-{byte:02x}"),
            binding: KeyBinding {
                node: "worker-1".into(),
                fingerprint: KeyFingerprint([byte; 32]),
                signer,
                credential_id: credential.map(Into::into),
            },
        }
    }

    #[test]
    fn an_issued_key_is_bound_once_with_its_credential_id() {
        let mut record = NodeIdentity::blank("worker-1");
        let client = key(7, KubeletSigner::Client, Some("X509SHA256=ab12"));
        assert!(record.observe_key(&client, at(0)).changed);
        assert!(!record.observe_key(&client, at(10)).changed);
        assert_eq!(record.spec.keys.len(), 1);
        assert_eq!(record.spec.keys[0].fingerprint, "07".repeat(32));
        assert_eq!(record.spec.keys[0].csr.as_deref(), Some("csr-07"));
        assert_eq!(record.spec.credential_ids[0].id, "X509SHA256=ab12");
        assert_eq!(
            record.key_fingerprints().collect::<Vec<_>>(),
            [KeyFingerprint([7; 32])]
        );
        // The same key for serving is a second binding.
        assert!(
            record
                .observe_key(&key(7, KubeletSigner::Serving, None), at(20))
                .changed
        );
        assert_eq!(record.status.as_ref().unwrap().keys, 2);
    }

    #[test]
    fn keys_are_bounded_per_signer_dropping_the_oldest() {
        let mut record = NodeIdentity::blank("worker-1");
        record.observe_key(&key(200, KubeletSigner::Serving, None), at(0));
        for byte in 0..20 {
            record.observe_key(&key(byte, KubeletSigner::Client, None), at(i64::from(byte)));
        }
        let client: Vec<_> = record
            .spec
            .keys
            .iter()
            .filter(|k| k.signer == KubeletSigner::Client.name())
            .collect();
        assert_eq!(client.len(), MAX_KEYS_PER_SIGNER);
        assert_eq!(client[0].fingerprint, hex::encode([4u8; 32]));
        assert!(
            record
                .spec
                .keys
                .iter()
                .any(|k| k.signer == KubeletSigner::Serving.name())
        );
    }

    #[test]
    fn forget_clears_the_conflict_and_the_boots_before_the_current_one() {
        let (mut record, _) = replay(&[A, B, A]);
        let cleared = record.forget().expect("there was a conflict");
        assert_eq!(cleared.refused_boot, B);
        assert!(record.conflict().is_none());
        assert_eq!(
            record
                .spec
                .boots
                .iter()
                .map(|b| b.boot_id.as_str())
                .collect::<Vec<_>>(),
            [A]
        );
        // The copy, still running, would be seen as a reboot again, then as a conflict.
        assert!(
            record
                .observe_node(&node(B), at(100), Evidence::Confirmed)
                .new_conflict
                .is_none()
        );
        assert!(
            record
                .observe_node(&node(A), at(110), Evidence::Confirmed)
                .new_conflict
                .is_some()
        );
    }

    #[test]
    fn the_record_round_trips_through_json_as_the_api_server_stores_it() {
        let (record, _) = replay(&[A, B, A]);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["apiVersion"], "nodeguard.io/v1alpha1");
        assert_eq!(json["kind"], "NodeIdentity");
        assert_eq!(json["spec"]["boots"][1]["bootID"], B);
        assert_eq!(json["status"]["conflict"]["refusedBoot"], B);
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Node");
        let back: NodeIdentity = serde_json::from_value(json).unwrap();
        assert_eq!((back.spec, back.status), (record.spec, record.status));
    }

    #[test]
    fn the_entry_keeps_what_the_policy_reads_and_nothing_of_the_metadata_else() {
        let (mut record, _) = replay(&[A, B, A]);
        record.observe_key(
            &key(3, KubeletSigner::Client, Some("X509SHA256=ab")),
            at(40),
        );
        record.metadata.uid = Some("record-uid".into());
        record.metadata.resource_version = Some("812".into());
        let entry = record.entry().unwrap();
        assert_eq!(&*entry.name, "worker-1");
        assert_eq!(
            entry.owner.as_deref(),
            Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f")
        );
        assert_eq!(entry.uid.as_deref(), Some("record-uid"));
        assert_eq!(entry.resource_version.as_deref(), Some("812"));
        let boots: Vec<&str> = entry.boots.iter().map(|b| b.as_str()).collect();
        assert_eq!(boots, [A, B]);
        assert_eq!(entry.current_boot.as_ref().map(|b| b.as_str()), Some(A));
        assert_eq!(
            entry.keys[..],
            [(KeyFingerprint([3; 32]), KubeletSigner::Client)]
        );
        let conflict = entry.conflict().unwrap();
        assert_eq!((&*conflict.kept_boot, &*conflict.refused_boot), (A, B));
        assert_eq!(&*conflict.message, record.conflict().unwrap().message);
        assert!(
            NodeIdentity::blank("").entry().is_none(),
            "a record without a name"
        );
    }

    /// A small deterministic generator, so that a failure replays.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, sides: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % sides
        }

        fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
            &from[self.roll(from.len() as u64) as usize]
        }
    }

    fn random_node(dice: &mut Dice) -> NodeObservation {
        let maybe = |dice: &mut Dice, values: &[&str]| {
            let value = *dice.pick(values);
            (!value.is_empty()).then(|| value.to_string())
        };
        let boot = *dice.pick(&[A, A, A, B, C]);
        let mut node = node(boot);
        node.uid = maybe(dice, &["uid-1", "uid-1", "uid-1", "uid-2", ""]);
        node.machine_id = maybe(
            dice,
            &[
                "11c1f8e2fbf5540cd8ff218ef016ba11",
                "",
                "22c1f8e2fbf5540cd8ff218ef016ba22",
            ],
        );
        node.system_uuid = maybe(dice, &["1139a350-3cd4-400f-875d-c270379811b0", ""]);
        node.provider_id = maybe(dice, &["", "aws:///eu-west-1a/i-0abc"]);
        if dice.roll(4) == 0 {
            node.addresses.clear();
        } else if dice.roll(4) == 0 {
            node.addresses[0].address = "10.0.0.12".into();
        }
        if dice.roll(8) == 0 {
            node.boot_id = None;
        }
        node.resource_version = Some(dice.roll(50).to_string());
        node
    }

    /// Whatever the record and the observation, "unchanged" is never said of an
    /// observation that changes the record (a missed write would be a missed clone);
    /// and it is said of the steady state, a node seen again as it is recorded.
    #[test]
    fn the_entry_says_unchanged_only_of_what_changes_nothing() {
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        let mut said_unchanged = 0;
        for round in 0..400 {
            let mut record = NodeIdentity::blank("worker-1");
            let mut now = at(0);
            for _ in 0..dice.roll(12) {
                now += SignedDuration::from_mins(dice.roll(90) as i64);
                let evidence =
                    *dice.pick(&[Evidence::Watch, Evidence::Resync, Evidence::Confirmed]);
                record.observe_node(&random_node(&mut dice), now, evidence);
                if dice.roll(3) == 0 {
                    let credential =
                        *dice.pick(&[None, Some("X509SHA256=01"), Some("X509SHA256=02")]);
                    let signer = *dice.pick(&[KubeletSigner::Client, KubeletSigner::Serving]);
                    record.observe_key(&key(dice.roll(3) as u8, signer, credential), now);
                }
            }
            let entry = record.entry().unwrap();
            for _ in 0..20 {
                let later = now + SignedDuration::from_mins(dice.roll(90) as i64);
                let evidence =
                    *dice.pick(&[Evidence::Watch, Evidence::Resync, Evidence::Confirmed]);
                let node = random_node(&mut dice);
                if node_leaves_unchanged(&entry, &node, later) {
                    said_unchanged += 1;
                    let change = record.clone().observe_node(&node, later, evidence);
                    assert!(
                        !change.changed && !change.needs_confirmation,
                        "round {round}: {node:?} at {later} changes {record:?}"
                    );
                }
                let credential = *dice.pick(&[None, Some("X509SHA256=01"), Some("X509SHA256=02")]);
                let signer = *dice.pick(&[KubeletSigner::Client, KubeletSigner::Serving]);
                let key = key(dice.roll(3) as u8, signer, credential);
                if key_leaves_unchanged(&entry, &key) {
                    said_unchanged += 1;
                    let change = record.clone().observe_key(&key, later);
                    assert!(!change.changed, "round {round}: {key:?} changes {record:?}");
                }
            }
        }
        assert!(
            said_unchanged > 500,
            "only {said_unchanged} observations found unchanged"
        );

        // The steady state: the node as recorded, within the hour.
        let (mut record, _) = replay(&[A]);
        record.observe_key(&key(1, KubeletSigner::Client, Some("X509SHA256=01")), at(5));
        let entry = record.entry().unwrap();
        assert!(node_leaves_unchanged(&entry, &node(A), at(30 * 60)));
        assert!(key_leaves_unchanged(
            &entry,
            &key(1, KubeletSigner::Client, Some("X509SHA256=01"))
        ));
        // Due for a lastSeen refresh, a reboot, a new address, a new key: not unchanged.
        assert!(!node_leaves_unchanged(&entry, &node(A), at(61 * 60)));
        assert!(!node_leaves_unchanged(&entry, &node(B), at(60)));
        let mut moved = node(A);
        moved.addresses[0].address = "10.0.0.12".into();
        assert!(!node_leaves_unchanged(&entry, &moved, at(60)));
        assert!(!key_leaves_unchanged(
            &entry,
            &key(2, KubeletSigner::Client, None)
        ));
        assert!(!key_leaves_unchanged(
            &entry,
            &key(1, KubeletSigner::Serving, None)
        ));
    }

    #[test]
    fn the_shipped_crd_is_the_one_the_code_defines() {
        let shipped = include_str!("../deploy/base/crd.yaml");
        assert_eq!(
            shipped,
            crd_yaml().unwrap(),
            "deploy/base/crd.yaml is stale: run `cargo run -- crd > deploy/base/crd.yaml`"
        );
    }

    fn at_version(boot: &str, version: u64) -> NodeObservation {
        NodeObservation {
            resource_version: Some(version.to_string()),
            ..node(boot)
        }
    }

    #[test]
    fn a_boot_coming_back_in_a_watch_event_waits_for_a_fresh_read() {
        let mut record = NodeIdentity::blank("worker-1");
        record.observe_node(&at_version(A, 100), at(0), Evidence::Watch);
        record.observe_node(&at_version(B, 110), at(10), Evidence::Watch);
        let change = record.observe_node(&at_version(A, 120), at(20), Evidence::Watch);
        assert!(change.needs_confirmation);
        assert!(change.new_conflict.is_none() && record.conflict().is_none());
        assert_eq!(record.current_boot(), Some(B), "nothing of it was applied");
        let confirmed = record.observe_node(&at_version(A, 121), at(21), Evidence::Confirmed);
        assert_eq!(confirmed.new_conflict.unwrap().refused_boot, B);
    }

    #[test]
    fn an_observation_older_than_the_record_changes_nothing() {
        // A → B applied; then an A from before B, queued or from a lagging watch: the
        // version orders them, and B is the live boot.
        let mut record = NodeIdentity::blank("worker-1");
        record.observe_node(&at_version(A, 100), at(0), Evidence::Watch);
        record.observe_node(&at_version(B, 110), at(10), Evidence::Watch);
        for evidence in [Evidence::Watch, Evidence::Resync, Evidence::Confirmed] {
            assert_eq!(
                record.observe_node(&at_version(A, 100), at(20), evidence),
                Change::default()
            );
        }
        assert!(record.conflict().is_none());
        assert_eq!(record.current_boot(), Some(B));
        assert_eq!(
            record
                .status
                .as_ref()
                .unwrap()
                .node_resource_version
                .as_deref(),
            Some("110")
        );
    }

    #[test]
    fn a_resync_never_moves_the_record_back_to_an_earlier_boot_nor_conflicts() {
        // Without versions to order them (a record from an older release), a resync's
        // copy of the Node may still be stale.
        let mut record = NodeIdentity::blank("worker-1");
        record.observe_node(&node(A), at(0), Evidence::Watch);
        record.observe_node(&node(B), at(10), Evidence::Watch);
        let change = record.observe_node(&node(A), at(20), Evidence::Resync);
        assert!(!change.needs_confirmation && change.new_conflict.is_none());
        assert_eq!(record.current_boot(), Some(B));
        // A new boot in a resync is a reboot like any other.
        record.observe_node(&node(C), at(30), Evidence::Resync);
        assert_eq!(record.current_boot(), Some(C));
    }

    #[test]
    fn forget_keeps_the_kept_boot_even_when_the_refused_one_wrote_last() {
        let (mut record, _) = replay(&[A, B, A]);
        // The copy wrote while nodeguard failed open: the Node reports B now.
        record.observe_node(&node(B), at(100), Evidence::Watch);
        assert_eq!(record.current_boot(), Some(B));
        record.forget();
        assert_eq!(record.current_boot(), Some(A));
        assert_eq!(
            record
                .spec
                .boots
                .iter()
                .map(|b| b.boot_id.as_str())
                .collect::<Vec<_>>(),
            [A]
        );
        // The original writing again is no conflict.
        let change = record.observe_node(&node(A), at(110), Evidence::Confirmed);
        assert!(change.new_conflict.is_none());
    }

    #[test]
    fn a_record_no_node_claimed_is_removed_after_an_hour_and_no_other_is() {
        let mut record = NodeIdentity::blank("worker-9");
        record.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        let ttl = UNCLAIMED_RECORD_TTL;
        assert!(!record.is_unclaimed(false, at(3599), ttl));
        assert!(record.is_unclaimed(false, at(3600), ttl));
        assert!(
            !record.is_unclaimed(true, at(7200), ttl),
            "its Node registered; the recorder owns it next"
        );
        record.observe_node(&node(A), at(10), Evidence::Watch);
        assert!(
            !record.is_unclaimed(false, at(7200), ttl),
            "owned by its Node"
        );
    }
}
