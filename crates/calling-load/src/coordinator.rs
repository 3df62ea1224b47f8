//! The coordinating process: starts the server (or finds it), starts the
//! generator processes pinned to their CPUs, ramps the calls round by
//! round, merges what the workers count with what the server used, and
//! prints each round as a table row and the whole run as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::stats::{cpu_time, quantile, rss_kib};
use crate::worker::{Order, Report, Target, WorkerSpec};

/// What to load, how hard and for how long.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Start this calling-server binary in development mode on loopback
    /// and load it
    #[arg(long, value_name = "BIN", conflicts_with = "server")]
    spawn_server: Option<PathBuf>,
    /// CPUs for the spawned server and the baseline forwarder (taskset
    /// list, e.g. 0-3)
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// One more argument for the spawned server (repeat it)
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// A running server's QUIC address
    #[arg(long, value_name = "ADDR", requires_all = ["fingerprint", "app"])]
    server: Option<SocketAddr>,
    /// Its certificate's SHA-256 fingerprint (hex)
    #[arg(long, value_name = "HEX")]
    fingerprint: Option<String>,
    /// Its app's sdkAppId (the key comes from CALLING_LOAD_SECRET_KEY)
    #[arg(long, value_name = "ID")]
    app: Option<u32>,
    /// The app's secret key
    #[arg(
        long,
        env = "CALLING_LOAD_SECRET_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    secret_key: Option<String>,
    /// The server's process id, to measure its CPU and memory (same machine)
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// CPUs for the generator processes, one process per CPU (taskset list)
    #[arg(long, value_name = "LIST")]
    generator_cpus: Option<String>,
    /// Generator processes [default: one per generator CPU, else 1]
    #[arg(long, value_name = "N")]
    processes: Option<usize>,
    /// Calls held in each round, in order (the ramp)
    #[arg(
        long,
        value_name = "N,N,…",
        value_delimiter = ',',
        default_value = "100,200,400,800"
    )]
    calls: Vec<usize>,
    /// Members of each call: 2 is a 1v1 call where both speak; more is a
    /// group call where one speaks at a time
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=64))]
    members: u8,
    /// Seconds of audio in each round
    #[arg(long, default_value_t = 3.0)]
    round_secs: f64,
    /// Bytes of each audio payload (Opus at 32 kbit/s in 20 ms: 80)
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(8..=1_000))]
    payload_bytes: u16,
    /// Calls hung up and set up again each second during a round
    #[arg(long, default_value_t = 0.0)]
    churn_per_sec: f64,
    /// A round with more loss (percent) ends the ramp
    #[arg(long, default_value_t = 0.1)]
    max_loss_percent: f64,
    /// A round with a longer p99 relay delay (ms) ends the ramp
    #[arg(long, default_value_t = 5.0)]
    max_p99_ms: f64,
    /// No round starts after this many seconds
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// Then run the same rounds through a plain UDP forwarder (spawned on
    /// the server CPUs)
    #[arg(long)]
    udp_baseline: bool,
    /// Write the rounds as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// User ids start with this (and the worker and call numbers)
    #[arg(long, default_value = "load")]
    user_prefix: String,
}

/// One round, merged over the workers.
#[derive(Debug, Clone, Serialize)]
struct RoundResult {
    calls: usize,
    members: usize,
    sent: u64,
    expected: u64,
    received: u64,
    loss_percent: f64,
    delay_p50_ms: f64,
    delay_p99_ms: f64,
    /// Server CPU per datagram forwarded (received by a member), µs.
    server_cpu_us_per_datagram: Option<f64>,
    server_cores_busy: Option<f64>,
    server_rss_kib_per_call: Option<f64>,
    generator_cores_busy: f64,
    setup_p50_ms: f64,
    setup_p99_ms: f64,
    setup_failures: u64,
    connect_retries: u64,
    churned: u64,
    passes: bool,
}

/// A process the coordinator measures.
struct Measured {
    /// Killed when this is dropped.
    _process: Option<Child>,
    pid: Option<u32>,
    base_rss_kib: u64,
}

impl Measured {
    fn cpu(&self) -> Option<Duration> {
        self.pid.map(cpu_time)
    }
}

