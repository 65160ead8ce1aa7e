//! The `nodeguard` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use nodeguard::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = cli.log.init(cli.default_log_level()) {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
