//! The index of identities the cluster already holds: per identity field, value → the
//! nodes holding it. Fed by the watchers, read by the policy. Pure data: no I/O.
//!
//! Every lookup is a hash probe; holder sets are ordered so that messages name nodes
//! deterministically.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use jiff::{SignedDuration, Timestamp};

use crate::identity::{
    Hostname, KeyBinding, KeyFingerprint, MachineId, NodeClaim, NodeName, ProviderId, SystemUuid,
};
use crate::ledger::{SharingEvidence, ValueField};

pub use crate::ledger::{LedgerConflict, LedgerEntry, RecordedDigests, UNCLAIMED_RECORD_TTL};

/// Value → holders, each holder with the number of times it holds the value (a node
/// may hold a key through several CSRs).
#[derive(Debug)]
struct Index<K> {
    holders: HashMap<K, HolderSet>,
}

/// The nodes holding one value. Nearly every value has one holder, kept inline: a map
/// per value would cost a node's worth of memory in each of seven indexes.
#[derive(Debug)]
enum HolderSet {
    One(NodeName, u32),
    Many(BTreeMap<NodeName, u32>),
}

impl HolderSet {
    fn add(&mut self, node: &NodeName) {
        match self {
            HolderSet::One(held, count) if held == node => *count += 1,
            HolderSet::One(held, count) => {
                let many = BTreeMap::from([(held.clone(), *count), (node.clone(), 1)]);
                *self = HolderSet::Many(many);
            }
            HolderSet::Many(map) => *map.entry(node.clone()).or_insert(0) += 1,
        }
    }

    /// Removes one hold of `node`; returns whether any holder is left.
    fn remove(&mut self, node: &NodeName) -> bool {
        match self {
            HolderSet::One(held, count) => {
                if held == node {
                    *count -= 1;
                }
                *count > 0
            }
            HolderSet::Many(map) => {
                if let Some(count) = map.get_mut(node) {
                    *count -= 1;
                    if *count == 0 {
                        map.remove(node);
                    }
                }
                if map.len() == 1
                    && let Some((held, count)) = map.pop_first()
                {
                    *self = HolderSet::One(held, count);
                }
                !matches!(self, HolderSet::Many(map) if map.is_empty())
            }
        }
    }
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self {
            holders: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Index<K> {
    fn add(&mut self, value: &K, node: &NodeName) {
        match self.holders.get_mut(value) {
            Some(holders) => holders.add(node),
            None => {
                self.holders
                    .insert(value.clone(), HolderSet::One(node.clone(), 1));
            }
        }
    }

    fn remove(&mut self, value: &K, node: &NodeName) {
        if let Some(holders) = self.holders.get_mut(value)
            && !holders.remove(node)
        {
            self.holders.remove(value);
        }
    }

    fn get(&self, value: &K) -> Holders<'_> {
        Holders(self.holders.get(value))
    }

    fn len(&self) -> usize {
        self.holders.len()
    }

    /// Every value, with how many nodes hold it.
    fn values(&self) -> impl Iterator<Item = (&K, Holders<'_>)> {
        self.holders
            .iter()
            .map(|(value, holders)| (value, Holders(Some(holders))))
    }
}

/// The nodes that hold one value.
#[derive(Debug, Clone, Copy)]
pub struct Holders<'a>(Option<&'a HolderSet>);

/// The holders of a value other than the node asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherHolders<'a> {
    /// How many nodes other than the one asking hold the value.
    pub count: usize,
    /// Up to three of them, in name order.
    pub names: Vec<&'a NodeName>,
}

impl<'a> Holders<'a> {
    /// Whether no node holds the value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many nodes hold the value.
    pub fn len(&self) -> usize {
        match self.0 {
            None => 0,
            Some(HolderSet::One(..)) => 1,
            Some(HolderSet::Many(map)) => map.len(),
        }
    }

    /// All of them, in name order.
    pub fn names(&self) -> impl Iterator<Item = &'a NodeName> + use<'a> {
        let (one, many) = match self.0 {
            None => (None, None),
            Some(HolderSet::One(name, _)) => (Some(name), None),
            Some(HolderSet::Many(map)) => (None, Some(map)),
        };
        one.into_iter()
            .chain(many.into_iter().flat_map(BTreeMap::keys))
    }

