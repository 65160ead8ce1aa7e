//! Pure: what the webhook would say about the cluster as it is. Every verdict here is
//! the webhook's own (`decide_node`, `decide_csr`), asked for each node:
//!
//! - *at restart*: the Node CREATE its kubelet re-sends when it restarts, against the
//!   inventory as it is;
//! - *as new*: the same CREATE as if its name were not registered (the node deleted and
//!   joining again, or a machine like it joining): every value it holds is compared with
//!   every other node's, which is how collisions between existing nodes are found;
//! - each bound kubelet key as a CSR of its own node;
//! - each pending kubelet CSR, as it was asked for.
//!
//! On top of the verdicts: how unique each identity field is in this cluster, and the
//! ledger's history: its conflicts, the machines refused for a name (and whether a second
//! machine is proven), and its records without a Node. The verdicts read the same history
//! the webhook reads: the ledger's records where they were read, and otherwise the
//! history nodeguard will record at its first sight of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;

use super::config::{CheckId, Config};
use super::verdict::{CollisionKind, Effect, Verdict};
use super::{
    CsrReview, KubeletCsr, NodeReview, Operation, decide_csr, decide_node, decide_node_against,
};
use crate::identity::csr::Requester;
use crate::identity::{CsrClaim, KubeletSigner, NodeClaim};
use crate::inventory::{Holders, Inventory, UNCLAIMED_RECORD_TTL};

/// What `audit` reads besides the inventory.
#[derive(Debug, Clone, Copy)]
pub struct AuditInput<'a> {
    /// The cluster to audit: its Nodes, kubelet keys and ledger records.
    pub inventory: &'a Inventory,
    /// The configuration the webhook decides under.
    pub config: &'a Config,
    /// The time the verdicts are asked at: whether a node is running depends on it.
    pub now: Timestamp,
    /// Each node's labels, where known, for exemptions by label.
    pub labels: Option<&'a HashMap<String, Vec<(String, String)>>>,
    /// Kubelet CSRs not yet approved or denied, by name.
    pub pending: &'a [(String, CsrReview)],
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// How many Nodes the inventory holds.
    pub nodes: usize,
    /// Values two or more nodes hold, one entry per check and value.
    pub collisions: Vec<AuditCollision>,
    /// How well each identity field tells machines apart here.
    pub fields: Vec<FieldReport>,
    /// Ledger records with a conflict.
    pub conflicts: Vec<LedgerConflict>,
    /// Ledger records whose Node does not exist.
    pub orphans: Vec<OrphanRecord>,
    /// Machines the ledger records as refused for a node's name.
    pub refused: Vec<RefusedReport>,
    /// Nodes whose pods' status writes are judged (another machine writes as the node),
    /// and since when.
    pub guarded: Vec<(String, Timestamp)>,
    /// Pending kubelet CSRs the webhook would refuse, by name.
    pub pending: Vec<PendingVerdict>,
    /// Per node, in name order.
    pub verdicts: Vec<NodeVerdicts>,
}

/// A machine refused for a node's name, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedReport {
    /// The node whose name the machine was refused.
    pub node: String,
    /// The check that refused it.
    pub check: String,
    /// The machine's values, as a person compares them with a machine.
    pub machine: String,
    /// When it was first refused.
    pub first_refused: Timestamp,
    /// When it was last refused.
    pub last_refused: Timestamp,
    /// When the node's own machine was seen running after it: two machines proven.
    pub proven: Option<Timestamp>,
}

/// What the webhook would answer a pending kubelet CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingVerdict {
    /// The CSR's name.
    pub name: String,
    /// The node it asks credentials for.
    pub node: String,
    /// What the webhook would answer: a denial (CSRs it would allow are left out).
    pub verdict: Verdict,
}

