//! nodeguard's admission endpoints and the names its webhooks are known by: each defined
//! here once, for the router, the metrics, the logs, the demo and the tests of deploy/.

/// An admission endpoint: one per kind of object reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Webhook {
    Nodes,
    Csrs,
    Pods,
}

impl Webhook {
    pub const ALL: [Webhook; 3] = [Webhook::Nodes, Webhook::Csrs, Webhook::Pods];

    /// The metrics label and log field: the last segment of its path.
    pub const fn as_str(self) -> &'static str {
        match self {
            Webhook::Nodes => "nodes",
            Webhook::Csrs => "csrs",
            Webhook::Pods => "pods",
        }
    }

    /// The path the API server posts its reviews to.
    pub const fn path(self) -> &'static str {
        match self {
            Webhook::Nodes => "/validate/nodes",
            Webhook::Csrs => "/validate/csrs",
            Webhook::Pods => "/validate/pods",
        }
    }
}

/// The webhooks of the ValidatingWebhookConfiguration, by the names the API server
/// writes in its errors (`admission webhook "<name>" denied the request`).
pub mod names {
    /// Node CREATE (a registration), reviewed at `/validate/nodes`.
    pub const NODE_REGISTRATIONS: &str = "nodes.nodeguard.io";
    /// Node UPDATE, main and status, reviewed at `/validate/nodes`.
    pub const NODE_UPDATES: &str = "node-updates.nodeguard.io";
    /// Kubelet CSR CREATE, reviewed at `/validate/csrs`.
    pub const KUBELET_CSRS: &str = "csrs.nodeguard.io";
    /// Pod status UPDATE by kubelets, reviewed at `/validate/pods`.
    pub const POD_STATUS: &str = "pod-status.nodeguard.io";
    /// Every webhook, in the order deploy/ declares them.
    pub const ALL: [&str; 4] = [NODE_REGISTRATIONS, NODE_UPDATES, KUBELET_CSRS, POD_STATUS];
}
