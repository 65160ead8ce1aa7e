//! Kubernetes Events about what nodeguard refused, warned about and found, where admins
//! look (`kubectl get events`, `kubectl describe node`).
//!
//! Posting is off the request path: the webhook puts a [`Notice`] on a bounded queue and
//! answers; if the queue is full the notice is dropped and counted, never waited for. One
//! task posts them the way client-go's event broadcaster does (`events.k8s.io/v1`): the
//! first notice of a kind makes an Event; the first repeat updates it into a series
//! (count 2); later repeats only count, and the series is written again every
//! [`SERIES_REFRESH`] while they go on and once more when they stop for
//! [`SERIES_FINISH`]. So a kubelet retrying every few seconds makes one Event whose count
//! rises, not thousands. Distinct notices about one object are limited like the API
//! server's own spam filter: a burst of [`OBJECT_BURST`], then one per [`OBJECT_REFILL`].

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::policy::CheckId;

/// Events about a value another node holds: a refusal, a warning, an audit finding.
pub const COLLISION_REASON: &str = "NodeIdentityCollision";
/// Events about two machines writing one node (the ledger's conflict).
pub const CONFLICT_REASON: &str = "NodeIdentityConflict";

/// The Event reason of a finding: a value another node holds, or a write that
/// contradicts the identity of the node it names.
pub fn reason_of(check: CheckId) -> &'static str {
    match check {
        CheckId::NameTakeover
        | CheckId::IdentityDrift
        | CheckId::TwoKubelets
        | CheckId::CsrFormat => CONFLICT_REASON,
        _ => COLLISION_REASON,
    }
}

/// What became of one Event nodeguard meant to post: the `result` of
/// `nodeguard_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventResult {
    /// A new Event was created.
    Posted,
    /// A series was written with its new count.
    Updated,
    /// Counted into a series without a write.
    Coalesced,
    /// Not posted: over the per-object or overall rate.
    RateLimited,
    /// Not queued: the queue was full or no poster runs.
    Dropped,
    /// The API server refused or did not answer.
    Failed,
}

impl EventResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventResult::Posted => "posted",
            EventResult::Updated => "updated",
            EventResult::Coalesced => "coalesced",
            EventResult::RateLimited => "rate_limited",
            EventResult::Dropped => "dropped",
            EventResult::Failed => "failed",
        }
    }
}

/// `nodeguard_events_total{reason, result}`.
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    events: Family<EventLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    reason: &'static str,
    result: &'static str,
}

impl EventMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "nodeguard_events",
            "Kubernetes Events about refusals, warnings and findings, by reason and result \
             (posted, updated, coalesced into a series, rate_limited, dropped: queue full, failed)",
            metrics.events.clone(),
        );
        metrics
    }

    /// One Event nodeguard meant to post: how it went.
    pub fn observe(&self, reason: &'static str, result: EventResult) {
        self.events
            .get_or_create(&EventLabels {
                reason,
                result: result.as_str(),
            })
            .inc();
    }
}

/// Notices waiting to be posted; more are dropped.
pub const QUEUE_CAPACITY: usize = 1000;
/// A series still receiving repeats is written again this often (client-go: 30 min).
pub const SERIES_REFRESH: Duration = Duration::from_secs(30 * 60);
/// A series with no repeat for this long is finished: written a last time if its count
/// moved, then forgotten (client-go: 6 min).
pub const SERIES_FINISH: Duration = Duration::from_secs(6 * 60);
/// Distinct Events one object may get at once (the API server's spam filter: 25).
pub const OBJECT_BURST: u32 = 25;
/// Then one more per this long (the spam filter: one per 5 min).
pub const OBJECT_REFILL: Duration = Duration::from_secs(5 * 60);
/// New Events across all objects: a burst of this many, then one per
/// [`GLOBAL_REFILL`], so a flood of distinct refusals (CSRs under made-up names) cannot
/// turn into a flood of writes to the API server.
pub const GLOBAL_BURST: u32 = 100;
pub const GLOBAL_REFILL: Duration = Duration::from_millis(200);
/// Series remembered at once; a new one beyond this is not posted.
pub const MAX_SERIES: usize = 4096;
/// The API server refuses a longer note.
const MAX_NOTE_BYTES: usize = 1024;
/// Cluster-scoped objects' Events live here, as the kubelet's own do.
const EVENT_NAMESPACE: &str = "default";

/// One thing to tell admins about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The Node, or the CSR when no Node of that name exists.
    pub regarding: ObjectReference,
    /// Another object involved: the node that already holds the value.
    pub related: Option<ObjectReference>,
    pub reason: &'static str,
    /// What nodeguard did: `Denied`, `Warned`, `Audited`, `RefusedBoot`.
    pub action: &'static str,
    /// The check id: notices of different checks are different Events.
    pub check: &'static str,
    pub note: String,
}

