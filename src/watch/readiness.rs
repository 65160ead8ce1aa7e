//! Readiness as a fact the code waits on: set once the inventory has finished its
//! first full sync, observed by `/readyz` and by anyone who must wait for it. Shutting
//! down is a second, one-way fact: `/readyz` reports it over the sync, and the watchers,
//! which only ever set the sync, cannot undo it. With [`Views`], the sync also has to be
//! current: a view with nothing received for longer than its bound makes the inventory
//! unknown again until it is.

use std::time::Instant;

use tokio::sync::watch;

use super::freshness::Views;

#[derive(Debug, Clone)]
pub struct Readiness {
    sender: std::sync::Arc<watch::Sender<State>>,
    views: Option<Views>,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    synced: bool,
    shutting_down: bool,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Starts unready.
    pub fn new() -> Self {
        Self {
            sender: std::sync::Arc::new(watch::channel(State::default()).0),
            views: None,
        }
    }

    /// Also requires every view to be current.
    #[must_use]
    pub fn with_views(mut self, views: Views) -> Self {
        self.views = Some(views);
        self
    }

    pub fn views(&self) -> Option<&Views> {
        self.views.as_ref()
    }

    /// Whether decisions can be made on the inventory now: synced, and every view
    /// current. `Err` says why not. Shutting down does not change it: the webhook keeps
    /// deciding while it drains.
    pub fn current(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err(
                "the inventory has not completed its first sync with the API server".to_string(),
            );
        }
        match self
            .views
            .as_ref()
            .and_then(|views| views.stale(Instant::now()))
        {
            Some(stale) => Err(format!("the inventory is not current: {stale}")),
            None => Ok(()),
        }
    }

    /// What `/readyz` answers: `Err` with the reason while shutting down or while the
    /// inventory is not current.
    pub fn check(&self) -> Result<(), String> {
        if self.is_shutting_down() {
            return Err("shutting down".to_string());
        }
        self.current()
    }

    /// Whether the inventory is in sync with the API server.
    pub fn set(&self, ready: bool) {
        self.sender.send_modify(|state| state.synced = ready);
    }

    /// Whether the inventory is in sync with the API server, shutting down or not.
    pub fn is_ready(&self) -> bool {
        self.sender.borrow().synced
    }

    /// Marks the process as shutting down, for good.
    pub fn shut_down(&self) {
        self.sender.send_modify(|state| state.shutting_down = true);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.sender.borrow().shutting_down
    }

    /// Resolves once the inventory is in sync.
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|state| state.synced).await;
    }
}

/// Logs each change of [`Readiness::current`] after the first sync, checked every
/// `every`: a view going stale (at warn, with the reason) and coming back (at info).
/// Runs until aborted.
pub async fn report_changes(readiness: Readiness, every: std::time::Duration) {
    let (mut ever_current, mut current) = (false, false);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match readiness.current() {
            Ok(()) => {
                if ever_current && !current {
                    tracing::info!("the inventory is current again: reviews are decided");
                }
                (ever_current, current) = (true, true);
            }
            Err(reason) => {
                if current {
                    tracing::warn!(
                        %reason,
                        "the inventory is not current: reviews are let through unchecked and /readyz answers 503"
                    );
                }
                current = false;
            }
        }
    }
}
