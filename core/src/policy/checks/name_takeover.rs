//! `name-takeover` for Nodes: a CREATE for a name that is already registered.
//!
//! The kubelet re-sends its CREATE on every restart, so a CREATE from the machine that
//! registered the name is the normal case (see [`crate::policy::machine`] for what
//! "the same machine" means, a new machine-id on the same hardware included). From a
//! different machine it is a clone or a replacement: refused while a kubelet is running
//! the registered node, allowed with a warning once none is (the old machine is gone).
//! "Running" is judged from the Ready condition's heartbeat, which only status writes
//! move: a refused kubelet keeps renewing its Lease, so its old Node stays Ready, but
//! its heartbeat ages, and after the heartbeat timeout it is let through.

use super::{not_running, prefix};
use crate::policy::machine::{self, Sameness};
use crate::policy::{CheckId, Finding, NodeInput, Operation};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    if input.operation != Operation::Create {
        return Vec::new();
    }
    let (Some(registered), Some(sameness)) = (input.before, input.sameness.as_ref()) else {
        return Vec::new();
    };
    let name = &input.object.name;
    let finding = match sameness {
        Sameness::Same => return Vec::new(),
        Sameness::NewMachineId => Finding::warn(
            CheckId::NameTakeover,
            format!(
                "nodeguard [name-takeover]: node \"{name}\" registers with a new machine-id and its own system UUID: same machine"
            ),
        ),
        Sameness::Different {
            field,
            registered: theirs,
            claimed: ours,
        } => {
            let config = input.config;
            if machine::is_live(registered, config, input.now) {
                Finding::deny(
                    CheckId::NameTakeover,
                    format!(
                        "nodeguard [name-takeover]: node \"{name}\" is registered to another machine \
                         that is running ({field} {}, this machine {}); give this machine its own \
                         hostname, or if it replaces {name}, drain and delete node {name} first. \
                         If this machine is {name} itself, it is let through once {name} has had \
                         no status written for {}",
                        prefix(theirs),
                        prefix(ours),
                        config.describe_heartbeat_timeout(),
                    ),
                    format!(
                        "nodeguard [name-takeover]: node \"{name}\" is registered to another, running machine"
                    ),
                )
            } else {
                Finding::warn(
                    CheckId::NameTakeover,
                    format!(
                        "nodeguard [name-takeover]: taking over node \"{name}\" from another machine ({})",
                        not_running(registered, input.now)
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
    use crate::sample::Machine;
    use jiff::SignedDuration;

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

    fn impostor_of(original: &Machine) -> Machine {
        let mut impostor = worker(7);
        impostor.name = original.name.clone();
        impostor.internal_ip = original.internal_ip.clone();
        impostor
    }

    #[test]
    fn another_machine_registering_a_running_nodes_name_is_denied_with_the_longest_wait() {
        let original = worker(1);
        let verdict = decide(&create(&impostor_of(&original)), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
        // Other machines' values appear as prefixes only.
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [name-takeover]: node \"worker-1\" is registered to another machine that \
             is running (system UUID 0139a350…, this machine 0739a350…); give this machine its \
             own hostname, or if it replaces worker-1, drain and delete node worker-1 first. If \
             this machine is worker-1 itself, it is let through once worker-1 has had no status \
             written for 10m"
        );
        assert!(
            !verdict
                .denial_message()
                .unwrap()
                .contains(&original.machine_id)
        );
    }

    #[test]
    fn a_replacement_for_a_node_that_is_not_ready_is_allowed_with_a_warning() {
        let mut original = worker(1);
        original.ready = false;
        let verdict = decide(&create(&impostor_of(&original)), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [name-takeover]: taking over node \"worker-1\" from another machine (not Ready)"
            ]
        );
    }

    #[test]
    fn a_node_kept_ready_only_by_its_lease_is_let_through_once_its_heartbeat_is_old() {
        // The refused kubelet renews the Lease, so the node lifecycle controller keeps
        // the old Node Ready; only its status writes, all refused, would move the heartbeat.
        let mut original = worker(1);
        original.heartbeat = now() - SignedDuration::from_mins(9);
        let impostor = impostor_of(&original);
        assert_eq!(
            decide(&create(&impostor), &cluster(&[&original])).outcome(),
            Outcome::Denied,
            "9 minutes without status is within a live kubelet's jittered report period"
        );
        original.heartbeat = now() - SignedDuration::from_mins(11);
        let verdict = decide(&create(&impostor), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [name-takeover]: taking over node \"worker-1\" from another machine (no status for 11m)"
            ]
        );
    }

    #[test]
    fn a_kind_node_restarted_with_a_new_machine_id_and_its_uuid_is_the_same_machine() {
        // kind gives a node a new machine-id at every container start and every node
        // the host's product UUID.
        let host_uuid = "1ad82a4c-2a18-11b2-a85c-82c3099c6263";
        let mut nodes: Vec<Machine> = (1..=3).map(worker).collect();
        for node in &mut nodes {
            node.system_uuid = host_uuid.into();
        }
        let inventory = cluster(&nodes.iter().collect::<Vec<_>>());
        let mut restarted = nodes[0].rebooted("4b6f1c2e-8d3a-4e5f-9a7b-0c1d2e3f4a5b");
        restarted.machine_id = "7d2e4f6a8b0c1d3e5f7a9b1c3d5e7f90".into();
        let verdict = decide(&create(&restarted), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [name-takeover]: node \"worker-1\" registers with a new machine-id and its own system UUID: same machine"
            ]
        );
    }

    #[test]
    fn a_machine_id_that_proves_nothing_before_or_after_is_no_evidence_of_another_machine() {
        // Talos moving from a baked placeholder machine-id to a derived one.
        let mut before = worker(1);
        before.machine_id = "ad432f2cb0c28bbcd1f87a20199237f9".into();
        before.system_uuid = "03000200-0400-0500-0006-000700080009".into();
        let mut after = before.clone();
        after.machine_id = "5e1f0c9d8b7a69584736251403f2e1d0".into();
        assert_eq!(
            decide(&create(&after), &cluster(&[&before])).outcome(),
            Outcome::Allowed
        );
        // The remedy followed in a pool whose nodes share one machine-id, on boards
        // without a real UUID.
        let pool_id = "a38f8eb989a4463c8c194d086528363d";
        let mut pool: Vec<Machine> = (1..=3).map(worker).collect();
        for node in &mut pool {
            node.machine_id = pool_id.into();
            node.system_uuid = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF".into();
        }
        let inventory = cluster(&pool.iter().collect::<Vec<_>>());
        let mut regenerated = pool[0].clone();
        regenerated.machine_id = "0f9e8d7c6b5a49382716a5b4c3d2e1f0".into();
        assert_eq!(
            decide(&create(&regenerated), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn another_provider_id_is_another_machine() {
        let mut original = worker(1);
        original.provider_id = Some("aws:///eu-west-1a/i-0a1b2c3d4e5f60718".into());
        let mut other = original.rebooted("4b6f1c2e-8d3a-4e5f-9a7b-0c1d2e3f4a5b");
        other.provider_id = Some("aws:///eu-west-1a/i-0fffffffffffffff0".into());
        let verdict = decide(&create(&other), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
        assert!(
            verdict
                .denial_message()
                .unwrap()
                .contains("(provider ID aws:///e…, this machine aws:///e…)")
        );
    }

    #[test]
    fn a_node_registered_without_identity_can_be_claimed_by_its_kubelet() {
        // A Node pre-created by a provisioner carries no nodeInfo: nothing contradicts.
        let original = worker(1);
        let mut bare = crate::sample::node_object(&original);
        bare["status"]["nodeInfo"] = serde_json::json!({});
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node(claim_of(&bare));
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
