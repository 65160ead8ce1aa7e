//! A development CA and a serving certificate signed by it, for the demo, the tests and
//! a first install. The API server verifies the webhook against a CA bundle and the
//! service's DNS name, so even a development setup needs a real chain, not a bare
//! self-signed certificate.

use jiff::{Timestamp, ToSpan, tz::TimeZone};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// The name the API server puts in the TLS `ServerName` for service `nodeguard` in
/// namespace `nodeguard` (`<svc>.<ns>.svc`).
pub const DEV_SERVER_NAME: &str = "nodeguard.nodeguard.svc";

/// The DNS names a serving certificate for that service needs.
pub const DEV_DNS_NAMES: [&str; 2] = [
    "nodeguard.nodeguard.svc",
    "nodeguard.nodeguard.svc.cluster.local",
];

/// How long a development serving certificate lasts.
const VALIDITY_DAYS: i64 = 365;

/// A CA and a serving certificate it signed, all PEM.
#[derive(Clone)]
pub struct DevPki {
    /// The CA certificate: what the webhook configuration's `caBundle` holds.
    pub ca_pem: String,
    /// The serving certificate chain (the serving certificate alone: the CA is the root).
    pub cert_pem: String,
    /// The serving certificate's private key, PKCS#8.
    pub key_pem: String,
}

impl std::fmt::Debug for DevPki {
    /// Leaves the private key out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// A TLS server configuration presenting this serving certificate.
    pub fn server_config(
        &self,
    ) -> Result<std::sync::Arc<rustls::ServerConfig>, super::tls::TlsError> {
        use super::tls::{self, ServingCertificate};
        let key = tls::certified_key_from_pem(
            self.cert_pem.as_bytes(),
            "generated certificate",
            self.key_pem.as_bytes(),
            "generated key",
        )?;
        Ok(std::sync::Arc::new(tls::server_config(
            std::sync::Arc::new(ServingCertificate::new(key)),
        )?))
    }
}

/// Makes a CA and an ECDSA P-256 serving certificate for `dns_names`.
pub fn generate_dev_pki(dns_names: &[&str]) -> Result<DevPki, rcgen::Error> {
    let serving_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    issue(dns_names, &serving_key)
}

/// Makes a CA and a serving certificate for `dns_names` whose key is `serving_key_pem`
/// (PKCS#8, RSA or ECDSA): how an RSA serving certificate is made, since `ring` cannot
/// generate RSA keys.
pub fn generate_dev_pki_for_key(
    dns_names: &[&str],
    serving_key_pem: &str,
) -> Result<DevPki, rcgen::Error> {
    let serving_key = KeyPair::from_pem(serving_key_pem)?;
    issue(dns_names, &serving_key)
}

fn issue(dns_names: &[&str], serving_key: &KeyPair) -> Result<DevPki, rcgen::Error> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name("nodeguard development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = dns_names.iter().map(|n| (*n).to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = common_name(dns_names.first().copied().unwrap_or("nodeguard"));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    let cert = params.signed_by(serving_key, &issuer)?;

    Ok(DevPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: serving_key.serialize_pem(),
    })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// From yesterday (clocks in a cluster disagree) to a year from today, in whole days.
fn set_validity(params: &mut CertificateParams) {
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    let day = |offset: i64| {
        let date = today.checked_add(offset.days()).unwrap_or(today);
        rcgen::date_time_ymd(
            i32::from(date.year()),
            date.month().unsigned_abs(),
            date.day().unsigned_abs(),
        )
    };
    params.not_before = day(-1);
    params.not_after = day(VALIDITY_DAYS);
}

/// Writes a development CA (`ca.crt`) and serving pair (`tls.crt`, `tls.key`) into `dir`,
/// the file names a Kubernetes TLS Secret uses. The key is readable by its owner only.
///
/// When `dir` already holds a `ca.crt` that is still valid (a rotation), its first CA
/// stays in the new `ca.crt` after the new one: a `caBundle` made from it trusts both
/// the serving certificate still mounted in running pods and the new one they reload.
pub fn write_dev_pki(
    dir: &std::path::Path,
    dns_names: &[&str],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
    let pki = generate_dev_pki(dns_names).context("cannot generate the certificates")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let previous = std::fs::read(dir.join("ca.crt"))
        .ok()
        .and_then(|pem| still_valid_ca(&pem));
    let ca_bundle = match previous {
        Some(previous) => format!("{}{previous}", pki.ca_pem),
        None => pki.ca_pem.clone(),
    };
    let mut written = Vec::new();
    for (name, text, private) in [
        ("ca.crt", &ca_bundle, false),
        ("tls.crt", &pki.cert_pem, false),
        ("tls.key", &pki.key_pem, true),
    ] {
        let path = dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The first certificate of a PEM bundle, re-encoded, if it is a CA valid now.
fn still_valid_ca(pem: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, certificate) = X509Certificate::from_der(&block.contents).ok()?;
    if !certificate.is_ca() || !certificate.validity().is_valid() {
        return None;
    }
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &block.contents);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|chunk| std::str::from_utf8(chunk).ok())
        .collect();
    Some(format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn certificates_in(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|block| block.unwrap().contents)
            .collect()
    }

    #[test]
    fn a_rotation_keeps_the_previous_ca_next_to_the_new_one_and_no_older() {
        let dir = std::env::temp_dir().join(format!("nodeguard-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();

        write_dev_pki(&dir, &DEV_DNS_NAMES).unwrap();
        let first = certificates_in(&read("ca.crt"));
        assert_eq!(first.len(), 1);

        write_dev_pki(&dir, &DEV_DNS_NAMES).unwrap();
        let second = certificates_in(&read("ca.crt"));
        assert_eq!(second.len(), 2);
        assert_eq!(
            second[1], first[0],
            "the previous CA is kept after the new one"
        );
        // The new serving certificate is signed by the new CA, the first in the bundle.
        let (_, new_ca) = X509Certificate::from_der(&second[0]).unwrap();
        let leaf = certificates_in(&read("tls.crt"));
        let (_, leaf) = X509Certificate::from_der(&leaf[0]).unwrap();
        assert_eq!(leaf.issuer(), new_ca.subject());
        assert!(leaf.verify_signature(Some(new_ca.public_key())).is_ok());

        write_dev_pki(&dir, &DEV_DNS_NAMES).unwrap();
        let third = certificates_in(&read("ca.crt"));
        assert_eq!(third.len(), 2, "only one previous CA is kept");
        assert_eq!(third[1], second[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    }

    #[test]
    fn the_serving_certificate_names_the_service_and_is_signed_by_a_ca() {
        let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let ca_der = der_of(&pki.ca_pem);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());

        let cert_der = der_of(&pki.cert_pem);
        let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
        assert!(!cert.is_ca());
        assert_eq!(cert.issuer(), ca.subject());
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            vec![
                "DNSName(nodeguard.nodeguard.svc)",
                "DNSName(nodeguard.nodeguard.svc.cluster.local)"
            ]
        );
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        assert!(cert.validity().is_valid());
        assert!(pki.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}
