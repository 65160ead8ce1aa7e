//! The incident's cases over real HTTPS, as the API server sends them, asserting the
//! exact AdmissionReview answer each one gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard::cmd::demo::LocalWebhook;
use nodeguard::cmd::demo::scenarios::{self, HealthyCluster, Scenario};
use nodeguard::policy::Config;
use serde_json::{Value, json};

/// Sends one scenario to a fresh server holding the scenario's cluster.
async fn answer(scenario: Scenario) -> Value {
    let webhook = LocalWebhook::start(Config::default()).await.unwrap();
    let Scenario {
        inventory,
        endpoint,
        review,
        ..
    } = scenario;
    webhook.inventory.write(|current| *current = inventory);
    let (status, answer) = webhook.ask(endpoint, &review).await.unwrap();
    webhook.stop().await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert!(answer["response"].get("patch").is_none());
    assert!(answer["response"].get("patchType").is_none());
    answer["response"].clone()
}

/// A refused status write or CSR.
fn denial(message: String) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "code": 403,
    })
}

/// A refused registration: 422 Invalid, not 403, which would make the kubelet read the
/// Node instead of logging the message.
fn refused_registration(message: String) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Invalid",
        "code": 422,
    })
}

fn scenario(cluster: &HealthyCluster, key: char) -> Scenario {
    scenarios::with_cluster(cluster)
        .unwrap()
        .into_iter()
        .find(|s| s.key == key)
        .unwrap()
}

#[tokio::test]
async fn a_clone_under_a_new_name_with_the_same_machine_id_is_denied_naming_the_original() {
    let cluster = HealthyCluster::new().unwrap();
    let original = cluster.machine("worker-1");
    let response = answer(scenario(&cluster, 'a')).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"],
        refused_registration(format!(
            "nodeguard [machine-id]: machine-id {} is already used by node \"worker-1\"; this machine \
             looks like a clone of worker-1: give it a new identity (rm /etc/machine-id && \
             systemd-machine-id-setup, then reboot) or delete node worker-1 if it is gone (also \
             failed: internal-ip)",
            original.machine_id
        ))
    );
    assert!(response.get("warnings").is_none());
}

#[tokio::test]
async fn a_clone_under_the_same_name_from_another_machine_is_denied_while_the_original_is_ready() {
    let cluster = HealthyCluster::new().unwrap();
    let original = cluster.machine("worker-1");
    let scenario = scenario(&cluster, 'b');
    let clone_info = scenario.review["request"]["object"]["status"]["nodeInfo"].clone();
    let response = answer(scenario).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"],
        refused_registration(format!(
            "nodeguard [name-takeover]: node \"worker-1\" is registered to another machine that \
             is running (system UUID {}…, this machine {}…); give this machine its own hostname, \
             or if it replaces worker-1, drain and delete node worker-1 first. If this machine is \
             worker-1 itself, it is let through once worker-1 has had no status written for 10m",
            &original.system_uuid[..8],
            &clone_info["systemUUID"].as_str().unwrap()[..8]
        ))
    );
}

#[tokio::test]
async fn a_clone_re_using_the_originals_kubelet_key_in_a_bootstrap_csr_is_denied() {
    let cluster = HealthyCluster::new().unwrap();
    // Computed by rcgen from the key itself, not from the CSR nodeguard parses.
    let fingerprint = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&cluster.worker1_key),
        ))
    };
    let response = answer(scenario(&cluster, 'c')).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"],
        denial(format!(
            "nodeguard [key-fingerprint]: the key of this CSR (SHA-256 {fingerprint}) is already \
             bound to node \"worker-1\"; this machine carries worker-1's kubelet credentials: remove \
             /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, then re-join \
             with a bootstrap token"
        ))
    );
}

#[tokio::test]
async fn a_bootstrap_csr_for_the_name_of_a_live_node_is_denied() {
    let cluster = HealthyCluster::new().unwrap();
    let response = answer(scenario(&cluster, 'd')).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"],
        denial(
            "nodeguard [name-takeover]: a bootstrap token asks for the credentials of node \
             \"worker-2\", which a kubelet on another machine is running; give this machine its \
             own hostname, or if it replaces worker-2, drain and delete node worker-2 first. If \
             this machine is worker-2 itself, it is let through once worker-2 has had no status \
             written for 10m"
                .into()
        )
    );
}

#[tokio::test]
async fn the_original_kubelet_restarting_is_allowed_without_warnings() {
    let cluster = HealthyCluster::new().unwrap();
    let response = answer(scenario(&cluster, 'e')).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("status").is_none(), "{response}");
    assert!(response.get("warnings").is_none(), "{response}");
}

#[tokio::test]
async fn a_new_node_in_a_pool_sharing_one_machine_id_is_warned_not_denied() {
    let cluster = HealthyCluster::new().unwrap();
    let response = answer(scenario(&cluster, 'f')).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("status").is_none(), "{response}");
    assert_eq!(
        response["warnings"],
        json!([
            "nodeguard [machine-id]: machine-id 5f2d8c1e9a7b4… is shared by 3 nodes (e.g. aks-pool-1); not proof of a clone"
        ])
    );
}

