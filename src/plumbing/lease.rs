//! Leader election on a coordination.k8s.io/v1 Lease, after client-go's leaderelection:
//! the holder renews the lease every `renew_every`; the others take it over only once it
//! is free or has gone unrenewed for its whole duration. Every write is a replace
//! carrying the resourceVersion that was read, so two replicas racing for the lease
//! cannot both win: the API server refuses the second with 409 Conflict.
//!
//! The holder steps down when it has not renewed for the renew deadline (2/3 of the
//! duration), before any other replica may take over; and on shutdown it releases the
//! lease so that another replica takes over at once instead of waiting for expiry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the lease lives, who we are, and the timing of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica, e.g. the pod name; must differ between replicas.
    pub identity: String,
    /// How long a lease stays valid after its last renewal (written, rounded up to whole
    /// seconds, as `leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// Retry period while not leading, renew period while leading.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: a 15 s lease, renewed (or retried) every 5 s, and so a
    /// 10 s renew deadline.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    /// How long the holder keeps leading without a successful renewal. Shorter than the
    /// duration so that it steps down before another replica may take over, with a
    /// margin for the time between our write and the others' reading it.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// `leaseDurationSeconds` as written: rounded up, so others never wait less than we
    /// assume.
    fn lease_duration_seconds(&self) -> i32 {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.identity.is_empty(),
            "the lease identity must not be empty"
        );
        anyhow::ensure!(!self.name.is_empty(), "the lease name must not be empty");
        anyhow::ensure!(
            !self.renew_every.is_zero() && self.renew_every < self.renew_deadline(),
            "renew period {:?} must be non-zero and shorter than the renew deadline {:?} \
             (2/3 of the lease duration {:?}), or the leader would step down between renewals",
            self.renew_every,
            self.renew_deadline(),
            self.lease_duration,
        );
        Ok(())
    }
}

/// Whether this replica currently leads, as the rest of the program sees it. An
/// election that has ended (its task stopped or crashed) holds no lease: from then on
/// this replica does not lead, whatever it last heard.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Keeps a fixed answer's channel open (`always`, `never`).
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leading.has_changed().is_ok() && *self.leading.borrow()
    }

    /// Resolves when this replica leads (at once if it does now); never, once the
    /// election has ended.
    pub async fn wait_until_leader(&mut self) {
        if self.leading.wait_for(|now| *now).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when this replica does not lead: at once if it does not now, or if the
    /// election has ended.
    pub async fn wait_until_not_leader(&mut self) {
        let _ = self.leading.wait_for(|now| !*now).await;
    }

    fn fixed(leading: bool) -> Self {
        let (sender, receiver) = watch::channel(leading);
        Self {
            leading: receiver,
            _fixed: Some(Arc::new(sender)),
        }
    }

    /// Never leads: for tests and a disabled recorder.
    pub fn never() -> Self {
        Self::fixed(false)
    }

    /// Always leads: for tests and the single-replica demo.
    pub fn always() -> Self {
        Self::fixed(true)
    }
}

/// The election's side of a [`Leadership`].
#[derive(Debug)]
pub struct LeaderSender {
    leading: watch::Sender<bool>,
}

impl LeaderSender {
    pub fn subscribe(&self) -> Leadership {
        Leadership {
            leading: self.leading.subscribe(),
            _fixed: None,
        }
    }

    /// Returns whether this changed anything, so that only transitions are logged.
    pub fn set(&self, leading: bool) -> bool {
        self.leading
            .send_if_modified(|now| std::mem::replace(now, leading) != leading)
    }
}

pub fn leadership_channel() -> (LeaderSender, Leadership) {
    let (leading, receiver) = watch::channel(false);
    (
        LeaderSender { leading },
        Leadership {
            leading: receiver,
            _fixed: None,
        },
    )
}

/// Runs the election until `shutdown` resolves; then, if leading, steps down and releases
/// the lease. Only an invalid `config` is an error: API failures are logged and retried.
pub async fn run_election(
    client: kube::Client,
    config: LeaseConfig,
    leading: LeaderSender,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
        leading,
        observed: None,
        held: None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    elector.run(&mut shutdown).await;
    elector.release().await;
    Ok(())
}

// ---------------------------------------------------------------------------------
// The decision, apart from I/O.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    /// No lease exists: create it, naming us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Free, or expired: take it over.
    TakeOver,
    /// Another replica holds a live lease.
    Follow { holder: String },
}