/// A value that two or more nodes hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCollision {
    /// The check that found it.
    pub check: CheckId,
    /// The field as messages name it: `machine-id`, `InternalIP`, `kubelet key`.
    pub field: &'static str,
    /// The value, in full.
    pub value: String,
    /// `clone` (held with no evidence that it is shared, or by exactly two nodes since
    /// before nodeguard: likely a clone), `shared` (shared by evidence: warned),
    /// `reused` (an address of a node no kubelet runs).
    pub kind: CollisionKind,
    /// What the webhook does with it for a newcomer, after modes: deny or warn.
    pub effect: Effect,
    /// Every node holding it, in name order.
    pub nodes: Vec<String>,
    /// The webhook's message, as one of these nodes would get it joining as new.
    pub message: String,
    /// For a shared value, the evidence: `since first seen`, `moved together`, `same
    /// host kernel`.
    pub evidence: Option<&'static str>,
}

/// How unique one identity field is in this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReport {
    /// The check that compares the field.
    pub check: CheckId,
    /// Nodes reporting a value for it.
    pub reporting: usize,
    /// Distinct values among those.
    pub distinct: usize,
    /// Nodes whose value nodeguard never compares (a placeholder or a declared shared value).
    pub ignored: usize,
    /// Values held by two or more nodes.
    pub shared_values: usize,
    /// The most nodes holding one value.
    pub largest_group: usize,
    /// How well the field tells machines apart, judged from the counts above.
    pub uniqueness: Uniqueness,
    /// One line: what this means and what to do.
    pub summary: String,
}

/// How well an identity field tells machines apart in this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    /// Every node its own value.
    Unique,
    /// A few values shared by a few nodes (each such value is a collision above).
    MostlyUnique,
    /// One value held by half the nodes or more (at least 3): the field cannot tell
    /// machines apart here.
    NotUnique,
    /// No node reports a value nodeguard compares.
    Absent,
}

impl Uniqueness {
    /// As the report prints it: `unique`, `mostly-unique`, `not-unique`, `absent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Uniqueness::Unique => "unique",
            Uniqueness::MostlyUnique => "mostly-unique",
            Uniqueness::NotUnique => "not-unique",
            Uniqueness::Absent => "absent",
        }
    }
}

/// Two machines writing one node, as its ledger record holds the conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConflict {
    /// The node both machines write as.
    pub node: String,
    /// The check that found it (`two-kubelets`).
    pub check: String,
    /// The boot seen first: its machine keeps the node.
    pub kept_boot: String,
    /// The other machine's boot: its writes are refused.
    pub refused_boot: String,
    /// When the conflict was recorded.
    pub detected: Timestamp,
    /// The denial the refused machine gets, with the remedy.
    pub message: String,
}

/// A ledger record whose Node does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanRecord {
    /// The node name the record is for.
    pub node: String,
    /// Owned by a deleted Node: the garbage collector removes it.
    pub owned: bool,
    /// Unowned and older than the unclaimed-record TTL: the recorder removes it.
    pub expired: bool,
}

/// What the webhook would answer for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVerdicts {
    /// The node's name.
    pub node: String,
    /// Its kubelet restarting now (the Node CREATE it re-sends).
    pub restart: Verdict,
    /// Its Node deleted and the same machine registering again.
    pub as_new: Verdict,
}

/// The review a kubelet sends for `claim` when it (re)registers.
pub fn registration(claim: &NodeClaim, labels: Vec<(String, String)>) -> NodeReview {
    let mut review = NodeReview::new(Operation::Create, Some(claim.clone()), None);
    review.labels = labels;
    review
}

/// Audits the inventory under the configuration.
pub fn audit(input: AuditInput<'_>) -> Audit {
    let mut names: Vec<&str> = input.inventory.nodes().map(|n| &*n.name).collect();
    names.sort_unstable();
    let verdicts = node_verdicts(input, &names);
    assemble(input, verdicts)
}

