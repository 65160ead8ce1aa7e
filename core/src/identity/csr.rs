//! The identity a kubelet CertificateSigningRequest claims: the node named in its
//! subject, its public key and its SANs, parsed from the PEM with a real X.509 parser.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{
    AttributeTypeAndValue, FromDer, X509Certificate, X509CertificationRequest, X509Name,
};

use super::values::{Hostname, KeyFingerprint, NodeName};

/// `spec.signerName` of a kubelet's client certificate: its credential to the API server.
pub const CLIENT_KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// `spec.signerName` of a kubelet's serving certificate, for its own HTTPS endpoint.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const NODE_CN_PREFIX: &str = "system:node:";
const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
const NODES_GROUP: &str = "system:nodes";

/// The two signers whose certificates make a machine a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KubeletSigner {
    /// [`CLIENT_KUBELET_SIGNER`]: the kubelet's client certificate.
    Client,
    /// [`KUBELET_SERVING_SIGNER`]: the kubelet's serving certificate.
    Serving,
}

impl KubeletSigner {
    /// The signer of a `spec.signerName`; `None` for any other signer.
    pub fn from_name(signer_name: &str) -> Option<Self> {
        match signer_name {
            CLIENT_KUBELET_SIGNER => Some(Self::Client),
            KUBELET_SERVING_SIGNER => Some(Self::Serving),
            _ => None,
        }
    }

    /// The signer's `spec.signerName`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => CLIENT_KUBELET_SIGNER,
            Self::Serving => KUBELET_SERVING_SIGNER,
        }
    }
}

/// The parts of a CertificateSigningRequest that carry identity.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsrDoc<'a> {
    /// `certificates.k8s.io/v1` in a review; absent from the items of a list.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub api_version: Option<Cow<'a, str>>,
    /// `CertificateSigningRequest` in a review; absent from the items of a list.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub kind: Option<Cow<'a, str>>,
    /// `metadata`: the CSR's name and resource version.
    #[serde(borrow)]
    pub metadata: Option<CsrMetaDoc<'a>>,
    /// `spec`: the request, its signer and who asked.
    #[serde(borrow)]
    pub spec: Option<CsrSpecDoc<'a>>,
    /// `status`: the conditions and the issued certificate.
    #[serde(borrow)]
    pub status: Option<CsrStatusDoc<'a>>,
}

/// The `metadata` of a CertificateSigningRequest.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsrMetaDoc<'a> {
    /// `metadata.name`: the CSR's name.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub name: Option<Cow<'a, str>>,
    /// What a watcher resumes from.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub resource_version: Option<Cow<'a, str>>,
}

/// The `spec` of a CertificateSigningRequest.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsrSpecDoc<'a> {
    /// Base64 of the PEM `CERTIFICATE REQUEST`.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub request: Option<Cow<'a, str>>,
    /// `spec.signerName`: the signer asked to issue the certificate.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub signer_name: Option<Cow<'a, str>>,
    /// `spec.username`: who created the CSR, filled in by the API server.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub username: Option<Cow<'a, str>>,
    /// `spec.groups`: the groups of that user, filled in by the API server.
    #[serde(borrow, deserialize_with = "super::text::option_list")]
    pub groups: Option<Vec<Cow<'a, str>>>,
}

/// The `status` of a CertificateSigningRequest.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrStatusDoc<'a> {
    /// `status.conditions`: `Approved`, `Denied`, `Failed`.
    #[serde(borrow)]
    pub conditions: Option<Vec<CsrConditionDoc<'a>>>,
    /// `status.certificate`: base64 of the PEM chain, leaf first; absent until issued.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub certificate: Option<Cow<'a, str>>,
}

/// One of `status.conditions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrConditionDoc<'a> {
    /// `type`: `Approved`, `Denied` or `Failed`.
    #[serde(borrow, deserialize_with = "super::text::option", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    /// `status`: `True` or `False`; anything but `False` counts the condition as set.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub status: Option<Cow<'a, str>>,
}

