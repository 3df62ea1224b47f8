//! The map of the workspace, checked: which crate depends on which (no
//! sideways edge between transports, the SDK below the server and its
//! tools), and which file of a crate uses which (no circle). `cargo xtask
//! map` prints it.
//!
//! Files are read, not compiled: a module's edges are the paths it names
//! (`crate::hub::HubInput`, `super::relay`, `use crate::{a::B, c}`). An
//! edge between a module and one of its ancestors does not count: a module
//! folder's `mod.rs` and its children are one unit seen from outside
//! (children add `impl` blocks to their parent's types, as quinn-proto's
//! `connection/` does). Every other edge is lifted to the two siblings
//! under the closest common ancestor, and a circle among siblings fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::tidy::member_dirs;

/// A module's path inside its crate: `[]` for the crate root,
/// `["switchboard", "calls"]` for `src/switchboard/calls.rs`.
type ModulePath = Vec<String>;

/// The module a file under `src/` defines, or `None` for a file that is no
/// module of the library or binary (a second binary under `src/bin`).
fn module_of(src: &Path, file: &Path) -> Option<ModulePath> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|first| first == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return Some(Vec::new());
    }
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

fn rust_files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            rust_files_under(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The text of a source file without its comments and string literals, so
/// that a path named in a doc or a message is no edge.
fn code_only(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        code.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
                code.push(' ');
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                code.push_str("\"\"");
            }
            _ => code.push(c),
        }
    }
    without_test_modules(&code)
}

/// `code` without its `#[cfg(test)]` items: a unit test may use any
/// module of its crate.
fn without_test_modules(code: &str) -> String {
    let mut kept = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(open) = rest.find(['{', ';']) else {
            break;
        };
        if rest.as_bytes()[open] == b';' {
            rest = &rest[open + 1..];
            continue;
        }
        let mut depth = 0_usize;
        let mut end = rest.len();
        for (index, byte) in rest.bytes().enumerate().skip(open) {
            match byte {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = index + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept
}

/// Every path that starts with `prefix` (`crate` or `super`) in `code`,
/// use trees expanded: `crate::{a::B, c::{d, e}}` gives `a::B`, `c::d`,
/// `c::e` (without the prefix).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let needle = format!("{prefix}::");
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            continue;
        }
        let mut position = from;
        use_tree(code, &mut position, Vec::new(), &mut found);
    }
    found
}

