//! One record and how an observation changes it: a Node seen by the watchers, an
//! issued kubelet key, a machine the webhook refused for the name.

use jiff::Timestamp;

use super::entry::{LedgerConflict, LedgerEntry, RecordedDigests, RefusedEntry, SharedMark};
use super::{
    Boot, BoundKey, Conflict, LAST_SEEN_INTERVAL, MAX_BOOTS, MAX_CREDENTIAL_IDS,
    MAX_KEYS_PER_SIGNER, MAX_REFUSED_MACHINES, REFUSAL_REFRESH, RecordSpec, RecordStatus,
    RecordedAddress, RecordedCredential, RefusedMachine, SharedValue, TWO_KUBELETS,
};
use crate::identity::{
    BootId, KeyBinding, KeyFingerprint, KubeletSigner, MachineId, NodeClaim, ProviderId, SystemUuid,
};

/// One node name's record: what the shell stores as a NodeIdentity's spec and status,
/// with the uid of the Node it belongs to (its owner reference).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The uid of the Node the record belongs to, once known.
    pub owner: Option<String>,
    pub spec: RecordSpec,
    pub status: RecordStatus,
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
    /// The Ready condition's `lastHeartbeatTime`, as the kubelet wrote it.
    pub heartbeat: Option<Timestamp>,
    /// The Node's `creationTimestamp`.
    pub created: Option<Timestamp>,
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
            heartbeat: claim.readiness.heartbeat,
            created: claim.created,
        }
    }

    /// The same identity as `other`, whatever the versions and heartbeats: a heartbeat
    /// changes the Node's version, never the machine the ledger records.
    pub fn same_identity(&self, other: &NodeObservation) -> bool {
        // Every field but the version and the heartbeat, named so that a field added
        // later is compared too.
        let NodeObservation {
            name,
            uid,
            resource_version: _,
            machine_id,
            system_uuid,
            provider_id,
            addresses,
            boot_id,
            heartbeat: _,
            created,
        } = self;
        (
            name,
            uid,
            machine_id,
            system_uuid,
            provider_id,
            addresses,
            boot_id,
            created,
        ) == (
            &other.name,
            &other.uid,
            &other.machine_id,
            &other.system_uuid,
            &other.provider_id,
            &other.addresses,
            &other.boot_id,
            &other.created,
        )
    }

    /// Whether the Node shows the refused machine: no identity field of both differs,
    /// and at least one is known on both.
    fn shows(&self, refused: &RefusedMachine) -> bool {
        let pairs = [
            (&self.machine_id, &refused.machine_id),
            (&self.system_uuid, &refused.system_uuid),
            (&self.provider_id, &refused.provider_id),
        ];
        let known: Vec<(&String, &String)> = pairs
            .iter()
            .filter_map(|(ours, theirs)| Some(((*ours).as_ref()?, (*theirs).as_ref()?)))
            .collect();
        !known.is_empty() && known.iter().all(|(ours, theirs)| ours == theirs)
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

/// A machine the webhook refused for a node's name because another machine was
/// running the node, as the replica that refused it records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalObservation {
    pub node: String,
    /// The uid of the Node it was refused against.
    pub node_uid: Option<String>,
    pub check: String,
    pub machine_id: Option<MachineId>,
    pub system_uuid: Option<SystemUuid>,
    pub provider_id: Option<ProviderId>,
    pub boot_id: Option<BootId>,
    /// The Node as the replica saw it then: its version and Ready heartbeat.
    pub node_resource_version: Option<String>,
    pub node_heartbeat: Option<Timestamp>,
}

/// Two machines proven to run as one node: the node's own machine wrote its status
/// after `refused` was refused for the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub refused: RefusedMachine,
}

/// What applying an observation did to a record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// The record differs and must be written.
    pub changed: bool,
    /// A conflict found by this observation (already stored in the record).
    pub new_conflict: Option<Conflict>,
    /// Refused machines this observation proved to be second machines.
    pub new_proofs: Vec<Proof>,
    /// An earlier boot came back in a watch event: nothing about the boot was applied;
    /// the Node must be read again and the read applied as [`Evidence::Confirmed`].
    pub needs_confirmation: bool,
}

