//! `internal-ip`: `InternalIP` addresses. ExternalIPs are not compared here: nodes behind
//! one NAT legitimately report the same one. An address held only by a node that is not
//! Ready is a reused lease rather than a clone: a warning.

use super::{Claimed, collision_with, introduced_all, reused_address, running};
use crate::ledger::ValueField;
use crate::policy::{CheckId, Finding, NodeInput, sharing};

/// Each InternalIP the write brings that another node holds: refused, or a warning when
/// shared on evidence or its only other holder is not running.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    introduced_all(input, |c| c.internal_ips.as_slice())
        .into_iter()
        .filter(|ip| !input.config.address_is_shared(ip))
        .filter_map(|ip| {
            let node = &input.object.name;
            let holders = input.inventory.internal_ip(ip);
            if let Some(warning) = reused_address(
                CheckId::InternalIp,
                node,
                "InternalIP",
                ip,
                holders,
                running(input.inventory, input.config, input.now),
            ) {
                return Some(warning);
            }
            let value = ip.to_string();
            let shared = sharing::evidence(
                ValueField::InternalIP,
                &value,
                node,
                None,
                input.inventory,
                input.config,
            );
            collision_with(
                CheckId::InternalIp,
                Claimed {
                    field: "InternalIP",
                    value: &value,
                },
                holders.other_than(node),
                shared.map(sharing::Shared::describe),
                |holder| {
                    format!(
                        "give this machine its own address (a cloned /etc/machine-id also \
                         clones the DHCP lease: regenerate it and reboot), or delete node \
                         {holder} if it is gone"
                    )
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};

    #[test]
    fn a_node_with_another_nodes_internal_ip_is_denied() {
        let original = worker(1);
        let mut clone = worker(2);
        clone.internal_ip = original.internal_ip.clone();
        let verdict = decide(&create(&clone), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::InternalIp));
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [internal-ip]: InternalIP 10.0.0.11 is already used by node \"worker-1\"; \
             give this machine its own address (a cloned /etc/machine-id also clones the DHCP \
             lease: regenerate it and reboot), or delete node worker-1 if it is gone"
        );
    }

    #[test]
    fn an_address_freed_by_a_deleted_node_can_be_reused() {
        let original = worker(1);
        let mut inventory = cluster(&[&original]);
        inventory.delete_node("worker-1");
        let mut successor = worker(2);
        successor.internal_ip = original.internal_ip.clone();
        assert_eq!(
            decide(&create(&successor), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_node_s_own_machine_moving_to_a_taken_address_is_warned_and_a_newcomer_refused() {
        // Its system UUID proves the write is the node's own machine: refusing its status
        // would only make a running node look dead.
        let a = worker(1);
        let b = worker(2);
        let inventory = cluster(&[&a, &b]);
        let mut moved = b.clone();
        moved.internal_ip = a.internal_ip.clone();
        let verdict = decide(&update(&b, &moved), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [internal-ip]: InternalIP 10.0.0.11 is already used by node \"worker-1\""
            ]
        );
        moved.internal_ip = "10.0.0.99".into();
        assert_eq!(
            decide(&update(&b, &moved), &inventory).outcome(),
            Outcome::Allowed
        );
        let mut newcomer = worker(3);
        newcomer.internal_ip = a.internal_ip.clone();
        assert_eq!(
            decide(&create(&newcomer), &inventory).outcome(),
            Outcome::Denied
        );
    }

    #[test]
    fn an_address_of_a_node_whose_kubelet_writes_nothing_is_only_warned_about() {
        let mut dead = worker(1);
        dead.heartbeat = now() - jiff::SignedDuration::from_mins(11);
        let mut successor = worker(2);
        successor.internal_ip = dead.internal_ip.clone();
        let verdict = decide(&create(&successor), &cluster(&[&dead]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [internal-ip]: InternalIP 10.0.0.11 is also node \"worker-1\"'s, which is not running (address reused?)"
            ]
        );
        // Not Ready is no death: a kubelet that writes its status runs, whatever it reports.
        let mut not_ready = worker(1);
        not_ready.ready = false;
        assert_eq!(
            decide(&create(&successor), &cluster(&[&not_ready])).outcome(),
            Outcome::Denied
        );
    }

    #[test]
    fn loopback_addresses_never_collide() {
        let mut a = worker(1);
        a.internal_ip = "127.0.0.1".into();
        let mut b = worker(2);
        b.internal_ip = "127.0.0.1".into();
        assert_eq!(
            decide(&create(&b), &cluster(&[&a])).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn nodes_sharing_an_internal_ip_behind_nat_keep_registering_after_a_restart() {
        let a = worker(1);
        let mut b = worker(2);
        b.internal_ip = a.internal_ip.clone();
        let inventory = cluster(&[&a, &b]);
        assert_eq!(
            decide(
                &create(&b.rebooted("5d4c3b2a-1f0e-4d9c-8b7a-695847362514")),
                &inventory
            )
            .outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn addresses_in_a_range_declared_shared_never_collide() {
        let a = worker(1);
        let mut b = worker(2);
        b.internal_ip = a.internal_ip.clone();
        let config = crate::policy::Config::from_yaml(
            "sharedValues:\n  addresses: [\"10.0.0.0/24\", \"192.168.7.1\"]\n",
        )
        .unwrap();
        let verdict = crate::policy::decide_node(&create(&b), &cluster(&[&a]), &config, now());
        assert_eq!(verdict.outcome(), Outcome::Allowed);
        assert!(
            crate::policy::Config::from_yaml("sharedValues:\n  addresses: [\"10.0.0.0/33\"]\n")
                .is_err()
        );
    }
}
