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
use crate::inventory::LedgerEntry;
pub use crate::ledger::conflict_message;
use crate::policy::{CheckId, Finding, NodeInput, Operation};

/// Refuses a write carrying the boot the ledger refused, or the later of two boots coming
/// back.
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
    record: &LedgerEntry,
    boot: &BootId,
    before: Option<&BootId>,
) -> Option<String> {
    if let Some(conflict) = record.conflict() {
        return (&*conflict.refused_boot == boot.as_str()).then(|| conflict.kept_boot.to_string());
    }
    let before = before.filter(|b| *b != boot)?;
    let returning = record.boot_index(boot)?;
    let reported = record.boot_index(before)?;
    (returning > reported).then(|| before.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::conflict_message;
    use crate::identity::BootId;
    use crate::inventory::{Inventory, LedgerConflict, LedgerEntry};
    use crate::policy::{CheckId, Outcome};
    use crate::sample::Machine;

    const BOOT_B: &str = "b2b2b2b2-5b7a-4d8e-a6f1-0b2c3d4e5f60";

    /// The cluster after the Node reported `history` in that order, with the ledger's
    /// entry as the recorder keeps it: boots in first-seen order and, once an earlier
    /// boot came back, a conflict keeping the first-seen one. The Node is now at the
    /// last boot of `history`.
    fn after_boots(original: &Machine, history: &[&str]) -> Inventory {
        let mut entry = LedgerEntry::named(&original.name);
        let mut boots: Vec<BootId> = Vec::new();
        for raw in history {
            let boot = BootId::parse(raw).unwrap();
            let seen = boots.iter().position(|b| *b == boot);
            let left = entry
                .current_boot
                .as_ref()
                .and_then(|c| boots.iter().position(|b| b == c));
            match (seen, left) {
                (None, _) => boots.push(boot.clone()),
                (Some(seen), Some(left)) if seen != left && entry.conflict.is_none() => {
                    let kept = boots[seen.min(left)].to_string();
                    let refused = boots[seen.max(left)].to_string();
                    entry.conflict = Some(Box::new(LedgerConflict {
                        check: "two-kubelets".into(),
                        message: conflict_message(&original.name, &refused, &kept).into(),
                        kept_boot: kept.into(),
                        refused_boot: refused.into(),
                        detected: now(),
                    }));
                }
                _ => {}
            }
            entry.current_boot = Some(boot);
        }
        entry.boots = boots.into();
        let node = original.rebooted(history.last().unwrap());
        let mut inventory = cluster(&[&node, &worker(2)]);
        inventory.apply_identity(entry);
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
        inventory.apply_node_as_written(claim(&original));
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
        let mut record = inventory.identity("worker-1").unwrap().clone();
        record.owner = Some("0b7e3c55-0000-4000-8000-000000000001".into());
        inventory.apply_identity(record);
        let mut registered = claim(&original);
        registered.uid = Some("0b7e3c55-0000-4000-8000-000000000002".into());
        inventory.apply_node_as_written(registered);
        assert_eq!(
            decide(&create(&clone), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
