//! The command line: `serve`, `audit`, `demo`, `certs`, `forget`, `config check` and
//! `crd`, with the logging flags they share. Installed as `kubectl-nodeguard`, the
//! binary is a kubectl plugin: `kubectl nodeguard audit`.

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::cmd::config::ConfigCommand;
use crate::cmd::{audit, certs, demo, forget, serve};

#[derive(Debug, Parser)]
#[command(
    name = "nodeguard",
    version,
    about = "Admission webhook that refuses Nodes and kubelet CSRs whose identity another node already holds"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook, the cluster watchers and the admin server.
    Serve(Box<serve::ServeArgs>),
    /// Report what the webhook would say about a cluster as it is: collisions between
    /// nodes, how unique each identity field is, ledger conflicts, and each node's verdict
    /// at its next restart. Exit code 0: nothing found, 1: findings, 2: error.
    Audit(Box<audit::AuditArgs>),
    /// Replay the clone scenarios against a local server.
    Demo,
    /// Check a configuration file without running anything.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a development CA and serving certificate for `serve`.
    Certs(certs::CertsArgs),
    /// Clear a node's two-kubelets conflict and the machines refused for its name, once
    /// the copy has its own identity.
    Forget(forget::ForgetArgs),
    /// Print the NodeIdentity CustomResourceDefinition (YAML), as deploy/ ships it.
    Crd,
}

impl Cli {
    /// The log level used when neither `--log-level` nor `RUST_LOG` sets one.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }

    /// The exit code when the command fails: 2 for `audit` (1 means findings there).
    pub fn error_code(&self) -> u8 {
        match self.command {
            Command::Audit(_) => 2,
            _ => 1,
        }
    }

    /// Runs the command; `Ok` carries its exit code.
    pub async fn run(self) -> anyhow::Result<u8> {
        match self.command {
            Command::Audit(args) => audit::run(*args).await,
            Command::Config(command) => Ok(command.run()),
            Command::Serve(args) => serve::run(*args).await.map(|()| 0),
            Command::Demo => demo::run().await.map(|()| 0),
            Command::Certs(args) => certs::run(&args),
            Command::Forget(args) => forget::run(&args).await,
            Command::Crd => {
                print!("{}", crate::record::crd_yaml()?);
                Ok(0)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// Log filter: a level (`debug`) or per-target directives (`info,nodeguard=debug`).
    /// Defaults to `info` for `serve` and `warn` for `demo`, whose output is its report.
    #[arg(long, env = "RUST_LOG", hide_env_values = true, global = true)]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Installs the process-wide subscriber, writing to stderr.
    pub fn init(&self, default_level: &str) -> anyhow::Result<()> {
        let level = self.log_level.as_deref().unwrap_or(default_level);
        let filter =
            EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let installed = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        installed.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn serve_takes_each_parts_flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "nodeguard",
            "serve",
            "--tls-cert",
            "/tls/tls.crt",
            "--tls-key",
            "/tls/tls.key",
            "--check",
            "hostname=warn",
            "--check",
            "provider-id=off",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Json);
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.webhook.listen.to_string(), "[::]:8443");
        assert_eq!(args.admin.admin_listen.to_string(), "[::]:8080");
        assert_eq!(args.webhook.tls_cert, PathBuf::from("/tls/tls.crt"));
        assert_eq!(args.kube.kubeconfig, None);
        assert_eq!(args.config.checks, vec!["hostname=warn", "provider-id=off"]);
    }

    #[test]
    fn serve_requires_a_certificate_and_demo_needs_nothing() {
        assert!(Cli::try_parse_from(["nodeguard", "serve"]).is_err());
        let cli = Cli::try_parse_from(["nodeguard", "demo"]).unwrap();
        assert!(matches!(cli.command, Command::Demo));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
