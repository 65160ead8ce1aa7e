//! Reaching the API server: a kubeconfig file and context, as kubectl takes them, or
//! the in-cluster service account.

use std::path::PathBuf;

use anyhow::Context as _;

/// How to reach the API server.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file; without it, the in-cluster service account, then $KUBECONFIG,
    /// then ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use, as with kubectl's `--context`.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl KubeArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("cannot use context {context:?} of the kubeconfig"))?,
            (None, None) => kube::Config::infer()
                .await
                .context("cannot find a cluster: no usable kubeconfig, and not in a pod")?,
        };
        kube::Client::try_from(config).context("cannot build the Kubernetes client")
    }
}
