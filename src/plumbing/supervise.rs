//! One owner for every long-running task of `serve`, so none can end unnoticed. A task is
//! either *essential* (the watchers, the webhook and admin servers, the recorder, its
//! election, the Event poster): if it ends or panics, the process stops with an error
//! naming it, and the Deployment restarts the pod while the other replica carries on; or
//! *restartable* (the certificate and configuration reloaders, which hold no state worth
//! keeping): made again after a backoff, each restart logged and counted in
//! `nodeguard_task_restarts_total{task}`.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The first wait before a restart; doubled after each quick failure, up to [`MAX_BACKOFF`].
/// `nodeguard_task_restarts_total{task}`.
#[derive(Debug, Clone, Default)]
pub struct TaskMetrics {
    restarts: Family<TaskLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

impl TaskMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "nodeguard_task_restarts",
            "Restarts of a task that ended or panicked (the certificate and configuration reloaders)",
            metrics.restarts.clone(),
        );
        metrics
    }

    /// A supervised task made again after it ended.
    pub fn observe_restart(&self, task: &'static str) {
        self.restarts.get_or_create(&TaskLabels { task }).inc();
    }
}

pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A task that ran this long before ending starts its backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(300);

/// The tasks of one process.
pub struct Supervisor {
    metrics: TaskMetrics,
    essential: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    restartable: Vec<(&'static str, JoinHandle<()>)>,
}

impl Supervisor {
    pub fn new(metrics: TaskMetrics) -> Self {
        Self {
            metrics,
            essential: Vec::new(),
            restartable: Vec::new(),
        }
    }

    /// Runs `task`; its end (or panic) ends the process.
    pub fn essential(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.essential.push((name, tokio::spawn(task)));
    }

    /// Runs `make()` and makes it again whenever it ends or panics, after a backoff.
    pub fn restartable<F, M>(&mut self, name: &'static str, make: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let metrics = self.metrics.clone();
        self.restartable
            .push((name, tokio::spawn(restarting(name, make, metrics))));
    }

    /// Waits until `stop` resolves (`Ok`), or until an essential task ends (`Err`, naming
    /// it and why; logged).
    pub async fn watch(&mut self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        if self.essential.is_empty() {
            stop.await;
            return Ok(());
        }
        let ended = futures::future::select_all(
            self.essential
                .iter_mut()
                .map(|(name, task)| Box::pin(async move { (*name, task.await) })),
        );
        tokio::select! {
            () = stop => Ok(()),
            ((name, outcome), index, _) = ended => {
                self.essential.remove(index);
                let error = match outcome {
                    Ok(Ok(())) => anyhow::anyhow!("{name} stopped"),
                    Ok(Err(error)) => error.context(format!("{name} failed")),
                    Err(join) => anyhow::anyhow!("{name} crashed: {join}"),
                };
                tracing::error!(error = format!("{error:#}"), "an essential task ended; shutting down");
                Err(error)
            }
        }
    }

    /// Takes an essential task out, to stop it in its turn.
    pub fn take(&mut self, name: &str) -> Option<JoinHandle<anyhow::Result<()>>> {
        let index = self.essential.iter().position(|(n, _)| *n == name)?;
        Some(self.essential.remove(index).1)
    }

    /// Stops the restartable tasks.
    pub fn abort_restartable(&mut self) {
        for (_, task) in self.restartable.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for (_, task) in &self.essential {
            task.abort();
        }
        for (_, task) in &self.restartable {
            task.abort();
        }
    }
}

/// Runs `make()` in its own task for ever, making it again after each end or panic.
async fn restarting<F, M>(name: &'static str, mut make: M, metrics: TaskMetrics)
where
    M: FnMut() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::spawn(make()).await;
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        match outcome {
            Ok(()) => tracing::warn!(task = name, ?backoff, "task stopped; restarting it"),
            Err(join) => {
                tracing::error!(task = name, error = %join, ?backoff, "task crashed; restarting it");
            }
        }
        metrics.observe_restart(name);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn supervisor() -> (Supervisor, Registry) {
        let mut registry = Registry::default();
        (
            Supervisor::new(TaskMetrics::register(&mut registry)),
            registry,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_restartable_task_that_ends_or_panics_is_made_again_with_backoff() {
        let (mut supervisor, metrics) = supervisor();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        supervisor.restartable("the flaky reloader", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run % 2 == 1 {
                    panic!("run {run} panics");
                }
            }
        });
        // 1 + 2 + 4 + 8 s of backoff: five runs within 16 s.
        let outcome = supervisor
            .watch(tokio::time::sleep(Duration::from_millis(15_500)))
            .await;
        assert!(outcome.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        let text = crate::plumbing::metrics::encode(&metrics).unwrap();
        assert!(
            text.contains("nodeguard_task_restarts_total{task=\"the flaky reloader\"} 5"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_essential_task_that_ends_panics_or_fails_stops_the_supervisor_naming_it() {
        for (task, expected) in [
            (
                Box::pin(async { Ok(()) })
                    as std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
                "the recorder stopped",
            ),
            (
                Box::pin(async { anyhow::bail!("the API said no") }),
                "the recorder failed: the API said no",
            ),
            (Box::pin(async { panic!("boom") }), "the recorder crashed"),
        ] {
            let (mut supervisor, _) = supervisor();
            supervisor.essential("the webhook server", std::future::pending());
            supervisor.essential("the recorder", task);
            let error = supervisor.watch(std::future::pending()).await.unwrap_err();
            assert!(format!("{error:#}").starts_with(expected), "{error:#}");
            assert!(supervisor.take("the webhook server").is_some());
            assert!(supervisor.take("the recorder").is_none(), "it is gone");
        }
    }

    #[tokio::test]
    async fn the_stop_signal_ends_the_watch_with_every_task_still_there() {
        let (mut supervisor, _) = supervisor();
        supervisor.essential("the watchers", std::future::pending());
        assert!(supervisor.watch(async {}).await.is_ok());
        assert!(supervisor.take("the watchers").is_some());
    }
}
