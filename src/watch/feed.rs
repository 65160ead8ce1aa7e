//! Applying watcher events to the inventory, without any I/O: what `run` does with each
//! event, callable from a test with hand-made events.

use std::fmt::Debug;

use jiff::Timestamp;
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;

use super::objects::{WatchedCsr, WatchedNode};
use super::observations::{Observation, Observations};
use crate::identity::{KeyBinding, NodeClaim};
use crate::inventory::LedgerEntry;
use crate::inventory::{Inventory, NodeTable, SharedInventory};
use crate::record::{KeyObservation, NodeIdentity, NodeObservation};

/// A watched kind and how its objects enter and leave the inventory.
pub trait Watched:
    kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static
{
    /// What the inventory keeps of one object.
    type Record: Debug + Send;

    /// `None` for an object without a name: it cannot be stored, so it holds nothing.
    fn into_record(self) -> Option<Self::Record>;

    /// Applies one object seen at `now`; returns what the ledger's recorder should look
    /// at, if the object changed anything the ledger keeps.
    fn apply(
        inventory: &mut Inventory,
        record: Self::Record,
        now: Timestamp,
    ) -> Option<Observation>;

    fn delete(&self, inventory: &mut Inventory);

    /// A completed list as it will be installed, prepared outside the inventory's lock
    /// (reading it, at most, to carry over what this replica saw before).
    type Prepared: Send;

    fn prepare(
        records: Vec<Self::Record>,
        inventory: &SharedInventory,
        now: Timestamp,
    ) -> Self::Prepared;

    /// Installs a prepared list; returns what it replaced, to be dropped outside the lock.
    fn install(inventory: &mut Inventory, prepared: Self::Prepared) -> Replaced;

    /// Whether a completed list of this kind gives the recorder something to compare.
    const FEEDS_LEDGER: bool;
}

impl Watched for WatchedNode {
    type Record = NodeClaim;

    fn into_record(self) -> Option<NodeClaim> {
        self.claim
    }

    fn apply(inventory: &mut Inventory, claim: NodeClaim, now: Timestamp) -> Option<Observation> {
        let observation = NodeObservation::of(&claim);
        let old = inventory.node(&claim.name);
        let unchanged = old.is_some_and(|old| NodeObservation::of(old).same_identity(&observation));
        // A status written while a machine refused for the name waits for proof that
        // the node's own machine runs: the recorder looks at it too.
        let proves = old.is_some_and(|old| old.readiness.heartbeat != claim.readiness.heartbeat)
            && inventory
                .identity(&claim.name)
                .is_some_and(|entry| entry.refused.iter().any(|r| r.proven.is_none()));
        inventory.apply_node(claim, now);
        (!unchanged || proves).then_some(Observation::node(observation))
    }

    fn delete(&self, inventory: &mut Inventory) {
        // The claim's name is the one the inventory is keyed by (it is trimmed).
        let name = self
            .claim
            .as_ref()
            .map(|c| &*c.name)
            .or(self.meta.name.as_deref());
        if let Some(name) = name {
            inventory.delete_node(name);
        }
    }

    type Prepared = NodeTable;

    fn prepare(claims: Vec<NodeClaim>, inventory: &SharedInventory, now: Timestamp) -> NodeTable {
        let previous = inventory.read(Inventory::status_seen_all);
        NodeTable::listed(claims, &previous, now)
    }

    fn install(inventory: &mut Inventory, table: NodeTable) -> Replaced {
        Replaced(Some(Box::new(inventory.install_nodes(table))))
    }

    const FEEDS_LEDGER: bool = true;
}

impl Watched for WatchedCsr {
    type Record = (String, Option<KeyBinding>);

    fn into_record(self) -> Option<Self::Record> {
        let name = self.meta.name.filter(|n| !n.is_empty())?;
        Some((name, self.binding))
    }

    fn apply(
        inventory: &mut Inventory,
        (name, binding): Self::Record,
        _now: Timestamp,
    ) -> Option<Observation> {
        let observation = binding.as_ref().map(|binding| KeyObservation {
            csr: name.clone(),
            binding: binding.clone(),
        });
        inventory.apply_csr(&name, binding);
        observation.map(Observation::Key)
    }

    fn delete(&self, inventory: &mut Inventory) {
        if let Some(name) = self.meta.name.as_deref() {
            inventory.delete_csr(name);
        }
    }

    type Prepared = Vec<Self::Record>;

    fn prepare(records: Vec<Self::Record>, _: &SharedInventory, _: Timestamp) -> Self::Prepared {
        records
    }

    fn install(inventory: &mut Inventory, records: Self::Prepared) -> Replaced {
        inventory.replace_csrs(records);
        Replaced(None)
    }

    const FEEDS_LEDGER: bool = true;
}

impl Watched for NodeIdentity {
    /// The compact entry: the object itself is dropped as soon as it is decoded.
    type Record = LedgerEntry;

    fn into_record(self) -> Option<LedgerEntry> {
        self.entry()
    }

    fn apply(
        inventory: &mut Inventory,
        entry: LedgerEntry,
        _now: Timestamp,
    ) -> Option<Observation> {
        inventory.apply_identity(entry);
        None
    }

    fn delete(&self, inventory: &mut Inventory) {
        if let Some(name) = self.metadata.name.as_deref() {
            inventory.delete_identity(name);
        }
    }

    type Prepared = Vec<Self::Record>;

    fn prepare(records: Vec<Self::Record>, _: &SharedInventory, _: Timestamp) -> Self::Prepared {
        records
    }

