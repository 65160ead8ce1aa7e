//! Which checks run and how: each check is `enforce` (deny), `warn` (allow with a
//! warning) or `off`. Parsed from flags or a YAML file; pure.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use jiff::SignedDuration;
use serde::Deserialize;

use crate::identity::{Hostname, MachineId, SystemUuid, is_placeholder_ip};

/// How long a Ready node may go without a status write before it no longer counts as
/// running: the kubelet writes its status at least every `nodeStatusReportFrequency`
/// (5 minutes), up to half of it later after a change (7.5 minutes), so 10 minutes also
/// absorbs a few minutes of clock skew between the node and nodeguard.
pub const DEFAULT_HEARTBEAT_TIMEOUT: SignedDuration = SignedDuration::from_mins(10);

pub use crate::check_id::CheckId;

impl CheckId {
    /// Every check enforces by default: each one only fires on a value other nodes hold
    /// without evidence that it is shared, or on another machine claiming a running
    /// node's name, which a healthy cluster never shows.
    pub fn default_mode(self) -> Mode {
        Mode::Enforce
    }
}

impl FromStr for CheckId {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckId::ALL
            .into_iter()
            .find(|id| id.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownCheck(s.to_string()))
    }
}

/// What a check's findings do to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny on what the check finds.
    Enforce,
    /// Let it through with a warning the kubelet logs.
    Warn,
    /// Do not run the check.
    Off,
}

impl Mode {
    /// The milder of two modes: a global `warn` caps every check at `warn`.
    pub fn milder(self, other: Mode) -> Mode {
        let rank = |mode: Mode| match mode {
            Mode::Off => 0,
            Mode::Warn => 1,
            Mode::Enforce => 2,
        };
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }

    /// As the configuration spells it: `enforce`, `warn`, `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        }
    }
}

impl FromStr for Mode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            "off" => Ok(Mode::Off),
            other => Err(ConfigError::UnknownMode(other.to_string())),
        }
    }
}

/// Why a configuration (`--check` settings or the YAML file) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A name no check has.
    #[error("unknown check {0:?}; known checks: {known}", known = known_checks())]
    UnknownCheck(String),
    /// A mode other than `enforce`, `warn` or `off`.
    #[error("unknown mode {0:?}; use enforce, warn or off")]
    UnknownMode(String),
    /// A `--check` setting not of the form `CHECK=MODE`.
    #[error("expected CHECK=MODE (e.g. hostname=warn), got {0:?}")]
    BadSetting(String),
    /// The YAML file does not parse: bad syntax, an unknown field, a wrong type.
    #[error("config file: {0}")]
    File(String),
    /// A `sharedValues.addresses` entry that is neither an IP address nor a CIDR.
    #[error("sharedValues.addresses: {0:?} is neither an IP address nor a CIDR (10.0.0.0/8)")]
    BadAddress(String),
    /// A `heartbeatTimeout` that is not a duration, or is shorter than a minute.
    #[error("heartbeatTimeout: {0:?} is not a duration of at least 1m, such as 10m")]
    BadHeartbeatTimeout(String),
    /// An `exemptions.nodeSelector` that is malformed, or that a kubelet could match by
    /// itself.
    #[error("exemptions.nodeSelector: {0}")]
    BadSelector(String),
}

fn known_checks() -> String {
    CheckId::ALL.map(CheckId::as_str).join(", ")
}

/// The configuration every decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Caps every check's mode: `warn` for a warn-first rollout.
    global_mode: Mode,
    modes: BTreeMap<CheckId, Mode>,
    /// Nodes whose writes (and kubelet CSRs) are never checked.
    exempt_nodes: BTreeSet<String>,
    exempt_selector: Option<LabelSelector>,
    /// Values this fleet shares on purpose (e.g. one machine-id baked into an image),
    /// added to the built-in placeholders.
    shared_machine_ids: HashSet<MachineId>,
    shared_system_uuids: HashSet<SystemUuid>,
    shared_addresses: Vec<IpNet>,
    shared_hostnames: HashSet<Hostname>,
    heartbeat_timeout: SignedDuration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            global_mode: Mode::Enforce,
            modes: CheckId::ALL.map(|id| (id, id.default_mode())).into(),
            exempt_nodes: BTreeSet::new(),
            exempt_selector: None,
            shared_machine_ids: HashSet::new(),
            shared_system_uuids: HashSet::new(),
            shared_addresses: Vec::new(),
            shared_hostnames: HashSet::new(),
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
        }
    }
}