/// Why a request under a kubelet signer is not a kubelet request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// `spec.request` is empty or only whitespace.
    #[error("spec.request is empty")]
    Empty,
    /// `spec.request` does not decode as base64.
    #[error("spec.request is not base64")]
    Base64,
    /// The decoded request holds no PEM block.
    #[error("spec.request is not PEM")]
    NotPem,
    /// The PEM label, neither `CERTIFICATE REQUEST` nor `NEW CERTIFICATE REQUEST`.
    #[error("PEM block is {0:?}, not \"CERTIFICATE REQUEST\"")]
    PemLabel(String),
    /// The request (or a subject attribute) does not parse; the parser's message.
    #[error("the certificate request does not parse: {0}")]
    Der(String),
    /// The request is not signed by its own public key; the verifier's message.
    #[error("the request is not signed by its own key: {0}")]
    Signature(String),
    /// The subject has no CN.
    #[error("the subject has no CN; a kubelet asks for CN=system:node:<name>")]
    NoCommonName,
    /// The subject has more than one CN.
    #[error(
        "the subject has {count} CNs ({names}); Kubernetes reads only the last, so the request \
         is ambiguous; a kubelet sends exactly one"
    )]
    SeveralCommonNames {
        /// How many CNs the subject has.
        count: usize,
        /// Up to three of them, each quoted and clipped, then `…` if there are more.
        names: String,
    },
    /// The CN, clipped: not `system:node:` followed by a name.
    #[error("subject CN {0:?} is not system:node:<name>")]
    NotANode(String),
    /// The O values, quoted and clipped, or `missing`: not exactly `O=system:nodes`.
    #[error("subject O is {0}; a kubelet sends exactly O=system:nodes")]
    Organization(String),
    /// The requested node name, clipped: not a DNS subdomain.
    #[error(
        "the node name {0:?} is not a valid Node name (a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.')"
    )]
    NodeName(String),
    /// A key too weak for a kubelet credential (RSA under 2048 bits, elliptic curves
    /// under 256, DSA), as the message describes it, e.g. `RSA-1024`.
    #[error(
        "the key is {0}, too weak for a kubelet credential (a kubelet makes ECDSA P-256; RSA needs 2048 bits or more)"
    )]
    WeakKey(String),
}

/// The subject of a certificate or request as Kubernetes reads it (Go's crypto/x509):
/// every CN and every O attribute, in order. Go keeps the last CN and all O values.
struct Subject {
    common_names: Vec<String>,
    organizations: Vec<String>,
}

impl Subject {
    fn of(name: &X509Name<'_>) -> Result<Self, CsrError> {
        let text = |attributes: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| {
            attributes
                .map(|a| {
                    a.as_str()
                        .map(str::to_string)
                        .map_err(|e| CsrError::Der(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            common_names: text(&mut name.iter_common_name())?,
            organizations: text(&mut name.iter_organization())?,
        })
    }

    /// The node a kubelet subject names: exactly one CN, `system:node:<name>`, and
    /// exactly `O=system:nodes`, which is all a kubelet signer accepts. Anything else
    /// could be read one way here and another way by the API server.
    fn kubelet_node(&self) -> Result<NodeName, CsrError> {
        let cn = match self.common_names.as_slice() {
            [] => return Err(CsrError::NoCommonName),
            [cn] => cn,
            several => {
                return Err(CsrError::SeveralCommonNames {
                    count: several.len(),
                    names: clip_list(several),
                });
            }
        };
        let node = cn
            .strip_prefix(NODE_CN_PREFIX)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| CsrError::NotANode(super::text::clip(cn, 80)))?;
        if !is_dns_subdomain(node) {
            return Err(CsrError::NodeName(super::text::clip(node, 80)));
        }
        if self.organizations.len() != 1 || self.organizations[0] != NODES_GROUP {
            let shown = if self.organizations.is_empty() {
                "missing".to_string()
            } else {
                clip_list(&self.organizations)
            };
            return Err(CsrError::Organization(shown));
        }
        Ok(NodeName::from(node))
    }

    /// The node a certificate authenticates as, read as the API server reads it: the
    /// last CN.
    fn authenticated_node(&self) -> Option<NodeName> {
        let cn = self.common_names.last()?;
        cn.strip_prefix(NODE_CN_PREFIX)
            .filter(|name| !name.is_empty())
            .map(NodeName::from)
    }
}

/// What the API server accepts as a Node's name (RFC 1123 subdomain): no Node can be
/// registered under anything else, so no kubelet asks for it.
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(alphanumeric)
                && label.ends_with(alphanumeric)
                && label.chars().all(|c| alphanumeric(c) || c == '-')
        })
}

