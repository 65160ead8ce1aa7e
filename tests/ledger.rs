//! The ledger against the `kube` client over an in-memory API server: the watchers, the
//! recorder and the real HTTPS webhook of one nodeguard replica, with the test playing
//! the API server's part (admission first, then storage), as kube-apiserver does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use fake_api::FakeApi;
use nodeguard::cmd::demo::LocalWebhook;
use nodeguard::cmd::forget::{Forgotten, forget};
use nodeguard::identity::KeyFingerprint;
use nodeguard::inventory::{LedgerEntry, SharedInventory};
use nodeguard::ledger::recorder::Recorder;
use nodeguard::ledger::{KeyObservation, NodeIdentity};
use nodeguard::metrics::Metrics;
use nodeguard::plumbing::lease::Leadership;
use nodeguard::policy::Config;
use nodeguard::watch::observations::{self, Observation};
use nodeguard::watch::{self, Readiness};
use nodeguard::webhook::Webhook as Endpoint;
use nodeguard_testkit::kubelet::{self, Machine, Requester, Write};

/// Guards against hangs only; nothing here measures time.
const GUARD: Duration = Duration::from_secs(10);

const NODES: &str = "/api/v1/nodes";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const LEDGER: &str = "/apis/nodeguard.io/v1alpha1/nodeidentities";
const NODE_EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

const BOOT_B: &str = "d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00";
const BOOT_C: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";

/// One nodeguard replica: the HTTPS webhook, the watchers and the recorder, sharing one
/// inventory, talking to the fake API server.
struct Replica {
    webhook: LocalWebhook,
    readiness: Readiness,
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    async fn start(api: &FakeApi, leadership: Leadership) -> Self {
        // The machines its webhook refuses for a name, written as `serve` writes them.
        let (refusals, refused) =
            nodeguard::ledger::refusals::queue(nodeguard::ledger::LedgerMetrics::default());
        let webhook = LocalWebhook::start_recording(Config::default(), Some(refusals))
            .await
            .unwrap();
        let inventory = webhook.inventory.clone();
        let writer = nodeguard::ledger::refusals::RefusalWriter::new(
            api.client(),
            inventory.clone(),
            webhook.metrics.ledger.clone(),
        );
        let writing = tokio::spawn(writer.run(refused));
        let readiness = Readiness::new();
        let (observations, observed) = observations::observations();
        let watcher = tokio::spawn({
            let (client, inventory, readiness) =
                (api.client(), inventory.clone(), readiness.clone());
            async move {
                let _ = watch::run(client, inventory, readiness, Some(observations)).await;
            }
        });
        let recorder = Recorder::new(
            api.client(),
            inventory,
            webhook.metrics.ledger.clone(),
            webhook.metrics.events.clone(),
            "nodeguard-0",
        )
        .after_sync(readiness.clone());
        let recording = tokio::spawn(recorder.run(observed, leadership));
        let replica = Self {
            webhook,
            readiness,
            tasks: vec![watcher, recording, writing],
        };
        let ready = tokio::time::timeout(GUARD, replica.readiness.wait()).await;
        assert!(ready.is_ok(), "the replica never became ready");
        replica
    }

    fn inventory(&self) -> &SharedInventory {
        &self.webhook.inventory
    }

    /// Waits until this replica's view of the ledger satisfies `condition`.
    async fn until_ledger(&self, what: &str, condition: impl Fn(Option<&LedgerEntry>) -> bool) {
        let inventory = self.inventory().clone();
        eventually(what, || {
            inventory.read(|inv| condition(inv.identity("worker-1")))
        })
        .await;
    }

    async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.webhook.stop().await.unwrap();
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let waited = tokio::time::timeout(GUARD, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never happened: {what}");
}

fn node_path(name: &str) -> String {
    format!("{NODES}/{name}")
}

fn stored_identity(api: &FakeApi, name: &str) -> Option<NodeIdentity> {
    api.get(&format!("{LEDGER}/{name}"))
        .map(|v| serde_json::from_value(v).unwrap())
}

fn boots(record: &LedgerEntry) -> Vec<&str> {
    record.boots.iter().map(|b| b.as_str()).collect()
}

/// A registered Node as the API server stores it.
fn stored_node(machine: &Machine, uid: &str) -> Value {
    let mut node = kubelet::node_object(machine);
    node["apiVersion"] = json!("v1");
    node["kind"] = json!("Node");
    node["metadata"]["uid"] = json!(uid);
    node
}

fn cluster(api: &FakeApi) -> Machine {
    let worker1 = Machine::new("worker-1", 0x11, "10.0.0.11");
    api.insert(
        NODES,
        stored_node(&worker1, "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"),
    );
    api.insert(
        NODES,
        stored_node(
            &Machine::new("worker-2", 0x12, "10.0.0.12"),
            "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e30",
        ),
    );
    worker1
}

fn issued_client_csr(name: &str, node: &str, key: &rcgen::KeyPair) -> Value {
    let pem = kubelet::csr_pem(key, node, &[], &[]).unwrap();
    let mut csr = kubelet::issued(kubelet::csr_object(
        name,
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "abcdef".into(),
        },
    ));
    csr["metadata"]["uid"] = json!(format!("uid-{name}"));
    csr
}

