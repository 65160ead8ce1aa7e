//! The ledger as the core sees it: per node name, a compact entry made from that
//! name's NodeIdentity where the shell receives it. The policy reads the boots, the
//! bound keys, the conflict and the owner; the shell's recorder reads the digests to
//! tell whether an observation can change the record at all before it reads the record
//! again. The whole object stays with the API server.

use jiff::{SignedDuration, Timestamp};

use crate::identity::{BootId, KeyFingerprint, KubeletSigner, NodeName};

/// How long a record made from a CSR may wait for its Node to register: a kubelet
/// registers seconds after its certificate is issued, and the API server deletes
/// issued CSRs after an hour. A record with no Node after this long is removed, so that
/// CSRs for names that never register cannot fill the ledger.
pub const UNCLAIMED_RECORD_TTL: SignedDuration = SignedDuration::from_hours(1);

/// One node name's ledger record, as far as anything in a replica reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub name: NodeName,
    /// The record object's own uid and resourceVersion: a delete is made conditional on
    /// them, so a record changed meanwhile is kept.
    pub uid: Option<Box<str>>,
    pub resource_version: Option<Box<str>>,
    pub created: Option<Timestamp>,
    /// The uid of the Node the record belongs to, once known.
    pub owner: Option<Box<str>>,
    /// Boots in the order they were first seen.
    pub boots: Box<[BootId]>,
    /// The boot the Node reported last.
    pub current_boot: Option<BootId>,
    /// Kubelet keys bound to the node by issued CSRs, with their signers.
    pub keys: Box<[(KeyFingerprint, KubeletSigner)]>,
    pub conflict: Option<Box<LedgerConflict>>,
    /// What the record holds, in the recorder's digests (see [`RecordedDigests`]).
    pub digests: RecordedDigests,
}

/// Two machines writing one node, as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConflict {
    /// The check that found it (`two-kubelets`).
    pub check: Box<str>,
    pub kept_boot: Box<str>,
    pub refused_boot: Box<str>,
    pub detected: Timestamp,
    pub message: Box<str>,
}

/// Digests of the record's fields that only the recorder compares. Each is computed by
/// the shell over the record and over an observation alike; a differing digest means
/// "read the record and apply the observation", never a decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedDigests {
    /// The machine the record holds (machine-id, system UUID, provider ID, addresses)
    /// with its owner and current boot.
    pub machine: u64,
    /// When the current boot's `lastSeen` is due for a refresh.
    pub refresh_due: Option<Timestamp>,
    /// The client certificates issued to the node.
    pub credentials: Box<[u64]>,
    /// The record's counts and resourceVersion mark agree with its lists: a record
    /// written by an older version may need a rewrite on its first observation.
    pub consistent: bool,
}

impl LedgerEntry {
    /// An entry with nothing recorded yet but the name.
    pub fn named(name: &str) -> Self {
        Self {
            name: NodeName::from(name),
            uid: None,
            resource_version: None,
            created: None,
            owner: None,
            boots: Box::default(),
            current_boot: None,
            keys: Box::default(),
            conflict: None,
            digests: RecordedDigests::default(),
        }
    }

    pub fn conflict(&self) -> Option<&LedgerConflict> {
        self.conflict.as_deref()
    }

    /// Whether this record can be the one of the Node with `uid`: it is unless both
    /// uids are known and differ (a record left by an earlier Node of that name).
    pub fn may_belong_to(&self, uid: Option<&str>) -> bool {
        match (self.owner.as_deref(), uid) {
            (Some(owner), Some(uid)) => owner == uid,
            _ => true,
        }
    }

    /// Position of a boot in first-seen order.
    pub fn boot_index(&self, boot: &BootId) -> Option<usize> {
        self.boots.iter().position(|b| b == boot)
    }

    /// The keys bound to this node, whatever their signer.
    pub fn key_fingerprints(&self) -> impl Iterator<Item = &KeyFingerprint> {
        self.keys.iter().map(|(fingerprint, _)| fingerprint)
    }

    /// A record that no Node ever claimed (made from a CSR, no owner) and that is
    /// older than `ttl`, while no Node of its name exists: to be removed. Records with
    /// an owner go with their Node, through the garbage collector.
    pub fn is_unclaimed(&self, node_exists: bool, now: Timestamp, ttl: SignedDuration) -> bool {
        if node_exists || self.owner.is_some() {
            return false;
        }
        self.created
            .is_some_and(|created| now.duration_since(created) >= ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(n: u8) -> BootId {
        BootId::parse(&format!("{n:02x}a0427b-40ea-4cf5-9f24-53d6e200ef00")).unwrap()
    }

    #[test]
    fn a_record_belongs_to_any_node_until_its_owner_is_known() {
        let mut entry = LedgerEntry::named("worker-1");
        assert!(entry.may_belong_to(Some("uid-1")));
        assert!(entry.may_belong_to(None));
        entry.owner = Some("uid-1".into());
        assert!(entry.may_belong_to(Some("uid-1")));
        assert!(entry.may_belong_to(None));
        assert!(!entry.may_belong_to(Some("uid-2")));
    }

    #[test]
    fn boots_are_found_by_first_seen_position() {
        let mut entry = LedgerEntry::named("worker-1");
        entry.boots = vec![boot(1), boot(2)].into();
        assert_eq!(entry.boot_index(&boot(2)), Some(1));
        assert_eq!(entry.boot_index(&boot(3)), None);
    }

    #[test]
    fn only_an_unowned_record_past_its_ttl_without_a_node_is_unclaimed() {
        let created: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut entry = LedgerEntry::named("never-joined");
        entry.created = Some(created);
        let later = |minutes: i64| created + SignedDuration::from_mins(minutes);
        assert!(!entry.is_unclaimed(false, later(59), UNCLAIMED_RECORD_TTL));
        assert!(entry.is_unclaimed(false, later(60), UNCLAIMED_RECORD_TTL));
        assert!(!entry.is_unclaimed(true, later(60), UNCLAIMED_RECORD_TTL));
        entry.owner = Some("uid-1".into());
        assert!(!entry.is_unclaimed(false, later(600), UNCLAIMED_RECORD_TTL));
    }
}
