//! The ledger: what nodeguard has seen over time about each node name, kept in one
//! record per name (the shell stores it as a `NodeIdentity` custom resource), and how
//! an observation changes it. Pure: time is passed in, nothing here reads or writes
//! the cluster.
//!
//! A record holds the machine that registered the name, the kubelet keys and
//! certificates issued to it, its boots in the order they were first seen, a conflict
//! once two machines were seen writing it, the machines refused for its name while it
//! ran, and which of its values are shared by evidence (see [`SharingEvidence`]).
//! Every replica keeps of each record only the compact [`LedgerEntry`] the decisions
//! read.

mod entry;
pub(crate) mod record;

pub use entry::{
    LedgerConflict, LedgerEntry, PodGuard, RecordedDigests, RefusedEntry, SharedMark,
    key_leaves_unchanged, node_leaves_unchanged,
};
pub use record::{
    Change, Evidence, Forgotten, KeyObservation, NodeObservation, Proof, Record, RecordMeta,
    RefusalObservation, conflict_message, conflict_note, parse_fingerprint, second_machine_remedy,
};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The id of the check whose conflicts the ledger records.
pub const TWO_KUBELETS: &str = crate::check_id::CheckId::TwoKubelets.as_str();

/// Boots kept per node: enough to see an alternation, bounded so that a node rebooting
/// every day does not grow its record for ever.
pub const MAX_BOOTS: usize = 16;

/// Keys kept per node and signer; the oldest goes first.
pub const MAX_KEYS_PER_SIGNER: usize = 16;

/// Client certificates kept per node.
pub const MAX_CREDENTIAL_IDS: usize = 16;

/// Machines refused for one name kept at once; the one refused longest ago goes first.
pub const MAX_REFUSED_MACHINES: usize = 4;

/// How stale `lastSeen` may get before the recorder refreshes it: a bounded write rate
/// (at most one write per node per interval), not one per heartbeat.
pub const LAST_SEEN_INTERVAL: SignedDuration = SignedDuration::from_hours(1);

/// How often a refused machine's `lastRefused` is brought up to date while it keeps
/// retrying: a refused kubelet retries every few seconds, its record is written at most
/// this often.
pub const REFUSAL_REFRESH: SignedDuration = SignedDuration::from_mins(10);

/// How long a record made from a CSR may wait for its Node to register: a kubelet
/// registers seconds after its certificate is issued, and the API server deletes
/// issued CSRs after an hour. A record with no Node after this long is removed, so that
/// CSRs for names that never register cannot fill the ledger.
pub const UNCLAIMED_RECORD_TTL: SignedDuration = SignedDuration::from_hours(1);

/// What the ledger records about one node name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RecordSpec {
    /// The `/etc/machine-id` of the machine that holds the name, as its Node reports it
    /// (`status.nodeInfo.machineID`).
    #[serde(rename = "machineID", default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// That machine's SMBIOS UUID (`status.nodeInfo.systemUUID`).
    #[serde(
        rename = "systemUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_uuid: Option<String>,
    /// The cloud provider's id of that machine (the Node's `spec.providerID`).
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    /// The Node's addresses: InternalIPs, ExternalIPs and hostnames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<RecordedAddress>,
    /// Kubelet keys bound to this node by issued CSRs, client and serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<BoundKey>,
    /// Client certificates issued to this node, as the API server identifies a request
    /// made with one (`authentication.kubernetes.io/credential-id`).
    #[serde(
        rename = "credentialIDs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub credential_ids: Vec<RecordedCredential>,
    /// Boots in the order they were first seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boots: Vec<Boot>,
    /// Machines refused for this name because another machine was running the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_machines: Vec<RefusedMachine>,
    /// This node's values that are shared by evidence: never proof of a clone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_values: Vec<SharedValue>,
    /// When the recorder first judged which of this node's values are shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sight: Option<Timestamp>,
}

/// One of the Node's addresses, in the form of an entry of a Node's `status.addresses`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RecordedAddress {
    /// The address type: `InternalIP`, `ExternalIP` or `Hostname`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The IP address, or the hostname for a `Hostname`.
    pub address: String,
}

/// A kubelet key bound to the node by an issued CSR.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BoundKey {
    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub fingerprint: String,
    /// The signer that issued the certificate for the key
    /// (`kubernetes.io/kube-apiserver-client-kubelet` or `kubernetes.io/kubelet-serving`).
    pub signer: String,
    /// When the recorder learned the binding, by nodeguard's clock.
    pub first_seen: Timestamp,
    /// The CSR the binding was learned from (gone about an hour after it was issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// A client certificate issued to the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RecordedCredential {
    /// `X509SHA256=<hex>`.
    pub id: String,
    /// When the recorder learned of the certificate, by nodeguard's clock.
    pub first_seen: Timestamp,
    /// The CSR the certificate was issued for (gone about an hour after it was issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// A boot the Node reported: one run of a machine's kernel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`, the Node's
    /// `status.nodeInfo.bootID`).
    #[serde(rename = "bootID")]
    pub boot_id: String,
    /// The system UUID reported with this boot: tells two machines apart in a conflict.
    #[serde(
        rename = "systemUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_uuid: Option<String>,
    /// When the recorder first saw this boot, by nodeguard's clock.
    pub first_seen: Timestamp,
    /// When the recorder last saw this boot; refreshed at most every [`LAST_SEEN_INTERVAL`]
    /// while it stays current.
    pub last_seen: Timestamp,
}