/// What kube-apiserver does with a kubelet's Node write: admission through nodeguard's
/// webhook, then (if allowed) storage; a CREATE of an existing name stores nothing
/// (AlreadyExists, after admission). Returns the webhook's answer.
async fn kubelet_writes(
    api: &FakeApi,
    replica: &Replica,
    write: Write,
    machine: &Machine,
) -> Value {
    let path = node_path(&machine.name);
    let stored = api.get(&path);
    let (object, old) = match write {
        Write::Create => (kubelet::node_object(machine), None),
        Write::StatusPatch => {
            let old = stored.clone().expect("a status patch of a registered node");
            let mut new = old.clone();
            new["status"] = kubelet::node_object(machine)["status"].clone();
            (new, Some(old))
        }
    };
    let review = kubelet::node_review(
        "0f5c2a9e-7b61-4d0a-9d8e-1c2b3a4d5e6f",
        write,
        &object,
        old.as_ref(),
        &format!("system:node:{}", machine.name),
    );
    let (_, answer) = replica.webhook.ask(Endpoint::Nodes, &review).await.unwrap();
    let response = answer["response"].clone();
    if response["allowed"] == json!(true) && stored.is_some() && write == Write::StatusPatch {
        api.update(&path, |node| node["status"] = object["status"].clone());
    }
    response
}

/// A refused status write or CSR: 403 Forbidden.
fn denial(response: &Value) -> &str {
    assert_eq!(response["allowed"], json!(false), "allowed: {response}");
    assert_eq!(response["status"]["code"], json!(403));
    assert_eq!(response["status"]["reason"], json!("Forbidden"));
    response["status"]["message"].as_str().unwrap()
}

/// A refused registration: 422 Invalid, so that the kubelet logs it and tries again
/// (a 403 makes it read the Node instead).
fn refused_registration(response: &Value) -> &str {
    assert_eq!(response["allowed"], json!(false), "allowed: {response}");
    assert_eq!(response["status"]["code"], json!(422));
    assert_eq!(response["status"]["reason"], json!("Invalid"));
    response["status"]["message"].as_str().unwrap()
}

fn allowed(response: &Value) {
    assert_eq!(response["allowed"], json!(true), "denied: {response}");
}

