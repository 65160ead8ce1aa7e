//! `identity-drift`: an UPDATE that changes a registered node's machine-id or system
//! UUID. A reboot changes only the boot id; a different value means a different machine
//! is writing the node, which is refused while the node is Ready.

use crate::policy::{CheckId, Finding, NodeInput, Operation};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    if input.operation != Operation::Update {
        return Vec::new();
    }
    let Some(old) = input.old_object else {
        return Vec::new();
    };
    let new = input.object;
    let config = input.config;
    let mut changes: Vec<(&str, String, String)> = Vec::new();
    if let (Some(before), Some(after)) = (&old.machine_id, &new.machine_id)
        && before != after
        && !config.machine_id_is_shared(before)
        && !config.machine_id_is_shared(after)
    {
        changes.push(("machine-id", before.to_string(), after.to_string()));
    }
    if let (Some(before), Some(after)) = (&old.system_uuid, &new.system_uuid)
        && before != after
        && !config.system_uuid_is_shared(before)
        && !config.system_uuid_is_shared(after)
    {
        changes.push(("system UUID", before.to_string(), after.to_string()));
    }
    let Some((field, before, after)) = changes.first() else {
        return Vec::new();
    };
    let name = &new.name;
    let finding = if old.readiness.ready {
        Finding::deny(
            CheckId::IdentityDrift,
            format!(
                "nodeguard [identity-drift]: node \"{name}\" is Ready with {field} {before}, but \
                 this write reports {after}: a second machine is writing as {name} with its \
                 credentials; shut that machine down and give it a new identity, or if {name} \
                 really moved to new hardware, delete node {name} and let it re-register"
            ),
            format!("nodeguard [identity-drift]: node \"{name}\" is Ready with another {field}"),
        )
    } else {
        Finding::warn(
            CheckId::IdentityDrift,
            format!("nodeguard [identity-drift]: node \"{name}\" changed {field} while not Ready (new machine?)"),
        )
    };
    vec![finding]
}
