//! When a value several nodes hold is shared by the platform rather than copied: only
//! on evidence a clone cannot produce. A clone let in by any path (an exemption, a
//! failed-open call, `mode: warn`) makes its original's values held by two nodes, so
//! how many nodes hold a value proves nothing. What does:
//!
//! - the admin declares it (`sharedValues`), or it is a known placeholder;
//! - it was shared when nodeguard first saw the cluster: two Nodes older than the first
//!   judgment of the ledger's records held it (`FirstSight`), and it stays shared when
//!   holders drop to one, so deleting one of them and letting it join again keeps
//!   working;
//! - a node came to hold it while it was shared by evidence (`Inherited`): a pool whose
//!   nodes are replaced one by one keeps its shared value;
//! - the nodes holding it moved to it together from a value shared by evidence
//!   (`Moved`): a pool's new image that bakes a new machine-id.
//!
//! The recorder judges each node's values when it records the node ([`judge`]); the
//! checks read the marks through the inventory ([`evidence`]).

use std::net::IpAddr;

use jiff::Timestamp;

use crate::identity::{Hostname, MachineId, ProviderId, SystemUuid};
use crate::inventory::Inventory;
use crate::ledger::{
    Change, Evidence, NodeObservation, Record, RecordSpec, SharedMark, SharedValue,
    SharingEvidence, ValueField,
};
use crate::policy::Config;

/// Why a value is taken as shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// Shared when nodeguard first saw the cluster, or since inherited.
    Recorded,
    /// The nodes holding it moved to it together from a shared value.
    MovedTogether,
}

impl Shared {
    /// As a warning says it.
    pub fn describe(self) -> &'static str {
        match self {
            Shared::Recorded => "since first seen",
            Shared::MovedTogether => "moved together",
        }
    }
}

/// Whether `value` of `field` is declared shared or a placeholder.
pub fn is_declared(field: ValueField, value: &str, config: &Config) -> bool {
    match field {
        ValueField::MachineId => {
            MachineId::parse(value).is_none_or(|v| config.machine_id_is_shared(&v))
        }
        ValueField::SystemUuid => {
            SystemUuid::parse(value).is_none_or(|v| config.system_uuid_is_shared(&v))
        }
        ValueField::ProviderId => ProviderId::parse(value).is_none(),
        ValueField::InternalIP => value
            .parse::<IpAddr>()
            .map_or(true, |ip| config.address_is_shared(&ip)),
        ValueField::Hostname => {
            Hostname::parse(value).is_none_or(|v| config.hostname_is_shared(&v))
        }
    }
}

/// Whether the ledger marks `value` as shared by the platform: first sight, inherited,
/// or moved to by two nodes or more from one shared value. Such a value tells no
/// machine apart.
pub fn is_platform_shared(field: ValueField, value: &str, inventory: &Inventory) -> bool {
    inventory.shared(field, value).is_some_and(|counts| {
        counts.evidence > 0 || counts.moved_from.iter().any(|(_, count)| *count >= 2)
    })
}

/// Evidence that `value` of `field`, which other nodes hold, is shared rather than
/// copied, for the node `writer` that brings it, coming from `from` (its own previous
/// value of the field, if any). The writer's own marks do not count for the value it
/// brings: a value is shared by what others did.
pub fn evidence(
    field: ValueField,
    value: &str,
    writer: &str,
    from: Option<&str>,
    inventory: &Inventory,
    config: &Config,
) -> Option<Shared> {
    let own = inventory.identity(writer);
    let own_marks = |counted: fn(&SharedMark, &str) -> bool, moved_from: &str| -> u32 {
        own.map_or(0, |entry| {
            let marks = entry.marks(field, value).filter(|m| counted(m, moved_from));
            u32::try_from(marks.count()).unwrap_or(u32::MAX)
        })
    };
    if let Some(counts) = inventory.shared(field, value) {
        let recorded = own_marks(|m, _| m.evidence != SharingEvidence::Moved, "");
        if counts.evidence > recorded {
            return Some(Shared::Recorded);
        }
        for (moved_from, count) in &counts.moved_from {
            let own_move = own_marks(|m, from| m.from.as_deref() == Some(from), moved_from);
            let others = count.saturating_sub(own_move);
            if others >= 2 || (others >= 1 && from == Some(&**moved_from)) {
                return Some(Shared::MovedTogether);
            }
        }
    }
    // The writer moving from a shared value to one a holder also moved to from it, the
    // holder's move seen in its Node but not yet recorded.
    let from = from.filter(|from| *from != value)?;
    if !is_shared_for(field, from, writer, inventory, config) {
        return None;
    }
    let moved_alike = holders(field, value, inventory).into_iter().any(|holder| {
        holder != writer
            && inventory
                .identity(holder)
                .is_some_and(|entry| recorded_value(entry, field) == Some(from))
    });
    moved_alike.then_some(Shared::MovedTogether)
}

