//! `machine-id`: `/etc/machine-id` is unique per installed system; a copied disk keeps it.

use super::{Claimed, collision_with, introduced, previous, shared_because};
use crate::ledger::ValueField;
use crate::policy::{CheckId, Finding, NodeInput};

/// A machine-id the write brings that another node holds: refused, or a warning when
/// shared on evidence or the holders are containers on this host.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.machine_id.as_ref()) else {
        return Vec::new();
    };
    if input.config.machine_id_is_shared(value) {
        return Vec::new();
    }
    let others = input
        .inventory
        .machine_id(value)
        .other_than(&input.object.name);
    if others.count == 0 {
        return Vec::new();
    }
    let from = previous(input, |c| c.machine_id.as_ref()).map(|v| v.as_str());
    let shared = shared_because(input, ValueField::MachineId, value.as_str(), from, &others);
    collision_with(
        CheckId::MachineId,
        Claimed {
            field: "machine-id",
            value: value.as_str(),
        },
        others,
        shared,
        |holder| {
            format!(
                "this machine looks like a clone of {holder}: give it a new identity \
                 (rm /etc/machine-id && systemd-machine-id-setup, then reboot) \
                 or delete node {holder} if it is gone"
            )
        },
    )
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::ledger::ValueField;
    use crate::policy::{CheckId, Config, Mode, Outcome, decide_node};

    #[test]
    fn a_new_node_with_another_nodes_machine_id_is_denied_naming_it() {
        let original = worker(1);
        let inventory = cluster(&[&original, &worker(2)]);
        let mut clone = worker(3);
        clone.machine_id = original.machine_id.clone();
        let verdict = decide(&create(&clone), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Denied);
        assert_eq!(
            verdict.denial_message().unwrap(),
            format!(
                "nodeguard [machine-id]: machine-id {} is already used by node \"worker-1\"; this \
                 machine looks like a clone of worker-1: give it a new identity (rm /etc/machine-id \
                 && systemd-machine-id-setup, then reboot) or delete node worker-1 if it is gone",
                original.machine_id
            )
        );
    }

    #[test]
    fn machine_ids_compare_case_insensitively() {
        let original = worker(1);
        let inventory = cluster(&[&original]);
        let mut clone = worker(3);
        clone.machine_id = original.machine_id.to_uppercase();
        assert_eq!(
            decide(&create(&clone), &inventory).deciding_check(),
            Some(CheckId::MachineId)
        );
    }

    #[test]
    fn an_update_that_keeps_the_machine_id_is_not_checked_again() {
        // Two nodes that already share a value (registered before nodeguard ran) keep
        // reporting: nothing new is introduced, so nothing is refused.
        let a = worker(1);
        let mut b = worker(2);
        b.machine_id = a.machine_id.clone();
        let inventory = cluster(&[&a, &b]);
        let verdict = decide(
            &update(&b, &b.rebooted("00000000-1111-2222-3333-444444444444")),
            &inventory,
        );
        assert_eq!(verdict.outcome(), Outcome::Allowed, "{verdict:?}");
    }

    #[test]
    fn a_placeholder_machine_id_never_collides() {
        let mut a = worker(1);
        a.machine_id = "uninitialized".into();
        let mut b = worker(2);
        b.machine_id = "uninitialized".into();
        assert_eq!(
            decide(&create(&b), &cluster(&[&a])).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_machine_id_shared_when_nodeguard_first_saw_the_cluster_warns_and_admits() {
        // AKS images of early 2023 gave every node one machine-id.
        let shared = "0a1b2c3d4e5f60718293a4b5c6d7e8f9".to_string();
        let mut nodes = [worker(1), worker(2), worker(3)];
        for node in &mut nodes {
            node.machine_id = shared.clone();
        }
        let mut inventory = cluster(&[&nodes[0], &nodes[1]]);
        shared_at_first_sight(
            &mut inventory,
            &["worker-1", "worker-2"],
            ValueField::MachineId,
            &shared,
        );
        let verdict = decide(&create(&nodes[2]), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [machine-id]: machine-id 0a1b2c3d4e5f6… is shared by 2 nodes (e.g. worker-1); not proof of a clone"
            ]
        );
        // One holder left (an admin deleted the other): still shared.
        inventory.delete_node("worker-2");
        inventory.delete_identity("worker-2");
        let verdict = decide(&create(&nodes[2]), &inventory);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [machine-id]: machine-id 0a1b2c3d4e5f6… is shared with \"worker-1\" (since first seen), not a clone"
            ]
        );
    }

    #[test]
    fn a_machine_id_two_nodes_hold_without_evidence_is_still_a_clone_s() {
        // A clone let in once (in warn mode, exempt, while nodeguard failed open) does not
        // make its original's machine-id shared: the next copy is refused too.
        let original = worker(1);
        let mut admitted = worker(2);
        admitted.machine_id = original.machine_id.clone();
        let mut next = worker(3);
        next.machine_id = original.machine_id.clone();
        let verdict = decide(&create(&next), &cluster(&[&original, &admitted]));
        assert_eq!(verdict.outcome(), Outcome::Denied);
        assert!(
            verdict.denial_message().unwrap().starts_with(&format!(
                "nodeguard [machine-id]: machine-id {} is already used by node \"worker-1\" and 1 other node; this machine looks like a clone of worker-1",
                original.machine_id
            )),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_machine_id_declared_shared_in_the_config_never_collides() {
        let a = worker(1);
        let mut b = worker(2);
        b.machine_id = a.machine_id.clone();
        let config = Config::from_yaml(&format!(
            "sharedValues:\n  machineIDs: [\"{}\"]\n",
            a.machine_id.to_uppercase()
        ))
        .unwrap();
        let verdict = decide_node(&create(&b), &cluster(&[&a]), &config, now());
        assert_eq!(verdict.outcome(), Outcome::Allowed);
    }

    #[test]
    fn warn_mode_admits_with_a_short_warning_and_off_mode_is_silent() {
        let a = worker(1);
        let mut b = worker(2);
        b.machine_id = a.machine_id.clone();
        let inventory = cluster(&[&a]);
        let mut config = Config::default();
        config.set_mode(CheckId::MachineId, Mode::Warn);
        let verdict = decide_node(&create(&b), &inventory, &config, now());
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [machine-id]: machine-id 01c1f8e2fbf55… is already used by node \"worker-1\""
            ]
        );
        config.set_mode(CheckId::MachineId, Mode::Off);
        assert_eq!(
            decide_node(&create(&b), &inventory, &config, now()).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn two_nodes_that_shared_a_machine_id_before_nodeguard_restart_their_kubelets() {
        // A kubelet re-sends its CREATE at every restart: the values it already held are
        // compared with its own registered Node, not counted as new.
        let a = worker(1);
        let mut b = worker(2);
        b.machine_id = a.machine_id.clone();
        let inventory = cluster(&[&a, &b]);
        for node in [&a, &b] {
            let restarted = node.rebooted("5d4c3b2a-1f0e-4d9c-8b7a-695847362514");
            let verdict = decide(&create(&restarted), &inventory);
            assert_eq!(verdict.outcome(), Outcome::Allowed, "{verdict:?}");
        }
        // A new machine with that value is still refused.
        let mut clone = worker(3);
        clone.machine_id = a.machine_id.clone();
        clone.system_uuid = a.system_uuid.clone();
        let verdict = decide(&create(&clone), &cluster(&[&a]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::MachineId));
    }
}
