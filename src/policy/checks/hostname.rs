//! `hostname`: the `kubernetes.io/hostname` label and `Hostname` addresses.
//!
//! A node's own name is always its own hostname: a kubelet may write any label and
//! address into its own Node, so another node claiming this one's name as a hostname
//! (squatting on a name about to register again) can never make this node's
//! registration fail. That other node is refused instead, the moment this one holds
//! its name.

use super::{Claimed, collision, introduced_all};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let own_name = &*input.object.name;
    introduced_all(input, |c| c.hostnames.as_slice())
        .into_iter()
        .filter(|host| !input.config.hostname_is_shared(host))
        .filter(|host| !host.as_str().eq_ignore_ascii_case(own_name))
        .filter_map(|host| {
            collision(
                CheckId::Hostname,
                &input.object.name,
                Claimed {
                    field: "hostname",
                    value: host.as_str(),
                },
                input.inventory.hostname(host),
                |holder| {
                    format!(
                        "set a unique hostname on this machine (hostnamectl set-hostname <name>) \
                         and restart the kubelet, or delete node {holder} if it is gone"
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
    fn a_node_reporting_another_nodes_hostname_is_denied() {
        let original = worker(1);
        // Renamed with --hostname-override, but the machine still calls itself worker-1.
        let clone = worker(2);
        let mut object = crate::demo::kubelet::node_object(&clone);
        object["status"]["addresses"][1]["address"] = "Worker-1".into();
        let review = crate::policy::NodeReview {
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
        let mut a = crate::demo::kubelet::node_object(&worker(1));
        a["metadata"]["labels"]["kubernetes.io/hostname"] = "localhost".into();
        let mut b = crate::demo::kubelet::node_object(&worker(2));
        b["metadata"]["labels"]["kubernetes.io/hostname"] = "localhost".into();
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node(claim_of(&a));
        let review = crate::policy::NodeReview {
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
        let mut object = crate::demo::kubelet::node_object(&squatter);
        object["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "Hostname", "address": "worker-5"}));
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node(claim_of(&object));
        assert_eq!(
            decide(&create(&worker(5)), &inventory).outcome(),
            Outcome::Allowed
        );
        // Once worker-5 holds its name, the squatter writing it again is refused.
        inventory.apply_node(claim(&worker(5)));
        let review = crate::policy::NodeReview {
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
        let mut object = crate::demo::kubelet::node_object(&clone);
        object["status"]["addresses"][1]["address"] = "node".into();
        let mut original = crate::demo::kubelet::node_object(&worker(1));
        original["status"]["addresses"][1]["address"] = "node".into();
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node(claim_of(&original));
        let review = crate::policy::NodeReview {
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
}
