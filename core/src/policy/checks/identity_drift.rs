//! `identity-drift`: an UPDATE in which a registered node reports another machine
//! (another system UUID or provider ID, or another machine-id without its system UUID
//! to say it is the same hardware). A reboot changes only the boot id; a different
//! machine writing the node is refused while a kubelet is running it (its status was
//! seen written within the heartbeat timeout), and let through with a warning once
//! none is, unless that machine was refused for the name before and the node's own
//! machine was seen running after (see `name-takeover`). A new machine-id with the same
//! real system UUID is the same machine (kind, stateless systems, a regenerated id): a
//! warning.

use super::name_takeover::{proven_message, refusal};
use super::{not_running, prefix};
use crate::policy::machine::{self, Sameness};
use crate::policy::{CheckId, Finding, NodeInput, Operation};

/// An UPDATE reporting another machine: refused while a kubelet runs the node or once a
/// second machine is proven, else a warning.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    if input.operation != Operation::Update {
        return Vec::new();
    }
    let (Some(old), Some(sameness)) = (input.before, input.sameness.as_ref()) else {
        return Vec::new();
    };
    let name = &input.object.name;
    let finding = match sameness {
        Sameness::Same => return Vec::new(),
        Sameness::NewMachineId => Finding::warn(
            CheckId::IdentityDrift,
            format!(
                "nodeguard [identity-drift]: node \"{name}\" reports a new machine-id with its own system UUID: same machine"
            ),
        ),
        Sameness::Different {
            field,
            registered: before,
            claimed: after,
        } => {
            let (inventory, config) = (input.inventory, input.config);
            let registered = input.registered.unwrap_or(old);
            let proven = inventory.identity(name).and_then(|entry| {
                machine::proven_refusal(entry, registered, input.object.ids(), inventory, config)
            });
            if let Some(refused) = proven {
                Finding::deny(
                    CheckId::IdentityDrift,
                    proven_message(CheckId::IdentityDrift, name, field, before, after, refused),
                    format!(
                        "nodeguard [identity-drift]: node \"{name}\" belongs to another machine, seen running after this one was refused"
                    ),
                )
                .with_refusal(refusal(CheckId::IdentityDrift, registered, input.object))
            } else if machine::is_running(inventory, name, config, input.now) {
                Finding::deny(
                    CheckId::IdentityDrift,
                    format!(
                        "nodeguard [identity-drift]: node \"{name}\" runs with {field} {}, but this \
                         write reports {}: a second machine is writing as {name} with its \
                         credentials; shut that machine down and give it a new identity, or if \
                         {name} really moved to new hardware, delete node {name} and let it \
                         re-register. This machine's writes are let through once {name} has had \
                         no status written for {}",
                        prefix(before),
                        prefix(after),
                        config.describe_heartbeat_timeout(),
                    ),
                    format!(
                        "nodeguard [identity-drift]: node \"{name}\" runs with another {field}"
                    ),
                )
                .with_refusal(refusal(CheckId::IdentityDrift, registered, input.object))
            } else {
                Finding::warn(
                    CheckId::IdentityDrift,
                    format!(
                        "nodeguard [identity-drift]: node \"{name}\" changed {field} ({}; new machine?)",
                        not_running(inventory, name, input.now)
                    ),
                )
            }
        }
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
            "nodeguard [identity-drift]: node \"worker-1\" runs with system UUID 0139a350…, but \
             this write reports 564d8f2a…: a second machine is writing as worker-1 with its \
             credentials; shut that machine down and give it a new identity, or if worker-1 \
             really moved to new hardware, delete node worker-1 and let it re-register. This \
             machine's writes are let through once worker-1 has had no status written for 10m"
        );
    }

    #[test]
    fn a_new_machine_id_with_the_same_system_uuid_is_the_same_machine_and_only_warned() {
        // minikube, Kairos, a regenerated /etc/machine-id: the kubelet's first status
        // write after its CREATE reports the new machine-id while the node is Ready.
        let node = worker(1);
        let inventory = cluster(&[&node]);
        let mut restarted = node.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0");
        restarted.machine_id = "0123456789abcdef0123456789abcdef".into();
        let verdict = decide(&update(&node, &restarted), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(verdict.deciding_check(), Some(CheckId::IdentityDrift));
    }

    #[test]
    fn a_second_machine_is_let_through_once_the_node_has_had_no_status_for_the_timeout() {
        let mut original = worker(1);
        original.heartbeat = now() - jiff::SignedDuration::from_mins(12);
        let inventory = cluster(&[&original]);
        let mut moved = original.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0");
        moved.system_uuid = "564d8f2a-1c3b-4e5d-9f60-718293a4b5c6".into();
        let verdict = decide(&update(&original, &moved), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [identity-drift]: node \"worker-1\" changed system UUID (no status for 12m; new machine?)"
            ]
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
        let mut bare = crate::sample::node_object(&node);
        bare["status"]["nodeInfo"] = serde_json::json!({});
        let review = crate::policy::NodeReview {
            labels: Vec::new(),
            operation: crate::policy::Operation::Update,
            object: Some(claim(&node)),
            old_object: Some(claim_of(&bare)),
        };
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node_as_written(claim_of(&bare));
        assert_eq!(decide(&review, &inventory).outcome(), Outcome::Allowed);
    }
}