fn ledger_writes(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|(method, path)| {
            (method == http::Method::PUT || method == http::Method::POST)
                && path.starts_with(LEDGER)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_a_perfect_copy_is_refused_at_its_second_alternation() {
    let api = FakeApi::new();
    let worker1 = cluster(&api);
    let replica = Replica::start(&api, Leadership::always()).await;
    replica
        .until_ledger("worker-1 recorded with its boot", |r| {
            r.is_some_and(|r| boots(r) == [worker1.boot_id.as_str()])
        })
        .await;
    let record = stored_identity(&api, "worker-1").unwrap();
    assert_eq!(
        record.owner_uid(),
        Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f")
    );

    // The copy boots: same disk, same SMBIOS UUID, same credentials; another boot id.
    let copy = worker1.rebooted(BOOT_B);
    allowed(&kubelet_writes(&api, &replica, Write::Create, &copy).await);
    allowed(&kubelet_writes(&api, &replica, Write::StatusPatch, &copy).await);
    replica
        .until_ledger("the copy's boot recorded, as a reboot", |r| {
            r.is_some_and(|r| boots(r).len() == 2 && r.conflict().is_none())
        })
        .await;

    // The original's next status sync writes its boot back: allowed, and the conflict.
    allowed(&kubelet_writes(&api, &replica, Write::StatusPatch, &worker1).await);
    replica
        .until_ledger("the conflict recorded", |r| {
            r.is_some_and(|r| r.conflict().is_some())
        })
        .await;
    let conflict = stored_identity(&api, "worker-1")
        .unwrap()
        .status
        .unwrap()
        .conflict
        .unwrap();
    assert_eq!(conflict.kept_boot, worker1.boot_id);
    assert_eq!(conflict.refused_boot, BOOT_B);

    // From now on the copy is refused, status and registration alike.
    let expected = format!(
        "nodeguard [two-kubelets]: two machines are writing node \"worker-1\" with its \
         credentials: boot {BOOT_B} (this machine) and boot {}, which registered first and \
         is kept; stop this machine's kubelet and give it its own identity (hostname, rm \
         /etc/machine-id && systemd-machine-id-setup, remove \
         /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, re-join \
         with a bootstrap token), then run nodeguard forget worker-1",
        format_args!("{}…", &worker1.boot_id[..8])
    );
    for _ in 0..3 {
        let response = kubelet_writes(&api, &replica, Write::StatusPatch, &copy).await;
        assert_eq!(denial(&response), expected);
    }
    let response = kubelet_writes(&api, &replica, Write::Create, &copy).await;
    assert_eq!(refused_registration(&response), expected);
    // The Node kept the original's boot throughout.
    assert_eq!(
        api.get(&node_path("worker-1")).unwrap()["status"]["nodeInfo"]["bootID"],
        json!(worker1.boot_id)
    );
    // The original keeps working, and so does its reboot.
    allowed(&kubelet_writes(&api, &replica, Write::StatusPatch, &worker1).await);
    allowed(&kubelet_writes(&api, &replica, Write::Create, &worker1).await);
    allowed(
        &kubelet_writes(
            &api,
            &replica,
            Write::StatusPatch,
            &worker1.rebooted(BOOT_C),
        )
        .await,
    );

    // One Warning Event on the Node, and the metrics say so.
    let events = api.objects(NODE_EVENTS);
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], nodeguard::events::CONFLICT_REASON);
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "worker-1");
    assert_eq!(
        event["regarding"]["uid"],
        "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"
    );
    assert_eq!(event["reportingController"], "nodeguard");
    assert!(event["note"].as_str().unwrap().contains(BOOT_B));
    let metrics = replica.webhook.metrics.encode().unwrap();
    for line in [
        "nodeguard_identity_conflicts_recorded_total{check=\"two-kubelets\"} 1",
        "nodeguard_admission_requests_total{webhook=\"nodes\",operation=\"UPDATE\",result=\"denied\",check=\"two-kubelets\"} 3",
        "nodeguard_admission_requests_total{webhook=\"nodes\",operation=\"CREATE\",result=\"denied\",check=\"two-kubelets\"} 1",
        "nodeguard_recorder_leading 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_refused_while_its_original_runs_stays_refused_once_the_original_writes_again() {
    let api = FakeApi::new();
    let mut worker1 = cluster(&api);
    let replica = Replica::start(&api, Leadership::always()).await;
    replica
        .until_ledger("worker-1 recorded", |r| {
            r.is_some_and(|r| !r.boots.is_empty())
        })
        .await;

    // The incident's clone: worker-1's name, credentials and machine-id, its own UUID.
    let mut clone = worker1.rebooted(BOOT_B);
    clone.system_uuid = "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into();
    // A dry run records nothing.
    let mut dry = kubelet::node_review(
        "4e0a9f3c-1111-4d0a-9d8e-1c2b3a4d5e6f",
        Write::Create,
        &kubelet::node_object(&clone),
        None,
        "system:node:worker-1",
    );
    dry["request"]["dryRun"] = json!(true);
    let (_, answer) = replica.webhook.ask(Endpoint::Nodes, &dry).await.unwrap();
    refused_registration(&answer["response"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        stored_identity(&api, "worker-1")
            .unwrap()
            .spec
            .refused_machines
            .is_empty(),
        "a dry run recorded a refusal"
    );

    // Refused for real, it is recorded once, however often it retries.
    let writes_before = ledger_writes(&api);
    for _ in 0..5 {
        refused_registration(&kubelet_writes(&api, &replica, Write::Create, &clone).await);
    }
    replica
        .until_ledger("the clone recorded as refused", |r| {
            r.is_some_and(|r| r.refused.len() == 1)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ledger_writes(&api) - writes_before,
        1,
        "one write for five refusals"
    );
    let refused = &stored_identity(&api, "worker-1")
        .unwrap()
        .spec
        .refused_machines[0];
    assert_eq!(refused.check, "name-takeover");
    assert_eq!(
        refused.system_uuid.as_deref(),
        Some("564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61")
    );
    assert!(refused.proven.is_none());

    // worker-1's next status report: two machines proven, an Event says so.
    worker1.heartbeat += jiff::SignedDuration::from_secs(300);
    allowed(&kubelet_writes(&api, &replica, Write::StatusPatch, &worker1).await);
    replica
        .until_ledger("the refusal proven", |r| {
            r.is_some_and(|r| r.refused.first().is_some_and(|m| m.proven.is_some()))
        })
        .await;
    eventually("the Event about the second machine", || {
        api.objects(NODE_EVENTS)
            .iter()
            .any(|e| e["action"] == "ProvenSecondMachine" && e["regarding"]["name"] == "worker-1")
    })
    .await;
    replica.stop().await;

    // A replica started afresh reads it all from the ledger: twenty minutes later, with
    // no status from worker-1 since (it rebooted), the clone is still refused, and
    // worker-1 itself is not.
    let fresh = Replica::start(&api, Leadership::never()).await;
    fresh
        .until_ledger("the proven refusal read", |r| {
            r.is_some_and(|r| r.refused.first().is_some_and(|m| m.proven.is_some()))
        })
        .await;
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(20);
    let decide = |machine: &Machine| {
        let review = nodeguard::policy::NodeReview::new(
            nodeguard::policy::Operation::Create,
            Some(claim_of(&kubelet::node_object(machine))),
            None,
        );
        fresh
            .inventory()
            .read(|inv| nodeguard::policy::decide_node(&review, inv, &Config::default(), later))
    };
    let verdict = decide(&clone);
    assert_eq!(
        verdict.outcome(),
        nodeguard::policy::Outcome::Denied,
        "{verdict:?}"
    );
    assert!(
        verdict
            .denial_message()
            .unwrap()
            .contains("stays refused for the name even while worker-1 is down"),
        "{verdict:?}"
    );
    assert!(decide(&worker1.rebooted(BOOT_C)).allowed());
    fresh.stop().await;
}

fn claim_of(node: &Value) -> nodeguard::identity::NodeClaim {
    let text = node.to_string();
    let doc: nodeguard::identity::NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    nodeguard::identity::NodeClaim::from_doc(&doc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_is_no_conflict_and_a_kubelet_restart_records_nothing() {
    let api = FakeApi::new();
    let worker1 = cluster(&api);
    let replica = Replica::start(&api, Leadership::always()).await;
    replica
        .until_ledger("worker-1 recorded", |r| r.is_some())
        .await;
    eventually("both nodes recorded", || api.objects(LEDGER).len() == 2).await;

    let rebooted = worker1.rebooted(BOOT_B);
    allowed(&kubelet_writes(&api, &replica, Write::Create, &rebooted).await);
    allowed(&kubelet_writes(&api, &replica, Write::StatusPatch, &rebooted).await);
    replica
        .until_ledger("the reboot recorded", |r| {
            r.is_some_and(|r| boots(r).len() == 2)
        })
        .await;
    let writes = ledger_writes(&api);

    // The kubelet restarts within boot B: CREATE again, then status as before.
    allowed(&kubelet_writes(&api, &replica, Write::Create, &rebooted).await);
    allowed(&kubelet_writes(&api, &replica, Write::StatusPatch, &rebooted).await);
    // A heartbeat-like change that is not identity (the Ready condition's time) either.
    api.update(&node_path("worker-1"), |node| {
        node["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-11-27T12:00:00Z");
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ledger_writes(&api),
        writes,
        "a restart within one boot was written"
    );
    let record = stored_identity(&api, "worker-1").unwrap();
    assert_eq!(
        boots(&record.entry().unwrap()),
        [worker1.boot_id.as_str(), BOOT_B]
    );
    assert!(record.conflict().is_none());
    assert!(api.objects(NODE_EVENTS).is_empty());
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_remembered_after_its_csr_is_gone_and_nodeguard_restarted() {
    let api = FakeApi::new();
    cluster(&api);
    let key = kubelet::kubelet_key().unwrap();
    let fingerprint =
        KeyFingerprint::of_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&key));
    api.insert(CSRS, issued_client_csr("csr-8x2kq", "worker-1", &key));

    let first = Replica::start(&api, Leadership::always()).await;
    let bound = fingerprint.to_string();
    eventually("the key recorded in the ledger", || {
        stored_identity(&api, "worker-1")
            .is_some_and(|r| r.spec.keys.iter().any(|k| k.fingerprint == bound))
    })
    .await;
    let record = stored_identity(&api, "worker-1").unwrap();
    assert_eq!(record.spec.keys[0].csr.as_deref(), Some("csr-8x2kq"));
    assert!(
        record.spec.credential_ids[0].id.starts_with("X509SHA256="),
        "the issued certificate's credential id is recorded"
    );
    first.stop().await;

    // An hour later the API server has deleted the CSR; nodeguard restarts.
    api.delete(&format!("{CSRS}/csr-8x2kq"));
    let second = Replica::start(&api, Leadership::never()).await;
    assert_eq!(second.inventory().read(|inv| inv.size().key_bindings), 0);

    // A clone bootstraps as worker-9 with worker-1's key.
    let pem = kubelet::csr_pem(&key, "worker-9", &[], &[]).unwrap();
    let csr = kubelet::csr_object(
        "csr-c10n3",
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "07401b".into(),
        },
    );
    let (_, answer) = second
        .webhook
        .ask(
            Endpoint::Csrs,
            &kubelet::csr_review("9a8b7c6d-0000-4000-8000-00000000c5a1", &csr),
        )
        .await
        .unwrap();
    assert_eq!(
        denial(&answer["response"]),
        format!(
            "nodeguard [key-fingerprint]: the key of this CSR (SHA-256 {fingerprint}) is \
             already bound to node \"worker-1\"; this machine carries worker-1's kubelet \
             credentials: remove /var/lib/kubelet/pki/kubelet-client-* and \
             /etc/kubernetes/kubelet.conf, then re-join with a bootstrap token"
        )
    );
    second.stop().await;
}

fn key_observation(byte: u8) -> Observation {
    Observation::Key(KeyObservation {
        csr: format!("csr-{byte:02x}"),
        binding: nodeguard::identity::KeyBinding {
            node: "worker-1".into(),
            fingerprint: KeyFingerprint([byte; 32]),
            signer: nodeguard::identity::KubeletSigner::Client,
            credential_id: None,
        },
    })
}

fn recorder_on(api: &FakeApi, metrics: &Arc<Metrics>) -> Recorder {
    Recorder::new(
        api.client(),
        SharedInventory::default(),
        metrics.ledger.clone(),
        metrics.events.clone(),
        "nodeguard-x",
    )
}

#[tokio::test]
async fn two_recorders_racing_on_one_record_lose_no_update() {
    let api = FakeApi::new();
    let metrics = Arc::new(Metrics::new());
    // Neither has seen the other's write: both start from no record at all.
    let mut first = recorder_on(&api, &metrics);
    let mut second = recorder_on(&api, &metrics);
    let (a, b) = (key_observation(1), key_observation(2));
    tokio::join!(first.record(&a), second.record(&b));
    // And once more from stale copies: each replaces over a version it did not read.
    let (c, d) = (key_observation(3), key_observation(4));
    tokio::join!(first.record(&c), second.record(&d));

    let record = stored_identity(&api, "worker-1").unwrap();
    let mut keys: Vec<_> = record
        .spec
        .keys
        .iter()
        .map(|k| k.fingerprint.clone())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        (1u8..=4).map(|b| hex::encode([b; 32])).collect::<Vec<_>>(),
        "an update was lost"
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("nodeguard_ledger_writes_total{result=\"conflict\"}")),
        "no write met a conflict:\n{text}"
    );
}

#[tokio::test]
async fn a_write_over_a_concurrent_change_is_redone_on_a_fresh_read() {
    let api = FakeApi::new();
    let metrics = Arc::new(Metrics::new());
    let mut recorder = recorder_on(&api, &metrics);
    recorder.record(&key_observation(1)).await;
    // Another writer adds a key right before this recorder's next write lands.
    let path = format!("{LEDGER}/worker-1");
    api.before_next_write(&path, |record| {
        record["spec"]["keys"].as_array_mut().unwrap().push(json!({
            "fingerprint": hex::encode([9u8; 32]),
            "signer": kubelet::CLIENT_SIGNER,
            "firstSeen": "2026-11-27T10:00:00Z",
        }));
    });
    recorder.record(&key_observation(2)).await;
    assert!(api.hooks_done());
    let record = stored_identity(&api, "worker-1").unwrap();
    assert_eq!(record.spec.keys.len(), 3, "{:?}", record.spec.keys);
    let record_path = format!("{LEDGER}/worker-1");
    let conflicts = api
        .responses()
        .into_iter()
        .filter(|(method, path, status)| {
            method == http::Method::PUT && path.starts_with(&record_path) && status.as_u16() == 409
        })
        .count();
    assert_eq!(conflicts, 1);
}

#[tokio::test]
async fn a_failed_write_is_left_for_the_next_resync_not_lost() {
    let api = FakeApi::new();
    let metrics = Arc::new(Metrics::new());
    let mut recorder = recorder_on(&api, &metrics);
    api.fail_next(http::Method::POST, LEDGER, 500);
    recorder.record(&key_observation(1)).await;
    assert!(stored_identity(&api, "worker-1").is_none());
    assert!(
        metrics
            .encode()
            .unwrap()
            .lines()
            .any(|l| l == "nodeguard_ledger_writes_total{result=\"failed\"} 1")
    );
    recorder.record(&key_observation(1)).await;
    assert_eq!(
        stored_identity(&api, "worker-1").unwrap().spec.keys.len(),
        1
    );
}

/// A record with a conflict, as the recorder leaves it.
fn conflicted(api: &FakeApi) {
    let worker1 = Machine::new("worker-1", 0x11, "10.0.0.11");
    let copy = worker1.rebooted(BOOT_B);
    let record = nodeguard::cmd::demo::scenarios::ledger_after(&[&worker1, &copy, &worker1]);
    api.insert(LEDGER, serde_json::to_value(record).unwrap());
}

#[tokio::test]
async fn forget_clears_the_conflict_and_earlier_boots_even_over_a_concurrent_write() {
    let api = FakeApi::new();
    conflicted(&api);
    let ledger: kube::Api<NodeIdentity> = kube::Api::all(api.client());
    // The recorder binds a key at the same moment: forget must not erase it.
    api.before_next_write(&format!("{LEDGER}/worker-1"), |record| {
        record["spec"]["keys"] = json!([{
            "fingerprint": hex::encode([5u8; 32]),
            "signer": kubelet::CLIENT_SIGNER,
            "firstSeen": "2026-11-27T10:00:00Z",
        }]);
    });
    let outcome = forget(&ledger, "worker-1").await.unwrap();
    let Forgotten::Cleared {
        conflict: Some(conflict),
        refused,
        boots_dropped,
    } = &outcome
    else {
        panic!("expected a cleared conflict, got {outcome:?}");
    };
    assert!(refused.is_empty());
    assert_eq!(conflict.refused_boot, BOOT_B);
    assert_eq!(*boots_dropped, 1);
    assert!(outcome.describe("worker-1").starts_with(
        "cleared the two-kubelets conflict of node worker-1 (boot 11a0427b-40ea-4cf5-9f24-53d6e200ef11 kept, boot d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00 refused since"
    ));
    let record = stored_identity(&api, "worker-1").unwrap();
    assert!(record.conflict().is_none());
    assert_eq!(
        boots(&record.entry().unwrap()),
        ["11a0427b-40ea-4cf5-9f24-53d6e200ef11"]
    );
    assert_eq!(
        record.spec.keys.len(),
        1,
        "forget erased the concurrent write"
    );

    assert_eq!(
        forget(&ledger, "worker-1").await.unwrap(),
        Forgotten::NoConflict { boots_dropped: 0 }
    );
    assert_eq!(
        forget(&ledger, "worker-7").await.unwrap(),
        Forgotten::NoRecord
    );
}

/// What the watcher hands the recorder for a Node as stored (with its resourceVersion).
fn observed(stored: &Value) -> nodeguard::ledger::NodeObservation {
    let text = stored.to_string();
    let doc: nodeguard::identity::NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    nodeguard::ledger::NodeObservation::of(&nodeguard::identity::NodeClaim::from_doc(&doc).unwrap())
}

fn node_reads(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|(method, path)| method == http::Method::GET && path == &node_path("worker-1"))
        .count()
}

