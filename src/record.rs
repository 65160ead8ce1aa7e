//! The NodeIdentity custom resource: the core's ledger record (`nodeguard_core::ledger`)
//! as the API server stores it, one per node name. The record's logic is the core's;
//! this module holds the Kubernetes side of it: the CRD, the owner reference to the
//! Node, and the object's metadata.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::CustomResource;
use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::KeyFingerprint;
use crate::inventory::LedgerEntry;
pub use nodeguard_core::ledger::{
    Boot, BoundKey, Change, Conflict, Evidence, Forgotten, KeyObservation, LAST_SEEN_INTERVAL,
    MAX_BOOTS, MAX_CREDENTIAL_IDS, MAX_KEYS_PER_SIGNER, NodeObservation, Proof, Record, RecordMeta,
    RecordSpec, RecordStatus, RecordedAddress, RecordedCredential, RefusalObservation,
    RefusedMachine, SharedValue, TWO_KUBELETS, UNCLAIMED_RECORD_TTL, conflict_message,
    conflict_note, key_leaves_unchanged, node_leaves_unchanged, parse_fingerprint,
};

/// The status of a NodeIdentity: the record's status.
pub type NodeIdentityStatus = RecordStatus;

/// What the ledger knows about one node name: the machine that holds it, the keys and
/// certificates issued to it, its boots, the machines refused for it, its values shared
/// by evidence, and a conflict once two machines were seen writing it.
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
    printcolumn = r#"{"name":"Refused","type":"integer","jsonPath":".status.refused"}"#,
    printcolumn = r#"{"name":"Conflict","type":"string","jsonPath":".status.conflict.check"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct NodeIdentitySpec {
    #[serde(flatten)]
    pub record: RecordSpec,
}

impl Deref for NodeIdentitySpec {
    type Target = RecordSpec;

    fn deref(&self) -> &RecordSpec {
        &self.record
    }
}

impl DerefMut for NodeIdentitySpec {
    fn deref_mut(&mut self) -> &mut RecordSpec {
        &mut self.record
    }
}

impl NodeIdentity {
    /// An empty record for `name`, before any observation.
    pub fn blank(name: &str) -> Self {
        let mut record = NodeIdentity::new(name, NodeIdentitySpec::default());
        record.status = Some(NodeIdentityStatus::default());
        record
    }

    /// The record as the core reads and changes it.
    pub fn record(&self) -> Record {
        Record {
            owner: self.owner_uid().map(str::to_string),
            spec: self.spec.record.clone(),
            status: self.status.clone().unwrap_or_default(),
        }
    }

