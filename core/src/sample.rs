//! What the kubelet and the API server put on the wire: Node objects shaped like a
//! kubelet's registration, kubelet CSRs made with real P-256 keys, and the
//! AdmissionReview the API server wraps them in. Used by `nodeguard demo` and the tests.

use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use serde_json::{Value, json};

/// A kind node exactly as collected (tests/fixtures/real/PROVENANCE.md): 27 images,
/// full conditions. Every Node here starts from it, so the webhook reads objects of
/// real size and shape.
const NODE_TEMPLATE: &str = include_str!("../fixtures/node-kind-control-plane.json");

/// The identity a machine reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Its hostname, and so its Node's name.
    pub name: String,
    /// `/etc/machine-id`: 32 lowercase hex digits.
    pub machine_id: String,
    /// The SMBIOS UUID its firmware reports.
    pub system_uuid: String,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// The address its kubelet reports as InternalIP.
    pub internal_ip: String,
    /// `spec.providerID`, for a machine of a cloud provider.
    pub provider_id: Option<String>,
    /// Whether its Node's Ready condition is True.
    pub ready: bool,
    /// When its kubelet last wrote its status: the Ready condition's `lastHeartbeatTime`.
    pub heartbeat: jiff::Timestamp,
}

impl Machine {
    /// A machine with ids derived from `seed`, so that every seed is a distinct machine.
    pub fn new(name: &str, seed: u8, internal_ip: &str) -> Self {
        Self {
            name: name.to_string(),
            machine_id: format!("{seed:02x}c1f8e2fbf5540cd8ff218ef016ba{seed:02x}"),
            system_uuid: format!("{seed:02x}39a350-3cd4-400f-875d-c2703798{seed:02x}b0"),
            boot_id: format!("{seed:02x}a0427b-40ea-4cf5-9f24-53d6e200ef{seed:02x}"),
            internal_ip: internal_ip.to_string(),
            provider_id: None,
            ready: true,
            heartbeat: jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    /// The `i`-th machine of a large fleet: every id and address distinct for each `i`
    /// below 2^24 (the benches' clusters of up to 50,000 nodes).
    pub fn numbered(i: u32) -> Self {
        let mut m = Self::new(&format!("node-{i:05}"), 0, "10.0.0.1");
        m.machine_id = format!("{:032x}", 0x9cbf_0000_u64 + u64::from(i));
        m.system_uuid = format!("3f39a350-3cd4-400f-875d-{i:012x}");
        m.boot_id = format!("a0a0427b-40ea-4cf5-9f24-{i:012x}");
        m.internal_ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        m.provider_id = Some(format!("aws:///eu-west-1a/i-{i:017x}"));
        m
    }

    /// The same disk booted again: only the boot id changes.
    pub fn rebooted(&self, boot_id: &str) -> Self {
        Self {
            boot_id: boot_id.to_string(),
            ..self.clone()
        }
    }
}

/// The Node a kubelet sends to register (and, merged, the object of its status writes).
pub fn node_object(machine: &Machine) -> Value {
    let mut node: Value = serde_json::from_str(NODE_TEMPLATE).unwrap_or_else(|_| json!({}));
    let ready = if machine.ready { "True" } else { "Unknown" };
    node["metadata"] = json!({
        "name": machine.name,
        "labels": {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": machine.name,
            "kubernetes.io/os": "linux",
        },
        "annotations": {
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        },
    });
    node["spec"] = match &machine.provider_id {
        Some(id) => json!({ "providerID": id }),
        None => json!({}),
    };
    let status = &mut node["status"];
    status["addresses"] = json!([
        { "type": "InternalIP", "address": machine.internal_ip },
        { "type": "Hostname", "address": machine.name },
    ]);
    status["nodeInfo"]["machineID"] = json!(machine.machine_id);
    status["nodeInfo"]["systemUUID"] = json!(machine.system_uuid);
    status["nodeInfo"]["bootID"] = json!(machine.boot_id);
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for condition in conditions {
            if condition["type"] == "Ready" {
                condition["status"] = json!(ready);
                condition["lastHeartbeatTime"] = json!(machine.heartbeat.to_string());
            }
        }
    }
    node
}

/// The signer of a kubelet's client certificate.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of a kubelet's serving certificate.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// A kubelet's private key: ECDSA P-256, as the kubelet generates.
pub fn kubelet_key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// The PEM `CERTIFICATE REQUEST` a kubelet makes: `O=system:nodes, CN=system:node:<name>`,
/// with its addresses as SANs for a serving certificate.
pub fn csr_pem(
    key: &KeyPair,
    node: &str,
    ip_sans: &[&str],
    dns_sans: &[&str],
) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "system:nodes");
    subject.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = subject;
    for ip in ip_sans {
        if let Ok(ip) = ip.parse() {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    for dns in dns_sans {
        params
            .subject_alt_names
            .push(SanType::DnsName((*dns).try_into()?));
    }
    params.serialize_request(key)?.pem()
}

/// Who sends a CSR: a bootstrap token for a joining machine, the node itself for a
/// rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A machine joining with a bootstrap token.
    Bootstrap {
        /// The token's id: the user is `system:bootstrap:<id>`.
        token_id: String,
    },
    /// A node renewing its own certificate.
    Node {
        /// The node's name: the user is `system:node:<name>`.
        name: String,
    },
}

