//! Machines refused for a node's name, recorded in that node's NodeIdentity by the
//! replica that refused them, so that every replica, a restarted one and a new leader
//! included, knows them. Off the request path: the webhook answers, then puts the
//! refusal on a bounded queue (full: dropped and counted; the machine retries within
//! seconds, and its next refusal is queued again). The writer is a read-modify-write
//! with the record's resourceVersion, like the recorder's: a 409 is redone on a fresh
//! read, so two replicas recording at once, or the recorder writing meanwhile, lose
//! nothing. A machine refused again is written at most every
//! [`REFUSAL_REFRESH`](nodeguard_core::ledger::REFUSAL_REFRESH).

use std::collections::HashMap;

use jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

use super::{LedgerMetrics, WriteResult};
use crate::inventory::SharedInventory;
use crate::record::{NodeIdentity, RefusalObservation};

/// Refusals waiting to be written; more are dropped.
pub const QUEUE_CAPACITY: usize = 256;

/// Attempts of one read-modify-write.
const MAX_ATTEMPTS: usize = 5;

/// A queue of [`QUEUE_CAPACITY`] refusals: the webhook's end and the writer's.
pub fn queue(metrics: LedgerMetrics) -> (RefusalSender, mpsc::Receiver<RefusalObservation>) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (RefusalSender { sender, metrics }, receiver)
}

/// The webhook's end of the queue: never waits.
#[derive(Debug, Clone)]
pub struct RefusalSender {
    sender: mpsc::Sender<RefusalObservation>,
    metrics: LedgerMetrics,
}

impl RefusalSender {
    /// Queues the refusal for writing, or drops and counts it (`dropped`) if the queue is
    /// full or no writer runs.
    pub fn offer(&self, refusal: RefusalObservation) {
        if self.sender.try_send(refusal).is_err() {
            self.metrics.observe_write(WriteResult::Dropped);
        }
    }
}

/// Writes refused machines into the ledger.
pub struct RefusalWriter {
    api: Api<NodeIdentity>,
    inventory: SharedInventory,
    metrics: LedgerMetrics,
    /// When each (node, machine) was last written by this replica: a retrying machine
    /// is queued every few seconds, before the written record comes back by the watch.
    written: HashMap<(String, String), Timestamp>,
}

impl RefusalWriter {
    pub fn new(client: kube::Client, inventory: SharedInventory, metrics: LedgerMetrics) -> Self {
        Self {
            api: Api::all(client),
            inventory,
            metrics,
            written: HashMap::new(),
        }
    }

    /// Writes the refusals it receives until the queue's senders are gone.
    pub async fn run(mut self, mut refusals: mpsc::Receiver<RefusalObservation>) {
        while let Some(refusal) = refusals.recv().await {
            self.write(&refusal, Timestamp::now()).await;
        }
    }

    /// Records one refusal, unless the ledger (or this replica's last write) already
    /// holds it recently enough.
    pub async fn write(&mut self, refusal: &RefusalObservation, now: Timestamp) {
        let key = (refusal.node.clone(), refusal.describe());
        let recent =
            |at: &Timestamp| now.duration_since(*at) < nodeguard_core::ledger::REFUSAL_REFRESH;
        if self.written.get(&key).is_some_and(recent) {
            return;
        }
        self.written.retain(|_, at| recent(at));
        let recorded = self.inventory.read(|inv| {
            inv.identity(&refusal.node).is_some_and(|entry| {
                entry.refused.iter().any(|known| {
                    (&known.machine_id, &known.system_uuid, &known.provider_id)
                        == (
                            &refusal.machine_id,
                            &refusal.system_uuid,
                            &refusal.provider_id,
                        )
                        && known.covers(refusal.boot_id.as_ref(), now)
                })
            })
        });
        if recorded {
            return;
        }
        let name = refusal.node.as_str();
        for attempt in 1..=MAX_ATTEMPTS {
            let known = match self.api.get_opt(name).await {
                Ok(known) => known,
                Err(error) => return self.failed(name, &error),
            };
            let exists = known.is_some();
            let mut record = known.unwrap_or_else(|| {
                let mut blank = NodeIdentity::blank(name);
                // A record made here belongs to the Node the machine was refused against.
                if let Some(uid) = &refusal.node_uid {
                    blank.update(|r| r.owner = Some(uid.clone()));
                }
                blank
            });
            if !record.observe_refusal(refusal, now).changed {
                self.written.insert(key, now);
                return;
            }
            let params = PostParams::default();
            let result = if exists {
                self.api.replace(name, &params, &record).await
            } else {
                self.api.create(&params, &record).await
            };
            match result {
                Ok(written) => {
                    self.metrics.observe_write(WriteResult::Written);
                    if let Some(entry) = written.entry() {
                        self.inventory.write(|inv| inv.apply_identity(entry));
                    }
                    tracing::info!(
                        node = %name,
                        check = %refusal.check,
                        machine = %key.1,
                        "recorded a machine refused for this node's name"
                    );
                    self.written.insert(key, now);
                    return;
                }
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                    self.metrics.observe_write(WriteResult::Conflict);
                    tracing::debug!(node = %name, attempt, "NodeIdentity changed meanwhile; reading it again");
                }
                Err(error) => return self.failed(name, &error),
            }
        }
        self.metrics.observe_write(WriteResult::Failed);
    }

    fn failed(&self, name: &str, error: &kube::Error) {
        self.metrics.observe_write(WriteResult::Failed);
        tracing::warn!(node = %name, %error, "could not record a refused machine; recorded at its next refusal");
    }
}