/// What the webhook would answer for each of these nodes (those the inventory holds), in
/// their order. A caller holding a lock can audit a large inventory in slices of names
/// and [`assemble`] the whole once: each slice is the same call.
pub fn node_verdicts(input: AuditInput<'_>, names: &[&str]) -> Vec<NodeVerdicts> {
    let AuditInput {
        inventory,
        config,
        now,
        labels,
        ..
    } = input;
    names
        .iter()
        .filter_map(|name| inventory.node(name))
        .map(|claim| {
            let labels = labels
                .and_then(|l| l.get(&*claim.name))
                .cloned()
                .unwrap_or_default();
            let review = registration(claim, labels);
            NodeVerdicts {
                node: claim.name.to_string(),
                restart: decide_node(&review, inventory, config, now),
                as_new: decide_node_against(&review, None, inventory, config, now),
            }
        })
        .collect()
}

/// The report from every node's verdicts: collisions gathered from them and from the
/// bound keys, field statistics and the ledger, as the inventory holds them now.
pub fn assemble(input: AuditInput<'_>, mut verdicts: Vec<NodeVerdicts>) -> Audit {
    let AuditInput {
        inventory,
        config,
        now,
        ..
    } = input;
    verdicts.sort_by(|a, b| a.node.cmp(&b.node));
    let nodes = inventory.nodes().count();

    let mut groups = Groups::default();
    for verdicts in &verdicts {
        groups.add(&verdicts.node, &verdicts.as_new);
    }
    for (fingerprint, holders) in inventory.key_values() {
        if holders.len() < 2 {
            continue;
        }
        for node in holders.names() {
            let review = CsrReview {
                operation: Operation::Create,
                kubelet: Some(KubeletCsr {
                    signer: KubeletSigner::Client,
                    requester: Requester::NodeItself,
                    claim: Ok(CsrClaim {
                        node: node.clone(),
                        fingerprint: *fingerprint,
                        ip_sans: Vec::new(),
                        dns_sans: Vec::new(),
                    }),
                }),
            };
            groups.add(node, &decide_csr(&review, inventory, config, now));
        }
    }

    let mut pending = Vec::new();
    for (name, review) in input.pending {
        let verdict = decide_csr(review, inventory, config, now);
        if verdict.allowed() {
            continue;
        }
        let node = review
            .kubelet
            .as_ref()
            .and_then(|k| k.claim.as_ref().ok())
            .map(|claim| claim.node.to_string())
            .unwrap_or_default();
        pending.push(PendingVerdict {
            name: name.clone(),
            node,
            verdict,
        });
    }
    pending.sort_by(|a, b| a.name.cmp(&b.name));

    let mut conflicts = Vec::new();
    let mut orphans = Vec::new();
    let mut refused = Vec::new();
    let mut guarded = Vec::new();
    let mut records: Vec<_> = inventory.identities().collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    for record in records {
        let name = &*record.name;
        for machine in record.refused.iter() {
            refused.push(RefusedReport {
                node: name.to_string(),
                check: machine.check.to_string(),
                machine: machine.describe(),
                first_refused: machine.first_refused,
                last_refused: machine.last_refused,
                proven: machine.proven,
            });
        }
        if let Some(guard) = record.pod_guard(now) {
            guarded.push((name.to_string(), guard.since));
        }
        if let Some(conflict) = record.conflict() {
            conflicts.push(LedgerConflict {
                node: name.to_string(),
                check: conflict.check.to_string(),
                kept_boot: conflict.kept_boot.to_string(),
                refused_boot: conflict.refused_boot.to_string(),
                detected: conflict.detected,
                message: conflict.message.to_string(),
            });
        }
        if inventory.node(name).is_none() {
            let owned = record.owner.is_some();
            orphans.push(OrphanRecord {
                node: name.to_string(),
                owned,
                expired: !owned && record.is_unclaimed(false, now, UNCLAIMED_RECORD_TTL),
            });
        }
    }

    Audit {
        nodes,
        collisions: groups.finish(),
        fields: field_reports(inventory, config, nodes),
        conflicts,
        orphans,
        refused,
        guarded,
        pending,
        verdicts,
    }
}

impl Audit {
    /// Whether anything needs a person: a collision, a not-unique field, a conflict, a
    /// record without a Node, or a node the webhook would refuse.
    pub fn has_findings(&self) -> bool {
        !self.collisions.is_empty()
            || self
                .fields
                .iter()
                .any(|f| f.uniqueness == Uniqueness::NotUnique)
            || !self.conflicts.is_empty()
            || !self.orphans.is_empty()
            || !self.refused.is_empty()
            || !self.pending.is_empty()
            || self
                .verdicts
                .iter()
                .any(|v| !v.restart.allowed() || !v.as_new.allowed())
    }

