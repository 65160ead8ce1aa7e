//! The pure core against objects collected from real clusters (tests/fixtures/real,
//! provenance in PROVENANCE.md): claims read right, CSR keys fingerprint as openssl
//! computes them, and healthy clusters produce no finding at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use jiff::Timestamp;
use nodeguard::identity::{CsrClaim, CsrDoc, CsrError, KeyBinding, NodeClaim, NodeDoc};
use nodeguard::inventory::Inventory;
use nodeguard::policy::{self, CheckId, Config, NodeReview, Operation, Outcome};
use serde_json::Value;

fn fixture(path: &str) -> String {
    fs::read_to_string(format!(
        "{}/tests/fixtures/real/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn claim(node: &Value) -> NodeClaim {
    let text = node.to_string();
    let doc: NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    NodeClaim::from_doc(&doc).unwrap()
}

fn items(list: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&fixture(list)).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn now() -> Timestamp {
    "2026-11-27T12:00:00Z".parse().unwrap()
}

fn create(node: &Value) -> NodeReview {
    NodeReview {
        labels: Vec::new(),
        operation: Operation::Create,
        object: Some(claim(node)),
        old_object: None,
    }
}

#[test]
fn a_kind_node_reads_as_its_kubelet_reported_it() {
    let node: Value = serde_json::from_str(&fixture("node-kind-control-plane.json")).unwrap();
    let claim = claim(&node);
    assert_eq!(&*claim.name, "attack-chain-6-control-plane");
    assert_eq!(
        claim.machine_id.unwrap().as_str(),
        "9cbf8e2fbf5540cd8ff218ef016ba690"
    );
    assert_eq!(
        claim.system_uuid.unwrap().as_str(),
        "3f39a350-3cd4-400f-875d-c270379817b0"
    );
    assert_eq!(
        claim.boot_id.unwrap().as_str(),
        "a0a0427b-40ea-4cf5-9f24-53d6e200ef2d"
    );
    assert_eq!(
        claim.provider_id.unwrap().as_str(),
        "kind://docker/attack-chain-6/attack-chain-6-control-plane"
    );
    assert_eq!(
        claim.internal_ips,
        vec!["172.18.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        claim.hostnames.len(),
        1,
        "label and Hostname address are one hostname"
    );
    assert!(claim.readiness.ready);
    assert_eq!(
        claim.readiness.since,
        Some("2024-02-20T11:18:12Z".parse().unwrap())
    );
}

#[test]
fn a_gke_node_with_an_uppercase_uuid_and_an_external_ip_reads_normalised() {
    let node: Value = serde_json::from_str(&fixture("node-gke-cos-preemptible.json")).unwrap();
    let claim = claim(&node);
    assert_eq!(
        claim.system_uuid.unwrap().as_str(),
        "591e5f51-4cbe-63fc-b11f-c5ce2c340202"
    );
    assert_eq!(
        claim.external_ips,
        vec!["35.192.99.255".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        claim.internal_ips,
        vec!["10.128.0.4".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn anonymised_ids_are_placeholders_and_never_collide() {
    let node: Value =
        serde_json::from_str(&fixture("node-openshift-rhcos-redacted-ids.json")).unwrap();
    let original = claim(&node);
    assert!(original.machine_id.as_ref().unwrap().is_placeholder());
    assert!(original.system_uuid.as_ref().unwrap().is_placeholder());
    let mut inventory = Inventory::new();
    inventory.apply_node_as_written(original);
    let mut sibling = node.clone();
    sibling["metadata"]["name"] = "worker-1.imeixner20210707.lab.upshift.rdu2.redhat.com".into();
    sibling["metadata"]["labels"]["kubernetes.io/hostname"] = sibling["metadata"]["name"].clone();
    sibling["status"]["addresses"] =
        serde_json::json!([{"type": "InternalIP", "address": "10.0.89.94"}]);
    let verdict = policy::decide_node(&create(&sibling), &inventory, &Config::default(), now());
    assert_eq!(verdict.outcome(), Outcome::Allowed, "{verdict:?}");
}

#[test]
fn healthy_real_clusters_produce_no_finding() {
    for list in [
        "nodelist-eks-al2023-2nodes.json",
        "nodelist-aks-3nodes-2021.json",
        "nodelist-rke2-gpu-node.json",
    ] {
        let nodes = items(list);
        let mut inventory = Inventory::new();
        for node in &nodes {
            inventory.apply_node_as_written(claim(node));
        }
        for node in &nodes {
            // Every kubelet restart re-sends its CREATE.
            let verdict = policy::decide_node(&create(node), &inventory, &Config::default(), now());
            assert_eq!(verdict.outcome(), Outcome::Allowed, "{list}: {verdict:?}");
            // And every node would have joined the others without a finding.
            let mut others = Inventory::new();
            for other in nodes
                .iter()
                .filter(|o| o["metadata"]["name"] != node["metadata"]["name"])
            {
                others.apply_node_as_written(claim(other));
            }
            let verdict = policy::decide_node(&create(node), &others, &Config::default(), now());
            assert_eq!(verdict.outcome(), Outcome::Allowed, "{list}: {verdict:?}");
        }
    }
}

#[test]
fn k3s_vmware_clones_sharing_a_machine_id_warn_a_newcomer_but_deny_a_second_copy() {
    // Three real VMware clones report one machine-id: once two nodes shared it when
    // nodeguard first saw the cluster, a third node with it is warned, never denied.
    let nodes = items("duplicates/k3s-vmware-clones-shared-machineid.excerpt.json");
    assert_eq!(nodes.len(), 3);
    let mut inventory = Inventory::new();
    for node in &nodes[..2] {
        inventory.apply_node_as_written(claim(node));
    }
    let unrecorded = policy::decide_node(&create(&nodes[2]), &inventory, &Config::default(), now());
    assert_eq!(
        unrecorded.outcome(),
        Outcome::Denied,
        "held by two nodes, but nothing recorded says it is shared"
    );
    policy::sharing::record_first_sight(&mut inventory, &Config::default(), now());
    let verdict = policy::decide_node(&create(&nodes[2]), &inventory, &Config::default(), now());
    assert_eq!(verdict.outcome(), Outcome::Warned, "{verdict:?}");
    assert_eq!(verdict.deciding_check(), Some(CheckId::MachineId));

    // With only one established holder, the same clone is exactly what nodeguard refuses.
    let mut inventory = Inventory::new();
    inventory.apply_node_as_written(claim(&nodes[0]));
    let verdict = policy::decide_node(&create(&nodes[1]), &inventory, &Config::default(), now());
    assert_eq!(verdict.outcome(), Outcome::Denied);
    assert!(
        verdict.denial_message().unwrap().starts_with(&format!(
            "nodeguard [machine-id]: machine-id a38f8eb989a4463c8c194d086528363d is already used by node {}",
            nodes[0]["metadata"]["name"]
        )),
        "{verdict:?}"
    );
}

#[test]
fn real_kubelet_csrs_name_their_node_and_fingerprint_like_openssl() {
    // Expected values: `openssl req -in F -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
    for (file, node, sha256) in [
        (
            "csr-kubelet-client-gke-castai.pem",
            "gke-am-gcp-cast-5dc4f4ec",
            "e2e5daeb14e021f3512985239c79ab61d9bd716c8d8681f5d9d7a8e3c66ce862",
        ),
        (
            "csr-kubelet-client-openshift-ostest-extraworker-3.pem",
            "ostest-extraworker-3",
            "b0bd6785b3911915cdf3f280451a27a8aafa05c0609ab7dac99063e051cdba6f",
        ),
        (
            "csr-kubelet-serving-openshift-ostest-extraworker-3.pem",
            "ostest-extraworker-3",
            "ec5748af870d057766ae99060bbd4ec51b523cbb7da94f2968dc2c93d990c561",
        ),
        (
            "handmade/csr-openshift-approver-test-client-rsa.pem",
            "panda",
            "ab6c0fdae7f55db4440a3d2a65b222fe479076852d6752c1cde4ad202288cfff",
        ),
    ] {
        let claim = CsrClaim::from_pem(fixture(file).as_bytes()).unwrap();
        assert_eq!(&*claim.node, node, "{file}");
        assert_eq!(claim.fingerprint.to_string(), sha256, "{file}");
    }
    let serving = CsrClaim::from_pem(
        fixture("csr-kubelet-serving-openshift-ostest-extraworker-3.pem").as_bytes(),
    )
    .unwrap();
    assert_eq!(
        serving.ip_sans,
        vec!["192.168.111.28".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        serving
            .dns_sans
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>(),
        vec!["ostest-extraworker-3"]
    );
}

#[test]
fn a_csr_with_an_empty_node_name_is_not_a_kubelet_request() {
    let error = CsrClaim::from_pem(
        fixture("handmade/csr-openshift-approver-test-empty-node-name.pem").as_bytes(),
    )
    .unwrap_err();
    assert_eq!(error, CsrError::NotANode("system:node:".into()));
    // The machine approver's `noGroup` case: no signer of kubelet certificates accepts a
    // subject without O=system:nodes, so neither does csr-format.
    assert_eq!(
        CsrClaim::from_pem(fixture("handmade/csr-openshift-approver-test-no-org.pem").as_bytes())
            .unwrap_err(),
        CsrError::Organization("missing".into())
    );
    assert_eq!(
        CsrClaim::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err(),
        CsrError::PemLabel("CERTIFICATE".into())
    );
}

#[test]
fn the_csr_a_kubelet_sent_decodes_from_its_json_and_binds_once_issued() {
    let sent: Value =
        serde_json::from_str(&fixture("csr-kubelet-serving-eks-as-sent-by-kubelet.json")).unwrap();
    let text = sent.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    let claim =
        CsrClaim::from_request_field(doc.spec.as_ref().unwrap().request.as_deref().unwrap())
            .unwrap();
    assert_eq!(
        &*claim.node,
        "ip-192-168-70-74.ap-northeast-1.compute.internal"
    );
    assert_eq!(
        claim.ip_sans,
        vec!["192.168.70.74".parse::<std::net::IpAddr>().unwrap()]
    );
    // Pending: binds nothing yet.
    assert_eq!(KeyBinding::from_doc(&doc), None);

    // Approved: still nothing; issued (signed here by a throwaway CA, as the cluster's
    // signer would): bound to the node the certificate names.
    let stored: Value =
        serde_json::from_str(&fixture("csr-kubelet-serving-eks-as-stored.json")).unwrap();
    let mut approved = stored.clone();
    approved["status"] =
        serde_json::json!({"conditions": [{"type": "Approved", "status": "True"}]});
    let text = approved.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    assert_eq!(KeyBinding::from_doc(&doc), None);
    let issued = nodeguard_testkit::kubelet::issued(stored);
    let text = issued.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    let binding = KeyBinding::from_doc(&doc).unwrap();
    assert_eq!(binding.fingerprint, claim.fingerprint);
    assert_eq!(&*binding.node, &*claim.node);
}
