//! Every kind of bad input, one table, against one real HTTPS server on one kept-alive
//! connection: each gets HTTP 400 (or 404, 405, 413) naming what is wrong, or, under a
//! kubelet signer, a denial with the reason; none makes the server panic or stop, and a
//! good review is answered after each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::tls;

use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode};
use nodeguard::cmd::demo::scenarios::inventory_of;
use nodeguard::config::SharedConfig;
use nodeguard::inventory::SharedInventory;
use nodeguard::metrics::Metrics;
use nodeguard::plumbing::dev_pki::{DEV_DNS_NAMES, generate_dev_pki};
use nodeguard::webhook::{self, AdmissionClient, AppState, BodyBudget};
use nodeguard_testkit::kubelet::{self, Machine, Requester, Write};
use serde_json::{Value, json};

/// What a case must get back.
enum Expect {
    /// This status, and a body (one line of text) containing this.
    Status(StatusCode, &'static str),
    /// A 200 review answer that denies, with a message containing this.
    Denied(&'static str),
    /// A 200 review answer that allows.
    Allowed,
}

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    expect: Expect,
}

fn post(name: &'static str, path: &'static str, body: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        method: Method::POST,
        path,
        content_type: "application/json",
        body,
        expect,
    }
}

const NODES: &str = "/validate/nodes";
const CSRS: &str = "/validate/csrs";
/// Small, so that "over the limit" is quick to send.
const MAX_BODY: usize = 256 * 1024;

fn worker(i: u8) -> Machine {
    Machine::new(
        &format!("worker-{i}"),
        0x10 + i,
        &format!("10.0.0.{}", 10 + i),
    )
}

fn node_review() -> Value {
    kubelet::node_review(
        "3b9f0e2c-0000-4000-8000-000000000001",
        Write::Create,
        &kubelet::node_object(&worker(5)),
        None,
        "system:node:worker-5",
    )
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// The review with `change` applied.
fn node_review_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review = node_review();
    change(&mut review);
    json_bytes(&review)
}

