//! `nodeguard demo`: the clone scenarios replayed against the real server.

pub mod kubelet;
pub mod scenarios;

/// Runs the demo; see the README.
pub async fn run() -> anyhow::Result<()> {
    anyhow::bail!("the demo is not available in this build")
}