/// Whether the node `node`'s own value `value` of `field` is shared: declared, marked
/// on its own record, or shared by the platform.
fn is_shared_for(
    field: ValueField,
    value: &str,
    node: &str,
    inventory: &Inventory,
    config: &Config,
) -> bool {
    is_declared(field, value, config)
        || inventory
            .identity(node)
            .is_some_and(|entry| entry.marks(field, value).next().is_some())
        || is_platform_shared(field, value, inventory)
}

/// The single value of `field` a record holds.
fn recorded_value(entry: &crate::ledger::LedgerEntry, field: ValueField) -> Option<&str> {
    match field {
        ValueField::MachineId => entry.machine_id.as_ref().map(MachineId::as_str),
        ValueField::SystemUuid => entry.system_uuid.as_ref().map(SystemUuid::as_str),
        ValueField::ProviderId => entry.provider_id.as_ref().map(ProviderId::as_str),
        ValueField::InternalIP | ValueField::Hostname => None,
    }
}

/// Up to three nodes holding `value` of `field`, by name.
fn holders<'a>(field: ValueField, value: &str, inventory: &'a Inventory) -> Vec<&'a str> {
    let found = match field {
        ValueField::MachineId => MachineId::parse(value).map(|v| inventory.machine_id(&v)),
        ValueField::SystemUuid => SystemUuid::parse(value).map(|v| inventory.system_uuid(&v)),
        ValueField::ProviderId => ProviderId::parse(value).map(|v| inventory.provider_id(&v)),
        ValueField::InternalIP => value
            .parse::<IpAddr>()
            .ok()
            .map(|v| inventory.internal_ip(&v)),
        ValueField::Hostname => Hostname::parse(value).map(|v| inventory.hostname(&v)),
    };
    found
        .map(|holders| holders.names().take(3).map(|n| &**n).collect())
        .unwrap_or_default()
}

/// Every node holding `value` of `field`.
fn all_holders<'a>(
    field: ValueField,
    value: &str,
    inventory: &'a Inventory,
) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    macro_rules! names {
        ($holders:expr) => {
            Box::new($holders.names().map(|n| &**n))
        };
    }
    match field {
        ValueField::MachineId => match MachineId::parse(value) {
            Some(v) => names!(inventory.machine_id(&v)),
            None => Box::new(std::iter::empty()),
        },
        ValueField::SystemUuid => match SystemUuid::parse(value) {
            Some(v) => names!(inventory.system_uuid(&v)),
            None => Box::new(std::iter::empty()),
        },
        ValueField::ProviderId => match ProviderId::parse(value) {
            Some(v) => names!(inventory.provider_id(&v)),
            None => Box::new(std::iter::empty()),
        },
        ValueField::InternalIP => match value.parse::<IpAddr>() {
            Ok(v) => names!(inventory.internal_ip(&v)),
            Err(_) => Box::new(std::iter::empty()),
        },
        ValueField::Hostname => match Hostname::parse(value) {
            Some(v) => names!(inventory.hostname(&v)),
            None => Box::new(std::iter::empty()),
        },
    }
}

/// Each value of a record, with its field: the single-valued fields, InternalIPs and
/// Hostname addresses.
pub fn values(spec: &RecordSpec) -> Vec<(ValueField, &str)> {
    let mut values: Vec<(ValueField, &str)> = [
        (ValueField::MachineId, spec.machine_id.as_deref()),
        (ValueField::SystemUuid, spec.system_uuid.as_deref()),
        (ValueField::ProviderId, spec.provider_id.as_deref()),
    ]
    .into_iter()
    .filter_map(|(field, value)| Some((field, value?)))
    .collect();
    for address in &spec.addresses {
        let field = match address.kind.as_str() {
            "InternalIP" => ValueField::InternalIP,
            "Hostname" => ValueField::Hostname,
            _ => continue,
        };
        values.push((field, &address.address));
    }
    values
}

/// Applies an observation of a Node to its record as the recorder does: the record's
/// own logic ([`Record::observe_node`]), then, once the record belongs to a Node, which
/// of its values are shared by evidence.
pub fn record_node(
    record: &mut Record,
    node: &NodeObservation,
    evidence: Evidence,
    judging: Judging<'_>,
) -> Change {
    let before = record.spec.clone();
    let mut change = record.observe_node(node, judging.now, evidence);
    if record.owner.is_some() && !change.needs_confirmation {
        let shared = judge(&before, &record.spec, node, judging);
        change.merge(record.judge_sharing(shared, judging.now));
    }
    change
}