impl Change {
    pub fn merge(&mut self, other: Change) {
        self.changed |= other.changed;
        self.needs_confirmation |= other.needs_confirmation;
        if other.new_conflict.is_some() {
            self.new_conflict = other.new_conflict;
        }
        self.new_proofs.extend(other.new_proofs);
    }

    fn changed() -> Self {
        Change {
            changed: true,
            ..Change::default()
        }
    }

    fn changed_if(changed: bool) -> Self {
        Change {
            changed,
            ..Change::default()
        }
    }
}

/// What `forget` cleared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forgotten {
    pub conflict: Option<Conflict>,
    pub refused_machines: Vec<RefusedMachine>,
}

/// `a` is an older version of the same object than `b`. resourceVersions are etcd
/// revisions: integers that only grow. One that is not an integer orders nothing.
pub(crate) fn older_or_same(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|a| a.parse::<u64>().ok()),
        b.and_then(|b| b.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a <= b,
        _ => false,
    }
}

/// `later` is a later version than `earlier`, or nothing orders them.
pub(crate) fn later_or_unordered(later: Option<&str>, earlier: Option<&str>) -> bool {
    !older_or_same(later, earlier)
}

/// The denial for a write from the refused machine: names both boots and the remedy.
/// The ledger's recorded conflict carries the same text.
pub fn conflict_message(node: &str, refused_boot: &str, kept_boot: &str) -> String {
    format!(
        "nodeguard [two-kubelets]: two machines are writing node \"{node}\" with its \
         credentials: boot {refused_boot} (this machine) and boot {kept_boot}, which \
         registered first and is kept; stop this machine's kubelet and give it its own \
         identity (hostname, rm /etc/machine-id && systemd-machine-id-setup, remove \
         /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, re-join \
         with a bootstrap token), then run nodeguard forget {node}"
    )
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

/// The record's own name, uid, version and creation time, as the shell's object holds
/// them, for [`Record::entry`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordMeta<'a> {
    pub name: &'a str,
    pub uid: Option<&'a str>,
    pub resource_version: Option<&'a str>,
    pub created: Option<Timestamp>,
}

impl Record {
    pub fn conflict(&self) -> Option<&Conflict> {
        self.status.conflict.as_ref()
    }

    pub fn current_boot(&self) -> Option<&str> {
        self.status.current_boot.as_deref()
    }

    /// Whether this record can be the one of the Node with `uid`: it is unless both
    /// uids are known and differ (a record left by an earlier Node of that name).
    pub fn may_belong_to(&self, uid: Option<&str>) -> bool {
        match (self.owner.as_deref(), uid) {
            (Some(owner), Some(uid)) => owner == uid,
            _ => true,
        }
    }

