//! The cluster the audit reads: the JSON of `kubectl get nodes,csr,nodeidentities -o
//! json` (a `List`, or any list of those kinds), or the same three lists read live through
//! the API. Both go through one parser, which builds the inventory the way the watchers
//! do: a Node's identity claim, an issued kubelet CSR's key binding, a ledger record.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use crate::identity::csr::CsrDoc;
use crate::identity::node::NodeDoc;
use crate::identity::{KeyBinding, KubeletSigner, NodeClaim};
use crate::inventory::Inventory;
use crate::ledger::NodeIdentity;
use crate::policy::sharing;
use crate::policy::{Config, CsrReview, KubeletCsr, Operation};

/// What was read, ready to audit.
#[derive(Debug, Default)]
pub struct Cluster {
    pub inventory: Inventory,
    /// Every node's labels, for exemptions by label.
    pub labels: HashMap<String, Vec<(String, String)>>,
    pub counts: Counts,
    /// The newest heartbeat of any node: about when a dump was taken.
    pub latest_heartbeat: Option<Timestamp>,
    /// Whether NodeIdentities were read (the CRD may not be installed yet).
    pub ledger_read: bool,
    /// Kubelet CSRs neither approved nor denied yet, as the webhook reviews them.
    pub pending: Vec<(String, CsrReview)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub nodes: usize,
    pub csrs: usize,
    /// Issued kubelet CSRs: key bindings.
    pub bound_csrs: usize,
    pub identities: usize,
    /// Items of other kinds, skipped.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("expected a list (kubectl get nodes,csr,nodeidentities -o json), got kind {0:?}")]
    NotAList(String),
    #[error("item {index} ({kind} {name:?}): {detail}")]
    BadItem {
        index: usize,
        kind: String,
        name: String,
        detail: String,
    },
}

#[derive(Deserialize)]
struct ListDoc {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    items: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<ListMetaDoc>,
}

#[derive(Deserialize)]
struct ListMetaDoc {
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

impl Cluster {
    /// Reads one list document (a `List` of mixed kinds, or a `NodeList` and the like);
    /// returns its continue token, if the server has more.
    pub fn add_list(&mut self, text: &[u8]) -> Result<Option<String>, LoadError> {
        let list: ListDoc = serde_json::from_slice(text).map_err(LoadError::NotJson)?;
        let Some(items) = list.items else {
            return Err(LoadError::NotAList(list.kind.unwrap_or_default()));
        };
        // The API server's typed lists (a NodeList) leave out each item's kind.
        let item_kind = list
            .kind
            .as_deref()
            .and_then(|kind| kind.strip_suffix("List"))
            .filter(|kind| !kind.is_empty())
            .unwrap_or_default();
        for (index, item) in items.iter().enumerate() {
            self.add_item(index, item, item_kind)?;
        }
        Ok(list.metadata.and_then(|m| m.next).filter(|t| !t.is_empty()))
    }

