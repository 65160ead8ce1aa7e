//! `machine-id`: `/etc/machine-id` is unique per installed system; a copied disk keeps it.

use super::{Claimed, collision, introduced};
use crate::policy::{CheckId, Finding, NodeInput};

pub fn check(input: &NodeInput<'_>) -> Vec<Finding> {
    let Some(value) = introduced(input, |c| c.machine_id.as_ref()) else {
        return Vec::new();
    };
    if input.config.machine_id_is_shared(value) {
        return Vec::new();
    }
    collision(
        CheckId::MachineId,
        &input.object.name,
        Claimed { field: "machine-id", value: value.as_str() },
        input.inventory.machine_id(value),
        |holder| {
            format!(
                "this machine looks like a clone of {holder}: give it a new identity \
                 (rm /etc/machine-id && systemd-machine-id-setup, then reboot) \
                 or delete node {holder} if it is gone"
            )
        },
    )
    .into_iter()
    .collect()
}