    /// The keys bound to this node, parsed.
    pub fn key_fingerprints(&self) -> impl Iterator<Item = KeyFingerprint> + '_ {
        self.spec
            .keys
            .iter()
            .filter_map(|k| parse_fingerprint(&k.fingerprint))
    }

    /// What a replica keeps of this record: `None` for a record without a name.
    pub fn entry(&self, meta: RecordMeta<'_>) -> Option<LedgerEntry> {
        let name = Some(meta.name).filter(|n| !n.is_empty())?;
        let spec = &self.spec;
        let current = self.current_boot();
        let keys = spec
            .keys
            .iter()
            .filter_map(|key| {
                let signer = KubeletSigner::from_name(&key.signer)?;
                Some((parse_fingerprint(&key.fingerprint)?, signer))
            })
            .collect();
        let refresh_due = spec
            .boots
            .iter()
            .find(|b| Some(b.boot_id.as_str()) == current)
            .and_then(|b| b.last_seen.checked_add(LAST_SEEN_INTERVAL).ok());
        let status = &self.status;
        let consistent = usize::try_from(status.boots).ok() == Some(spec.boots.len())
            && usize::try_from(status.keys).ok() == Some(spec.keys.len())
            && usize::try_from(status.refused).ok() == Some(spec.refused_machines.len());
        Some(LedgerEntry {
            name: name.into(),
            uid: meta.uid.map(Box::from),
            resource_version: meta.resource_version.map(Box::from),
            created: meta.created,
            owner: self.owner.as_deref().map(Box::from),
            machine_id: spec.machine_id.as_deref().and_then(MachineId::parse),
            system_uuid: spec.system_uuid.as_deref().and_then(SystemUuid::parse),
            provider_id: spec.provider_id.as_deref().and_then(ProviderId::parse),
            boots: spec
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
            refused: spec.refused_machines.iter().map(RefusedEntry::of).collect(),
            shared: spec.shared_values.iter().map(SharedMark::of).collect(),
            first_sight: spec.first_sight,
            digests: RecordedDigests {
                machine: super::entry::machine_digest(super::entry::MachineFields {
                    owner: self.owner.as_deref(),
                    machine_id: spec.machine_id.as_deref(),
                    system_uuid: spec.system_uuid.as_deref(),
                    provider_id: spec.provider_id.as_deref(),
                    addresses: &spec.addresses,
                    boot: current,
                }),
                refresh_due,
                credentials: spec
                    .credential_ids
                    .iter()
                    .map(|c| super::entry::digest(&c.id))
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
                self.status.node_resource_version.as_deref(),
            )
        {
            return Change::default();
        }
        let mut change = Change::default();
        if let Some(uid) = node.uid.as_deref() {
            change.merge(self.own_by(uid));
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
        change.merge(self.prove_refusals(node, now));
        let refused_boot = self
            .conflict()
            .is_some_and(|c| node.boot_id.as_deref() == Some(c.refused_boot.as_str()));
        let proven_refused = self
            .spec
            .refused_machines
            .iter()
            .any(|r| r.proven.is_some() && node.shows(r));
        // A refused machine's state can only be stored while nodeguard is not admitting
        // (down, or failing open): never let it rewrite the kept identity.
        if !refused_boot && !proven_refused {
            change.merge(self.set_machine(node));
        }
        if let Some(boot) = node.boot_id.as_deref() {
            change.merge(self.observe_boot(&node.name, boot, node.system_uuid.as_deref(), now));
        }
        change.merge(self.refresh_counts());
        // Stored with the next write: on its own not worth one, since a later
        // observation carries a higher version anyway.
        if node.resource_version.is_some() {
            self.status
                .node_resource_version
                .clone_from(&node.resource_version);
        }
        change
    }

    /// A refused machine is proven to be a second machine once the Node, in a later
    /// version than the one it was refused against, carries a status written since (its
    /// Ready heartbeat moved) by a machine that is not the refused one.
    fn prove_refusals(&mut self, node: &NodeObservation, now: Timestamp) -> Change {
        let mut change = Change::default();
        for refused in &mut self.spec.refused_machines {
            if refused.proven.is_none() && status_written_since(refused, node) {
                refused.proven = Some(now);
                change.changed = true;
                change.new_proofs.push(Proof {
                    refused: refused.clone(),
                });
            }
        }
        change
    }

    /// Records a machine refused for this name, once per machine: its first refusal, and
    /// its last one brought up to date every [`REFUSAL_REFRESH`] while it retries.
    pub fn observe_refusal(&mut self, refusal: &RefusalObservation, now: Timestamp) -> Change {
        if !self.may_belong_to(refusal.node_uid.as_deref()) {
            // Refused against an earlier Node of the name: that Node's history is gone.
            return Change::default();
        }
        let text = |value: Option<&str>| value.map(str::to_string);
        let machine_id = text(refusal.machine_id.as_ref().map(MachineId::as_str));
        let system_uuid = text(refusal.system_uuid.as_ref().map(SystemUuid::as_str));
        let provider_id = text(refusal.provider_id.as_ref().map(ProviderId::as_str));
        let boot_id = text(refusal.boot_id.as_ref().map(BootId::as_str));
        let known = self.spec.refused_machines.iter_mut().find(|r| {
            (&r.machine_id, &r.system_uuid, &r.provider_id)
                == (&machine_id, &system_uuid, &provider_id)
        });
        let mut change = match known {
            Some(known) => {
                let mut changed = false;
                if now.duration_since(known.last_refused) >= REFUSAL_REFRESH {
                    known.last_refused = now;
                    changed = true;
                }
                if boot_id.is_some() && known.boot_id != boot_id {
                    known.boot_id = boot_id;
                    changed = true;
                }
                Change::changed_if(changed)
            }
            None => {
                let refused = &mut self.spec.refused_machines;
                refused.push(RefusedMachine {
                    machine_id,
                    system_uuid,
                    provider_id,
                    boot_id,
                    check: refusal.check.clone(),
                    first_refused: now,
                    last_refused: now,
                    node_resource_version: refusal.node_resource_version.clone(),
                    node_heartbeat: refusal.node_heartbeat,
                    proven: None,
                });
                // Proven machines go last: they are what keeps the name safe.
                while refused.len() > MAX_REFUSED_MACHINES {
                    let oldest = refused
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, r)| (r.proven.is_some(), r.last_refused))
                        .map(|(i, _)| i);
                    if let Some(i) = oldest {
                        refused.remove(i);
                    }
                }
                Change::changed()
            }
        };
        change.merge(self.refresh_counts());
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

    /// Records which of this node's values are shared by evidence (judged by the
    /// policy's `sharing`), and that they have been judged.
    pub fn judge_sharing(&mut self, shared: Vec<SharedValue>, now: Timestamp) -> Change {
        let mut changed = false;
        if self.spec.shared_values != shared {
            self.spec.shared_values = shared;
            changed = true;
        }
        if self.spec.first_sight.is_none() {
            self.spec.first_sight = Some(now);
            changed = true;
        }
        Change::changed_if(changed)
    }

    /// Clears a conflict, the refused machines and the boot history but one boot, after
    /// the copy was given its own identity: the kept boot of the conflict (the refused
    /// one may be the last the Node reported, and must not become the machine taken as
    /// the node's), or the current boot when there is no conflict.
    pub fn forget(&mut self) -> Forgotten {
        let status = &mut self.status;
        let cleared = status.conflict.take();
        let kept = match &cleared {
            Some(conflict) => Some(conflict.kept_boot.clone()),
            None => status.current_boot.clone(),
        };
        status.current_boot.clone_from(&kept);
        self.spec
            .boots
            .retain(|b| Some(b.boot_id.as_str()) == kept.as_deref());
        let refused_machines = std::mem::take(&mut self.spec.refused_machines);
        self.refresh_counts();
        Forgotten {
            conflict: cleared,
            refused_machines,
        }
    }

    /// Ties the record to the Node registered under its name. A record owned by an
    /// earlier Node of the same name (deleted, its record not yet collected) is stale:
    /// it starts over, since deleting a Node is how an admin releases a name.
    fn own_by(&mut self, uid: &str) -> Change {
        match self.owner.as_deref() {
            Some(owner) if owner == uid => Change::default(),
            Some(_) => {
                *self = Record {
                    owner: Some(uid.to_string()),
                    ..Record::default()
                };
                Change::changed()
            }
            None => {
                self.owner = Some(uid.to_string());
                Change::changed()
            }
        }
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
        Change::changed_if(changed)
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
        let status = &mut self.status;
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
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let counts = (
            count(self.spec.boots.len()),
            count(self.spec.keys.len()),
            count(self.spec.refused_machines.len()),
        );
        let status = &mut self.status;
        if (status.boots, status.keys, status.refused) == counts {
            return Change::default();
        }
        (status.boots, status.keys, status.refused) = counts;
        Change::changed()
    }
}

/// Whether `node` shows a status written after `refused` was refused, by a machine other
/// than the refused one: a later version of the Node whose Ready heartbeat moved.
pub(crate) fn status_written_since(refused: &RefusedMachine, node: &NodeObservation) -> bool {
    node.heartbeat.is_some()
        && node.heartbeat != refused.node_heartbeat
        && later_or_unordered(
            node.resource_version.as_deref(),
            refused.node_resource_version.as_deref(),
        )
        && !node.shows(refused)
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
