//! Repository-wide rules, checked where `cargo test` finds them: every crate
//! documents itself and takes the workspace lints, and the protocol crates
//! stay free of any async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn member_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .expect("crates/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.join("Cargo.toml").exists())
        .collect();
    dirs.push(root().join("xtask"));
    dirs.push(root().join("tests"));
    dirs.sort();
    dirs
}

#[test]
fn every_crate_takes_the_workspace_lints_and_package_fields() {
    let members = member_dirs();
    assert!(
        members.len() >= 9,
        "expected the seven crates, xtask and tests: {members:?}"
    );
    for dir in members {
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{} lacks `[lints] workspace = true`",
            dir.display()
        );
        assert!(
            manifest.contains("edition.workspace = true"),
            "{} sets its own edition",
            dir.display()
        );
        let pinned: Vec<&str> = manifest
            .lines()
            .filter(|line| line.contains("version =") && !line.starts_with("version"))
            .collect();
        assert!(
            pinned.is_empty(),
            "{}: dependency versions belong in [workspace.dependencies]: {pinned:?}",
            dir.display()
        );
    }
}

#[test]
fn every_crate_root_opens_with_a_module_doc() {
    for dir in member_dirs() {
        for root_file in ["src/lib.rs", "src/main.rs"] {
            let path = dir.join(root_file);
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            assert!(
                text.starts_with("//!"),
                "{} does not open with a `//!` doc",
                path.display()
            );
        }
    }
}

/// Package name → its dependencies' names, from Cargo.lock.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock is committed");
    let mut graph = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in package.lines() {
            let line = line.trim();
            if let Some(value) = line.strip_prefix("name = ") {
                name = Some(value.trim_matches('"').to_owned());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                // `"name"` or `"name version"`
                let entry = line.trim_end_matches(',').trim_matches('"');
                if let Some(dep) = entry.split_whitespace().next() {
                    deps.push(dep.to_owned());
                }
            }
        }
        if let Some(name) = name {
            graph.entry(name).or_insert_with(Vec::new).extend(deps);
        }
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_owned()];
    while let Some(name) = stack.pop() {
        if seen.insert(name.clone()) {
            stack.extend(graph.get(&name).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn protocol_crates_depend_on_no_async_runtime() {
    let graph = lock_graph();
    let async_crates = [
        "tokio",
        "async-std",
        "smol",
        "futures",
        "futures-util",
        "async-io",
        "quinn",
    ];
    for crate_name in ["calling-api", "signaling-proto"] {
        let deps = closure(&graph, crate_name);
        assert!(deps.len() > 1, "{crate_name} not found in Cargo.lock");
        for banned in async_crates {
            assert!(!deps.contains(banned), "{crate_name} depends on {banned}");
        }
    }
    let api = closure(&graph, "calling-api");
    assert!(
        !api.iter()
            .any(|dep| dep == "signaling-proto"
                || dep.starts_with("calling-") && dep != "calling-api"),
        "calling-api depends on nothing of ours: {api:?}"
    );
    let proto = closure(&graph, "signaling-proto");
    let ours: Vec<&String> = proto
        .iter()
        .filter(|dep| {
            dep.starts_with("calling-")
                || dep.starts_with("signaling-")
                || dep.starts_with("audio-")
        })
        .collect();
    assert_eq!(
        ours,
        ["calling-api", "signaling-proto"],
        "signaling-proto depends only on calling-api"
    );
}