    /// The holders other than `node`: O(1) in the number of holders (it reads at most
    /// four names), so a value that every node shares costs no more than a unique one.
    pub fn other_than(&self, node: &str) -> OtherHolders<'a> {
        let count = match self.0 {
            None => 0,
            Some(HolderSet::One(name, _)) => usize::from(&**name != node),
            Some(HolderSet::Many(map)) => map.len() - usize::from(map.contains_key(node)),
        };
        let names = self.names().filter(|n| &***n != node).take(3).collect();
        OtherHolders { count, names }
    }
}

/// The cluster's identities as last seen by the watchers.
#[derive(Debug, Default)]
pub struct Inventory {
    nodes: HashMap<NodeName, NodeClaim>,
    by: NodeIndexes,
    seen: HashMap<NodeName, StatusSeen>,
    csrs: HashMap<Arc<str>, KeyBinding>,
    /// Keys bound by CSRs still stored and by the ledger: a node holds a key while
    /// either remembers it.
    keys: Index<KeyFingerprint>,
    ledger: HashMap<NodeName, LedgerEntry>,
    ledger_conflicts: usize,
    /// Refused machines proven to be second machines, over every record.
    second_machines: usize,
    /// The ledger's shared values, counted over every record, by field.
    shared: HashMap<ValueField, HashMap<Box<str>, SharedCounts>>,
    /// When each record was first judged, for the ledger's epoch.
    sight_times: BTreeMap<Timestamp, u32>,
}

/// When a node's status was last seen written: the Ready heartbeat its kubelet last
/// wrote, and the moment, on nodeguard's own clock, this replica first saw that
/// heartbeat. Only a status write moves the heartbeat (the node lifecycle controller
/// leaves it, a refused kubelet's writes never land), and comparing the moment seen
/// with nodeguard's clock, never the heartbeat itself, makes a node whose clock is off
/// no less alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSeen {
    /// The Ready condition's `lastHeartbeatTime`, on the kubelet's clock.
    pub heartbeat: Option<Timestamp>,
    /// `None`: never seen written (a dump's Node without a heartbeat).
    pub at: Option<Timestamp>,
}

impl StatusSeen {
    /// What a replica records on seeing `claim` at `now`, given what it saw before: a
    /// heartbeat it has not seen yet was written since (or, for a node seen for the first
    /// time, is taken as written now: see [`Inventory::apply_node`]).
    fn after(previous: Option<&StatusSeen>, claim: &NodeClaim, now: Timestamp) -> Self {
        let heartbeat = claim.readiness.heartbeat;
        let at = match previous {
            Some(previous) if previous.heartbeat == heartbeat => previous.at,
            _ => Some(now),
        };
        Self { heartbeat, at }
    }

    /// As a dump shows it: seen when the kubelet wrote it.
    fn as_written(claim: &NodeClaim) -> Self {
        Self {
            heartbeat: claim.readiness.heartbeat,
            at: claim.readiness.heartbeat,
        }
    }
}

/// The shared values of every record, counted: by `FirstSight` or `Inherited`
/// evidence, and per value moved from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SharedCounts {
    /// Records holding the value by `FirstSight` or `Inherited` evidence.
    pub evidence: u32,
    /// Per value moved from: how many records moved from it to this one (`Moved`).
    pub moved_from: Vec<(Box<str>, u32)>,
}

impl SharedCounts {
    /// How many records moved to this value from `from`.
    pub fn moved_from(&self, from: &str) -> u32 {
        self.moved_from
            .iter()
            .find(|(value, _)| &**value == from)
            .map_or(0, |(_, count)| *count)
    }

    fn is_empty(&self) -> bool {
        self.evidence == 0 && self.moved_from.is_empty()
    }
}

/// Every node and its field indexes, built apart from an inventory (see
/// [`Inventory::install_nodes`]).
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: HashMap<NodeName, NodeClaim>,
    by: NodeIndexes,
    seen: HashMap<NodeName, StatusSeen>,
}

impl NodeTable {
    /// A table of Nodes as a dump shows them: each status seen when it was written.
    pub fn build(claims: impl IntoIterator<Item = NodeClaim>) -> Self {
        Self::build_with(claims, StatusSeen::as_written)
    }

