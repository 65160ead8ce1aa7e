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
    /// What the NodeIdentity's `spec` holds.
    pub spec: RecordSpec,
    /// What the NodeIdentity's `status` holds.
    pub status: RecordStatus,
}

/// A Node as the recorder sees it in a watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    /// The Node's name.
    pub name: String,
    /// The Node's `metadata.uid`: tells one registration of the name from the next.
    pub uid: Option<String>,
    /// The Node's resourceVersion in this observation.
    pub resource_version: Option<String>,
    /// The machine's `/etc/machine-id` (`status.nodeInfo.machineID`).
    pub machine_id: Option<String>,
    /// The machine's SMBIOS UUID (`status.nodeInfo.systemUUID`).
    pub system_uuid: Option<String>,
    /// The Node's `spec.providerID`.
    pub provider_id: Option<String>,
    /// The Node's InternalIP and ExternalIP addresses, then its hostnames (`Hostname`
    /// addresses and the `kubernetes.io/hostname` label) as `Hostname` entries.
    pub addresses: Vec<RecordedAddress>,
    /// The kernel's boot id (`status.nodeInfo.bootID`): changes with every boot.
    pub boot_id: Option<String>,
    /// The Ready condition's `lastHeartbeatTime`, as the kubelet wrote it.
    pub heartbeat: Option<Timestamp>,
    /// The Node's `creationTimestamp`.
    pub created: Option<Timestamp>,
}

impl NodeObservation {
    /// The observation of a decoded Node, its values in the text the record stores.
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
    /// The CSR's name.
    pub csr: String,
    /// The node, key, signer and credential id the issued certificate binds.
    pub binding: KeyBinding,
}

/// A machine the webhook refused for a node's name because another machine was
/// running the node, as the replica that refused it records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalObservation {
    /// The name of the node it was refused for.
    pub node: String,
    /// The uid of the Node it was refused against.
    pub node_uid: Option<String>,
    /// The check that refused it (`name-takeover`, `identity-drift`).
    pub check: String,
    /// The refused machine's machine-id.
    pub machine_id: Option<MachineId>,
    /// The refused machine's system UUID.
    pub system_uuid: Option<SystemUuid>,
    /// The refused machine's provider ID.
    pub provider_id: Option<ProviderId>,
    /// The boot it was refused with.
    pub boot_id: Option<BootId>,
    /// The Node as the replica saw it then: its version and Ready heartbeat.
    pub node_resource_version: Option<String>,
    /// The Node's Ready `lastHeartbeatTime` then, as its kubelet wrote it.
    pub node_heartbeat: Option<Timestamp>,
}

impl RefusalObservation {
    /// The refused machine's values as a person compares them with a machine.
    pub fn describe(&self) -> String {
        super::describe_machine(
            self.system_uuid.as_ref().map(SystemUuid::as_str),
            self.machine_id.as_ref().map(MachineId::as_str),
            self.provider_id.as_ref().map(ProviderId::as_str),
        )
    }
}

/// Two machines proven to run as one node: the node's own machine wrote its status
/// after `refused` was refused for the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The refused machine as the record now holds it, `proven` set.
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
    /// Folds `other` into this change: flags are or-ed, proofs appended, and `other`'s
    /// conflict taken if it has one.
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
    /// The conflict cleared, if there was one.
    pub conflict: Option<Conflict>,
    /// The refused machines dropped.
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
         registered first and is kept; {}",
        second_machine_remedy(node)
    )
}

