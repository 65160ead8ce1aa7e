//! The recorder: the only writer of the ledger, active on the replica that holds the
//! lease. The watchers tell it what changed (a node's boot or identity, an issued
//! kubelet CSR); it applies that to the latest stored record and writes it back with
//! the record's resourceVersion, so two writers (a leader handing over, `nodeguard
//! forget`) never lose an update: a stale write gets 409 and is redone on a fresh read.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use super::lease::Leadership;
use super::record::{Change, Conflict, Evidence, KeyObservation, NodeIdentity, NodeObservation};
use crate::admin::events::{self, EventPoster, Notice};
use crate::admin::metrics::Metrics;
use crate::inventory::SharedInventory;
use crate::policy::CollisionKind;
use crate::policy::audit::{self, Audit, AuditInput};
use crate::watch::{Readiness, WatchedNode};
use crate::webhook::SharedConfig;

/// Attempts of one read-modify-write before giving up until the next resync.
const MAX_ATTEMPTS: usize = 5;

/// Every replica's watchers re-check the whole ledger this often (writing only what is
/// missing or stale), so nothing depends on an event being delivered.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10 * 60);

/// At most this many writes per second: a relist of a large cluster must not flood the
/// API server.
const MIN_WRITE_GAP: Duration = Duration::from_millis(20);

pub const CONFLICT_REASON: &str = events::CONFLICT_REASON;

/// Nodes audited per hold of the inventory's lock (about 1 ms of decisions).
const AUDIT_SLICE: usize = 100;

/// An audit finding is posted again after this long: Events expire after an hour.
const AUDIT_REPOST_EVERY: Duration = Duration::from_secs(55 * 60);

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

    fn node_name(&self) -> Option<&str> {
        match self {
            Observation::Node(node, _) => Some(&node.name),
            Observation::Key(key) => Some(&key.binding.node),
            Observation::Resync => None,
        }
    }

    fn apply(&self, record: &mut NodeIdentity, now: Timestamp) -> Change {
        match self {
            Observation::Node(node, evidence) => record.observe_node(node, now, *evidence),
            Observation::Key(key) => record.observe_key(key, now),
            Observation::Resync => Change::default(),
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
    order: std::collections::VecDeque<PendingKey>,
    nodes: HashMap<String, std::collections::VecDeque<Observation>>,
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
    pending: std::sync::Mutex<Pending>,
    ready: tokio::sync::Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        pending: std::sync::Mutex::new(Pending {
            senders: 1,
            ..Pending::default()
        }),
        ready: tokio::sync::Notify::new(),
    });
    (Observations(Arc::clone(&queue)), Observed(queue))
}

#[derive(Debug)]
enum WriteError {
    /// Another writer changed the record (409): read again and redo.
    Stale,
    /// This replica no longer holds the Lease: it writes nothing more.
    NotLeading,
    Api(kube::Error),
}

/// The recorder and what it writes through.
pub struct Recorder {
    api: Api<NodeIdentity>,
    nodes: Api<WatchedNode>,
    events: EventPoster,
    inventory: SharedInventory,
    metrics: Arc<Metrics>,
    next_write: tokio::time::Instant,
    synced: Option<Readiness>,
    /// With a configuration, every resync ends with an audit of the inventory.
    auditing: Option<SharedConfig>,
    /// Audit notices posted while leading, and when.
    announced: HashMap<String, tokio::time::Instant>,
    /// Checked before every write: once the Lease is lost (or the election has ended),
    /// not one more write, a resync's included. `None` outside `run` (tests driving the
    /// recorder directly).
    fence: Option<Leadership>,
}

impl Recorder {
    pub fn new(
        client: kube::Client,
        inventory: SharedInventory,
        metrics: Arc<Metrics>,
        instance: &str,
    ) -> Self {
        Self {
            api: Api::all(client.clone()),
            nodes: Api::all(client.clone()),
            events: EventPoster::new(client, instance, Arc::clone(&metrics)),
            inventory,
            metrics,
            next_write: tokio::time::Instant::now(),
            synced: None,
            auditing: None,
            announced: HashMap::new(),
            fence: None,
        }
    }

