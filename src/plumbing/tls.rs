//! The serving certificate and the rustls configuration: TLS 1.2 and 1.3 only, ALPN h2
//! and http/1.1, ECDSA or RSA keys in any of their usual PEM forms. The certificate is
//! served through [`ServingCertificate`], which holds the current one behind a lock, so
//! that a rotated certificate can be put in place without restarting the listener.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{InconsistentKeys, ServerConfig};

/// Why the serving certificate cannot be used. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("{path} is not valid PEM: {detail}")]
    BadPem { path: String, detail: String },
    #[error("{path} holds no PEM private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")]
    NoPrivateKey { path: String },
    #[error("the private key in {path} cannot be used: {reason}")]
    UnusableKey { path: String, reason: rustls::Error },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("the certificate in {path} cannot be used: {reason}")]
    UnusableCertificate { path: String, reason: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The one crypto provider nodeguard uses, named explicitly so that no process-wide
/// default is needed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its key from PEM files.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    certified_key_from_pem(
        &cert_pem,
        &cert_path.display().to_string(),
        &key_pem,
        &key_path.display().to_string(),
    )
}

/// Parses a certificate chain and its key from PEM text; `cert_source` and `key_source`
/// name where each came from, for the error messages.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    cert_source: &str,
    key_pem: &[u8],
    key_source: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: cert_source.to_string(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_source.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: key_source.to_string(),
        },
        other => TlsError::BadPem {
            path: key_source.to_string(),
            detail: other.to_string(),
        },
    })?;
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|reason| TlsError::UnusableKey {
            path: key_source.to_string(),
            reason,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_source.to_string(),
                key: key_source.to_string(),
            })
        }
        Err(reason) => Err(TlsError::UnusableCertificate {
            path: cert_source.to_string(),
            reason,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|reason| TlsError::Read {
        path: path.display().to_string(),
        reason,
    })
}

/// The certificate the server presents, replaceable while it runs.
pub struct ServingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCertificate {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Loads the certificate from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        load_certified_key(cert_path, key_path).map(Self::new)
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts a new certificate in place; connections already open keep the old one.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServingCertificate {
    /// Every client gets the same certificate: the API server always asks for the
    /// service's name, and a name mismatch is for the client to refuse.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server configuration presenting `certificate`.
pub fn server_config(certificate: Arc<ServingCertificate>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The server configuration for the PEM files given on the command line, and the handle
/// through which its certificate can later be replaced.
pub fn server_config_from_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<ServerConfig>, Arc<ServingCertificate>), TlsError> {
    let certificate = Arc::new(ServingCertificate::load(cert_path, key_path)?);
    let config = server_config(Arc::clone(&certificate))?;
    Ok((Arc::new(config), certificate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumbing::dev_pki::{DEV_DNS_NAMES, generate_dev_pki, generate_dev_pki_for_key};

    const EC_SEC1: &str = include_str!("../../tests/fixtures/keys/ec-p256.sec1.pem");
    const EC_PKCS8: &str = include_str!("../../tests/fixtures/keys/ec-p256.pkcs8.pem");
    const RSA_PKCS1: &str = include_str!("../../tests/fixtures/keys/rsa-2048.pkcs1.pem");
    const RSA_PKCS8: &str = include_str!("../../tests/fixtures/keys/rsa-2048.pkcs8.pem");

    fn load(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
        certified_key_from_pem(
            cert_pem.as_bytes(),
            "cert.pem",
            key_pem.as_bytes(),
            "key.pem",
        )
    }

    #[test]
    fn ecdsa_and_rsa_keys_load_in_every_pem_form() {
        let ec = generate_dev_pki_for_key(&DEV_DNS_NAMES, EC_PKCS8).unwrap();
        load(&ec.cert_pem, EC_PKCS8).unwrap();
        load(&ec.cert_pem, EC_SEC1).unwrap();
        let rsa = generate_dev_pki_for_key(&DEV_DNS_NAMES, RSA_PKCS8).unwrap();
        load(&rsa.cert_pem, RSA_PKCS8).unwrap();
        load(&rsa.cert_pem, RSA_PKCS1).unwrap();
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let error = load("", &pki.key_pem).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cert.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        let error = load(&pki.cert_pem, &pki.cert_pem).unwrap_err();
        assert_eq!(
            error.to_string(),
            "key.pem holds no PEM private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
        );
        let error = load(&pki.cert_pem, EC_SEC1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the private key in key.pem does not belong to the certificate in cert.pem"
        );
        let missing = Path::new("/nonexistent/nodeguard/tls.crt");
        let error = ServingCertificate::load(missing, missing).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/nodeguard/tls.crt: "),
            "{error}"
        );
    }

    #[test]
    fn a_replaced_certificate_is_what_new_handshakes_get() {
        let first = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let second = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let serving = ServingCertificate::new(load(&first.cert_pem, &first.key_pem).unwrap());
        let replacement = load(&second.cert_pem, &second.key_pem).unwrap();
        let expected = replacement.cert.clone();
        serving.replace(replacement);
        assert_eq!(serving.current().cert, expected);
    }
}
