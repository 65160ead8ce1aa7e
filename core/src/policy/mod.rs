//! Pure: every decision is `decide_*(request, &inventory, &config, now) -> Verdict`.
//! No I/O, no clock, no tokio: a test makes the same call the webhook makes.

pub mod audit;
pub mod checks;
pub mod config;
#[cfg(test)]
mod history;
pub mod machine;
pub mod pods;
pub mod sharing;
pub mod verdict;

use jiff::Timestamp;

pub use config::{CheckId, Config, ConfigError, Mode};
pub use verdict::{Collision, CollisionKind, Effect, Finding, Outcome, Verdict};

use crate::identity::csr::Requester;
use crate::identity::{CsrClaim, CsrError, KubeletSigner, NodeClaim};
use crate::inventory::Inventory;
use machine::Sameness;

/// The admission operation a request carries (`request.operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `CREATE`: a Node registered (a kubelet re-sends it at every restart), or a CSR.
    Create,
    /// `UPDATE`: a write to an existing Node, its status included.
    Update,
    /// `DELETE`: never checked.
    Delete,
    /// `CONNECT`: never checked.
    Connect,
}

impl Operation {
    /// Reads the operation as the API server spells it; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "CREATE" => Some(Operation::Create),
            "UPDATE" => Some(Operation::Update),
            "DELETE" => Some(Operation::Delete),
            "CONNECT" => Some(Operation::Connect),
            _ => None,
        }
    }

    /// As the API server spells it: `CREATE`, `UPDATE`, `DELETE`, `CONNECT`.
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
    /// Only CREATE and UPDATE are checked; any other write passes.
    pub operation: Operation,
    /// The Node after the write (`object`).
    pub object: Option<NodeClaim>,
    /// The Node before the write (`oldObject`, UPDATE only).
    pub old_object: Option<NodeClaim>,
    /// The written Node's labels, read only by an exemption's label selector (the
    /// webhook decodes them only when one is configured).
    pub labels: Vec<(String, String)>,
}

impl NodeReview {
    /// A write without labels to match.
    pub fn new(
        operation: Operation,
        object: Option<NodeClaim>,
        old_object: Option<NodeClaim>,
    ) -> Self {
        Self {
            operation,
            object,
            old_object,
            labels: Vec::new(),
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A CertificateSigningRequest CREATE, as admission sees it.
#[derive(Debug, Clone)]
pub struct CsrReview {
    /// Only a CREATE is checked; any other passes.
    pub operation: Operation,
    /// `None` for signers other than the kubelet's: those pass untouched.
    pub kubelet: Option<KubeletCsr>,
}

/// A CSR under one of the kubelet signers, as admission sees it.
#[derive(Debug, Clone)]
pub struct KubeletCsr {
    /// Whether it asks for client credentials or a serving certificate.
    pub signer: KubeletSigner,
    /// Who asks, relative to the node the request names.
    pub requester: Requester,
    /// What `spec.request` asks for, or why it is no kubelet request (refused by
    /// `csr-format`).
    pub claim: Result<CsrClaim, CsrError>,
}

impl KubeletCsr {
    /// A kubelet CSR as admission sees it: `spec.request`, and who asks
    /// (`spec.username`, `spec.groups`).
    pub fn new<'a>(
        signer: KubeletSigner,
        request: &str,
        username: &str,
        groups: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let claim = CsrClaim::from_request_field(request);
        let requester = match &claim {
            Ok(claim) => Requester::classify(username, groups, &claim.node),
            Err(_) => Requester::Other,
        };
        Self {
            signer,
            requester,
            claim,
        }
    }
}

/// What every node check sees.
#[derive(Debug, Clone)]
pub struct NodeInput<'a> {
    /// CREATE or UPDATE: other operations reach no check.
    pub operation: Operation,
    /// The Node after the write.
    pub object: &'a NodeClaim,
    /// The Node before the write (UPDATE only).
    pub old_object: Option<&'a NodeClaim>,
    /// The Node of this name the inventory holds (`None` for a new name).
    pub registered: Option<&'a NodeClaim>,
    /// The node this write is compared with: the old object on UPDATE, the registered
    /// Node of that name on CREATE.
    pub before: Option<&'a NodeClaim>,
    /// Whether the write comes from the machine `before` describes.
    pub sameness: Option<Sameness>,
    /// What the write is compared with to find the values it introduces: the old object
    /// on UPDATE; on CREATE the registered Node, when the write comes from that same
    /// machine (a kubelet re-sends its CREATE at every restart: values it already held
    /// are not new).
    pub baseline: Option<&'a NodeClaim>,
    /// Who holds which value in the cluster, and the ledger's records.
    pub inventory: &'a Inventory,
    /// The modes, exemptions and shared values in force.
    pub config: &'a Config,
    /// The time of the decision: whether a node is running depends on it.
    pub now: Timestamp,
}

/// What every CSR check sees (only kubelet CSRs that parsed).
#[derive(Debug, Clone, Copy)]
pub struct CsrInput<'a> {
    /// Whether it asks for client credentials or a serving certificate.
    pub signer: KubeletSigner,
    /// Who asks, relative to the node the request names.
    pub requester: Requester,
    /// The node the request names, its key's fingerprint and its SANs.
    pub claim: &'a CsrClaim,
    /// Who holds which value in the cluster, and the ledger's records.
    pub inventory: &'a Inventory,
    /// The modes, exemptions and shared values in force.
    pub config: &'a Config,
    /// The time of the decision: whether a node is running depends on it.
    pub now: Timestamp,
}