/// Values quoted for a message, each clipped, at most three.
fn clip_list(values: &[String]) -> String {
    let mut shown: Vec<String> = values
        .iter()
        .take(3)
        .map(|v| format!("{:?}", super::text::clip(v, 60)))
        .collect();
    if values.len() > 3 {
        shown.push("…".to_string());
    }
    shown.join(", ")
}

/// What a kubelet certificate request claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrClaim {
    /// The node named by `CN=system:node:<name>`.
    pub node: NodeName,
    /// SHA-256 of the request's public key (its DER SubjectPublicKeyInfo).
    pub fingerprint: KeyFingerprint,
    /// The IP address SANs; entries neither 4 nor 16 bytes long are skipped.
    pub ip_sans: Vec<IpAddr>,
    /// The DNS name SANs, normalised as hostnames; empty ones are skipped.
    pub dns_sans: Vec<Hostname>,
}

impl CsrClaim {
    /// Parses `spec.request` as it travels in JSON: base64 of a PEM block.
    pub fn from_request_field(request_b64: &str) -> Result<Self, CsrError> {
        let pem = decode_request_field(request_b64)?;
        Self::from_pem(&pem)
    }

    /// Parses a PEM `CERTIFICATE REQUEST` (or `NEW CERTIFICATE REQUEST`) block.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CsrError> {
        let der = request_der(pem)?;
        Self::from_der(&der)
    }

    /// Parses a DER PKCS #10 request: refuses a weak key, checks the signature, then
    /// reads the node from the subject and the SANs.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let csr = parse_request(der)?;
        // Before the signature: a weak key's signature may not even be checkable.
        refuse_weak_key(&csr.certification_request_info.subject_pki)?;
        csr.verify_signature()
            .map_err(|e| CsrError::Signature(e.to_string()))?;
        let info = &csr.certification_request_info;
        let node = Subject::of(&info.subject)?.kubelet_node()?;

        let mut ip_sans = Vec::new();
        let mut dns_sans = Vec::new();
        for extension in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = extension {
                for name in &san.general_names {
                    match name {
                        GeneralName::IPAddress(bytes) => ip_sans.extend(ip_from_bytes(bytes)),
                        GeneralName::DNSName(dns) => dns_sans.extend(Hostname::parse(dns)),
                        _ => {}
                    }
                }
            }
        }

        Ok(CsrClaim {
            node,
            fingerprint: KeyFingerprint::of_spki_der(info.subject_pki.raw),
            ip_sans,
            dns_sans,
        })
    }
}

/// Keys anyone could break: RSA under 2048 bits, elliptic curves under 256, DSA.
fn refuse_weak_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < 2048 => {
            Err(CsrError::WeakKey(format!("RSA-{}", rsa.key_size())))
        }
        Ok(PublicKey::EC(ec)) if ec.key_size() < 256 => Err(CsrError::WeakKey(format!(
            "an elliptic-curve key of {} bits",
            ec.key_size()
        ))),
        Ok(PublicKey::DSA(_)) => Err(CsrError::WeakKey("DSA".to_string())),
        _ => Ok(()),
    }
}