#[tokio::test]
async fn an_observation_queued_behind_a_reboot_records_no_conflict() {
    let api = FakeApi::new();
    let metrics = Arc::new(Metrics::new());
    let mut recorder = recorder_on(&api, &metrics);
    let worker1 = Machine::new("worker-1", 0x11, "10.0.0.11");
    let uid = "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f";
    let before = api.insert(NODES, stored_node(&worker1, uid));
    let after = api.insert(NODES, stored_node(&worker1.rebooted(BOOT_B), uid));
    // Both events were queued; the recorder applies A, then B, then A again: the last one
    // is the first event delivered a second time (or a lagging replica's copy).
    for node in [&before, &after, &before] {
        recorder.record(&Observation::node(observed(node))).await;
    }
    let record = stored_identity(&api, "worker-1").unwrap();
    assert!(record.conflict().is_none(), "{:?}", record.status);
    assert_eq!(record.current_boot(), Some(BOOT_B));
    assert_eq!(node_reads(&api), 0, "an older version needs no second look");
}

#[tokio::test]
async fn a_new_leader_resyncing_from_a_lagging_watch_records_no_conflict() {
    let api = FakeApi::new();
    let worker1 = Machine::new("worker-1", 0x11, "10.0.0.11");
    let uid = "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f";
    let before = api.insert(NODES, stored_node(&worker1, uid));
    let after = api.insert(NODES, stored_node(&worker1.rebooted(BOOT_B), uid));
    // The old leader recorded A, then the reboot to B.
    let metrics = Arc::new(Metrics::new());
    let mut old_leader = recorder_on(&api, &metrics);
    old_leader
        .record(&Observation::node(observed(&before)))
        .await;
    old_leader
        .record(&Observation::node(observed(&after)))
        .await;
    // The new leader's watch has not seen the reboot yet.
    let inventory = SharedInventory::default();
    inventory.write(|inv| {
        let text = before.to_string();
        let doc: nodeguard::identity::NodeDoc<'_> = serde_json::from_str(&text).unwrap();
        inv.apply_node_as_written(nodeguard::identity::NodeClaim::from_doc(&doc).unwrap());
        inv.apply_identity(stored_identity(&api, "worker-1").unwrap().entry().unwrap());
    });
    let mut new_leader = Recorder::new(
        api.client(),
        inventory,
        metrics.ledger.clone(),
        metrics.events.clone(),
        "nodeguard-1",
    );
    new_leader.resync().await;
    let record = stored_identity(&api, "worker-1").unwrap();
    assert!(record.conflict().is_none(), "{:?}", record.status);
    assert_eq!(record.current_boot(), Some(BOOT_B));

    // A record of an older release carries no version: the resync still never moves
    // it back to the earlier boot.
    api.update(&format!("{LEDGER}/worker-1"), |record| {
        record["status"]
            .as_object_mut()
            .unwrap()
            .remove("nodeResourceVersion");
    });
    let mut unversioned = observed(&before);
    unversioned.resource_version = None;
    new_leader
        .record(&Observation::Node(
            unversioned,
            nodeguard::ledger::Evidence::Resync,
        ))
        .await;
    let record = stored_identity(&api, "worker-1").unwrap();
    assert!(record.conflict().is_none());
    assert_eq!(record.current_boot(), Some(BOOT_B));
}