    fn install(inventory: &mut Inventory, records: Self::Prepared) -> Replaced {
        inventory.replace_identities(records);
        Replaced(None)
    }

    const FEEDS_LEDGER: bool = false;
}

/// Gives the heap a relist freed back to the system. glibc keeps freed memory in its
/// arenas: without this a replica that relisted 50,000 Nodes would stay at the relist's
/// peak (two node tables at once) for good. musl's allocator (the image's) unmaps large
/// freed regions itself.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists and returns unused pages;
    // it has no preconditions and touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// What a relist replaced, dropped once the inventory's lock is released.
pub struct Replaced(Option<Box<dyn Send>>);

impl std::fmt::Debug for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Replaced(..)"
        } else {
            "Replaced(nothing)"
        })
    }
}

/// One kind's event stream as seen by the inventory. A (re)list is buffered and applied
/// in one replacement when it completes, so objects deleted while the watch was down
/// disappear, and readers never see a half-listed inventory.
#[derive(Debug)]
pub struct Feed<K: Watched> {
    listing: Vec<K::Record>,
    synced: bool,
}

impl<K: Watched> Default for Feed<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Watched> Feed<K> {
    pub fn new() -> Self {
        Self {
            listing: Vec::new(),
            synced: false,
        }
    }

    /// Whether a full list has completed at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Applies one watcher event, seen now. Returns true when the event completed a
    /// full list. The inventory is write-locked only for the one change an event makes.
    pub fn handle(
        &mut self,
        event: Event<K>,
        inventory: &SharedInventory,
        observations: Option<&Observations>,
    ) -> bool {
        self.handle_at(event, inventory, observations, Timestamp::now())
    }

    /// [`Feed::handle`], for an event seen at `now`.
    pub fn handle_at(
        &mut self,
        event: Event<K>,
        inventory: &SharedInventory,
        observations: Option<&Observations>,
        now: Timestamp,
    ) -> bool {
        match event {
            Event::Init => {
                self.listing.clear();
                false
            }
            Event::InitApply(object) => {
                self.listing.extend(object.into_record());
                false
            }
            Event::InitDone => {
                let records = std::mem::take(&mut self.listing);
                let listed = records.len();
                let prepared = K::prepare(records, inventory, now);
                let (replaced, size) = inventory.write(|inv| {
                    let replaced = K::install(inv, prepared);
                    (replaced, inv.size())
                });
                drop(replaced);
                release_freed_memory();
                tracing::info!(
                    resource = %K::plural(&()),
                    listed,
                    nodes = size.nodes,
                    key_bindings = size.key_bindings,
                    "full list applied"
                );
                self.synced = true;
                if K::FEEDS_LEDGER
                    && let Some(observations) = observations
                {
                    observations.send(Observation::Resync);
                }
                true
            }
            Event::Apply(object) => {
                tracing::debug!(resource = %K::plural(&()), name = ?object.meta().name, "applied");
                if let Some(record) = object.into_record() {
                    let observation = inventory.write(|inv| K::apply(inv, record, now));
                    if let (Some(observation), Some(observations)) = (observation, observations) {
                        observations.send(observation);
                    }
                }
                false
            }
            Event::Delete(object) => {
                tracing::debug!(resource = %K::plural(&()), name = ?object.meta().name, "deleted");
                inventory.write(|inv| object.delete(inv));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::MachineId;

    fn node(name: &str, machine_id: &str) -> WatchedNode {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "resourceVersion": "1" },
            "status": { "nodeInfo": { "machineID": machine_id } },
        }))
        .unwrap()
    }

    fn holds(inventory: &SharedInventory, machine_id: &str) -> bool {
        let id = MachineId::parse(machine_id).unwrap();
        inventory.read(|inv| !inv.machine_id(&id).is_empty())
    }

    #[test]
    fn a_relist_is_applied_whole_when_it_completes() {
        let inventory = SharedInventory::default();
        let mut feed = Feed::<WatchedNode>::new();
        assert!(!feed.handle(Event::Init, &inventory, None));
        assert!(!feed.handle(Event::InitApply(node("a", "aaaa")), &inventory, None));
        assert!(
            !holds(&inventory, "aaaa"),
            "visible before the list completed"
        );
        assert!(feed.handle(Event::InitDone, &inventory, None));
        assert!(feed.is_synced() && holds(&inventory, "aaaa"));

        feed.handle(Event::Apply(node("b", "bbbb")), &inventory, None);
        assert!(holds(&inventory, "bbbb"));

        // `b` was deleted while the watch was down: the next list drops it.
        feed.handle(Event::Init, &inventory, None);
        feed.handle(Event::InitApply(node("a", "aaaa")), &inventory, None);
        feed.handle(Event::InitDone, &inventory, None);
        assert!(holds(&inventory, "aaaa") && !holds(&inventory, "bbbb"));

        feed.handle(Event::Delete(node("a", "aaaa")), &inventory, None);
        assert_eq!(inventory.read(|inv| inv.size().nodes), 0);
    }

    #[test]
    fn an_interrupted_relist_starts_over() {
        let inventory = SharedInventory::default();
        let mut feed = Feed::<WatchedNode>::new();
        feed.handle(Event::Init, &inventory, None);
        feed.handle(Event::InitApply(node("stale", "5555")), &inventory, None);
        feed.handle(Event::Init, &inventory, None);
        feed.handle(Event::InitApply(node("a", "aaaa")), &inventory, None);
        feed.handle(Event::InitDone, &inventory, None);
        assert!(holds(&inventory, "aaaa") && !holds(&inventory, "5555"));
    }
}
