//! Honest readiness: the watchers, driven by the real `kube` client over the fake API,
//! with each view's freshness measured on the wire. A view with nothing received (no
//! response, event or bookmark) for longer than its bound makes `/readyz` and the
//! webhook treat the inventory as unknown; at every step the inventory ends correct.
//! The fake sends bookmarks as the API server's watch cache does: only to a watch the
//! collection's resourceVersion has moved past, so a quiet collection gets none.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;

use std::time::Duration;

use http_body_util::BodyExt;
use nodeguard::config::SharedConfig;
use nodeguard::inventory::SharedInventory;
use nodeguard::metrics::Metrics;
use nodeguard::watch::{self, Readiness, Views};
use nodeguard::webhook::{self, AppState};
use nodeguard_testkit::kubelet::{self, Machine, Write};
use serde_json::Value;
use tower::ServiceExt;

const NODES: &str = "/api/v1/nodes";
/// Short, so the tests wait a second or two where a cluster waits a minute and a half;
/// its watches are reopened every second (`timeoutSeconds` is whole seconds).
const STALE_AFTER: Duration = Duration::from_millis(1500);

struct Replica {
    inventory: SharedInventory,
    readiness: Readiness,
    router: axum::Router,
    watcher: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(api: &fake_api::FakeApi) -> Replica {
    let views = Views::new(STALE_AFTER);
    let inventory = SharedInventory::default();
    let readiness = Readiness::new().with_views(views.clone());
    let watcher = tokio::spawn(watch::run(
        views.wrap(api.client()),
        inventory.clone(),
        readiness.clone(),
        None,
    ));
    let router = webhook::router(AppState {
        inventory: inventory.clone(),
        config: SharedConfig::default(),
        metrics: Metrics::new().admission,
        events: None,
        readiness: Some(readiness.clone()),
        refusals: None,
    });
    Replica {
        inventory,
        readiness,
        router,
        watcher,
    }
}

fn node(machine: &Machine) -> Value {
    kubelet::node_object(machine)
}

fn worker(i: u8) -> Machine {
    Machine::new(
        &format!("worker-{i}"),
        0x10 + i,
        &format!("10.0.0.{}", 10 + i),
    )
}

/// Waits until `condition` holds, polling; fails after 30 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn names(inventory: &SharedInventory) -> Vec<String> {
    let mut names: Vec<String> =
        inventory.read(|inv| inv.nodes().map(|n| n.name.to_string()).collect());
    names.sort();
    names
}

/// A clone of worker-1 registering as worker-9: what the webhook answers.
async fn clone_registers(router: &axum::Router) -> Value {
    let mut clone = worker(9);
    clone.machine_id = worker(1).machine_id;
    let review = kubelet::node_review(
        "u",
        Write::Create,
        &node(&clone),
        None,
        "system:node:worker-9",
    );
    let request = http::Request::post("/validate/nodes")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(review.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
}

fn populated() -> fake_api::FakeApi {
    let api = fake_api::FakeApi::new();
    api.bookmark_every(Duration::from_millis(100));
    api.insert(NODES, node(&worker(1)));
    api.insert(NODES, node(&worker(2)));
    api
}

fn watches_of(api: &fake_api::FakeApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|(method, target)| {
            method == http::Method::GET
                && target.starts_with(&format!("{path}?"))
                && target.contains("watch=true")
        })
        .count()
}

#[tokio::test]
async fn a_quiet_collection_gets_no_bookmark_and_its_view_stays_current_by_new_watches() {
    let api = populated();
    let replica = start(&api);
    until("ready", || replica.readiness.current().is_ok()).await;
    let watches = watches_of(&api, NODES);
    // Three bounds with no change at all: no bookmark either, as on a real API server
    // where nothing writes the collection (CSRs, most of the day).
    for _ in 0..6 {
        tokio::time::sleep(STALE_AFTER / 2).await;
        assert_eq!(replica.readiness.current(), Ok(()));
    }
    assert!(
        watches_of(&api, NODES) >= watches + 3,
        "each watch is ended by the API server within the bound and made again"
    );
    assert!(
        api.requests()
            .iter()
            .any(|(_, target)| target.starts_with(NODES) && target.contains("timeoutSeconds=1")),
        "{:?}",
        api.requests()
    );
    assert_eq!(clone_registers(&replica.router).await["allowed"], false);
    replica.watcher.abort();
}

