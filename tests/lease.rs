//! Leader election against the in-memory fake API server, and tests of the fake itself.
//!
//! Leases here last 600 ms (written as 1 s) and are renewed every 100 ms. Nothing asserts
//! on elapsed time: waits are polls bounded by a generous guard, and "does not happen"
//! is checked over a number of the elector's own requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use fake_api::FakeApi;
use nodeguard::plumbing::lease::{Leadership, LeaseConfig, leadership_channel, run_election};

/// Guards against hangs only.
const GUARD: Duration = Duration::from_secs(10);

const NAMESPACE: &str = "nodeguard";
const NAME: &str = "nodeguard-recorder";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/nodeguard/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/nodeguard/leases/nodeguard-recorder";

fn fast(identity: &str) -> LeaseConfig {
    let mut config = LeaseConfig::new(NAMESPACE, NAME, identity);
    config.lease_duration = Duration::from_millis(600);
    config.renew_every = Duration::from_millis(100);
    config
}

/// One replica's election, running on its own task.
struct Elector {
    leadership: Leadership,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Elector {
    fn start(fake: &FakeApi, config: LeaseConfig) -> Self {
        let (sender, leadership) = leadership_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        // Named, so that a test can cut this replica off from the API.
        let client = fake.client_named(&config.identity);
        let task = tokio::spawn(run_election(client, config, sender, shutdown));
        Self {
            leadership,
            stop,
            task,
        }
    }

    fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    async fn until_leader(&self) {
        let mut leadership = self.leadership.clone();
        tokio::time::timeout(GUARD, leadership.wait_until_leader())
            .await
            .expect("never became the leader");
    }

    async fn until_not_leader(&self) {
        let mut leadership = self.leadership.clone();
        tokio::time::timeout(GUARD, leadership.wait_until_not_leader())
            .await
            .expect("never stopped leading");
    }

    /// Sets a flag if this replica ever leads from now on.
    fn watch_for_leadership(&self) -> Arc<AtomicBool> {
        let led = Arc::new(AtomicBool::new(false));
        let mut leadership = self.leadership.clone();
        let flag = led.clone();
        tokio::spawn(async move {
            leadership.wait_until_leader().await;
            flag.store(true, Ordering::SeqCst);
        });
        led
    }

    async fn shut_down(self) -> Leadership {
        let _ = self.stop.send(());
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("the election did not end")
            .expect("the election panicked")
            .expect("the election failed");
        self.leadership
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let waited = tokio::time::timeout(GUARD, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// Waits until `count` more requests of `method` on the lease have been answered: a
/// number of the elector's own periods, without measuring time.
async fn periods(fake: &FakeApi, method: Method, count: usize) {
    let counted = || {
        fake.responses()
            .iter()
            .filter(|(m, path, _)| *m == method && path.starts_with(LEASE))
            .count()
    };
    let target = counted() + count;
    eventually(&format!("{count} more {method} requests"), || {
        counted() >= target
    })
    .await;
}

fn spec(fake: &FakeApi) -> Value {
    fake.get(LEASE).expect("no lease")["spec"].clone()
}

fn holder(fake: &FakeApi) -> Option<String> {
    spec(fake)["holderIdentity"]
        .as_str()
        .filter(|holder| !holder.is_empty())
        .map(str::to_owned)
}

fn micro_time(ago: Duration) -> String {
    let at = jiff::Timestamp::now() - jiff::SignedDuration::try_from(ago).expect("duration");
    at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn seed_lease(fake: &FakeApi, holder: Option<&str>, renewed_ago: Duration, duration_seconds: i32) {
    fake.insert(
        LEASES,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": NAME, "namespace": NAMESPACE },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration_seconds,
                "acquireTime": micro_time(Duration::from_secs(7200)),
                "renewTime": micro_time(renewed_ago),
                "leaseTransitions": 3,
            },
        }),
    );
}

// ---------------------------------------------------------------------------------
// The election.

#[tokio::test]
async fn creates_a_missing_lease_and_leads() {
    let fake = FakeApi::new();
    let a = Elector::start(&fake, fast("a"));
    a.until_leader().await;

    let spec = spec(&fake);
    assert_eq!(spec["holderIdentity"], "a");
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!(spec["leaseDurationSeconds"], 1, "600 ms, rounded up");
    assert_eq!(spec["acquireTime"], spec["renewTime"]);
    assert!(
        fake.responses()
            .iter()
            .any(|(method, path, status)| *method == Method::POST
                && path.starts_with(LEASES)
                && *status == StatusCode::CREATED)
    );

    // It keeps renewing: the renew time moves, the acquire time stays.
    let first = spec["renewTime"].clone();
    periods(&fake, Method::PUT, 3).await;
    let later = self::spec(&fake);
    assert_ne!(later["renewTime"], first);
    assert_eq!(later["acquireTime"], spec["acquireTime"]);
    assert!(a.is_leader());
    a.shut_down().await;
}

#[tokio::test]
async fn does_not_take_a_live_lease_of_another_replica() {
    let fake = FakeApi::new();
    seed_lease(&fake, Some("b"), Duration::ZERO, 30);
    let before = fake.get(LEASE);
    let a = Elector::start(&fake, fast("a"));
    let led = a.watch_for_leadership();

    periods(&fake, Method::GET, 10).await;
    assert!(!a.is_leader());
    assert!(!led.load(Ordering::SeqCst));
    assert_eq!(fake.get(LEASE), before, "a follower does not write");
    a.shut_down().await;
    assert_eq!(fake.get(LEASE), before, "a follower has nothing to release");
}

#[tokio::test]
async fn takes_over_an_expired_lease() {
    let fake = FakeApi::new();
    seed_lease(&fake, Some("gone"), Duration::from_secs(3600), 1);
    let a = Elector::start(&fake, fast("a"));
    a.until_leader().await;

    let spec = spec(&fake);
    assert_eq!(spec["holderIdentity"], "a");
    assert_eq!(spec["leaseTransitions"], 4);
    assert_eq!(spec["acquireTime"], spec["renewTime"], "acquired now");
    a.shut_down().await;
}

#[tokio::test]
async fn two_replicas_never_lead_at_once() {
    let fake = FakeApi::new();
    let a = Elector::start(&fake, fast("a"));
    let b = Elector::start(&fake, fast("b"));
    eventually("one replica leads", || a.is_leader() || b.is_leader()).await;

    for _ in 0..40 {
        let (a_leads, b_leads) = (a.is_leader(), b.is_leader());
        assert!(!(a_leads && b_leads), "both replicas lead");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (leader, follower, leader_id) = if a.is_leader() {
        (a, b, "a")
    } else {
        (b, a, "b")
    };
    assert!(leader.is_leader() && !follower.is_leader());
    assert_eq!(holder(&fake).as_deref(), Some(leader_id));
    assert_eq!(spec(&fake)["leaseTransitions"], 0, "nobody took over");

    // The leader leaves; the other takes over, and still only one leads.
    let mut gone = leader.shut_down().await;
    assert!(!gone.is_leader());
    follower.until_leader().await;
    tokio::time::timeout(GUARD, gone.wait_until_not_leader())
        .await
        .expect("stays not leading");
    follower.shut_down().await;
}

#[tokio::test]
async fn a_conflict_on_takeover_means_another_writer_won() {
    let fake = FakeApi::new();
    // A free lease: the elector tries to take it at once...
    seed_lease(&fake, None, Duration::from_secs(5), 1);
    // ...but another replica writes first.
    fake.before_next_write(LEASE, |lease| {
        lease["spec"]["holderIdentity"] = json!("intruder");
        lease["spec"]["leaseDurationSeconds"] = json!(30);
        lease["spec"]["renewTime"] = json!(micro_time(Duration::ZERO));
    });
    let a = Elector::start(&fake, fast("a"));
    let led = a.watch_for_leadership();

    eventually("the concurrent write", || fake.hooks_done()).await;
    periods(&fake, Method::GET, 5).await;
    assert!(
        fake.responses()
            .iter()
            .any(|(method, path, status)| *method == Method::PUT
                && path.starts_with(LEASE)
                && *status == StatusCode::CONFLICT),
        "the takeover was refused"
    );
    assert!(!a.is_leader());
    assert!(!led.load(Ordering::SeqCst));
    assert_eq!(holder(&fake).as_deref(), Some("intruder"));
    a.shut_down().await;
}

#[tokio::test]
async fn already_exists_on_creation_means_another_replica_created_it() {
    let fake = FakeApi::new();
    // The elector finds no lease, but another replica creates it first.
    fake.before_next_write(LEASE, |lease| {
        *lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": NAME, "namespace": NAMESPACE },
            "spec": {
                "holderIdentity": "b",
                "leaseDurationSeconds": 30,
                "renewTime": micro_time(Duration::ZERO),
                "leaseTransitions": 0,
            },
        });
    });
    let a = Elector::start(&fake, fast("a"));
    let led = a.watch_for_leadership();

    eventually("the concurrent create", || fake.hooks_done()).await;
    periods(&fake, Method::GET, 5).await;
    assert!(
        fake.responses()
            .iter()
            .any(|(method, path, status)| *method == Method::POST
                && path.starts_with(LEASES)
                && *status == StatusCode::CONFLICT),
        "the create was refused"
    );
    assert!(!a.is_leader());
    assert!(!led.load(Ordering::SeqCst));
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    a.shut_down().await;
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_steps_down_before_another_takes_over() {
    let fake = FakeApi::new();
    let a = Elector::start(&fake, fast("a"));
    a.until_leader().await;
    let b = Elector::start(&fake, fast("b"));
    periods(&fake, Method::GET, 3).await;

    // a's renewals hang from now on; b sees the lease go unrenewed and takes it over.
    fake.partition("a");
    let sampled = tokio::time::timeout(GUARD, async {
        while !b.is_leader() {
            assert!(!(a.is_leader() && b.is_leader()), "both replicas lead");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(sampled.is_ok(), "b never took over");
    assert!(!a.is_leader(), "a stepped down first");
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    assert_eq!(spec(&fake)["leaseTransitions"], 1);

    // Back on the network, a finds the lease taken and follows.
    fake.heal("a");
    periods(&fake, Method::GET, 10).await;
    assert!(!a.is_leader());
    assert!(b.is_leader());
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test]
async fn steps_down_when_renewals_fail_past_the_deadline() {
    let fake = FakeApi::new();
    let a = Elector::start(&fake, fast("a"));
    a.until_leader().await;

    fake.fail_always(Method::PUT, LEASE, 500);
    a.until_not_leader().await;
    assert_eq!(
        holder(&fake).as_deref(),
        Some("a"),
        "nobody else wrote the lease"
    );

    // Once the API answers again, its own lease is renewed and it leads again.
    fake.clear_faults();
    a.until_leader().await;
    a.shut_down().await;
}

#[tokio::test]
async fn steps_down_when_a_renewal_hangs_past_the_deadline() {
    let fake = FakeApi::new();
    let a = Elector::start(&fake, fast("a"));
    a.until_leader().await;

    fake.hang_always(Method::PUT, LEASE);
    a.until_not_leader().await;
    fake.clear_faults();
    a.until_leader().await;
    a.shut_down().await;
}

#[tokio::test]
async fn steps_down_when_the_lease_names_another_holder() {
    let fake = FakeApi::new();
    let a = Elector::start(&fake, fast("a"));
    a.until_leader().await;

    // An admin hands the lease to someone else.
    fake.update(LEASE, |lease| {
        lease["spec"]["holderIdentity"] = json!("b");
        lease["spec"]["leaseDurationSeconds"] = json!(30);
        lease["spec"]["renewTime"] = json!(micro_time(Duration::ZERO));
    })
    .expect("no lease");
    a.until_not_leader().await;
    periods(&fake, Method::GET, 5).await;
    assert!(!a.is_leader());
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    a.shut_down().await;
}

#[tokio::test]
async fn shutdown_releases_the_lease_to_the_next_replica_at_once() {
    let fake = FakeApi::new();
    // A lease of 30 s: the second replica leading within the guard shows it did not
    // wait for the lease to expire.
    let slow = |identity: &str| {
        let mut config = fast(identity);
        config.lease_duration = Duration::from_secs(30);
        config
    };
    let a = Elector::start(&fake, slow("a"));
    a.until_leader().await;
    let b = Elector::start(&fake, slow("b"));
    periods(&fake, Method::GET, 3).await;
    assert!(!b.is_leader());

    let a = a.shut_down().await;
    assert!(!a.is_leader());
    b.until_leader().await;
    let spec = spec(&fake);
    assert_eq!(spec["holderIdentity"], "b");
    assert_eq!(spec["leaseTransitions"], 1);
    assert!(
        fake.responses()
            .iter()
            .any(|(method, _, status)| *method == Method::PUT && *status == StatusCode::OK),
    );
    b.shut_down().await;
    assert_eq!(holder(&fake), None, "released");
    assert_eq!(self::spec(&fake)["leaseDurationSeconds"], 1);
}

#[tokio::test]
async fn rejects_a_renew_period_that_cannot_meet_the_deadline() {
    let fake = FakeApi::new();
    let mut config = fast("a");
    config.renew_every = Duration::from_millis(500);
    let (sender, leadership) = leadership_channel();
    let result = run_election(fake.client(), config, sender, std::future::pending()).await;
    assert!(result.is_err());
    assert!(!leadership.is_leader());
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------------
// The fake API itself.

const CONFIGMAPS: &str = "/api/v1/namespaces/ns/configmaps";

fn config_map(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "ns" },
        "data": { "value": data },
    }))
    .expect("config map")
}

#[tokio::test]
async fn fake_create_then_create_again_is_already_exists() {
    let fake = FakeApi::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");

    assert!(api.get_opt("one").await.expect("get").is_none());
    let missing = api.get("one").await.expect_err("missing");
    let kube::Error::Api(status) = missing else {
        panic!("{missing:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, r#"configmaps "one" not found"#);

    let created = api
        .create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let version: u64 = created
        .metadata
        .resource_version
        .as_deref()
        .expect("rv")
        .parse()
        .expect("number");
    assert_eq!(version, fake.revision());

    let again = api
        .create(&PostParams::default(), &config_map("one", "2"))
        .await
        .expect_err("exists");
    let kube::Error::Api(status) = again else {
        panic!("{again:?}")
    };
    assert!(status.is_already_exists());
    assert_eq!(status.code, 409);
    assert_eq!(status.message, r#"configmaps "one" already exists"#);
    let details = status.details.expect("details");
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("one", "configmaps")
    );
    assert_eq!(
        fake.get(&format!("{CONFIGMAPS}/one")).expect("stored")["data"]["value"],
        "1"
    );
}

#[tokio::test]
async fn fake_replace_with_a_stale_version_is_a_conflict() {
    let fake = FakeApi::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");
    let read = api
        .create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect("create");

    let mut first = read.clone();
    first.data = config_map("one", "2").data;
    let written = api
        .replace("one", &PostParams::default(), &first)
        .await
        .expect("replace");
    assert_ne!(
        written.metadata.resource_version,
        read.metadata.resource_version
    );
    assert_eq!(written.metadata.uid, read.metadata.uid);

    let mut stale = read.clone();
    stale.data = config_map("one", "3").data;
    let conflict = api
        .replace("one", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    let kube::Error::Api(status) = conflict else {
        panic!("{conflict:?}")
    };
    assert!(status.is_conflict());
    assert_eq!(status.reason, "Conflict");
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on configmaps \"one\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );

    // A merge patch applies on top; a missing object is a 404.
    let patched = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "extra": "x" } })),
        )
        .await
        .expect("patch");
    let data = patched.data.expect("data");
    assert_eq!((data["value"].as_str(), data["extra"].as_str()), ("2", "x"));
    let missing = api
        .replace("two", &PostParams::default(), &config_map("two", "1"))
        .await
        .expect_err("missing");
    assert!(matches!(missing, kube::Error::Api(status) if status.is_not_found()));