/// The history the recorder writes when it first sees a cluster at `now`: a record per
/// Node without one, its values judged as at first sight (the Nodes existed before the
/// ledger did). For `nodeguard audit` before nodeguard is installed, and the demo's
/// cluster, so that they answer as the webhook will once the recorder has run.
pub fn record_first_sight(inventory: &mut Inventory, config: &Config, now: Timestamp) {
    let mut names: Vec<String> = inventory
        .nodes()
        .filter(|node| inventory.identity(&node.name).is_none())
        .map(|node| node.name.to_string())
        .collect();
    names.sort_unstable();
    for name in names {
        let Some(observation) = inventory.node(&name).map(NodeObservation::of) else {
            continue;
        };
        // Judged as the record of this Node, whether or not its uid is known.
        let mut record = Record {
            owner: Some(observation.uid.clone().unwrap_or_else(|| name.clone())),
            ..Record::default()
        };
        let judging = Judging {
            inventory,
            config,
            now,
        };
        record_node(&mut record, &observation, Evidence::Resync, judging);
        let entry = record.entry(crate::ledger::RecordMeta {
            name: &name,
            created: Some(now),
            ..crate::ledger::RecordMeta::default()
        });
        if let Some(entry) = entry {
            inventory.apply_identity(entry);
        }
    }
}

/// What [`judge`] reads besides the record.
#[derive(Debug, Clone, Copy)]
pub struct Judging<'a> {
    /// Who else holds each value, and the marks already given.
    pub inventory: &'a Inventory,
    /// Declared shared values and placeholders, which are never marked.
    pub config: &'a Config,
    /// The time a new mark records, and the ledger's epoch when it has none yet.
    pub now: Timestamp,
}

/// Which values of a node's record are shared by evidence, after `node` was observed:
/// `before` is the record as it was, `after` as the observation left it.
///
/// A mark once given stays while the node holds the value. A record judged for the
/// first time whose Node existed before nodeguard first judged the ledger (see
/// [`Inventory::ledger_epoch`]) marks the values another such Node holds
/// (`FirstSight`): the cluster as nodeguard first saw it. A value already
/// shared by evidence is `Inherited`. A value the node moved to from one of its own
/// shared values is `Moved` from it.
pub fn judge(
    before: &RecordSpec,
    after: &RecordSpec,
    node: &NodeObservation,
    judging: Judging<'_>,
) -> Vec<SharedValue> {
    let Judging {
        inventory,
        config,
        now,
    } = judging;
    let name = node.name.as_str();
    let epoch = inventory.ledger_epoch().unwrap_or(now);
    // The API server stamps every Node's creation (to the second); one without (a
    // hand-made dump) is taken as older than the ledger.
    let existed_before = |created: Option<Timestamp>| created.is_none_or(|c| c < epoch);
    let first_sight = before.first_sight.is_none() && existed_before(node.created);
    let mut shared = Vec::new();
    for (field, value) in values(after) {
        if is_declared(field, value, config) {
            continue;
        }
        let kept: Vec<&SharedValue> = before
            .shared_values
            .iter()
            .filter(|s| s.field == field && s.value == value)
            .collect();
        if !kept.is_empty() {
            shared.extend(kept.into_iter().cloned());
            continue;
        }
        let mark = |evidence, from: Option<&str>| SharedValue {
            field,
            value: value.to_string(),
            evidence,
            from: from.map(str::to_string),
            since: now,
        };
        if first_sight
            && all_holders(field, value, inventory).any(|holder| {
                holder != name && existed_before(inventory.node(holder).and_then(|n| n.created))
            })
        {
            shared.push(mark(SharingEvidence::FirstSight, None));
            continue;
        }
        if evidence(field, value, name, None, inventory, config).is_some() {
            shared.push(mark(SharingEvidence::Inherited, None));
            continue;
        }
        let previous = match field {
            ValueField::MachineId => before.machine_id.as_deref(),
            ValueField::SystemUuid => before.system_uuid.as_deref(),
            ValueField::ProviderId => before.provider_id.as_deref(),
            ValueField::InternalIP | ValueField::Hostname => None,
        };
        let moved_from_shared = previous.filter(|from| {
            *from != value
                && (is_declared(field, from, config)
                    || before
                        .shared_values
                        .iter()
                        .any(|s| s.field == field && s.value == *from)
                    || is_platform_shared(field, from, inventory))
        });
        if let Some(from) = moved_from_shared {
            shared.push(mark(SharingEvidence::Moved, Some(from)));
        }
    }
    shared
}
