//! `calling-load`: the load generator for `calling-server`. It opens real
//! calls (1v1, or groups of k members), sends real-rate audio datagrams
//! through the server's relay from generator processes spread over the
//! CPUs it is given, and reports round by round — as a table and as JSON —
//! the calls held, loss, relay delay (p50/p99), the server's CPU per
//! forwarded datagram and memory per call. It never sends anywhere but the
//! address it is given (or a server it started on loopback), and every run
//! is bounded in calls and in time.

// The terminal is this binary's user interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod coordinator;
mod forwarder;
mod stats;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for calling-server: real calls, real-rate audio, round by
/// round.
///
/// Each round holds more calls (--calls), sends 50 audio datagrams a second
/// per speaker for --round-secs, and prints the loss, the relay delay, the
/// server's CPU per forwarded datagram (receive included) and its memory
/// per call. The ramp stops after the first round over --max-loss-percent
/// or --max-p99-ms, or past --max-secs. The generator's own CPU is printed
/// too: a generator near 100 % of its cores measures itself, not the
/// server.
///
/// On this machine: `calling-load --spawn-server target/release/calling-server
/// --server-cpus 0 --generator-cpus 1 --udp-baseline`.
///
/// On a big machine, give the server some cores and the generators the rest
/// (a generator needs about as much CPU per call as the server; a server
/// core carries a few hundred 1v1 calls):
///
///   16 cores, server on 4: --spawn-server calling-server --server-cpus 0-3
///   --generator-cpus 4-15 --calls 500,1000,1500,2000,2500
///
///   64 cores, server on 16: --server-cpus 0-15 --generator-cpus 16-63
///   --calls 2000,4000,6000,8000,10000
///
/// crates/calling-load/scaling.sh runs the whole series (1, 2, 4, 8… server
/// cores, one endpoint beside several, 16-member calls).
///
/// The spawned server runs one QUIC endpoint per core it is given. Against
/// a server elsewhere: --server ADDR --fingerprint HEX --app ID and the
/// app's key in CALLING_LOAD_SECRET_KEY (its CPU and memory are then
/// measured only with --server-pid, on its machine).
#[derive(Debug, Parser)]
#[command(name = "calling-load", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    run: coordinator::RunArgs,
}

/// The processes the coordinator starts (not for users).
#[derive(Debug, Subcommand)]
enum Internal {
    /// A generator process (orders on standard input).
    #[command(hide = true)]
    Worker {
        /// Its spec, as JSON.
        spec: String,
    },
    /// The plain UDP forwarder of the baseline.
    #[command(hide = true)]
    UdpForwarder {
        #[arg(default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.internal {
        Some(Internal::Worker { spec }) => current_thread(async move {
            let spec = serde_json::from_str(&spec).map_err(|error| error.to_string())?;
            worker::run(spec).await
        }),
        Some(Internal::UdpForwarder { listen }) => current_thread(forwarder::run(listen)),
        None => current_thread(coordinator::run(cli.run)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("calling-load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Every process of the generator is pinned to one CPU at most: one thread
/// does its work.
fn current_thread(
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?
        .block_on(work)
}

/// Where the JSON report goes.
fn write_json(path: &PathBuf, value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|error| error.to_string())?;
    std::fs::write(path, text + "\n").map_err(|error| format!("{}: {error}", path.display()))
}
