//! Serving certificate hot reload. In a cluster the pair comes from a Secret volume: the
//! kubelet writes each new version into a fresh `..<timestamp>` directory and atomically
//! renames a symlink over `..data`, and `tls.crt` / `tls.key` are symlinks through
//! `..data`. So the directories holding the two files are watched (inotify through
//! `notify`), not the files themselves, which a swap replaces; bursts of events are
//! debounced, and the files are also re-read periodically in case an event is missed
//! (no inotify on the filesystem, watch limit reached, the directory itself replaced).
//!
//! A changed pair is put in place only when it is whole and usable: both files readable,
//! the chain and key parse, the key belongs to the leaf, and the leaf is valid now
//! (expired is refused; a notBefore up to [`NOT_BEFORE_SKEW`] in the future is accepted,
//! as issuers stamp notBefore with their own clock). Otherwise the previous pair keeps
//! being served and the refusal is logged at error and counted once per distinct content;
//! a later fix is picked up normally. Open connections keep the certificate they
//! negotiated with; new handshakes get the new one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::file_watch::{DEFAULT_DEBOUNCE, DEFAULT_RECHECK_EVERY, Rechecks, watched_directories};
use super::tls::{ServingCertificate, TlsError, certified_key_from_pem};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::file_watch::{RELOAD_LOADED, RELOAD_REJECTED, ReloadLabels, reload_counter};

/// How far in the future a new leaf's notBefore may be and still be served: clocks in a
/// cluster disagree by seconds, and the API server checks with its own clock anyway.
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(5 * 60);
/// Reads of the pair that saw the certificate change under them (a swap between the
/// reads) before the last read is used as it is.
const CONSISTENT_READ_ATTEMPTS: usize = 3;

/// The serving certificate's expiry and reloads.
#[derive(Debug, Clone)]
pub struct CertificateMetrics {
    expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
}

impl CertificateMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            expiry: Gauge::default(),
            reloads: reload_counter(),
        };
        registry.register(
            "nodeguard_serving_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate presented to new connections, in Unix seconds",
            metrics.expiry.clone(),
        );
        registry.register(
            "nodeguard_serving_certificate_reloads",
            "Changed serving certificate files seen, by result (loaded, rejected: the previous pair stays)",
            metrics.reloads.clone(),
        );
        metrics
    }

    fn observe_reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }
}

/// Why a changed pair was refused; the previous pair stays in place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the leaf certificate in {path} is not valid X.509: {detail}")]
    NotX509 { path: String, detail: String },
    #[error("the certificate in {path} expired at {not_after}")]
    Expired { path: String, not_after: String },
    #[error(
        "the certificate in {path} is not valid before {not_before}, later than now plus the allowed clock skew"
    )]
    NotYetValid { path: String, not_before: String },
}

/// What a log line and the metrics say about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSummary {
    pub subject: String,
    /// DNS names and IP addresses, in certificate order.
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, hex.
    pub sha256: String,
}

/// Reads the subject, SANs and validity of `leaf_der`.
pub fn summarize_leaf(leaf_der: &[u8], source: &str) -> Result<LeafSummary, Rejection> {
    let not_x509 = |detail: String| Rejection::NotX509 {
        path: source.to_string(),
        detail,
    };
    let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|e| not_x509(e.to_string()))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(extension)) => extension
            .value
            .general_names
            .iter()
            .map(describe_name)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(not_x509(format!("subjectAltName: {e}"))),
    };
    let validity = cert.validity();
    Ok(LeafSummary {
        subject: cert.subject().to_string(),
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        sha256: hex::encode(Sha256::digest(leaf_der)),
    })
}

fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => (*dns).to_string(),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => IpAddr::from(v4).to_string(),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => IpAddr::from(v6).to_string(),
                Err(_) => format!("IP:{}", hex::encode(bytes)),
            },
        },
        other => other.to_string(),
    }
}

/// Unix seconds as RFC 3339, for messages.
fn rfc3339(unix_seconds: i64) -> String {
    jiff::Timestamp::from_second(unix_seconds).map_or_else(
        |_| format!("{unix_seconds} (Unix seconds)"),
        |t| t.to_string(),
    )
}

