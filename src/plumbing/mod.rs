//! Plumbing that knows nothing of nodeguard: serving HTTPS with bounded connections and
//! a draining shutdown, TLS and its certificate reload, watching files, the admin
//! server, the metrics registry, a Lease election, supervised tasks, signals.

pub mod admin;
pub mod certificate_reload;
pub mod dev_pki;
pub mod file_watch;
pub mod https;
pub mod kube_client;
pub mod lease;
pub mod metrics;
pub mod shutdown;
pub mod supervise;
pub mod tls;
