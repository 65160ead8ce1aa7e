//! What a replica keeps of each record: a compact entry made where the shell receives
//! the record, read by the policy (boots, keys, conflict, owner, refused machines, shared
//! values) and by the recorder (digests, to tell whether an observation can change the
//! record at all before it reads the record again). The whole object stays with the API
//! server.

use std::hash::{DefaultHasher, Hash, Hasher};

use jiff::{SignedDuration, Timestamp};

use super::record::{KeyObservation, NodeObservation};
use super::{RecordedAddress, RefusedMachine, SharedValue, SharingEvidence, ValueField};
use crate::identity::{
    BootId, KeyFingerprint, KubeletSigner, MachineId, NodeName, ProviderId, SystemUuid,
};

/// One node name's ledger record, as far as anything in a replica reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The node name the record is for (the record object's name).
    pub name: NodeName,
    /// The record object's own uid and resourceVersion: a delete is made conditional on
    /// them, so a record changed meanwhile is kept.
    pub uid: Option<Box<str>>,
    /// The record object's `metadata.resourceVersion`.
    pub resource_version: Option<Box<str>>,
    /// When the API server created the record object (`metadata.creationTimestamp`).
    pub created: Option<Timestamp>,
    /// The uid of the Node the record belongs to, once known.
    pub owner: Option<Box<str>>,
    /// The machine the record holds for the name.
    pub machine_id: Option<MachineId>,
    /// That machine's system UUID.
    pub system_uuid: Option<SystemUuid>,
    /// That machine's provider ID.
    pub provider_id: Option<ProviderId>,
    /// Boots in the order they were first seen.
    pub boots: Box<[BootId]>,
    /// The boot the Node reported last.
    pub current_boot: Option<BootId>,
    /// When the recorder first saw the boot of the machine that keeps the name: the
    /// current boot, or in a conflict the kept one.
    pub kept_boot_since: Option<Timestamp>,
    /// Kubelet keys bound to the node by issued CSRs, with their signers.
    pub keys: Box<[(KeyFingerprint, KubeletSigner)]>,
    /// The two-kubelets conflict the record holds, if any.
    pub conflict: Option<Box<LedgerConflict>>,
    /// Machines refused for the name while another machine ran the node.
    pub refused: Box<[RefusedEntry]>,
    /// The node's values shared by evidence.
    pub shared: Box<[SharedMark]>,
    /// When the recorder first judged which values are shared (`None`: not yet).
    pub first_sight: Option<Timestamp>,
    /// What the record holds, in the recorder's digests (see [`RecordedDigests`]).
    pub digests: RecordedDigests,
}

/// Two machines writing one node, as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConflict {
    /// The check that found it (`two-kubelets`).
    pub check: Box<str>,
    /// The boot seen first: the machine that registered the name, which keeps it.
    pub kept_boot: Box<str>,
    /// The other machine's boot, refused from then on.
    pub refused_boot: Box<str>,
    /// When the recorder found the conflict, by nodeguard's clock.
    pub detected: Timestamp,
    /// The denial the refused machine is given.
    pub message: Box<str>,
}

/// A node's pods guarded: another machine writes as the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodGuard {
    /// When the ledger first recorded the other machine.
    pub since: Timestamp,
    /// When the kept machine's current boot was first seen: a pod status stored before
    /// it predates the machine's reboot.
    pub kept_boot_since: Option<Timestamp>,
}

/// A refused machine, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEntry {
    /// Its machine-id (`None` if not reported or not valid).
    pub machine_id: Option<MachineId>,
    /// Its system UUID (`None` if not reported or not valid).
    pub system_uuid: Option<SystemUuid>,
    /// Its provider ID (`None` if not reported or not valid).
    pub provider_id: Option<ProviderId>,
    /// The boot it was refused with last.
    pub boot_id: Option<BootId>,
    /// The check that refused it (`name-takeover`, `identity-drift`).
    pub check: Box<str>,
    /// When it was first refused, by the clock of the replica that recorded it.
    pub first_refused: Timestamp,
    /// When it was last refused, brought up to date at most every
    /// [`REFUSAL_REFRESH`](super::REFUSAL_REFRESH) while it retries.
    pub last_refused: Timestamp,
    /// The Node's resourceVersion when this machine was first refused.
    pub node_resource_version: Option<Box<str>>,
    /// The Node's Ready heartbeat when this machine was first refused, as its kubelet
    /// wrote it.
    pub node_heartbeat: Option<Timestamp>,
    /// When the node's own machine was seen writing its status after this machine was first
    /// refused: from then on it is refused for the name even while the node is not running.
    pub proven: Option<Timestamp>,
}

impl RefusedEntry {
    pub(super) fn of(refused: &RefusedMachine) -> Self {
        Self {
            machine_id: refused.machine_id.as_deref().and_then(MachineId::parse),
            system_uuid: refused.system_uuid.as_deref().and_then(SystemUuid::parse),
            provider_id: refused.provider_id.as_deref().and_then(ProviderId::parse),
            boot_id: refused.boot_id.as_deref().and_then(BootId::parse),
            check: refused.check.as_str().into(),
            first_refused: refused.first_refused,
            last_refused: refused.last_refused,
            node_resource_version: refused.node_resource_version.as_deref().map(Box::from),
            node_heartbeat: refused.node_heartbeat,
            proven: refused.proven,
        }
    }

