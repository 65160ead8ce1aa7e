//! Readiness as a fact the code waits on: set once the inventory has finished its
//! first full sync, observed by `/readyz` and by anyone who must wait for it.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Readiness {
    sender: std::sync::Arc<watch::Sender<bool>>,
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
            sender: std::sync::Arc::new(watch::channel(false).0),
        }
    }

    pub fn set(&self, ready: bool) {
        self.sender.send_replace(ready);
    }

    pub fn is_ready(&self) -> bool {
        *self.sender.borrow()
    }

    /// Resolves once ready.
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|ready| *ready).await;
    }
}
