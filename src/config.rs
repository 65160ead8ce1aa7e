//! The configuration in force, and its reload. In a cluster the file comes from a
//! ConfigMap volume, which the kubelet updates by swapping a `..data` symlink, as for the
//! serving certificate: its directory is watched and the file re-read every minute too.
//! A changed file is put in force only when it parses whole; otherwise the previous
//! configuration stays, the refusal is logged at error and counted once per content,
//! and `nodeguard_config_info` keeps naming the file in force.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::plumbing::file_watch::{
    DEFAULT_DEBOUNCE, DEFAULT_RECHECK_EVERY, Rechecks, watched_directories,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::plumbing::file_watch::{RELOAD_LOADED, RELOAD_REJECTED, ReloadLabels, reload_counter};
use crate::policy::Config;
use crate::policy::config::parse_heartbeat_timeout;

/// Which checks run, and how.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// YAML file with check modes and fleet-wide shared values.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Sets one check's mode on top of the file, e.g. `--check hostname=warn`;
    /// repeatable. Modes: enforce, warn, off.
    #[arg(long = "check", value_name = "CHECK=MODE")]
    pub checks: Vec<String>,
    /// How long a Ready node may go without a status write from its kubelet and still
    /// count as running (default 10m, or the file's heartbeatTimeout): a machine refused
    /// in favour of a node that stops writing is let through after at most this long.
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_timeout: Option<String>,
}

impl ConfigArgs {
    /// Where the configuration comes from, re-read at every reload.
    pub fn source(&self) -> ConfigSource {
        ConfigSource {
            file: self.config_file.clone(),
            checks: self.checks.clone(),
            heartbeat_timeout: self.heartbeat_timeout.clone(),
        }
    }

    pub fn load(&self) -> anyhow::Result<Config> {
        Ok(self.source().load()?.config)
    }
}

/// The configuration in force and its reloads.
#[derive(Debug, Clone)]
pub struct ConfigMetrics {
    reloads: Family<ReloadLabels, Counter>,
    in_force: Family<ConfigLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConfigLabels {
    sha256: String,
    mode: &'static str,
}

impl ConfigMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reloads: reload_counter(),
            in_force: Family::default(),
        };
        registry.register(
            "nodeguard_config_reloads",
            "Changed configuration files seen, by result (loaded, rejected: the previous configuration stays)",
            metrics.reloads.clone(),
        );
        registry.register(
            "nodeguard_config_info",
            "1 for the configuration in force: the SHA-256 of its file (empty without one) and its global mode",
            metrics.in_force.clone(),
        );
        metrics
    }

    fn observe_reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The configuration now in force: its file's SHA-256 (empty for none) and mode.
    pub fn set_in_force(&self, sha256: &str, mode: &'static str) {
        self.in_force.clear();
        self.in_force
            .get_or_create(&ConfigLabels {
                sha256: sha256.to_string(),
                mode,
            })
            .set(1);
    }
}

/// The configuration every request reads: swapped whole, never changed in place, so a
/// request decides on one configuration from start to end.
#[derive(Debug, Clone)]
pub struct SharedConfig(Arc<RwLock<(Arc<Config>, String)>>);

impl SharedConfig {
    pub fn new(config: Config) -> Self {
        Self(Arc::new(RwLock::new((Arc::new(config), String::new()))))
    }

    /// The configuration as loaded, with the SHA-256 of its file.
    pub fn loaded(loaded: Loaded) -> Self {
        Self(Arc::new(RwLock::new((
            Arc::new(loaded.config),
            loaded.sha256,
        ))))
    }

    pub fn current(&self) -> Arc<Config> {
        // A writer that panicked left a whole value in place: still a valid config.
        let slot = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&slot.0)
    }

    /// What is in force, as a reloader starting now must know it.
    pub fn in_force(&self) -> Loaded {
        let slot = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Loaded {
            config: (*slot.0).clone(),
            sha256: slot.1.clone(),
        }
    }

    pub fn replace(&self, loaded: Loaded) {
        let value = (Arc::new(loaded.config), loaded.sha256);
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

/// Where the configuration comes from: an optional YAML file, then `--check` and
/// `--heartbeat-timeout` on top of it, applied again at every reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub checks: Vec<String>,
    pub heartbeat_timeout: Option<String>,
}