/// What to do with the lease as read. `unchanged_for` is how long this replica has seen
/// this very version of the lease, by its own clock: like client-go, expiry is judged by
/// that rather than by the holder's `renewTime` alone, so a clock running ahead here
/// cannot cut a live holder's lease short. The `renewTime` is checked as well, so a
/// lease renewed within its duration by our clock is never taken either.
fn decide(
    lease: Option<&Lease>,
    identity: &str,
    now: Timestamp,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Action {
    let Some(lease) = lease else {
        return Action::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = match spec.and_then(|spec| spec.holder_identity.as_deref()) {
        None | Some("") => return Action::TakeOver,
        Some(holder) if holder == identity => return Action::Renew,
        Some(holder) => holder,
    };
    let duration = spec
        .and_then(|spec| spec.lease_duration_seconds)
        .and_then(|seconds| u64::try_from(seconds).ok())
        .filter(|seconds| *seconds > 0)
        .map_or(default_duration, Duration::from_secs);
    let renewed_recently = spec
        .and_then(|spec| spec.renew_time.as_ref())
        .is_some_and(|renewed| {
            // Negative when the holder's clock is ahead of ours: still recent.
            now.duration_since(renewed.0)
                < SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
        });
    if renewed_recently || unchanged_for < duration {
        Action::Follow {
            holder: holder.to_owned(),
        }
    } else {
        Action::TakeOver
    }
}

/// A new lease naming us.
fn created(config: &LeaseConfig, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Our lease, renewed: the acquire time and transitions stay.
fn renewed(mut lease: Lease, config: &LeaseConfig, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(config.lease_duration_seconds());
    spec.renew_time = Some(MicroTime(now));
    if spec.acquire_time.is_none() {
        spec.acquire_time = Some(MicroTime(now));
    }
    lease
}

/// Another's (or nobody's) lease, now ours: one more transition.
fn taken_over(mut lease: Lease, config: &LeaseConfig, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(config.lease_duration_seconds());
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    lease
}

/// Our lease, given up: no holder and a 1 s duration, as client-go's ReleaseOnCancel.
fn released(mut lease: Lease, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    lease
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty())
}

// ---------------------------------------------------------------------------------
// The I/O.

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leading: LeaderSender,
    /// The resourceVersion last read and when it was first read, to judge expiry by our
    /// own clock.
    observed: Option<(Option<String>, Instant)>,
    /// Set exactly while leading.
    held: Option<Held>,
}

struct Held {
    /// As our last successful write returned it: the next renewal replaces this version.
    lease: Lease,
    /// When that write was sent; the renew deadline counts from here, which errs early.
    renewed_at: Instant,
}

enum Outcome {
    Leading(Box<Lease>),
    Following(Option<String>),
}

impl Elector {
    async fn run(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) {
        let mut next_attempt = Instant::now();
        loop {
            let deadline = self.deadline();
            tokio::select! {
                biased;
                () = &mut *shutdown => return,
                () = sleep_until(deadline) => {
                    self.step_down("the lease was not renewed within the renew deadline");
                    continue;
                }
                () = tokio::time::sleep_until(next_attempt) => {}
            }
            let started = Instant::now();
            next_attempt = started + self.config.renew_every;
            let timeout = self.config.renew_deadline();
            let outcome = tokio::select! {
                biased;
                () = &mut *shutdown => return,
                () = sleep_until(deadline) => None,
                outcome = tokio::time::timeout(timeout, self.attempt()) => Some(outcome),
            };
            match outcome {
                None => self.step_down("the lease was not renewed within the renew deadline"),
                Some(Ok(Ok(Outcome::Leading(lease)))) => self.lead(*lease, started),
                Some(Ok(Ok(Outcome::Following(holder)))) => {
                    if self.held.is_some() {
                        let holder = holder.as_deref().unwrap_or("another replica");
                        self.step_down(&format!("the lease is now held by {holder}"));
                    }
                }
                Some(Ok(Err(error))) => {
                    tracing::warn!(lease = %self.lease_name(), error = format!("{error:#}"), "lease election attempt failed");
                }
                Some(Err(_elapsed)) => {
                    tracing::warn!(lease = %self.lease_name(), ?timeout, "lease election attempt timed out");
                }
            }
        }
    }

    /// One round: renew what we hold, else read the lease and act on it.
    async fn attempt(&mut self) -> anyhow::Result<Outcome> {
        let params = PostParams::default();
        let name = self.config.name.clone();
        if let Some(held) = &self.held {
            // Optimistic renewal of the version we wrote last, saving a read; if anything
            // else wrote since, this is a 409 and the read below finds out what.
            let lease = renewed(held.lease.clone(), &self.config, Timestamp::now());
            match self.api.replace(&name, &params, &lease).await {
                Ok(lease) => return Ok(Outcome::Leading(Box::new(lease))),
                Err(error) => {
                    tracing::debug!(lease = %self.lease_name(), %error, "optimistic renewal failed; reading the lease")
                }
            }
        }
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|error| anyhow::anyhow!(error).context("reading the lease"))?;
        let unchanged_for = self.observe(current.as_ref());
        let now = Timestamp::now();
        let action = decide(
            current.as_ref(),
            &self.config.identity,
            now,
            unchanged_for,
            self.config.lease_duration,
        );
        let lease = match (action, current) {
            (Action::Follow { holder }, _) => return Ok(Outcome::Following(Some(holder))),
            (Action::Create, _) | (_, None) => {
                return match self.api.create(&params, &created(&self.config, now)).await {
                    Ok(lease) => Ok(Outcome::Leading(Box::new(lease))),
                    // Another replica created it first.
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {
                        Ok(Outcome::Following(None))
                    }
                    Err(error) => Err(anyhow::anyhow!(error).context("creating the lease")),
                };
            }
            (Action::Renew, Some(lease)) => renewed(lease, &self.config, now),
            (Action::TakeOver, Some(lease)) => {
                if let Some(holder) = holder_of(&lease) {
                    tracing::info!(lease = %self.lease_name(), holder, "taking over the expired lease");
                }
                taken_over(lease, &self.config, now)
            }
        };
        match self.api.replace(&name, &params, &lease).await {
            Ok(lease) => Ok(Outcome::Leading(Box::new(lease))),
            // Someone wrote between our read and our write: they win this round.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Outcome::Following(None)),
            Err(error) => Err(anyhow::anyhow!(error).context("writing the lease")),
        }
    }

    /// Records the version read and returns how long we have seen it unchanged.
    fn observe(&mut self, lease: Option<&Lease>) -> Duration {
        let version = lease.and_then(|lease| lease.metadata.resource_version.clone());
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if *seen == version => now.saturating_duration_since(*since),
            _ => {
                self.observed = Some((version, now));
                Duration::ZERO
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.held
            .as_ref()
            .map(|held| held.renewed_at + self.config.renew_deadline())
    }

    fn lead(&mut self, lease: Lease, renewed_at: Instant) {
        self.observed = Some((lease.metadata.resource_version.clone(), Instant::now()));
        self.held = Some(Held { lease, renewed_at });
        if self.leading.set(true) {
            tracing::info!(lease = %self.lease_name(), identity = %self.config.identity, "became the leader");
        }
    }

    fn step_down(&mut self, reason: &str) {
        self.held = None;
        if self.leading.set(false) {
            tracing::info!(lease = %self.lease_name(), identity = %self.config.identity, reason, "stopped leading");
        }
    }

    /// On shutdown: steps down first, so nothing acts as leader once the lease is free,
    /// then clears the holder so another replica takes over at its next attempt.
    async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        self.step_down("shutting down");
        let attempt = async {
            let name = self.config.name.clone();
            let params = PostParams::default();
            let mut lease = held.lease;
            // Two tries: a renewal cut short by the shutdown may have landed after all,
            // changing the version; the lease is still ours to release if it names us.
            for _ in 0..2 {
                match self
                    .api
                    .replace(&name, &params, &released(lease, Timestamp::now()))
                    .await
                {
                    Ok(_) => return Ok(true),
                    Err(kube::Error::Api(status)) if status.is_conflict() => {
                        match self.api.get_opt(&name).await? {
                            Some(current)
                                if holder_of(&current) == Some(self.config.identity.as_str()) =>
                            {
                                lease = current
                            }
                            _ => return Ok(false),
                        }
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(self.config.renew_deadline(), attempt).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.lease_name(), "released the lease"),
            Ok(Ok(false)) => {
                tracing::info!(lease = %self.lease_name(), "the lease was no longer ours to release")
            }
            Ok(Err(error)) => {
                tracing::warn!(lease = %self.lease_name(), %error, "could not release the lease; it will expire")
            }
            Err(_elapsed) => {
                tracing::warn!(lease = %self.lease_name(), "timed out releasing the lease; it will expire")
            }
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "replica-a";
    const DURATION: Duration = Duration::from_secs(15);

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn lease(holder: Option<&str>, renewed_ago_secs: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    now() - SignedDuration::from_secs(renewed_ago_secs),
                )),
                acquire_time: Some(MicroTime(now() - SignedDuration::from_secs(3600))),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            }),
        }
    }

    fn follow(holder: &str) -> Action {
        Action::Follow {
            holder: holder.into(),
        }
    }

    #[test]
    fn creates_a_missing_lease() {
        assert_eq!(
            decide(None, ME, now(), Duration::ZERO, DURATION),
            Action::Create
        );
    }

    #[test]
    fn renews_its_own_lease_even_if_stale() {
        let lease = lease(Some(ME), 3600);
        assert_eq!(
            decide(Some(&lease), ME, now(), Duration::ZERO, DURATION),
            Action::Renew
        );
    }

    #[test]
    fn takes_a_free_lease_at_once() {
        for holder in [None, Some("")] {
            let lease = lease(holder, 0);
            assert_eq!(
                decide(Some(&lease), ME, now(), Duration::ZERO, DURATION),
                Action::TakeOver
            );
        }
    }

    #[test]
    fn follows_a_live_holder() {
        let lease = lease(Some("b"), 2);
        assert_eq!(
            decide(Some(&lease), ME, now(), Duration::from_secs(60), DURATION),
            follow("b")
        );
    }

    #[test]
    fn waits_a_whole_duration_by_its_own_clock_before_taking_over() {
        // Renewed an hour ago by the holder's clock, but just now seen in this version:
        // our clock may be the wrong one.
        let lease = lease(Some("b"), 3600);
        assert_eq!(
            decide(Some(&lease), ME, now(), Duration::ZERO, DURATION),
            follow("b")
        );
        assert_eq!(
            decide(Some(&lease), ME, now(), Duration::from_secs(14), DURATION),
            follow("b")
        );
        assert_eq!(
            decide(Some(&lease), ME, now(), Duration::from_secs(15), DURATION),
            Action::TakeOver
        );
    }

    #[test]
    fn a_renew_time_ahead_of_our_clock_is_live() {
        let lease = lease(Some("b"), -30);
        assert_eq!(
            decide(Some(&lease), ME, now(), Duration::from_secs(60), DURATION),
            follow("b")
        );
    }

    #[test]
    fn uses_the_lease_duration_written_in_the_lease() {
        let mut short = lease(Some("b"), 3600);
        if let Some(spec) = short.spec.as_mut() {
            spec.lease_duration_seconds = Some(2);
        }
        assert_eq!(
            decide(Some(&short), ME, now(), Duration::from_secs(2), DURATION),
            Action::TakeOver
        );
        if let Some(spec) = short.spec.as_mut() {
            spec.lease_duration_seconds = None;
        }
        assert_eq!(
            decide(Some(&short), ME, now(), Duration::from_secs(2), DURATION),
            follow("b")
        );
    }

    #[test]
    fn a_takeover_counts_a_transition_and_a_renewal_does_not() {
        let config = LeaseConfig::new("ns", "l", ME);
        let taken = taken_over(lease(Some("b"), 3600), &config, now());
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.acquire_time, Some(MicroTime(now())));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));

        let renewed = renewed(lease(Some(ME), 5), &config, now());
        let spec = renewed.spec.unwrap();
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(
            spec.acquire_time,
            Some(MicroTime(now() - SignedDuration::from_secs(3600)))
        );
        assert_eq!(spec.renew_time, Some(MicroTime(now())));
    }

    #[test]
    fn a_released_lease_is_free() {
        let released = released(lease(Some(ME), 5), now());
        assert_eq!(holder_of(&released), None);
        assert_eq!(released.spec.unwrap().lease_duration_seconds, Some(1));
    }

    #[test]
    fn config_defaults_and_checks() {
        let mut config = LeaseConfig::new("nodeguard", "nodeguard-recorder", ME);
        assert_eq!(config.lease_duration, Duration::from_secs(15));
        assert_eq!(config.renew_every, Duration::from_secs(5));
        assert_eq!(config.renew_deadline(), Duration::from_secs(10));
        assert_eq!(config.lease_duration_seconds(), 15);
        assert!(config.validate().is_ok());

        config.lease_duration = Duration::from_millis(600);
        assert_eq!(config.lease_duration_seconds(), 1);
        assert!(
            config.validate().is_err(),
            "renewing every 5 s cannot meet a 400 ms deadline"
        );
        config.renew_every = Duration::from_millis(100);
        assert!(config.validate().is_ok());
        config.identity.clear();
        assert!(config.validate().is_err());
    }

    #[tokio::test]
    async fn fixed_leaderships_never_change() {
        let mut always = Leadership::always();
        assert!(always.is_leader());
        always.wait_until_leader().await;
        let mut never = Leadership::never();
        assert!(!never.is_leader());
        never.wait_until_not_leader().await;
        let pending =
            tokio::time::timeout(Duration::from_millis(20), never.wait_until_leader()).await;
        assert!(pending.is_err());
    }

    #[tokio::test]
    async fn the_channel_reports_transitions_only() {
        let (sender, mut leadership) = leadership_channel();
        assert!(!leadership.is_leader());
        assert!(sender.set(true));
        assert!(!sender.set(true));
        leadership.wait_until_leader().await;
        assert!(sender.subscribe().is_leader());
        assert!(sender.set(false));
        leadership.wait_until_not_leader().await;
        drop(sender);
        leadership.wait_until_not_leader().await;
    }
}