pub(crate) async fn run(args: RunArgs) -> Result<(), String> {
    if args.calls.is_empty() || args.calls.contains(&0) {
        return Err("--calls: give one or more counts above 0".into());
    }
    if !(args.round_secs > 0.0 && args.round_secs <= 600.0) {
        return Err("--round-secs: between 0 and 600".into());
    }
    let started = Instant::now();
    let data_dir = std::env::temp_dir().join(format!("calling-load-{}", std::process::id()));
    let (target, server) = match (&args.spawn_server, args.server) {
        (Some(binary), _) => spawn_server(binary, &args, &data_dir).await?,
        (None, Some(addr)) => (
            Target::Server {
                addr,
                fingerprint: args.fingerprint.clone().unwrap_or_default(),
                sdk_app_id: args.app.unwrap_or_default(),
                secret_key: args
                    .secret_key
                    .clone()
                    .ok_or("the app's key: set CALLING_LOAD_SECRET_KEY")?,
            },
            Measured {
                _process: None,
                pid: args.server_pid,
                base_rss_kib: args.server_pid.map_or(0, rss_kib),
            },
        ),
        (None, None) => return Err("give --spawn-server BIN or --server ADDR".into()),
    };
    let mut runs = Vec::new();
    println!("calling-server (QUIC), {} members a call", args.members);
    let rounds = ramp(&args, target, &server, started).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    let rounds = rounds?;
    print_capacity(&rounds, args.members);
    runs.push(serde_json::json!({ "target": "calling-server", "rounds": rounds }));
    if args.udp_baseline {
        let (target, forwarder) = spawn_forwarder(&args).await?;
        println!("plain UDP forwarder, {} members a call", args.members);
        let baseline = ramp(&args, target, &forwarder, started).await?;
        drop(forwarder);
        print_capacity(&baseline, args.members);
        if let (Some(ours), Some(theirs)) = (last_passing(&rounds), last_passing(&baseline))
            && let (Some(ours), Some(theirs)) = (
                ours.server_cpu_us_per_datagram,
                theirs.server_cpu_us_per_datagram,
            )
        {
            println!(
                "  CPU per forwarded datagram, calling-server / plain UDP forwarder: {:.2}",
                ours / theirs.max(f64::MIN_POSITIVE)
            );
        }
        runs.push(serde_json::json!({ "target": "udp-forwarder", "rounds": baseline }));
    }
    if let Some(path) = &args.json {
        crate::write_json(
            path,
            &serde_json::json!({
                "members": args.members,
                "round_secs": args.round_secs,
                "payload_bytes": args.payload_bytes,
                "churn_per_sec": args.churn_per_sec,
                "runs": runs,
            }),
        )?;
    }
    Ok(())
}

fn last_passing(rounds: &[RoundResult]) -> Option<&RoundResult> {
    rounds.iter().rfind(|round| round.passes)
}

/// The rounds of one target, with its workers started and stopped here.
async fn ramp(
    args: &RunArgs,
    target: Target,
    server: &Measured,
    started: Instant,
) -> Result<Vec<RoundResult>, String> {
    let cpus = match &args.generator_cpus {
        Some(list) => parse_cpu_list(list)?,
        None => Vec::new(),
    };
    let processes = args.processes.unwrap_or(cpus.len().max(1)).max(1);
    let mut workers = Vec::with_capacity(processes);
    for index in 0..processes {
        let spec = WorkerSpec {
            index,
            target: target.clone(),
            members: usize::from(args.members),
            payload_bytes: usize::from(args.payload_bytes),
            user_prefix: args.user_prefix.clone(),
        };
        workers.push(Worker::spawn(
            &spec,
            cpus.get(index % cpus.len().max(1)).copied(),
        )?);
    }
    let mut rounds = Vec::new();
    for &calls in &args.calls {
        if started.elapsed() > Duration::from_secs(args.max_secs) {
            eprintln!("calling-load: --max-secs reached; the ramp stops");
            break;
        }
        let shares = shares(calls, processes);
        let mut setup = Report::default();
        for (worker, share) in workers.iter_mut().zip(&shares) {
            worker.order(&Order::Hold { calls: *share }).await?;
        }
        for worker in &mut workers {
            merge(&mut setup, worker.report().await?);
        }
        let held = setup.held;
        let server_cpu = server.cpu();
        let clock = Instant::now();
        for worker in &mut workers {
            worker
                .order(&Order::Round {
                    secs: args.round_secs,
                    churn_per_sec: args.churn_per_sec / processes as f64,
                })
                .await?;
        }
        let mut round = Report::default();
        for worker in &mut workers {
            merge(&mut round, worker.report().await?);
        }
        let wall = clock.elapsed().as_secs_f64();
        let server_cpu = server
            .cpu()
            .zip(server_cpu)
            .map(|(after, before)| (after - before).as_secs_f64());
        let result = summarize(args, held, &setup, &round, server_cpu, server, wall);
        print_row(&result);
        let passes = result.passes;
        rounds.push(result);
        if !passes {
            break;
        }
    }
    for worker in workers {
        worker.stop().await;
    }
    Ok(rounds)
}

