//! The identity a kubelet CertificateSigningRequest claims: the node named in its
//! subject, its public key and its SANs, parsed from the PEM with a real X.509 parser.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use super::values::{Hostname, KeyFingerprint, NodeName};

pub const CLIENT_KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const NODE_CN_PREFIX: &str = "system:node:";
const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";

/// The two signers whose certificates make a machine a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KubeletSigner {
    Client,
    Serving,
}

impl KubeletSigner {
    pub fn from_name(signer_name: &str) -> Option<Self> {
        match signer_name {
            CLIENT_KUBELET_SIGNER => Some(Self::Client),
            KUBELET_SERVING_SIGNER => Some(Self::Serving),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Client => CLIENT_KUBELET_SIGNER,
            Self::Serving => KUBELET_SERVING_SIGNER,
        }
    }
}

/// The parts of a CertificateSigningRequest that carry identity.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrDoc<'a> {
    #[serde(borrow)]
    pub metadata: Option<CsrMetaDoc<'a>>,
    #[serde(borrow)]
    pub spec: Option<CsrSpecDoc<'a>>,
    #[serde(borrow)]
    pub status: Option<CsrStatusDoc<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsrMetaDoc<'a> {
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub name: Option<Cow<'a, str>>,
    /// What a watcher resumes from.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub resource_version: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsrSpecDoc<'a> {
    /// Base64 of the PEM `CERTIFICATE REQUEST`.
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub request: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub signer_name: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub username: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "super::text::option_list")]
    pub groups: Option<Vec<Cow<'a, str>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrStatusDoc<'a> {
    #[serde(borrow)]
    pub conditions: Option<Vec<CsrConditionDoc<'a>>>,
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub certificate: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrConditionDoc<'a> {
    #[serde(borrow, deserialize_with = "super::text::option", rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "super::text::option")]
    pub status: Option<Cow<'a, str>>,
}

/// Why a request under a kubelet signer is not a kubelet request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("spec.request is empty")]
    Empty,
    #[error("spec.request is not base64")]
    Base64,
    #[error("spec.request is not PEM")]
    NotPem,
    #[error("PEM block is {0:?}, not \"CERTIFICATE REQUEST\"")]
    PemLabel(String),
    #[error("the certificate request does not parse: {0}")]
    Der(String),
    #[error("the subject has no CN; a kubelet asks for CN=system:node:<name>")]
    NoCommonName,
    #[error("subject CN {0:?} is not system:node:<name>")]
    NotANode(String),
}

/// What a kubelet certificate request claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrClaim {
    /// The node named by `CN=system:node:<name>`.
    pub node: NodeName,
    pub fingerprint: KeyFingerprint,
    pub ip_sans: Vec<IpAddr>,
    pub dns_sans: Vec<Hostname>,
}

impl CsrClaim {
    /// Parses `spec.request` as it travels in JSON: base64 of a PEM block.
    pub fn from_request_field(request_b64: &str) -> Result<Self, CsrError> {
        let trimmed = request_b64.trim();
        if trimmed.is_empty() {
            return Err(CsrError::Empty);
        }
        let pem = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|_| CsrError::Base64)?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, CsrError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| CsrError::NotPem)?;
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::PemLabel(block.label));
        }
        Self::from_der(&block.contents)
    }

    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let (_, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
        let info = &csr.certification_request_info;
        let cn = info
            .subject
            .iter_common_name()
            .next()
            .ok_or(CsrError::NoCommonName)?
            .as_str()
            .map_err(|e| CsrError::Der(e.to_string()))?;
        let node = cn
            .strip_prefix(NODE_CN_PREFIX)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| CsrError::NotANode(cn.to_string()))?;

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
            node: NodeName::from(node),
            fingerprint: KeyFingerprint::of_spki_der(info.subject_pki.raw),
            ip_sans,
            dns_sans,
        })
    }
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
    pub node: NodeName,
    pub fingerprint: KeyFingerprint,
    pub signer: KubeletSigner,
    /// The credential id of the issued client certificate, as the API server reports it
    /// for requests made with it (`X509SHA256=<hex>`); `None` until issued.
    pub credential_id: Option<Arc<str>>,
}

impl KeyBinding {
    /// The binding a stored CSR establishes: only a kubelet CSR that was approved or
    /// issued, and neither denied nor failed, binds its key.
    pub fn from_doc(doc: &CsrDoc<'_>) -> Option<Self> {
        let spec = doc.spec.as_ref()?;
        let signer = KubeletSigner::from_name(spec.signer_name.as_deref()?)?;
        let status = doc.status.as_ref();
        let conditions = status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let has = |kind: &str| {
            conditions
                .iter()
                .any(|c| c.kind.as_deref() == Some(kind) && c.status.as_deref() != Some("False"))
        };
        let issued = status
            .and_then(|s| s.certificate.as_deref())
            .is_some_and(|c| !c.is_empty());
        if has("Denied") || has("Failed") || !(has("Approved") || issued) {
            return None;
        }
        let claim = CsrClaim::from_request_field(spec.request.as_deref()?).ok()?;
        let credential_id = match signer {
            KubeletSigner::Client => status
                .and_then(|s| s.certificate.as_deref())
                .and_then(credential_id_of_certificate),
            KubeletSigner::Serving => None,
        };
        Some(KeyBinding {
            node: claim.node,
            fingerprint: claim.fingerprint,
            signer,
            credential_id,
        })
    }
}

/// The credential id the API server gives a client certificate
/// (`userInfo.extra["authentication.kubernetes.io/credential-id"]`): `X509SHA256=` and
/// the hex SHA-256 of the certificate's DER. `status.certificate` is base64 of the PEM
/// chain; the leaf comes first.
pub fn credential_id_of_certificate(certificate_b64: &str) -> Option<Arc<str>> {
    use sha2::{Digest, Sha256};
    let pem = base64::engine::general_purpose::STANDARD
        .decode(certificate_b64.trim())
        .ok()?;
    let (_, leaf) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    if leaf.label != "CERTIFICATE" {
        return None;
    }
    let digest = Sha256::digest(&leaf.contents);
    Some(Arc::from(format!("X509SHA256={}", hex::encode(digest))))
}

/// Who asked for a certificate: a bootstrap token (a machine joining) or a node
/// rotating its own certificate.
pub fn is_bootstrap_requester<'a>(
    username: &str,
    groups: impl IntoIterator<Item = &'a str>,
) -> bool {
    username.starts_with(BOOTSTRAP_USER_PREFIX)
        || groups.into_iter().any(|g| g == BOOTSTRAPPERS_GROUP)
}
