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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};

    #[test]
    fn the_same_machine_re_registering_after_a_kubelet_restart_is_allowed() {
        let original = worker(1);
        let inventory = cluster(&[&original, &worker(2)]);
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
        // After a reboot: a new boot id, the same machine.
        let rebooted = original.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0");
        assert_eq!(
            decide(&create(&rebooted), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn another_machine_registering_a_ready_nodes_name_is_denied() {
        let original = worker(1);
        let mut impostor = worker(7);
        impostor.name = original.name.clone();
        impostor.internal_ip = original.internal_ip.clone();
        let verdict = decide(&create(&impostor), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
        assert_eq!(
            verdict.denial_message().unwrap(),
            format!(
                "nodeguard [name-takeover]: node \"worker-1\" is registered and Ready on another \
                 machine (machine-id {}, system UUID {}; this machine: {}, {}); give this machine \
                 its own hostname, or if it replaces worker-1, drain and delete node worker-1 first",
                original.machine_id,
                original.system_uuid,
                impostor.machine_id,
                impostor.system_uuid
            )
        );
    }

    #[test]
    fn a_replacement_for_a_node_that_is_not_ready_is_allowed_with_a_warning() {
        let mut original = worker(1);
        original.ready = false;
        let mut replacement = worker(7);
        replacement.name = original.name.clone();
        let verdict = decide(&create(&replacement), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        // The kind fixture's Ready condition changed at 2024-02-20T11:18:12Z.
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [name-takeover]: taking over node \"worker-1\", not Ready for 1011d0h on its previous machine"
            ]
        );
    }

    #[test]
    fn a_node_registered_without_identity_can_be_claimed_by_its_kubelet() {
        // A Node pre-created by a provisioner carries no nodeInfo: nothing contradicts.
        let original = worker(1);
        let mut bare = crate::demo::kubelet::node_object(&original);
        bare["status"]["nodeInfo"] = serde_json::json!({});
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node(claim_of(&bare));
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