/// A reference to a Node by name (and uid, when it exists).
pub fn node_reference(name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Node".to_string()),
        name: Some(name.to_string()),
        uid: uid.map(str::to_string),
        ..ObjectReference::default()
    }
}

/// A reference to a Pod by `namespace/name`.
pub fn pod_reference(namespaced: &str) -> ObjectReference {
    let (namespace, name) = namespaced.split_once('/').unwrap_or(("", namespaced));
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Pod".to_string()),
        namespace: Some(namespace.to_string()).filter(|n| !n.is_empty()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

/// A reference to a CertificateSigningRequest by name.
pub fn csr_reference(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("certificates.k8s.io/v1".to_string()),
        kind: Some("CertificateSigningRequest".to_string()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

/// The senders' end: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct EventQueue {
    sender: mpsc::Sender<Notice>,
    metrics: EventMetrics,
}

impl EventQueue {
    /// A queue of [`QUEUE_CAPACITY`] and its receiving end, for an [`EventPoster`].
    pub fn new(metrics: EventMetrics) -> (Self, mpsc::Receiver<Notice>) {
        Self::with_capacity(metrics, QUEUE_CAPACITY)
    }

    pub fn with_capacity(metrics: EventMetrics, capacity: usize) -> (Self, mpsc::Receiver<Notice>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender, metrics }, receiver)
    }

    /// Queues the notice, or drops and counts it if the queue is full or no poster runs.
    pub fn post(&self, notice: Notice) {
        let reason = notice.reason;
        if self.sender.try_send(notice).is_err() {
            self.metrics.observe(reason, EventResult::Dropped);
        }
    }
}

/// Events of one kind about one object are one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    regarding: (Option<String>, Option<String>, Option<String>),
    related: Option<(Option<String>, Option<String>)>,
    reason: &'static str,
    action: &'static str,
    check: &'static str,
}

impl SeriesKey {
    fn of(notice: &Notice) -> Self {
        let r = &notice.regarding;
        Self {
            regarding: (r.kind.clone(), r.name.clone(), r.uid.clone()),
            related: notice
                .related
                .as_ref()
                .map(|o| (o.kind.clone(), o.name.clone())),
            reason: notice.reason,
            action: notice.action,
            check: notice.check,
        }
    }
}

#[derive(Debug)]
struct Series {
    event: Event,
    count: i32,
    /// The count the API server has.
    written: i32,
    last_observed: Instant,
    last_observed_time: Timestamp,
    last_written: Instant,
}

/// Tokens for new Events: `burst` at once, one more every `every`.
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
    burst: u32,
    every: Duration,
}