fn now_unix_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Parses and checks a pair as read from the files: the chain and key parse, the key
/// belongs to the leaf (the existing `certified_key_from_pem` path), and the leaf is
/// valid at `now` (Unix seconds), with [`NOT_BEFORE_SKEW`] of tolerance on notBefore only.
pub fn validate_pair(
    cert_pem: &[u8],
    cert_source: &str,
    key_pem: &[u8],
    key_source: &str,
    now: i64,
) -> Result<(CertifiedKey, LeafSummary), Rejection> {
    let key = certified_key_from_pem(cert_pem, cert_source, key_pem, key_source)?;
    let Some(leaf) = key.cert.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_source.to_string(),
        }
        .into());
    };
    let summary = summarize_leaf(leaf, cert_source)?;
    if summary.not_after < now {
        return Err(Rejection::Expired {
            path: cert_source.to_string(),
            not_after: rfc3339(summary.not_after),
        });
    }
    let skew = i64::try_from(NOT_BEFORE_SKEW.as_secs()).unwrap_or(i64::MAX);
    if summary.not_before > now.saturating_add(skew) {
        return Err(Rejection::NotYetValid {
            path: cert_source.to_string(),
            not_before: rfc3339(summary.not_before),
        });
    }
    Ok((key, summary))
}

/// Sets the expiry gauge from the certificate new connections get: call it at startup
/// (the reloader also does when it starts).
pub fn observe_serving_certificate(metrics: &CertificateMetrics, key: &CertifiedKey) {
    match key
        .cert
        .first()
        .map(|leaf| summarize_leaf(leaf, "the serving certificate"))
    {
        Some(Ok(summary)) => {
            metrics.expiry.set(summary.not_after);
        }
        Some(Err(error)) => tracing::warn!(%error, "cannot read the serving certificate's expiry"),
        None => tracing::warn!("the serving certificate has no leaf"),
    }
}

/// Identifies what was read from the files: their contents, or why they could not be
/// read. Only hashes are kept, not the private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentDigest([u8; 32]);

impl ContentDigest {
    fn of(read: &Result<(Vec<u8>, Vec<u8>), TlsError>) -> Self {
        let mut hasher = Sha256::new();
        match read {
            Ok((cert, key)) => {
                hasher.update(b"ok");
                hasher.update((cert.len() as u64).to_be_bytes());
                hasher.update(cert);
                hasher.update(key);
            }
            Err(error) => {
                hasher.update(b"err");
                hasher.update(error.to_string().as_bytes());
            }
        }
        Self(hasher.finalize().into())
    }
}

/// What to do with content just read, given what was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The content last put in place (or found in place): nothing to do.
    Unchanged,
    /// The content last refused: checked again (a notBefore may have passed), but not
    /// logged or counted again.
    StillRejected,
    /// Content not seen before.
    New,
}

/// The content last loaded and last refused.
#[derive(Debug, Default)]
struct Tracker {
    loaded: Option<ContentDigest>,
    rejected: Option<ContentDigest>,
}

impl Tracker {
    fn classify(&mut self, digest: ContentDigest) -> Change {
        if self.loaded == Some(digest) {
            // Back to the served content: a broken version coming back is news again.
            self.rejected = None;
            Change::Unchanged
        } else if self.rejected == Some(digest) {
            Change::StillRejected
        } else {
            Change::New
        }
    }

    fn loaded(&mut self, digest: ContentDigest) {
        self.loaded = Some(digest);
        self.rejected = None;
    }

    fn rejected(&mut self, digest: ContentDigest) {
        self.rejected = Some(digest);
    }
}

/// What one check did; returned for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The files hold what is already served.
    Unchanged,
    /// A new pair is now served.
    Loaded,
    /// The files changed but were refused; the previous pair is still served.
    Rejected,
}

/// Watches the serving certificate files and puts each valid new pair in place.
pub struct CertificateReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    certificate: Arc<ServingCertificate>,
    metrics: CertificateMetrics,
    recheck_every: Duration,
    debounce: Duration,
    watch_events: bool,
    tracker: Tracker,
}

impl std::fmt::Debug for CertificateReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateReloader")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("recheck_every", &self.recheck_every)
            .field("debounce", &self.debounce)
            .field("watch_events", &self.watch_events)
            .finish_non_exhaustive()
    }
}

impl CertificateReloader {
    /// Reloads `certificate` from `cert_path` and `key_path` (the paths given on the
    /// command line, symlinks followed), on filesystem events and every
    /// [`DEFAULT_RECHECK_EVERY`].
    pub fn new(
        cert_path: PathBuf,
        key_path: PathBuf,
        certificate: Arc<ServingCertificate>,
        metrics: CertificateMetrics,
    ) -> Self {
        Self {
            cert_path,
            key_path,
            certificate,
            metrics,
            recheck_every: DEFAULT_RECHECK_EVERY,
            debounce: DEFAULT_DEBOUNCE,
            watch_events: true,
            tracker: Tracker::default(),
        }
    }

