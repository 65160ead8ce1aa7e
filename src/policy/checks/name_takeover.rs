//! `name-takeover` for Nodes: a CREATE for a name that is already registered.
//!
//! The kubelet re-sends its CREATE on every restart, so a CREATE from the machine that
//! registered the name (same machine-id and system UUID) is the normal case. From a
//! different machine it is a clone or a replacement: refused while the registered node
//! is Ready, allowed with a warning once it is not (the old machine is gone).

use super::{for_how_long, or_unknown};
use crate::identity::NodeClaim;
use crate::policy::{CheckId, Finding, NodeInput, Operation};

/// No identity field that both claims report differs. Unknown values are no evidence.
pub fn same_machine(a: &NodeClaim, b: &NodeClaim) -> bool {
    fn agree<T: PartialEq>(x: Option<&T>, y: Option<&T>) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
    }
    agree(a.machine_id.as_ref(), b.machine_id.as_ref())
        && agree(a.system_uuid.as_ref(), b.system_uuid.as_ref())
}

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    if input.operation != Operation::Create {
        return Vec::new();
    }
    let claim = input.object;
    let Some(registered) = input.inventory.node(&claim.name) else {
        return Vec::new();
    };
    if same_machine(registered, claim) {
        return Vec::new();
    }
    let name = &claim.name;
    let finding = if registered.readiness.ready {
        Finding::deny(
            CheckId::NameTakeover,
            format!(
                "nodeguard [name-takeover]: node \"{name}\" is registered and Ready on another \
                 machine (machine-id {}, system UUID {}; this machine: {}, {}); give this \
                 machine its own hostname, or if it replaces {name}, drain and delete node \
                 {name} first",
                or_unknown(registered.machine_id.as_ref()),
                or_unknown(registered.system_uuid.as_ref()),
                or_unknown(claim.machine_id.as_ref()),
                or_unknown(claim.system_uuid.as_ref()),
            ),
            format!(
                "nodeguard [name-takeover]: node \"{name}\" is registered and Ready on another machine"
            ),
        )
    } else {
        Finding::warn(
            CheckId::NameTakeover,
            format!(
                "nodeguard [name-takeover]: taking over node \"{name}\", not Ready{} on its previous machine",
                for_how_long(registered.readiness.since, input.now)
            ),
        )
    };
    vec![finding]
}
