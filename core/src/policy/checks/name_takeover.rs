//! `name-takeover` for Nodes: a CREATE for a name that is already registered.
//!
//! The kubelet re-sends its CREATE on every restart, so a CREATE from the machine that
//! registered the name is the normal case (see [`crate::policy::machine`] for what
//! "the same machine" means, a new machine-id on the same hardware included). From a
//! different machine it is a clone or a replacement: refused while a kubelet is running
//! the registered node, allowed with a warning once none is (the old machine is gone,
//! or the "other machine" was this very one, PXE-booted with a new machine-id).
//! "Running" is what nodeguard saw: the node's status written within the heartbeat
//! timeout (a refused kubelet renews the node's Lease, so its old Node stays Ready, but
//! its status writes are the ones refused).
//!
//! A refused machine is remembered (see [`refusal`]). Once the node's own machine is
//! seen writing status after that refusal, two machines are proven: the refused one
//! gets no takeover when the node stops running (a reboot), until `nodeguard forget`
//! or the Node's deletion.

use super::{not_running, prefix};
use crate::identity::NodeClaim;
use crate::ledger::RefusalObservation;
use crate::ledger::RefusedEntry;
use crate::policy::machine::{self, Sameness};
use crate::policy::{CheckId, Finding, NodeInput, Operation};

/// A CREATE from another machine for a registered name: refused while a kubelet runs the
/// node or once a second machine is proven, else a warning.
pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    if input.operation != Operation::Create {
        return Vec::new();
    }
    let (Some(registered), Some(sameness)) = (input.before, input.sameness.as_ref()) else {
        return Vec::new();
    };
    let name = &input.object.name;
    let finding = match sameness {
        Sameness::Same => return Vec::new(),
        Sameness::NewMachineId => Finding::warn(
            CheckId::NameTakeover,
            format!(
                "nodeguard [name-takeover]: node \"{name}\" registers with a new machine-id and its own system UUID: same machine"
            ),
        ),
        Sameness::Different {
            field,
            registered: theirs,
            claimed: ours,
        } => {
            let (inventory, config) = (input.inventory, input.config);
            let proven = inventory.identity(name).and_then(|entry| {
                machine::proven_refusal(entry, registered, input.object.ids(), inventory, config)
            });
            if let Some(refused) = proven {
                Finding::deny(
                    CheckId::NameTakeover,
                    proven_message(CheckId::NameTakeover, name, field, theirs, ours, refused),
                    format!(
                        "nodeguard [name-takeover]: node \"{name}\" belongs to another machine, seen running after this one was refused"
                    ),
                )
                .with_refusal(refusal(CheckId::NameTakeover, registered, input.object))
            } else if machine::is_running(inventory, name, config, input.now) {
                Finding::deny(
                    CheckId::NameTakeover,
                    format!(
                        "nodeguard [name-takeover]: node \"{name}\" is registered to another machine \
                         that is running ({field} {}, this machine {}); give this machine its own \
                         hostname, or if it replaces {name}, drain and delete node {name} first. \
                         If this machine is {name} itself, it is let through once {name} has had \
                         no status written for {}",
                        prefix(theirs),
                        prefix(ours),
                        config.describe_heartbeat_timeout(),
                    ),
                    format!(
                        "nodeguard [name-takeover]: node \"{name}\" is registered to another, running machine"
                    ),
                )
                .with_refusal(refusal(CheckId::NameTakeover, registered, input.object))
            } else {
                Finding::warn(
                    CheckId::NameTakeover,
                    format!(
                        "nodeguard [name-takeover]: taking over node \"{name}\" from another machine ({})",
                        not_running(inventory, name, input.now)
                    ),
                )
            }
        }
    };
    vec![finding]
}