    /// Whether this replica may write the ledger now.
    fn may_write(&self) -> bool {
        self.fence.as_ref().is_none_or(Leadership::is_leader)
    }

    /// Audits the inventory under `config` after every resync: exports
    /// `nodeguard_audit_findings` and posts an Event on each node a finding concerns.
    pub fn auditing(mut self, config: SharedConfig) -> Self {
        self.auditing = Some(config);
        self
    }

    /// Records nothing until `synced` is ready: compared with a ledger not yet listed,
    /// every node would look unrecorded and be written again for nothing.
    pub fn after_sync(mut self, synced: Readiness) -> Self {
        self.synced = Some(synced);
        self
    }

    /// Records observations while this replica leads, until the channel closes.
    /// Observations that arrive while another replica leads are dropped: on taking over,
    /// a resync compares every node and CSR with the ledger anyway.
    pub async fn run(mut self, mut observations: Observed, mut leadership: Leadership) {
        self.fence = Some(leadership.clone());
        if let Some(synced) = self.synced.take() {
            loop {
                tokio::select! {
                    () = synced.wait() => break,
                    received = observations.recv() => if received.is_none() { return },
                }
            }
        }
        loop {
            if !leadership.is_leader() {
                self.metrics.set_leading(false);
                tokio::select! {
                    () = leadership.wait_until_leader() => {}
                    received = observations.recv() => match received {
                        Some(_) => continue,
                        None => return,
                    },
                }
            }
            self.metrics.set_leading(true);
            self.announced.clear();
            tracing::info!("recording node identities");
            self.resync().await;
            let mut resync = tokio::time::interval(RESYNC_EVERY);
            resync.reset();
            loop {
                tokio::select! {
                    () = leadership.wait_until_not_leader() => break,
                    received = observations.recv() => match received {
                        Some(Observation::Resync) => self.resync().await,
                        Some(observation) => self.record(&observation).await,
                        None => return,
                    },
                    _ = resync.tick() => self.resync().await,
                }
            }
            tracing::info!("stopped recording node identities: another replica leads");
        }
    }

    /// Compares every node and every issued kubelet CSR the inventory holds with the
    /// ledger and writes what differs.
    pub async fn resync(&mut self) {
        let pending: Vec<Observation> = self.inventory.read(|inv| {
            inv.nodes()
                .map(|claim| Observation::Node(NodeObservation::of(claim), Evidence::Resync))
                .chain(inv.key_bindings().map(|(csr, binding)| {
                    Observation::Key(KeyObservation {
                        csr: csr.to_string(),
                        binding: binding.clone(),
                    })
                }))
                .collect()
        });
        for observation in &pending {
            if !self.may_write() {
                tracing::info!("the lease is lost: the resync stops here");
                return;
            }
            self.record(observation).await;
        }
        self.remove_unclaimed().await;
        if self.may_write() {
            self.audit().await;
        }
    }