fn decode_request_field(request_b64: &str) -> Result<Vec<u8>, CsrError> {
    let trimmed = request_b64.trim();
    if trimmed.is_empty() {
        return Err(CsrError::Empty);
    }
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .map_err(|_| CsrError::Base64)
}

fn request_der(pem: &[u8]) -> Result<Vec<u8>, CsrError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| CsrError::NotPem)?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::PemLabel(block.label));
    }
    Ok(block.contents)
}

fn parse_request(der: &[u8]) -> Result<X509CertificationRequest<'_>, CsrError> {
    X509CertificationRequest::from_der(der)
        .map(|(_, csr)| csr)
        .map_err(|e| CsrError::Der(e.to_string()))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A key a kubelet signer has accepted for a node: from then on, that key is that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The node the issued certificate authenticates as (its last CN).
    pub node: NodeName,
    /// The bound key: SHA-256 of its DER SubjectPublicKeyInfo.
    pub fingerprint: KeyFingerprint,
    /// The kubelet signer that issued the certificate.
    pub signer: KubeletSigner,
    /// The credential id of the issued client certificate, as the API server reports it
    /// for requests made with it (`X509SHA256=<hex>`); `None` until issued.
    pub credential_id: Option<Arc<str>>,
}

impl KeyBinding {
    /// The binding a stored CSR establishes: only a kubelet CSR whose certificate was
    /// issued, for the very key of the request, and that was neither denied nor failed.
    /// Approval alone binds nothing: anyone who may create kubelet CSRs can copy a
    /// pending request's public key into one of their own, and a key is only ever used
    /// by the machine that holds a certificate for it. The node is the one the
    /// certificate authenticates as.
    pub fn from_doc(doc: &CsrDoc<'_>) -> Option<Self> {
        let spec = doc.spec.as_ref()?;
        let signer = KubeletSigner::from_name(spec.signer_name.as_deref()?)?;
        let status = doc.status.as_ref()?;
        let conditions = status.conditions.as_deref().unwrap_or_default();
        let has = |kind: &str| {
            conditions
                .iter()
                .any(|c| c.kind.as_deref() == Some(kind) && c.status.as_deref() != Some("False"))
        };
        if has("Denied") || has("Failed") {
            return None;
        }
        let certificate = IssuedCertificate::parse(status.certificate.as_deref()?)?;
        let request = decode_request_field(spec.request.as_deref()?).ok()?;
        let request = request_der(&request).ok()?;
        let request = parse_request(&request).ok()?;
        let requested =
            KeyFingerprint::of_spki_der(request.certification_request_info.subject_pki.raw);
        if certificate.fingerprint != requested {
            return None;
        }
        Some(KeyBinding {
            node: certificate.node,
            fingerprint: certificate.fingerprint,
            signer,
            credential_id: match signer {
                KubeletSigner::Client => Some(certificate.credential_id),
                KubeletSigner::Serving => None,
            },
        })
    }
}

/// The leaf of an issued kubelet certificate, as the API server will authenticate it.
struct IssuedCertificate {
    node: NodeName,
    fingerprint: KeyFingerprint,
    /// What the API server puts in
    /// `userInfo.extra["authentication.kubernetes.io/credential-id"]` for a request made
    /// with it: `X509SHA256=` and the hex SHA-256 of the certificate's DER.
    credential_id: Arc<str>,
}

impl IssuedCertificate {
    /// `status.certificate`: base64 of the PEM chain, leaf first.
    fn parse(certificate_b64: &str) -> Option<Self> {
        use sha2::{Digest, Sha256};
        let pem = base64::engine::general_purpose::STANDARD
            .decode(certificate_b64.trim())
            .ok()?;
        let (_, leaf) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        if leaf.label != "CERTIFICATE" {
            return None;
        }
        let (_, certificate) = X509Certificate::from_der(&leaf.contents).ok()?;
        let node = Subject::of(certificate.subject())
            .ok()?
            .authenticated_node()?;
        let digest = Sha256::digest(&leaf.contents);
        Some(Self {
            node,
            fingerprint: KeyFingerprint::of_spki_der(certificate.public_key().raw),
            credential_id: Arc::from(format!("X509SHA256={}", hex::encode(digest))),
        })
    }
}

