//! What the checks found, and the admission answer it adds up to.

use super::config::{CheckId, Config, Mode};
use crate::ledger::RefusalObservation;

/// Longest warning the API server passes on intact.
pub const MAX_WARNING_CHARS: usize = 120;
/// The warning of a write let through unchecked.
pub const UNCHECKED_WARNING: &str =
    "nodeguard: not checked: this replica's view of the cluster is not current";

/// Longest denial message: one line a person reads in the kubelet log.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// What a finding does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Refuse the write.
    Deny,
    /// Let it through with a warning the kubelet logs.
    Warn,
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The check that found it: its mode applies.
    pub check: CheckId,
    /// Whether it refuses the request or only warns.
    pub effect: Effect,
    /// The full one-line explanation with its remedy (used for a denial).
    pub message: String,
    /// The same in at most 120 characters (used for a warning).
    pub warning: String,
    /// For a value other nodes hold: which value, and who holds it.
    pub collision: Option<Collision>,
    /// A machine refused for a node's name while another machine runs it: what the
    /// ledger records of it, if the finding denies (never for a dry run).
    pub refusal: Option<Box<RefusalObservation>>,
}

/// What kind of sharing a value shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CollisionKind {
    /// Other nodes hold it with no evidence that it is shared: the signature of a clone.
    Clone,
    /// Shared on evidence a clone cannot produce (see `policy::sharing`): not proof of a
    /// clone.
    Shared,
    /// An address whose only other holder no kubelet is running: a lease handed out again.
    Reused,
}

impl CollisionKind {
    /// As the audit reports and counts it: `clone`, `shared`, `reused`.
    pub fn as_str(self) -> &'static str {
        match self {
            CollisionKind::Clone => "clone",
            CollisionKind::Shared => "shared",
            CollisionKind::Reused => "reused",
        }
    }
}

/// A value the written object brings that other nodes already hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The field as messages name it: `machine-id`, `system UUID`, `InternalIP`.
    pub field: &'static str,
    /// The value, in full.
    pub value: String,
    /// Why other nodes hold it: a clone, sharing on evidence, or an address reused.
    pub kind: CollisionKind,
    /// How many other nodes hold it, and up to three of them by name.
    pub holder_count: usize,
    /// Up to three of the other holders, in name order.
    pub holders: Vec<String>,
    /// Why it is taken as shared, for a `Shared` collision: `since first seen` (shared
    /// when nodeguard first saw the cluster, or inherited since), `moved together`,
    /// `same host kernel`.
    pub shared_by: Option<&'static str>,
}

impl Finding {
    /// A finding that refuses the request in `enforce` mode: `message` for the denial,
    /// `warning` when its mode is `warn`.
    pub fn deny(check: CheckId, message: String, warning: String) -> Self {
        Self::new(check, Effect::Deny, message, warning)
    }

    /// A finding that never denies, whatever the mode: evidence too weak to refuse on.
    pub fn warn(check: CheckId, warning: String) -> Self {
        Self::new(check, Effect::Warn, warning.clone(), warning)
    }

    fn new(check: CheckId, effect: Effect, message: String, warning: String) -> Self {
        Self {
            check,
            effect,
            message: clip(&message, MAX_MESSAGE_CHARS),
            warning: clip(&warning, MAX_WARNING_CHARS),
            collision: None,
            refusal: None,
        }
    }

    /// Attaches the collision it found: which value, and who holds it.
    #[must_use]
    pub fn with_collision(mut self, collision: Collision) -> Self {
        self.collision = Some(collision);
        self
    }

    /// Attaches the refused machine, for the ledger to record.
    #[must_use]
    pub fn with_refusal(mut self, refusal: RefusalObservation) -> Self {
        self.refusal = Some(Box::new(refusal));
        self
    }

    /// The same finding as a warning, whatever the mode: for a value collision on a
    /// write proven to come from the node's own machine.
    #[must_use]
    pub fn softened(mut self) -> Self {
        self.effect = Effect::Warn;
        self.message.clone_from(&self.warning);
        self
    }
}

/// What a verdict adds up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed: nothing found.
    Allowed,
    /// Allowed with warnings.
    Warned,
    /// Refused: at least one finding denies.
    Denied,
    /// Allowed unchecked: the node is exempt by configuration.
    Exempt,
    /// Allowed unchecked: the inventory is not current, so nothing can be decided on it.
    Unchecked,
}

impl Outcome {
    /// As metrics and the audit name it: `allowed`, `warned`, `denied`, `exempt`, `unchecked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Exempt => "exempt",
            Outcome::Unchecked => "unchecked",
            Outcome::Allowed => "allowed",
            Outcome::Warned => "warned",
            Outcome::Denied => "denied",
        }
    }
}

/// The decision on one admission request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Findings after each check's mode was applied, in check order.
    pub findings: Vec<Finding>,
    /// The node is exempt: nothing was checked.
    pub exempt: bool,
    /// Nothing was checked because the inventory is not current: why.
    pub unchecked: Option<String>,
}