impl Bucket {
    fn full(now: Instant, burst: u32, every: Duration) -> Self {
        Self {
            tokens: burst,
            refilled: now,
            burst,
            every,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let every = self.every.as_millis().max(1);
        let gained = now.duration_since(self.refilled).as_millis() / every;
        if gained > 0 {
            self.tokens = self
                .tokens
                .saturating_add(u32::try_from(gained).unwrap_or(u32::MAX))
                .min(self.burst);
            // Keep the remainder: a refill every `every`, not every call.
            let used = self.every * u32::try_from(gained).unwrap_or(u32::MAX);
            self.refilled = self.refilled.checked_add(used).unwrap_or(now).min(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Posts queued notices as Events, one at a time.
pub struct EventPoster {
    api: Api<Event>,
    controller: String,
    instance: String,
    metrics: EventMetrics,
    series: HashMap<SeriesKey, Series>,
    buckets: HashMap<(Option<String>, Option<String>), Bucket>,
    global: Bucket,
}

impl EventPoster {
    /// Events reported as controller `nodeguard`, instance `instance` (the pod).
    pub fn new(client: kube::Client, instance: &str, metrics: EventMetrics) -> Self {
        Self {
            api: Api::namespaced(client, EVENT_NAMESPACE),
            controller: "nodeguard".to_string(),
            instance: instance.to_string(),
            metrics,
            series: HashMap::new(),
            buckets: HashMap::new(),
            global: Bucket::full(Instant::now(), GLOBAL_BURST, GLOBAL_REFILL),
        }
    }

    /// Posts until the queue's senders are all gone.
    pub async fn run(mut self, mut notices: mpsc::Receiver<Notice>) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(30));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = notices.recv() => match received {
                    Some(notice) => self.handle(notice).await,
                    None => break,
                },
                _ = housekeeping.tick() => self.housekeep().await,
            }
        }
        self.finish_all().await;
    }

    /// Handles one notice: a new Event, a series update, or a count.
    pub async fn handle(&mut self, notice: Notice) {
        let now = Instant::now();
        let key = SeriesKey::of(&notice);
        if let Some(series) = self.series.get_mut(&key) {
            series.count += 1;
            series.last_observed = now;
            // The note of an Event cannot change: the series keeps its first one.
            series.last_observed_time = Timestamp::now();
            if series.written == 1 {
                // The first repeat turns the Event into a series at once, as client-go does.
                self.write_series(&key).await;
            } else {
                self.metrics.observe(notice.reason, EventResult::Coalesced);
            }
            return;
        }
        let object = (notice.regarding.kind.clone(), notice.regarding.name.clone());
        let bucket = self
            .buckets
            .entry(object)
            .or_insert_with(|| Bucket::full(now, OBJECT_BURST, OBJECT_REFILL));
        if self.series.len() >= MAX_SERIES || !bucket.take(now) || !self.global.take(now) {
            self.metrics
                .observe(notice.reason, EventResult::RateLimited);
            return;
        }
        let event = self.event_of(&notice);
        match self.api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                self.metrics.observe(notice.reason, EventResult::Posted);
                let event = Event {
                    metadata: ObjectMeta {
                        name: created.metadata.name.or(event.metadata.name.clone()),
                        namespace: event.metadata.namespace.clone(),
                        ..ObjectMeta::default()
                    },
                    ..event
                };
                self.series.insert(
                    key,
                    Series {
                        event,
                        count: 1,
                        written: 1,
                        last_observed: now,
                        last_observed_time: Timestamp::now(),
                        last_written: now,
                    },
                );
            }
            Err(error) => {
                self.metrics.observe(notice.reason, EventResult::Failed);
                tracing::warn!(
                    %error,
                    reason = notice.reason,
                    object = notice.regarding.name.as_deref().unwrap_or_default(),
                    "could not post an event"
                );
            }
        }
    }

    /// Writes series whose count moved: those still going every [`SERIES_REFRESH`],
    /// those that stopped for [`SERIES_FINISH`] a last time; forgets finished ones.
    pub async fn housekeep(&mut self) {
        let now = Instant::now();
        let mut finished = Vec::new();
        let mut refresh = Vec::new();
        for (key, series) in &self.series {
            let idle = now.duration_since(series.last_observed) >= SERIES_FINISH;
            let moved = series.count > series.written;
            if idle {
                finished.push((key.clone(), moved));
            } else if moved && now.duration_since(series.last_written) >= SERIES_REFRESH {
                refresh.push(key.clone());
            }
        }
        for key in refresh {
            self.write_series(&key).await;
        }
        for (key, moved) in finished {
            if moved {
                self.write_series(&key).await;
            }
            self.series.remove(&key);
        }
        // A bucket refilled to its burst is the same as none.
        self.buckets
            .retain(|_, bucket| now.duration_since(bucket.refilled) < OBJECT_REFILL * OBJECT_BURST);
    }

    /// Writes every series whose count moved (on shutdown).
    async fn finish_all(&mut self) {
        let moved: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, s)| s.count > s.written)
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            self.write_series(&key).await;
        }
    }

    async fn write_series(&mut self, key: &SeriesKey) {
        let Some(series) = self.series.get_mut(key) else {
            return;
        };
        let name = series.event.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "series": EventSeries {
                count: series.count,
                last_observed_time: MicroTime(series.last_observed_time),
            },
        });
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                series.written = series.count;
                series.last_written = Instant::now();
                self.metrics.observe(key.reason, EventResult::Updated);
            }
            Err(error) => {
                self.metrics.observe(key.reason, EventResult::Failed);
                tracing::warn!(%error, event = %name, "could not update an event series");
                if matches!(&error, kube::Error::Api(status) if status.code == 404) {
                    // Deleted meanwhile (Events expire after an hour): start afresh.
                    self.series.remove(key);
                }
            }
        }
    }

    fn event_of(&self, notice: &Notice) -> Event {
        let now = Timestamp::now();
        let object = notice.regarding.name.as_deref().unwrap_or("nodeguard");
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: Some(EVENT_NAMESPACE.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Warning".to_string()),
            reason: Some(notice.reason.to_string()),
            action: Some(notice.action.to_string()),
            note: Some(within_bytes(&notice.note, MAX_NOTE_BYTES)),
            regarding: Some(notice.regarding.clone()),
            related: notice.related.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn within_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_one_per_period() {
        let start = Instant::now();
        let mut bucket = Bucket::full(start, 3, Duration::from_secs(10));
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(!bucket.take(start + Duration::from_secs(9)));
        assert!(bucket.take(start + Duration::from_secs(10)));
        assert!(!bucket.take(start + Duration::from_secs(15)));
        // The remainder carries over: the next token is due at 20 s, not 25 s.
        assert!(bucket.take(start + Duration::from_secs(20)));
        // A long quiet refills to the burst, no more.
        let later = start + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn a_note_is_cut_on_a_character_boundary_within_the_api_servers_limit() {
        let note = "é".repeat(600);
        let cut = within_bytes(&note, MAX_NOTE_BYTES);
        assert!(cut.len() <= MAX_NOTE_BYTES);
        assert!(note.starts_with(&cut));
        assert_eq!(within_bytes("short", MAX_NOTE_BYTES), "short");
    }
}
