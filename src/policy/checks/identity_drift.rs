//! `identity-drift`: an UPDATE that changes a registered node's machine-id or system
//! UUID. A reboot changes only the boot id; a different value means a different machine
//! is writing the node, which is refused while the node is Ready.

use crate::policy::{CheckId, Finding, NodeInput, Operation};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    if input.operation != Operation::Update {
        return Vec::new();
    }
    let Some(old) = input.old_object else {
        return Vec::new();
    };
    let new = input.object;
    let config = input.config;
    let mut changes: Vec<(&str, String, String)> = Vec::new();
    if let (Some(before), Some(after)) = (&old.machine_id, &new.machine_id)
        && before != after
        && !config.machine_id_is_shared(before)
        && !config.machine_id_is_shared(after)
    {
        changes.push(("machine-id", before.to_string(), after.to_string()));
    }
    if let (Some(before), Some(after)) = (&old.system_uuid, &new.system_uuid)
        && before != after
        && !config.system_uuid_is_shared(before)
        && !config.system_uuid_is_shared(after)
    {
        changes.push(("system UUID", before.to_string(), after.to_string()));
    }
    let Some((field, before, after)) = changes.first() else {
        return Vec::new();
    };
    let name = &new.name;
    let finding = if old.readiness.ready {
        Finding::deny(
            CheckId::IdentityDrift,
            format!(
                "nodeguard [identity-drift]: node \"{name}\" is Ready with {field} {before}, but \
                 this write reports {after}: a second machine is writing as {name} with its \
                 credentials; shut that machine down and give it a new identity, or if {name} \
                 really moved to new hardware, delete node {name} and let it re-register"
            ),
            format!("nodeguard [identity-drift]: node \"{name}\" is Ready with another {field}"),
        )
    } else {
        Finding::warn(
            CheckId::IdentityDrift,
            format!(
                "nodeguard [identity-drift]: node \"{name}\" changed {field} while not Ready (new machine?)"
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
    fn a_reboot_changes_only_the_boot_id_and_is_allowed() {
        let node = worker(1);
        let inventory = cluster(&[&node]);
        let rebooted = node.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0");
        assert_eq!(
            decide(&update(&node, &rebooted), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn another_system_uuid_writing_a_ready_node_is_denied() {
        // The incident: a clone with the original's name and credentials patches its status.
        let original = worker(1);
        let inventory = cluster(&[&original]);
        let mut clone = original.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0");
        clone.system_uuid = "564d8f2a-1c3b-4e5d-9f60-718293a4b5c6".into();
        let verdict = decide(&update(&original, &clone), &inventory);
        assert_eq!(verdict.deciding_check(), Some(CheckId::IdentityDrift));
        assert_eq!(
            verdict.denial_message().unwrap(),
            format!(
                "nodeguard [identity-drift]: node \"worker-1\" is Ready with system UUID {}, but \
                 this write reports 564d8f2a-1c3b-4e5d-9f60-718293a4b5c6: a second machine is \
                 writing as worker-1 with its credentials; shut that machine down and give it a \
                 new identity, or if worker-1 really moved to new hardware, delete node worker-1 \
                 and let it re-register",
                original.system_uuid
            )
        );
    }

    #[test]
    fn new_hardware_under_a_node_that_is_not_ready_is_allowed_with_a_warning() {
        let mut original = worker(1);
        original.ready = false;
        let inventory = cluster(&[&original]);
        let mut moved = original.clone();
        moved.machine_id = "0123456789abcdef0123456789abcdef".into();
        let verdict = decide(&update(&original, &moved), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(verdict.deciding_check(), Some(CheckId::IdentityDrift));
    }

    #[test]
    fn identity_reported_for_the_first_time_is_not_drift() {
        let node = worker(1);
        let mut bare = crate::demo::kubelet::node_object(&node);
        bare["status"]["nodeInfo"] = serde_json::json!({});
        let review = crate::policy::NodeReview {
            operation: crate::policy::Operation::Update,
            object: Some(claim(&node)),
            old_object: Some(claim_of(&bare)),
        };
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node(claim_of(&bare));
        assert_eq!(decide(&review, &inventory).outcome(), Outcome::Allowed);
    }
}
