//! The command line: `serve`, `demo`, `certs`, `forget` and `crd`, with the logging
//! flags they share.

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
    /// Replay the clone scenarios against a local server.
    Demo,
    /// Write a development CA and serving certificate for `serve`.
    Certs(CertsArgs),
    /// Clear a node's two-kubelets conflict once the copy has its own identity.
    Forget(ForgetArgs),
    /// Print the NodeIdentity CustomResourceDefinition (YAML), as deploy/ ships it.
    Crd,
}

/// Which node's conflict to clear, in which cluster.
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
            Command::Demo | Command::Certs(_) | Command::Forget(_) | Command::Crd => "warn",
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Demo => crate::demo::run().await,
            Command::Certs(args) => {
                let names: Vec<&str> = if args.dns_names.is_empty() {
                    crate::certs::DEV_DNS_NAMES.to_vec()
                } else {
                    args.dns_names.iter().map(String::as_str).collect()
                };
                for path in crate::certs::write_dev_pki(&args.out, &names)? {
                    println!("wrote {}", path.display());
                }
                Ok(())
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
                Ok(())
            }
            Command::Crd => {
                print!("{}", crate::ledger::record::crd_yaml()?);
                Ok(())
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
    #[arg(long, env = "RUST_LOG", global = true)]
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
