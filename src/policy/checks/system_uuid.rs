//! `system-uuid`: the SMBIOS product UUID the hypervisor or firmware gives the machine.

use super::{Claimed, collision, introduced};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.system_uuid.as_ref()) else {
        return Vec::new();
    };
    if input.config.system_uuid_is_shared(value) {
        return Vec::new();
    }
    collision(
        CheckId::SystemUuid,
        &input.object.name,
        Claimed { field: "system UUID", value: value.as_str() },
        input.inventory.system_uuid(value),
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