    /// How often the files are re-read without an event (at least 1 ms).
    #[must_use]
    pub fn recheck_every(mut self, every: Duration) -> Self {
        self.recheck_every = every.max(Duration::from_millis(1));
        self
    }

    /// How long after a first event the files are read.
    #[must_use]
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Whether to watch for filesystem events at all; without them only the periodic
    /// re-check notices a change.
    #[must_use]
    pub fn watch_events(mut self, watch: bool) -> Self {
        self.watch_events = watch;
        self
    }

    /// Runs until dropped (abort its task): watches the directories, sets the expiry
    /// gauge from the served certificate, then checks the files at once, on every
    /// debounced burst of events in their directories and every `recheck_every`. Never
    /// fails: a watch that cannot be set up leaves the periodic re-check.
    pub async fn run(mut self) {
        let dirs = watched_directories([self.cert_path.as_path(), self.key_path.as_path()]);
        let mut rechecks = Rechecks::new(
            self.watch_events.then_some(&dirs),
            "the serving certificate",
            self.recheck_every,
            self.debounce,
        );
        // After the watch is in place, so that a set gauge means no event can be missed.
        let current = self.certificate.current();
        observe_serving_certificate(&self.metrics, &current);
        log_current(&current, &self.cert_path);
        loop {
            rechecks.next().await;
            self.check().await;
        }
    }

    /// Reads the files once and puts their pair in place if it changed and is usable.
    pub async fn check(&mut self) -> CheckOutcome {
        let read = read_pair(&self.cert_path, &self.key_path).await;
        let digest = ContentDigest::of(&read);
        let change = self.tracker.classify(digest);
        if change == Change::Unchanged {
            return CheckOutcome::Unchanged;
        }
        let (cert_source, key_source) = (
            self.cert_path.display().to_string(),
            self.key_path.display().to_string(),
        );
        let (cert, key) = match read {
            Ok(pair) => pair,
            Err(error) => return self.reject(change, digest, &error.into()),
        };
        let (key, summary) =
            match validate_pair(&cert, &cert_source, &key, &key_source, now_unix_seconds()) {
                Ok(valid) => valid,
                Err(error @ (Rejection::Expired { .. } | Rejection::NotYetValid { .. }))
                    if self.is_served(&cert, &cert_source, &key, &key_source) =>
                {
                    // The served pair itself (first check after a start with an expired
                    // certificate): nothing changed, and the start already warned.
                    tracing::debug!(%error, "the served certificate is out of its validity");
                    self.tracker.loaded(digest);
                    return CheckOutcome::Unchanged;
                }
                Err(error) => return self.reject(change, digest, &error),
            };
        self.tracker.loaded(digest);
        if key.cert == self.certificate.current().cert {
            // Rewritten with the same certificate, or the content found at start.
            tracing::debug!(cert = %cert_source, "serving certificate files unchanged");
            return CheckOutcome::Unchanged;
        }
        self.certificate.replace(key);
        self.metrics.expiry.set(summary.not_after);
        self.metrics.observe_reload(RELOAD_LOADED);
        tracing::info!(
            cert = %cert_source,
            subject = %summary.subject,
            sans = %summary.sans.join(","),
            not_before = %rfc3339(summary.not_before),
            not_after = %rfc3339(summary.not_after),
            sha256 = %summary.sha256,
            "serving certificate reloaded; new connections get it"
        );
        CheckOutcome::Loaded
    }

    /// Keeps the served pair; logs and counts the refusal unless it is the one already
    /// refused.
    fn reject(&mut self, change: Change, digest: ContentDigest, error: &Rejection) -> CheckOutcome {
        if change == Change::StillRejected {
            tracing::debug!(%error, "serving certificate files still refused");
        } else {
            self.tracker.rejected(digest);
            self.metrics.observe_reload(RELOAD_REJECTED);
            tracing::error!(
                %error,
                cert = %self.cert_path.display(),
                key = %self.key_path.display(),
                "changed serving certificate refused; still serving the previous one"
            );
        }
        CheckOutcome::Rejected
    }

    /// Whether the files hold the pair already served, validity aside.
    fn is_served(&self, cert: &[u8], cert_source: &str, key: &[u8], key_source: &str) -> bool {
        certified_key_from_pem(cert, cert_source, key, key_source)
            .is_ok_and(|pair| pair.cert == self.certificate.current().cert)
    }
}

