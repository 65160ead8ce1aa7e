//! A warn-first rollout: the configuration file reloaded while serving (a bad one refused
//! and the last good one kept), modes and exemptions changing answers, and the Events a
//! refusal leaves in the cluster, posted through the `kube` client to the fake API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use nodeguard::cmd::demo::scenarios::inventory_of;
use nodeguard::config::SharedConfig;
use nodeguard::config::{ConfigReloader, ConfigSource, ReloadOutcome};
use nodeguard::events::{EventPoster, EventQueue};
use nodeguard::inventory::SharedInventory;
use nodeguard::metrics::Metrics;
use nodeguard::webhook::{self, AppState};
use nodeguard_testkit::kubelet::{self, Machine, Write};
use serde_json::Value;
use tower::ServiceExt;

const NODE_EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn cluster() -> (Machine, SharedInventory) {
    let original = Machine::new("worker-1", 0x11, "10.0.0.11");
    let inventory = inventory_of(&[
        original.clone(),
        Machine::new("worker-2", 0x12, "10.0.0.12"),
    ]);
    (original, SharedInventory::new(inventory))
}

/// worker-1 cloned as worker-4: same machine-id and DHCP lease, its own UUID.
fn clone_of(original: &Machine) -> Value {
    let mut clone = Machine::new("worker-4", 0x14, "10.0.0.14");
    clone.machine_id = original.machine_id.clone();
    let mut node = kubelet::node_object(&clone);
    node["metadata"]["labels"]["pool"] = "lab".into();
    node
}

fn registration(node: &Value, uid: &str, dry_run: bool) -> http::Request<axum::body::Body> {
    let mut review = kubelet::node_review(uid, Write::Create, node, None, "system:node:worker-4");
    review["request"]["dryRun"] = dry_run.into();
    http::Request::post("/validate/nodes")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(review.to_string()))
        .unwrap()
}