#[tokio::test]
async fn an_api_server_that_stops_answering_mid_watch_makes_the_view_unknown_until_it_answers() {
    let api = populated();
    let replica = start(&api);
    until("ready", || replica.readiness.current().is_ok()).await;
    assert_eq!(clone_registers(&replica.router).await["allowed"], false);

    api.stall();
    until("stale", || replica.readiness.current().is_err()).await;
    let reason = replica.readiness.current().unwrap_err();
    assert!(reason.contains("nothing received for"), "{reason}");
    assert_eq!(replica.readiness.check(), Err(reason.clone()));
    // Not refused on a view that may be out of date: let through, unchecked, and said so.
    let answer = clone_registers(&replica.router).await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(
        answer["warnings"][0],
        "nodeguard: not checked: this replica's view of the cluster is not current"
    );

    // worker-1 is deleted and worker-3 joins while the API server is silent.
    api.delete(&format!("{NODES}/worker-1"));
    api.insert(NODES, node(&worker(3)));
    assert_eq!(names(&replica.inventory), ["worker-1", "worker-2"]);
    api.resume();
    until("current again", || replica.readiness.current().is_ok()).await;
    until("the changes of the silence", || {
        names(&replica.inventory) == ["worker-2", "worker-3"]
    })
    .await;
    // worker-1 is gone: its machine-id is free again.
    assert_eq!(clone_registers(&replica.router).await["allowed"], true);
    replica.watcher.abort();
}

#[tokio::test]
async fn a_watch_that_ends_and_a_410_relist_keep_the_inventory_correct_and_current() {
    let api = populated();
    let replica = start(&api);
    until("ready", || replica.readiness.current().is_ok()).await;

    // The API server ends the watches (a timeout, a restart): they are made again.
    api.insert(NODES, node(&worker(3)));
    api.end_watches();
    until("worker-3", || names(&replica.inventory).len() == 3).await;
    assert_eq!(replica.readiness.current(), Ok(()));

    // The next watch is told its resourceVersion is too old (410 Expired, as the API
    // server's watch cache sends it, in the stream): a full list again, which drops
    // what was deleted meanwhile.
    let node_lists = || {
        api.requests()
            .iter()
            .filter(|(method, target)| {
                method == http::Method::GET
                    && target.starts_with(&format!("{NODES}?"))
                    && !target.contains("watch=true")
            })
            .count()
    };
    let lists_before = node_lists();
    api.expire_next_watch(NODES);
    api.delete(&format!("{NODES}/worker-2"));
    api.end_watches();
    until("the relist", || {
        node_lists() > lists_before && names(&replica.inventory) == ["worker-1", "worker-3"]
    })
    .await;
    tokio::time::sleep(STALE_AFTER / 2).await;
    assert_eq!(replica.readiness.current(), Ok(()));
    replica.watcher.abort();
}

#[tokio::test]
async fn a_list_that_fails_several_times_is_not_ready_until_it_succeeds() {
    let api = populated();
    for _ in 0..3 {
        api.fail_next(http::Method::GET, NODES, 500);
    }
    let metrics = Metrics::new();
    let replica = start(&api);
    until("a failed list counted", || {
        let views = replica.readiness.views().unwrap();
        metrics
            .inventory
            .set_views(&views.status(std::time::Instant::now()));
        metrics.encode().unwrap().lines().any(|l| {
            l.starts_with("nodeguard_inventory_view_errors{view=\"nodes\"}") && !l.ends_with(" 0")
        })
    })
    .await;
    let reason = replica.readiness.current().unwrap_err();
    assert_eq!(
        reason,
        "the inventory has not completed its first sync with the API server"
    );
    assert_eq!(clone_registers(&replica.router).await["allowed"], true);
    until("ready after the retries", || {
        replica.readiness.current().is_ok()
    })
    .await;
    assert_eq!(names(&replica.inventory), ["worker-1", "worker-2"]);
    assert_eq!(clone_registers(&replica.router).await["allowed"], false);
    replica.watcher.abort();
}