    fn add_item(&mut self, index: usize, item: &Value, list_kind: &str) -> Result<(), LoadError> {
        let kind = item
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or(list_kind);
        let bad = |detail: String| LoadError::BadItem {
            index,
            kind: kind.to_string(),
            name: item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            detail,
        };
        match kind {
            "Node" => {
                let doc = NodeDoc::deserialize(item).map_err(|e| bad(e.to_string()))?;
                let Some(claim) = NodeClaim::from_doc(&doc) else {
                    return Err(bad("no metadata.name".into()));
                };
                let labels = doc
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref())
                    .map(|l| {
                        l.pairs
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(heartbeat) = claim.readiness.heartbeat {
                    self.latest_heartbeat = Some(
                        self.latest_heartbeat
                            .map_or(heartbeat, |t| t.max(heartbeat)),
                    );
                }
                self.labels.insert(claim.name.to_string(), labels);
                self.inventory.apply_node_as_written(claim);
                self.counts.nodes += 1;
            }
            "CertificateSigningRequest" => {
                let doc = CsrDoc::deserialize(item).map_err(|e| bad(e.to_string()))?;
                let name = doc
                    .metadata
                    .as_ref()
                    .and_then(|m| m.name.as_deref())
                    .unwrap_or_default()
                    .to_string();
                let binding = KeyBinding::from_doc(&doc);
                if let Some(review) = pending_review(&doc) {
                    self.pending.push((name.clone(), review));
                }
                self.counts.csrs += 1;
                self.counts.bound_csrs += usize::from(binding.is_some());
                self.inventory.apply_csr(&name, binding);
            }
            "NodeIdentity" => {
                let record = NodeIdentity::deserialize(item).map_err(|e| bad(e.to_string()))?;
                if let Some(entry) = record.entry() {
                    self.inventory.apply_identity(entry);
                }
                self.counts.identities += 1;
                self.ledger_read = true;
            }
            _ => self.counts.skipped += 1,
        }
        Ok(())
    }
}

/// The review a kubelet CSR got when it was asked for, if it is still pending (no
/// approval, denial or failure, no certificate).
fn pending_review(doc: &CsrDoc<'_>) -> Option<CsrReview> {
    let spec = doc.spec.as_ref()?;
    let signer = KubeletSigner::from_name(spec.signer_name.as_deref()?)?;
    let status = doc.status.as_ref();
    let decided = status.is_some_and(|s| {
        s.certificate.as_deref().is_some_and(|c| !c.is_empty())
            || s.conditions
                .iter()
                .flatten()
                .any(|c| matches!(c.kind.as_deref(), Some("Approved" | "Denied" | "Failed")))
    });
    if decided {
        return None;
    }
    Some(CsrReview {
        operation: Operation::Create,
        kubelet: Some(KubeletCsr::new(
            signer,
            spec.request.as_deref().unwrap_or_default(),
            spec.username.as_deref().unwrap_or_default(),
            spec.groups.iter().flatten().map(|g| &**g),
        )),
    })
}

impl Cluster {
    /// Without a ledger (nodeguard not installed yet), the history nodeguard will
    /// record when it first sees this cluster at `now` (see
    /// [`sharing::record_first_sight`]), so that the verdicts are the ones the webhook
    /// will give once installed.
    pub fn first_sight(&mut self, config: &Config, now: Timestamp) {
        if !self.ledger_read {
            sharing::record_first_sight(&mut self.inventory, config, now);
        }
    }
}

/// The three lists, read live page by page (500 objects a page, as kubectl does).
pub async fn read_live(client: &kube::Client) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::default();
    read_all(client, &mut cluster, "/api/v1/nodes", "Nodes").await?;
    read_all(
        client,
        &mut cluster,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        "CertificateSigningRequests",
    )
    .await?;
    match read_all(
        client,
        &mut cluster,
        "/apis/nodeguard.io/v1alpha1/nodeidentities",
        "NodeIdentities",
    )
    .await
    {
        Ok(()) => cluster.ledger_read = true,
        // Before nodeguard is installed there is no ledger: audit the rest.
        Err(error) if is_not_found(&error) => {}
        Err(error) => return Err(error),
    }
    Ok(cluster)
}

fn is_not_found(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 404)
}

async fn read_all(
    client: &kube::Client,
    cluster: &mut Cluster,
    path: &str,
    what: &str,
) -> anyhow::Result<()> {
    let mut next: Option<String> = None;
    loop {
        let mut uri = format!("{path}?limit=500");
        if let Some(token) = &next {
            uri.push_str("&continue=");
            uri.push_str(&urlencode(token));
        }
        let request = http::Request::get(&uri).body(Vec::new())?;
        let text = client
            .request_text(request)
            .await
            .map_err(anyhow::Error::from)
            .map_err(|e| e.context(format!("cannot list {what}")))?;
        next = cluster
            .add_list(text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot read the list of {what}: {e}"))?;
        if next.is_none() {
            return Ok(());
        }
    }
}

/// Percent-encodes a continue token for a query string.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