/// What the names a `use` of the crate root brings in stand for: `pub use
/// hub::{HubStats, StampedEvent}` in `lib.rs` makes `crate::HubStats` an
/// edge to `hub`, not to the root.
fn root_imports(code: &str, modules: &BTreeSet<ModulePath>) -> BTreeMap<String, Vec<String>> {
    let mut imports = BTreeMap::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("use ") {
        let start = from + at;
        from = start + 4;
        let before = start.checked_sub(1).map(|i| code.as_bytes()[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let mut position = from;
        let mut paths = Vec::new();
        use_tree(code, &mut position, Vec::new(), &mut paths);
        for mut path in paths {
            if path.first().is_some_and(|first| first == "crate") {
                path.remove(0);
            }
            let names_a_module = path
                .first()
                .is_some_and(|first| modules.contains(&vec![first.clone()]));
            if let (true, Some(name)) = (names_a_module, path.last()) {
                imports.insert(name.clone(), path.clone());
            }
        }
    }
    imports
}

fn skip_spaces(code: &str, position: &mut usize) {
    while code[*position..].starts_with(char::is_whitespace) {
        *position += 1;
    }
}

fn use_tree(code: &str, position: &mut usize, mut path: Vec<String>, found: &mut Vec<Vec<String>>) {
    loop {
        skip_spaces(code, position);
        if code[*position..].starts_with('{') {
            *position += 1;
            loop {
                skip_spaces(code, position);
                if code[*position..].starts_with('}') {
                    *position += 1;
                    return;
                }
                use_tree(code, position, path.clone(), found);
                skip_spaces(code, position);
                if code[*position..].starts_with(',') {
                    *position += 1;
                } else if code[*position..].starts_with('}') {
                    *position += 1;
                    return;
                } else {
                    return;
                }
            }
        }
        let rest = &code[*position..];
        let length = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if length == 0 {
            found.push(path);
            return;
        }
        path.push(rest[..length].to_owned());
        *position += length;
        if code[*position..].starts_with("::") {
            *position += 2;
        } else {
            found.push(path);
            return;
        }
    }
}

/// The longest module of `modules` that `path` (from the crate root)
/// names.
fn resolve(modules: &BTreeSet<ModulePath>, path: &[String]) -> ModulePath {
    (0..=path.len())
        .rev()
        .map(|length| path[..length].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// The edges between the modules of the crate whose sources are in `src`,
/// each lifted to the siblings under the two modules' closest common
/// ancestor; edges between a module and its ancestor are left out.
fn module_edges(src: &Path) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let mut files = Vec::new();
    rust_files_under(src, &mut files);
    let sources: Vec<(ModulePath, String)> = files
        .iter()
        .filter_map(|file| {
            let module = module_of(src, file)?;
            let text = fs::read_to_string(file).expect("readable source");
            Some((module, code_only(&text)))
        })
        .collect();
    let modules: BTreeSet<ModulePath> = sources.iter().map(|(module, _)| module.clone()).collect();
    let root_imports = sources
        .iter()
        .find(|(module, _)| module.is_empty())
        .map(|(_, code)| root_imports(code, &modules))
        .unwrap_or_default();
    let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (module, code) in &sources {
        let mut targets: Vec<ModulePath> = paths_after(code, "crate")
            .iter()
            .map(
                |path| match path.first().and_then(|name| root_imports.get(name)) {
                    Some(imported) => resolve(&modules, imported),
                    None => resolve(&modules, path),
                },
            )
            .collect();
        if let Some((_, parent)) = module.split_last() {
            for path in paths_after(code, "super") {
                let mut absolute = parent.to_vec();
                absolute.extend(path);
                // `super::x` in a file's inline `mod tests` means the file
                // itself: only a sibling module named outright counts.
                let target = resolve(&modules, &absolute);
                if target.len() > parent.len() {
                    targets.push(target);
                }
            }
        }
        for target in targets {
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue;
            }
            edges
                .entry(module[..=common].to_vec())
                .or_default()
                .insert(target[..=common].to_vec());
        }
    }
    edges
}

/// Every circle in `edges`, each as the modules on it (strongly connected
/// components of more than one module).
fn circles(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    let nodes: BTreeSet<&ModulePath> = edges
        .iter()
        .flat_map(|(from, to)| std::iter::once(from).chain(to))
        .collect();
    let reaches = |from: &ModulePath, to: &ModulePath| -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            for next in edges.get(node).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next) {
                    stack.push(next);
                }
            }
        }
        false
    };
    let mut placed: BTreeSet<&ModulePath> = BTreeSet::new();
    let mut found = Vec::new();
    for &node in &nodes {
        if placed.contains(node) || !reaches(node, node) {
            continue;
        }
        let component: Vec<ModulePath> = nodes
            .iter()
            .filter(|&&other| other == node || (reaches(node, other) && reaches(other, node)))
            .map(|&other| other.clone())
            .collect();
        placed.extend(nodes.iter().filter(|other| component.contains(other)));
        found.push(component);
    }
    found
}

fn show(module: &ModulePath) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// The workspace's crates by directory name, each with the workspace crates
/// it names as normal and as development dependencies.
struct Crate {
    name: String,
    dir: PathBuf,
    normal: BTreeSet<String>,
    dev: BTreeSet<String>,
}

