//! `nodeguard forget <node>`: clears a node's conflict and the boots before its current
//! one, once the copy has its own identity. A read-modify-write with the record's
//! resourceVersion, redone on 409, so it never erases what the recorder wrote meanwhile.

use kube::api::{Api, PostParams};

use crate::record::{Conflict, NodeIdentity};

const MAX_ATTEMPTS: usize = 5;

/// What `forget` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgotten {
    /// The node has no NodeIdentity.
    NoRecord,
    /// A record without a conflict: only older boots were dropped (if any).
    NoConflict { boots_dropped: usize },
    /// The conflict that was cleared.
    Cleared {
        conflict: Conflict,
        boots_dropped: usize,
    },
}

impl Forgotten {
    /// One line for the person who ran the command.
    pub fn describe(&self, node: &str) -> String {
        match self {
            Forgotten::NoRecord => format!("node {node} has no NodeIdentity; nothing to forget"),
            Forgotten::NoConflict { boots_dropped } => format!(
                "node {node} had no conflict; dropped {boots_dropped} earlier boot(s) from its history"
            ),
            Forgotten::Cleared {
                conflict,
                boots_dropped,
            } => format!(
                "cleared the {} conflict of node {node} (boot {} kept, boot {} refused since {}); \
                 dropped {boots_dropped} earlier boot(s): a machine writing {node} with another \
                 boot is a reboot again until it alternates",
                conflict.check, conflict.kept_boot, conflict.refused_boot, conflict.detected
            ),
        }
    }
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
        if cleared.is_none() && boots_dropped == 0 {
            return Ok(Forgotten::NoConflict { boots_dropped });
        }
        match api.replace(node, &PostParams::default(), &record).await {
            Ok(_) => {
                return Ok(match cleared {
                    Some(conflict) => Forgotten::Cleared {
                        conflict,
                        boots_dropped,
                    },
                    None => Forgotten::NoConflict { boots_dropped },
                });
            }
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < MAX_ATTEMPTS => {}
            Err(error) => return Err(error),
        }
    }
}