    /// The webhook's verdicts over the whole inventory (see [`audit`]): counted, and
    /// each clone, reused address and ledger conflict posted on its nodes, once per
    /// [`AUDIT_REPOST_EVERY`]. Values the platform shares are counted, not posted: they
    /// concern every node alike.
    pub async fn audit(&mut self) -> Option<Audit> {
        let config = self.auditing.as_ref()?.current();
        let labels = self.exempt_by_label(&config).await;
        let now = Timestamp::now();
        let (config, labels) = (&*config, labels.as_ref());
        // In slices, letting go of the inventory between them: watchers waiting to
        // write, and the reviews behind them, wait for one slice, not the whole audit.
        let mut names: Vec<String> = self
            .inventory
            .read(|inv| inv.nodes().map(|n| n.name.to_string()).collect());
        names.sort_unstable();
        let mut verdicts = Vec::with_capacity(names.len());
        for slice in names.chunks(AUDIT_SLICE) {
            let slice: Vec<&str> = slice.iter().map(String::as_str).collect();
            verdicts.extend(self.inventory.read(|inventory| {
                let input = AuditInput {
                    inventory,
                    config,
                    now,
                    labels,
                };
                audit::node_verdicts(input, &slice)
            }));
            tokio::task::yield_now().await;
        }
        let (report, uids) = self.inventory.read(|inventory| {
            let input = AuditInput {
                inventory,
                config,
                now,
                labels,
            };
            let report = audit::assemble(input, verdicts);
            let uids: HashMap<String, Option<String>> = inventory
                .nodes()
                .map(|n| (n.name.to_string(), n.uid.as_deref().map(str::to_string)))
                .collect();
            (report, uids)
        });
        self.metrics.set_audit_findings(
            report
                .counts()
                .into_iter()
                .map(|((check, kind), count)| (check, kind, count)),
        );
        let reference =
            |name: &str| events::node_reference(name, uids.get(name).and_then(|u| u.as_deref()));
        let exempt: std::collections::HashSet<&str> = report
            .verdicts
            .iter()
            .filter(|v| v.restart.exempt)
            .map(|v| v.node.as_str())
            .collect();
        let mut notices: Vec<(String, Notice)> = Vec::new();
        for collision in &report.collisions {
            if collision.kind == CollisionKind::Shared {
                continue;
            }
            for node in collision
                .nodes
                .iter()
                .filter(|n| !exempt.contains(n.as_str()))
            {
                let others: Vec<&str> = collision
                    .nodes
                    .iter()
                    .filter(|n| *n != node)
                    .map(String::as_str)
                    .collect();
                let what = match collision.kind {
                    CollisionKind::Reused => "an address handed out again, or a clone",
                    _ => "likely a clone",
                };
                let note = format!(
                    "nodeguard audit [{}]: node {node} has the {} {} of node {} ({what}); {}",
                    collision.check,
                    collision.field,
                    collision.value,
                    others.join(", "),
                    "find the copy and give it its own identity (see the runbook for this check id)",
                );
                notices.push((
                    format!("{}/{}/{node}", collision.check, collision.value),
                    Notice {
                        regarding: reference(node),
                        related: others.first().map(|o| events::node_reference(o, None)),
                        reason: crate::webhook::event_reason(collision.check),
                        action: "Audited",
                        check: collision.check.as_str(),
                        note,
                    },
                ));
            }
        }
        for conflict in &report.conflicts {
            notices.push((
                format!("conflict/{}/{}", conflict.node, conflict.refused_boot),
                Notice {
                    regarding: reference(&conflict.node),
                    related: None,
                    reason: CONFLICT_REASON,
                    action: "Audited",
                    check: super::record::TWO_KUBELETS,
                    note: conflict.message.clone(),
                },
            ));
        }
        let now = tokio::time::Instant::now();
        for (key, notice) in notices {
            let due = self
                .announced
                .get(&key)
                .is_none_or(|at| now.duration_since(*at) >= AUDIT_REPOST_EVERY);
            if due {
                self.announced.insert(key, now);
                self.events.handle(notice).await;
            }
        }
        Some(report)
    }

