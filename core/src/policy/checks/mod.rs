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

use super::config::{CheckId, Config};
use super::verdict::{Collision, CollisionKind, Finding};
use super::{CsrInput, NodeInput, machine, sharing};
use crate::identity::NodeClaim;
use crate::inventory::{Holders, Inventory, OtherHolders};
use crate::ledger::ValueField;

/// A check of a Node write: what it finds in one [`NodeInput`].
pub type NodeCheck = fn(&NodeInput<'_>) -> Vec<Finding>;
/// A check of a kubelet CSR that parsed: what it finds in one [`CsrInput`].
pub type CsrCheck = fn(&CsrInput<'_>) -> Vec<Finding>;

/// The Node checks, in the order they run and report.
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

/// The CSR checks, in the order they run and report (`csr-format` runs alone, on a
/// request that does not parse).
pub const CSR_CHECKS: &[(CheckId, CsrCheck)] = &[
    (CheckId::NameTakeover, name_takeover_csr::check),
    (CheckId::KeyFingerprint, key_fingerprint::check),
    (CheckId::ServingSan, serving_san::check),
];

/// The single-valued field a write brings: its value, unless the node already held it
/// (the old object of an UPDATE, the registered Node of a CREATE from the same
/// machine): nothing new, nothing to check. So two nodes that shared a value before
/// nodeguard came keep working, restarts included.
fn introduced<'a, T: PartialEq + 'a>(
    input: &NodeInput<'a>,
    field: impl Fn(&'a NodeClaim) -> Option<&'a T>,
) -> Option<&'a T> {
    let value = field(input.object)?;
    match input.baseline {
        Some(before) if field(before) == Some(value) => None,
        _ => Some(value),
    }
}

/// The values of a multi-valued field (addresses, hostnames) that the write brings.
fn introduced_all<'a, T: PartialEq + 'a>(
    input: &NodeInput<'a>,
    field: impl Fn(&'a NodeClaim) -> &'a [T],
) -> Vec<&'a T> {
    let before: &'a [T] = input.baseline.map_or(&[], |before| field(before));
    field(input.object)
        .iter()
        .filter(|v| !before.contains(v))
        .collect()
}

/// A value as a person will compare it with the machine: what it is and what it reads.
pub(crate) struct Claimed<'a> {
    pub field: &'static str,
    pub value: &'a str,
}

/// The rule every field check shares: a value that other nodes hold is a collision,
/// refused, unless it is shared on evidence a clone cannot produce (`shared`, why), which
/// is a warning; a value nobody else holds is fine. How many nodes hold it proves
/// nothing: one clone let in makes its original's values held by two.
pub(crate) fn collision_with(
    check: CheckId,
    claimed: Claimed<'_>,
    others: OtherHolders<'_>,
    shared: Option<&'static str>,
    remedy: impl FnOnce(&str) -> String,
) -> Option<Finding> {
    let Claimed { field, value } = claimed;
    let first = others.names.first()?;
    let kind = if shared.is_some() {
        CollisionKind::Shared
    } else {
        CollisionKind::Clone
    };
    let found = Collision {
        field,
        value: value.to_string(),
        kind,
        holder_count: others.count,
        holders: others.names.iter().map(|n| n.to_string()).collect(),
        shared_by: shared,
    };
    let finding = match shared {
        Some(why) if others.count == 1 => Finding::warn(
            check,
            format!(
                "nodeguard [{check}]: {field} {} is shared with \"{first}\" ({why}), not a clone",
                abbreviate(value)
            ),
        ),
        Some(_) => Finding::warn(
            check,
            format!(
                "nodeguard [{check}]: {field} {} is shared by {} nodes (e.g. {first}); not proof of a clone",
                abbreviate(value),
                others.count
            ),
        ),
        None => {
            let more = match others.count {
                1 => String::new(),
                2 => " and 1 other node".to_string(),
                n => format!(" and {} other nodes", n - 1),
            };
            Finding::deny(
                check,
                format!(
                    "nodeguard [{check}]: {field} {value} is already used by node \"{first}\"{more}; {}",
                    remedy(first)
                ),
                format!(
                    "nodeguard [{check}]: {field} {} is already used by node \"{first}\"{more}",
                    abbreviate(value)
                ),
            )
        }
    };
    Some(finding.with_collision(found))
}

/// Why the other holders of a value the write brings share it: on recorded evidence
/// (see [`sharing`]), or as containers on the writer's own host.
pub(crate) fn shared_because(
    input: &NodeInput<'_>,
    field: ValueField,
    value: &str,
    from: Option<&str>,
    others: &OtherHolders<'_>,
) -> Option<&'static str> {
    if let Some(shared) = sharing::evidence(
        field,
        value,
        &input.object.name,
        from,
        input.inventory,
        input.config,
    ) {
        return Some(shared.describe());
    }
    let on_one_host = !others.names.is_empty()
        && others.names.iter().all(|holder| {
            input
                .inventory
                .node(holder)
                .is_some_and(|holder| machine::on_one_host(input.object, holder))
        });
    on_one_host.then_some(ON_ONE_HOST)
}

