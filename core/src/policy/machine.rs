//! Whether two claims to one node name come from the same machine, and whether the
//! registered one is running now. Pure: the inventory, the configuration and the time
//! are passed in.
//!
//! A machine is told apart by its machine-id, its system UUID and its provider ID, but
//! each can be missing or prove nothing: placeholders, values the admin declares
//! shared, and a machine-id that other nodes already share (one baked into an image)
//! say nothing about which machine is which, so they neither match nor differ. A
//! machine-id can also change on the same machine: kind and minikube make a new one
//! at every container start, stateless systems at every boot, and an operator may
//! regenerate it. The system UUID then still tells: the same real UUID under the same
//! name is the same machine whose machine-id changed.

use jiff::Timestamp;

use crate::identity::{MachineId, NodeClaim, SystemUuid};
use crate::inventory::Inventory;
use crate::policy::Config;

/// How a claim to a registered node name relates to the registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sameness {
    /// Nothing that tells machines apart differs: a kubelet restart, a reboot.
    Same,
    /// The machine-id changed but the real system UUID is the registered one: the same
    /// machine with a new machine-id.
    NewMachineId,
    /// A different machine: the first field that differs, with both values.
    Different {
        field: &'static str,
        registered: String,
        claimed: String,
    },
}

impl Sameness {
    pub fn is_same_machine(&self) -> bool {
        !matches!(self, Sameness::Different { .. })
    }
}

/// Compares the claim `claim` makes to `registered`'s name with what `registered`
/// reports. Values that prove nothing on either side count as unknown, and unknown
/// values never differ.
pub fn compare(
    registered: &NodeClaim,
    claim: &NodeClaim,
    inventory: &Inventory,
    config: &Config,
) -> Sameness {
    let name = &*registered.name;
    if let (Some(before), Some(after)) = (&registered.provider_id, &claim.provider_id)
        && before != after
    {
        return different("provider ID", before.as_str(), after.as_str());
    }
    let uuid_telling = |v: &SystemUuid| !config.system_uuid_is_shared(v);
    let same_uuid = match (
        registered.system_uuid.as_ref().filter(|v| uuid_telling(v)),
        claim.system_uuid.as_ref().filter(|v| uuid_telling(v)),
    ) {
        (Some(before), Some(after)) if before != after => {
            return different("system UUID", before.as_str(), after.as_str());
        }
        (Some(_), Some(_)) => true,
        _ => false,
    };
    let machine_id_telling = |v: &MachineId| {
        !config.machine_id_is_shared(v) && inventory.machine_id(v).other_than(name).count < 2
    };
    match (
        registered
            .machine_id
            .as_ref()
            .filter(|v| machine_id_telling(v)),
        claim.machine_id.as_ref().filter(|v| machine_id_telling(v)),
    ) {
        (Some(before), Some(after)) if before != after => {
            if same_uuid {
                Sameness::NewMachineId
            } else {
                different("machine-id", before.as_str(), after.as_str())
            }
        }
        _ => Sameness::Same,
    }
}

fn different(field: &'static str, registered: &str, claimed: &str) -> Sameness {
    Sameness::Different {
        field,
        registered: registered.to_string(),
        claimed: claimed.to_string(),
    }
}

/// Whether a kubelet is running `node` now, judged from what a refused machine cannot
/// refresh: its Ready condition's heartbeat, which only its status writes move.
pub fn is_live(node: &NodeClaim, config: &Config, now: Timestamp) -> bool {
    node.readiness.is_live(now, config.heartbeat_timeout())
}