    // Injected faults answer in place of the real thing.
    fake.fail_next(Method::GET, CONFIGMAPS, 503);
    let injected = api.get("one").await.expect_err("injected");
    assert!(matches!(injected, kube::Error::Api(status) if status.code == 503));
    assert!(api.get("one").await.is_ok(), "only the next one");
}

#[tokio::test]
async fn fake_serves_list_and_watch_to_the_watcher() {
    let fake = FakeApi::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");
    for name in ["one", "two", "three"] {
        api.create(&PostParams::default(), &config_map(name, name))
            .await
            .expect("create");
    }
    fake.insert(
        "/api/v1/namespaces/elsewhere/configmaps",
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "other" } }),
    );

    let config = watcher::Config::default().page_size(2);
    let mut events = watcher(api.clone(), config).boxed();
    let mut listed = Vec::new();
    loop {
        let event = tokio::time::timeout(GUARD, events.try_next())
            .await
            .expect("event")
            .expect("ok")
            .expect("open");
        match event {
            watcher::Event::Init => {}
            watcher::Event::InitApply(map) => listed.push(map.metadata.name.expect("name")),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        ["one", "three", "two"],
        "one namespace, over two pages"
    );

    api.create(&PostParams::default(), &config_map("four", "4"))
        .await
        .expect("create");
    api.delete("one", &Default::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(GUARD, events.try_next())
            .await
            .expect("event")
            .expect("ok")
            .expect("open")
        {
            watcher::Event::Apply(map) => {
                seen.push(format!("apply {}", map.metadata.name.expect("name")))
            }
            watcher::Event::Delete(map) => {
                seen.push(format!("delete {}", map.metadata.name.expect("name")))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["apply four", "delete one"]);

    // What kube 5's watcher asks for, with the default config but for the page size.
    let requests: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|(method, _)| *method == Method::GET)
        .map(|(_, target)| target)
        .collect();
    let lists: Vec<&String> = requests
        .iter()
        .filter(|target| target.starts_with(&format!("{CONFIGMAPS}?")))
        .collect();
    assert_eq!(lists[0], &format!("{CONFIGMAPS}?&limit=2"));
    assert!(
        lists[1].starts_with(&format!("{CONFIGMAPS}?&limit=2&continue=")),
        "{}",
        lists[1]
    );
    assert_eq!(
        lists[2],
        &format!(
            "{CONFIGMAPS}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=4"
        )
    );
}

#[tokio::test]
async fn fake_serves_streaming_lists_and_ends_watches_when_dropped() {
    let fake = FakeApi::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");
    api.create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect("create");

    // sendInitialEvents: the state as ADDED events, then a bookmark marking its end.
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(api.clone(), config).boxed();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(GUARD, events.try_next())
            .await
            .expect("event")
            .expect("ok")
            .expect("open")
        {
            watcher::Event::Init => seen.push("init".to_owned()),
            watcher::Event::InitApply(map) => seen.push(map.metadata.name.expect("name")),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["init", "one"]);
    let watch = fake
        .requests()
        .into_iter()
        .map(|(_, target)| target)
        .find(|target| target.contains("watch=true"))
        .expect("a watch");
    assert!(
        watch.contains("sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
        "{watch}"
    );

    // A raw watch stream ends when the fake goes away.
    let mut raw = api
        .watch(&Default::default(), &fake.revision().to_string())
        .await
        .expect("watch")
        .boxed();
    drop(fake);
    let ended = tokio::time::timeout(GUARD, raw.next())
        .await
        .expect("ended");
    assert!(ended.is_none());
}