/// Why nodes that are containers on one host share a value.
pub(crate) const ON_ONE_HOST: &str = "same host kernel";

/// The value of a single-valued field the node held before this write, if it is the
/// same machine: what a value it brings was moved to from.
pub(crate) fn previous<'a, T: 'a>(
    input: &NodeInput<'a>,
    field: impl Fn(&'a NodeClaim) -> Option<&'a T>,
) -> Option<&'a T> {
    input.baseline.and_then(field)
}

/// An address whose only other holder is a node no kubelet is running: most likely a
/// dead machine's address handed out again (DHCP), not a clone, whose original is
/// alive. Such a collision is worth a warning, not a refusal.
pub(crate) fn reused_address(
    check: CheckId,
    node: &str,
    field: &'static str,
    ip: &std::net::IpAddr,
    holders: Holders<'_>,
    running: impl Fn(&str) -> bool,
) -> Option<Finding> {
    let others = holders.other_than(node);
    let [holder] = others.names.as_slice() else {
        return None;
    };
    if running(holder) {
        return None;
    }
    Some(
        Finding::warn(
            check,
            format!(
                "nodeguard [{check}]: {field} {ip} is also node \"{holder}\"'s, which is not running (address reused?)"
            ),
        )
        .with_collision(Collision {
            field,
            value: ip.to_string(),
            kind: CollisionKind::Reused,
            holder_count: 1,
            holders: vec![holder.to_string()],
            shared_by: None,
        }),
    )
}

/// Whether a kubelet is running the node of that name (see [`Inventory::is_running`]).
pub(crate) fn running<'a>(
    inventory: &'a Inventory,
    config: &'a Config,
    now: Timestamp,
) -> impl Fn(&str) -> bool + 'a {
    move |name| machine::is_running(inventory, name, config, now)
}

/// Another node's identifier in a message: a prefix, enough for a person to compare
/// with what a machine reports, not enough to impersonate it.
pub(crate) fn prefix(value: &str) -> String {
    const KEEP: usize = 8;
    if value.chars().count() <= KEEP {
        value.to_string()
    } else {
        let head: String = value.chars().take(KEEP).collect();
        format!("{head}…")
    }
}

/// Why no kubelet counts as running a node: "no status for 12m" (as seen on
/// nodeguard's clock).
pub(crate) fn not_running(inventory: &Inventory, name: &str, now: Timestamp) -> String {
    let seen = inventory.status_seen(name).and_then(|seen| seen.at);
    format!("no status for {}", ago(seen, now))
}

/// "12s", "11m", "2h5m": how long ago `then` was, to the minute past the first one
/// (what a person compares with a heartbeat timeout).
pub(crate) fn ago(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "an unknown time".to_string();
    };
    let seconds = (now.as_second() - then.as_second()).max(0);
    let rounded = if seconds < 60 {
        seconds
    } else {
        seconds - seconds % 60
    };
    super::config::describe_duration(jiff::SignedDuration::from_secs(rounded))
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