/// A machine refused for this node's name (a registration or a status write) while
/// another machine was running the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RefusedMachine {
    /// Its `/etc/machine-id`, as it reported it.
    #[serde(rename = "machineID", default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Its SMBIOS UUID, as it reported it.
    #[serde(
        rename = "systemUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_uuid: Option<String>,
    /// Its provider ID, as it reported it.
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    /// The boot it was refused with last.
    #[serde(rename = "bootID", default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The check that refused it (`name-takeover`, `identity-drift`).
    pub check: String,
    /// When it was first refused, by the clock of the replica that recorded it.
    pub first_refused: Timestamp,
    /// Brought up to date at most every 10 minutes while it keeps retrying.
    pub last_refused: Timestamp,
    /// The Node's resourceVersion when this machine was first refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_resource_version: Option<String>,
    /// The Node's Ready heartbeat then, as its kubelet wrote it: compared for a change,
    /// never with a clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_heartbeat: Option<Timestamp>,
    /// When the node's own machine was seen writing its status after this machine was
    /// first refused: two machines running as one node, proven. From then on this
    /// machine is refused for the name even while the node is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven: Option<Timestamp>,
}

impl RefusedMachine {
    /// Its values as a person compares them with a machine: `system UUID …, machine-id …`.
    pub fn describe(&self) -> String {
        describe_machine(
            self.system_uuid.as_deref(),
            self.machine_id.as_deref(),
            self.provider_id.as_deref(),
        )
    }
}

/// A machine's identifying values, those it has, in one line.
pub(crate) fn describe_machine(
    system_uuid: Option<&str>,
    machine_id: Option<&str>,
    provider_id: Option<&str>,
) -> String {
    [
        ("system UUID", system_uuid),
        ("machine-id", machine_id),
        ("provider ID", provider_id),
    ]
    .into_iter()
    .filter_map(|(label, value)| Some(format!("{label} {}", value?)))
    .collect::<Vec<_>>()
    .join(", ")
}

/// An identity field whose values can be shared by evidence.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ValueField {
    /// `/etc/machine-id` (`status.nodeInfo.machineID`).
    #[serde(rename = "machineID")]
    MachineId,
    /// The SMBIOS UUID (`status.nodeInfo.systemUUID`).
    #[serde(rename = "systemUUID")]
    SystemUuid,
    /// The Node's `spec.providerID`.
    #[serde(rename = "providerID")]
    ProviderId,
    /// An `InternalIP` address.
    InternalIP,
    /// A hostname: a `Hostname` address or the `kubernetes.io/hostname` label.
    Hostname,
}

impl ValueField {
    /// Every field.
    pub const ALL: [ValueField; 5] = [
        ValueField::MachineId,
        ValueField::SystemUuid,
        ValueField::ProviderId,
        ValueField::InternalIP,
        ValueField::Hostname,
    ];

    /// The field's name as the record spells it (`machineID`, `InternalIP`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ValueField::MachineId => "machineID",
            ValueField::SystemUuid => "systemUUID",
            ValueField::ProviderId => "providerID",
            ValueField::InternalIP => "InternalIP",
            ValueField::Hostname => "Hostname",
        }
    }
}

/// Why a value is shared, on evidence a clone cannot produce.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SharingEvidence {
    /// Held by this node and another when nodeguard first saw the cluster: both Nodes
    /// existed before the ledger did.
    FirstSight,
    /// Already shared by evidence when this node came to hold it.
    Inherited,
    /// This node moved to it from a value shared by evidence (a pool's new image): shared
    /// with the nodes that made the same move.
    Moved,
}

/// One of this node's values that is shared by evidence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SharedValue {
    /// The identity field the value is one of.
    pub field: ValueField,
    /// The shared value itself.
    pub value: String,
    /// Why the value is shared.
    pub evidence: SharingEvidence,
    /// For `Moved`: the shared value the node moved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// When the recorder first marked the value shared, by nodeguard's clock.
    pub since: Timestamp,
}

/// A record's `status`: the current boot, counts for `kubectl get`, a conflict once
/// found, and the version of the Node the record reflects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RecordStatus {
    /// The boot the Node reports now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_boot: Option<String>,
    /// Counts for `kubectl get`.
    #[serde(default)]
    pub boots: u32,
    /// Number of kubelet keys bound to the node (`spec.keys`).
    #[serde(default)]
    pub keys: u32,
    /// Number of machines refused for the name (`spec.refusedMachines`).
    #[serde(default)]
    pub refused: u32,
    /// Two machines writing the node, once found; cleared by `nodeguard forget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Conflict>,
    /// The Node's resourceVersion this record reflects: an observation of an older
    /// version of the Node (queued, or from a replica whose watch lags) is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_resource_version: Option<String>,
}

/// Two machines writing one node: the boot seen first is kept, the other refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// The check that found it (`two-kubelets`).
    pub check: String,
    /// The boot seen first: the machine that registered the name, which keeps it.
    pub kept_boot: String,
    /// The other machine's boot, refused from then on.
    pub refused_boot: String,
    /// When the recorder found the conflict, by nodeguard's clock.
    pub detected: Timestamp,
    /// The denial the refused machine is given (see [`conflict_message`]).
    pub message: String,
}