/// The YAML configuration file:
///
/// ```yaml
/// mode: warn               # caps every check: nothing is denied
/// exemptions:
///   nodes: ["lab-0"]
///   nodeSelector:
///     matchLabels: {node-restriction.kubernetes.io/nodeguard-exempt: "true"}
/// checks:
///   hostname: warn
///   provider-id: off
/// sharedValues:
///   machineIDs: ["de1dd9ede40041b7bceb409b0a3b12cb"]
///   systemUUIDs: []
///   addresses: ["100.64.0.0/10", "10.0.0.1"]
///   hostnames: ["node"]
/// heartbeatTimeout: 10m
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    mode: Option<String>,
    exemptions: ExemptionsFile,
    checks: BTreeMap<String, String>,
    shared_values: SharedValuesFile,
    heartbeat_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SharedValuesFile {
    #[serde(rename = "machineIDs")]
    machine_ids: Vec<String>,
    #[serde(rename = "systemUUIDs")]
    system_uuids: Vec<String>,
    addresses: Vec<String>,
    hostnames: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct ExemptionsFile {
    nodes: Vec<String>,
    node_selector: Option<SelectorFile>,
}

/// A Kubernetes `LabelSelector`, as in a webhook's `objectSelector`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct SelectorFile {
    match_labels: BTreeMap<String, String>,
    match_expressions: Vec<ExpressionFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExpressionFile {
    key: String,
    operator: String,
    values: Vec<String>,
}

pub use crate::identity::node::{ADMIN_LABEL_PREFIX, is_admin_label};

/// Which labels a node must carry to be exempt: every requirement holds. At least one
/// must be a label only an admin can set (see [`ADMIN_LABEL_PREFIX`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    fn from_file(file: &SelectorFile) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::BadSelector(message);
        let mut requirements: Vec<Requirement> = file
            .match_labels
            .iter()
            .map(|(key, value)| Requirement::In(key.clone(), BTreeSet::from([value.clone()])))
            .collect();
        for expression in &file.match_expressions {
            let key = expression.key.trim().to_string();
            if key.is_empty() {
                return Err(bad("a matchExpression has no key".into()));
            }
            let values: BTreeSet<String> = expression.values.iter().cloned().collect();
            let requirement = match expression.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(bad(format!(
                        "{key}: operator {} needs at least one value",
                        expression.operator
                    )));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(bad(format!(
                        "{key}: operator {} takes no values",
                        expression.operator
                    )));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(bad(format!(
                        "{key}: unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
                    )));
                }
            };
            requirements.push(requirement);
        }
        if requirements.is_empty() {
            return Err(bad(
                "an empty selector would exempt every node; to stop checking, set mode: off".into(),
            ));
        }
        let selector = Self { requirements };
        if !selector.needs_an_admin() {
            return Err(bad(format!(
                "a kubelet can satisfy {:?} by itself: it sets its own Node's labels \
                 (--node-labels), all but those under {ADMIN_LABEL_PREFIX}, which only an \
                 admin can set; select on one of those (In or Exists), e.g. matchLabels: \
                 {{{ADMIN_LABEL_PREFIX}nodeguard-exempt: \"true\"}}, set with kubectl label \
                 node NAME {ADMIN_LABEL_PREFIX}nodeguard-exempt=true",
                selector.describe()
            )));
        }
        Ok(selector)
    }

    /// Whether only a node an admin labelled can match: one requirement asks for a label
    /// under [`ADMIN_LABEL_PREFIX`], which NodeRestriction forbids a kubelet to set,
    /// change or remove on its own Node. Any other label a clone can put on itself.
    fn needs_an_admin(&self) -> bool {
        self.requirements
            .iter()
            .any(|requirement| match requirement {
                Requirement::In(key, _) | Requirement::Exists(key) => is_admin_label(key),
                Requirement::NotIn(..) | Requirement::DoesNotExist(_) => false,
            })
    }

    /// Whether a node with these labels matches.
    pub fn matches<'a>(&self, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::In(key, values) => labels(key).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(key, values) => labels(key).is_none_or(|v| !values.contains(v)),
                Requirement::Exists(key) => labels(key).is_some(),
                Requirement::DoesNotExist(key) => labels(key).is_none(),
            })
    }

    /// As `kubectl get -l` writes it.
    pub fn describe(&self) -> String {
        let set = |values: &BTreeSet<String>| {
            values
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        self.requirements
            .iter()
            .map(|requirement| match requirement {
                Requirement::In(key, values) if values.len() == 1 => {
                    format!("{key}={}", set(values))
                }
                Requirement::In(key, values) => format!("{key} in ({})", set(values)),
                Requirement::NotIn(key, values) => format!("{key} notin ({})", set(values)),
                Requirement::Exists(key) => key.clone(),
                Requirement::DoesNotExist(key) => format!("!{key}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An IP address (a /32 or /128) or a CIDR.
fn parse_address_or_cidr(text: &str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| ConfigError::BadAddress(text.to_string()))
}

/// A duration such as `10m`, `90s` or `1h`, at least a minute: shorter than the
/// kubelet's own status period, every node would look stopped between two writes.
pub fn parse_heartbeat_timeout(text: &str) -> Result<SignedDuration, ConfigError> {
    let bad = || ConfigError::BadHeartbeatTimeout(text.to_string());
    let duration: SignedDuration = text.trim().parse().map_err(|_| bad())?;
    if duration < SignedDuration::from_mins(1) {
        return Err(bad());
    }
    Ok(duration)
}

impl Config {
    /// The check's mode, capped by the global mode.
    pub fn mode(&self, check: CheckId) -> Mode {
        self.check_mode(check).milder(self.global_mode)
    }

    /// The check's own mode, before the global cap.
    pub fn check_mode(&self, check: CheckId) -> Mode {
        self.modes
            .get(&check)
            .copied()
            .unwrap_or(check.default_mode())
    }

    /// The cap on every check's mode (`mode` in the file).
    pub fn global_mode(&self) -> Mode {
        self.global_mode
    }

    /// Caps every check's mode: `warn` for a warn-first rollout.
    pub fn set_global_mode(&mut self, mode: Mode) {
        self.global_mode = mode;
    }

    /// Whether writes for this node are exempt from every check: by name, or by the
    /// labels the written Node carries (`labels` looks one up).
    pub fn is_exempt<'a>(&self, node: &str, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.exempt_nodes.contains(node)
            || self
                .exempt_selector
                .as_ref()
                .is_some_and(|selector| selector.matches(labels))
    }

    /// Whether a label selector exempts nodes (so the webhook reads the labels).
    pub fn exempts_by_label(&self) -> bool {
        self.exempt_selector.is_some()
    }

    /// The nodes exempt by name (`exemptions.nodes`).
    pub fn exempt_nodes(&self) -> impl Iterator<Item = &str> {
        self.exempt_nodes.iter().map(String::as_str)
    }

    /// The label selector that exempts nodes (`exemptions.nodeSelector`), if any.
    pub fn exempt_selector(&self) -> Option<&LabelSelector> {
        self.exempt_selector.as_ref()
    }

    /// Sets one check's own mode, still capped by the global mode.
    pub fn set_mode(&mut self, check: CheckId, mode: Mode) {
        self.modes.insert(check, mode);
    }

    /// Applies one `CHECK=MODE` setting, as given on the command line.
    pub fn apply_setting(&mut self, setting: &str) -> Result<(), ConfigError> {
        let (check, mode) = setting
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSetting(setting.to_string()))?;
        self.set_mode(check.trim().parse()?, mode.trim().parse()?);
        Ok(())
    }

    /// Reads the YAML configuration file's text on top of the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::File(e.to_string()))?;
        let mut config = Config::default();
        if let Some(mode) = &file.mode {
            config.global_mode = mode.parse()?;
        }
        config.exempt_nodes = file
            .exemptions
            .nodes
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        config.exempt_selector = file
            .exemptions
            .node_selector
            .as_ref()
            .map(LabelSelector::from_file)
            .transpose()?;
        for (check, mode) in &file.checks {
            config.set_mode(check.parse()?, mode.parse()?);
        }
        config.shared_machine_ids = file
            .shared_values
            .machine_ids
            .iter()
            .filter_map(|v| MachineId::parse(v))
            .collect();
        config.shared_system_uuids = file
            .shared_values
            .system_uuids
            .iter()
            .filter_map(|v| SystemUuid::parse(v))
            .collect();
        config.shared_addresses = file
            .shared_values
            .addresses
            .iter()
            .map(|v| parse_address_or_cidr(v))
            .collect::<Result<_, _>>()?;
        config.shared_hostnames = file
            .shared_values
            .hostnames
            .iter()
            .filter_map(|v| Hostname::parse(v))
            .collect();
        if let Some(timeout) = &file.heartbeat_timeout {
            config.heartbeat_timeout = parse_heartbeat_timeout(timeout)?;
        }
        Ok(config)
    }

    /// How long a Ready node may go without a status write and still count as running.
    pub fn heartbeat_timeout(&self) -> SignedDuration {
        self.heartbeat_timeout
    }

    /// Replaces the heartbeat timeout: `--heartbeat-timeout` overrides the file's.
    pub fn set_heartbeat_timeout(&mut self, timeout: SignedDuration) {
        self.heartbeat_timeout = timeout;
    }

    /// An address that proves nothing: loopback, link-local and the like, or inside a
    /// range declared shared (behind one NAT, an anycast range).
    pub fn address_is_shared(&self, ip: &IpAddr) -> bool {
        is_placeholder_ip(ip) || self.shared_addresses.iter().any(|net| net.contains(ip))
    }

    /// A hostname that proves nothing: built-in placeholder (`localhost`) or declared
    /// shared.
    pub fn hostname_is_shared(&self, value: &Hostname) -> bool {
        value.is_placeholder() || self.shared_hostnames.contains(value)
    }

    /// A machine-id that proves nothing: built-in placeholder or declared shared.
    pub fn machine_id_is_shared(&self, value: &MachineId) -> bool {
        value.is_placeholder() || self.shared_machine_ids.contains(value)
    }

    /// A system UUID that proves nothing: built-in placeholder or declared shared.
    pub fn system_uuid_is_shared(&self, value: &SystemUuid) -> bool {
        value.is_placeholder() || self.shared_system_uuids.contains(value)
    }

    /// Every check's mode in force, for the startup log and `config check`.
    pub fn describe(&self) -> String {
        CheckId::ALL
            .map(|id| format!("{}={}", id, self.mode(id).as_str()))
            .join(" ")
    }

    /// Everything in force, one `key: value` line each, as `nodeguard config check`
    /// prints it.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!("mode: {}", self.global_mode.as_str())];
        for id in CheckId::ALL {
            let (own, effective) = (self.check_mode(id), self.mode(id));
            lines.push(if own == effective {
                format!("check {id}: {}", effective.as_str())
            } else {
                format!(
                    "check {id}: {} (set to {}, capped by mode: {})",
                    effective.as_str(),
                    own.as_str(),
                    self.global_mode.as_str()
                )
            });
        }
        let list = |values: Vec<String>| {
            if values.is_empty() {
                "none".to_string()
            } else {
                values.join(", ")
            }
        };
        lines.push(format!(
            "exempt nodes: {}",
            list(self.exempt_nodes.iter().cloned().collect())
        ));
        lines.push(format!(
            "exempt by labels: {}",
            self.exempt_selector
                .as_ref()
                .map_or_else(|| "none".to_string(), LabelSelector::describe)
        ));
        let sorted = |values: Vec<String>| {
            let mut values = values;
            values.sort();
            list(values)
        };
        lines.push(format!(
            "shared machine-ids: {}",
            sorted(
                self.shared_machine_ids
                    .iter()
                    .map(|v| v.as_str().to_string())
                    .collect()
            )
        ));
        lines.push(format!(
            "shared system UUIDs: {}",
            sorted(
                self.shared_system_uuids
                    .iter()
                    .map(|v| v.as_str().to_string())
                    .collect()
            )
        ));
        lines.push(format!(
            "shared addresses: {}",
            list(
                self.shared_addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            )
        ));
        lines.push(format!(
            "shared hostnames: {}",
            sorted(
                self.shared_hostnames
                    .iter()
                    .map(|v| v.as_str().to_string())
                    .collect()
            )
        ));
        lines.push(format!(
            "heartbeat timeout: {}",
            self.describe_heartbeat_timeout()
        ));
        lines
    }

    /// The heartbeat timeout as a person reads it: `10m`, `90s`.
    pub fn describe_heartbeat_timeout(&self) -> String {
        describe_duration(self.heartbeat_timeout)
    }
}

