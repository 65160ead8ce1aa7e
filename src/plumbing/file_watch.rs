//! Watching files that an orchestrator replaces whole: a Secret or ConfigMap volume is
//! updated by writing a fresh `..<timestamp>` directory and renaming a `..data` symlink
//! over the old one, so the directories holding the files are watched (inotify through
//! `notify`), not the files, and bursts of events are debounced. The files are re-read
//! periodically too, in case an event is missed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;

/// The `result` of a reload: the changed files are in force.
pub const RELOAD_LOADED: &str = "loaded";
/// The `result` of a reload: the changed files were refused and what was in force stays.
pub const RELOAD_REJECTED: &str = "rejected";

/// The labels of a reload counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

/// A counter of reloads by result, both results present from the start so that `rate()`
/// and alerts see a 0.
pub fn reload_counter() -> Family<ReloadLabels, Counter> {
    let family = Family::<ReloadLabels, Counter>::default();
    for result in [RELOAD_LOADED, RELOAD_REJECTED] {
        let _ = family.get_or_create(&ReloadLabels { result });
    }
    family
}

/// How often the files are re-read even without a filesystem event.
pub const DEFAULT_RECHECK_EVERY: Duration = Duration::from_secs(60);
/// How long after the first event of a burst the files are read: a kubelet swap (new
/// directory, new symlink, rename, old directory removed) takes well under this.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// When to look at watched files again: at once, after each debounced burst of events in
/// their directories, and every `every` in case an event is missed (no inotify on the
/// filesystem, the watch limit reached, the directory itself replaced).
pub struct Rechecks {
    triggered: mpsc::Receiver<()>,
    /// Held for as long as the rechecks are: dropping it stops the watch.
    _watcher: Option<notify::RecommendedWatcher>,
    events_open: bool,
    interval: tokio::time::Interval,
    debounce: Duration,
}

impl Rechecks {
    /// Watches `dirs` (none: periodic rechecks only), naming `what` in warnings.
    pub fn new(
        dirs: Option<&BTreeSet<PathBuf>>,
        what: &str,
        every: Duration,
        debounce: Duration,
    ) -> Self {
        let (events, triggered) = mpsc::channel::<()>(1);
        let watcher = dirs.and_then(|dirs| watch_directories(dirs, events, what, every));
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            triggered,
            events_open: watcher.is_some(),
            _watcher: watcher,
            interval,
            debounce,
        }
    }

    /// Resolves when the files should be read again.
    pub async fn next(&mut self) {
        loop {
            tokio::select! {
                received = self.triggered.recv(), if self.events_open => {
                    if received.is_none() {
                        // The watcher is gone: periodic re-checks only.
                        self.events_open = false;
                        continue;
                    }
                    tokio::time::sleep(self.debounce).await;
                    while self.triggered.try_recv().is_ok() {}
                    return;
                }
                _ = self.interval.tick() => return,
            }
        }
    }
}

/// Sends on `events` (without blocking: a full channel already means "look") whenever
/// something may have changed in one of `dirs`; `None`, after a warning naming `what`,
/// if the directories cannot be watched, leaving the caller's periodic re-read.
pub fn watch_directories(
    dirs: &BTreeSet<PathBuf>,
    events: mpsc::Sender<()>,
    what: &str,
    every: Duration,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => is_relevant(&event.kind),
            // An overflowed queue or the like: look at the files to be sure.
            Err(_) => true,
        };
        if relevant {
            let _ = events.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, ?every, "cannot watch the files of {what}; re-reading them periodically only");
            return None;
        }
    };
    for dir in dirs {
        if let Err(error) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                %error,
                dir = %dir.display(),
                ?every,
                "cannot watch the directory of {what}; re-reading it periodically only"
            );
            return None;
        }
    }
    Some(watcher)
}

/// Events that may mean new content: everything but reads (our own reads open the
/// files, which inotify reports too).
fn is_relevant(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// The directories holding the paths as given (not where their symlinks lead: a swap
/// replaces the targets), each once.
pub fn watched_directories<'a>(paths: impl IntoIterator<Item = &'a Path>) -> BTreeSet<PathBuf> {
    paths
        .into_iter()
        .map(|path| match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes_but_writes_are() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        assert!(!is_relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_relevant(&EventKind::Create(CreateKind::Folder)));
        assert!(is_relevant(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
    }

    #[test]
    fn each_directory_is_watched_once() {
        let dirs =
            watched_directories([Path::new("/etc/tls/tls.crt"), Path::new("/etc/tls/tls.key")]);
        assert_eq!(
            dirs.into_iter().collect::<Vec<_>>(),
            [PathBuf::from("/etc/tls")]
        );
        let dirs = watched_directories([Path::new("tls.crt"), Path::new("/keys/tls.key")]);
        assert_eq!(
            dirs,
            BTreeSet::from([PathBuf::from("."), PathBuf::from("/keys")])
        );
    }
}