fn summarize(
    args: &RunArgs,
    held: usize,
    setup: &Report,
    round: &Report,
    server_cpu: Option<f64>,
    server: &Measured,
    wall: f64,
) -> RoundResult {
    // Counts far below 2^52: exact in f64.
    let loss_percent = 100.0 * (1.0 - round.received as f64 / round.expected.max(1) as f64);
    let p50 = quantile(&round.delays, 0.50).as_secs_f64() * 1e3;
    let p99 = quantile(&round.delays, 0.99).as_secs_f64() * 1e3;
    let mut setups: Vec<(u32, u64)> = setup
        .setup_ms
        .iter()
        .chain(&round.setup_ms)
        // Milliseconds in 10 µs buckets, as the delays.
        .map(|ms| ((ms * 100.0) as u32, 1))
        .collect();
    setups.sort_unstable();
    let setup_ms = |q| quantile(&setups, q).as_secs_f64() * 1e3;
    let rss = server.pid.map(rss_kib);
    RoundResult {
        calls: held,
        members: usize::from(args.members),
        sent: round.sent,
        expected: round.expected,
        received: round.received,
        loss_percent: loss_percent.max(0.0),
        delay_p50_ms: p50,
        delay_p99_ms: p99,
        server_cpu_us_per_datagram: server_cpu.map(|cpu| cpu * 1e6 / round.received.max(1) as f64),
        server_cores_busy: server_cpu.map(|cpu| cpu / wall),
        server_rss_kib_per_call: rss
            .map(|rss| rss.saturating_sub(server.base_rss_kib) as f64 / held.max(1) as f64),
        generator_cores_busy: round.cpu_secs / wall,
        setup_p50_ms: setup_ms(0.5),
        setup_p99_ms: setup_ms(0.99),
        setup_failures: setup.setup_failures + round.setup_failures,
        connect_retries: setup.connect_retries + round.connect_retries,
        churned: round.churned,
        passes: loss_percent <= args.max_loss_percent
            && p99 <= args.max_p99_ms
            && setup.setup_failures == 0,
    }
}

fn merge(into: &mut Report, report: Report) {
    into.held += report.held;
    into.setup_failures += report.setup_failures;
    into.connect_retries += report.connect_retries;
    into.setup_ms.extend(report.setup_ms);
    into.sent += report.sent;
    into.expected += report.expected;
    into.received += report.received;
    into.delays.extend(report.delays);
    into.cpu_secs += report.cpu_secs;
    into.churned += report.churned;
}

/// `calls` split over `processes` as evenly as counts allow.
fn shares(calls: usize, processes: usize) -> Vec<usize> {
    (0..processes)
        .map(|index| calls * (index + 1) / processes - calls * index / processes)
        .collect()
}

fn print_row(round: &RoundResult) {
    let or_dash = |value: Option<f64>, digits: usize| {
        value.map_or_else(|| "-".to_owned(), |value| format!("{value:.digits$}"))
    };
    println!(
        "  {:>6} calls: loss {:>6.3} %, delay p50 {:>5.2} ms p99 {:>6.2} ms, server {:>5} µs/datagram on {:>4} cores, {:>6} KiB/call, generator {:.2} cores, setup p50 {:.1} ms p99 {:.1} ms{}{}{}",
        round.calls,
        round.loss_percent,
        round.delay_p50_ms,
        round.delay_p99_ms,
        or_dash(round.server_cpu_us_per_datagram, 1),
        or_dash(round.server_cores_busy, 2),
        or_dash(round.server_rss_kib_per_call, 1),
        round.generator_cores_busy,
        round.setup_p50_ms,
        round.setup_p99_ms,
        if round.churned > 0 {
            format!(", {} churned", round.churned)
        } else {
            String::new()
        },
        if round.setup_failures + round.connect_retries > 0 {
            format!(
                ", {} setups failed, {} connects retried",
                round.setup_failures, round.connect_retries
            )
        } else {
            String::new()
        },
        if round.passes {
            ""
        } else {
            "  <- over the limits"
        }
    );
}

fn print_capacity(rounds: &[RoundResult], members: u8) {
    if let Some(best) = last_passing(rounds) {
        let per_call = if members == 2 {
            2.0
        } else {
            f64::from(members) - 1.0
        };
        match best.server_cpu_us_per_datagram {
            Some(cpu) if cpu > 0.0 => println!(
                "  most calls within the limits: {}; at {cpu:.1} µs per forwarded datagram one core carries about {:.0} such calls",
                best.calls,
                1e6 / (cpu * 50.0 * per_call)
            ),
            _ => println!("  most calls within the limits: {}", best.calls),
        }
    } else {
        println!("  no round within the limits");
    }
}

