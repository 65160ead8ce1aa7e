//! The `nodeguard` binary: parse the command line, set up logging, run the command.
//! Named `kubectl-nodeguard`, it is a kubectl plugin and says so in its help.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use nodeguard::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let as_plugin = std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().starts_with("kubectl-"))
        })
        .unwrap_or(false);
    let mut command = Cli::command();
    if as_plugin {
        command = command.bin_name("kubectl nodeguard");
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    if let Err(error) = cli.log.init(cli.default_log_level()) {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let error_code = cli.error_code();
    match cli.run().await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(error_code)
        }
    }
}
