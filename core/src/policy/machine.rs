//! Whether two claims to one node name come from the same machine, whether a kubelet
//! is running the registered one now, and whether a machine was refused for the name
//! before. Pure: the inventory, the configuration and the time are passed in.
//!
//! A machine is told apart by its machine-id, its system UUID and its provider ID, but
//! each can be missing or prove nothing: placeholders, values the admin declares
//! shared, and a machine-id shared by evidence (see [`super::sharing`]: an image's
//! baked id) say nothing about which machine is which, so they neither match nor
//! differ. A machine-id can also
//! change on the same machine: kind and minikube make a new one at every container
//! start, stateless systems at every boot, and an operator may regenerate it. The
//! system UUID then still tells: the same real UUID under the same name is the same
//! machine whose machine-id changed. A UUID read in the other SMBIOS byte order (a
//! vSphere hardware upgrade) is the same UUID.

use jiff::Timestamp;

use super::sharing;
use crate::identity::{MachineId, NodeClaim, ProviderId, SystemUuid};
use crate::inventory::Inventory;
use crate::ledger::{LedgerEntry, RefusedEntry, ValueField};
use crate::policy::Config;

/// The values that tell one machine from another.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineIds<'a> {
    /// `/etc/machine-id`: unique per installed system, kept by a copied disk.
    pub machine_id: Option<&'a MachineId>,
    /// The SMBIOS product UUID the firmware or hypervisor gives the machine.
    pub system_uuid: Option<&'a SystemUuid>,
    /// `spec.providerID`: the cloud instance.
    pub provider_id: Option<&'a ProviderId>,
}

impl NodeClaim {
    /// The values the Node reports that tell its machine apart.
    pub fn ids(&self) -> MachineIds<'_> {
        MachineIds {
            machine_id: self.machine_id.as_ref(),
            system_uuid: self.system_uuid.as_ref(),
            provider_id: self.provider_id.as_ref(),
        }
    }
}

impl RefusedEntry {
    /// The refused machine's values, to recognise it when it asks again.
    pub fn ids(&self) -> MachineIds<'_> {
        MachineIds {
            machine_id: self.machine_id.as_ref(),
            system_uuid: self.system_uuid.as_ref(),
            provider_id: self.provider_id.as_ref(),
        }
    }
}

impl LedgerEntry {
    /// The machine the record holds for the name.
    pub fn ids(&self) -> MachineIds<'_> {
        MachineIds {
            machine_id: self.machine_id.as_ref(),
            system_uuid: self.system_uuid.as_ref(),
            provider_id: self.provider_id.as_ref(),
        }
    }
}

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
        /// The field as messages name it: `provider ID`, `system UUID`, `machine-id`.
        field: &'static str,
        /// The registered node's value.
        registered: String,
        /// The claim's value.
        claimed: String,
    },
}

impl Sameness {
    /// Whether the claim counts as the registered machine: anything but `Different`.
    pub fn is_same_machine(&self) -> bool {
        !matches!(self, Sameness::Different { .. })
    }
}

/// What a comparison found, field by field.
struct Compared {
    sameness: Sameness,
    /// A value that singles out one machine is equal on both sides.
    proven_same: bool,
}

/// Compares the claim `claim` makes to the name `name` with what `registered` reports.
/// Values that prove nothing on either side count as unknown, and unknown values never
/// differ.
pub fn compare(
    registered: MachineIds<'_>,
    claim: MachineIds<'_>,
    inventory: &Inventory,
    config: &Config,
) -> Sameness {
    compare_fields(registered, claim, inventory, config).sameness
}

/// [`compare`], and whether the claim is proven to come from the machine `registered`
/// describes: its real system UUID or its provider ID is the registered one, values no
/// other machine reports.
pub fn compare_proven(
    registered: MachineIds<'_>,
    claim: MachineIds<'_>,
    inventory: &Inventory,
    config: &Config,
) -> (Sameness, bool) {
    let compared = compare_fields(registered, claim, inventory, config);
    let proven = compared.sameness.is_same_machine() && compared.proven_same;
    (compared.sameness, proven)
}

