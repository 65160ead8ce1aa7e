//! The checks: one file, one pure function each. The lists below are the order in
//! which they run and report; adding a check touches its file and one line here.

pub mod csr_format;
pub mod hostname;
pub mod identity_drift;
pub mod internal_ip;
pub mod key_fingerprint;
pub mod machine_id;
pub mod name_takeover;
pub mod name_takeover_csr;
pub mod provider_id;
pub mod serving_san;
pub mod system_uuid;
#[cfg(test)]
mod testing;
pub mod two_kubelets;

use jiff::Timestamp;

use super::config::CheckId;
use super::verdict::Finding;
use super::{CsrInput, NodeInput, Operation};
use crate::identity::NodeClaim;
use crate::inventory::Holders;

pub type NodeCheck = fn(&NodeInput<'_>) -> Vec<Finding>;
pub type CsrCheck = fn(&CsrInput<'_>) -> Vec<Finding>;

pub const NODE_CHECKS: &[(CheckId, NodeCheck)] = &[
    (CheckId::NameTakeover, name_takeover::check),
    (CheckId::IdentityDrift, identity_drift::check),
    (CheckId::TwoKubelets, two_kubelets::check),
    (CheckId::MachineId, machine_id::check),
    (CheckId::SystemUuid, system_uuid::check),
    (CheckId::ProviderId, provider_id::check),
    (CheckId::Hostname, hostname::check),
    (CheckId::InternalIp, internal_ip::check),
];

pub const CSR_CHECKS: &[(CheckId, CsrCheck)] = &[
    (CheckId::NameTakeover, name_takeover_csr::check),
    (CheckId::KeyFingerprint, key_fingerprint::check),
    (CheckId::ServingSan, serving_san::check),
];

/// The single-valued field a write brings: on CREATE its value, on UPDATE its value
/// only if the old object did not already have it (nothing new, nothing to check).
fn introduced<'a, T: PartialEq + 'a>(
    input: &NodeInput<'a>,
    field: impl Fn(&'a NodeClaim) -> Option<&'a T>,
) -> Option<&'a T> {
    let value = field(input.object)?;
    match (input.operation, input.old_object) {
        (Operation::Update, Some(old)) if field(old) == Some(value) => None,
        _ => Some(value),
    }
}

/// The values of a multi-valued field (addresses, hostnames) that the write brings.
fn introduced_all<'a, T: PartialEq + 'a>(
    input: &NodeInput<'a>,
    field: impl Fn(&'a NodeClaim) -> &'a [T],
) -> Vec<&'a T> {
    let old: &'a [T] = match (input.operation, input.old_object) {
        (Operation::Update, Some(old)) => field(old),
        _ => &[],
    };
    field(input.object)
        .iter()
        .filter(|v| !old.contains(v))
        .collect()
}

/// A value as a person will compare it with the machine: what it is and what it reads.
pub(crate) struct Claimed<'a> {
    pub field: &'a str,
    pub value: &'a str,
}

/// The rule every field check shares: a value that exactly one *other* node holds is a
/// collision; one that two or more others already hold is shared (a warning, never a
/// denial); one that nobody else holds is fine.
pub(crate) fn collision(
    check: CheckId,
    node: &str,
    claimed: Claimed<'_>,
    holders: Holders<'_>,
    remedy: impl FnOnce(&str) -> String,
) -> Option<Finding> {
    let others = holders.other_than(node);
    let Claimed { field, value } = claimed;
    match others.names.as_slice() {
        [] => None,
        [holder] => Some(Finding::deny(
            check,
            format!(
                "nodeguard [{check}]: {field} {value} is already used by node \"{holder}\"; {}",
                remedy(holder)
            ),
            format!(
                "nodeguard [{check}]: {field} {} is already used by node \"{holder}\"",
                abbreviate(value)
            ),
        )),
        [first, ..] => Some(Finding::warn(
            check,
            format!(
                "nodeguard [{check}]: {field} {} is shared by {} nodes (e.g. {first}); not proof of a clone",
                abbreviate(value),
                others.count
            ),
        )),
    }
}

/// An address whose only other holder is a node that is not Ready: most likely a dead
/// machine's address handed out again (DHCP), not a clone, whose original is alive. Such
/// a collision is worth a warning, not a refusal.
pub(crate) fn reused_address(
    check: CheckId,
    node: &str,
    field: &str,
    ip: &std::net::IpAddr,
    holders: Holders<'_>,
    inventory: &crate::inventory::Inventory,
) -> Option<Finding> {
    let others = holders.other_than(node);
    let [holder] = others.names.as_slice() else {
        return None;
    };
    if inventory.node(holder).is_none_or(|h| h.readiness.ready) {
        return None;
    }
    Some(Finding::warn(
        check,
        format!(
            "nodeguard [{check}]: {field} {ip} is also node \"{holder}\"'s, which is not Ready (address reused?)"
        ),
    ))
}

/// Long identifiers cut to their first characters for 120-character warnings.
pub(crate) fn abbreviate(value: &str) -> String {
    const KEEP: usize = 13;
    if value.chars().count() <= KEEP + 1 {
        value.to_string()
    } else {
        let head: String = value.chars().take(KEEP).collect();
        format!("{head}…")
    }
}

/// "for 3h12m" since a time, or nothing when the time is unknown or in the future.
pub(crate) fn for_how_long(since: Option<Timestamp>, now: Timestamp) -> String {
    let Some(since) = since else {
        return String::new();
    };
    let seconds = now.as_second() - since.as_second();
    if seconds < 0 {
        return String::new();
    }
    let (days, hours, minutes) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
    );
    if days > 0 {
        format!(" for {days}d{hours}h")
    } else if hours > 0 {
        format!(" for {hours}h{minutes}m")
    } else if minutes > 0 {
        format!(" for {minutes}m")
    } else {
        format!(" for {seconds}s")
    }
}

/// An optional value for a message: the value, or "unknown".
pub(crate) fn or_unknown(value: Option<&impl std::fmt::Display>) -> String {
    value.map_or_else(|| "unknown".to_string(), ToString::to_string)
}
