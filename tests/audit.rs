//! `nodeguard audit` over the shipped example dump and the real fixtures: what it finds,
//! its JSON shape, its exit codes, and that its verdicts are the webhook's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;

use std::path::Path;
use std::process::Command;

use http_body_util::BodyExt;
use nodeguard::cmd::audit::{self, load::Cluster};
use nodeguard::config::SharedConfig;
use nodeguard::inventory::SharedInventory;
use nodeguard::policy::audit::Uniqueness;
use nodeguard::policy::{CheckId, CollisionKind, Config, Effect, Outcome};
use nodeguard::webhook::{self, AppState};
use nodeguard_testkit::kubelet::{self, Write};
use serde_json::Value;
use tower::ServiceExt;

const DUMP: &str = "examples/cluster-dump.json";

fn dump() -> Cluster {
    audit::read_dump(Path::new(DUMP)).unwrap()
}

fn taken(cluster: &Cluster) -> jiff::Timestamp {
    cluster.latest_heartbeat.unwrap()
}

#[test]
fn the_example_dump_shows_exactly_the_planted_clone_and_the_template_machine_id() {
    let mut cluster = dump();
    assert_eq!(cluster.counts.nodes, 6);
    assert_eq!(cluster.counts.bound_csrs, 3);
    let report = {
        let at = taken(&cluster);
        audit::audit_cluster(&mut cluster, &Config::default(), at)
    };

    let collisions: Vec<(CheckId, CollisionKind, Effect, Vec<&str>)> = report
        .collisions
        .iter()
        .map(|c| {
            (
                c.check,
                c.kind,
                c.effect,
                c.nodes.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let clone = vec!["worker-2", "worker-5"];
    assert_eq!(
        collisions,
        vec![
            (
                CheckId::MachineId,
                CollisionKind::Shared,
                Effect::Warn,
                vec![
                    "control-plane",
                    "worker-1",
                    "worker-2",
                    "worker-3",
                    "worker-4",
                    "worker-5"
                ],
            ),
            (
                CheckId::SystemUuid,
                CollisionKind::Clone,
                Effect::Deny,
                clone.clone()
            ),
            (
                CheckId::InternalIp,
                CollisionKind::Clone,
                Effect::Deny,
                clone.clone()
            ),
            (
                CheckId::KeyFingerprint,
                CollisionKind::Clone,
                Effect::Deny,
                clone
            ),
        ]
    );
    let ip = &report.collisions[2];
    assert_eq!((ip.field, ip.value.as_str()), ("InternalIP", "10.0.0.12"));

    let uniqueness: Vec<(CheckId, Uniqueness)> = report
        .fields
        .iter()
        .map(|f| (f.check, f.uniqueness))
        .collect();
    assert_eq!(
        uniqueness,
        vec![
            (CheckId::MachineId, Uniqueness::NotUnique),
            (CheckId::SystemUuid, Uniqueness::MostlyUnique),
            (CheckId::ProviderId, Uniqueness::Absent),
            (CheckId::Hostname, Uniqueness::Unique),
            (CheckId::InternalIp, Uniqueness::MostlyUnique),
        ]
    );
    assert_eq!(
        report.fields[0].summary,
        "machine-id: one value shared by all 6 nodes: this field cannot tell machines apart \
         here; set machine-id to warn or off, or declare it in sharedValues.machineIDs"
    );

    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].node, "worker-3");
    assert_eq!(
        report.conflicts[0].refused_boot,
        "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60"
    );
    let orphans: Vec<(&str, bool, bool)> = report
        .orphans
        .iter()
        .map(|o| (o.node.as_str(), o.owned, o.expired))
        .collect();
    assert_eq!(orphans, vec![("worker-9", false, true)]);
    // worker-1's copy, refused while worker-1 ran, then proven a second machine.
    let refused: Vec<(&str, &str, bool)> = report
        .refused
        .iter()
        .map(|r| (r.node.as_str(), r.machine.as_str(), r.proven.is_some()))
        .collect();
    assert_eq!(
        refused,
        vec![(
            "worker-1",
            "system UUID 564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61, machine-id 7d3b0b8e54c84f5f9a6c1e2d3f4a5b6c",
            true
        )]
    );
    // Its bootstrap CSR, still pending, is one the webhook would refuse.
    let pending: Vec<(&str, &str, Option<CheckId>)> = report
        .pending
        .iter()
        .map(|p| (p.name.as_str(), p.node.as_str(), p.verdict.deciding_check()))
        .collect();
    assert_eq!(
        pending,
        vec![("csr-zq8mv", "worker-1", Some(CheckId::NameTakeover))]
    );

    let restart: Vec<(&str, Outcome)> = report
        .verdicts
        .iter()
        .map(|v| (v.node.as_str(), v.restart.outcome()))
        .collect();
    assert_eq!(
        restart,
        vec![
            ("control-plane", Outcome::Allowed),
            ("worker-1", Outcome::Allowed),
            ("worker-2", Outcome::Allowed),
            ("worker-3", Outcome::Denied),
            ("worker-4", Outcome::Allowed),
            ("worker-5", Outcome::Allowed),
        ]
    );
    let as_new: Vec<(&str, Outcome)> = report
        .verdicts
        .iter()
        .map(|v| (v.node.as_str(), v.as_new.outcome()))
        .collect();
    assert_eq!(
        as_new,
        vec![
            ("control-plane", Outcome::Warned),
            ("worker-1", Outcome::Warned),
            ("worker-2", Outcome::Denied),
            ("worker-3", Outcome::Warned),
            ("worker-4", Outcome::Warned),
            ("worker-5", Outcome::Denied),
        ]
    );
    assert!(report.has_findings());
}

#[test]
fn declaring_the_template_machine_id_and_exempting_the_clone_leaves_only_the_ledger() {
    let mut cluster = dump();
    let config = Config::from_yaml(
        "sharedValues:\n  machineIDs: [\"7d3b0b8e54c84f5f9a6c1e2d3f4a5b6c\"]\nexemptions:\n  nodes: [worker-5]\n",
    )
    .unwrap();
    let report = {
        let at = taken(&cluster);
        audit::audit_cluster(&mut cluster, &config, at)
    };
    assert_eq!(report.fields[0].uniqueness, Uniqueness::Absent);
    assert_eq!(report.fields[0].ignored, 6);
    // worker-5 is exempt, but its values still make worker-2 collide when it joins anew.
    let worker5 = report
        .verdicts
        .iter()
        .find(|v| v.node == "worker-5")
        .unwrap();
    assert_eq!(worker5.as_new.outcome(), Outcome::Exempt);
    let worker2 = report
        .verdicts
        .iter()
        .find(|v| v.node == "worker-2")
        .unwrap();
    assert_eq!(worker2.as_new.outcome(), Outcome::Denied);
}

#[test]
fn the_real_fixture_clusters_audit_as_their_platforms_are() {
    let audit_of = |path: &str| {
        let mut cluster = audit::read_dump(Path::new(path)).unwrap();
        let now = cluster
            .latest_heartbeat
            .unwrap_or_else(jiff::Timestamp::now);
        (
            cluster.counts.nodes,
            audit::audit_cluster(&mut cluster, &Config::default(), now),
        )
    };
    for (path, nodes) in [
        ("tests/fixtures/real/nodelist-eks-al2023-2nodes.json", 2),
        ("tests/fixtures/real/nodelist-aks-3nodes-2021.json", 3),
        ("tests/fixtures/real/nodelist-rke2-gpu-node.json", 1),
    ] {
        let (read, report) = audit_of(path);
        assert_eq!(read, nodes, "{path}");
        assert!(!report.has_findings(), "{path}: {report:#?}");
        assert!(
            report
                .verdicts
                .iter()
                .all(|v| v.restart.outcome() == Outcome::Allowed
                    && v.as_new.outcome() == Outcome::Allowed),
            "{path}"
        );
    }
    // k3s on VMware clones of one template: every node one machine-id, nothing else shared.
    let (read, report) =
        audit_of("tests/fixtures/real/duplicates/k3s-vmware-clones-shared-machineid.excerpt.json");
    assert_eq!(read, 3);
    assert_eq!(report.collisions.len(), 1);
    assert_eq!(report.collisions[0].kind, CollisionKind::Shared);
    assert_eq!(report.fields[0].uniqueness, Uniqueness::NotUnique);
    assert!(
        report
            .fields
            .iter()
            .skip(1)
            .all(|f| f.uniqueness == Uniqueness::Unique)
    );
}

fn nodeguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodeguard"))
}