fn compare_fields(
    registered: MachineIds<'_>,
    claim: MachineIds<'_>,
    inventory: &Inventory,
    config: &Config,
) -> Compared {
    let mut proven_same = false;
    if let (Some(before), Some(after)) = (registered.provider_id, claim.provider_id) {
        if before != after {
            return different("provider ID", before.as_str(), after.as_str());
        }
        proven_same = true;
    }
    // A UUID nodes share (containers on one host) still tells one name's machine from
    // another: the same UUID under the same name is that machine, restarted.
    let uuid_telling = |v: &SystemUuid| !config.system_uuid_is_shared(v);
    let same_uuid = match (
        registered.system_uuid.filter(|v| uuid_telling(v)),
        claim.system_uuid.filter(|v| uuid_telling(v)),
    ) {
        (Some(before), Some(after)) if !before.same_machine_as(after) => {
            return different("system UUID", before.as_str(), after.as_str());
        }
        (Some(_), Some(_)) => true,
        _ => false,
    };
    proven_same |= same_uuid;
    let machine_id_telling = |v: &MachineId| {
        !config.machine_id_is_shared(v)
            && !sharing::is_platform_shared(ValueField::MachineId, v.as_str(), inventory)
    };
    let sameness = match (
        registered.machine_id.filter(|v| machine_id_telling(v)),
        claim.machine_id.filter(|v| machine_id_telling(v)),
    ) {
        (Some(before), Some(after)) if before != after => {
            if same_uuid {
                Sameness::NewMachineId
            } else {
                return different("machine-id", before.as_str(), after.as_str());
            }
        }
        _ => Sameness::Same,
    };
    Compared {
        sameness,
        proven_same,
    }
}

fn different(field: &'static str, registered: &str, claimed: &str) -> Compared {
    Compared {
        sameness: Sameness::Different {
            field,
            registered: registered.to_string(),
            claimed: claimed.to_string(),
        },
        proven_same: false,
    }
}

/// Whether `claim` is positively `refused`: nothing that tells machines apart differs,
/// and at least one such value is equal (a machine that reports nothing telling is no
/// machine in particular).
fn is_refused_machine(
    refused: &RefusedEntry,
    claim: MachineIds<'_>,
    inventory: &Inventory,
    config: &Config,
) -> bool {
    let compared = compare_fields(refused.ids(), claim, inventory, config);
    let same_machine_id = matches!(
        (refused.machine_id.as_ref(), claim.machine_id),
        (Some(a), Some(b)) if a == b
            && !config.machine_id_is_shared(a)
            && !sharing::is_platform_shared(ValueField::MachineId, a.as_str(), inventory)
    );
    compared.sameness == Sameness::Same && (compared.proven_same || same_machine_id)
}

/// A machine refused for this name before and since proven to be a second machine:
/// the node's own machine wrote its status after the refusal (recorded by the
/// recorder, or visible now in the registered Node: a later version whose Ready
/// heartbeat moved, not showing the refused machine).
pub fn proven_refusal<'a>(
    entry: &'a LedgerEntry,
    registered: &NodeClaim,
    claim: MachineIds<'_>,
    inventory: &Inventory,
    config: &Config,
) -> Option<&'a RefusedEntry> {
    if !entry.may_belong_to(registered.uid.as_deref()) {
        return None;
    }
    entry.refused.iter().find(|refused| {
        is_refused_machine(refused, claim, inventory, config)
            && (refused.proven.is_some()
                || status_written_since(refused, registered, inventory, config))
    })
}

/// The registered Node shows a status written after `refused` was refused, by a
/// machine other than the refused one.
fn status_written_since(
    refused: &RefusedEntry,
    registered: &NodeClaim,
    inventory: &Inventory,
    config: &Config,
) -> bool {
    let heartbeat = registered.readiness.heartbeat;
    heartbeat.is_some()
        && heartbeat != refused.node_heartbeat
        && crate::ledger::record::later_or_unordered(
            registered.resource_version.as_deref(),
            refused.node_resource_version.as_deref(),
        )
        && !is_refused_machine(refused, registered.ids(), inventory, config)
}

/// Whether a kubelet is running the node of that name now: this replica saw its status
/// written within the heartbeat timeout, on nodeguard's own clock.
pub fn is_running(inventory: &Inventory, name: &str, config: &Config, now: Timestamp) -> bool {
    inventory.is_running(name, config.heartbeat_timeout(), now)
}

/// Whether two nodes are containers on one host: the same running kernel (boot id),
/// their own addresses, and not the same machine in every other respect. A VM clone
/// never shares its source's running kernel; a memory-forked VM does, but also every
/// other value, its machine-id and system UUID included, so it is not taken for one.
pub fn on_one_host(a: &NodeClaim, b: &NodeClaim) -> bool {
    let same_kernel = matches!((&a.boot_id, &b.boot_id), (Some(x), Some(y)) if x == y);
    let own_addresses = !a.internal_ips.is_empty()
        && !b.internal_ips.is_empty()
        && a.internal_ips.iter().all(|ip| !b.internal_ips.contains(ip));
    let identical = matches!((&a.machine_id, &b.machine_id), (Some(x), Some(y)) if x == y)
        && matches!((&a.system_uuid, &b.system_uuid), (Some(x), Some(y)) if x.same_machine_as(y));
    same_kernel && own_addresses && !identical
}
