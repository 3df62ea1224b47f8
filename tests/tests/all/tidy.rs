//! Repository-wide rules, checked where `cargo test` finds them: every crate
//! documents itself and takes the workspace lints, and the protocol crates
//! stay free of any async runtime.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

pub(crate) fn member_dirs() -> Vec<PathBuf> {
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
            let readme = text.starts_with("#![doc = include_str!(\"../README.md\")]");
            assert!(
                text.starts_with("//!") || readme,
                "{} does not open with a `//!` doc or its README",
                path.display()
            );
        }
    }
}

/// Every Rust file of the workspace's members, examples and tests included.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("readable entry").path();
        if path.file_name().is_some_and(|name| name == "target") {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in member_dirs() {
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let undocumented: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = fs::read_to_string(path).expect("readable source");
            !(text.starts_with("//!")
                || text.starts_with("#![doc = include_str!(\"../README.md\")]"))
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "files without a `//!` module doc: {undocumented:#?}"
    );
}

/// The names of every package `crate_name` builds with (normal
/// dependencies only: dev-dependencies such as proptest do not count).
fn normal_dependencies(crate_name: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "tree", "--locked", "-p", crate_name, "-e", "normal", "--prefix", "none", "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn protocol_crates_depend_on_no_async_runtime() {
    let async_crates = [
        "tokio",
        "async-std",
        "smol",
        "futures",
        "futures-util",
        "async-io",
        "quinn",
        "mio",
    ];
    for crate_name in [
        "calling-api",
        "signaling-proto",
        "calling-cluster",
        "server-core",
    ] {
        let deps = normal_dependencies(crate_name);
        assert!(
            deps.contains(crate_name),
            "{crate_name} not found: {deps:?}"
        );
        for banned in async_crates {
            assert!(!deps.contains(banned), "{crate_name} depends on {banned}");
        }
    }
    let ours = |deps: BTreeSet<String>| -> Vec<String> {
        deps.into_iter()
            .filter(|dep| {
                ["calling-", "signaling-", "audio-"]
                    .iter()
                    .any(|prefix| dep.starts_with(prefix))
            })
            .collect()
    };
    assert_eq!(
        ours(normal_dependencies("calling-api")),
        ["calling-api"],
        "calling-api depends on nothing of ours"
    );
    assert_eq!(
        ours(normal_dependencies("signaling-proto")),
        ["calling-api", "signaling-proto"],
        "signaling-proto depends only on calling-api"
    );
}

/// docs/protocol.md is a contract: its error table lists every code this
/// build knows, by number and name.
#[test]
fn protocol_md_lists_every_error_code() {
    let protocol =
        fs::read_to_string(root().join("docs").join("protocol.md")).expect("protocol.md");
    for code in calling_api::ErrorCode::ALL {
        let row = format!("| {} | {} |", code.0, code.name().expect("a known code"));
        assert!(protocol.contains(&row), "docs/protocol.md lacks `{row}`");
    }
}

/// The Dockerfile and the systemd unit name a package, a binary, paths and
/// a subcommand that exist (the image itself is built where a container
/// builder is; this machine has none).
#[test]
fn the_dockerfile_and_the_systemd_unit_name_what_exists() {
    let root = root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let build = dockerfile
        .lines()
        .find(|line| line.starts_with("RUN cargo build"))
        .expect("the Dockerfile runs cargo build");
    let package = build
        .split_whitespace()
        .skip_while(|word| *word != "-p")
        .nth(1)
        .expect("the build names one package with -p");
    let manifest = root.join("crates").join(package).join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|_| panic!("the Dockerfile builds {package}, which is no crate"));
    assert!(manifest.contains(&format!("name = \"{package}\"")));
    assert!(
        root.join("crates")
            .join(package)
            .join("src/main.rs")
            .exists(),
        "{package} has a binary of its name"
    );
    let built = format!("/src/target/release/{package}");
    assert!(dockerfile.contains(&format!(
        "COPY --from=build {built} /usr/local/bin/{package}"
    )));
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"{package}\"]")));
    // Every COPY from the build context names something that exists.
    for line in dockerfile
        .lines()
        .filter(|line| line.starts_with("COPY ") && !line.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(root.join(source).exists(), "{line}");
    }
    // The health check's subcommand and the settings' variables exist.
    let main =
        std::fs::read_to_string(root.join("crates").join(package).join("src/main.rs")).unwrap();
    assert!(
        dockerfile.contains("\"probe\"") && main.contains("Probe {"),
        "the probe subcommand"
    );
    let config = std::fs::read_to_string(
        root.join("crates")
            .join(package)
            .join("src/config/settings.rs"),
    )
    .unwrap();
    for variable in [
        "OPENCALLING_DATA_DIR",
        "OPENCALLING_LISTEN",
        "OPENCALLING_HTTP_LISTEN",
    ] {
        assert!(dockerfile.contains(variable));
        assert!(
            config.contains(&format!("\"{variable}\"")),
            "{variable} is a setting"
        );
    }
    assert!(dockerfile.contains("EXPOSE 4433/udp 4433/tcp 9090/tcp"));
    assert!(dockerfile.contains("USER ") && dockerfile.contains("VOLUME /var/lib/opencalling"));
    let unit = std::fs::read_to_string(root.join("deploy/calling-server.service")).unwrap();
    assert!(unit.contains(&format!("ExecStart=/usr/local/bin/{package} --config ")));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

/// Every crate that is published stands alone: a README with an example
/// and its feature flags, the package fields crates.io and docs.rs use,
/// and versioned dependencies on the workspace's crates.
#[test]
fn every_published_crate_stands_alone() {
    let workspace = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for line in workspace
        .lines()
        .filter(|line| line.contains("path = \"crates/"))
    {
        assert!(line.contains("version = "), "unversioned: {line}");
    }
    for dir in member_dirs() {
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        if manifest.contains("publish = false") {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for field in [
            "readme = \"README.md\"",
            "keywords = [",
            "categories = [",
            "[package.metadata.docs.rs]",
        ] {
            assert!(manifest.contains(field), "{name}: Cargo.toml lacks {field}");
        }
        let readme = fs::read_to_string(dir.join("README.md"))
            .unwrap_or_else(|_| panic!("{name} has no README.md"));
        assert!(
            readme.starts_with(&format!("# {name}\n")),
            "{name}: README title"
        );
        assert!(
            readme.contains("## Feature flags"),
            "{name}: README lacks its feature flags"
        );
        if dir.join("src/lib.rs").exists() {
            let lib = fs::read_to_string(dir.join("src/lib.rs")).unwrap();
            assert!(
                lib.starts_with("#![doc = include_str!(\"../README.md\")]"),
                "{name}: the crate docs are its README"
            );
            assert!(
                readme.contains("```rust") || readme.contains("```no_run"),
                "{name}: README has no example (a doctest)"
            );
        }
    }
}
