//! `system-uuid`: the SMBIOS product UUID the hypervisor or firmware gives the machine.
//!
//! Some platforms give every node one UUID (kind leaks the host's into each node
//! container), so a UUID alone is weaker proof than a machine-id: when the holder and
//! the newcomer report different real machine-ids, they are separately installed
//! systems and the shared UUID is only worth a warning.

use super::{Claimed, abbreviate, collision, introduced};
use crate::policy::verdict::{Collision, CollisionKind};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.system_uuid.as_ref()) else {
        return Vec::new();
    };
    let config = input.config;
    if config.system_uuid_is_shared(value) {
        return Vec::new();
    }
    let node = &input.object.name;
    let holders = input.inventory.system_uuid(value);
    if let [holder] = holders.other_than(node).names.as_slice()
        && let Some(theirs) = input
            .inventory
            .node(holder)
            .and_then(|h| h.machine_id.as_ref())
        && let Some(ours) = input.object.machine_id.as_ref()
        && theirs != ours
        && !config.machine_id_is_shared(theirs)
        && !config.machine_id_is_shared(ours)
    {
        return vec![
            Finding::warn(
                CheckId::SystemUuid,
                format!(
                    "nodeguard [system-uuid]: system UUID {} is also node \"{holder}\"'s (machine-ids differ)",
                    abbreviate(value.as_str())
                ),
            )
            .with_collision(Collision {
                field: "system UUID",
                value: value.to_string(),
                kind: CollisionKind::Shared,
                holder_count: 1,
                holders: vec![holder.to_string()],
            }),
        ];
    }
    collision(
        CheckId::SystemUuid,
        node,
        Claimed {
            field: "system UUID",
            value: value.as_str(),
        },
        holders,
        |holder| {
            format!(
                "this VM looks like a copy of {holder}: give it its own SMBIOS UUID \
                 (choose \"I copied it\" or set a new UUID in the hypervisor) \
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
    use crate::policy::{CheckId, Outcome};

    #[test]
    fn a_copied_vm_with_the_same_uuid_is_denied_when_its_machine_id_proves_nothing() {
        // Machine-ids shared by an image: the UUID is the only thing telling machines apart.
        let mut original = worker(1);
        original.machine_id = "de1dd9ede40041b7bceb409b0a3b12cb".into();
        let mut copy = worker(2);
        copy.machine_id = original.machine_id.clone();
        copy.system_uuid = original.system_uuid.to_uppercase();
        let verdict = decide(&create(&copy), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Denied);
        assert_eq!(
            verdict.denial_message().unwrap(),
            format!(
                "nodeguard [system-uuid]: system UUID {} is already used by node \"worker-1\"; \
                 this VM looks like a copy of worker-1: give it its own SMBIOS UUID (choose \"I \
                 copied it\" or set a new UUID in the hypervisor) or delete node worker-1 if it is gone",
                original.system_uuid
            )
        );
    }

    #[test]
    fn a_full_clone_is_denied_by_both_checks() {
        let original = worker(1);
        let mut clone = worker(2);
        clone.machine_id = original.machine_id.clone();
        clone.system_uuid = original.system_uuid.clone();
        let verdict = decide(&create(&clone), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::MachineId));
        assert!(
            verdict
                .denial_message()
                .unwrap()
                .ends_with(" (also failed: system-uuid)")
        );
    }

    #[test]
    fn a_kind_node_sharing_the_hosts_uuid_with_its_own_machine_id_is_only_warned() {
        let uuid = "1ad82a4c-2a18-11b2-a85c-82c3099c6263";
        let mut control_plane = worker(1);
        control_plane.system_uuid = uuid.into();
        let mut worker_node = worker(2);
        worker_node.system_uuid = uuid.into();
        let verdict = decide(&create(&worker_node), &cluster(&[&control_plane]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [system-uuid]: system UUID 1ad82a4c-2a18… is also node \"worker-1\"'s (machine-ids differ)"
            ]
        );
    }

    #[test]
    fn placeholder_uuids_never_collide() {
        for uuid in [
            "03000200-0400-0500-0006-000700080009",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "11223344-5566-7788-99aa-bbcc11223344",
        ] {
            let mut a = worker(1);
            a.machine_id = "uninitialized".into();
            a.system_uuid = uuid.into();
            let mut b = worker(2);
            b.machine_id = "uninitialized".into();
            b.system_uuid = uuid.into();
            assert_eq!(
                decide(&create(&b), &cluster(&[&a])).outcome(),
                Outcome::Allowed,
                "{uuid}"
            );
        }
    }

    #[test]
    fn nodes_sharing_a_host_uuid_without_machine_ids_keep_registering_after_a_restart() {
        let uuid = "6b1e2f3a-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
        let mut a = worker(1);
        a.machine_id = String::new();
        a.system_uuid = uuid.into();
        let mut b = worker(2);
        b.machine_id = String::new();
        b.system_uuid = uuid.into();
        let inventory = cluster(&[&a, &b]);
        let restarted = b.rebooted("5d4c3b2a-1f0e-4d9c-8b7a-695847362514");
        assert_eq!(
            decide(&create(&restarted), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