async fn ask(router: &axum::Router, request: http::Request<axum::body::Body>) -> Value {
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nodeguard-rollout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn metric(metrics: &Metrics, line_start: &str) -> Vec<String> {
    metrics
        .encode()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(line_start))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_reloaded_file_changes_answers_without_a_restart_and_a_bad_one_is_refused() {
    let dir = temp_dir("reload");
    let file = dir.join("config.yaml");
    std::fs::write(&file, "mode: warn\n").unwrap();
    let source = ConfigSource {
        file: Some(file.clone()),
        ..ConfigSource::default()
    };
    let loaded = source.load().unwrap();
    let config = SharedConfig::new(loaded.config.clone());
    let metrics = Arc::new(Metrics::new());
    let mut reloader = ConfigReloader::new(source, &loaded, config.clone(), metrics.config.clone());
    let (original, inventory) = cluster();
    let router = webhook::router(AppState {
        inventory,
        config: config.clone(),
        metrics: metrics.admission.clone(),
        events: None,
        readiness: None,
        refusals: None,
    });
    let clone = clone_of(&original);

    // Warn-first: the clone is let through with the denial as a warning.
    let answer = ask(&router, registration(&clone, "u-1", false)).await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(
        answer["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("nodeguard [machine-id]")
    );
    assert_eq!(
        metric(&metrics, "nodeguard_config_info{"),
        vec![format!(
            "nodeguard_config_info{{sha256=\"{}\",mode=\"warn\"}} 1",
            loaded.sha256
        )]
    );

    // Enforcing, by editing the file: the next request is refused.
    std::fs::write(&file, "mode: enforce\n").unwrap();
    assert_eq!(reloader.check(), ReloadOutcome::Loaded);
    let answer = ask(&router, registration(&clone, "u-2", false)).await;
    assert_eq!(answer["allowed"], false, "{answer}");
    assert_eq!(answer["status"]["code"], 422);

    // A broken file is refused, counted once, and the enforcing one stays in force.
    let in_force = metric(&metrics, "nodeguard_config_info{");
    std::fs::write(&file, "mode: enforce\nchecks:\n  machine-id: loud\n").unwrap();
    assert_eq!(reloader.check(), ReloadOutcome::Rejected);
    assert_eq!(reloader.check(), ReloadOutcome::Unchanged);
    assert_eq!(
        metric(
            &metrics,
            "nodeguard_config_reloads_total{result=\"rejected\"}"
        ),
        vec!["nodeguard_config_reloads_total{result=\"rejected\"} 1".to_string()]
    );
    assert_eq!(metric(&metrics, "nodeguard_config_info{"), in_force);
    let answer = ask(&router, registration(&clone, "u-3", false)).await;
    assert_eq!(
        answer["allowed"], false,
        "the last good configuration still enforces"
    );

    // A selector on a label the clone's kubelet can set on itself is refused.
    std::fs::write(
        &file,
        "exemptions:\n  nodeSelector:\n    matchExpressions:\n      - {key: pool, operator: In, values: [lab]}\n",
    )
    .unwrap();
    assert_eq!(reloader.check(), ReloadOutcome::Rejected);
    // On a label only an admin sets, read on the stored Node: the clone labels itself
    // with it in vain (it has no stored Node, and NodeRestriction refuses the label).
    std::fs::write(
        &file,
        "exemptions:\n  nodeSelector:\n    matchExpressions:\n      - {key: node-restriction.kubernetes.io/pool, operator: In, values: [lab]}\n",
    )
    .unwrap();
    assert_eq!(reloader.check(), ReloadOutcome::Loaded);
    let mut self_labelled = clone.clone();
    self_labelled["metadata"]["labels"]["node-restriction.kubernetes.io/pool"] = "lab".into();
    let answer = ask(&router, registration(&self_labelled, "u-4", false)).await;
    assert_eq!(answer["allowed"], false, "{answer}");
    // Exempt by name, the clone passes unchecked; a node outside the list is checked again.
    std::fs::write(&file, "exemptions:\n  nodes: [worker-4]\n").unwrap();
    assert_eq!(reloader.check(), ReloadOutcome::Loaded);
    let answer = ask(&router, registration(&clone, "u-5", false)).await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(answer["warnings"].is_null(), "{answer}");
    std::fs::write(&file, "exemptions:\n  nodes: [worker-9]\n").unwrap();
    assert_eq!(reloader.check(), ReloadOutcome::Loaded);
    let answer = ask(&router, registration(&clone, "u-6", false)).await;
    assert_eq!(answer["allowed"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_reloader_task_picks_up_a_configmap_style_swap() {
    // A ConfigMap volume: the file is a symlink through `..data`, which is swapped.
    let dir = temp_dir("swap");
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/config.yaml"), "mode: warn\n").unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
    let source = ConfigSource {
        file: Some(dir.join("config.yaml")),
        ..ConfigSource::default()
    };
    let loaded = source.load().unwrap();
    let config = SharedConfig::new(loaded.config.clone());
    let metrics = Arc::new(Metrics::new());
    let task = tokio::spawn(
        ConfigReloader::new(source, &loaded, config.clone(), metrics.config.clone())
            .recheck_every(Duration::from_secs(3600))
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/config.yaml"), "mode: enforce\n").unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let mut waited = Duration::ZERO;
    while config.current().global_mode() != nodeguard::policy::Mode::Enforce {
        assert!(
            waited < Duration::from_secs(10),
            "the swap was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The webhook with its Event queue and poster, against the fake API.
fn with_events(
    api: &fake_api::FakeApi,
) -> (axum::Router, Arc<Metrics>, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::new());
    let (queue, notices) = EventQueue::new(metrics.events.clone());
    let poster = EventPoster::new(api.client(), "nodeguard-0", metrics.events.clone());
    let posting = tokio::spawn(poster.run(notices));
    (posting_to(queue, &metrics), metrics, posting)
}

/// The webhook over [`cluster`], its Events going to `queue`.
fn posting_to(queue: EventQueue, metrics: &Arc<Metrics>) -> axum::Router {
    let (_, inventory) = cluster();
    webhook::router(AppState {
        inventory,
        config: SharedConfig::default(),
        metrics: metrics.admission.clone(),
        events: Some(queue),
        readiness: None,
        refusals: None,
    })
}

async fn settle(api: &fake_api::FakeApi, expected_requests: usize) {
    for _ in 0..200 {
        if api.requests().len() >= expected_requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn one_refusal_makes_one_event_and_fifty_retries_one_update_of_it() {
    let api = fake_api::FakeApi::new();
    let (router, metrics, posting) = with_events(&api);
    let (original, _) = cluster();
    let clone = clone_of(&original);

    let answer = ask(&router, registration(&clone, "r-0", false)).await;
    assert_eq!(answer["allowed"], false);
    settle(&api, 1).await;
    let events = api.objects(NODE_EVENTS);
    // machine-id is the first denial; the clone's UUID and IP are its own.
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], nodeguard::events::COLLISION_REASON);
    assert_eq!(event["action"], "Denied");
    assert_eq!(event["reportingController"], "nodeguard");
    assert_eq!(event["reportingInstance"], "nodeguard-0");
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "worker-4");
    assert_eq!(event["related"]["name"], "worker-1");
    assert_eq!(event["note"], answer["status"]["message"]);
    assert!(event["series"].is_null());

    // The kubelet retries every few seconds: the same Event, once turned into a series.
    for attempt in 1..=50 {
        let answer = ask(
            &router,
            registration(&clone, &format!("r-{attempt}"), false),
        )
        .await;
        assert_eq!(answer["allowed"], false);
    }
    settle(&api, 2).await;
    let events = api.objects(NODE_EVENTS);
    assert_eq!(events.len(), 1, "still one Event");
    assert_eq!(events[0]["series"]["count"], 2);
    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|(_, path)| path.starts_with(NODE_EVENTS))
        .collect();
    assert_eq!(writes.len(), 2, "one create and one update: {writes:?}");
    assert_eq!(
        metric(
            &metrics,
            "nodeguard_events_total{reason=\"NodeIdentityCollision\",result=\"coalesced\"}"
        ),
        vec![
            "nodeguard_events_total{reason=\"NodeIdentityCollision\",result=\"coalesced\"} 49"
                .to_string()
        ]
    );

    // Once the webhook is gone the poster writes the series' count before it ends.
    drop(router);
    posting.await.unwrap();
    let events = api.objects(NODE_EVENTS);
    assert_eq!(events[0]["series"]["count"], 51);
}

#[tokio::test]
async fn a_dry_run_posts_nothing() {
    let api = fake_api::FakeApi::new();
    let (router, _metrics, posting) = with_events(&api);
    let (original, _) = cluster();
    let answer = ask(&router, registration(&clone_of(&original), "d-1", true)).await;
    assert_eq!(
        answer["allowed"], false,
        "a dry run is decided as a real one"
    );
    drop(router);
    posting.await.unwrap();
    assert!(api.objects(NODE_EVENTS).is_empty());
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_rather_than_waits() {
    let metrics = Arc::new(Metrics::new());
    // Nobody receives: the queue fills at once.
    let (queue, _notices) = EventQueue::with_capacity(metrics.events.clone(), 1);
    let (original, _) = cluster();
    let router = posting_to(queue, &metrics);
    for attempt in 0..3 {
        let answer = ask(
            &router,
            registration(&clone_of(&original), &format!("q-{attempt}"), false),
        )
        .await;
        assert_eq!(answer["allowed"], false);
    }
    assert_eq!(
        metric(
            &metrics,
            "nodeguard_events_total{reason=\"NodeIdentityCollision\",result=\"dropped\"}"
        ),
        vec![
            "nodeguard_events_total{reason=\"NodeIdentityCollision\",result=\"dropped\"} 2"
                .to_string()
        ]
    );
}

#[tokio::test]
async fn the_leaders_audit_counts_findings_and_posts_each_on_its_nodes_once() {
    let api = fake_api::FakeApi::new();
    let cluster =
        nodeguard::cmd::audit::read_dump(std::path::Path::new("examples/cluster-dump.json"))
            .unwrap();
    let inventory = SharedInventory::new(cluster.inventory);
    let metrics = Arc::new(Metrics::new());
    let mut recorder = nodeguard::ledger::recorder::Recorder::new(
        api.client(),
        inventory,
        metrics.ledger.clone(),
        metrics.events.clone(),
        "nodeguard-0",
    )
    .auditing(SharedConfig::default());
    let report = recorder.audit().await.unwrap();
    assert!(report.has_findings());

    let findings = metric(&metrics, "nodeguard_audit_findings{");
    for expected in [
        "nodeguard_audit_findings{check=\"machine-id\",kind=\"shared\"} 1",
        "nodeguard_audit_findings{check=\"machine-id\",kind=\"not-unique\"} 1",
        "nodeguard_audit_findings{check=\"system-uuid\",kind=\"clone\"} 1",
        "nodeguard_audit_findings{check=\"key-fingerprint\",kind=\"clone\"} 1",
        "nodeguard_audit_findings{check=\"two-kubelets\",kind=\"conflict\"} 1",
        "nodeguard_audit_findings{check=\"ledger\",kind=\"orphan\"} 1",
    ] {
        assert!(
            findings.iter().any(|l| l == expected),
            "{expected} in {findings:#?}"
        );
    }

    // One Event per node a clone-like finding concerns, and one for the conflict; the
    // platform-shared machine-id concerns every node alike and is only counted.
    let events = api.objects(NODE_EVENTS);
    let mut posted: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["regarding"]["name"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
                e["note"]
                    .as_str()
                    .unwrap()
                    .split(']')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    posted.sort();
    let expect = |node: &str, reason: &str, check: &str| {
        (
            node.to_string(),
            reason.to_string(),
            format!("nodeguard audit [{check}"),
        )
    };
    assert_eq!(
        posted,
        vec![
            expect(
                "worker-2",
                nodeguard::events::COLLISION_REASON,
                "internal-ip"
            ),
            expect(
                "worker-2",
                nodeguard::events::COLLISION_REASON,
                "key-fingerprint"
            ),
            expect(
                "worker-2",
                nodeguard::events::COLLISION_REASON,
                "system-uuid"
            ),
            (
                "worker-3".to_string(),
                nodeguard::events::CONFLICT_REASON.to_string(),
                "nodeguard [two-kubelets".to_string()
            ),
            expect(
                "worker-5",
                nodeguard::events::COLLISION_REASON,
                "internal-ip"
            ),
            expect(
                "worker-5",
                nodeguard::events::COLLISION_REASON,
                "key-fingerprint"
            ),
            expect(
                "worker-5",
                nodeguard::events::COLLISION_REASON,
                "system-uuid"
            ),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e["action"] == "Audited" && e["regarding"]["uid"].is_string())
    );

    // The next full sync finds the same: nothing posted again.
    let before = api.requests().len();
    recorder.audit().await.unwrap();
    assert_eq!(api.requests().len(), before);
}

#[test]
fn config_check_prints_what_would_be_in_force_or_why_not() {
    let dir = temp_dir("check");
    let good = dir.join("good.yaml");
    std::fs::write(&good, "mode: warn\nexemptions:\n  nodes: [lab-0]\n").unwrap();
    let check = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nodeguard"))
            .args(["config", "check"])
            .arg(file)
            .output()
            .unwrap()
    };
    let output = check(&good);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(": valid (sha256 "), "{text}");
    assert!(text.contains("  mode: warn\n"), "{text}");
    assert!(
        text.contains("  check machine-id: warn (set to enforce, capped by mode: warn)\n"),
        "{text}"
    );
    assert!(text.contains("  exempt nodes: lab-0\n"), "{text}");

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "checks:\n  machine-ids: warn\n").unwrap();
    let output = check(&bad);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("refused: in "), "{text}");
    assert!(text.contains("unknown check \"machine-ids\""), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_leaders_audit_leaves_out_nodes_exempt_by_label() {
    let api = fake_api::FakeApi::new();
    let text = std::fs::read_to_string("examples/cluster-dump.json").unwrap();
    let mut list: Value = serde_json::from_str(&text).unwrap();
    for item in list["items"].as_array_mut().unwrap() {
        if item["kind"] == "Node" {
            if item["metadata"]["name"] == "worker-5" {
                item["metadata"]["labels"]["node-restriction.kubernetes.io/pool"] = "lab".into();
            }
            api.insert("/api/v1/nodes", item.clone());
        }
    }
    let mut cluster = nodeguard::cmd::audit::load::Cluster::default();
    cluster.add_list(list.to_string().as_bytes()).unwrap();
    let config = SharedConfig::new(
        nodeguard::policy::Config::from_yaml(
            "exemptions:\n  nodeSelector:\n    matchLabels: {node-restriction.kubernetes.io/pool: lab}\n",
        )
        .unwrap(),
    );
    let metrics = Arc::new(Metrics::new());
    let mut recorder = nodeguard::ledger::recorder::Recorder::new(
        api.client(),
        SharedInventory::new(cluster.inventory),
        metrics.ledger.clone(),
        metrics.events.clone(),
        "nodeguard-0",
    )
    .auditing(config);
    let report = recorder.audit().await.unwrap();
    let worker5 = report
        .verdicts
        .iter()
        .find(|v| v.node == "worker-5")
        .unwrap();
    assert_eq!(
        worker5.restart.outcome(),
        nodeguard::policy::Outcome::Exempt
    );
    // The admin's label is on its stored Node: joining anew, it would carry none.
    assert_eq!(worker5.as_new.outcome(), nodeguard::policy::Outcome::Denied);
    // worker-2 still collides with the exempt node's values, and is told so.
    let on: Vec<String> = api
        .objects(NODE_EVENTS)
        .iter()
        .map(|e| e["regarding"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(on.iter().any(|n| n == "worker-2"), "{on:?}");
    assert!(
        !on.iter().any(|n| n == "worker-5"),
        "no Event on an exempt node: {on:?}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|(_, path)| path
                .contains("labelSelector=node-restriction.kubernetes.io%2Fpool%3Dlab")),
        "{:?}",
        api.requests()
    );
}

// Paused: the buckets refill with tokio's clock, which stands still here.
#[tokio::test(start_paused = true)]
async fn distinct_events_are_limited_per_object_and_overall() {
    use nodeguard::events::{self, Notice};
    let api = fake_api::FakeApi::new();
    let metrics = Arc::new(Metrics::new());
    let mut poster = EventPoster::new(api.client(), "nodeguard-0", metrics.events.clone());
    let notice = |regarding, check: &'static str| Notice {
        regarding,
        related: None,
        reason: events::COLLISION_REASON,
        action: "Denied",
        check,
        note: format!("nodeguard [{check}]: …"),
    };
    // One node, refused by every check there is: 11 kinds, well within one object's 25.
    for check in nodeguard::policy::CheckId::ALL {
        poster
            .handle(notice(
                events::node_reference("worker-4", None),
                check.as_str(),
            ))
            .await;
    }
    assert_eq!(api.objects(NODE_EVENTS).len(), 11);
    // 20 more about it, each naming another holder: 25 about one object, then no more.
    for i in 0..20 {
        let mut more = notice(events::node_reference("worker-4", None), "machine-id");
        more.related = Some(events::node_reference(&format!("holder-{i}"), None));
        poster.handle(more).await;
    }
    assert_eq!(
        api.objects(NODE_EVENTS).len(),
        events::OBJECT_BURST as usize
    );
    // Made-up CSR names, each refused once: the overall burst of 100 in all, then none.
    for i in 0..150 {
        poster
            .handle(notice(
                events::csr_reference(&format!("csr-{i:03}")),
                "key-fingerprint",
            ))
            .await;
    }
    assert_eq!(
        api.objects(NODE_EVENTS).len(),
        events::GLOBAL_BURST as usize
    );
    assert_eq!(
        metric(
            &metrics,
            "nodeguard_events_total{reason=\"NodeIdentityCollision\",result=\"rate_limited\"}"
        ),
        vec![
            "nodeguard_events_total{reason=\"NodeIdentityCollision\",result=\"rate_limited\"} 81"
                .to_string()
        ]
    );
}
