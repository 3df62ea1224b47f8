//! Servers and clients in child processes, so tests can kill them as a crash
//! would (SIGKILL: no goodbye, no close frame).
//!
//! The child is this very test binary, running only `child_process_entry`
//! with `OPENCALLING_TEST_CHILD` set; in a normal run that test does nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use calling_api::CallingEvent;
use calling_facade::{ClientOptions, TRTCCalling};

/// A child process, killed when dropped.
pub struct ChildProcess {
    child: Child,
    /// The words the child printed after `READY`.
    pub ready: Vec<String>,
}

impl ChildProcess {
    /// Starts the child and waits (off the async threads) for its READY line.
    pub async fn spawn(role: &str, env: &[(&str, String)]) -> Self {
        let role = role.to_owned();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        tokio::task::spawn_blocking(move || Self::spawn_blocking(&role, &env))
            .await
            .unwrap()
    }

    fn spawn_blocking(role: &str, env: &[(String, String)]) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "child::child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("OPENCALLING_TEST_CHILD", role)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("child {role} exited before READY"))
                .unwrap();
            // The test harness prints "test … ... " without a newline first.
            if let Some((_, rest)) = line.split_once("READY") {
                break rest.split_whitespace().map(str::to_owned).collect();
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, ready }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies mid-sentence.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var("OPENCALLING_TEST_CHILD") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        match role.as_str() {
            "server" => run_server().await,
            "client" => run_client().await,
            other => panic!("unknown child role {other}"),
        }
    });
}

#[allow(clippy::print_stdout)]
async fn run_server() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // The server's own settings, read from this process's environment.
    let config = calling_server::Settings::parse_from(["server"])
        .unwrap()
        .resolve()
        .unwrap();
    let configured_app = config.apps.first().cloned();
    let server = calling_server::start(config).await.unwrap();
    let app = configured_app
        .or_else(|| server.development_app().cloned())
        .unwrap();
    println!(
        "READY {} {} {} {}",
        server.local_addr(),
        server.fingerprint(),
        app.sdk_app_id,
        app.secret_key.expose()
    );
    std::future::pending::<()>().await;
}

/// Logs in as OPENCALLING_TEST_USER and accepts every invitation.
#[allow(clippy::print_stdout)]
async fn run_client() {
    let var = |name: &str| std::env::var(name).unwrap();
    let calling = TRTCCalling::new(ClientOptions::from_env());
    let mut events = calling.events();
    calling
        .login(
            var("OPENCALLING_TEST_APP").parse().unwrap(),
            &var("OPENCALLING_TEST_USER"),
            &var("OPENCALLING_TEST_SIG"),
        )
        .await
        .unwrap();
    println!("READY");
    while let Some(event) = events.recv().await {
        if matches!(event, CallingEvent::Invited { .. }) {
            calling.accept().await.unwrap();
            println!("ACCEPTED");
        }
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
}