    /// A table of Nodes listed at `now` by a replica that saw `previous` before: a
    /// heartbeat it already saw keeps the moment it saw it.
    pub fn listed(
        claims: impl IntoIterator<Item = NodeClaim>,
        previous: &HashMap<NodeName, StatusSeen>,
        now: Timestamp,
    ) -> Self {
        Self::build_with(claims, |claim| {
            StatusSeen::after(previous.get(&claim.name), claim, now)
        })
    }

    fn build_with(
        claims: impl IntoIterator<Item = NodeClaim>,
        seen: impl Fn(&NodeClaim) -> StatusSeen,
    ) -> Self {
        let mut table = Self::default();
        for claim in claims {
            if let Some(old) = table.nodes.remove(&claim.name) {
                table.by.remove(&old);
            }
            table.by.add(&claim);
            table.seen.insert(claim.name.clone(), seen(&claim));
            table.nodes.insert(claim.name.clone(), claim);
        }
        table
    }

    /// How many nodes the table holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the table holds no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// One index per identity field of a Node.
#[derive(Debug, Default)]
struct NodeIndexes {
    machine_ids: Index<MachineId>,
    system_uuids: Index<SystemUuid>,
    provider_ids: Index<ProviderId>,
    internal_ips: Index<IpAddr>,
    external_ips: Index<IpAddr>,
    hostnames: Index<Hostname>,
}

impl NodeIndexes {
    fn add(&mut self, claim: &NodeClaim) {
        self.update(claim, true);
    }

    fn remove(&mut self, claim: &NodeClaim) {
        self.update(claim, false);
    }

    /// Adds or removes every value of `claim` in its field's index.
    fn update(&mut self, claim: &NodeClaim, add: bool) {
        fn apply<K: Hash + Eq + Clone>(
            index: &mut Index<K>,
            value: &K,
            node: &NodeName,
            add: bool,
        ) {
            if add {
                index.add(value, node);
            } else {
                index.remove(value, node);
            }
        }
        let node = &claim.name;
        if let Some(v) = &claim.machine_id {
            apply(&mut self.machine_ids, v, node, add);
        }
        if let Some(v) = &claim.system_uuid {
            apply(&mut self.system_uuids, v, node, add);
        }
        if let Some(v) = &claim.provider_id {
            apply(&mut self.provider_ids, v, node, add);
        }
        for v in &claim.internal_ips {
            apply(&mut self.internal_ips, v, node, add);
        }
        for v in &claim.external_ips {
            apply(&mut self.external_ips, v, node, add);
        }
        for v in &claim.hostnames {
            apply(&mut self.hostnames, v, node, add);
        }
    }

    fn len(&self) -> usize {
        self.machine_ids.len()
            + self.system_uuids.len()
            + self.provider_ids.len()
            + self.internal_ips.len()
            + self.external_ips.len()
            + self.hostnames.len()
    }
}

/// Counts for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventorySize {
    /// How many Nodes the inventory holds.
    pub nodes: usize,
    /// Stored CSRs that bind a kubelet key.
    pub key_bindings: usize,
    /// Distinct values, summed over the Node field indexes and the key index.
    pub indexed_values: usize,
    /// Ledger entries held, one per node name.
    pub ledger_records: usize,
    /// Ledger entries that record two machines writing one node.
    pub ledger_conflicts: usize,
    /// Machines refused for a name and proven to be second machines (see
    /// [`crate::ledger::RefusedMachine::proven`]).
    pub second_machines: usize,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a node's current identity as this replica saw it at `now`, replacing
    /// what it claimed before. A node seen for the first time counts as written now:
    /// a replica that has just started has seen no status change yet, and takes every
    /// node as running for the heartbeat timeout (as the node lifecycle controller does
    /// with its probe timestamp), rather than taking a running node for gone.
    pub fn apply_node(&mut self, claim: NodeClaim, now: Timestamp) {
        let seen = StatusSeen::after(self.seen.get(&claim.name), &claim, now);
        self.put_node(claim, seen);
    }