/// `10m`, `1h30m`, `90s`: the shortest exact form.
pub fn describe_duration(duration: SignedDuration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, rest) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if rest > 0 || text.is_empty() {
        text.push_str(&format!("{rest}s"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_enforces_by_default_and_ids_round_trip() {
        let config = Config::default();
        for id in CheckId::ALL {
            assert_eq!(config.mode(id), Mode::Enforce);
            assert_eq!(id.as_str().parse::<CheckId>(), Ok(id));
        }
    }

    #[test]
    fn settings_from_the_command_line_apply_and_bad_ones_say_why() {
        let mut config = Config::default();
        config.apply_setting("hostname=warn").unwrap();
        config.apply_setting(" provider-id = off ").unwrap();
        assert_eq!(config.mode(CheckId::Hostname), Mode::Warn);
        assert_eq!(config.mode(CheckId::ProviderId), Mode::Off);
        assert_eq!(
            config.apply_setting("hostname").unwrap_err().to_string(),
            "expected CHECK=MODE (e.g. hostname=warn), got \"hostname\""
        );
        assert_eq!(
            config
                .apply_setting("hostname=block")
                .unwrap_err()
                .to_string(),
            "unknown mode \"block\"; use enforce, warn or off"
        );
        assert_eq!(
            config.apply_setting("mac=warn").unwrap_err().to_string(),
            "unknown check \"mac\"; known checks: name-takeover, identity-drift, two-kubelets, machine-id, \
             system-uuid, provider-id, hostname, internal-ip, csr-format, key-fingerprint, serving-san"
        );
    }

    #[test]
    fn the_yaml_file_sets_modes_and_shared_values_and_rejects_typos() {
        let config = Config::from_yaml(
            "checks:\n  hostname: warn\n  internal-ip: off\nsharedValues:\n  machineIDs: [\"A38F8EB989A4463C8C194D086528363D\"]\n  systemUUIDs: [\"1ad82a4c-2a18-11b2-a85c-82c3099c6263\"]\n",
        )
        .unwrap();
        assert_eq!(config.mode(CheckId::Hostname), Mode::Warn);
        assert_eq!(config.mode(CheckId::InternalIp), Mode::Off);
        assert_eq!(config.mode(CheckId::MachineId), Mode::Enforce);
        assert!(
            config.machine_id_is_shared(
                &MachineId::parse("a38f8eb989a4463c8c194d086528363d").unwrap()
            )
        );
        assert!(config.system_uuid_is_shared(
            &SystemUuid::parse("1AD82A4C-2A18-11B2-A85C-82C3099C6263").unwrap()
        ));
        assert!(
            Config::from_yaml("check:\n  hostname: warn\n").is_err(),
            "a misspelt key is an error"
        );
        assert!(matches!(
            Config::from_yaml("checks:\n  hostnames: warn\n"),
            Err(ConfigError::UnknownCheck(_))
        ));
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
    }

    #[test]
    fn the_heartbeat_timeout_defaults_to_ten_minutes_and_refuses_less_than_one() {
        assert_eq!(
            Config::default().heartbeat_timeout(),
            SignedDuration::from_mins(10)
        );
        let config = Config::from_yaml("heartbeatTimeout: 1h30m\n").unwrap();
        assert_eq!(config.heartbeat_timeout(), SignedDuration::from_mins(90));
        assert_eq!(config.describe_heartbeat_timeout(), "1h30m");
        assert_eq!(
            Config::from_yaml("heartbeatTimeout: 30s\n").unwrap_err(),
            ConfigError::BadHeartbeatTimeout("30s".into())
        );
    }

    #[test]
    fn a_global_mode_caps_every_check_and_never_raises_one() {
        let config =
            Config::from_yaml("mode: warn\nchecks:\n  hostname: off\n  internal-ip: enforce\n")
                .unwrap();
        assert_eq!(config.mode(CheckId::MachineId), Mode::Warn);
        assert_eq!(config.mode(CheckId::InternalIp), Mode::Warn);
        assert_eq!(config.check_mode(CheckId::InternalIp), Mode::Enforce);
        assert_eq!(config.mode(CheckId::Hostname), Mode::Off);
        let off = Config::from_yaml("mode: off\n").unwrap();
        assert!(CheckId::ALL.iter().all(|id| off.mode(*id) == Mode::Off));
        assert_eq!(
            Config::from_yaml("mode: audit\n").unwrap_err(),
            ConfigError::UnknownMode("audit".into())
        );
        assert!(config.summary().contains(
            &"check internal-ip: warn (set to enforce, capped by mode: warn)".to_string()
        ));
    }

    #[test]
    fn exemptions_match_names_and_label_selectors_as_kubernetes_does() {
        let config = Config::from_yaml(
            "exemptions:\n  nodes: [lab-0]\n  nodeSelector:\n    matchLabels: {node-restriction.kubernetes.io/pool: kiosk}\n    matchExpressions:\n      - {key: tier, operator: NotIn, values: [prod]}\n      - {key: nodeguard.io/checked, operator: DoesNotExist}\n",
        )
        .unwrap();
        let labels = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        };
        const POOL: &str = "node-restriction.kubernetes.io/pool";
        assert!(config.is_exempt("lab-0", |_| None));
        assert!(config.is_exempt("kiosk-7", labels(&[(POOL, "kiosk")])));
        assert!(config.is_exempt("kiosk-7", labels(&[(POOL, "kiosk"), ("tier", "dev")])));
        assert!(!config.is_exempt("kiosk-8", labels(&[(POOL, "kiosk"), ("tier", "prod")])));
        assert!(!config.is_exempt(
            "kiosk-9",
            labels(&[(POOL, "kiosk"), ("nodeguard.io/checked", "")])
        ));
        assert!(!config.is_exempt("worker-1", labels(&[(POOL, "general")])));
        assert!(!config.is_exempt("worker-1", labels(&[("pool", "kiosk")])));
        assert_eq!(
            config.exempt_selector().unwrap().describe(),
            "node-restriction.kubernetes.io/pool=kiosk,tier notin (prod),!nodeguard.io/checked"
        );
        for (yaml, error) in [
            (
                "exemptions:\n  nodeSelector: {}\n",
                "exemptions.nodeSelector: an empty selector would exempt every node; to stop checking, set mode: off",
            ),
            (
                "exemptions:\n  nodeSelector:\n    matchExpressions: [{key: a, operator: Equals, values: [b]}]\n",
                "exemptions.nodeSelector: a: unknown operator \"Equals\"; use In, NotIn, Exists or DoesNotExist",
            ),
            (
                "exemptions:\n  nodeSelector:\n    matchExpressions: [{key: a, operator: In}]\n",
                "exemptions.nodeSelector: a: operator In needs at least one value",
            ),
            // A clone's kubelet puts any of these on its own Node (--node-labels).
            (
                "exemptions:\n  nodeSelector:\n    matchLabels: {nodeguard.io/exempt: \"true\"}\n",
                "exemptions.nodeSelector: a kubelet can satisfy \"nodeguard.io/exempt=true\" by itself: it sets its own Node's labels (--node-labels), all but those under node-restriction.kubernetes.io/, which only an admin can set; select on one of those (In or Exists), e.g. matchLabels: {node-restriction.kubernetes.io/nodeguard-exempt: \"true\"}, set with kubectl label node NAME node-restriction.kubernetes.io/nodeguard-exempt=true",
            ),
            (
                "exemptions:\n  nodeSelector:\n    matchExpressions: [{key: node-restriction.kubernetes.io/checked, operator: DoesNotExist}]\n",
                "exemptions.nodeSelector: a kubelet can satisfy \"!node-restriction.kubernetes.io/checked\" by itself: it sets its own Node's labels (--node-labels), all but those under node-restriction.kubernetes.io/, which only an admin can set; select on one of those (In or Exists), e.g. matchLabels: {node-restriction.kubernetes.io/nodeguard-exempt: \"true\"}, set with kubectl label node NAME node-restriction.kubernetes.io/nodeguard-exempt=true",
            ),
        ] {
            assert_eq!(Config::from_yaml(yaml).unwrap_err().to_string(), error);
        }
        assert!(
            Config::from_yaml("exemptions:\n  node: [a]\n").is_err(),
            "a typo is an error"
        );
    }
}