/// A kubelet client CSR review whose `spec.request` is `request` (base64 of the PEM).
fn csr_review_with_request(request: &str) -> Vec<u8> {
    let mut csr = kubelet::csr_object(
        "csr-bad",
        kubelet::CLIENT_SIGNER,
        "",
        &Requester::Bootstrap {
            token_id: "07401b".into(),
        },
    );
    csr["spec"]["request"] = json!(request);
    json_bytes(&kubelet::csr_review(
        "3b9f0e2c-0000-4000-8000-000000000002",
        &csr,
    ))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = b64(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A kubelet request with this subject, signed by a P-256 key.
fn request_der(subject: &[(rcgen::DnType, &str)]) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    for (kind, value) in subject {
        name.push(kind.clone(), *value);
    }
    params.distinguished_name = name;
    params
        .serialize_request(&kubelet::kubelet_key().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

fn second_cn() -> rcgen::DnType {
    rcgen::DnType::CustomDnType(vec![2, 5, 4, 3])
}

fn good_request_der() -> Vec<u8> {
    request_der(&[
        (rcgen::DnType::OrganizationName, "system:nodes"),
        (rcgen::DnType::CommonName, "system:node:worker-5"),
    ])
}

fn csr_case(name: &'static str, request: String, reason: &'static str) -> Case {
    post(
        name,
        CSRS,
        csr_review_with_request(&request),
        Expect::Denied(reason),
    )
}

fn cases() -> Vec<Case> {
    let review = node_review();
    let mut cases = vec![
        // The body.
        post(
            "an empty body",
            NODES,
            Vec::new(),
            Expect::Status(StatusCode::BAD_REQUEST, "not JSON"),
        ),
        post(
            "truncated JSON",
            NODES,
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "Adm"#.to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, "not JSON"),
        ),
        post(
            "not JSON at all",
            NODES,
            b"apiVersion=v1".to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, "not JSON"),
        ),
        post(
            "invalid UTF-8",
            NODES,
            b"{\"kind\": \"\xff\xfe\"}".to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, "not JSON"),
        ),
        post(
            "a JSON array",
            NODES,
            b"[]".to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, "not an AdmissionReview"),
        ),
        post(
            "a JSON string",
            NODES,
            b"\"review\"".to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, "not an AdmissionReview"),
        ),
        post(
            "JSON null",
            NODES,
            b"null".to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, "not an AdmissionReview"),
        ),
        post(
            "trailing garbage after the review",
            NODES,
            [json_bytes(&review), b" }{".to_vec()].concat(),
            Expect::Status(StatusCode::BAD_REQUEST, "not JSON"),
        ),
        post(
            "nesting deeper than any object",
            NODES,
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            Expect::Status(StatusCode::BAD_REQUEST, "not"),
        ),
        // The envelope.
        post(
            "an empty object",
            NODES,
            b"{}".to_vec(),
            Expect::Status(StatusCode::BAD_REQUEST, ""),
        ),
        post(
            "admission.k8s.io/v1beta1",
            NODES,
            node_review_with(|r| r["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            Expect::Status(
                StatusCode::BAD_REQUEST,
                "nodeguard answers admission.k8s.io/v1 only",
            ),
        ),
        post(
            "another kind of review",
            NODES,
            node_review_with(|r| r["kind"] = json!("ConversionReview")),
            Expect::Status(StatusCode::BAD_REQUEST, "kind is \"ConversionReview\""),
        ),
        post(
            "no request",
            NODES,
            node_review_with(|r| {
                r.as_object_mut().unwrap().remove("request");
            }),
            Expect::Status(StatusCode::BAD_REQUEST, "has no request"),
        ),
        post(
            "a null request",
            NODES,
            node_review_with(|r| r["request"] = Value::Null),
            Expect::Status(StatusCode::BAD_REQUEST, "has no request"),
        ),
        post(
            "no uid",
            NODES,
            node_review_with(|r| {
                r["request"].as_object_mut().unwrap().remove("uid");
            }),
            Expect::Status(StatusCode::BAD_REQUEST, "uid"),
        ),
        post(
            "an empty uid",
            NODES,
            node_review_with(|r| r["request"]["uid"] = json!("")),
            Expect::Status(StatusCode::BAD_REQUEST, "request.uid is empty"),
        ),
        post(
            "a uid that is a number",
            NODES,
            node_review_with(|r| r["request"]["uid"] = json!(42)),
            Expect::Status(StatusCode::BAD_REQUEST, ""),
        ),
        post(
            "an unknown operation",
            NODES,
            node_review_with(|r| r["request"]["operation"] = json!("PATCH")),
            Expect::Status(StatusCode::BAD_REQUEST, "request.operation \"PATCH\""),
        ),
        post(
            "a request kind other than the endpoint's",
            NODES,
            node_review_with(|r| r["request"]["kind"]["kind"] = json!("Pod")),
            Expect::Status(StatusCode::BAD_REQUEST, "reviews"),
        ),
        post(
            "a CREATE without its object",
            NODES,
            node_review_with(|r| {
                r["request"].as_object_mut().unwrap().remove("object");
            }),
            Expect::Status(StatusCode::BAD_REQUEST, "request.object is missing"),
        ),
        post(
            "an object that is a Pod",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["kind"] = json!("Pod");
                r["request"]["object"]["apiVersion"] = json!("v1");
            }),
            Expect::Status(StatusCode::BAD_REQUEST, "request.object is"),
        ),
        post(
            "a Node sent to the CSR endpoint",
            CSRS,
            json_bytes(&review),
            Expect::Status(StatusCode::BAD_REQUEST, ""),
        ),
        post(
            "an object that is a number",
            NODES,
            node_review_with(|r| r["request"]["object"] = json!(7)),
            Expect::Status(StatusCode::BAD_REQUEST, "request.object"),
        ),
        post(
            "addresses that are not a list",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["status"]["addresses"] = json!("10.0.0.15")
            }),
            Expect::Status(StatusCode::BAD_REQUEST, "request.object"),
        ),
        post(
            "a label value that is a number",
            NODES,
            node_review_with(|r| r["request"]["object"]["metadata"]["labels"]["pool"] = json!(3)),
            Expect::Status(StatusCode::BAD_REQUEST, "request.object"),
        ),
        // Absurd but well-formed objects: decided, never refused for their shape.
        post(
            "no status.nodeInfo",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["status"]
                    .as_object_mut()
                    .unwrap()
                    .remove("nodeInfo");
            }),
            Expect::Allowed,
        ),
        post(
            "a null status.nodeInfo",
            NODES,
            node_review_with(|r| r["request"]["object"]["status"]["nodeInfo"] = Value::Null),
            Expect::Allowed,
        ),
        post(
            "a null status",
            NODES,
            node_review_with(|r| r["request"]["object"]["status"] = Value::Null),
            Expect::Allowed,
        ),
        post(
            "no metadata.name",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            }),
            Expect::Allowed,
        ),
        post(
            "a machine-id of 100 kB",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["status"]["nodeInfo"]["machineID"] =
                    json!("a".repeat(100_000))
            }),
            Expect::Allowed,
        ),
        post(
            "5,000 addresses",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["status"]["addresses"] = json!((0..5000).map(|i| json!({"type": "InternalIP", "address": format!("10.1.{}.{}", i / 250, i % 250)})).collect::<Vec<_>>())
            }),
            Expect::Allowed,
        ),
        post(
            "1,000 labels",
            NODES,
            node_review_with(|r| {
                for i in 0..1000 {
                    r["request"]["object"]["metadata"]["labels"][format!("l{i}")] = json!("v");
                }
            }),
            Expect::Allowed,
        ),
        post(
            "addresses that are not IPs",
            NODES,
            node_review_with(|r| {
                r["request"]["object"]["status"]["addresses"] =
                    json!([{"type": "InternalIP", "address": "not-an-ip"}, {"type": "InternalIP"}])
            }),
            Expect::Allowed,
        ),
        // CSRs under a kubelet signer: a denial that says what is wrong.
        csr_case("spec.request empty", String::new(), "spec.request is empty"),
        csr_case(
            "spec.request not base64",
            "not base64!".into(),
            "spec.request is not base64",
        ),
        csr_case(
            "base64 of something that is not PEM",
            b64(b"hello"),
            "spec.request is not PEM",
        ),
        csr_case(
            "a PEM block that is a certificate",
            b64(pem("CERTIFICATE", &good_request_der()).as_bytes()),
            "not \\\"CERTIFICATE REQUEST\\\"",
        ),
        csr_case(
            "PEM of bytes that are not a request",
            b64(pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00").as_bytes()),
            "does not parse",
        ),
        csr_case(
            "a request cut short",
            b64(pem("CERTIFICATE REQUEST", &good_request_der()[..40]).as_bytes()),
            "does not parse",
        ),
        csr_case(
            "a broken signature",
            {
                let mut der = good_request_der();
                let last = der.len() - 1;
                der[last] ^= 0x01;
                b64(pem("CERTIFICATE REQUEST", &der).as_bytes())
            },
            "not signed by its own key",
        ),
        csr_case(
            "no CN",
            b64(pem(
                "CERTIFICATE REQUEST",
                &request_der(&[(rcgen::DnType::OrganizationName, "system:nodes")]),
            )
            .as_bytes()),
            "the subject has no CN",
        ),
        csr_case(
            "two CNs",
            b64(pem(
                "CERTIFICATE REQUEST",
                &request_der(&[
                    (rcgen::DnType::OrganizationName, "system:nodes"),
                    (rcgen::DnType::CommonName, "system:node:worker-5"),
                    (second_cn(), "system:node:worker-1"),
                ]),
            )
            .as_bytes()),
            "the subject has 2 CNs",
        ),
        csr_case(
            "a CN that is not a node",
            b64(pem(
                "CERTIFICATE REQUEST",
                &request_der(&[
                    (rcgen::DnType::OrganizationName, "system:nodes"),
                    (rcgen::DnType::CommonName, "system:admin"),
                ]),
            )
            .as_bytes()),
            "is not system:node:<name>",
        ),
        csr_case(
            "a subject of 20 kB",
            b64(pem(
                "CERTIFICATE REQUEST",
                &request_der(&[
                    (rcgen::DnType::OrganizationName, "system:nodes"),
                    (
                        rcgen::DnType::CommonName,
                        &format!("system:node:{}", "w".repeat(20_000)),
                    ),
                ]),
            )
            .as_bytes()),
            "is not a valid Node name",
        ),
        csr_case(
            "a node name with capitals",
            b64(pem(
                "CERTIFICATE REQUEST",
                &request_der(&[
                    (rcgen::DnType::OrganizationName, "system:nodes"),
                    (rcgen::DnType::CommonName, "system:node:Worker_5"),
                ]),
            )
            .as_bytes()),
            "is not a valid Node name",
        ),
        csr_case(
            "a key too weak (RSA-1024)",
            b64(&std::fs::read("tests/fixtures/keys/csr-rsa-1024-worker-9.pem").unwrap()),
            "the key is RSA-1024, too weak",
        ),
        post(
            "a kubelet CSR whose spec is a string",
            CSRS,
            {
                let mut review: Value =
                    serde_json::from_slice(&csr_review_with_request("x")).unwrap();
                review["request"]["object"]["spec"] = json!("request");
                json_bytes(&review)
            },
            Expect::Status(StatusCode::BAD_REQUEST, "request.object"),
        ),
        post(
            "garbage under another signer passes untouched",
            CSRS,
            {
                let mut review: Value =
                    serde_json::from_slice(&csr_review_with_request("not base64!")).unwrap();
                review["request"]["object"]["spec"]["signerName"] = json!("example.com/other");
                json_bytes(&review)
            },
            Expect::Allowed,
        ),
        // HTTP.
        Case {
            name: "text/plain",
            method: Method::POST,
            path: NODES,
            content_type: "text/plain",
            body: json_bytes(&review),
            expect: Expect::Status(StatusCode::BAD_REQUEST, "application/json"),
        },
        Case {
            name: "a form",
            method: Method::POST,
            path: NODES,
            content_type: "application/x-www-form-urlencoded",
            body: b"a=b".to_vec(),
            expect: Expect::Status(StatusCode::BAD_REQUEST, "application/json"),
        },
        Case {
            name: "GET on a webhook",
            method: Method::GET,
            path: NODES,
            content_type: "application/json",
            body: Vec::new(),
            expect: Expect::Status(StatusCode::METHOD_NOT_ALLOWED, ""),
        },
        Case {
            name: "PUT on a webhook",
            method: Method::PUT,
            path: CSRS,
            content_type: "application/json",
            body: json_bytes(&review),
            expect: Expect::Status(StatusCode::METHOD_NOT_ALLOWED, ""),
        },
        post(
            "a Node review sent to the pods endpoint",
            "/validate/pods",
            json_bytes(&review),
            Expect::Status(StatusCode::BAD_REQUEST, "but /validate/pods reviews"),
        ),
        post(
            "an unknown path",
            "/validate/services",
            json_bytes(&review),
            Expect::Status(StatusCode::NOT_FOUND, ""),
        ),
        post(
            "the root path",
            "/",
            json_bytes(&review),
            Expect::Status(StatusCode::NOT_FOUND, ""),
        ),
        post(
            "a body over the limit",
            NODES,
            vec![b' '; MAX_BODY + 1],
            Expect::Status(StatusCode::PAYLOAD_TOO_LARGE, ""),
        ),
    ];
    // A body at the limit exactly: a review padded with whitespace to MAX_BODY bytes.
    let mut at_limit = json_bytes(&review);
    at_limit.resize(MAX_BODY, b' ');
    cases.push(post(
        "a body at the limit",
        NODES,
        at_limit,
        Expect::Allowed,
    ));
    cases
}