    /// Counts by check id and kind, as `nodeguard_audit_findings` exports them: each
    /// collision by its kind, each not-unique field as `not-unique`, each ledger conflict
    /// as `conflict`, each record without a Node as `orphan` (check `ledger`), each node
    /// refused at restart as `refused`.
    pub fn counts(&self) -> BTreeMap<(String, &'static str), usize> {
        let mut counts = BTreeMap::new();
        let mut add = |check: &str, kind: &'static str| {
            *counts.entry((check.to_string(), kind)).or_insert(0) += 1;
        };
        for collision in &self.collisions {
            add(collision.check.as_str(), collision.kind.as_str());
        }
        for field in self
            .fields
            .iter()
            .filter(|f| f.uniqueness == Uniqueness::NotUnique)
        {
            add(field.check.as_str(), "not-unique");
        }
        for conflict in &self.conflicts {
            add(&conflict.check, "conflict");
        }
        for _ in &self.orphans {
            add("ledger", "orphan");
        }
        for machine in &self.refused {
            add(
                &machine.check,
                if machine.proven.is_some() {
                    "second-machine"
                } else {
                    "refused-machine"
                },
            );
        }
        for pending in &self.pending {
            if let Some(check) = pending.verdict.deciding_check() {
                add(check.as_str(), "pending-refused");
            }
        }
        for verdicts in &self.verdicts {
            if let Some(check) = verdicts
                .restart
                .deciding_check()
                .filter(|_| !verdicts.restart.allowed())
            {
                add(check.as_str(), "refused");
            }
        }
        counts
    }
}

/// Collisions gathered per check and value from every node's findings.
#[derive(Default)]
struct Groups {
    by_value: BTreeMap<(CheckId, String), AuditCollision>,
}

impl Groups {
    fn add(&mut self, node: &str, verdict: &Verdict) {
        for finding in &verdict.findings {
            let Some(collision) = &finding.collision else {
                continue;
            };
            let entry = self
                .by_value
                .entry((finding.check, collision.value.clone()))
                .or_insert_with(|| AuditCollision {
                    check: finding.check,
                    field: collision.field,
                    value: collision.value.clone(),
                    kind: collision.kind,
                    effect: finding.effect,
                    nodes: Vec::new(),
                    message: finding.message.clone(),
                    evidence: collision.shared_by,
                });
            // The most telling view wins: a clone over a reused address over sharing.
            if severity(collision.kind) > severity(entry.kind) {
                entry.kind = collision.kind;
                entry.message = finding.message.clone();
            }
            if finding.effect == Effect::Deny {
                entry.effect = Effect::Deny;
            }
            let members: BTreeSet<String> = entry
                .nodes
                .drain(..)
                .chain([node.to_string()])
                .chain(collision.holders.iter().cloned())
                .collect();
            entry.nodes = members.into_iter().collect();
        }
    }

    /// The collisions. A value exactly two nodes shared when nodeguard first saw the
    /// cluster is still most likely a copy that predates it: reported as a `clone`,
    /// though a newcomer bringing it is only warned.
    fn finish(self) -> Vec<AuditCollision> {
        self.by_value
            .into_values()
            .map(|mut collision| {
                if collision.kind == CollisionKind::Shared
                    && collision.nodes.len() == 2
                    && collision.evidence == Some(super::sharing::Shared::Recorded.describe())
                {
                    collision.kind = CollisionKind::Clone;
                }
                collision
            })
            .collect()
    }
}

fn severity(kind: CollisionKind) -> u8 {
    match kind {
        CollisionKind::Shared => 0,
        CollisionKind::Reused => 1,
        CollisionKind::Clone => 2,
    }
}

