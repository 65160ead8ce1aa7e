//! `nodeguard audit`: the webhook's verdicts over a cluster as it is, before (or while)
//! nodeguard enforces. Reads the cluster live or from a dump, runs
//! [`crate::policy::audit`], and prints a table or JSON. Exit codes: 0 nothing found,
//! 1 findings, 2 the audit could not run.

pub mod load;

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::config::ConfigArgs;
use crate::plumbing::kube_client::KubeArgs;
use crate::policy::audit::{self, Audit, AuditInput, Uniqueness};
use crate::policy::{Config, Effect, Outcome, Verdict};
use load::Cluster;

/// How `audit` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What to audit, under which configuration, and how to print it.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// A dump to read instead of the live cluster: the JSON of `kubectl get
    /// nodes,csr,nodeidentities -o json`, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Judge the cluster as of this time (RFC 3339). Defaults to now for a live
    /// cluster, and for a dump to its newest node heartbeat (about when it was taken).
    #[arg(long, value_name = "TIME")]
    pub at: Option<Timestamp>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The exit code for a report: 0 clean, 1 findings.
pub fn exit_code(report: &Audit) -> u8 {
    u8::from(report.has_findings())
}

/// Runs the audit and prints it; the exit code as documented.
pub async fn run(args: AuditArgs) -> anyhow::Result<u8> {
    let config = args.config.load()?;
    let cluster = match &args.file {
        Some(path) => read_dump(path)?,
        None => {
            let client = args.kube.client().await?;
            load::read_live(&client).await?
        }
    };
    let now = args
        .at
        .or_else(|| args.file.as_ref().and(cluster.latest_heartbeat))
        .unwrap_or_else(Timestamp::now);
    let mut cluster = cluster;
    let report = audit_cluster(&mut cluster, &config, now);
    let text = match args.output {
        Output::Table => table(&report, &cluster, &config, now),
        Output::Json => {
            let mut text = serde_json::to_string_pretty(&to_json(&report, &cluster, now))?;
            text.push('\n');
            text
        }
    };
    print!("{text}");
    Ok(exit_code(&report))
}

/// Reads a dump from a file or from standard input (`-`).
pub fn read_dump(path: &std::path::Path) -> anyhow::Result<Cluster> {
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let mut cluster = Cluster::default();
    cluster
        .add_list(&bytes)
        .with_context(|| format!("in {}", path.display()))?;
    Ok(cluster)
}

/// The audit of what was read (without a ledger, of the history nodeguard will record
/// at its first sight: see [`Cluster::first_sight`]).
pub fn audit_cluster(cluster: &mut Cluster, config: &Config, now: Timestamp) -> Audit {
    cluster.first_sight(config, now);
    audit::audit(AuditInput {
        inventory: &cluster.inventory,
        config,
        now,
        labels: Some(&cluster.labels),
        pending: &cluster.pending,
    })
}

/// A verdict in a few words: `allowed`, `warned [machine-id]`, `denied [two-kubelets]`.
fn short(verdict: &Verdict) -> String {
    let checks = |effect: Effect| {
        let mut ids: Vec<&str> = verdict
            .findings
            .iter()
            .filter(|f| f.effect == effect)
            .map(|f| f.check.as_str())
            .collect();
        ids.dedup();
        ids.join(",")
    };
    match verdict.outcome() {
        Outcome::Denied => format!("denied [{}]", checks(Effect::Deny)),
        Outcome::Warned => format!("warned [{}]", checks(Effect::Warn)),
        other => other.as_str().to_string(),
    }
}