#[tokio::test]
async fn a_boot_coming_back_is_a_conflict_only_once_a_fresh_read_of_the_node_shows_it() {
    let api = FakeApi::new();
    let metrics = Arc::new(Metrics::new());
    let mut recorder = recorder_on(&api, &metrics);
    let worker1 = Machine::new("worker-1", 0x11, "10.0.0.11");
    let copy = worker1.rebooted(BOOT_B);
    let uid = "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f";
    let first = api.insert(NODES, stored_node(&worker1, uid));
    recorder.record(&Observation::node(observed(&first))).await;
    let second = api.insert(NODES, stored_node(&copy, uid));
    recorder.record(&Observation::node(observed(&second))).await;
    // A comes back in an event, but by the time the recorder reads the Node it shows B
    // again: not confirmed, nothing recorded from this event.
    let back = api.insert(NODES, stored_node(&worker1, uid));
    api.insert(NODES, stored_node(&copy, uid));
    recorder.record(&Observation::node(observed(&back))).await;
    assert_eq!(node_reads(&api), 1);
    let record = stored_identity(&api, "worker-1").unwrap();
    assert!(record.conflict().is_none());
    assert_eq!(record.current_boot(), Some(BOOT_B));
    // The next return, still there when read: the conflict, keeping A.
    let back = api.insert(NODES, stored_node(&worker1, uid));
    recorder.record(&Observation::node(observed(&back))).await;
    assert_eq!(node_reads(&api), 2);
    let conflict = stored_identity(&api, "worker-1")
        .unwrap()
        .conflict()
        .cloned()
        .expect("a confirmed return is a conflict");
    assert_eq!(
        (conflict.kept_boot.as_str(), conflict.refused_boot.as_str()),
        (worker1.boot_id.as_str(), BOOT_B)
    );
}