fn workspace_crates() -> Vec<Crate> {
    let dirs = member_dirs();
    let manifests: Vec<(PathBuf, String)> = dirs
        .into_iter()
        .map(|dir| {
            let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
            (dir, manifest)
        })
        .collect();
    let name_of = |manifest: &str| -> String {
        manifest
            .lines()
            .find_map(|line| line.strip_prefix("name = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .expect("a package name")
            .to_owned()
    };
    let names: BTreeSet<String> = manifests.iter().map(|(_, text)| name_of(text)).collect();
    manifests
        .iter()
        .map(|(dir, manifest)| {
            let mut normal = BTreeSet::new();
            let mut dev = BTreeSet::new();
            let mut section = String::new();
            for line in manifest.lines() {
                if line.starts_with('[') {
                    section = line.to_owned();
                    continue;
                }
                let Some(dependency) = line
                    .split(['.', ' ', '='])
                    .next()
                    .filter(|name| names.contains(*name))
                else {
                    continue;
                };
                if section.ends_with("dev-dependencies]") {
                    dev.insert(dependency.to_owned());
                } else if section.ends_with("dependencies]") {
                    normal.insert(dependency.to_owned());
                }
            }
            Crate {
                name: name_of(manifest),
                dir: dir.clone(),
                normal,
                dev,
            }
        })
        .collect()
}

/// Every crate `name` builds with, itself included; with `dev`, its own
/// development dependencies too (theirs are not built for it).
fn closure(crates: &[Crate], name: &str, dev: bool) -> BTreeSet<String> {
    let by_name: BTreeMap<&str, &Crate> = crates.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut found = BTreeSet::from([name.to_owned()]);
    let mut stack: Vec<String> = by_name[name].normal.iter().cloned().collect();
    if dev {
        stack.extend(by_name[name].dev.iter().cloned());
    }
    while let Some(next) = stack.pop() {
        if found.insert(next.clone()) {
            stack.extend(by_name[next.as_str()].normal.iter().cloned());
        }
    }
    found
}

/// The map as text: each crate with what it depends on, then each crate's
/// module circles (none, when the rules hold).
fn the_map() -> (String, Vec<String>) {
    let crates = workspace_crates();
    let mut text = String::from("crates (normal dependencies; dev-dependencies after `dev:`)\n");
    let mut broken = Vec::new();
    for krate in &crates {
        let normal: Vec<&str> = krate.normal.iter().map(String::as_str).collect();
        let dev: Vec<&str> = krate
            .dev
            .difference(&krate.normal)
            .map(String::as_str)
            .collect();
        text.push_str(&format!("  {} -> {}", krate.name, normal.join(", ")));
        if !dev.is_empty() {
            text.push_str(&format!("  dev: {}", dev.join(", ")));
        }
        text.push('\n');
        let src = krate.dir.join("src");
        let edges = module_edges(&src);
        for circle in circles(&edges) {
            let names: Vec<String> = circle.iter().map(show).collect();
            broken.push(format!(
                "{}: files import each other in a circle: {}",
                krate.name,
                names.join(" <-> ")
            ));
        }
    }
    text.push_str("\nmodules of each crate that use another (edges lifted to siblings)\n");
    for krate in &crates {
        let edges = module_edges(&krate.dir.join("src"));
        if edges.is_empty() {
            continue;
        }
        text.push_str(&format!("  {}\n", krate.name));
        for (from, to) in &edges {
            let to: Vec<String> = to.iter().map(show).collect();
            text.push_str(&format!("    {} -> {}\n", show(from), to.join(", ")));
        }
    }
    (text, broken)
}

#[test]
fn no_crate_has_files_that_import_each_other_in_a_circle() {
    let (map, broken) = the_map();
    // `cargo xtask map` shows it with --nocapture.
    println!("{map}");
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_circle_finder_finds_a_circle_and_only_one() {
    let dir = std::env::temp_dir().join(format!("opencalling-map-{}", std::process::id()));
    let src = dir.join("src");
    fs::create_dir_all(src.join("board")).unwrap();
    let write = |name: &str, text: &str| fs::write(src.join(name), text).unwrap();
    write(
        "lib.rs",
        "//! root\nmod hub;\nmod board;\nmod relay;\npub use board::{Board, calls::Call};\npub struct Shared(hub::Hub);\n",
    );
    write(
        "hub.rs",
        "use crate::board::Board;\n// crate::records is a comment\n#[cfg(test)]\nmod tests {\n    use crate::relay;\n}\n",
    );
    write(
        "relay.rs",
        "use crate::Shared;\nconst S: &str = \"crate::hub\";\nfn f(_: crate::Call) {}\n",
    );
    write("board/mod.rs", "mod calls;\nuse calls::Call;\n");
    write(
        "board/calls.rs",
        "use super::Board;\nfn f() { crate::hub::step(); }\n",
    );
    let edges = module_edges(&src);
    let _ = fs::remove_dir_all(&dir);
    let module = |name: &str| vec![name.to_owned()];
    // A unit test's use of another module is no edge.
    assert_eq!(
        edges.get(&module("hub")),
        Some(&BTreeSet::from([module("board")]))
    );
    // A child's edge counts for its folder; a string, a comment, the
    // parent and the root are no edge.
    assert_eq!(
        edges.get(&module("board")),
        Some(&BTreeSet::from([module("hub")]))
    );
    // A name the root re-exports is an edge to where it is defined.
    assert_eq!(
        edges.get(&module("relay")),
        Some(&BTreeSet::from([module("board")]))
    );
    assert_eq!(circles(&edges), vec![vec![module("board"), module("hub")]]);
}

#[test]
fn the_sdk_sits_below_the_server_and_its_tools() {
    let crates = workspace_crates();
    let built = closure(&crates, "calling-facade", true);
    for above in ["calling-server", "calling-load", "opencalling-tests"] {
        assert!(
            !built.contains(above),
            "calling-facade (its tests and examples included) builds with {above}: {built:?}"
        );
    }
    // The map reads the manifests: it sees what cargo sees.
    assert!(built.contains("signaling-proto") && built.contains("audio-pipeline"));
}

#[test]
fn no_transport_builds_with_another() {
    let crates = workspace_crates();
    // The browser transport takes connections the QUIC endpoint's TLS
    // already made; the other two make their own.
    let transports = ["signaling-quic", "signaling-ws", "signaling-webtransport"];
    for transport in transports {
        let built = closure(&crates, transport, false);
        assert!(
            built.contains("signaling-tls") || transport == "signaling-webtransport",
            "{transport} no longer shares the TLS crate: {built:?}"
        );
        for other in transports.iter().filter(|other| **other != transport) {
            assert!(
                !built.contains(*other),
                "{transport} builds with {other}: {built:?}"
            );
        }
    }
}