/// A generator process and its order and report pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(spec: &WorkerSpec, cpu: Option<usize>) -> Result<Self, String> {
        let me = std::env::current_exe().map_err(|error| error.to_string())?;
        let spec = serde_json::to_string(spec).map_err(|error| error.to_string())?;
        let mut command = pinned(&me, cpu.map(|cpu| cpu.to_string()).as_deref());
        let mut child = command
            .arg("worker")
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot start a worker: {error}"))?;
        let stdin = child.stdin.take().ok_or("no worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no worker stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    async fn order(&mut self, order: &Order) -> Result<(), String> {
        let mut line = serde_json::to_string(order).map_err(|error| error.to_string())?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|error| format!("a worker is gone: {error}"))
    }

    async fn report(&mut self) -> Result<Report, String> {
        let line = self
            .stdout
            .next_line()
            .await
            .map_err(|error| error.to_string())?
            .ok_or("a worker ended (its error is above)")?;
        serde_json::from_str(&line).map_err(|error| format!("a worker's report: {error}"))
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// `program`, pinned to `cpus` with taskset when given and present.
fn pinned(program: &std::path::Path, cpus: Option<&str>) -> Command {
    let taskset = std::path::Path::new("/usr/bin/taskset");
    match cpus {
        Some(cpus) if taskset.exists() => {
            let mut command = Command::new(taskset);
            command.args(["-c", cpus]).arg(program);
            command
        }
        _ => Command::new(program),
    }
}

/// Parses a taskset-style list: `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|part| !part.is_empty()) {
        let bad = || format!("{list:?} is not a CPU list (like 0-3,8)");
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().map_err(|_| bad())?;
                let last: usize = last.trim().parse().map_err(|_| bad())?;
                if last < first {
                    return Err(bad());
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("{list:?} names no CPU"));
    }
    Ok(cpus)
}

/// A development-mode server on loopback, pinned to the server CPUs, with
/// the flood protection out of the way (capacity is measured, not it).
async fn spawn_server(
    binary: &std::path::Path,
    args: &RunArgs,
    data_dir: &std::path::Path,
) -> Result<(Target, Measured), String> {
    let mut command = pinned(binary, args.server_cpus.as_deref());
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--handshakes-per-sec", "10000000"])
        .args(["--max-connections", "10000000"])
        .args(["--max-connections-per-ip", "10000000"])
        .args(["--max-before-login", "10000000"])
        .args(&args.server_args)
        .env(
            "RUST_LOG",
            std::env::var("CALLING_LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|error| format!("{}: {error}", binary.display()))?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().ok_or("no server stdout")?).lines();
    let (mut addr, mut fingerprint, mut app, mut key) = (None, None, None, None);
    let banner = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("OpenCalling server listening on ") {
                addr = rest.parse::<SocketAddr>().ok();
            } else if let Some(rest) = line.strip_prefix("certificate fingerprint (sha256): ") {
                fingerprint = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("sdkAppId:") {
                app = rest.trim().parse::<u32>().ok();
            } else if let Some(rest) = line.strip_prefix("secret key:") {
                key = Some(rest.trim().to_owned());
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), banner)
        .await
        .map_err(|_| "the server printed no banner in 30 s")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (Some(addr), Some(fingerprint), Some(sdk_app_id), Some(secret_key)) =
        (addr, fingerprint, app, key)
    else {
        return Err("the server's banner lacks its address, fingerprint or app".into());
    };
    // Its memory before any client, to tell the memory per call.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_rss_kib = pid.map_or(0, rss_kib);
    Ok((
        Target::Server {
            addr,
            fingerprint,
            sdk_app_id,
            secret_key,
        },
        Measured {
            _process: Some(child),
            pid,
            base_rss_kib,
        },
    ))
}

/// The baseline forwarder (this binary), pinned to the server CPUs.
async fn spawn_forwarder(args: &RunArgs) -> Result<(Target, Measured), String> {
    let me = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut child = pinned(&me, args.server_cpus.as_deref())
        .arg("udp-forwarder")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start the forwarder: {error}"))?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().ok_or("no forwarder stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| "the forwarder did not start")?
        .map_err(|error| error.to_string())?
        .unwrap_or_default();
    let addr = line
        .strip_prefix("READY ")
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| format!("the forwarder said {line:?}"))?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok((
        Target::Forwarder { addr },
        Measured {
            _process: Some(child),
            pid,
            base_rss_kib: pid.map_or(0, rss_kib),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_taskset_reads_them() {
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        for bad in ["", "a", "3-1", "1-", ","] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        for (calls, processes) in [(100, 1), (100, 3), (7, 4), (3, 5)] {
            let shares = shares(calls, processes);
            assert_eq!(shares.len(), processes);
            assert_eq!(shares.iter().sum::<usize>(), calls);
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "{shares:?}");
        }
    }
}
