//! The manifests in deploy/ against what the code needs and the install promises: the
//! least privilege nodeguard runs with, the failure posture of the webhooks, the
//! certificate chain of each overlay, and a Deployment that drains before it stops.
//! (`.ci/run` also renders every kustomization and validates it against the
//! Kubernetes schemas.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use nodeguard::webhook::{Webhook, names};
use serde_json::Value;

fn documents(relative: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn base() -> Vec<Value> {
    [
        "namespace.yaml",
        "crd.yaml",
        "rbac.yaml",
        "config.yaml",
        "deployment.yaml",
        "webhook.yaml",
    ]
    .iter()
    .flat_map(|f| documents(&format!("deploy/base/{f}")))
    .collect()
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}");
    found[0]
}

/// Every (apiGroup, resource, resourceName or "", verb) a set of rules grants.
fn grants(rules: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut all = BTreeSet::new();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    for rule in rules.as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for name in &names {
                    for verb in strings(&rule["verbs"]) {
                        all.insert((group.clone(), resource.clone(), name.clone(), verb));
                    }
                }
            }
        }
    }
    all
}

fn set(items: &[(&str, &str, &str, &str)]) -> BTreeSet<(String, String, String, String)> {
    items
        .iter()
        .map(|(g, r, n, v)| (g.to_string(), r.to_string(), n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_cluster_role_grants_only_what_nodeguard_uses() {
    let objects = base();
    let cluster_role = one(&objects, "ClusterRole", "nodeguard");
    assert_eq!(
        grants(&cluster_role["rules"]),
        set(&[
            ("", "nodes", "", "get"),
            ("", "nodes", "", "list"),
            ("", "nodes", "", "watch"),
            (
                "certificates.k8s.io",
                "certificatesigningrequests",
                "",
                "get"
            ),
            (
                "certificates.k8s.io",
                "certificatesigningrequests",
                "",
                "list"
            ),
            (
                "certificates.k8s.io",
                "certificatesigningrequests",
                "",
                "watch"
            ),
            ("nodeguard.io", "nodeidentities", "", "create"),
            ("nodeguard.io", "nodeidentities", "", "delete"),
            ("nodeguard.io", "nodeidentities", "", "get"),
            ("nodeguard.io", "nodeidentities", "", "list"),
            ("nodeguard.io", "nodeidentities", "", "update"),
            ("nodeguard.io", "nodeidentities", "", "watch"),
        ])
    );
    // The Lease, only in nodeguard's namespace and only the recorder's by name once it
    // exists; Events only where Node events live.
    let lease = one(&objects, "Role", "nodeguard-recorder-lease");
    assert_eq!(lease["metadata"]["namespace"], "nodeguard");
    assert_eq!(
        grants(&lease["rules"]),
        set(&[
            ("coordination.k8s.io", "leases", "", "create"),
            ("coordination.k8s.io", "leases", "nodeguard-recorder", "get"),
            (
                "coordination.k8s.io",
                "leases",
                "nodeguard-recorder",
                "update"
            ),
        ])
    );
    let events = one(&objects, "Role", "nodeguard-node-events");
    assert_eq!(events["metadata"]["namespace"], "default");
    assert_eq!(
        grants(&events["rules"]),
        set(&[
            ("events.k8s.io", "events", "", "create"),
            ("events.k8s.io", "events", "", "patch"),
        ])
    );
    // Bound to nodeguard's ServiceAccount, which the Deployment runs as, and to nothing
    // else.
    for (kind, name) in [
        ("ClusterRoleBinding", "nodeguard"),
        ("RoleBinding", "nodeguard-recorder-lease"),
        ("RoleBinding", "nodeguard-node-events"),
    ] {
        let binding = one(&objects, kind, name);
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "nodeguard", "namespace": "nodeguard"}])
        );
    }
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 3, "an unexpected role was added");
}

