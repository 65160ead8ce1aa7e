//! `two-kubelets`: two machines running as one node with the same credentials (the
//! incident: a full clone). No single write shows it; the boot history does. A machine
//! never returns to a boot id it has left, so a node whose boot goes A → B → A has two
//! kubelets writing it, and the ledger records a conflict. From then on every write
//! that carries the refused (later) boot is denied; the machine that registered first
//! keeps working.
//!
//! The webhook does not wait for that record: a write that brings back the later of two
//! boots the ledger has already seen, while the node reports the earlier one, is the
//! second alternation and is refused at once.

use super::{abbreviate, prefix};
use crate::identity::BootId;
use crate::ledger::NodeIdentity;
use crate::ledger::record::conflict_message;
use crate::policy::{CheckId, Finding, NodeInput, Operation};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let claim = input.object;
    let Some(boot) = claim.boot_id.as_ref() else {
        return Vec::new();
    };
    let Some(registered) = input.registered else {
        return Vec::new();
    };
    let Some(record) = input.inventory.identity(&claim.name) else {
        return Vec::new();
    };
    // A record left by an earlier Node of the same name says nothing about this one.
    if !record.may_belong_to(registered.uid.as_deref()) {
        return Vec::new();
    }
    // What the node reports before this write: the old object on UPDATE, the stored
    // Node on CREATE.
    let before = match (input.operation, input.old_object) {
        (Operation::Update, Some(old)) => old,
        _ => registered,
    };
    let Some(kept) = refused_in_favour_of(record, boot, before.boot_id.as_ref()) else {
        return Vec::new();
    };
    let name = &claim.name;
    vec![Finding::deny(
        CheckId::TwoKubelets,
        conflict_message(name, boot.as_str(), &prefix(&kept)),
        format!(
            "nodeguard [two-kubelets]: boot {} is a second machine writing node \"{name}\"",
            abbreviate(boot.as_str())
        ),
    )]
}

/// The boot kept over `boot`, if `boot` is refused: recorded as the refused side of a
/// conflict, or coming back after an earlier boot has come back.
fn refused_in_favour_of(
    record: &NodeIdentity,
    boot: &BootId,
    before: Option<&BootId>,
) -> Option<String> {
    if let Some(conflict) = record.conflict() {
        return (conflict.refused_boot == boot.as_str()).then(|| conflict.kept_boot.clone());
    }
    let before = before.filter(|b| *b != boot)?;
    let returning = record.boot_index(boot)?;
    let reported = record.boot_index(before)?;
    (returning > reported).then(|| before.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::demo::kubelet::Machine;
    use crate::inventory::Inventory;
    use crate::ledger::record::{Evidence, NodeIdentity, NodeObservation};
    use crate::policy::{CheckId, Outcome};

    const BOOT_B: &str = "b2b2b2b2-5b7a-4d8e-a6f1-0b2c3d4e5f60";

    /// The cluster after the Node reported `history` in that order, as the recorder
    /// would have written it, with the Node now at the last boot of `history`.
    fn after_boots(original: &Machine, history: &[&str]) -> Inventory {
        let mut record = NodeIdentity::blank(&original.name);
        let mut at = now() - jiff::SignedDuration::from_mins(30);
        let mut node = original.clone();
        for boot in history {
            node = original.rebooted(boot);
            record.observe_node(&NodeObservation::of(&claim(&node)), at, Evidence::Confirmed);
            at += jiff::SignedDuration::from_secs(10);
        }
        let mut inventory = cluster(&[&node, &worker(2)]);
        inventory.apply_identity(record);
        inventory
    }

    #[test]
    fn after_a_b_a_the_later_boot_is_denied_naming_both_boots_and_the_remedy() {
        let original = worker(1);
        let clone = original.rebooted(BOOT_B);
        let inventory = after_boots(&original, &[&original.boot_id, BOOT_B, &original.boot_id]);
        let record = inventory.identity("worker-1").unwrap();
        assert!(record.conflict().is_some(), "A → B → A records a conflict");

        let verdict = decide(&update(&original, &clone), &inventory);
        assert_eq!(verdict.deciding_check(), Some(CheckId::TwoKubelets));
        assert_eq!(
            verdict.denial_message().unwrap(),
            format!(
                "nodeguard [two-kubelets]: two machines are writing node \"worker-1\" with its \
                 credentials: boot {BOOT_B} (this machine) and boot {}…, which registered first \
                 and is kept; stop this machine's kubelet and give it its own identity \
                 (hostname, rm /etc/machine-id && systemd-machine-id-setup, remove \
                 /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, \
                 re-join with a bootstrap token), then run nodeguard forget worker-1",
                &original.boot_id[..8]
            )
        );
        // The clone's kubelet restarting: its CREATE is refused too.
        assert_eq!(
            decide(&create(&clone), &inventory).deciding_check(),
            Some(CheckId::TwoKubelets)
        );
        // The original keeps writing.
        assert_eq!(
            decide(&update(&original, &original), &inventory).outcome(),
            Outcome::Allowed
        );
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn the_second_alternation_is_refused_before_the_conflict_is_recorded() {
        // The ledger has seen A then B; the Node is back at A (the original's write was
        // allowed and the recorder has not written the conflict yet).
        let original = worker(1);
        let clone = original.rebooted(BOOT_B);
        let mut inventory = after_boots(&original, &[&original.boot_id, BOOT_B]);
        inventory.apply_node(claim(&original));
        assert!(inventory.identity("worker-1").unwrap().conflict().is_none());
        let verdict = decide(&update(&original, &clone), &inventory);
        assert_eq!(verdict.deciding_check(), Some(CheckId::TwoKubelets));
        // The original coming back from B to A is allowed: it registered first.
        assert_eq!(
            decide(&update(&clone, &original), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_real_reboot_and_a_kubelet_restart_are_allowed() {
        let original = worker(1);
        let rebooted = original.rebooted(BOOT_B);
        let inventory = after_boots(&original, &[&original.boot_id]);
        assert_eq!(
            decide(&update(&original, &rebooted), &inventory).outcome(),
            Outcome::Allowed
        );
        let inventory = after_boots(&original, &[&original.boot_id, BOOT_B]);
        assert!(inventory.identity("worker-1").unwrap().conflict().is_none());
        assert_eq!(
            decide(&create(&rebooted), &inventory).outcome(),
            Outcome::Allowed
        );
        assert_eq!(
            decide(&update(&rebooted, &rebooted), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_record_of_a_deleted_node_of_the_same_name_is_ignored() {
        let original = worker(1);
        let clone = original.rebooted(BOOT_B);
        let mut inventory = after_boots(&original, &[&original.boot_id, BOOT_B, &original.boot_id]);
        let mut record = (**inventory.identity("worker-1").unwrap()).clone();
        record.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: "worker-1".into(),
                uid: "0b7e3c55-0000-4000-8000-000000000001".into(),
                ..Default::default()
            },
        ]);
        inventory.apply_identity(record);
        let mut registered = claim(&original);
        registered.uid = Some("0b7e3c55-0000-4000-8000-000000000002".into());
        inventory.apply_node(registered);
        assert_eq!(
            decide(&create(&clone), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