/// The identity fields nodeguard compares, and where a fleet declares a value shared.
const FIELDS: [(CheckId, &str, Option<&str>); 5] = [
    (
        CheckId::MachineId,
        "machine-id",
        Some("sharedValues.machineIDs"),
    ),
    (
        CheckId::SystemUuid,
        "system UUID",
        Some("sharedValues.systemUUIDs"),
    ),
    (CheckId::ProviderId, "provider ID", None),
    (
        CheckId::Hostname,
        "hostname",
        Some("sharedValues.hostnames"),
    ),
    (
        CheckId::InternalIp,
        "InternalIP",
        Some("sharedValues.addresses"),
    ),
];

fn field_reports(inventory: &Inventory, config: &Config, nodes: usize) -> Vec<FieldReport> {
    FIELDS
        .iter()
        .map(|&(check, field, declare)| {
            let mut stats = FieldStats::default();
            match check {
                CheckId::MachineId => {
                    for (v, h) in inventory.machine_id_values() {
                        stats.add(config.machine_id_is_shared(v), h);
                    }
                }
                CheckId::SystemUuid => {
                    for (v, h) in inventory.system_uuid_values() {
                        stats.add(config.system_uuid_is_shared(v), h);
                    }
                }
                CheckId::ProviderId => {
                    for (_, h) in inventory.provider_id_values() {
                        stats.add(false, h);
                    }
                }
                CheckId::Hostname => {
                    for (v, h) in inventory.hostname_values() {
                        stats.add(config.hostname_is_shared(v), h);
                    }
                }
                _ => {
                    for (v, h) in inventory.internal_ip_values() {
                        stats.add(config.address_is_shared(v), h);
                    }
                }
            }
            stats.report(check, field, declare, nodes)
        })
        .collect()
}

#[derive(Default)]
struct FieldStats {
    reporting: usize,
    distinct: usize,
    ignored: usize,
    shared_values: usize,
    largest_group: usize,
}

impl FieldStats {
    fn add(&mut self, ignored: bool, holders: Holders<'_>) {
        let count = holders.len();
        if ignored {
            self.ignored += count;
            return;
        }
        self.reporting += count;
        self.distinct += 1;
        if count >= 2 {
            self.shared_values += 1;
        }
        self.largest_group = self.largest_group.max(count);
    }

    fn report(
        self,
        check: CheckId,
        field: &str,
        declare: Option<&str>,
        nodes: usize,
    ) -> FieldReport {
        let remedy = match declare {
            Some(key) => format!("set {check} to warn or off, or declare it in {key}"),
            None => format!("set {check} to warn or off"),
        };
        let ignored = if self.ignored > 0 {
            format!(
                "; {} node(s) report a placeholder or declared shared value, never compared",
                self.ignored
            )
        } else {
            String::new()
        };
        let (uniqueness, summary) = if self.reporting == 0 {
            (
                Uniqueness::Absent,
                format!("{field}: no node reports one nodeguard compares{ignored}"),
            )
        } else if self.largest_group <= 1 {
            (
                Uniqueness::Unique,
                format!(
                    "{field}: unique ({} nodes, {} values){ignored}",
                    self.reporting, self.distinct
                ),
            )
        } else if self.largest_group >= 3 && self.largest_group * 2 >= self.reporting {
            let held_by = if self.largest_group == nodes {
                format!("all {nodes} nodes")
            } else {
                format!("{} of {} nodes", self.largest_group, self.reporting)
            };
            (
                Uniqueness::NotUnique,
                format!(
                    "{field}: one value shared by {held_by}: this field cannot tell machines apart here; {remedy}{ignored}"
                ),
            )
        } else {
            (
                Uniqueness::MostlyUnique,
                format!(
                    "{field}: {} value(s) held by more than one node (see the collisions), {} values among {} nodes{ignored}",
                    self.shared_values, self.distinct, self.reporting
                ),
            )
        };
        FieldReport {
            check,
            reporting: self.reporting,
            distinct: self.distinct,
            ignored: self.ignored,
            shared_values: self.shared_values,
            largest_group: self.largest_group,
            uniqueness,
            summary,
        }
    }
}