#[test]
fn the_webhooks_fail_open_write_nothing_on_a_dry_run_and_answer_fast() {
    let objects = base();
    let configuration = one(&objects, "ValidatingWebhookConfiguration", "nodeguard");
    let webhooks = configuration["webhooks"].as_array().unwrap();
    let names: Vec<&str> = webhooks
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    // The names the code's messages and the demo use are the ones deployed, each served
    // at its endpoint's path.
    assert_eq!(names, names::ALL);
    let served_at = [
        (names::NODE_REGISTRATIONS, Webhook::Nodes),
        (names::NODE_UPDATES, Webhook::Nodes),
        (names::KUBELET_CSRS, Webhook::Csrs),
        (names::POD_STATUS, Webhook::Pods),
    ];
    for (webhook, (name, endpoint)) in webhooks.iter().zip(served_at) {
        assert_eq!(webhook["name"], name);
        assert_eq!(webhook["clientConfig"]["service"]["path"], endpoint.path());
    }
    let service = one(&objects, "Service", "nodeguard");
    for webhook in webhooks {
        // Events are posted for real requests only.
        assert_eq!(webhook["sideEffects"], "NoneOnDryRun");
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(webhook["matchPolicy"], "Equivalent");
        assert_eq!(
            webhook["admissionReviewVersions"],
            serde_json::json!(["v1"])
        );
        assert!(webhook["timeoutSeconds"].as_u64().unwrap() <= 5);
        let target = &webhook["clientConfig"]["service"];
        assert_eq!(target["name"], service["metadata"]["name"]);
        assert_eq!(target["namespace"], service["metadata"]["namespace"]);
        assert_eq!(target["port"], service["spec"]["ports"][0]["port"]);
    }
    // Status updates are filtered by CEL before they leave the API server.
    let conditions: Vec<&str> = webhooks[1]["matchConditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(conditions.len(), 2, "{conditions:?}");
    // So are pod status writes: only a kubelet's, only those that move a sandbox or
    // change a container, and nothing but their status.
    let pods = &webhooks[3];
    assert_eq!(
        pods["rules"][0]["resources"],
        serde_json::json!(["pods/status"])
    );
    assert_eq!(
        pods["rules"][0]["operations"],
        serde_json::json!(["UPDATE"])
    );
    let conditions: Vec<&str> = pods["matchConditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        conditions,
        ["kubelet-writers", "sandbox-or-containers-changed"]
    );
}

#[test]
fn the_fail_closed_component_changes_registrations_and_csrs_only() {
    let objects = base();
    let configuration = one(&objects, "ValidatingWebhookConfiguration", "nodeguard");
    let component = &documents("deploy/components/fail-closed/kustomization.yaml")[0];
    let patch_text = component["patches"][0]["patch"].as_str().unwrap();
    let operations: Vec<Value> = serde_saphyr::from_str(patch_text).unwrap();
    let mut closed = Vec::new();
    for pair in operations.chunks(2) {
        // Each replace is guarded by a test of the webhook's name at that index.
        assert_eq!(pair[0]["op"], "test");
        assert_eq!(pair[1]["op"], "replace");
        assert_eq!(pair[1]["value"], "Fail");
        let index: usize = pair[0]["path"].as_str().unwrap()["/webhooks/".len()..]
            .trim_end_matches("/name")
            .parse()
            .unwrap();
        assert_eq!(
            configuration["webhooks"][index]["name"], pair[0]["value"],
            "the component's index no longer points at that webhook"
        );
        assert_eq!(
            pair[1]["path"].as_str().unwrap(),
            format!("/webhooks/{index}/failurePolicy")
        );
        closed.push(pair[0]["value"].as_str().unwrap().to_string());
    }
    assert_eq!(closed, [names::NODE_REGISTRATIONS, names::KUBELET_CSRS]);
}

#[test]
fn the_deployment_stays_available_and_drains_before_it_stops() {
    let objects = base();
    let deployment = one(&objects, "Deployment", "nodeguard");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["serviceAccountName"], "nodeguard");
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node-role.kubernetes.io/control-plane")
    );
    let pdb = one(&objects, "PodDisruptionBudget", "nodeguard");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());

    // Probes on the admin port the process listens on.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name} in {args:?}"))
    };
    let port_of = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert!(flag("admin-listen").ends_with(&format!(":{}", port_of("admin"))));
    assert!(flag("listen").ends_with(&format!(":{}", port_of("webhook"))));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");

    // The pod may take the preStop pause, the process's own delay and its drain before
    // it is killed.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let delay: u64 = flag("shutdown-delay")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let drain = nodeguard::plumbing::https::DRAIN_TIMEOUT.as_secs();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + delay + drain,
        "terminationGracePeriodSeconds {grace} ≤ preStop {pre_stop} + delay {delay} + drain {drain}"
    );

    // The TLS files come from the Secret the overlays make.
    let volume = &pod["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], "nodeguard-tls");
    assert!(
        flag("tls-cert").starts_with(container["volumeMounts"][0]["mountPath"].as_str().unwrap())
    );
}

