//! `system-uuid`: the SMBIOS product UUID the hypervisor or firmware gives the machine.
//! A copied VM keeps it unless told it was copied. Read in the other SMBIOS byte order
//! (a vSphere hardware upgrade flips it) it is the same UUID.
//!
//! A machine-id that differs proves nothing here: a copy whose machine-id was
//! regenerated still carries the UUID. Nodes that share the UUID as containers on one
//! host (k3d, kind before 0.6) share their running kernel too, and are warned.

use super::{Claimed, collision_with, introduced, previous, shared_because};
use crate::ledger::ValueField;
use crate::policy::{CheckId, Finding, NodeInput};

/// A system UUID (in either byte order) the write brings that another node holds:
/// refused, or a warning when shared on evidence or the holders are containers on this
/// host.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.system_uuid.as_ref()) else {
        return Vec::new();
    };
    let config = input.config;
    if config.system_uuid_is_shared(value) {
        return Vec::new();
    }
    let node = &input.object.name;
    let inventory = input.inventory;
    let mut others = inventory.system_uuid(value).other_than(node);
    if others.count == 0
        && let Some(swapped) = value.byte_swapped()
    {
        others = inventory.system_uuid(&swapped).other_than(node);
    }
    if others.count == 0 {
        return Vec::new();
    }
    let from = previous(input, |c| c.system_uuid.as_ref()).map(|v| v.as_str());
    let shared = shared_because(input, ValueField::SystemUuid, value.as_str(), from, &others);
    collision_with(
        CheckId::SystemUuid,
        Claimed {
            field: "system UUID",
            value: value.as_str(),
        },
        others,
        shared,
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
    fn nodes_in_containers_on_one_host_share_its_uuid_and_its_kernel_and_are_warned() {
        // k3d, and kind before 0.6 (kubernetes-sigs/kind#1027): every node container
        // reads the host's DMI UUID, and every one runs on the host's kernel, whose
        // boot id it reports.
        let uuid = "1ad82a4c-2a18-11b2-a85c-82c3099c6263";
        let host_boot = "8ae9952f-63cd-46a4-b013-ffe977e95508";
        let mut control_plane = worker(1);
        control_plane.system_uuid = uuid.into();
        control_plane.boot_id = host_boot.into();
        let mut worker_node = worker(2);
        worker_node.system_uuid = uuid.into();
        worker_node.boot_id = host_boot.into();
        let verdict = decide(&create(&worker_node), &cluster(&[&control_plane]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [system-uuid]: system UUID 1ad82a4c-2a18… is shared with \"worker-1\" (same host kernel), not a clone"
            ]
        );
    }

    #[test]
    fn a_copied_vm_whose_machine_id_was_regenerated_is_still_refused_on_its_uuid() {
        // Its own kernel, its own boot id: a VM, and a copy.
        let original = worker(1);
        let mut copy = worker(2);
        copy.system_uuid = original.system_uuid.clone();
        let verdict = decide(&create(&copy), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::SystemUuid));
    }

    #[test]
    fn a_memory_forked_vm_shares_the_kernel_but_is_not_taken_for_a_container() {
        // Forked with its memory: the same boot id, machine-id and cached UUID, re-IP'd.
        let original = worker(1);
        let mut fork = original.clone();
        fork.name = "worker-9".into();
        fork.internal_ip = "10.0.0.99".into();
        let verdict = decide(&create(&fork), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Denied);
        assert_eq!(verdict.deciding_check(), Some(CheckId::MachineId));
    }

    #[test]
    fn a_uuid_in_the_other_byte_order_is_the_same_vm() {
        let mut original = worker(1);
        original.system_uuid = "8fcf0b42-f2a2-54d1-329b-575d9bc5e19c".into();
        let mut copy = worker(2);
        copy.system_uuid = "420bcf8f-a2f2-d154-329b-575d9bc5e19c".into();
        let verdict = decide(&create(&copy), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::SystemUuid));
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
