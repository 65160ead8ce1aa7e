//! Pure: every decision is `decide_*(request, &inventory, &config, now) -> Verdict`.
//! No I/O, no clock, no tokio: a test makes the same call the webhook makes.

pub mod checks;
pub mod config;
pub mod verdict;

use jiff::Timestamp;

pub use config::{CheckId, Config, ConfigError, Mode};
pub use verdict::{Effect, Finding, Outcome, Verdict};

use crate::identity::{CsrClaim, CsrError, KubeletSigner, NodeClaim};
use crate::inventory::Inventory;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "CREATE" => Some(Operation::Create),
            "UPDATE" => Some(Operation::Update),
            "DELETE" => Some(Operation::Delete),
            "CONNECT" => Some(Operation::Connect),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

/// A write to a Node (main resource or `status`), as admission sees it.
#[derive(Debug, Clone)]
pub struct NodeReview {
    pub operation: Operation,
    /// The Node after the write (`object`).
    pub object: Option<NodeClaim>,
    /// The Node before the write (`oldObject`, UPDATE only).
    pub old_object: Option<NodeClaim>,
}

/// A CertificateSigningRequest CREATE, as admission sees it.
#[derive(Debug, Clone)]
pub struct CsrReview {
    pub operation: Operation,
    /// `None` for signers other than the kubelet's: those pass untouched.
    pub kubelet: Option<KubeletCsr>,
}

#[derive(Debug, Clone)]
pub struct KubeletCsr {
    pub signer: KubeletSigner,
    /// Requested with a bootstrap token (`system:bootstrap:*`, `system:bootstrappers`),
    /// i.e. by a machine joining rather than a node renewing.
    pub bootstrap: bool,
    pub claim: Result<CsrClaim, CsrError>,
}

/// What every node check sees.
#[derive(Debug, Clone, Copy)]
pub struct NodeInput<'a> {
    pub operation: Operation,
    pub object: &'a NodeClaim,
    pub old_object: Option<&'a NodeClaim>,
    pub inventory: &'a Inventory,
    pub config: &'a Config,
    pub now: Timestamp,
}

/// What every CSR check sees (only kubelet CSRs that parsed).
#[derive(Debug, Clone, Copy)]
pub struct CsrInput<'a> {
    pub signer: KubeletSigner,
    pub bootstrap: bool,
    pub claim: &'a CsrClaim,
    pub inventory: &'a Inventory,
    pub config: &'a Config,
    pub now: Timestamp,
}

/// Decides a Node write.
pub fn decide_node(
    review: &NodeReview,
    inventory: &Inventory,
    config: &Config,
    now: Timestamp,
) -> Verdict {
    let Some(object) = review.object.as_ref() else {
        return Verdict::default();
    };
    if !matches!(review.operation, Operation::Create | Operation::Update) {
        return Verdict::default();
    }
    let input = NodeInput {
        operation: review.operation,
        object,
        old_object: review.old_object.as_ref(),
        inventory,
        config,
        now,
    };
    let findings = checks::NODE_CHECKS
        .iter()
        .filter(|(id, _)| config.mode(*id) != Mode::Off)
        .flat_map(|(_, check)| check(&input));
    Verdict::from_findings(findings, config)
}

/// Decides a CertificateSigningRequest CREATE.
pub fn decide_csr(
    review: &CsrReview,
    inventory: &Inventory,
    config: &Config,
    now: Timestamp,
) -> Verdict {
    let Some(kubelet) = review.kubelet.as_ref() else {
        return Verdict::default();
    };
    if review.operation != Operation::Create {
        return Verdict::default();
    }
    let claim = match &kubelet.claim {
        Ok(claim) => claim,
        Err(error) => {
            return Verdict::from_findings(
                [checks::csr_format::check(kubelet.signer, error)],
                config,
            );
        }
    };
    let input = CsrInput {
        signer: kubelet.signer,
        bootstrap: kubelet.bootstrap,
        claim,
        inventory,
        config,
        now,
    };
    let findings = checks::CSR_CHECKS
        .iter()
        .filter(|(id, _)| config.mode(*id) != Mode::Off)
        .flat_map(|(_, check)| check(&input));
    Verdict::from_findings(findings, config)
}