#[test]
fn the_command_prints_documented_json_and_exits_0_1_or_2() {
    let output = nodeguard()
        .args(["audit", "-f", DUMP, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "findings");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["kind"], "AuditReport");
    assert_eq!(report["apiVersion"], "nodeguard.io/v1alpha1");
    assert_eq!(report["at"], "2026-11-30T09:00:00Z");
    assert_eq!(report["findings"], true);
    assert_eq!(report["read"]["nodes"], 6);
    for key in ["counts", "collisions", "fields", "nodes"] {
        assert!(report[key].is_array(), "{key}");
    }
    let collision = &report["collisions"][1];
    for key in [
        "check", "field", "value", "kind", "effect", "nodes", "message",
    ] {
        assert!(!collision[key].is_null(), "collisions[].{key}");
    }
    assert_eq!(collision["check"], "system-uuid");
    assert_eq!(collision["kind"], "clone");
    let field = &report["fields"][0];
    for key in [
        "check",
        "reporting",
        "distinct",
        "ignored",
        "sharedValues",
        "largestGroup",
        "uniqueness",
        "summary",
    ] {
        assert!(!field[key].is_null(), "fields[].{key}");
    }
    assert_eq!(report["ledger"]["conflicts"][0]["node"], "worker-3");
    // The node in conflict has its pods' status writes judged, since the conflict.
    assert_eq!(report["ledger"]["podsGuarded"][0]["node"], "worker-3");
    assert_eq!(
        report["ledger"]["podsGuarded"][0]["since"],
        report["ledger"]["conflicts"][0]["detected"]
    );
    assert_eq!(report["ledger"]["withoutNode"][0]["node"], "worker-9");
    let worker3 = &report["nodes"][3];
    assert_eq!(worker3["name"], "worker-3");
    assert_eq!(worker3["restart"]["outcome"], "denied");
    assert_eq!(worker3["restart"]["checks"][0]["check"], "two-kubelets");
    assert!(
        worker3["restart"]["message"]
            .as_str()
            .unwrap()
            .starts_with("nodeguard [two-kubelets]")
    );
    assert_eq!(worker3["asNew"]["outcome"], "warned");
    let counts: Vec<(String, String, u64)> = report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(counts.contains(&("two-kubelets".into(), "refused".into(), 1)));
    assert!(counts.contains(&("ledger".into(), "orphan".into(), 1)));
    assert!(counts.contains(&("name-takeover".into(), "second-machine".into(), 1)));
    assert!(counts.contains(&("name-takeover".into(), "pending-refused".into(), 1)));
    let refused = &report["ledger"]["refusedMachines"][0];
    assert_eq!(refused["node"], "worker-1");
    assert_eq!(refused["check"], "name-takeover");
    assert_eq!(refused["proven"], "2026-11-30T06:01:00Z");
    assert_eq!(report["pendingCSRs"][0]["name"], "csr-zq8mv");
    assert_eq!(report["pendingCSRs"][0]["verdict"]["outcome"], "denied");
    assert_eq!(report["collisions"][0]["evidence"], "since first seen");

    let table = nodeguard().args(["audit", "-f", DUMP]).output().unwrap();
    assert_eq!(table.status.code(), Some(1));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("likely clone"), "{text}");
    assert!(text.contains("worker-2, worker-5"), "{text}");

    // A healthy cluster read from standard input: nothing found.
    let mut clean = nodeguard()
        .args(["audit", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        clean.stdin.as_mut().unwrap(),
        &std::fs::read("tests/fixtures/real/nodelist-eks-al2023-2nodes.json").unwrap(),
    )
    .unwrap();
    drop(clean.stdin.take());
    let clean = clean.wait_with_output().unwrap();
    assert_eq!(clean.status.code(), Some(0));
    assert!(
        String::from_utf8(clean.stdout)
            .unwrap()
            .ends_with("no findings\n")
    );

    let missing = nodeguard()
        .args(["audit", "-f", "no-such-dump.json"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let garbage = nodeguard()
        .args(["audit", "-f", "Cargo.toml"])
        .output()
        .unwrap();
    assert_eq!(garbage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&garbage.stderr).contains("not JSON"));
}

/// POSTs a kubelet's registration of `node` to the webhook over `cluster`'s inventory.
async fn webhook_answer(cluster: Cluster, node: &Value) -> Value {
    let router = webhook::router(AppState {
        inventory: SharedInventory::new(cluster.inventory),
        config: SharedConfig::default(),
        metrics: nodeguard::metrics::Metrics::new().admission,
        events: None,
        readiness: None,
        refusals: None,
    });
    let name = node["metadata"]["name"].as_str().unwrap();
    let review = kubelet::node_review(
        "2d1e5b8a-0000-4000-8000-000000000001",
        Write::Create,
        node,
        None,
        &format!("system:node:{name}"),
    );
    let request = http::Request::post("/validate/nodes")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(review.to_string()))
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
}