/// Rows as aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The report for a terminal.
pub fn table(report: &Audit, cluster: &Cluster, config: &Config, now: Timestamp) -> String {
    let mut text = format!(
        "nodeguard audit: {} nodes, {} CSRs ({} binding a kubelet key), {} NodeIdentities{}, as of {}, mode {}\n",
        cluster.counts.nodes,
        cluster.counts.csrs,
        cluster.counts.bound_csrs,
        cluster.counts.identities,
        if cluster.ledger_read {
            ""
        } else {
            " (no ledger: nodeguard not installed)"
        },
        now.round(jiff::Unit::Second).unwrap_or(now),
        config.global_mode().as_str(),
    );

    text.push_str("\nCOLLISIONS: values more than one node holds\n");
    if report.collisions.is_empty() {
        text.push_str("none\n");
    } else {
        let mut rows = vec![
            ["CHECK", "VALUE", "KIND", "A NEWCOMER", "NODES"]
                .map(String::from)
                .to_vec(),
        ];
        for c in &report.collisions {
            let kind = match (c.kind, c.evidence) {
                (crate::policy::CollisionKind::Clone, _) => "likely clone".to_string(),
                (crate::policy::CollisionKind::Shared, Some(why)) => format!("shared ({why})"),
                (crate::policy::CollisionKind::Shared, None) => "shared".to_string(),
                (crate::policy::CollisionKind::Reused, _) => "reused address".to_string(),
            };
            rows.push(vec![
                c.check.to_string(),
                format!("{} {}", c.field, crate::policy::verdict::clip(&c.value, 40)),
                kind,
                match c.effect {
                    Effect::Deny => "denied".to_string(),
                    Effect::Warn => "warned".to_string(),
                },
                c.nodes.join(", "),
            ]);
        }
        text.push_str(&columns(&rows));
    }

    text.push_str("\nFIELDS: how well each tells machines apart here\n");
    let mut rows = vec![
        ["FIELD", "NODES", "VALUES", "SHARED", "UNIQUENESS"]
            .map(String::from)
            .to_vec(),
    ];
    for f in &report.fields {
        rows.push(vec![
            f.check.to_string(),
            f.reporting.to_string(),
            f.distinct.to_string(),
            f.shared_values.to_string(),
            f.uniqueness.as_str().to_string(),
        ]);
    }
    text.push_str(&columns(&rows));
    for f in report
        .fields
        .iter()
        .filter(|f| f.uniqueness != Uniqueness::Unique)
    {
        text.push_str(&format!("  {}\n", f.summary));
    }

    text.push_str("\nLEDGER\n");
    if !cluster.ledger_read {
        text.push_str(
            "not read (no NodeIdentity objects): judged with the history nodeguard records at its \
             first sight of this cluster, where what nodes share now stays shared\n",
        );
    } else if report.conflicts.is_empty() && report.orphans.is_empty() && report.refused.is_empty()
    {
        text.push_str("no conflicts, no refused machines, every record has its Node\n");
    }
    for c in &report.conflicts {
        text.push_str(&format!(
            "conflict  {} [{}]: boot {} kept, boot {} refused since {}; after stopping the copy: nodeguard forget {}\n",
            c.node, c.check, c.kept_boot, c.refused_boot, c.detected, c.node
        ));
    }
    for (node, since) in &report.guarded {
        text.push_str(&format!(
            "pods      {node}: status writes judged since {since}, another machine writing as the node (refusals: nodeguard_admission_requests_total{{webhook=\"pods\",result=\"denied\"}}, Events on the Node)\n"
        ));
    }
    for r in &report.refused {
        let state = match r.proven {
            Some(at) => format!(
                "a second machine, proven at {at} (the node's own machine wrote its status after): refused even while {} is down, until nodeguard forget {} or the Node's deletion",
                r.node, r.node
            ),
            None => format!(
                "let through once {} has had no status written for the heartbeat timeout, unless its own machine writes again",
                r.node
            ),
        };
        text.push_str(&format!(
            "refused   {} [{}]: machine {}, refused {} to {}; {state}\n",
            r.node, r.check, r.machine, r.first_refused, r.last_refused
        ));
    }
    for o in &report.orphans {
        let fate = if o.owned {
            "its Node is gone; the garbage collector removes it"
        } else if o.expired {
            "no Node claimed it within an hour; the recorder removes it"
        } else {
            "made from a CSR; waiting for its Node to register"
        };
        text.push_str(&format!("no Node   {}: {fate}\n", o.node));
    }

    if !report.pending.is_empty() {
        text.push_str("\nPENDING CSRS the webhook would refuse\n");
        for p in &report.pending {
            text.push_str(&format!(
                "{} for node {}: {}\n",
                p.name,
                p.node,
                p.verdict.denial_message().unwrap_or_default()
            ));
        }
    }

    text.push_str("\nNODES: what the webhook would answer\n");
    let mut rows = vec![
        ["NODE", "KUBELET RESTART", "REGISTERING AS NEW"]
            .map(String::from)
            .to_vec(),
    ];
    for v in &report.verdicts {
        rows.push(vec![v.node.clone(), short(&v.restart), short(&v.as_new)]);
    }
    text.push_str(&columns(&rows));
    for v in &report.verdicts {
        if let Some(message) = v.restart.denial_message() {
            text.push_str(&format!("  {} at restart: {message}\n", v.node));
        }
    }

    let clones = report
        .collisions
        .iter()
        .filter(|c| c.kind == crate::policy::CollisionKind::Clone)
        .count();
    let not_unique = report
        .fields
        .iter()
        .filter(|f| f.uniqueness == Uniqueness::NotUnique)
        .count();
    let refused = report
        .verdicts
        .iter()
        .filter(|v| !v.restart.allowed())
        .count();
    text.push_str(&if report.has_findings() {
        format!(
            "\nfindings: {} collision(s), {clones} likely clone(s); {not_unique} field(s) not unique; {} ledger conflict(s); {} refused machine(s); {} record(s) without a Node; {} pending CSR(s) refused; {refused} node(s) refused at restart\n",
            report.collisions.len(),
            report.conflicts.len(),
            report.refused.len(),
            report.orphans.len(),
            report.pending.len(),
        )
    } else {
        "\nno findings\n".to_string()
    });
    text
}