#[tokio::test]
async fn the_clone_holding_the_originals_name_and_credentials_cannot_write_its_status() {
    let cluster = HealthyCluster::new().unwrap();
    let original = cluster.machine("worker-1");
    let response = answer(scenario(&cluster, 'g')).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"],
        denial(format!(
            "nodeguard [identity-drift]: node \"worker-1\" runs with system UUID {}…, but this \
             write reports 564d2a7e…: a second machine is writing as worker-1 with its \
             credentials; shut that machine down and give it a new identity, or if worker-1 \
             really moved to new hardware, delete node worker-1 and let it re-register. This \
             machine's writes are let through once worker-1 has had no status written for 10m",
            &original.system_uuid[..8]
        ))
    );
}

#[tokio::test]
async fn a_perfect_copy_taking_turns_with_the_original_is_denied_naming_both_boots() {
    let cluster = HealthyCluster::new().unwrap();
    let original = cluster.machine("worker-1");
    let response = answer(scenario(&cluster, 'h')).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"],
        denial(format!(
            "nodeguard [two-kubelets]: two machines are writing node \"worker-1\" with its \
             credentials: boot d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00 (this machine) and boot {}…, \
             which registered first and is kept; stop this machine's kubelet and give it its own \
             identity (hostname, rm /etc/machine-id && systemd-machine-id-setup, remove \
             /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, re-join \
             with a bootstrap token), then run nodeguard forget worker-1",
            &original.boot_id[..8]
        ))
    );
    // The original's own next write, against the same ledger, is allowed.
    let mut allowed = scenario(&cluster, 'h');
    let request = &mut allowed.review["request"];
    let original_object = request["oldObject"].clone();
    request["object"] = original_object;
    assert_eq!(answer(allowed).await["allowed"], true);
}

#[test]
fn the_demo_replays_every_scenario_as_expected() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nodeguard"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("\n10 scenarios: 10 answered as expected\n"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("NOT AS EXPECTED").count(), 0);
    assert_eq!(
        stdout.matches("denied the request: nodeguard [").count(),
        7,
        "{stdout}"
    );
}

#[test]
fn json_logs_give_one_line_per_denial_and_warning_with_uid_node_and_checks() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nodeguard"))
        .args(["--log-format", "json", "--log-level", "info", "demo"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let decisions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "nodeguard::webhook")
        .collect();
    let denied: Vec<&Value> = decisions
        .iter()
        .copied()
        .filter(|l| l["fields"]["message"] == "denied")
        .collect();
    let warned: Vec<&Value> = decisions
        .iter()
        .copied()
        .filter(|l| l["fields"]["message"] == "warned")
        .collect();
    assert_eq!(denied.len(), 7, "{stderr}");
    assert_eq!(warned.len(), 2, "{stderr}");
    for line in denied.iter().chain(&warned) {
        assert_eq!(line["level"], "INFO");
        let fields = &line["fields"];
        assert!(fields["uid"].as_str().unwrap().starts_with("b0d3a1c2-"));
        assert!(!fields["node"].as_str().unwrap().is_empty(), "{line}");
    }
    // A CSR's line names the node it asks credentials for, beside the CSR's own name.
    let csr = denied
        .iter()
        .find(|l| l["fields"]["webhook"] == "csrs" && l["fields"]["name"] == "csr-q7w4n")
        .unwrap();
    assert_eq!(csr["fields"]["node"], "worker-4");
    assert_eq!(csr["fields"]["checks"], "key-fingerprint");
    let incident = denied
        .iter()
        .find(|l| l["fields"]["checks"] == "two-kubelets")
        .unwrap();
    assert_eq!(incident["fields"]["node"], "worker-1");
    assert_eq!(incident["fields"]["operation"], "UPDATE");
    assert_eq!(warned[0]["fields"]["check"], "machine-id");
}

#[tokio::test]
async fn the_waiting_clone_is_refused_while_its_original_reboots_and_only_on_the_recorded_proof() {
    let cluster = HealthyCluster::new().unwrap();
    let waiting = scenario(&cluster, 'i');
    let response = answer(waiting).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 422);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "nodeguard [name-takeover]: node \"worker-1\" belongs to another machine (system UUID 1139a350…), seen writing its status after this machine (564d2a7e…) was first refused at "
        ),
        "{message}"
    );
    // The same request, against the same cluster without the ledger's record of the
    // refusal and of worker-1's status since: the escape for a machine nothing ties to
    // the registered one, after 15 minutes without status.
    let mut forgetful = scenario(&cluster, 'i');
    forgetful.inventory.delete_identity("worker-1");
    let response = answer(forgetful).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("nodeguard [name-takeover]: taking over node \"worker-1\" from another machine (no status for 15m)"),
        "{response}"
    );
}