#[tokio::test]
async fn every_kind_of_bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
    let tls = pki.server_config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = webhook::router_with_budget(
        AppState {
            inventory: SharedInventory::new(inventory_of(&[worker(1), worker(2)])),
            config: SharedConfig::default(),
            metrics: Metrics::new().admission,
            events: None,
            readiness: None,
            refusals: None,
        },
        BodyBudget::new(4 * MAX_BODY, MAX_BODY),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nodeguard::plumbing::https::serve_tls(
        listener,
        tls,
        router,
        async {
            let _ = stopped.await;
        },
    ));
    let client = AdmissionClient::new(address, pki.ca_pem.as_bytes(), DEV_DNS_NAMES[0]).unwrap();

    let cases = cases();
    assert!(cases.len() >= 40, "{} classes", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            client.request_as(
                case.method.clone(),
                case.path,
                case.content_type,
                case.body.clone(),
            ),
        )
        .await;
        let (status, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                failures.push(format!("{}: no answer: {error:#}", case.name));
                continue;
            }
            Err(_) => {
                failures.push(format!("{}: no answer within 30 s", case.name));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let ok = match &case.expect {
            Expect::Status(expected, contains) => {
                status == *expected && text.contains(contains) && !text.contains('\n')
            }
            Expect::Denied(reason) => {
                status == StatusCode::OK
                    && text.contains("\"allowed\":false")
                    && text.contains(reason)
                    && text.contains("nodeguard [csr-format]")
            }
            Expect::Allowed => status == StatusCode::OK && text.contains("\"allowed\":true"),
        };
        if !ok {
            failures.push(format!(
                "{}: got {status}: {}",
                case.name,
                nodeguard::identity::clip(&text, 300)
            ));
        }
        // The server still decides a good review on the same connection.
        let (status, body) = client
            .post(NODES, json_bytes(&node_review()))
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "after {}: {}",
            case.name,
            String::from_utf8_lossy(&body)
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // One kept-alive connection throughout, but for the 413: the server does not read a
    // body it refuses, so it closes that connection and the client opens another.
    assert_eq!(client.connections_opened(), 2);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A client that sends a review's head and a few bytes of its body, then nothing: the
/// server answers 408 once the request's time is up, and serves others meanwhile.
#[tokio::test]
async fn a_slow_client_is_cut_off_and_never_holds_up_the_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
    let tls = pki.server_config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = webhook::router(AppState {
        inventory: SharedInventory::new(inventory_of(&[worker(1)])),
        config: SharedConfig::default(),
        metrics: Metrics::new().admission,
        events: None,
        readiness: None,
        refusals: None,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nodeguard::plumbing::https::serve_tls(
        listener,
        tls,
        router,
        async {
            let _ = stopped.await;
        },
    ));

    let connector = tls::connector(pki.ca_pem.as_bytes());
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(DEV_DNS_NAMES[0].to_string()).unwrap();
    let mut slow = connector.connect(name, tcp).await.unwrap();
    slow.write_all(
        b"POST /validate/nodes HTTP/1.1\r\nHost: nodeguard\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"apiVersi",
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();

    // Others are answered while it dawdles.
    let client = AdmissionClient::new(address, pki.ca_pem.as_bytes(), DEV_DNS_NAMES[0]).unwrap();
    for _ in 0..3 {
        let (status, _) = client
            .post(NODES, json_bytes(&node_review()))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut buffer = [0u8; 4096];
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await
    .expect("the slow request is cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (status, _) = client
        .post(NODES, json_bytes(&node_review()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "and the server carries on");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