#[tokio::test]
async fn records_no_node_claimed_within_an_hour_are_removed_and_no_others() {
    let api = FakeApi::new();
    let worker1 = cluster(&api);
    let record = |name: &str, age_minutes: i64| {
        let mut record = NodeIdentity::blank(name);
        record.metadata.uid = Some(format!("uid-record-{name}"));
        record.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now() - jiff::SignedDuration::from_mins(age_minutes),
            ));
        api.insert(LEDGER, serde_json::to_value(record).unwrap())
    };
    // A CSR for a name that never registered, two hours ago; another one just now; one
    // changed by another writer right before the delete; and worker-1's own record,
    // made from its CSR before its Node registered.
    let stored = [
        record("never-joined", 120),
        record("joining", 5),
        record("changed-meanwhile", 120),
        record("worker-1", 120),
    ];
    let inventory = SharedInventory::default();
    inventory.write(|inv| {
        for record in &stored {
            let record: NodeIdentity = serde_json::from_value(record.clone()).unwrap();
            inv.apply_identity(record.entry().unwrap());
        }
        let node = stored_node(&worker1, "6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f");
        let text = node.to_string();
        let doc: nodeguard::identity::NodeDoc<'_> = serde_json::from_str(&text).unwrap();
        inv.apply_node_as_written(nodeguard::identity::NodeClaim::from_doc(&doc).unwrap());
    });
    api.before_next_write(&format!("{LEDGER}/changed-meanwhile"), |record| {
        record["spec"]["machineID"] = json!("0123456789abcdef0123456789abcdef");
    });
    let metrics = Arc::new(Metrics::new());
    let mut recorder = Recorder::new(
        api.client(),
        inventory.clone(),
        metrics.ledger.clone(),
        metrics.events.clone(),
        "n-0",
    );
    recorder.resync().await;

    assert!(stored_identity(&api, "never-joined").is_none());
    assert!(inventory.read(|inv| inv.identity("never-joined").is_none()));
    assert!(stored_identity(&api, "joining").is_some());
    assert!(
        stored_identity(&api, "changed-meanwhile").is_some(),
        "a record changed since it was read is kept"
    );
    let worker1_record = stored_identity(&api, "worker-1").unwrap();
    assert_eq!(
        worker1_record.owner_uid(),
        Some("6f0c1b6e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"),
        "its Node registered: the record is now owned, not removed"
    );
    assert!(
        metrics
            .encode()
            .unwrap()
            .lines()
            .any(|l| l == "nodeguard_ledger_writes_total{result=\"removed\"} 1")
    );
}