    /// Records a node as a dump shows it: its status seen when its kubelet wrote it.
    pub fn apply_node_as_written(&mut self, claim: NodeClaim) {
        let seen = StatusSeen::as_written(&claim);
        self.put_node(claim, seen);
    }

    fn put_node(&mut self, claim: NodeClaim, seen: StatusSeen) {
        let name = claim.name.clone();
        if let Some(old) = self.nodes.remove(&name) {
            self.by.remove(&old);
        }
        self.by.add(&claim);
        self.seen.insert(name.clone(), seen);
        self.nodes.insert(name, claim);
    }

    /// Forgets a deleted node, freeing every value it held.
    pub fn delete_node(&mut self, name: &str) {
        if let Some(old) = self.nodes.remove(name) {
            self.by.remove(&old);
        }
        self.seen.remove(name);
    }

    /// Replaces all nodes at once with Nodes as a dump shows them.
    pub fn replace_nodes(&mut self, claims: impl IntoIterator<Item = NodeClaim>) {
        drop(self.install_nodes(NodeTable::build(claims)));
    }

    /// Makes `table` the whole of the nodes and returns the table it replaces: built
    /// and dropped by the caller outside any lock, so a relist of 50,000 Nodes holds the
    /// inventory for the swap alone.
    pub fn install_nodes(&mut self, table: NodeTable) -> NodeTable {
        NodeTable {
            nodes: std::mem::replace(&mut self.nodes, table.nodes),
            by: std::mem::replace(&mut self.by, table.by),
            seen: std::mem::replace(&mut self.seen, table.seen),
        }
    }

    /// When each node's status was last seen written, for a relist to carry over.
    pub fn status_seen_all(&self) -> HashMap<NodeName, StatusSeen> {
        self.seen.clone()
    }

    /// When this replica last saw the node's status written.
    pub fn status_seen(&self, name: &str) -> Option<StatusSeen> {
        self.seen.get(name).copied()
    }

    /// Whether a kubelet is running the node of that name: its status was seen written
    /// within `timeout` of `now`, on nodeguard's clock. A name the inventory does not
    /// hold counts as running, so that it never weakens a check.
    pub fn is_running(&self, name: &str, timeout: SignedDuration, now: Timestamp) -> bool {
        match self.seen.get(name) {
            None => true,
            Some(seen) => seen.at.is_some_and(|at| now.duration_since(at) <= timeout),
        }
    }

    /// Records what a CSR binds (or that it binds nothing, e.g. once denied).
    pub fn apply_csr(&mut self, csr_name: &str, binding: Option<KeyBinding>) {
        self.delete_csr(csr_name);
        if let Some(binding) = binding {
            self.keys.add(&binding.fingerprint, &binding.node);
            self.csrs.insert(Arc::from(csr_name), binding);
        }
    }

    /// Forgets a deleted CSR; its key stays bound while another CSR or the ledger does.
    pub fn delete_csr(&mut self, csr_name: &str) {
        if let Some(old) = self.csrs.remove(csr_name) {
            self.keys.remove(&old.fingerprint, &old.node);
        }
    }

    /// Replaces all CSR bindings at once, after a full list.
    pub fn replace_csrs(
        &mut self,
        bindings: impl IntoIterator<Item = (String, Option<KeyBinding>)>,
    ) {
        // Only the CSRs' own bindings go: the key index also holds the ledger's.
        let listed: Vec<Arc<str>> = self.csrs.keys().cloned().collect();
        for name in listed {
            self.delete_csr(&name);
        }
        for (name, binding) in bindings {
            self.apply_csr(&name, binding);
        }
    }

    /// The current claim of the node of that name.
    pub fn node(&self, name: &str) -> Option<&NodeClaim> {
        self.nodes.get(name)
    }