impl Requester {
    /// The user the API server authenticates the requester as.
    pub fn username(&self) -> String {
        match self {
            Requester::Bootstrap { token_id } => format!("system:bootstrap:{token_id}"),
            Requester::Node { name } => format!("system:node:{name}"),
        }
    }

    /// The groups that user has.
    pub fn groups(&self) -> Vec<&'static str> {
        match self {
            Requester::Bootstrap { .. } => vec!["system:bootstrappers", "system:authenticated"],
            Requester::Node { .. } => vec!["system:nodes", "system:authenticated"],
        }
    }
}

/// A CertificateSigningRequest as the API server has it at admission: `spec.username`
/// and `groups` filled in from the requester.
pub fn csr_object(name: &str, signer: &str, pem: &str, requester: &Requester) -> Value {
    let usages = if signer == SERVING_SIGNER {
        json!(["digital signature", "server auth"])
    } else {
        json!(["digital signature", "client auth"])
    };
    json!({
        "kind": "CertificateSigningRequest",
        "apiVersion": "certificates.k8s.io/v1",
        "metadata": { "name": name, "generateName": "csr-" },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "usages": usages,
            "username": requester.username(),
            "groups": requester.groups(),
        },
        "status": {}
    })
}

/// The CSR once approved and issued: what the watchers see afterwards. The certificate
/// is really signed, by a throwaway cluster CA, so its credential id is what the API
/// server would report for it. A request that does not parse gets no certificate.
pub fn issued(mut csr: Value) -> Value {
    let certificate = csr["spec"]["request"]
        .as_str()
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|pem| String::from_utf8(pem).ok())
        .and_then(|pem| sign_request(&pem).ok())
        .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem));
    csr["status"] = json!({
        "conditions": [{
            "type": "Approved",
            "status": "True",
            "reason": "AutoApproved",
            "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
        }],
    });
    if let Some(certificate) = certificate {
        csr["status"]["certificate"] = json!(certificate);
    }
    csr
}

/// Signs a PEM certificate request as the cluster's kubelet signer would.
fn sign_request(request_pem: &str) -> Result<String, rcgen::Error> {
    let ca_key = kubelet_key()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "kubernetes");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)?;
    request.params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    request.params.not_after = rcgen::date_time_ymd(2027, 1, 1);
    Ok(request.signed_by(&issuer)?.pem())
}

/// How a write reaches admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The kubelet registering (or re-registering after a restart).
    Create,
    /// `PATCH nodes/status`: admission sees an UPDATE of the status subresource.
    StatusPatch,
}

/// The AdmissionReview the API server POSTs for a Node write by `user`.
pub fn node_review(
    uid: &str,
    write: Write,
    object: &Value,
    old_object: Option<&Value>,
    user: &str,
) -> Value {
    let name = object["metadata"]["name"].clone();
    let (operation, sub_resource, options) = match write {
        Write::Create => (
            "CREATE",
            None,
            json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
        ),
        Write::StatusPatch => (
            "UPDATE",
            Some("status"),
            json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubelet"}),
        ),
    };
    let mut request = json!({
        "uid": uid,
        "kind": { "group": "", "version": "v1", "kind": "Node" },
        "resource": { "group": "", "version": "v1", "resource": "nodes" },
        "requestKind": { "group": "", "version": "v1", "kind": "Node" },
        "requestResource": { "group": "", "version": "v1", "resource": "nodes" },
        "name": name,
        "operation": operation,
        "userInfo": {
            "username": user,
            "groups": ["system:nodes", "system:authenticated"],
        },
        "object": object,
        "oldObject": old_object.cloned().unwrap_or(Value::Null),
        "dryRun": false,
        "options": options,
    });
    if let Some(sub) = sub_resource {
        request["subResource"] = json!(sub);
        request["requestSubResource"] = json!(sub);
    }
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request })
}

/// The AdmissionReview the API server POSTs for a CSR CREATE.
pub fn csr_review(uid: &str, csr: &Value) -> Value {
    let gvk = json!({ "group": "certificates.k8s.io", "version": "v1", "kind": "CertificateSigningRequest" });
    let gvr = json!({ "group": "certificates.k8s.io", "version": "v1", "resource": "certificatesigningrequests" });
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": csr["metadata"]["name"],
            "operation": "CREATE",
            "userInfo": {
                "username": csr["spec"]["username"],
                "groups": csr["spec"]["groups"],
            },
            "object": csr,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" },
        }
    })
}