/// The recorder of a cluster of `nodes` Nodes with no records yet, in its own task.
fn leader_with_a_resync_to_do(
    api: &FakeApi,
    nodes: u8,
) -> (
    nodeguard::plumbing::lease::LeaderSender,
    nodeguard::watch::observations::Observations,
    JoinHandle<()>,
) {
    let machines: Vec<Machine> = (0..nodes)
        .map(|i| Machine::new(&format!("node-{i:03}"), i, &format!("10.1.0.{i}")))
        .collect();
    let inventory = SharedInventory::new(nodeguard::cmd::demo::scenarios::inventory_of(&machines));
    let recorder = Recorder::new(
        api.client(),
        inventory,
        Metrics::new().ledger,
        Metrics::new().events,
        "nodeguard-0",
    );
    let (leading, leadership) = nodeguard::plumbing::lease::leadership_channel();
    let (sender, observed) = observations::observations();
    let task = tokio::spawn(recorder.run(observed, leadership));
    (leading, sender, task)
}

#[tokio::test]
async fn losing_the_lease_mid_resync_stops_the_writes_at_once() {
    let api = FakeApi::new();
    // 100 records to write at 50 a second: two seconds of resync.
    let (leading, _observations, task) = leader_with_a_resync_to_do(&api, 100);
    leading.set(true);
    eventually("the resync has started", || ledger_writes(&api) >= 10).await;
    leading.set(false);
    let at_loss = ledger_writes(&api);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // At most the one write already on the wire when the lease went.
    assert!(
        ledger_writes(&api) <= at_loss + 1,
        "{} writes after losing the lease",
        ledger_writes(&api) - at_loss
    );
    assert!(ledger_writes(&api) < 100);
    task.abort();
}

#[tokio::test]
async fn an_election_that_ends_leaves_the_recorder_writing_nothing() {
    let api = FakeApi::new();
    let (leading, _observations, task) = leader_with_a_resync_to_do(&api, 100);
    leading.set(true);
    eventually("the resync has started", || ledger_writes(&api) >= 10).await;
    // The election task stops (or crashes) while leading: its last word was "leading",
    // but it holds the Lease no longer.
    drop(leading);
    let at_end = ledger_writes(&api);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        ledger_writes(&api) <= at_end + 1,
        "{} writes after the election ended",
        ledger_writes(&api) - at_end
    );
    task.abort();
}