    /// Every node, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeClaim> {
        self.nodes.values()
    }

    /// Every key binding of a stored CSR, with the CSR's name.
    pub fn key_bindings(&self) -> impl Iterator<Item = (&str, &KeyBinding)> {
        self.csrs.iter().map(|(name, binding)| (&**name, binding))
    }

    /// Records the ledger's entry for a node, replacing the previous one.
    pub fn apply_identity(&mut self, entry: LedgerEntry) {
        let name = entry.name.clone();
        self.delete_identity(&name);
        for fingerprint in entry.key_fingerprints() {
            self.keys.add(fingerprint, &name);
        }
        self.ledger_conflicts += usize::from(entry.conflict.is_some());
        self.second_machines += proven(&entry);
        self.count_shared(&entry, true);
        if let Some(sight) = entry.first_sight {
            *self.sight_times.entry(sight).or_insert(0) += 1;
        }
        self.ledger.insert(name, entry);
    }

    /// Forgets the ledger's entry for a node name, with the keys and counts it added.
    pub fn delete_identity(&mut self, name: &str) {
        if let Some((name, old)) = self.ledger.remove_entry(name) {
            for fingerprint in old.key_fingerprints() {
                self.keys.remove(fingerprint, &name);
            }
            self.ledger_conflicts -= usize::from(old.conflict.is_some());
            self.second_machines -= proven(&old);
            self.count_shared(&old, false);
            if let Some(sight) = old.first_sight
                && let Some(count) = self.sight_times.get_mut(&sight)
            {
                *count -= 1;
                if *count == 0 {
                    self.sight_times.remove(&sight);
                }
            }
        }
    }

    fn count_shared(&mut self, entry: &LedgerEntry, add: bool) {
        for mark in entry.shared.iter() {
            let values = self.shared.entry(mark.field).or_default();
            let counts = values.entry(mark.value.clone()).or_default();
            let step = |count: &mut u32| {
                if add {
                    *count += 1;
                } else {
                    *count = count.saturating_sub(1);
                }
            };
            match (mark.evidence, &mark.from) {
                (SharingEvidence::Moved, Some(from)) => {
                    match counts.moved_from.iter_mut().find(|(v, _)| v == from) {
                        Some((_, count)) => step(count),
                        None if add => counts.moved_from.push((from.clone(), 1)),
                        None => {}
                    }
                    counts.moved_from.retain(|(_, count)| *count > 0);
                }
                (SharingEvidence::Moved, None) => {}
                _ => step(&mut counts.evidence),
            }
            if counts.is_empty() {
                values.remove(&mark.value);
            }
        }
    }

    /// How the ledger's records mark a value as shared.
    pub fn shared(&self, field: ValueField, value: &str) -> Option<&SharedCounts> {
        self.shared.get(&field)?.get(value)
    }

    /// When nodeguard first saw the cluster: the first time the recorder judged a record
    /// that is still in the ledger (its `firstSight`), at nodeguard's install or at its
    /// upgrade to a release that judges them. A Node created before it existed before
    /// nodeguard saw the cluster.
    pub fn ledger_epoch(&self) -> Option<Timestamp> {
        self.sight_times.keys().next().copied()
    }

    /// Replaces all ledger entries at once, after a full list.
    pub fn replace_identities(&mut self, entries: impl IntoIterator<Item = LedgerEntry>) {
        let names: Vec<NodeName> = self.ledger.keys().cloned().collect();
        for name in names {
            self.delete_identity(&name);
        }
        for entry in entries {
            self.apply_identity(entry);
        }
    }

    /// The ledger's entry for a node name.
    pub fn identity(&self, name: &str) -> Option<&LedgerEntry> {
        self.ledger.get(name)
    }

    /// Every ledger entry, in no particular order.
    pub fn identities(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.ledger.values()
    }

    /// The nodes reporting this machine-id.
    pub fn machine_id(&self, value: &MachineId) -> Holders<'_> {
        self.by.machine_ids.get(value)
    }

    /// The nodes reporting this system UUID, in this byte order only.
    pub fn system_uuid(&self, value: &SystemUuid) -> Holders<'_> {
        self.by.system_uuids.get(value)
    }

    /// The nodes whose `spec.providerID` is this value.
    pub fn provider_id(&self, value: &ProviderId) -> Holders<'_> {
        self.by.provider_ids.get(value)
    }

    /// The nodes reporting this `InternalIP` address.
    pub fn internal_ip(&self, value: &IpAddr) -> Holders<'_> {
        self.by.internal_ips.get(value)
    }

    /// The nodes reporting this `ExternalIP` address.
    pub fn external_ip(&self, value: &IpAddr) -> Holders<'_> {
        self.by.external_ips.get(value)
    }

    /// The nodes claiming this hostname, by label or `Hostname` address.
    pub fn hostname(&self, value: &Hostname) -> Holders<'_> {
        self.by.hostnames.get(value)
    }

    /// Every machine-id the nodes report, with its holders (for `audit`).
    pub fn machine_id_values(&self) -> impl Iterator<Item = (&MachineId, Holders<'_>)> {
        self.by.machine_ids.values()
    }

    /// Every system UUID the nodes report, with its holders (for `audit`).
    pub fn system_uuid_values(&self) -> impl Iterator<Item = (&SystemUuid, Holders<'_>)> {
        self.by.system_uuids.values()
    }

    /// Every provider ID the nodes carry, with its holders (for `audit`).
    pub fn provider_id_values(&self) -> impl Iterator<Item = (&ProviderId, Holders<'_>)> {
        self.by.provider_ids.values()
    }

    /// Every `InternalIP` address the nodes report, with its holders (for `audit`).
    pub fn internal_ip_values(&self) -> impl Iterator<Item = (&IpAddr, Holders<'_>)> {
        self.by.internal_ips.values()
    }

    /// Every hostname the nodes claim, with its holders (for `audit`).
    pub fn hostname_values(&self) -> impl Iterator<Item = (&Hostname, Holders<'_>)> {
        self.by.hostnames.values()
    }

    /// Every bound kubelet key, with the nodes it is bound to.
    pub fn key_values(&self) -> impl Iterator<Item = (&KeyFingerprint, Holders<'_>)> {
        self.keys.values()
    }

    /// The nodes a kubelet key is bound to, by a stored CSR or by the ledger.
    pub fn key(&self, value: &KeyFingerprint) -> Holders<'_> {
        self.keys.get(value)
    }

    /// What the inventory holds, counted.
    pub fn size(&self) -> InventorySize {
        InventorySize {
            nodes: self.nodes.len(),
            key_bindings: self.csrs.len(),
            indexed_values: self.by.len() + self.keys.len(),
            ledger_records: self.ledger.len(),
            ledger_conflicts: self.ledger_conflicts,
            second_machines: self.second_machines,
        }
    }
}