impl Verdict {
    /// Applies each check's mode: `off` drops its findings, `warn` turns its denials
    /// into warnings.
    pub fn from_findings(findings: impl IntoIterator<Item = Finding>, config: &Config) -> Self {
        let findings = findings
            .into_iter()
            .filter_map(|mut finding| match config.mode(finding.check) {
                Mode::Off => None,
                Mode::Warn => {
                    finding.effect = Effect::Warn;
                    Some(finding)
                }
                Mode::Enforce => Some(finding),
            })
            .collect();
        Self {
            findings,
            exempt: false,
            unchecked: None,
        }
    }

    /// The answer for an exempt node: allowed, nothing checked.
    pub fn exempt() -> Self {
        Self {
            exempt: true,
            ..Self::default()
        }
    }

    /// The answer while the inventory is not current: allowed, nothing checked (with
    /// `failurePolicy: Ignore` the write would pass anyway; refusing on a stale view could
    /// refuse a healthy node).
    pub fn unchecked(reason: String) -> Self {
        Self {
            unchecked: Some(reason),
            ..Self::default()
        }
    }

    /// Whether no finding denies (an exempt or unchecked request is allowed).
    pub fn allowed(&self) -> bool {
        !self.findings.iter().any(|f| f.effect == Effect::Deny)
    }

    /// What the verdict adds up to: unchecked, else exempt, else what the findings say.
    pub fn outcome(&self) -> Outcome {
        if self.unchecked.is_some() {
            Outcome::Unchecked
        } else if self.exempt {
            Outcome::Exempt
        } else if !self.allowed() {
            Outcome::Denied
        } else if self.findings.is_empty() {
            Outcome::Allowed
        } else {
            Outcome::Warned
        }
    }

    /// The check that decided: the first denial, else the first warning.
    pub fn deciding_check(&self) -> Option<CheckId> {
        self.denials()
            .next()
            .or_else(|| self.findings.first())
            .map(|f| f.check)
    }

    fn denials(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.effect == Effect::Deny)
    }

    /// The denial message: the first denial's, naming the other checks that also denied.
    pub fn denial_message(&self) -> Option<String> {
        let mut denials = self.denials();
        let first = denials.next()?;
        let mut others: Vec<&str> = denials.map(|f| f.check.as_str()).collect();
        others.dedup();
        if others.is_empty() {
            return Some(first.message.clone());
        }
        let also = format!(" (also failed: {})", others.join(", "));
        let room = MAX_MESSAGE_CHARS.saturating_sub(also.chars().count());
        Some(format!("{}{also}", clip(&first.message, room)))
    }

    /// The machines this verdict refuses for a node's name, to be recorded in the ledger.
    pub fn refusals(&self) -> impl Iterator<Item = &RefusalObservation> {
        self.denials().filter_map(|f| f.refusal.as_deref())
    }

    /// Warnings to return with an allowed request (a denied one carries its message).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = Vec::new();
        if self.unchecked.is_some() {
            warnings.push(UNCHECKED_WARNING.to_string());
        }
        for finding in self.findings.iter().filter(|f| f.effect == Effect::Warn) {
            if !warnings.contains(&finding.warning) {
                warnings.push(finding.warning.clone());
            }
        }
        warnings
    }
}

pub use crate::identity::clip;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_char_boundaries() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(200);
        let cut = clip(&long, MAX_WARNING_CHARS);
        assert_eq!(cut.chars().count(), MAX_WARNING_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(clip("two\nlines", 20), "two lines");
    }

    #[test]
    fn modes_turn_denials_into_warnings_or_drop_them() {
        let finding = || Finding::deny(CheckId::Hostname, "m".into(), "w".into());
        let mut config = Config::default();
        assert_eq!(
            Verdict::from_findings([finding()], &config).outcome(),
            Outcome::Denied
        );
        config.set_mode(CheckId::Hostname, Mode::Warn);
        let warned = Verdict::from_findings([finding()], &config);
        assert_eq!(warned.outcome(), Outcome::Warned);
        assert_eq!(warned.warnings(), vec!["w".to_string()]);
        config.set_mode(CheckId::Hostname, Mode::Off);
        assert_eq!(
            Verdict::from_findings([finding()], &config).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_denial_names_the_other_checks_that_failed_and_stays_within_512_chars() {
        let verdict = Verdict::from_findings(
            [
                Finding::deny(CheckId::MachineId, "x".repeat(600), "w".into()),
                Finding::deny(CheckId::InternalIp, "ip".into(), "w2".into()),
            ],
            &Config::default(),
        );
        let message = verdict.denial_message().unwrap();
        assert!(
            message.ends_with("… (also failed: internal-ip)"),
            "{message}"
        );
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(verdict.deciding_check(), Some(CheckId::MachineId));
    }
}