#[test]
fn the_image_is_named_once_and_tagged_with_the_crate_version() {
    let kustomization = &documents("deploy/base/kustomization.yaml")[0];
    let images = kustomization["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["name"], "nodeguard");
    assert_eq!(images[0]["newTag"], env!("CARGO_PKG_VERSION"));
    let deployment = one(&base(), "Deployment", "nodeguard").clone();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "nodeguard"
    );
}

#[test]
fn the_cert_manager_overlay_issues_an_ecdsa_certificate_for_the_service_from_its_own_ca() {
    let objects = documents("deploy/overlays/cert-manager/certificates.yaml");
    let serving = one(&objects, "Certificate", "nodeguard-serving");
    let spec = &serving["spec"];
    assert_eq!(spec["secretName"], "nodeguard-tls");
    assert_eq!(
        spec["dnsNames"],
        serde_json::json!(nodeguard::plumbing::dev_pki::DEV_DNS_NAMES)
    );
    assert_eq!(spec["privateKey"]["algorithm"], "ECDSA");
    assert_eq!(spec["privateKey"]["size"], 256);
    // Signed by the CA Issuer, whose Secret a self-signed CA Certificate fills.
    let ca_issuer = one(
        &objects,
        "Issuer",
        spec["issuerRef"]["name"].as_str().unwrap(),
    );
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["spec"]["secretName"] == ca_secret)
        .unwrap();
    assert_eq!(ca["spec"]["isCA"], true);
    let root = one(
        &objects,
        "Issuer",
        ca["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(root["spec"]["selfSigned"].is_object());
    for object in &objects {
        assert_eq!(object["metadata"]["namespace"], "nodeguard");
    }

    // The CA injector fills every caBundle from that Certificate.
    let kustomization = &documents("deploy/overlays/cert-manager/kustomization.yaml")[0];
    let patch: Value =
        serde_saphyr::from_str(kustomization["patches"][0]["patch"].as_str().unwrap()).unwrap();
    assert_eq!(patch["kind"], "ValidatingWebhookConfiguration");
    assert_eq!(
        patch["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "nodeguard/nodeguard-serving"
    );
}

#[test]
fn the_static_overlay_makes_the_secret_and_every_ca_bundle_from_the_files_of_nodeguard_certs() {
    let kustomization = &documents("deploy/overlays/static/kustomization.yaml")[0];
    let secret = &kustomization["secretGenerator"][0];
    assert_eq!(secret["name"], "nodeguard-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["files"],
        serde_json::json!(["tls.crt", "tls.key", "ca.crt"])
    );
    // A fixed name: re-applying updates the Secret in place, which running pods reload.
    assert_eq!(
        kustomization["generatorOptions"]["disableNameSuffixHash"],
        true
    );
    let replacement = &kustomization["replacements"][0];
    assert_eq!(replacement["source"]["fieldPath"], "data.ca\\.crt");
    assert_eq!(
        replacement["targets"][0]["fieldPaths"],
        serde_json::json!(["webhooks.*.clientConfig.caBundle"])
    );
}

#[test]
fn the_shipped_configuration_is_mounted_whole_and_is_the_built_in_default() {
    let objects = base();
    let map = one(&objects, "ConfigMap", "nodeguard-config");
    let text = map["data"]["config.yaml"].as_str().unwrap();
    assert_eq!(
        nodeguard::policy::Config::from_yaml(text).unwrap(),
        nodeguard::policy::Config::default(),
        "the ConfigMap spells out the defaults"
    );
    let deployment = one(&objects, "Deployment", "nodeguard");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = args
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("--config");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "nodeguard-config")
        .expect("a volume of the ConfigMap");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("mounted");
    // A subPath mount never sees an edit of the ConfigMap.
    assert!(mount["subPath"].is_null());
    assert_eq!(
        file,
        format!("{}/config.yaml", mount["mountPath"].as_str().unwrap())
    );
}

/// Every metric name an expression uses: identifiers followed by `{`, `[` or `)`,
/// or standing alone, that start with `nodeguard_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if expr[expr.char_indices().nth(i).map_or(0, |(b, _)| b)..].starts_with("nodeguard_")
            && (i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_'))
        {
            let name: String = bytes[i..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            i += name.len();
            names.insert(name);
        } else {
            i += 1;
        }
    }
    names
}

/// The series names nodeguard exports (counters with `_total`, histograms with
/// `_bucket`, `_sum`, `_count`).
fn exported_series() -> BTreeSet<String> {
    use nodeguard::policy::{CheckId, Config, Finding, Operation, Verdict};
    let metrics = nodeguard::metrics::Metrics::new();
    // A family appears once it has a series: make one in each.
    let verdict = Verdict::from_findings(
        [Finding::deny(CheckId::MachineId, "m".into(), "w".into())],
        &Config::default(),
    );
    let webhook = nodeguard::webhook::Webhook::Nodes;
    metrics.admission.observe_verdict(
        webhook,
        Operation::Create,
        &verdict,
        std::time::Duration::ZERO,
    );
    metrics.ledger.observe_conflict_recorded("two-kubelets");
    metrics
        .ledger
        .observe_write(nodeguard::ledger::WriteResult::Written);
    metrics.events.observe(
        nodeguard::events::COLLISION_REASON,
        nodeguard::events::EventResult::Posted,
    );
    metrics
        .ledger
        .set_audit_findings([("machine-id".to_string(), "clone", 1)]);
    metrics.config.set_in_force("", "enforce");
    let text = metrics.encode().unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn the_monitoring_component_scrapes_the_metrics_port_and_uses_only_exported_metrics() {
    let objects = base();
    let service = one(&objects, "Service", "nodeguard");
    let monitor = &documents("deploy/components/monitoring/servicemonitor.yaml")[0];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the Service carries {key}"
        );
    }
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .expect("the Service names the monitored port");
    let deployment = one(&objects, "Deployment", "nodeguard");
    let admin = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == service_port["targetPort"])
        .expect("the port exists on the container");
    assert_eq!(admin["containerPort"], 8080);

    let exported = exported_series();
    let rules = &documents("deploy/components/monitoring/prometheusrule.yaml")[0];
    let mut alerts = Vec::new();
    for rule in rules["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "{}: {name} is not exported",
                rule["alert"]
            );
        }
        assert!(!rule["labels"]["severity"].is_null());
        assert!(!rule["annotations"]["summary"].is_null());
        alerts.push(rule["alert"].as_str().unwrap().to_string());
    }
    assert_eq!(
        alerts,
        [
            "NodeguardLedgerConflict",
            "NodeguardSecondMachine",
            "NodeguardRefusing",
            "NodeguardServingCertificateExpiring",
            "NodeguardInventoryNotCurrent",
            "NodeguardReplicaNotReady",
            "NodeguardDown",
            "NodeguardConfigurationRefused",
            "NodeguardAuditFindings",
            "NodeguardEventsDropped",
        ]
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/components/monitoring/nodeguard-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "the dashboard uses {missing:?}");
    assert!(used.len() >= 12, "{used:?}");
}