    /// Applies `change` to the record, keeping the object's metadata and setting its
    /// owner reference to the Node the record now belongs to.
    pub fn update<T>(&mut self, change: impl FnOnce(&mut Record) -> T) -> T {
        let mut record = Record {
            owner: self.owner_uid().map(str::to_string),
            spec: std::mem::take(&mut self.spec.record),
            status: self.status.take().unwrap_or_default(),
        };
        let result = change(&mut record);
        self.spec.record = record.spec;
        self.status = Some(record.status);
        if record.owner.as_deref() != self.owner_uid() {
            let name = self.metadata.name.clone().unwrap_or_default();
            self.metadata.owner_references = record.owner.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_string(),
                    kind: "Node".to_string(),
                    name,
                    uid,
                    controller: None,
                    block_owner_deletion: None,
                }]
            });
        }
        result
    }

    pub fn observe_node(
        &mut self,
        node: &NodeObservation,
        now: Timestamp,
        evidence: Evidence,
    ) -> Change {
        self.update(|record| record.observe_node(node, now, evidence))
    }

    pub fn observe_key(&mut self, key: &KeyObservation, now: Timestamp) -> Change {
        self.update(|record| record.observe_key(key, now))
    }

    pub fn observe_refusal(&mut self, refusal: &RefusalObservation, now: Timestamp) -> Change {
        self.update(|record| record.observe_refusal(refusal, now))
    }

    pub fn forget(&mut self) -> Forgotten {
        self.update(Record::forget)
    }

    pub fn conflict(&self) -> Option<&Conflict> {
        self.status.as_ref().and_then(|s| s.conflict.as_ref())
    }

    pub fn current_boot(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.current_boot.as_deref())
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

    /// Whether this record can be the one of the Node with `uid` (see
    /// [`Record::may_belong_to`]).
    pub fn may_belong_to(&self, uid: Option<&str>) -> bool {
        match (self.owner_uid(), uid) {
            (Some(owner), Some(uid)) => owner == uid,
            _ => true,
        }
    }

    /// A record no Node claimed, past `ttl` (see [`LedgerEntry::is_unclaimed`]).
    pub fn is_unclaimed(&self, node_exists: bool, now: Timestamp, ttl: SignedDuration) -> bool {
        self.entry()
            .is_some_and(|entry| entry.is_unclaimed(node_exists, now, ttl))
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
        let status = self.status.clone().unwrap_or_default();
        let record = Record {
            owner: self.owner_uid().map(str::to_string),
            spec: self.spec.record.clone(),
            status,
        };
        let metadata = &self.metadata;
        record.entry(RecordMeta {
            name: metadata.name.as_deref().unwrap_or_default(),
            uid: metadata.uid.as_deref(),
            resource_version: metadata.resource_version.as_deref(),
            created: metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
    }
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

    const A: &str = "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60";
    const B: &str = "d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00";
    const OWNER: &str = "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_795_000_000 + seconds).unwrap()
    }

    fn node(boot: &str) -> NodeObservation {
        NodeObservation {
            name: "worker-1".into(),
            uid: Some(OWNER.into()),
            resource_version: None,
            machine_id: Some("11c1f8e2fbf5540cd8ff218ef016ba11".into()),
            system_uuid: Some("1139a350-3cd4-400f-875d-c270379811b0".into()),
            provider_id: None,
            addresses: vec![RecordedAddress {
                kind: "InternalIP".into(),
                address: "10.0.0.11".into(),
            }],
            boot_id: Some(boot.into()),
            heartbeat: None,
            created: None,
        }
    }

    fn replay(boots: &[&str]) -> NodeIdentity {
        let mut record = NodeIdentity::blank("worker-1");
        for (i, boot) in boots.iter().enumerate() {
            record.observe_node(&node(boot), at(10 * i as i64), Evidence::Confirmed);
        }
        record
    }

    #[test]
    fn the_record_round_trips_through_json_as_the_api_server_stores_it() {
        let record = replay(&[A, B, A]);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["apiVersion"], "nodeguard.io/v1alpha1");
        assert_eq!(json["kind"], "NodeIdentity");
        assert_eq!(json["spec"]["boots"][1]["bootID"], B);
        assert_eq!(json["status"]["conflict"]["refusedBoot"], B);
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], OWNER);
        let back: NodeIdentity = serde_json::from_value(json).unwrap();
        assert_eq!((back.spec, back.status), (record.spec, record.status));
    }

    #[test]
    fn a_record_of_an_earlier_node_keeps_the_object_s_metadata_and_takes_the_new_owner() {
        let mut record = replay(&[A, B, A]);
        record.metadata.resource_version = Some("812".into());
        record.metadata.uid = Some("record-uid".into());
        let mut successor = node(A);
        successor.uid = Some("0b7e3c55-0000-4000-8000-000000000002".into());
        record.observe_node(&successor, at(100), Evidence::Watch);
        assert!(record.conflict().is_none());
        assert_eq!(
            record.owner_uid(),
            Some("0b7e3c55-0000-4000-8000-000000000002")
        );
        assert_eq!(record.metadata.resource_version.as_deref(), Some("812"));
        assert_eq!(record.metadata.uid.as_deref(), Some("record-uid"));
    }

    #[test]
    fn the_entry_keeps_what_the_policy_reads_and_the_object_s_metadata() {
        let mut record = replay(&[A, B, A]);
        record.metadata.uid = Some("record-uid".into());
        record.metadata.resource_version = Some("812".into());
        let entry = record.entry().unwrap();
        assert_eq!(&*entry.name, "worker-1");
        assert_eq!(entry.owner.as_deref(), Some(OWNER));
        assert_eq!(entry.uid.as_deref(), Some("record-uid"));
        assert_eq!(entry.resource_version.as_deref(), Some("812"));
        assert_eq!(
            entry.system_uuid.as_ref().map(|u| u.as_str()),
            Some("1139a350-3cd4-400f-875d-c270379811b0")
        );
        assert!(
            NodeIdentity::blank("").entry().is_none(),
            "a record without a name"
        );
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
}
