//! `provider-id`: the cloud instance behind the node; two nodes are never one instance.

use super::{Claimed, collision_with, introduced};
use crate::ledger::ValueField;
use crate::policy::{CheckId, Finding, NodeInput, sharing};

/// A provider ID the write brings that another node holds: refused, or a warning when
/// shared on evidence.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.provider_id.as_ref()) else {
        return Vec::new();
    };
    let node = &input.object.name;
    let others = input.inventory.provider_id(value).other_than(node);
    let shared = sharing::evidence(
        ValueField::ProviderId,
        value.as_str(),
        node,
        None,
        input.inventory,
        input.config,
    );
    collision_with(
        CheckId::ProviderId,
        Claimed {
            field: "provider ID",
            value: value.as_str(),
        },
        others,
        shared.map(sharing::Shared::describe),
        |holder| {
            format!(
                "two nodes cannot be one instance: check this kubelet's --provider-id \
                 and cloud configuration, or delete node {holder} if it is gone"
            )
        },
    )
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::Outcome;

    fn on_instance(n: u8, instance: &str) -> crate::sample::Machine {
        let mut machine = worker(n);
        machine.provider_id = Some(format!("aws:///eu-west-1a/{instance}"));
        machine
    }

    #[test]
    fn a_second_node_on_the_same_instance_is_denied() {
        let original = on_instance(1, "i-0a1b2c3d4e5f60718");
        let other = on_instance(2, "i-0a1b2c3d4e5f60718");
        let verdict = decide(&create(&other), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Denied);
        assert!(verdict.denial_message().unwrap().starts_with(
            "nodeguard [provider-id]: provider ID aws:///eu-west-1a/i-0a1b2c3d4e5f60718 is already used by node \"worker-1\"; "
        ));
    }

    #[test]
    fn the_node_on_its_own_instance_and_nodes_without_provider_ids_pass() {
        let original = on_instance(1, "i-0a1b2c3d4e5f60718");
        let inventory = cluster(&[&original, &worker(2)]);
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
        assert_eq!(
            decide(&create(&worker(3)), &inventory).outcome(),
            Outcome::Allowed
        );
        let later = on_instance(4, "i-0fffffffffffffff0");
        assert_eq!(
            decide(&update(&worker(4), &later), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_provider_id_set_later_by_an_update_is_checked() {
        let original = on_instance(1, "i-0a1b2c3d4e5f60718");
        let inventory = cluster(&[&original, &worker(2)]);
        // worker-2's own machine (its system UUID says so): warned, never refused.
        let claimed = on_instance(2, "i-0a1b2c3d4e5f60718");
        assert_eq!(
            decide(&update(&worker(2), &claimed), &inventory).outcome(),
            Outcome::Warned
        );
        // Another machine writing as worker-3 with that instance: refused.
        let mut other = on_instance(7, "i-0a1b2c3d4e5f60718");
        other.name = "worker-3".into();
        let mut before = worker(3);
        before.system_uuid = other.system_uuid.clone();
        before.machine_id = "0f9e8d7c6b5a49382716a5b4c3d2e1f0".into();
        other.machine_id = before.machine_id.clone();
        assert_eq!(
            decide(&create(&on_instance(3, "i-0a1b2c3d4e5f60718")), &inventory).outcome(),
            Outcome::Denied
        );
    }
}
