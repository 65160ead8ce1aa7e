//! The layout DESIGN.md asks for, checked on the source: the pure core is its own crate
//! and depends on no Kubernetes, HTTP or async crate (cargo builds it without them); the
//! shell's top-level modules form layers, with no cycle among them: plumbing that knows
//! nothing of nodeguard at the bottom, one adapter per cluster concern above it, then
//! the metrics that gather every part's families, the subcommands and the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Crates the core must never depend on: they are the shell's. (`schemars`, optional
/// behind the core's `schema` feature, only describes the ledger record's serde shape
/// for the shell's CRD: it does no I/O.)
const SHELL_CRATES: [&str; 11] = [
    "nodeguard",
    "kube",
    "k8s-openapi",
    "tokio",
    "axum",
    "hyper",
    "http",
    "rustls",
    "tracing",
    "prometheus-client",
    "notify",
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The source without its `#[cfg(test)] mod tests { … }` blocks: tests may use anything.
fn without_tests(source: &str) -> String {
    let mut kept = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let block = &rest[at..];
        let Some(open) = block.find('{') else {
            rest = "";
            break;
        };
        let mut depth = 0usize;
        let mut end = block.len();
        for (i, c) in block[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &block[end..];
    }
    kept.push_str(rest);
    kept
}

/// The top-level modules of `src` each module names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let source = without_tests(&std::fs::read_to_string(&file).unwrap());
        let uses = graph.entry(module.clone()).or_default();
        for (at, _) in source.match_indices("crate::") {
            let name: String = source[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                uses.insert(name);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The dependency names of a Cargo.toml section (`[dependencies]`).
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    manifest
        .lines()
        .skip_while(|line| line.trim() != section)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| {
            let name = line.split('=').next()?.trim();
            (!name.is_empty() && !name.starts_with('#')).then(|| name.to_string())
        })
        .collect()
}

#[test]
fn the_core_is_a_crate_of_its_own_without_the_shell_s_crates() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("core/Cargo.toml")).unwrap();
    let deps = dependencies(&manifest, "[dependencies]");
    assert!(
        deps.contains(&"x509-parser".to_string()),
        "parsed: {deps:?}"
    );
    for shell in SHELL_CRATES {
        assert!(
            !deps.iter().any(|d| d == shell),
            "nodeguard-core depends on {shell}"
        );
    }
    let core_src = Path::new(ROOT).join("core/src");
    for file in rust_files(&core_src) {
        let source = without_tests(&std::fs::read_to_string(&file).unwrap());
        for shell in [
            "kube::",
            "k8s_openapi::",
            "tokio::",
            "std::fs",
            "std::net::TcpStream",
        ] {
            assert!(!source.contains(shell), "{} uses {shell}", file.display());
        }
    }
    let graph = module_graph(&core_src);
    let modules: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(
        modules,
        [
            "check_id",
            "identity",
            "inventory",
            "ledger",
            "policy",
            "sample"
        ]
        .into(),
        "the core's modules"
    );
    assert_eq!(find_cycle(&graph), None, "the core's modules: {graph:?}");
    // The shell's modules are not the core's: the core names none of them.
    let shell = module_graph(&Path::new(ROOT).join("src"));
    for (module, uses) in &graph {
        for used in uses.iter().filter(|used| !graph.contains_key(*used)) {
            assert!(
                !shell.contains_key(used),
                "core module {module} uses the shell's {used}"
            );
        }
    }
}

#[test]
fn the_shell_s_modules_form_layers_without_a_cycle() {
    let graph = module_graph(&Path::new(ROOT).join("src"));
    assert!(
        graph["ledger"].contains("watch") && graph["webhook"].contains("ledger"),
        "the graph was not read: {graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "module graph: {graph:?}");
    // The layers the crate's documentation states, lowest first.
    let layers = [
        "plumbing", "record", "watch", "events", "config", "ledger", "webhook", "metrics", "cmd",
        "cli",
    ];
    for (module, uses) in &graph {
        let level = layers.iter().position(|l| l == module);
        assert!(level.is_some(), "module {module} is in no layer");
        for used in uses {
            if ["identity", "inventory", "policy"].contains(&used.as_str()) {
                continue;
            }
            let used_level = layers.iter().position(|l| l == used);
            assert!(
                used_level < level,
                "{module} uses {used}, which is not below it"
            );
        }
    }
}

#[test]
fn the_plumbing_knows_nothing_of_nodeguard() {
    let plumbing = Path::new(ROOT).join("src/plumbing");
    let files = rust_files(&plumbing);
    assert!(files.len() > 5, "read {files:?}");
    for file in files {
        let source = without_tests(&std::fs::read_to_string(&file).unwrap());
        for (at, _) in source.match_indices("crate::") {
            assert!(
                source[at..].starts_with("crate::plumbing::"),
                "{} uses {}",
                file.display(),
                &source[at..at + 30.min(source.len() - at)]
            );
        }
        for core in [
            "nodeguard_core",
            "crate::policy",
            "crate::identity",
            "crate::inventory",
        ] {
            assert!(!source.contains(core), "{} uses {core}", file.display());
        }
    }
}

#[test]
fn each_subcommand_has_its_flags_and_its_run_in_cmd() {
    let cli = std::fs::read_to_string(Path::new(ROOT).join("src/cli.rs")).unwrap();
    for (command, module) in [
        ("Serve(Box<serve::ServeArgs>)", "serve"),
        ("Audit(Box<audit::AuditArgs>)", "audit"),
        ("Certs(certs::CertsArgs)", "certs"),
        ("Forget(forget::ForgetArgs)", "forget"),
        ("Config(ConfigCommand)", "config"),
    ] {
        assert!(cli.contains(command), "cli.rs has no {command}");
        let file = Path::new(ROOT).join("src/cmd").join(format!("{module}.rs"));
        let dir = Path::new(ROOT).join("src/cmd").join(module).join("mod.rs");
        let source = std::fs::read_to_string(&file)
            .or_else(|_| std::fs::read_to_string(&dir))
            .unwrap();
        assert!(
            source.contains("pub async fn run(") || source.contains("pub fn run("),
            "src/cmd/{module} has no run"
        );
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let source = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n    fn f() { {} }\n}\nuse crate::c;\n";
    assert_eq!(without_tests(source), "use crate::a;\n\nuse crate::c;\n");
}