/// Decides a Node write.
pub fn decide_node(
    review: &NodeReview,
    inventory: &Inventory,
    config: &Config,
    now: Timestamp,
) -> Verdict {
    let registered = review
        .object
        .as_ref()
        .and_then(|object| inventory.node(&object.name));
    decide_node_against(review, registered, inventory, config, now)
}

/// Decides a Node write as if `registered` were the Node of its name: what the webhook
/// does with the inventory's (`decide_node`), and, with `None`, what it would answer if
/// the name were not registered (a node deleted and joining again, as `audit` asks).
pub fn decide_node_against(
    review: &NodeReview,
    registered: Option<&NodeClaim>,
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
    let old_object = review.old_object.as_ref();
    let before = match review.operation {
        Operation::Update => old_object,
        _ => registered,
    };
    // A label only an admin can set is read on the stored Node (a kubelet can put no
    // such label on a Node it registers); others on the written one.
    let exempt = config.is_exempt(&object.name, |key| {
        if config::is_admin_label(key) {
            before.and_then(|stored| stored.admin_label(key))
        } else {
            review.label(key)
        }
    });
    if exempt {
        return Verdict::exempt();
    }
    let compared =
        before.map(|before| machine::compare_proven(before.ids(), object.ids(), inventory, config));
    // A write proven to come from the registered machine (its real UUID or provider
    // ID) is never refused for a value another node holds: a kubelet restart after an
    // image update, an address handed out twice. Such collisions are warnings.
    let own_machine = compared.as_ref().is_some_and(|(_, proven)| *proven);
    let sameness = compared.map(|(sameness, _)| sameness);
    let baseline = match review.operation {
        Operation::Update => old_object,
        _ => before.filter(|_| sameness.as_ref().is_some_and(Sameness::is_same_machine)),
    };
    let input = NodeInput {
        operation: review.operation,
        object,
        old_object,
        registered,
        before,
        sameness,
        baseline,
        inventory,
        config,
        now,
    };
    let findings = checks::NODE_CHECKS
        .iter()
        .filter(|(id, _)| config.mode(*id) != Mode::Off)
        .flat_map(|(_, check)| check(&input))
        .map(|finding| {
            if own_machine && finding.collision.is_some() {
                finding.softened()
            } else {
                finding
            }
        });
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
        Ok(claim) if config.is_exempt(&claim.node, |_| None) => return Verdict::exempt(),
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
        requester: kubelet.requester,
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