    /// Deletes the records that no Node has claimed within
    /// [`UNCLAIMED_RECORD_TTL`](super::record::UNCLAIMED_RECORD_TTL) (made from CSRs for
    /// names that never registered). Each delete is conditional on the record being the
    /// version read, so a record claimed or changed meanwhile is kept.
    async fn remove_unclaimed(&mut self) {
        let now = Timestamp::now();
        let unclaimed: Vec<(String, Preconditions)> = self.inventory.read(|inv| {
            inv.identities()
                .filter_map(|record| {
                    let name = record.metadata.name.as_deref()?;
                    let unclaimed = record.is_unclaimed(
                        inv.node(name).is_some(),
                        now,
                        super::record::UNCLAIMED_RECORD_TTL,
                    );
                    unclaimed.then(|| {
                        (
                            name.to_string(),
                            Preconditions {
                                uid: record.metadata.uid.clone(),
                                resource_version: record.metadata.resource_version.clone(),
                            },
                        )
                    })
                })
                .collect()
        });
        for (name, preconditions) in unclaimed {
            self.pace().await;
            if !self.may_write() {
                return;
            }
            let params = DeleteParams {
                preconditions: Some(preconditions),
                ..DeleteParams::default()
            };
            match self.api.delete(&name, &params).await {
                Ok(_) => {
                    self.metrics.observe_ledger_write("removed");
                    self.inventory.write(|inv| inv.delete_identity(&name));
                    tracing::info!(
                        node = %name,
                        "removed a NodeIdentity no Node claimed within an hour"
                    );
                }
                // Changed or already gone: the next resync looks again.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
                Err(error) => self.failed(&name, &error),
            }
        }
    }

