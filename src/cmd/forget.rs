//! `nodeguard forget <node>`: clears a node's conflict, the machines refused for its
//! name and the boots before its current one, once the copy has its own identity. A
//! read-modify-write with the record's resourceVersion, redone on 409, so it never
//! erases what the recorder wrote meanwhile.

use kube::api::{Api, PostParams};

use crate::plumbing::kube_client::KubeArgs;
use crate::record::{Conflict, NodeIdentity, RefusedMachine};

/// Which node's conflict and refused machines to clear, in which cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetArgs {
    /// The node name (the NodeIdentity's name).
    pub node: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Clears the node's record; its exit code.
pub async fn run(args: &ForgetArgs) -> anyhow::Result<u8> {
    let client = args.kube.client().await?;
    let api = Api::all(client);
    let outcome = forget(&api, &args.node)
        .await
        .map_err(|error| anyhow::anyhow!("cannot update NodeIdentity {}: {error}", args.node))?;
    println!("{}", outcome.describe(&args.node));
    Ok(0)
}

const MAX_ATTEMPTS: usize = 5;

/// What `forget` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgotten {
    /// The node has no NodeIdentity.
    NoRecord,
    /// A record without a conflict or a refused machine: only older boots were dropped
    /// (if any).
    NoConflict { boots_dropped: usize },
    /// What was cleared: the conflict, the machines refused for the name, or both.
    Cleared {
        conflict: Option<Conflict>,
        refused: Vec<RefusedMachine>,
        boots_dropped: usize,
    },
}

impl Forgotten {
    /// One line for the person who ran the command.
    pub fn describe(&self, node: &str) -> String {
        match self {
            Forgotten::NoRecord => format!("node {node} has no NodeIdentity; nothing to forget"),
            Forgotten::NoConflict { boots_dropped } => format!(
                "node {node} had no conflict and no refused machine; dropped {boots_dropped} \
                 earlier boot(s) from its history"
            ),
            Forgotten::Cleared {
                conflict,
                refused,
                boots_dropped,
            } => {
                let mut parts = Vec::new();
                if let Some(conflict) = conflict {
                    parts.push(format!(
                        "cleared the {} conflict of node {node} (boot {} kept, boot {} refused \
                         since {}); a machine writing {node} with another boot is a reboot \
                         again until it alternates",
                        conflict.check,
                        conflict.kept_boot,
                        conflict.refused_boot,
                        conflict.detected
                    ));
                }
                if !refused.is_empty() {
                    let machines: Vec<String> = refused.iter().map(describe_machine).collect();
                    parts.push(format!(
                        "forgot {} machine(s) refused for the name {node} ({}): each is judged \
                         afresh at its next attempt",
                        refused.len(),
                        machines.join("; ")
                    ));
                }
                parts.push(format!("dropped {boots_dropped} earlier boot(s)"));
                parts.join("; ")
            }
        }
    }
}

/// A refused machine as a person recognises it.
fn describe_machine(machine: &RefusedMachine) -> String {
    let proven = match machine.proven {
        Some(at) => format!(", proven a second machine at {at}"),
        None => String::new(),
    };
    format!(
        "{}, first refused at {}{proven}",
        machine.describe(),
        machine.first_refused
    )
}

pub async fn forget(api: &Api<NodeIdentity>, node: &str) -> Result<Forgotten, kube::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(mut record) = api.get_opt(node).await? else {
            return Ok(Forgotten::NoRecord);
        };
        let boots_before = record.spec.boots.len();
        let cleared = record.forget();
        let boots_dropped = boots_before - record.spec.boots.len();
        if cleared.conflict.is_none() && cleared.refused_machines.is_empty() && boots_dropped == 0 {
            return Ok(Forgotten::NoConflict { boots_dropped });
        }
        match api.replace(node, &PostParams::default(), &record).await {
            Ok(_) => {
                return Ok(
                    if cleared.conflict.is_none() && cleared.refused_machines.is_empty() {
                        Forgotten::NoConflict { boots_dropped }
                    } else {
                        Forgotten::Cleared {
                            conflict: cleared.conflict,
                            refused: cleared.refused_machines,
                            boots_dropped,
                        }
                    },
                );
            }
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < MAX_ATTEMPTS => {}
            Err(error) => return Err(error),
        }
    }
}
