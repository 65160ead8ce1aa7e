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

use super::{LedgerMetrics, WriteResult};
use crate::config::SharedConfig;
use crate::events::{self, EventMetrics, EventPoster, Notice};
use crate::inventory::SharedInventory;
use crate::plumbing::lease::Leadership;
use crate::policy::audit::{self, Audit, AuditInput};
use crate::policy::sharing::{self, Judging};
use crate::policy::{CollisionKind, Config};
use crate::record::{
    self, Change, Conflict, Evidence, KeyObservation, NodeIdentity, NodeObservation, Proof,
};
use crate::watch::observations::{Observation, Observed};
use crate::watch::{Readiness, WatchedNode};

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
    metrics: LedgerMetrics,
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
        metrics: LedgerMetrics,
        event_metrics: EventMetrics,
        instance: &str,
    ) -> Self {
        Self {
            api: Api::all(client.clone()),
            nodes: Api::all(client.clone()),
            events: EventPoster::new(client, instance, event_metrics),
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
                    pending: &[],
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
                pending: &[],
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
                        reason: events::reason_of(collision.check),
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
                    check: crate::record::TWO_KUBELETS,
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
    /// [`UNCLAIMED_RECORD_TTL`](crate::record::UNCLAIMED_RECORD_TTL) (made from CSRs for
    /// names that never registered). Each delete is conditional on the record being the
    /// version read, so a record claimed or changed meanwhile is kept.
    async fn remove_unclaimed(&mut self) {
        let now = Timestamp::now();
        let unclaimed: Vec<(String, Preconditions)> = self.inventory.read(|inv| {
            inv.identities()
                .filter(|entry| {
                    entry.is_unclaimed(
                        inv.node(&entry.name).is_some(),
                        now,
                        record::UNCLAIMED_RECORD_TTL,
                    )
                })
                .map(|entry| {
                    (
                        entry.name.to_string(),
                        Preconditions {
                            uid: entry.uid.as_deref().map(str::to_string),
                            resource_version: entry.resource_version.as_deref().map(str::to_string),
                        },
                    )
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
                    self.metrics.observe_write(WriteResult::Removed);
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
        // The replica keeps a compact entry per record: enough to tell that most
        // observations (a resync's nearly all) change nothing, not to rewrite the record.
        let unchanged = self.inventory.read(|inv| {
            inv.identity(&name).is_some_and(|entry| match observation {
                Observation::Node(node, _) => {
                    record::node_leaves_unchanged(entry, node, Timestamp::now())
                }
                Observation::Key(key) => record::key_leaves_unchanged(entry, key),
                Observation::Resync => true,
            })
        });
        if unchanged {
            return;
        }
        let mut known = match self.api.get_opt(&name).await {
            Ok(known) => known,
            Err(error) => {
                self.failed(&name, &error);
                return;
            }
        };
        let mut observation = observation.clone();
        let config = self
            .auditing
            .as_ref()
            .map_or_else(|| Arc::new(Config::default()), SharedConfig::current);
        for attempt in 1..=MAX_ATTEMPTS {
            let mut record = known.clone().unwrap_or_else(|| NodeIdentity::blank(&name));
            let mut change = self.apply(&observation, &mut record, &config, Timestamp::now());
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
                change = self.apply(&observation, &mut record, &config, Timestamp::now());
            }
            if !change.changed {
                return;
            }
            match self.write(known.is_some(), &record).await {
                Ok(written) => {
                    self.metrics.observe_write(WriteResult::Written);
                    if let Some(entry) = written.entry() {
                        self.inventory.write(|inv| inv.apply_identity(entry));
                    }
                    if let Some(conflict) = change.new_conflict {
                        self.announce(&name, &conflict).await;
                    }
                    for proof in &change.new_proofs {
                        self.announce_proof(&name, proof).await;
                    }
                    return;
                }
                Err(WriteError::Stale) => {
                    self.metrics.observe_write(WriteResult::Conflict);
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
        self.metrics.observe_write(WriteResult::Failed);
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
        self.metrics.observe_write(WriteResult::Failed);
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

    /// Applies one observation to a record; a Node's observation also judges which of
    /// the node's values are shared by evidence, against the inventory.
    fn apply(
        &self,
        observation: &Observation,
        record: &mut NodeIdentity,
        config: &Config,
        now: Timestamp,
    ) -> Change {
        match observation {
            Observation::Node(node, evidence) => self.inventory.read(|inventory| {
                let judging = Judging {
                    inventory,
                    config,
                    now,
                };
                record.update(|r| sharing::record_node(r, node, *evidence, judging))
            }),
            Observation::Key(key) => record.observe_key(key, now),
            Observation::Resync => Change::default(),
        }
    }

    /// A refused machine proven to be a second one: a Warning Event on the Node, a
    /// metric and a log line.
    async fn announce_proof(&mut self, name: &str, proof: &Proof) {
        let check = match proof.refused.check.parse() {
            Ok(crate::policy::CheckId::IdentityDrift) => crate::policy::CheckId::IdentityDrift,
            _ => crate::policy::CheckId::NameTakeover,
        }
        .as_str();
        self.metrics.observe_conflict_recorded(check);
        tracing::warn!(
            node = %name,
            check,
            first_refused = %proof.refused.first_refused,
            "two machines run as one node: the machine refused for its name stays refused"
        );
        let uid = self.inventory.read(|inv| {
            inv.node(name)
                .and_then(|n| n.uid.as_deref().map(str::to_string))
        });
        self.events
            .handle(Notice {
                regarding: events::node_reference(name, uid.as_deref()),
                related: None,
                reason: CONFLICT_REASON,
                action: "ProvenSecondMachine",
                check,
                note: proof_note(name, proof),
            })
            .await;
    }

    /// A new conflict: a Warning Event on the Node, a metric and a log line.
    async fn announce(&mut self, name: &str, conflict: &Conflict) {
        self.metrics
            .observe_conflict_recorded(crate::record::TWO_KUBELETS);
        tracing::warn!(
            node = %name,
            kept_boot = %conflict.kept_boot,
            refused_boot = %conflict.refused_boot,
            check = crate::record::TWO_KUBELETS,
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
            check: crate::record::TWO_KUBELETS,
            note: crate::record::conflict_note(name, conflict),
        };
        self.announced.insert(
            format!("conflict/{name}/{}", conflict.refused_boot),
            tokio::time::Instant::now(),
        );
        self.events.handle(notice).await;
    }
}

/// The note of the Warning Event for two machines proven to run as one node.
pub fn proof_note(node: &str, proof: &Proof) -> String {
    let refused = &proof.refused;
    let machine = [
        refused
            .system_uuid
            .as_deref()
            .map(|v| format!("system UUID {v}")),
        refused
            .machine_id
            .as_deref()
            .map(|v| format!("machine-id {v}")),
        refused
            .provider_id
            .as_deref()
            .map(|v| format!("provider ID {v}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    format!(
        "Two machines run as node {node}: the machine with {machine}, refused for the name \
         since {}, and node {node}'s own machine, which wrote its status since. The refused \
         machine stays refused for the name, even while {node} is down; if it is {node}'s \
         replacement, delete node {node} (or run nodeguard forget {node}).",
        refused.first_refused
    )
}
