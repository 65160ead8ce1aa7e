//! The line the kubelet writes to its journal for an admission answer, so the demo
//! shows what the person at the cloned machine reads in `journalctl -u kubelet`.

use serde_json::Value;

use super::scenarios::KubeletAction;

/// What an AdmissionReview response said, read back from its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub code: Option<u64>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub warnings: Vec<String>,
}

impl Answer {
    pub fn from_review(review: &Value) -> Option<Self> {
        let response = review.get("response")?;
        let status = response.get("status");
        let text = |key: &str| {
            status
                .and_then(|s| s.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Some(Self {
            allowed: response.get("allowed")?.as_bool()?,
            code: status.and_then(|s| s.get("code")).and_then(Value::as_u64),
            reason: text("reason"),
            message: text("message"),
            warnings: response
                .get("warnings")
                .and_then(Value::as_array)
                .map(|w| {
                    w.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Go's `%q` as klog prints structured values: backslashes and quotes escaped.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// klog's header: severity, date, time, pid, source line.
fn header(severity: char, timestamp: &str, source: &str) -> String {
    format!("{severity}{timestamp}    2041 {source}]")
}

/// The kubelet's journal lines for `answer`. `already_registered` tells whether the
/// API server would then answer AlreadyExists to an allowed registration.
pub fn lines(
    action: KubeletAction,
    webhook: &str,
    node: &str,
    answer: &Answer,
    already_registered: bool,
    timestamp: &str,
) -> Vec<String> {
    let mut lines: Vec<String> = answer
        .warnings
        .iter()
        .map(|w| format!("{} {w}", header('W', timestamp, "warnings.go:70")))
        .collect();
    let denial = format!(
        "admission webhook {} denied the request: {}",
        quoted(webhook),
        answer.message.as_deref().unwrap_or("")
    );
    let line = match (action, answer.allowed) {
        // Refused as Invalid, so the kubelet logs the message and registers again
        // (after a 403 it would read the Node instead and log none of it).
        (KubeletAction::Register, false) => format!(
            "{} \"Unable to register node with API server\" err={} node={}",
            header('E', timestamp, "kubelet_node_status.go:107"),
            quoted(&denial),
            quoted(node)
        ),
        (KubeletAction::Register, true) if already_registered => format!(
            "{} \"Node was previously registered\" node={}",
            header('I', timestamp, "kubelet_node_status.go:81"),
            quoted(node)
        ),
        (KubeletAction::Register, true) => format!(
            "{} \"Successfully registered node\" node={}",
            header('I', timestamp, "kubelet_node_status.go:78"),
            quoted(node)
        ),
        (KubeletAction::UpdateStatus, false) => format!(
            "{} \"Error updating node status, will retry\" err={}",
            header('E', timestamp, "kubelet_node_status.go:535"),
            quoted(&format!(
                "failed to patch status \"{{…}}\" for node {}: {denial}",
                quoted(node)
            ))
        ),
        (KubeletAction::UpdateStatus, true) => format!(
            "{} \"Node status updated\" node={}",
            header('I', timestamp, "kubelet_node_status.go:543"),
            quoted(node)
        ),
        (KubeletAction::RequestCertificate, false) => format!(
            "{} \"Failed while requesting a signed certificate from the control plane\" err={} logger=\"kubernetes.io/kube-apiserver-client-kubelet\"",
            header('E', timestamp, "certificate_manager.go:562"),
            quoted(&format!(
                "cannot create certificate signing request: {denial}"
            ))
        ),
        (KubeletAction::RequestCertificate, true) => format!(
            "{} \"Certificate signing request created, waiting for approval\" logger=\"kubernetes.io/kube-apiserver-client-kubelet\"",
            header('I', timestamp, "certificate_manager.go:375"),
        ),
    };
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_registration_reads_as_the_kubelet_logs_it() {
        let answer = Answer {
            allowed: false,
            code: Some(403),
            reason: Some("Forbidden".into()),
            message: Some(
                "nodeguard [machine-id]: machine-id ab is already used by node \"worker-1\"".into(),
            ),
            warnings: vec![],
        };
        assert_eq!(
            lines(
                KubeletAction::Register,
                crate::webhook::names::NODE_REGISTRATIONS,
                "worker-4",
                &answer,
                false,
                "1127 12:00:00.000000"
            ),
            vec![
                "E1127 12:00:00.000000    2041 kubelet_node_status.go:107] \"Unable to register node with API server\" \
                 err=\"admission webhook \\\"nodes.nodeguard.io\\\" denied the request: nodeguard [machine-id]: \
                 machine-id ab is already used by node \\\"worker-1\\\"\" node=\"worker-4\""
            ]
        );
    }
}
