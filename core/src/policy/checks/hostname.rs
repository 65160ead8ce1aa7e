//! `hostname`: the `kubernetes.io/hostname` label and `Hostname` addresses.
//!
//! A node's name is its own hostname, and no other node's: a kubelet may write any label
//! and address into its own Node, so a node claiming another node's name as a hostname
//! (squatting on a name about to register again) never counts as holding it. The node
//! of that name never fails on it, and anyone else claiming it collides with that node
//! alone, once it holds its name.

use super::{Claimed, collision_with, introduced_all};
use crate::inventory::OtherHolders;
use crate::ledger::ValueField;
use crate::policy::{CheckId, Finding, NodeInput, sharing};

/// Each hostname the write brings that another node holds: refused, or a warning when
/// shared on evidence.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let own_name = &*input.object.name;
    let remedy = |holder: &str| {
        format!(
            "set a unique hostname on this machine (hostnamectl set-hostname <name>) \
             and restart the kubelet, or delete node {holder} if it is gone"
        )
    };
    introduced_all(input, |c| c.hostnames.as_slice())
        .into_iter()
        .filter(|host| !input.config.hostname_is_shared(host))
        .filter(|host| !host.as_str().eq_ignore_ascii_case(own_name))
        .filter_map(|host| {
            let claimed = Claimed {
                field: "hostname",
                value: host.as_str(),
            };
            // The name of a registered node: held by that node only, if it holds it.
            if let Some(named) = input.inventory.node(host.as_str()) {
                let holds = named.hostnames.contains(host);
                let others = OtherHolders {
                    count: usize::from(holds),
                    names: if holds { vec![&named.name] } else { Vec::new() },
                };
                return collision_with(CheckId::Hostname, claimed, others, None, remedy);
            }
            let others = input.inventory.hostname(host).other_than(own_name);
            let shared = sharing::evidence(
                ValueField::Hostname,
                host.as_str(),
                own_name,
                None,
                input.inventory,
                input.config,
            );
            collision_with(
                CheckId::Hostname,
                claimed,
                others,
                shared.map(sharing::Shared::describe),
                remedy,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};

    #[test]
    fn a_node_reporting_another_nodes_hostname_is_denied() {
        let original = worker(1);
        // Renamed with --hostname-override, but the machine still calls itself worker-1.
        let clone = worker(2);
        let mut object = crate::sample::node_object(&clone);
        object["status"]["addresses"][1]["address"] = "Worker-1".into();
        let review = crate::policy::NodeReview {
            labels: Vec::new(),
            operation: crate::policy::Operation::Create,
            object: Some(claim_of(&object)),
            old_object: None,
        };
        let verdict = decide(&review, &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::Hostname));
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [hostname]: hostname worker-1 is already used by node \"worker-1\"; set a \
             unique hostname on this machine (hostnamectl set-hostname <name>) and restart the \
             kubelet, or delete node worker-1 if it is gone"
        );
    }

    #[test]
    fn localhost_is_no_ones_hostname() {
        let mut a = crate::sample::node_object(&worker(1));
        a["metadata"]["labels"]["kubernetes.io/hostname"] = "localhost".into();
        let mut b = crate::sample::node_object(&worker(2));
        b["metadata"]["labels"]["kubernetes.io/hostname"] = "localhost".into();
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node_as_written(claim_of(&a));
        let review = crate::policy::NodeReview {
            labels: Vec::new(),
            operation: crate::policy::Operation::Create,
            object: Some(claim_of(&b)),
            old_object: None,
        };
        assert_eq!(decide(&review, &inventory).outcome(), Outcome::Allowed);
    }

    #[test]
    fn another_node_squatting_on_a_name_never_blocks_that_node_from_registering() {
        // worker-9 writes "worker-5" into its own addresses while worker-5 is away.
        let squatter = worker(9);
        let mut object = crate::sample::node_object(&squatter);
        object["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "Hostname", "address": "worker-5"}));
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node_as_written(claim_of(&object));
        assert_eq!(
            decide(&create(&worker(5)), &inventory).outcome(),
            Outcome::Allowed
        );
        // Once worker-5 holds its name, the squatter writing it again is refused.
        inventory.apply_node_as_written(claim(&worker(5)));
        let review = crate::policy::NodeReview {
            labels: Vec::new(),
            operation: crate::policy::Operation::Update,
            object: Some(claim_of(&object)),
            old_object: Some(claim(&squatter)),
        };
        assert_eq!(
            decide(&review, &inventory).deciding_check(),
            Some(CheckId::Hostname)
        );
    }

    #[test]
    fn hostnames_declared_shared_never_collide() {
        let clone = worker(2);
        let mut object = crate::sample::node_object(&clone);
        object["status"]["addresses"][1]["address"] = "node".into();
        let mut original = crate::sample::node_object(&worker(1));
        original["status"]["addresses"][1]["address"] = "node".into();
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node_as_written(claim_of(&original));
        let review = crate::policy::NodeReview {
            labels: Vec::new(),
            operation: crate::policy::Operation::Create,
            object: Some(claim_of(&object)),
            old_object: None,
        };
        assert_eq!(
            decide(&review, &inventory).deciding_check(),
            Some(CheckId::Hostname)
        );
        let config =
            crate::policy::Config::from_yaml("sharedValues:\n  hostnames: [\"Node\"]\n").unwrap();
        assert_eq!(
            crate::policy::decide_node(&review, &inventory, &config, now()).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_squatter_does_not_count_as_holding_another_nodes_name() {
        // worker-9 wrote "worker-5" into its addresses; worker-5 is registered without a
        // Hostname of its own (a cloud provider set its addresses). A third node calling
        // itself worker-5 collides with no one: the name is worker-5's, not worker-9's.
        let squatter = worker(9);
        let mut squatting = crate::sample::node_object(&squatter);
        squatting["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "Hostname", "address": "worker-5"}));
        let mut named = crate::sample::node_object(&worker(5));
        named["metadata"]["labels"]["kubernetes.io/hostname"] = "ip-10-0-0-15".into();
        named["status"]["addresses"][1]["address"] = "ip-10-0-0-15".into();
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node_as_written(claim_of(&squatting));
        inventory.apply_node_as_written(claim_of(&named));
        let mut third = crate::sample::node_object(&worker(6));
        third["status"]["addresses"][1]["address"] = "worker-5".into();
        let review = crate::policy::NodeReview {
            labels: Vec::new(),
            operation: crate::policy::Operation::Create,
            object: Some(claim_of(&third)),
            old_object: None,
        };
        assert_eq!(decide(&review, &inventory).outcome(), Outcome::Allowed);
    }
}
