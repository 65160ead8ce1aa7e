//! `nodeguard serve`: the watchers keep the inventory current, the webhook answers
//! reviews from it, the admin server reports on both, and the replica holding the
//! lease records identities in the ledger. The first SIGTERM or SIGINT drains the
//! servers and hands the lease over; a second one stops at once.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::admin::{self, AdminArgs, AdminState, Metrics};
use crate::inventory::SharedInventory;
use crate::ledger::lease::{self, LeaseConfig};
use crate::ledger::recorder::{self, Recorder};
use crate::policy::Config;
use crate::watch::{self, Readiness};
use crate::webhook::{self, AppState, WebhookArgs};

/// Everything `nodeguard serve` needs, each part with its own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

/// Who records the ledger: the replica holding a Lease in nodeguard's namespace.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// Namespace of the recorder's Lease (the pod's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "nodeguard")]
    pub namespace: String,
    /// Name of the Lease that elects the recorder.
    #[arg(long, default_value = "nodeguard-recorder")]
    pub lease_name: String,
    /// This replica's name in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl LedgerArgs {
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "nodeguard".to_string());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// How to reach the API server.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file; without it, the in-cluster service account, then $KUBECONFIG,
    /// then ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

impl KubeArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer()
                .await
                .context("cannot find a cluster: not in a pod, and no usable kubeconfig")?,
        };
        kube::Client::try_from(config).context("cannot build the Kubernetes client")
    }
}

/// Which checks run, and how.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// YAML file with check modes and fleet-wide shared values.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Sets one check's mode on top of the file, e.g. `--check hostname=warn`;
    /// repeatable. Modes: enforce, warn, off.
    #[arg(long = "check", value_name = "CHECK=MODE")]
    pub checks: Vec<String>,
}

impl PolicyArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Config::from_yaml(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => Config::default(),
        };
        for setting in &self.checks {
            config
                .apply_setting(setting)
                .with_context(|| format!("--check {setting}"))?;
        }
        Ok(config)
    }
}

/// Runs until a signal, or until a part fails.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Arc::new(args.policy.load()?);
    tracing::info!(checks = %config.describe(), "check modes");
    let (tls, _serving_certificate) =
        webhook::tls::server_config_from_files(&args.webhook.tls_cert, &args.webhook.tls_key)?;
    let client = args.kube.client().await?;

    let webhook_listener = bind(args.webhook.listen, "webhook").await?;
    let admin_listener = bind(args.admin.admin_listen, "admin").await?;
    tracing::info!(
        webhook = %args.webhook.listen,
        admin = %args.admin.admin_listen,
        "listening"
    );

    let inventory = SharedInventory::default();
    let readiness = Readiness::new();
    let metrics = Arc::new(Metrics::new());
    let drain = Drain::new();
    let mut signals = Signals::new()?;

    let identity = args.ledger.identity();
    let (observations, observed) = recorder::observations();
    let (leading, leadership) = lease::leadership_channel();
    let mut watcher = tokio::spawn(watch::run(
        client.clone(),
        inventory.clone(),
        readiness.clone(),
        Some(observations),
    ));
    let recorder = Recorder::new(
        client.clone(),
        inventory.clone(),
        Arc::clone(&metrics),
        &identity,
    );
    let recording = tokio::spawn(recorder.run(observed, leadership));
    let lease_config = LeaseConfig::new(
        args.ledger.namespace.clone(),
        args.ledger.lease_name.clone(),
        identity,
    );
    let election = tokio::spawn(lease::run_election(
        client,
        lease_config,
        leading,
        drain.signaled(),
    ));
    let webhook_router = webhook::router(AppState {
        inventory: inventory.clone(),
        config,
        metrics: Arc::clone(&metrics),
    });
    let mut webhook_server = tokio::spawn(webhook::serve_tls(
        webhook_listener,
        tls,
        webhook_router,
        drain.signaled(),
    ));
    let admin_router = admin::router(AdminState {
        inventory,
        readiness,
        metrics,
    });
    let mut admin_server =
        tokio::spawn(admin::serve(admin_listener, admin_router, drain.signaled()));

    let failure = tokio::select! {
        () = signals.next() => {
            tracing::info!("signal received: draining (a second signal stops at once)");
            None
        }
        outcome = &mut watcher => Some(stopped("the cluster watchers", outcome)),
        outcome = &mut webhook_server => Some(stopped("the webhook server", outcome)),
        outcome = &mut admin_server => Some(stopped("the admin server", outcome)),
    };
    drain.start();
    watcher.abort();
    recording.abort();
    let servers = async {
        // A server that already stopped reports a finished (or failed) task here;
        // its failure is the one already being returned. The election releases the
        // lease, so another replica records at once.
        let _ = tokio::join!(webhook_server, admin_server, election);
    };
    tokio::select! {
        () = servers => tracing::info!("stopped"),
        () = signals.next() => tracing::warn!("second signal: stopping without finishing the drain"),
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} server"))
}

/// The error to exit with when a part that should run forever stops.
fn stopped(
    part: &str,
    outcome: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Error {
    let error = match outcome {
        Ok(Ok(())) => anyhow::anyhow!("{part} stopped"),
        Ok(Err(error)) => error.context(format!("{part} failed")),
        Err(join_error) => anyhow::anyhow!("{part} crashed: {join_error}"),
    };
    tracing::error!(error = format!("{error:#}"), "shutting down");
    error
}

/// The drain signal every server watches.
struct Drain(tokio::sync::watch::Sender<bool>);

impl Drain {
    fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    fn start(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the drain starts.
    fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            // The sender outlives every server, so the channel cannot close first; if it
            // did, stopping is the right thing anyway.
            let _ = receiver.wait_for(|draining| *draining).await;
        }
    }
}

/// SIGTERM (what the kubelet sends) and SIGINT (Ctrl-C).
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CheckId, Mode};

    #[test]
    fn check_flags_apply_on_top_of_the_config_file() {
        let dir = std::env::temp_dir().join(format!("nodeguard-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "checks:\n  hostname: warn\n  provider-id: off\n").unwrap();
        let args = PolicyArgs {
            config_file: Some(file),
            checks: vec!["provider-id=enforce".into(), "internal-ip=warn".into()],
        };
        let config = args.load().unwrap();
        assert_eq!(config.mode(CheckId::Hostname), Mode::Warn);
        assert_eq!(config.mode(CheckId::ProviderId), Mode::Enforce);
        assert_eq!(config.mode(CheckId::InternalIp), Mode::Warn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_check_flag_names_itself() {
        let args = PolicyArgs {
            config_file: None,
            checks: vec!["hostname=loud".into()],
        };
        let error = format!("{:#}", args.load().unwrap_err());
        assert_eq!(
            error,
            "--check hostname=loud: unknown mode \"loud\"; use enforce, warn or off"
        );
    }
}
