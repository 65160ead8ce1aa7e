//! `nodeguard config check FILE`: the configuration file read as `serve --config` reads
//! it, and what would be in force.

use clap::Subcommand;

use crate::config::ConfigSource;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse FILE as `serve --config` would and print what would be in force; exit code
    /// 1 if it is refused.
    Check {
        /// The YAML configuration file.
        file: std::path::PathBuf,
    },
}

impl ConfigCommand {
    /// Runs the command; its exit code.
    pub fn run(&self) -> u8 {
        match self {
            ConfigCommand::Check { file } => check_config(file),
        }
    }
}

/// `nodeguard config check FILE`: 0 and what is in force, or 1 and why not.
fn check_config(file: &std::path::Path) -> u8 {
    let source = ConfigSource {
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