/// What the machine refused as a second one writing as `node` is told to do.
pub fn second_machine_remedy(node: &str) -> String {
    format!(
        "stop this machine's kubelet and give it its own identity (hostname, rm \
         /etc/machine-id && systemd-machine-id-setup, remove \
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
    /// The record object's name: the node name.
    pub name: &'a str,
    /// The record object's `metadata.uid`.
    pub uid: Option<&'a str>,
    /// The record object's `metadata.resourceVersion`.
    pub resource_version: Option<&'a str>,
    /// When the API server created the record object (`metadata.creationTimestamp`).
    pub created: Option<Timestamp>,
}

impl Record {
    /// The conflict the record holds, if any.
    pub fn conflict(&self) -> Option<&Conflict> {
        self.status.conflict.as_ref()
    }

    /// The boot the record holds as current (`status.currentBoot`).
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
            kept_boot_since: {
                // In a conflict the Node may show either machine's boot: the kept one's.
                let kept = self
                    .conflict()
                    .map_or(current, |c| Some(c.kept_boot.as_str()));
                spec.boots
                    .iter()
                    .find(|b| Some(b.boot_id.as_str()) == kept)
                    .map(|b| b.first_seen)
            },
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

/// Parses a fingerprint as the record stores it (64 hex digits); `None` if it is not one.
pub fn parse_fingerprint(hex_text: &str) -> Option<KeyFingerprint> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut bytes).ok()?;
    Some(KeyFingerprint(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{KeyBinding, KeyFingerprint, KubeletSigner};
    use crate::ledger::{RecordedAddress, key_leaves_unchanged, node_leaves_unchanged};
    use jiff::SignedDuration;

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
            heartbeat: None,
            created: None,
        }
    }

    fn meta() -> RecordMeta<'static> {
        RecordMeta {
            name: "worker-1",
            ..RecordMeta::default()
        }
    }

    fn replay(boots: &[&str]) -> (Record, Vec<Change>) {
        let mut record = Record::default();
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
            record.owner.as_deref(),
            Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f")
        );
        assert_eq!(
            record.spec.machine_id.as_deref(),
            Some("11c1f8e2fbf5540cd8ff218ef016ba11")
        );
        assert_eq!(record.current_boot(), Some(A));
        assert_eq!(record.status.boots, 1);
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
    fn in_a_conflict_the_kept_boot_dates_the_machine_whatever_the_node_shows() {
        // The copy (B) wrote last: the Node, and the record's current boot, show B.
        let (mut record, _) = replay(&[A, B, A]);
        record.observe_node(&node(B), at(30), Evidence::Confirmed);
        let entry = record.entry(meta()).unwrap();
        assert_eq!(entry.conflict().unwrap().kept_boot.as_ref(), A);
        assert_eq!(entry.kept_boot_since, Some(at(0)));
        assert_eq!(
            entry.pod_guard(at(40)).unwrap().kept_boot_since,
            Some(at(0))
        );
        // Without a conflict it is the current boot's: the reboot's.
        let (record, _) = replay(&[A, C]);
        assert_eq!(record.entry(meta()).unwrap().kept_boot_since, Some(at(10)));
        assert_eq!(record.entry(meta()).unwrap().pod_guard(at(40)), None);
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
        let mut record = Record::default();
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
            record.owner.as_deref(),
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
        let mut record = Record::default();
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
        assert_eq!(record.status.keys, 2);
    }

    #[test]
    fn keys_are_bounded_per_signer_dropping_the_oldest() {
        let mut record = Record::default();
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
        let cleared = record.forget().conflict.expect("there was a conflict");
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
            let mut record = Record::default();
            let mut now = at(0);
            for _ in 0..dice.roll(12) {
                now += SignedDuration::from_mins(dice.roll(90) as i64);
                let evidence =
                    *dice.pick(&[Evidence::Watch, Evidence::Resync, Evidence::Confirmed]);
                record.observe_node(&random_node(&mut dice), now, evidence);
                record.judge_sharing(Vec::new(), now);
                if dice.roll(3) == 0 {
                    let credential =
                        *dice.pick(&[None, Some("X509SHA256=01"), Some("X509SHA256=02")]);
                    let signer = *dice.pick(&[KubeletSigner::Client, KubeletSigner::Serving]);
                    record.observe_key(&key(dice.roll(3) as u8, signer, credential), now);
                }
            }
            let entry = record.entry(meta()).unwrap();
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
        record.judge_sharing(Vec::new(), at(0));
        record.observe_key(&key(1, KubeletSigner::Client, Some("X509SHA256=01")), at(5));
        let entry = record.entry(meta()).unwrap();
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

    fn at_version(boot: &str, version: u64) -> NodeObservation {
        NodeObservation {
            resource_version: Some(version.to_string()),
            ..node(boot)
        }
    }

    #[test]
    fn a_boot_coming_back_in_a_watch_event_waits_for_a_fresh_read() {
        let mut record = Record::default();
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
        let mut record = Record::default();
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
        assert_eq!(record.status.node_resource_version.as_deref(), Some("110"));
    }

    #[test]
    fn a_resync_never_moves_the_record_back_to_an_earlier_boot_nor_conflicts() {
        // Without versions to order them (a record from an older release), a resync's
        // copy of the Node may still be stale.
        let mut record = Record::default();
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

    fn refused_clone() -> RefusalObservation {
        RefusalObservation {
            node: "worker-1".into(),
            node_uid: Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f".into()),
            check: "name-takeover".into(),
            machine_id: crate::identity::MachineId::parse("11c1f8e2fbf5540cd8ff218ef016ba11"),
            system_uuid: crate::identity::SystemUuid::parse("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61"),
            provider_id: None,
            boot_id: crate::identity::BootId::parse(C),
            node_resource_version: Some("100".into()),
            node_heartbeat: Some(at(-30)),
        }
    }

    fn heartbeat(boot: &str, version: u64, beat: i64) -> NodeObservation {
        NodeObservation {
            resource_version: Some(version.to_string()),
            heartbeat: Some(at(beat)),
            ..node(boot)
        }
    }

    #[test]
    fn a_refused_machine_is_recorded_once_and_its_last_refusal_kept_up_to_date_now_and_then() {
        let (mut record, _) = replay(&[A]);
        let clone = refused_clone();
        assert!(record.observe_refusal(&clone, at(0)).changed);
        assert_eq!(record.status.refused, 1);
        // The kubelet retries every few seconds: nothing to write for ten minutes.
        assert!(!record.observe_refusal(&clone, at(7)).changed);
        assert!(!record.observe_refusal(&clone, at(599)).changed);
        assert!(record.observe_refusal(&clone, at(600)).changed);
        let refused = &record.spec.refused_machines[0];
        assert_eq!(
            (refused.first_refused, refused.last_refused),
            (at(0), at(600))
        );
        assert_eq!(
            refused.system_uuid.as_deref(),
            Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61")
        );
        assert_eq!(refused.node_resource_version.as_deref(), Some("100"));
        // Rebooted, it is the same machine with another boot.
        let mut rebooted = clone.clone();
        rebooted.boot_id = crate::identity::BootId::parse(B);
        assert!(record.observe_refusal(&rebooted, at(601)).changed);
        assert_eq!(record.spec.refused_machines.len(), 1);
        assert_eq!(record.spec.refused_machines[0].boot_id.as_deref(), Some(B));
        // Refused against an earlier Node of the name: not this record's history.
        let mut elsewhere = clone;
        elsewhere.node_uid = Some("0b7e3c55-0000-4000-8000-000000000002".into());
        assert!(!record.observe_refusal(&elsewhere, at(700)).changed);
    }

    #[test]
    fn the_node_s_own_machine_writing_status_after_a_refusal_proves_two_machines() {
        let (mut record, _) = replay(&[A]);
        record.observe_refusal(&refused_clone(), at(0));
        // The Node as it was refused against, or older: nothing proven.
        assert!(
            record
                .observe_node(&heartbeat(A, 100, -30), at(1), Evidence::Watch)
                .new_proofs
                .is_empty()
        );
        // A later version with the same heartbeat (a label, the node controller): no.
        assert!(
            record
                .observe_node(&heartbeat(A, 101, -30), at(2), Evidence::Watch)
                .new_proofs
                .is_empty()
        );
        // A later version whose heartbeat moved, showing the refused machine (it got
        // through while nodeguard failed open): not the node's own machine.
        let mut clone_wrote = heartbeat(C, 102, 40);
        clone_wrote.system_uuid = Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into());
        let change = record.observe_node(&clone_wrote, at(3), Evidence::Watch);
        assert!(change.new_proofs.is_empty());
        assert_eq!(
            record.spec.system_uuid.as_deref(),
            Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61"),
            "an unproven refused machine's values are still recorded as the node's"
        );
        // The node's own machine writes its status (its boot coming back is confirmed by a
        // fresh read, as for any boot that returns): proven, once.
        let change = record.observe_node(&heartbeat(A, 103, 300), at(300), Evidence::Confirmed);
        assert_eq!(change.new_proofs.len(), 1);
        assert!(change.changed);
        assert_eq!(record.spec.refused_machines[0].proven, Some(at(300)));
        assert!(
            record
                .observe_node(&heartbeat(A, 104, 600), at(600), Evidence::Watch)
                .new_proofs
                .is_empty()
        );
        // From then on a write showing the refused machine never rewrites the node's.
        let mut again = heartbeat(C, 105, 700);
        again.system_uuid = Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into());
        record.observe_node(&again, at(700), Evidence::Watch);
        assert_eq!(
            record.spec.system_uuid.as_deref(),
            Some("1139a350-3cd4-400f-875d-c270379811b0")
        );
    }

    #[test]
    fn refused_machines_are_bounded_keeping_the_proven_ones() {
        let (mut record, _) = replay(&[A]);
        let mut first = refused_clone();
        record.observe_refusal(&first, at(0));
        record.observe_node(&heartbeat(A, 200, 100), at(100), Evidence::Watch);
        assert!(record.spec.refused_machines[0].proven.is_some());
        for i in 0..6u8 {
            first.system_uuid = crate::identity::SystemUuid::parse(&format!(
                "{i:02x}4d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61"
            ));
            record.observe_refusal(&first, at(200 + i64::from(i)));
        }
        assert_eq!(
            record.spec.refused_machines.len(),
            crate::ledger::MAX_REFUSED_MACHINES
        );
        assert!(
            record
                .spec
                .refused_machines
                .iter()
                .any(|r| r.system_uuid.as_deref() == Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61"))
        );
        assert_eq!(record.status.refused, 4);
    }

    #[test]
    fn forget_and_a_new_node_of_the_name_clear_the_refused_machines() {
        let (mut record, _) = replay(&[A]);
        record.observe_refusal(&refused_clone(), at(0));
        let forgotten = record.forget();
        assert_eq!(forgotten.refused_machines.len(), 1);
        assert!(record.spec.refused_machines.is_empty());
        assert_eq!(record.status.refused, 0);

        let (mut record, _) = replay(&[A]);
        record.observe_refusal(&refused_clone(), at(0));
        let mut successor = node(B);
        successor.uid = Some("0b7e3c55-0000-4000-8000-000000000002".into());
        record.observe_node(&successor, at(10), Evidence::Watch);
        assert!(record.spec.refused_machines.is_empty());
    }

    #[test]
    fn an_entry_not_yet_judged_or_with_a_refusal_to_prove_is_never_said_unchanged() {
        let (mut record, _) = replay(&[A]);
        let entry = record.entry(meta()).unwrap();
        assert!(
            !node_leaves_unchanged(&entry, &node(A), at(60)),
            "values not judged yet"
        );
        record.judge_sharing(Vec::new(), at(0));
        let entry = record.entry(meta()).unwrap();
        assert!(node_leaves_unchanged(&entry, &heartbeat(A, 10, 50), at(60)));
        record.observe_refusal(&refused_clone(), at(0));
        let entry = record.entry(meta()).unwrap();
        assert!(
            !node_leaves_unchanged(&entry, &heartbeat(A, 110, 50), at(60)),
            "a status written since the refusal may prove it"
        );
    }
}