fn log_current(current: &CertifiedKey, cert_path: &Path) {
    let Some(Ok(summary)) = current
        .cert
        .first()
        .map(|leaf| summarize_leaf(leaf, "the serving certificate"))
    else {
        return;
    };
    tracing::info!(
        cert = %cert_path.display(),
        subject = %summary.subject,
        sans = %summary.sans.join(","),
        not_after = %rfc3339(summary.not_after),
        "serving certificate; watching its files for a new one"
    );
    if summary.not_after < now_unix_seconds() {
        tracing::warn!(
            not_after = %rfc3339(summary.not_after),
            "the serving certificate has expired"
        );
    }
}

/// Both files, following symlinks. The certificate is read again after the key: if a
/// swap happened between the reads the pair may be torn, so it is read again.
async fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let mut attempt = 1;
    loop {
        let cert = read(cert_path).await?;
        let key = read(key_path).await?;
        let cert_again = read(cert_path).await?;
        if cert == cert_again || attempt >= CONSISTENT_READ_ATTEMPTS {
            return Ok((cert_again, key));
        }
        attempt += 1;
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path)
        .await
        .map_err(|reason| TlsError::Read {
            path: path.display().to_string(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumbing::dev_pki::{DEV_DNS_NAMES, generate_dev_pki};
    use rcgen::{CertificateParams, KeyPair};

    const DAY: i64 = 86_400;

    /// A self-signed leaf valid from `not_before` to `not_after` (Unix seconds).
    fn leaf(not_before: i64, not_after: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["nodeguard.nodeguard.svc".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(not_before.unsigned_abs());
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(not_after.unsigned_abs());
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn validate(cert: &str, key: &str, now: i64) -> Result<LeafSummary, Rejection> {
        validate_pair(cert.as_bytes(), "tls.crt", key.as_bytes(), "tls.key", now).map(|(_, s)| s)
    }

    #[test]
    fn a_good_pair_is_summarized() {
        let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let summary = validate(&pki.cert_pem, &pki.key_pem, now_unix_seconds()).unwrap();
        assert_eq!(summary.subject, "CN=nodeguard.nodeguard.svc");
        assert_eq!(summary.sans, DEV_DNS_NAMES);
        assert!(summary.not_after > now_unix_seconds() + 300 * DAY);
        assert_eq!(summary.sha256.len(), 64);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let other = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let error = validate(&pki.cert_pem, &other.key_pem, now_unix_seconds()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the private key in tls.key does not belong to the certificate in tls.crt"
        );
    }

    #[test]
    fn garbage_and_truncated_certificates_are_refused() {
        let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let now = now_unix_seconds();
        let truncated = &pki.cert_pem[..pki.cert_pem.len() / 2];
        assert!(matches!(
            validate(truncated, &pki.key_pem, now),
            Err(Rejection::Tls(TlsError::BadPem { .. }))
        ));
        assert!(matches!(
            validate("garbage\n", &pki.key_pem, now),
            Err(Rejection::Tls(TlsError::NoCertificate { .. }))
        ));
        let not_der = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let error = validate(not_der, &pki.key_pem, now).unwrap_err();
        assert!(
            matches!(
                error,
                Rejection::Tls(TlsError::UnusableCertificate { .. }) | Rejection::NotX509 { .. }
            ),
            "{error:?}"
        );
        assert!(matches!(
            validate(&pki.cert_pem, "", now),
            Err(Rejection::Tls(TlsError::NoPrivateKey { .. }))
        ));
    }

    #[test]
    fn validity_is_checked_with_skew_on_not_before_only() {
        let now = now_unix_seconds();
        let (cert, key) = leaf(now - 10 * DAY, now - DAY);
        let error = validate(&cert, &key, now).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("the certificate in tls.crt expired at "),
            "{error}"
        );

        let (cert, key) = leaf(now + 60, now + 90 * DAY);
        assert!(
            validate(&cert, &key, now).is_ok(),
            "a minute early is within the skew"
        );

        let (cert, key) = leaf(now + DAY, now + 90 * DAY);
        assert!(matches!(
            validate(&cert, &key, now),
            Err(Rejection::NotYetValid { .. })
        ));
        assert!(
            validate(&cert, &key, now + DAY).is_ok(),
            "valid once its time comes"
        );
    }

    fn digest(cert: &str, key: &str) -> ContentDigest {
        ContentDigest::of(&Ok((cert.as_bytes().to_vec(), key.as_bytes().to_vec())))
    }

    #[test]
    fn contents_are_told_apart_by_both_files_and_by_read_errors() {
        assert_eq!(digest("a", "b"), digest("a", "b"));
        assert_ne!(digest("a", "b"), digest("a", "c"));
        assert_ne!(digest("a", "b"), digest("b", "a"));
        assert_ne!(digest("ab", ""), digest("a", "b"));
        let missing = |path: &str| {
            ContentDigest::of(&Err(TlsError::Read {
                path: path.into(),
                reason: std::io::Error::from(std::io::ErrorKind::NotFound),
            }))
        };
        assert_eq!(missing("tls.crt"), missing("tls.crt"));
        assert_ne!(missing("tls.crt"), missing("tls.key"));
    }

    #[test]
    fn a_change_is_new_once_and_a_refusal_is_counted_once() {
        let mut tracker = Tracker::default();
        let (a, broken, b) = (digest("a", "k"), digest("x", "k"), digest("b", "k"));
        assert_eq!(tracker.classify(a), Change::New);
        tracker.loaded(a);
        assert_eq!(tracker.classify(a), Change::Unchanged);
        assert_eq!(tracker.classify(broken), Change::New);
        tracker.rejected(broken);
        assert_eq!(tracker.classify(broken), Change::StillRejected);
        assert_eq!(tracker.classify(b), Change::New);
        tracker.loaded(b);
        assert_eq!(tracker.classify(b), Change::Unchanged);
        assert_eq!(
            tracker.classify(broken),
            Change::New,
            "broken again is news"
        );
        tracker.rejected(broken);
        assert_eq!(tracker.classify(b), Change::Unchanged);
        assert_eq!(
            tracker.classify(broken),
            Change::New,
            "after the good one came back"
        );
    }

    /// A reloader over files in a fresh directory holding `cert` and `key`, serving them.
    fn reloader_over(cert: &str, key: &str) -> (CertificateReloader, Registry, PathBuf) {
        static DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nodeguard-reload-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        let served = certified_key_from_pem(cert.as_bytes(), "c", key.as_bytes(), "k").unwrap();
        let mut registry = Registry::default();
        let reloader = CertificateReloader::new(
            dir.join("tls.crt"),
            dir.join("tls.key"),
            Arc::new(ServingCertificate::new(served)),
            CertificateMetrics::register(&mut registry),
        );
        (reloader, registry, dir)
    }

    fn rejected(metrics: &Registry) -> usize {
        let text = crate::plumbing::metrics::encode(metrics).unwrap();
        let line = "nodeguard_serving_certificate_reloads_total{result=\"rejected\"} ";
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn each_change_is_loaded_or_refused_once() {
        let first = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let second = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        let (mut reloader, metrics, dir) = reloader_over(&first.cert_pem, &first.key_pem);
        assert_eq!(
            reloader.check().await,
            CheckOutcome::Unchanged,
            "what was loaded at start"
        );
        assert_eq!(reloader.check().await, CheckOutcome::Unchanged);

        std::fs::write(dir.join("tls.key"), &second.key_pem).unwrap();
        assert_eq!(
            reloader.check().await,
            CheckOutcome::Rejected,
            "mismatched pair"
        );
        assert_eq!(reloader.check().await, CheckOutcome::Rejected);
        assert_eq!(rejected(&metrics), 1, "counted once");

        std::fs::remove_file(dir.join("tls.key")).unwrap();
        assert_eq!(
            reloader.check().await,
            CheckOutcome::Rejected,
            "missing key"
        );
        assert_eq!(reloader.check().await, CheckOutcome::Rejected);
        assert_eq!(rejected(&metrics), 2);

        std::fs::write(dir.join("tls.crt"), &second.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &second.key_pem).unwrap();
        assert_eq!(reloader.check().await, CheckOutcome::Loaded);
        assert_eq!(reloader.certificate.current().cert, {
            let pair = certified_key_from_pem(
                second.cert_pem.as_bytes(),
                "c",
                second.key_pem.as_bytes(),
                "k",
            );
            pair.unwrap().cert
        });
        assert_eq!(reloader.check().await, CheckOutcome::Unchanged);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_expired_certificate_served_since_start_is_not_a_refused_change() {
        let now = now_unix_seconds();
        let (cert, key) = leaf(now - 10 * DAY, now - DAY);
        let (mut reloader, metrics, dir) = reloader_over(&cert, &key);
        assert_eq!(reloader.check().await, CheckOutcome::Unchanged);
        assert_eq!(rejected(&metrics), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
