//! The documentation against the code: docs/reference.md (every command's help and every
//! metric family) is what the binary says, docs/operations.md explains every metric family
//! the code exports and no other, and every relative link and anchor in the README, docs/
//! and CONTRIBUTING.md leads somewhere. After changing a command or a metric, regenerate
//! the reference with `NODEGUARD_BLESS=1 cargo test --test docs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::time::Duration;

use clap::CommandFactory;
use nodeguard::cli::Cli;
use nodeguard::metrics::Metrics;
use nodeguard::policy::{CheckId, Config, Finding, Operation, Verdict};
use nodeguard::watch::freshness::{View, ViewStatus};
use nodeguard::webhook::Webhook;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `nodeguard help` of the command and each subcommand, depth first.
fn command_help(command: &mut clap::Command, path: &str, out: &mut String) {
    let help = command.render_long_help().to_string();
    out.push_str(&format!(
        "### `{path}`\n\n```text\n{}\n```\n\n",
        help.trim_end()
    ));
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_string())
        .filter(|name| name != "help")
        .collect();
    for name in names {
        if let Some(sub) = command.find_subcommand_mut(&name) {
            command_help(sub, &format!("{path} {name}"), out);
        }
    }
}

/// Each metric family the code registers: (name, type, help), from its exposition, with
/// one sample observed in each labelled family (an empty one is not exposed).
fn metric_families() -> Vec<(String, String, String)> {
    let metrics = Metrics::new();
    let verdict = Verdict::from_findings(
        [Finding::warn(CheckId::MachineId, "shared".into())],
        &Config::default(),
    );
    metrics
        .admission
        .observe_verdict(Webhook::Nodes, Operation::Create, &verdict, Duration::ZERO);
    metrics.inventory.set_views(&[ViewStatus {
        view: View::Nodes,
        age: None,
        errors: 0,
    }]);
    metrics.tasks.observe_restart("watch");
    metrics.config.set_in_force("", "enforce");
    metrics.events.observe(
        nodeguard::events::COLLISION_REASON,
        nodeguard::events::EventResult::Posted,
    );
    metrics
        .ledger
        .set_audit_findings([("machine-id".to_string(), "clone", 1)]);
    metrics.ledger.observe_conflict_recorded("two-kubelets");
    metrics
        .ledger
        .observe_write(nodeguard::ledger::WriteResult::Written);
    let text = metrics.encode().unwrap();
    let mut families = Vec::new();
    let mut help = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_string(), text.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let exposed = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            families.push((
                exposed,
                kind.to_string(),
                help.remove(name).unwrap_or_default(),
            ));
        }
    }
    families
}

fn reference() -> String {
    let mut out = String::from(
        "# Reference\n\n\
         Generated from the code by `NODEGUARD_BLESS=1 cargo test --test docs`, which also\n\
         checks that it is current. [operations.md](operations.md) explains the labels.\n\n\
         ## Commands\n\n",
    );
    let mut cli = Cli::command();
    cli.build();
    command_help(&mut cli, "nodeguard", &mut out);
    out.push_str("## Metrics\n\n| metric | type | help |\n|---|---|---|\n");
    for (name, kind, help) in metric_families() {
        out.push_str(&format!("| `{name}` | {kind} | {help} |\n"));
    }
    out
}

#[test]
fn the_reference_is_what_the_code_says() {
    let path = Path::new(ROOT).join("docs/reference.md");
    let expected = reference();
    if std::env::var_os("NODEGUARD_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected.contains("### `nodeguard serve`")
            && expected.contains("`nodeguard_admission_requests_total`"),
        "the reference was not generated:\n{expected}"
    );
    assert!(
        written == expected,
        "docs/reference.md is not what the code says; run NODEGUARD_BLESS=1 cargo test --test docs\n\
         first difference at line {}",
        written
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .map_or(
                written.lines().count().min(expected.lines().count()) + 1,
                |i| i + 1
            )
    );
}

#[test]
fn operations_explains_every_metric_family_and_no_other() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("docs/operations.md")).unwrap();
    let code: BTreeSet<String> = metric_families().into_iter().map(|f| f.0).collect();
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("`nodeguard_") {
        let name: String = text[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        named.insert(name);
    }
    let missing: Vec<_> = code.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/operations.md does not explain {missing:?}; it names {unknown:?}, which the code does not export"
    );
}

/// The anchors GitHub makes of a Markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            let title = line.trim_start_matches('#').trim().to_lowercase();
            let anchor: String = title
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            out.insert(anchor);
        }
    }
    out
}

#[test]
fn every_link_in_the_documentation_leads_somewhere() {
    let mut files: Vec<PathBuf> = vec![
        Path::new(ROOT).join("README.md"),
        Path::new(ROOT).join("CONTRIBUTING.md"),
    ];
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut broken = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let link = &rest[..end];
            if link.starts_with("http") || link.contains(' ') {
                continue;
            }
            links += 1;
            let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", file.display()));
            } else if !anchor.is_empty()
                && !anchors(&std::fs::read_to_string(&target).unwrap()).contains(anchor)
            {
                broken.push(format!("{}: {link}: no such heading", file.display()));
            }
        }
    }
    assert!(links > 20, "only {links} links read");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn a_heading_s_anchor_is_github_s() {
    let anchors = anchors(
        "# Install and roll out\n## Runbook: two machines writing one node\n```\n# not a heading\n```\n### `two-kubelets`\n### The copy's pods\n",
    );
    assert_eq!(
        anchors,
        [
            "install-and-roll-out",
            "runbook-two-machines-writing-one-node",
            "two-kubelets",
            "the-copys-pods"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
}