/// The refused machines of a record proven to be second machines.
fn proven(entry: &LedgerEntry) -> usize {
    entry.refused.iter().filter(|r| r.proven.is_some()).count()
}

/// The inventory shared between the watchers (writers) and the request handlers
/// (readers). Locks are held for a lookup or one event, never across an await.
#[derive(Debug, Clone, Default)]
pub struct SharedInventory(Arc<RwLock<Inventory>>);

impl SharedInventory {
    /// Wraps `inventory` for the watchers and the request handlers to share.
    pub fn new(inventory: Inventory) -> Self {
        Self(Arc::new(RwLock::new(inventory)))
    }

    /// Runs `f` with the inventory read-locked. A writer that panicked cannot leave an
    /// index half-updated in a way that matters more than refusing to serve, so a
    /// poisoned lock is still read.
    pub fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> T {
        let guard = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Runs `f` with the inventory write-locked, poisoned or not (see [`Self::read`]).
    pub fn write<T>(&self, f: impl FnOnce(&mut Inventory) -> T) -> T {
        let mut guard = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{KubeletSigner, NodeDoc};
    use crate::sample::{self as kubelet, Machine};

    fn claim(machine: &Machine) -> NodeClaim {
        let text = kubelet::node_object(machine).to_string();
        NodeClaim::from_doc(&serde_json::from_str::<NodeDoc<'_>>(&text).unwrap()).unwrap()
    }

    fn machine_id(m: &Machine) -> MachineId {
        MachineId::parse(&m.machine_id).unwrap()
    }

    #[test]
    fn a_table_built_apart_replaces_every_node_and_hands_back_the_old_one() {
        let (a, b, c) = (
            Machine::new("worker-1", 1, "10.0.0.11"),
            Machine::new("worker-2", 2, "10.0.0.12"),
            Machine::new("worker-3", 3, "10.0.0.13"),
        );
        let mut inventory = Inventory::new();
        inventory.apply_node_as_written(claim(&a));
        inventory.apply_node_as_written(claim(&b));
        // A name listed twice keeps its last claim, as a relist's apply would.
        let mut b_again = b.clone();
        b_again.machine_id = "0123456789abcdef0123456789abcdef".into();
        let table = NodeTable::build([claim(&b), claim(&c), claim(&b_again)]);
        assert_eq!(table.len(), 2);
        let old = inventory.install_nodes(table);
        assert_eq!(old.len(), 2);
        assert!(inventory.node("worker-1").is_none());
        assert!(inventory.machine_id(&machine_id(&a)).is_empty());
        assert!(inventory.machine_id(&machine_id(&b)).is_empty());
        assert_eq!(inventory.machine_id(&machine_id(&b_again)).len(), 1);
        assert_eq!(inventory.machine_id(&machine_id(&c)).len(), 1);
    }

    #[test]
    fn a_changed_value_frees_the_old_one_and_a_deleted_node_frees_all() {
        let mut inventory = Inventory::new();
        let before = Machine::new("worker-1", 1, "10.0.0.11");
        inventory.apply_node_as_written(claim(&before));
        let mut after = before.clone();
        after.machine_id = "0123456789abcdef0123456789abcdef".into();
        inventory.apply_node_as_written(claim(&after));
        assert!(inventory.machine_id(&machine_id(&before)).is_empty());
        assert_eq!(
            inventory
                .machine_id(&machine_id(&after))
                .other_than("worker-9")
                .count,
            1
        );
        inventory.delete_node("worker-1");
        assert_eq!(
            inventory.size(),
            InventorySize {
                nodes: 0,
                key_bindings: 0,
                indexed_values: 0,
                ledger_records: 0,
                ledger_conflicts: 0,
                second_machines: 0,
            }
        );
    }

    #[test]
    fn holders_other_than_the_asking_node_are_counted_and_named_in_order() {
        let mut inventory = Inventory::new();
        for (name, seed) in [("c", 3), ("a", 1), ("b", 2)] {
            let mut m = Machine::new(name, seed, &format!("10.0.0.{seed}"));
            m.machine_id = "5f2d8c1e9a7b4c3d8e6f0a1b2c3d4e5f".into();
            inventory.apply_node_as_written(claim(&m));
        }
        let shared = MachineId::parse("5f2d8c1e9a7b4c3d8e6f0a1b2c3d4e5f").unwrap();
        let others = inventory.machine_id(&shared).other_than("b");
        assert_eq!(others.count, 2);
        assert_eq!(
            others.names.iter().map(|n| &***n).collect::<Vec<_>>(),
            vec!["a", "c"]
        );
    }

    #[test]
    fn replacing_all_nodes_forgets_the_ones_not_listed() {
        let mut inventory = Inventory::new();
        let gone = Machine::new("gone", 1, "10.0.0.1");
        let kept = Machine::new("kept", 2, "10.0.0.2");
        inventory.apply_node_as_written(claim(&gone));
        inventory.apply_node_as_written(claim(&kept));
        inventory.replace_nodes([claim(&kept)]);
        assert!(inventory.node("gone").is_none());
        assert!(inventory.machine_id(&machine_id(&gone)).is_empty());
        assert!(
            inventory
                .internal_ip(&"10.0.0.1".parse().unwrap())
                .is_empty()
        );
        assert_eq!(
            inventory
                .internal_ip(&"10.0.0.2".parse().unwrap())
                .other_than("x")
                .count,
            1
        );
    }

    #[test]
    fn a_key_stays_bound_while_any_of_its_csrs_remains() {
        let mut inventory = Inventory::new();
        let binding = KeyBinding {
            node: NodeName::from("worker-1"),
            fingerprint: KeyFingerprint([7; 32]),
            signer: KubeletSigner::Client,
            credential_id: None,
        };
        inventory.apply_csr("csr-1", Some(binding.clone()));
        inventory.apply_csr("csr-2", Some(binding.clone()));
        inventory.delete_csr("csr-1");
        assert_eq!(
            inventory
                .key(&binding.fingerprint)
                .other_than("worker-2")
                .count,
            1
        );
        inventory.apply_csr("csr-2", None);
        assert!(inventory.key(&binding.fingerprint).is_empty());
        assert_eq!(inventory.size().key_bindings, 0);
    }

    #[test]
    fn a_value_s_holders_are_counted_through_one_and_many() {
        let mut index: Index<u8> = Index::default();
        let (a, b, c) = (
            NodeName::from("a"),
            NodeName::from("b"),
            NodeName::from("c"),
        );
        let names = |index: &Index<u8>| -> Vec<String> {
            index.get(&1).names().map(|n| n.to_string()).collect()
        };
        index.add(&1, &b);
        index.add(&1, &b);
        assert_eq!(
            (index.get(&1).len(), names(&index)),
            (1, vec!["b".to_string()])
        );
        index.remove(&1, &b);
        assert_eq!(index.get(&1).len(), 1, "b still holds it once");
        index.add(&1, &c);
        index.add(&1, &a);
        assert_eq!(names(&index), ["a", "b", "c"]);
        let others = index.get(&1).other_than("b");
        assert_eq!(others.count, 2);
        assert_eq!(others.names, [&a, &c]);
        index.remove(&1, &a);
        index.remove(&1, &c);
        assert_eq!(names(&index), ["b"]);
        assert_eq!(index.get(&1).other_than("b").count, 0);
        assert_eq!(index.get(&1).other_than("x").count, 1);
        index.remove(&1, &a);
        assert_eq!(
            index.get(&1).len(),
            1,
            "removing a node that does not hold it"
        );
        index.remove(&1, &b);
        assert!(index.get(&1).is_empty());
        assert_eq!(index.len(), 0, "a value nobody holds is gone");
    }

    #[test]
    fn a_status_counts_as_written_when_this_replica_first_saw_its_heartbeat() {
        let t0: Timestamp = "2026-12-01T08:00:00Z".parse().unwrap();
        let minutes = |m: i64| t0 + SignedDuration::from_mins(m);
        let timeout = SignedDuration::from_mins(10);
        // A kubelet whose clock is an hour slow.
        let mut node = Machine::new("worker-1", 1, "10.0.0.11");
        node.heartbeat = minutes(-60);
        let mut inventory = Inventory::new();
        inventory.apply_node(claim(&node), t0);
        assert!(inventory.is_running("worker-1", timeout, minutes(10)));
        assert!(!inventory.is_running("worker-1", timeout, minutes(11)));
        // The same heartbeat seen again (a label changed) is no new status.
        inventory.apply_node(claim(&node), minutes(9));
        assert!(!inventory.is_running("worker-1", timeout, minutes(11)));
        // A new one is, however old by nodeguard's clock.
        node.heartbeat = minutes(-55);
        inventory.apply_node(claim(&node), minutes(9));
        assert!(inventory.is_running("worker-1", timeout, minutes(19)));
        // A relist keeps the moment a heartbeat was first seen.
        let table = NodeTable::listed([claim(&node)], &inventory.status_seen_all(), minutes(15));
        drop(inventory.install_nodes(table));
        assert!(!inventory.is_running("worker-1", timeout, minutes(20)));
        assert!(
            inventory.is_running("worker-9", timeout, minutes(20)),
            "unknown: running"
        );
    }

    #[test]
    fn a_relist_of_csrs_keeps_the_keys_the_ledger_binds() {
        let mut inventory = Inventory::new();
        let mut entry = LedgerEntry::named("worker-1");
        entry.keys = vec![(KeyFingerprint([9; 32]), KubeletSigner::Client)].into();
        inventory.apply_identity(entry);
        let binding = KeyBinding {
            node: NodeName::from("worker-2"),
            fingerprint: KeyFingerprint([7; 32]),
            signer: KubeletSigner::Client,
            credential_id: None,
        };
        inventory.apply_csr("csr-1", Some(binding));
        inventory.replace_csrs([]);
        assert!(inventory.key(&KeyFingerprint([7; 32])).is_empty());
        assert_eq!(
            inventory
                .key(&KeyFingerprint([9; 32]))
                .other_than("x")
                .count,
            1,
            "the ledger's key was dropped with the CSRs"
        );
        inventory.replace_identities([]);
        assert!(inventory.key(&KeyFingerprint([9; 32])).is_empty());
    }
}
