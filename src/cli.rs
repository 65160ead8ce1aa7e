//! The command line: `serve`, `audit`, `demo`, `certs`, `forget`, `config check` and
//! `crd`, with the logging flags they share. Installed as `kubectl-nodeguard`, the
//! binary is a kubectl plugin: `kubectl nodeguard audit`.

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::serve::{self, KubeArgs, ServeArgs};

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
    Serve(Box<ServeArgs>),
    /// Report what the webhook would say about a cluster as it is: collisions between
    /// nodes, how unique each identity field is, ledger conflicts, and each node's verdict
    /// at its next restart. Exit code 0: nothing found, 1: findings, 2: error.
    Audit(Box<crate::audit::AuditArgs>),
    /// Replay the clone scenarios against a local server.
    Demo,
    /// Check a configuration file without running anything.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a development CA and serving certificate for `serve`.
    Certs(CertsArgs),
    /// Clear a node's two-kubelets conflict and the machines refused for its name, once
    /// the copy has its own identity.
    Forget(ForgetArgs),
    /// Print the NodeIdentity CustomResourceDefinition (YAML), as deploy/ ships it.
    Crd,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse FILE as `serve --config` would and print what would be in force; exit code
    /// 1 if it is refused.
    Check {
        /// The YAML configuration file.
        file: std::path::PathBuf,
    },
}

/// Which node's conflict and refused machines to clear, in which cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetArgs {
    /// The node name (the NodeIdentity's name).
    pub node: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Where `nodeguard certs` writes, and for which names.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory for ca.crt, tls.crt and tls.key.
    #[arg(long, default_value = "certs")]
    pub out: std::path::PathBuf,
    /// DNS name of the serving certificate; repeatable. Defaults to the Service's names.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
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
            Command::Audit(args) => crate::audit::run(*args).await,
            Command::Config(ConfigCommand::Check { file }) => Ok(check_config(&file)),
            Command::Serve(args) => serve::run(*args).await.map(|()| 0),
            Command::Demo => crate::demo::run().await.map(|()| 0),
            Command::Certs(args) => {
                let names: Vec<&str> = if args.dns_names.is_empty() {
                    crate::certs::DEV_DNS_NAMES.to_vec()
                } else {
                    args.dns_names.iter().map(String::as_str).collect()
                };
                for path in crate::certs::write_dev_pki(&args.out, &names)? {
                    println!("wrote {}", path.display());
                }
                Ok(0)
            }
            Command::Forget(args) => {
                let client = args.kube.client().await?;
                let api = kube::Api::all(client);
                let outcome = crate::ledger::forget::forget(&api, &args.node)
                    .await
                    .map_err(|error| {
                        anyhow::anyhow!("cannot update NodeIdentity {}: {error}", args.node)
                    })?;
                println!("{}", outcome.describe(&args.node));
                Ok(0)
            }
            Command::Crd => {
                print!("{}", crate::record::crd_yaml()?);
                Ok(0)
            }
        }
    }
}

/// `nodeguard config check FILE`: 0 and what is in force, or 1 and why not.
fn check_config(file: &std::path::Path) -> u8 {
    let source = crate::webhook::settings::ConfigSource {
        file: Some(file.to_path_buf()),
        ..Default::default()
    };
    match source.load() {
        Ok(loaded) => {
            println!("{}: valid (sha256 {})", file.display(), loaded.sha256);
            for line in loaded.config.summary() {
                println!("  {line}");
            }
            0
        }
        Err(error) => {
            println!("{}: refused: {error:#}", file.display());
            1
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
        assert_eq!(args.policy.checks, vec!["hostname=warn", "provider-id=off"]);
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
