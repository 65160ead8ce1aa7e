//! What the watchers tell the recorder: observations of Nodes and issued kubelet CSRs,
//! queued per node and coalesced, so that the queue is bounded by the cluster whatever
//! the recorder's pace.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::record::{Evidence, KeyObservation, NodeObservation};

/// What the watchers saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A Node, and how current it is known to be.
    Node(NodeObservation, Evidence),
    Key(KeyObservation),
    /// A full list completed: compare everything.
    Resync,
}

impl Observation {
    /// A Node as a watch event showed it.
    pub fn node(node: NodeObservation) -> Self {
        Observation::Node(node, Evidence::Watch)
    }

    /// The node the observation is about (a key's node for a CSR).
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Observation::Node(node, _) => Some(&node.name),
            Observation::Key(key) => Some(&key.binding.node),
            Observation::Resync => None,
        }
    }
}

/// Identity changes of one node waiting for the recorder, at most this many: the
/// watchers send only changes of identity (never heartbeats), so more than a few pending
/// means the recorder is far behind, and the oldest are dropped (the next resync compares
/// everything anyway).
pub const MAX_PENDING_PER_NODE: usize = 8;

/// What waits for the recorder, bounded by the cluster: per node its pending identity
/// changes (at most [`MAX_PENDING_PER_NODE`], in order, an observation of the same state
/// replacing the last), per CSR its latest key binding, and one resync flag for any
/// number of completed lists.
#[derive(Debug, Default)]
struct Pending {
    order: VecDeque<PendingKey>,
    nodes: HashMap<String, VecDeque<Observation>>,
    keys: HashMap<String, Observation>,
    resync: bool,
    senders: usize,
    dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PendingKey {
    Node(String),
    Key(String),
}

#[derive(Debug)]
struct Queue {
    pending: Mutex<Pending>,
    ready: tokio::sync::Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The watchers' end. Sending never blocks and never fails the watcher; with no
/// recorder listening, observations are dropped.
#[derive(Debug)]
pub struct Observations(Arc<Queue>);

impl Clone for Observations {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for Observations {
    fn drop(&mut self) {
        self.0.lock().senders -= 1;
        self.0.ready.notify_one();
    }
}

impl Observations {
    pub fn send(&self, observation: Observation) {
        {
            let mut pending = self.0.lock();
            match &observation {
                Observation::Resync => pending.resync = true,
                Observation::Node(node, _) => {
                    let name = node.name.clone();
                    let queue = pending.nodes.entry(name.clone()).or_default();
                    let was_empty = queue.is_empty();
                    let same_state = queue.back().is_some_and(|last| match last {
                        Observation::Node(last, _) => last.same_identity(node),
                        _ => false,
                    });
                    if same_state {
                        queue.pop_back();
                    }
                    queue.push_back(observation);
                    let overflow = queue.len() > MAX_PENDING_PER_NODE;
                    if overflow {
                        queue.pop_front();
                    }
                    if overflow {
                        pending.dropped += 1;
                    }
                    if was_empty {
                        pending.order.push_back(PendingKey::Node(name));
                    }
                }
                Observation::Key(key) => {
                    let csr = key.csr.clone();
                    if pending.keys.insert(csr.clone(), observation).is_none() {
                        pending.order.push_back(PendingKey::Key(csr));
                    }
                }
            }
        }
        self.0.ready.notify_one();
    }
}

/// The recorder's end.
#[derive(Debug)]
pub struct Observed(Arc<Queue>);

impl Observed {
    /// The next observation (a pending resync first), or `None` once every sender is
    /// gone and nothing is pending.
    pub async fn recv(&mut self) -> Option<Observation> {
        loop {
            let notified = self.0.ready.notified();
            {
                let mut pending = self.0.lock();
                if let Some(observation) = take_next(&mut pending) {
                    return Some(observation);
                }
                if pending.senders == 0 {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Observations dropped because a node had too many pending.
    pub fn dropped(&self) -> u64 {
        self.0.lock().dropped
    }

    /// How many observations are pending.
    pub fn len(&self) -> usize {
        let pending = self.0.lock();
        pending.nodes.values().map(|q| q.len()).sum::<usize>()
            + pending.keys.len()
            + usize::from(pending.resync)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn take_next(pending: &mut Pending) -> Option<Observation> {
    if std::mem::take(&mut pending.resync) {
        return Some(Observation::Resync);
    }
    while let Some(key) = pending.order.pop_front() {
        match &key {
            PendingKey::Node(name) => {
                let Some(queue) = pending.nodes.get_mut(name) else {
                    continue;
                };
                let Some(observation) = queue.pop_front() else {
                    pending.nodes.remove(name);
                    continue;
                };
                if queue.is_empty() {
                    pending.nodes.remove(name);
                } else {
                    // The node's next change waits its turn behind the others.
                    pending.order.push_back(key.clone());
                }
                return Some(observation);
            }
            PendingKey::Key(csr) => {
                if let Some(observation) = pending.keys.remove(csr) {
                    return Some(observation);
                }
            }
        }
    }
    None
}

pub fn observations() -> (Observations, Observed) {
    let queue = Arc::new(Queue {
        pending: Mutex::new(Pending {
            senders: 1,
            ..Pending::default()
        }),
        ready: tokio::sync::Notify::new(),
    });
    (Observations(Arc::clone(&queue)), Observed(queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(node: &str, boot: &str, version: u32) -> Observation {
        Observation::node(NodeObservation {
            name: node.to_string(),
            uid: Some(format!("uid-{node}")),
            resource_version: Some(version.to_string()),
            machine_id: Some("11c1f8e2fbf5540cd8ff218ef016ba11".to_string()),
            system_uuid: None,
            provider_id: None,
            addresses: Vec::new(),
            boot_id: Some(boot.to_string()),
            heartbeat: None,
            created: None,
        })
    }

    fn boot(observation: &Observation) -> (&str, &str) {
        match observation {
            Observation::Node(node, _) => (&node.name, node.boot_id.as_deref().unwrap_or("")),
            other => panic!("not a node observation: {other:?}"),
        }
    }

    async fn drain(observed: &mut Observed) -> Vec<Observation> {
        let mut all = Vec::new();
        while !observed.is_empty() {
            all.push(observed.recv().await.unwrap());
        }
        all
    }

    #[tokio::test]
    async fn a_boot_that_comes_back_is_kept_in_order_and_repeats_of_one_state_coalesce() {
        let (observations, mut observed) = observations();
        for (boot, version) in [("a", 1), ("a", 2), ("b", 3), ("b", 4), ("a", 5)] {
            observations.send(seen("worker-1", boot, version));
        }
        observations.send(seen("worker-2", "c", 6));
        let all = drain(&mut observed).await;
        let boots: Vec<(&str, &str)> = all.iter().map(boot).collect();
        // Each node's changes in order, the nodes taking turns.
        assert_eq!(
            boots,
            [
                ("worker-1", "a"),
                ("worker-2", "c"),
                ("worker-1", "b"),
                ("worker-1", "a")
            ]
        );
        // The newest observation of a state is the one kept.
        let Observation::Node(first, _) = &all[0] else {
            unreachable!()
        };
        assert_eq!(first.resource_version.as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn a_node_keeps_at_most_its_latest_changes_and_resyncs_collapse_into_one_first() {
        let (observations, mut observed) = observations();
        for i in 0..20 {
            observations.send(seen("worker-1", &format!("boot-{i}"), i));
        }
        observations.send(Observation::Resync);
        observations.send(Observation::Resync);
        assert_eq!(observed.len(), MAX_PENDING_PER_NODE + 1);
        assert_eq!(observed.dropped(), 12);
        let all = drain(&mut observed).await;
        assert_eq!(all[0], Observation::Resync);
        let boots: Vec<&str> = all[1..].iter().map(|o| boot(o).1).collect();
        assert_eq!(boots.first(), Some(&"boot-12"));
        assert_eq!(boots.last(), Some(&"boot-19"));
    }

    #[tokio::test]
    async fn the_queue_ends_once_every_sender_is_gone_and_nothing_is_pending() {
        let (observations, mut observed) = observations();
        let second = observations.clone();
        drop(observations);
        second.send(seen("worker-1", "a", 1));
        drop(second);
        assert!(
            observed.recv().await.is_some(),
            "what was sent is still delivered"
        );
        assert!(observed.recv().await.is_none());
    }
}