/// Who asks for a kubelet certificate, relative to the node the request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// `system:node:<that node>`: the node renewing its own certificate, whatever
    /// groups it is in (EKS puts nodes in `system:bootstrappers` too).
    NodeItself,
    /// A bootstrap token (`system:bootstrap:*`, group `system:bootstrappers`): a
    /// machine joining, which may or may not be that node.
    Bootstrap,
    /// Another node asking for this one's credentials.
    AnotherNode,
    /// Anyone else (an admin, a provisioner's service account).
    Other,
}

impl Requester {
    /// Who `username` (in `groups`) is, relative to `node`, the node the request names.
    pub fn classify<'a>(
        username: &str,
        groups: impl IntoIterator<Item = &'a str>,
        node: &str,
    ) -> Self {
        if let Some(requester) = username.strip_prefix(NODE_CN_PREFIX) {
            return if requester == node {
                Requester::NodeItself
            } else {
                Requester::AnotherNode
            };
        }
        if username.starts_with(BOOTSTRAP_USER_PREFIX)
            || groups.into_iter().any(|g| g == BOOTSTRAPPERS_GROUP)
        {
            return Requester::Bootstrap;
        }
        Requester::Other
    }

    /// A machine other than the named node itself may be asking for its credentials.
    pub fn may_be_another_machine(self) -> bool {
        matches!(self, Requester::Bootstrap | Requester::AnotherNode)
    }

    /// How a message names the requester, e.g. `a bootstrap token`.
    pub fn as_str(self) -> &'static str {
        match self {
            Requester::NodeItself => "the node itself",
            Requester::Bootstrap => "a bootstrap token",
            Requester::AnotherNode => "another node",
            Requester::Other => "another user",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{self as kubelet, Requester};

    fn binding_of(csr: &serde_json::Value) -> Option<KeyBinding> {
        let text = csr.to_string();
        let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
        KeyBinding::from_doc(&doc)
    }

    fn client_csr(key: &rcgen::KeyPair, node: &str) -> serde_json::Value {
        let pem = kubelet::csr_pem(key, node, &[], &[]).unwrap();
        kubelet::csr_object(
            "csr-k3y00",
            kubelet::CLIENT_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        )
    }

    #[test]
    fn a_key_is_bound_by_an_issued_certificate_not_by_an_approval() {
        let key = kubelet::kubelet_key().unwrap();
        let issued = kubelet::issued(client_csr(&key, "worker-1"));
        let binding = binding_of(&issued).expect("an issued certificate binds its key");
        assert_eq!(&*binding.node, "worker-1");
        assert_eq!(
            binding.fingerprint,
            KeyFingerprint::of_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
        assert!(binding.credential_id.is_some());

        // Approved, not (yet) issued: anyone may have copied a pending request's public
        // key into their own; nothing is bound until a certificate exists for it.
        let mut approved = issued.clone();
        approved["status"]
            .as_object_mut()
            .unwrap()
            .remove("certificate");
        assert_eq!(binding_of(&approved), None);
    }

    #[test]
    fn a_certificate_for_another_key_than_the_requests_binds_nothing() {
        let key = kubelet::kubelet_key().unwrap();
        let other = kubelet::issued(client_csr(&kubelet::kubelet_key().unwrap(), "worker-1"));
        let mut csr = kubelet::issued(client_csr(&key, "worker-1"));
        csr["status"]["certificate"] = other["status"]["certificate"].clone();
        assert_eq!(binding_of(&csr), None);
    }
}
