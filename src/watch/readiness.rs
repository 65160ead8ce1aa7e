//! Readiness as a fact the code waits on: set once the inventory has finished its
//! first full sync, observed by `/readyz` and by anyone who must wait for it. Shutting
//! down is a second, one-way fact: `/readyz` reports it over the sync, and the watchers,
//! which only ever set the sync, cannot undo it.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Readiness {
    sender: std::sync::Arc<watch::Sender<State>>,
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
        }
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
