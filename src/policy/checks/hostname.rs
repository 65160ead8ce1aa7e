//! `hostname`: the `kubernetes.io/hostname` label and `Hostname` addresses.

use super::{Claimed, collision, introduced_all};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    introduced_all(input, |c| c.hostnames.as_slice())
        .into_iter()
        .filter(|host| !host.is_placeholder())
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
}