/// What the ledger records of a machine refused for `registered`'s name.
pub(crate) fn refusal(
    check: CheckId,
    registered: &NodeClaim,
    refused: &NodeClaim,
) -> RefusalObservation {
    RefusalObservation {
        node: registered.name.to_string(),
        node_uid: registered.uid.as_deref().map(str::to_string),
        check: check.as_str().to_string(),
        machine_id: refused.machine_id.clone(),
        system_uuid: refused.system_uuid.clone(),
        provider_id: refused.provider_id.clone(),
        boot_id: refused.boot_id.clone(),
        node_resource_version: registered.resource_version.as_deref().map(str::to_string),
        node_heartbeat: registered.readiness.heartbeat,
    }
}

/// The refusal of a machine proven to be a second one: it names when it was first
/// refused, and that the refusal outlasts the node's downtime.
pub(crate) fn proven_message(
    check: CheckId,
    name: &str,
    field: &str,
    theirs: &str,
    ours: &str,
    refused: &RefusedEntry,
) -> String {
    let first = jiff::Timestamp::from_second(refused.first_refused.as_second())
        .unwrap_or(refused.first_refused);
    format!(
        "nodeguard [{check}]: node \"{name}\" belongs to another machine ({field} {}), seen \
         writing its status after this machine ({}) was first refused at {first}: two machines \
         run as {name}, and this one stays refused for the name even while {name} is down; \
         give this machine its own hostname, or if it replaces {name}, drain and delete node \
         {name} first (nodeguard forget {name} also releases it)",
        prefix(theirs),
        prefix(ours),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};
    use crate::sample::Machine;
    use jiff::SignedDuration;

    #[test]
    fn the_same_machine_re_registering_after_a_kubelet_restart_is_allowed() {
        let original = worker(1);
        let inventory = cluster(&[&original, &worker(2)]);
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
        // After a reboot: a new boot id, the same machine.
        let rebooted = original.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0");
        assert_eq!(
            decide(&create(&rebooted), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    fn impostor_of(original: &Machine) -> Machine {
        let mut impostor = worker(7);
        impostor.name = original.name.clone();
        impostor.internal_ip = original.internal_ip.clone();
        impostor
    }

    #[test]
    fn another_machine_registering_a_running_nodes_name_is_denied_with_the_longest_wait() {
        let original = worker(1);
        let verdict = decide(&create(&impostor_of(&original)), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
        // Other machines' values appear as prefixes only.
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [name-takeover]: node \"worker-1\" is registered to another machine that \
             is running (system UUID 0139a350…, this machine 0739a350…); give this machine its \
             own hostname, or if it replaces worker-1, drain and delete node worker-1 first. If \
             this machine is worker-1 itself, it is let through once worker-1 has had no status \
             written for 10m"
        );
        assert!(
            !verdict
                .denial_message()
                .unwrap()
                .contains(&original.machine_id)
        );
    }

    #[test]
    fn not_ready_is_no_proof_that_no_kubelet_runs_the_node() {
        // The kubelet of a node rebooting, or reporting its runtime down, still wrote
        // its status a moment ago: the node is running.
        let mut original = worker(1);
        original.ready = false;
        let verdict = decide(&create(&impostor_of(&original)), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Denied);
    }

    #[test]
    fn a_node_kept_ready_only_by_its_lease_is_let_through_once_its_heartbeat_is_old() {
        // The refused kubelet renews the Lease, so the node lifecycle controller keeps
        // the old Node Ready; only its status writes, all refused, would move the heartbeat.
        let mut original = worker(1);
        original.heartbeat = now() - SignedDuration::from_mins(9);
        let impostor = impostor_of(&original);
        assert_eq!(
            decide(&create(&impostor), &cluster(&[&original])).outcome(),
            Outcome::Denied,
            "9 minutes without status is within a live kubelet's jittered report period"
        );
        original.heartbeat = now() - SignedDuration::from_mins(11);
        let verdict = decide(&create(&impostor), &cluster(&[&original]));
        assert_eq!(verdict.outcome(), Outcome::Warned);
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [name-takeover]: taking over node \"worker-1\" from another machine (no status for 11m)"
            ]
        );
    }

    #[test]
    fn a_kind_node_restarted_with_a_new_machine_id_and_its_uuid_is_the_same_machine() {
        // kind gives a node a new machine-id at every container start and every node
        // the host's product UUID.
        let host_uuid = "1ad82a4c-2a18-11b2-a85c-82c3099c6263";
        let mut nodes: Vec<Machine> = (1..=3).map(worker).collect();
        for node in &mut nodes {
            node.system_uuid = host_uuid.into();
        }
        let mut inventory = cluster(&nodes.iter().collect::<Vec<_>>());
        // The UUID they shared when nodeguard first saw them still tells one name's
        // machine: the same UUID under the same name is that node, restarted.
        shared_at_first_sight(
            &mut inventory,
            &["worker-1", "worker-2", "worker-3"],
            crate::ledger::ValueField::SystemUuid,
            host_uuid,
        );
        let mut restarted = nodes[0].rebooted("4b6f1c2e-8d3a-4e5f-9a7b-0c1d2e3f4a5b");
        restarted.machine_id = "7d2e4f6a8b0c1d3e5f7a9b1c3d5e7f90".into();
        let verdict = decide(&create(&restarted), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
        assert_eq!(
            verdict.warnings(),
            vec![
                "nodeguard [name-takeover]: node \"worker-1\" registers with a new machine-id and its own system UUID: same machine"
            ]
        );
    }

    #[test]
    fn a_machine_id_that_proves_nothing_before_or_after_is_no_evidence_of_another_machine() {
        // Talos moving from a baked placeholder machine-id to a derived one.
        let mut before = worker(1);
        before.machine_id = "ad432f2cb0c28bbcd1f87a20199237f9".into();
        before.system_uuid = "03000200-0400-0500-0006-000700080009".into();
        let mut after = before.clone();
        after.machine_id = "5e1f0c9d8b7a69584736251403f2e1d0".into();
        assert_eq!(
            decide(&create(&after), &cluster(&[&before])).outcome(),
            Outcome::Allowed
        );
        // The remedy followed in a pool whose nodes shared one machine-id when nodeguard
        // first saw them, on boards without a real UUID.
        let pool_id = "a38f8eb989a4463c8c194d086528363d";
        let mut pool: Vec<Machine> = (1..=3).map(worker).collect();
        for node in &mut pool {
            node.machine_id = pool_id.into();
            node.system_uuid = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF".into();
        }
        let mut inventory = cluster(&pool.iter().collect::<Vec<_>>());
        let mut regenerated = pool[0].clone();
        regenerated.machine_id = "0f9e8d7c6b5a49382716a5b4c3d2e1f0".into();
        // Without that evidence, two nodes holding it prove nothing: the machine-id tells.
        assert_eq!(
            decide(&create(&regenerated), &inventory).deciding_check(),
            Some(CheckId::NameTakeover)
        );
        shared_at_first_sight(
            &mut inventory,
            &["worker-1", "worker-2", "worker-3"],
            crate::ledger::ValueField::MachineId,
            pool_id,
        );
        assert_eq!(
            decide(&create(&regenerated), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn another_provider_id_is_another_machine() {
        let mut original = worker(1);
        original.provider_id = Some("aws:///eu-west-1a/i-0a1b2c3d4e5f60718".into());
        let mut other = original.rebooted("4b6f1c2e-8d3a-4e5f-9a7b-0c1d2e3f4a5b");
        other.provider_id = Some("aws:///eu-west-1a/i-0fffffffffffffff0".into());
        let verdict = decide(&create(&other), &cluster(&[&original]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
        assert!(
            verdict
                .denial_message()
                .unwrap()
                .contains("(provider ID aws:///e…, this machine aws:///e…)")
        );
    }

    #[test]
    fn a_node_registered_without_identity_can_be_claimed_by_its_kubelet() {
        // A Node pre-created by a provisioner carries no nodeInfo: nothing contradicts.
        let original = worker(1);
        let mut bare = crate::sample::node_object(&original);
        bare["status"]["nodeInfo"] = serde_json::json!({});
        let mut inventory = crate::inventory::Inventory::new();
        inventory.apply_node_as_written(claim_of(&bare));
        assert_eq!(
            decide(&create(&original), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