/// A configuration as read, with the SHA-256 of its file (empty without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    pub sha256: String,
}

impl ConfigSource {
    /// Reads the file and applies the flags on top; an error names the file or flag.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let (text, sha256) = match &self.file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let sha256 = hex::encode(Sha256::digest(&bytes));
                let text = String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
                (Some(text), sha256)
            }
            None => (None, String::new()),
        };
        let mut config = match (&text, &self.file) {
            (Some(text), Some(path)) => {
                Config::from_yaml(text).with_context(|| format!("in {}", path.display()))?
            }
            _ => Config::default(),
        };
        for setting in &self.checks {
            config
                .apply_setting(setting)
                .with_context(|| format!("--check {setting}"))?;
        }
        if let Some(timeout) = &self.heartbeat_timeout {
            config.set_heartbeat_timeout(
                parse_heartbeat_timeout(timeout).context("--heartbeat-timeout")?,
            );
        }
        Ok(Loaded { config, sha256 })
    }
}

/// What one look at the file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Loaded,
    Rejected,
}

/// Watches the configuration file and puts each valid new version in force.
pub struct ConfigReloader {
    source: ConfigSource,
    shared: SharedConfig,
    metrics: ConfigMetrics,
    /// The content last seen: in force, or refused (so a refusal is counted once).
    last_seen: Option<String>,
    recheck_every: Duration,
}

impl ConfigReloader {
    /// `in_force` is what `shared` holds now, as loaded at startup.
    pub fn new(
        source: ConfigSource,
        in_force: &Loaded,
        shared: SharedConfig,
        metrics: ConfigMetrics,
    ) -> Self {
        metrics.set_in_force(&in_force.sha256, in_force.config.global_mode().as_str());
        Self {
            source,
            shared,
            metrics,
            last_seen: Some(in_force.sha256.clone()),
            recheck_every: DEFAULT_RECHECK_EVERY,
        }
    }

    #[must_use]
    pub fn recheck_every(mut self, every: Duration) -> Self {
        self.recheck_every = every.max(Duration::from_millis(1));
        self
    }

    /// Runs until its task is aborted; without a file there is nothing to watch.
    pub async fn run(mut self) {
        let Some(file) = self.source.file.clone() else {
            return std::future::pending().await;
        };
        let mut rechecks = Rechecks::new(
            Some(&watched_directories([file.as_path()])),
            "the configuration",
            self.recheck_every,
            DEFAULT_DEBOUNCE,
        );
        loop {
            rechecks.next().await;
            self.check();
        }
    }

    /// Reads the file once; puts it in force if it changed and is valid.
    pub fn check(&mut self) -> ReloadOutcome {
        let Some(file) = self.source.file.as_ref() else {
            return ReloadOutcome::Unchanged;
        };
        let digest = std::fs::read(file)
            .map(|bytes| hex::encode(Sha256::digest(&bytes)))
            .unwrap_or_else(|error| format!("unreadable: {error}"));
        if self.last_seen.as_deref() == Some(digest.as_str()) {
            return ReloadOutcome::Unchanged;
        }
        self.last_seen = Some(digest);
        match self.source.load() {
            Ok(loaded) => {
                tracing::info!(
                    file = %file.display(),
                    sha256 = %loaded.sha256,
                    mode = loaded.config.global_mode().as_str(),
                    checks = %loaded.config.describe(),
                    "configuration reloaded"
                );
                self.metrics
                    .set_in_force(&loaded.sha256, loaded.config.global_mode().as_str());
                self.metrics.observe_reload(RELOAD_LOADED);
                self.shared.replace(loaded);
                ReloadOutcome::Loaded
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    file = %file.display(),
                    "changed configuration refused; the previous one stays in force"
                );
                self.metrics.observe_reload(RELOAD_REJECTED);
                ReloadOutcome::Rejected
            }
        }
    }
}