/// The sources `COPY`ed into the image's build stage.
fn dockerfile_copies() -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Files the build reads outside the crates' sources: `include_str!`/`include_bytes!`
/// of non-test code, as paths from the repository's root.
fn included_files(dir: &Path, root: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            included_files(&path, root, found);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in code.match_indices(marker) {
                let rest = &code[at + marker.len()..];
                let relative = &rest[..rest.find('"').unwrap()];
                let file = path.parent().unwrap().join(relative);
                let file = std::fs::canonicalize(&file)
                    .unwrap_or_else(|e| panic!("{}: {relative}: {e}", path.display()));
                found.insert(
                    file.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
}

#[test]
fn the_image_build_copies_every_crate_and_every_file_the_code_includes() {
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
    let copies = dockerfile_copies();
    let copied = |path: &str| {
        copies
            .iter()
            .any(|c| path == c || path.starts_with(&format!("{c}/")))
    };
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .unwrap();
    let mut needed: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into(), "src".into()];
    needed.extend(
        members
            .trim_matches(['[', ']'])
            .split(',')
            .map(|m| m.trim().trim_matches('"').to_string())
            .filter(|m| !m.is_empty()),
    );
    assert!(needed.contains(&"core".to_string()), "members: {members}");
    let mut included = BTreeSet::new();
    for dir in ["src", "core/src"] {
        included_files(&root.join(dir), &root, &mut included);
    }
    assert!(
        included.contains("core/fixtures/node-kind-control-plane.json"),
        "{included:?}"
    );
    needed.extend(included);
    for path in needed {
        assert!(
            copied(&path),
            "the Dockerfile does not copy {path}: {copies:?}"
        );
    }
}
