//! A C program against the library, under AddressSanitizer (leaks
//! included): `tests/c/two_users.c` against a real server on loopback.
//! gcc compiles it here with the committed header and the cdylib cargo
//! built for this test (in the same `deps` directory as this binary).

use std::path::{Path, PathBuf};
use std::process::Command;

use opencalling_tests::server::{development_server, user_sig};

fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|error| panic!("{error}"));
    exe.parent()
        .unwrap_or_else(|| panic!("no directory"))
        .to_owned()
}

/// Compiles the C program with AddressSanitizer against the library.
fn compile(crate_dir: &Path, out: &Path) {
    let deps = deps_dir();
    assert!(
        deps.join("libcalling_ffi.so").exists(),
        "cargo built no cdylib in {}",
        deps.display()
    );
    let status = Command::new("gcc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-fsanitize=address",
        ])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/two_users.c"))
        .arg("-L")
        .arg(&deps)
        .arg(format!("-Wl,-rpath,{}", deps.display()))
        .args(["-lcalling_ffi", "-lpthread", "-o"])
        .arg(out)
        .status()
        .unwrap_or_else(|error| panic!("gcc: {error}"));
    assert!(status.success(), "gcc failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_calls_through_the_abi_without_a_leak_or_a_crash() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("opencalling-ffi-c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
    let program = dir.join("two_users");
    compile(crate_dir, &program);

    let (server, server_dir) = development_server("ffi-c-server").await;
    let app = server
        .development_app()
        .cloned()
        .unwrap_or_else(|| panic!("a development server"));
    let sig = |user: &str| user_sig(&app, user);
    let output = tokio::process::Command::new(&program)
        .arg(server.local_addr().to_string())
        .arg(server.fingerprint().to_string())
        .arg(app.sdk_app_id.to_string())
        .args([sig("alice"), sig("bob"), sig("carol")])
        // Leaks fail the run; the library's threads may outlive main.
        .env("ASAN_OPTIONS", "detect_leaks=1:exitcode=23")
        .output()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(
        !stderr.contains("AddressSanitizer") && !stderr.contains("LeakSanitizer"),
        "{stderr}"
    );
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(stderr.contains("every check held"), "{stderr}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&server_dir);
}

/// The static library links with exactly the flags docs/bindings.md gives
/// (`-lm -lpthread -ldl`), and the program it makes starts (it prints its
/// usage and exits 2 without a server's address).
#[test]
fn the_static_library_links_with_the_documented_flags() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deps = deps_dir();
    let library = deps.join("libcalling_ffi.a");
    assert!(
        library.exists(),
        "cargo built no staticlib in {}",
        deps.display()
    );
    let out = std::env::temp_dir().join(format!("opencalling-ffi-static-{}", std::process::id()));
    let status = Command::new("gcc")
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/two_users.c"))
        .arg(&library)
        .args(["-lm", "-lpthread", "-ldl", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|error| panic!("gcc: {error}"));
    assert!(status.success(), "static link failed");
    let ran = Command::new(&out)
        .output()
        .unwrap_or_else(|error| panic!("{error}"));
    let _ = std::fs::remove_file(&out);
    assert!(
        !ran.status.success() && ran.status.code().is_some(),
        "without arguments it exits with a usage error, not a crash: {:?}",
        ran.status
    );
}