fn verdict_json(verdict: &Verdict) -> Value {
    json!({
        "outcome": verdict.outcome().as_str(),
        "checks": verdict.findings.iter().map(|f| json!({
            "check": f.check.as_str(),
            "effect": match f.effect { Effect::Deny => "deny", Effect::Warn => "warn" },
            "message": f.message,
        })).collect::<Vec<_>>(),
        "message": verdict.denial_message(),
        "warnings": verdict.warnings(),
    })
}

/// The report for scripts; its shape is documented in docs/audit.md.
pub fn to_json(report: &Audit, cluster: &Cluster, now: Timestamp) -> Value {
    json!({
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "AuditReport",
        "at": now.to_string(),
        "read": {
            "nodes": cluster.counts.nodes,
            "csrs": cluster.counts.csrs,
            "boundCSRs": cluster.counts.bound_csrs,
            "nodeIdentities": cluster.counts.identities,
            "ledgerRead": cluster.ledger_read,
        },
        "findings": report.has_findings(),
        "counts": report.counts().into_iter().map(|((check, kind), count)| json!({
            "check": check, "kind": kind, "count": count,
        })).collect::<Vec<_>>(),
        "collisions": report.collisions.iter().map(|c| json!({
            "check": c.check.as_str(),
            "field": c.field,
            "value": c.value,
            "kind": c.kind.as_str(),
            "effect": match c.effect { Effect::Deny => "deny", Effect::Warn => "warn" },
            "nodes": c.nodes,
            "message": c.message,
            "evidence": c.evidence,
        })).collect::<Vec<_>>(),
        "pendingCSRs": report.pending.iter().map(|p| json!({
            "name": p.name,
            "node": p.node,
            "verdict": verdict_json(&p.verdict),
        })).collect::<Vec<_>>(),
        "fields": report.fields.iter().map(|f| json!({
            "check": f.check.as_str(),
            "reporting": f.reporting,
            "distinct": f.distinct,
            "ignored": f.ignored,
            "sharedValues": f.shared_values,
            "largestGroup": f.largest_group,
            "uniqueness": f.uniqueness.as_str(),
            "summary": f.summary,
        })).collect::<Vec<_>>(),
        "ledger": {
            "conflicts": report.conflicts.iter().map(|c| json!({
                "node": c.node,
                "check": c.check,
                "keptBoot": c.kept_boot,
                "refusedBoot": c.refused_boot,
                "detected": c.detected.to_string(),
                "message": c.message,
            })).collect::<Vec<_>>(),
            "podsGuarded": report.guarded.iter().map(|(node, since)| json!({
                "node": node,
                "since": since.to_string(),
            })).collect::<Vec<_>>(),
            "refusedMachines": report.refused.iter().map(|r| json!({
                "node": r.node,
                "check": r.check,
                "machine": r.machine,
                "firstRefused": r.first_refused.to_string(),
                "lastRefused": r.last_refused.to_string(),
                "proven": r.proven.map(|at| at.to_string()),
            })).collect::<Vec<_>>(),
            "withoutNode": report.orphans.iter().map(|o| json!({
                "node": o.node,
                "owned": o.owned,
                "expired": o.expired,
            })).collect::<Vec<_>>(),
        },
        "nodes": report.verdicts.iter().map(|v| json!({
            "name": v.node,
            "restart": verdict_json(&v.restart),
            "asNew": verdict_json(&v.as_new),
        })).collect::<Vec<_>>(),
    })
}