    /// Its values as a person compares them with a machine.
    pub fn describe(&self) -> String {
        super::describe_machine(
            self.system_uuid.as_ref().map(SystemUuid::as_str),
            self.machine_id.as_ref().map(MachineId::as_str),
            self.provider_id.as_ref().map(ProviderId::as_str),
        )
    }

    /// Whether a refusal of the same machine now needs no write: it is recorded, with
    /// this boot, and its last refusal is recent.
    pub fn covers(&self, boot: Option<&BootId>, now: Timestamp) -> bool {
        (boot.is_none() || self.boot_id.as_ref() == boot)
            && now.duration_since(self.last_refused) < super::REFUSAL_REFRESH
    }
}

/// One shared value, as the index of shared values keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedMark {
    /// The identity field the value is one of.
    pub field: ValueField,
    /// The shared value itself.
    pub value: Box<str>,
    /// Why the value is shared.
    pub evidence: SharingEvidence,
    /// For `Moved`: the shared value the node moved from.
    pub from: Option<Box<str>>,
}

impl SharedMark {
    pub(super) fn of(shared: &SharedValue) -> Self {
        Self {
            field: shared.field,
            value: shared.value.as_str().into(),
            evidence: shared.evidence,
            from: shared.from.as_deref().map(Box::from),
        }
    }
}

/// Digests of the record's fields that only the recorder compares. Each is computed
/// over the record and over an observation alike; a differing digest means "read the
/// record and apply the observation", never a decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedDigests {
    /// The machine the record holds (machine-id, system UUID, provider ID, addresses)
    /// with its owner and current boot.
    pub machine: u64,
    /// When the current boot's `lastSeen` is due for a refresh.
    pub refresh_due: Option<Timestamp>,
    /// The client certificates issued to the node.
    pub credentials: Box<[u64]>,
    /// The record's counts agree with its lists: a record written by an older version
    /// may need a rewrite on its first observation.
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
            machine_id: None,
            system_uuid: None,
            provider_id: None,
            boots: Box::default(),
            current_boot: None,
            kept_boot_since: None,
            keys: Box::default(),
            conflict: None,
            refused: Box::default(),
            shared: Box::default(),
            first_sight: None,
            digests: RecordedDigests::default(),
        }
    }

    /// The two-kubelets conflict the record holds, if any.
    pub fn conflict(&self) -> Option<&LedgerConflict> {
        self.conflict.as_deref()
    }

    /// Whether another machine writes as this node, and since when: a recorded
    /// two-kubelets conflict (until `nodeguard forget`), or a machine refused for the name
    /// that is still being refused (its last refusal within two refresh intervals). Only
    /// then are the node's pod writes judged.
    pub fn pod_guard(&self, now: Timestamp) -> Option<PodGuard> {
        let conflict = self.conflict().map(|c| c.detected);
        let refused = self
            .refused
            .iter()
            .filter(|r| now.duration_since(r.last_refused) <= super::REFUSAL_REFRESH * 2)
            .map(|r| r.first_refused)
            .min();
        let since = match (conflict, refused) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(PodGuard {
            since,
            kept_boot_since: self.kept_boot_since,
        })
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

    /// Whether the record marks `value` of `field` as shared by `evidence`.
    pub fn marks(&self, field: ValueField, value: &str) -> impl Iterator<Item = &SharedMark> {
        self.shared
            .iter()
            .filter(move |mark| mark.field == field && &*mark.value == value)
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

/// The fields of a record, or of an observation, that an observation of the Node
/// compares, for [`machine_digest`].
pub(super) struct MachineFields<'a> {
    pub owner: Option<&'a str>,
    pub machine_id: Option<&'a str>,
    pub system_uuid: Option<&'a str>,
    pub provider_id: Option<&'a str>,
    pub addresses: &'a [RecordedAddress],
    pub boot: Option<&'a str>,
}

pub(super) fn machine_digest(fields: MachineFields<'_>) -> u64 {
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

pub(super) fn digest(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Whether observing `node` at `now` certainly leaves the record behind `entry`
/// unchanged: the same owner, machine, addresses and current boot, no conflict, its
/// shared values judged, no refused machine its status could prove, and the boot's
/// `lastSeen` not yet due. Anything else (even what would change nothing) is answered
/// `false`, and the recorder reads the record and applies the observation.
pub fn node_leaves_unchanged(entry: &LedgerEntry, node: &NodeObservation, now: Timestamp) -> bool {
    let digests = &entry.digests;
    digests.consistent
        && entry.conflict.is_none()
        && entry.first_sight.is_some()
        && entry.refused.iter().all(|refused| {
            refused.proven.is_some()
                || node.heartbeat.is_none()
                || node.heartbeat == refused.node_heartbeat
        })
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