/// The dump without one node and its ledger record: as after `kubectl delete node`.
fn without(name: &str) -> Cluster {
    let mut list: Value = serde_json::from_slice(&std::fs::read(DUMP).unwrap()).unwrap();
    list["items"].as_array_mut().unwrap().retain(|item| {
        item["metadata"]["name"] != name || item["kind"] == "CertificateSigningRequest"
    });
    let mut cluster = Cluster::default();
    cluster.add_list(list.to_string().as_bytes()).unwrap();
    cluster
}

#[tokio::test]
async fn the_webhook_answers_every_node_of_the_dump_as_the_audit_says() {
    let mut cluster = dump();
    let now = jiff::Timestamp::now();
    let report = audit::audit_cluster(&mut cluster, &Config::default(), now);
    let list: Value = serde_json::from_slice(&std::fs::read(DUMP).unwrap()).unwrap();
    let nodes: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["kind"] == "Node")
        .collect();
    assert_eq!(nodes.len(), report.verdicts.len());
    let mut outcomes = std::collections::BTreeSet::new();
    for node in nodes {
        let name = node["metadata"]["name"].as_str().unwrap();
        let verdicts = report.verdicts.iter().find(|v| v.node == name).unwrap();
        // The kubelet re-sends its Node at a restart: registered as it is.
        for (verdict, cluster, case) in [
            (&verdicts.restart, dump(), "restart"),
            (&verdicts.as_new, without(name), "as new"),
        ] {
            let answer = webhook_answer(cluster, node).await;
            outcomes.insert(verdict.outcome().as_str());
            assert_eq!(
                answer["allowed"].as_bool().unwrap(),
                verdict.allowed(),
                "{name} {case}: {answer}"
            );
            let message = answer["status"]["message"].as_str().map(str::to_string);
            assert_eq!(message, verdict.denial_message(), "{name} {case}");
            let warnings: Vec<String> = answer["warnings"]
                .as_array()
                .map(|w| w.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            // A denial carries its message; only an allowed write carries warnings.
            let expected = if verdict.allowed() {
                verdict.warnings()
            } else {
                Vec::new()
            };
            assert_eq!(warnings, expected, "{name} {case}");
        }
    }
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        vec!["allowed", "denied", "warned"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_it_reads_the_cluster_of_the_context_it_is_given_page_by_page() {
    let api = fake_api::FakeApi::new();
    let list: Value = serde_json::from_slice(&std::fs::read(DUMP).unwrap()).unwrap();
    for item in list["items"].as_array().unwrap() {
        let path = match item["kind"].as_str().unwrap() {
            "Node" => "/api/v1/nodes",
            "CertificateSigningRequest" => {
                "/apis/certificates.k8s.io/v1/certificatesigningrequests"
            }
            _ => "/apis/nodeguard.io/v1alpha1/nodeidentities",
        };
        api.insert(path, item.clone());
    }
    let addr = api.serve_http().await;
    let dir = std::env::temp_dir().join(format!("nodeguard-audit-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // The current context points nowhere; `--context fake` is the cluster.
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             - name: elsewhere\n  cluster:\n    server: http://127.0.0.1:9\n\
             users:\n- name: admin\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\n\
             - name: elsewhere\n  context:\n    cluster: elsewhere\n    user: admin\n"
        ),
    )
    .unwrap();
    let run = |context: Option<&'static str>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nodeguard"));
            command
                .args(["audit", "--output", "json", "--kubeconfig"])
                .arg(&kubeconfig);
            if let Some(context) = context {
                command.args(["--context", context]);
            }
            command.output().await.unwrap()
        }
    };
    let output = run(Some("fake")).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["read"]["nodes"], 6);
    assert_eq!(report["read"]["boundCSRs"], 3);
    assert_eq!(report["read"]["nodeIdentities"], 7);
    assert_eq!(report["ledger"]["conflicts"][0]["node"], "worker-3");
    let checks: Vec<&str> = report["collisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "machine-id",
            "system-uuid",
            "internal-ip",
            "key-fingerprint"
        ]
    );
    let lists: Vec<String> = api
        .requests()
        .into_iter()
        .map(|(_, path)| path)
        .filter(|path| path.contains("limit=500"))
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");

    let unreachable = run(None).await;
    assert_eq!(unreachable.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn installed_as_kubectl_nodeguard_it_speaks_as_a_kubectl_plugin() {
    let dir = std::env::temp_dir().join(format!("nodeguard-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("kubectl-nodeguard");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nodeguard"), &plugin).unwrap();
    let help = Command::new(&plugin)
        .args(["audit", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("Usage: kubectl nodeguard audit"), "{text}");
    assert!(text.contains("--context <NAME>"), "{text}");
    let audit = Command::new(&plugin)
        .args(["audit", "-f", DUMP])
        .output()
        .unwrap();
    assert_eq!(audit.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