    /// Applies one observation to the node's record: a read-modify-write that starts
    /// from the record this replica has seen and, on a 409, from a fresh read.
    pub async fn record(&mut self, observation: &Observation) {
        let Some(name) = observation.node_name() else {
            return;
        };
        let name = name.to_string();
        let mut known = self
            .inventory
            .read(|inv| inv.identity(&name).map(|record| (**record).clone()));
        let mut observation = observation.clone();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut record = known.clone().unwrap_or_else(|| NodeIdentity::blank(&name));
            let mut change = observation.apply(&mut record, Timestamp::now());
            if change.needs_confirmation {
                // An earlier boot came back: a conflict only if the Node, read again
                // now, still shows it. From here on this observation is that read.
                observation = match self.confirm(&observation).await {
                    Ok(confirmed) => confirmed,
                    Err(error) => {
                        self.failed(&name, &error);
                        return;
                    }
                };
                record = known.clone().unwrap_or_else(|| NodeIdentity::blank(&name));
                change = observation.apply(&mut record, Timestamp::now());
            }
            if !change.changed {
                return;
            }
            match self.write(known.is_some(), &record).await {
                Ok(written) => {
                    self.metrics.observe_ledger_write("written");
                    self.inventory.write(|inv| inv.apply_identity(written));
                    if let Some(conflict) = change.new_conflict {
                        self.announce(&name, &conflict).await;
                    }
                    return;
                }
                Err(WriteError::Stale) => {
                    self.metrics.observe_ledger_write("conflict");
                    tracing::debug!(node = %name, attempt, "NodeIdentity changed meanwhile; reading it again");
                    match self.api.get_opt(&name).await {
                        Ok(fresh) => known = fresh,
                        Err(error) => {
                            self.failed(&name, &error);
                            return;
                        }
                    }
                }
                Err(WriteError::Api(error)) => {
                    self.failed(&name, &error);
                    return;
                }
                Err(WriteError::NotLeading) => {
                    tracing::debug!(node = %name, "not written: the lease is lost");
                    return;
                }
            }
        }
        self.metrics.observe_ledger_write("failed");
        tracing::warn!(node = %name, "NodeIdentity kept changing under each write; left for the next resync");
    }

    /// Reads the Node of a watch observation again from the API server: the read is
    /// `Confirmed` evidence if it still shows the observed boot, and otherwise (the Node
    /// moved on, or is gone) evidence no stronger than a resync's.
    async fn confirm(&self, observation: &Observation) -> Result<Observation, kube::Error> {
        let Observation::Node(seen, _) = observation else {
            return Ok(observation.clone());
        };
        let fresh = self
            .nodes
            .get_opt(&seen.name)
            .await?
            .and_then(|node| node.claim)
            .map(|claim| NodeObservation::of(&claim));
        Ok(match fresh {
            Some(fresh) if fresh.boot_id == seen.boot_id => {
                Observation::Node(fresh, Evidence::Confirmed)
            }
            Some(fresh) => Observation::Node(fresh, Evidence::Resync),
            None => Observation::Node(seen.clone(), Evidence::Resync),
        })
    }

    /// Creates or replaces the record; both carry the resourceVersion read (none for a
    /// create), so the API server refuses a write over a newer version.
    async fn write(
        &mut self,
        exists: bool,
        record: &NodeIdentity,
    ) -> Result<NodeIdentity, WriteError> {
        self.pace().await;
        if !self.may_write() {
            return Err(WriteError::NotLeading);
        }
        let name = record.metadata.name.as_deref().unwrap_or_default();
        let params = PostParams::default();
        let result = if exists {
            self.api.replace(name, &params, record).await
        } else {
            self.api.create(&params, record).await
        };
        result.map_err(|error| match &error {
            // 409: a stale resourceVersion, or a record created meanwhile. 404: the
            // record was deleted (its Node was, or an admin released it).
            kube::Error::Api(status) if status.code == 409 || status.code == 404 => {
                WriteError::Stale
            }
            _ => WriteError::Api(error),
        })
    }

    /// Waits for this write's turn: at most one write every [`MIN_WRITE_GAP`].
    async fn pace(&mut self) {
        tokio::time::sleep_until(self.next_write).await;
        self.next_write = tokio::time::Instant::now() + MIN_WRITE_GAP;
    }

    fn failed(&self, name: &str, error: &kube::Error) {
        self.metrics.observe_ledger_write("failed");
        tracing::warn!(node = %name, %error, "could not write NodeIdentity; retried at the next resync");
    }

    /// The labels of the nodes an exemption's selector matches, as the API server
    /// selects them (the inventory keeps no labels); `None` without a selector, or if the
    /// list fails (then those nodes are audited as if not exempt, and a warning says so).
    async fn exempt_by_label(
        &self,
        config: &crate::policy::Config,
    ) -> Option<HashMap<String, Vec<(String, String)>>> {
        let selector = config.exempt_selector()?.describe();
        let params = kube::api::ListParams::default().labels(&selector);
        match self.nodes.list_metadata(&params).await {
            Ok(list) => Some(
                list.items
                    .into_iter()
                    .filter_map(|node| {
                        let name = node.metadata.name?;
                        let labels = node
                            .metadata
                            .labels
                            .unwrap_or_default()
                            .into_iter()
                            .collect();
                        Some((name, labels))
                    })
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(%error, %selector, "cannot list the nodes exempt by label; auditing them as not exempt");
                None
            }
        }
    }

    /// A new conflict: a Warning Event on the Node, a metric and a log line.
    async fn announce(&mut self, name: &str, conflict: &Conflict) {
        self.metrics
            .observe_conflict_recorded(super::record::TWO_KUBELETS);
        tracing::warn!(
            node = %name,
            kept_boot = %conflict.kept_boot,
            refused_boot = %conflict.refused_boot,
            check = super::record::TWO_KUBELETS,
            "two machines are writing one node; refusing the later boot from now on"
        );
        let uid = self.inventory.read(|inv| {
            inv.node(name)
                .and_then(|n| n.uid.as_deref().map(str::to_string))
        });
        let notice = Notice {
            regarding: events::node_reference(name, uid.as_deref()),
            related: None,
            reason: CONFLICT_REASON,
            action: "RefusedBoot",
            check: super::record::TWO_KUBELETS,
            note: super::record::conflict_note(name, conflict),
        };
        self.announced.insert(
            format!("conflict/{name}/{}", conflict.refused_boot),
            tokio::time::Instant::now(),
        );
        self.events.handle(notice).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::NodeObservation;

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
