//! The server's metrics in the Prometheus/OpenMetrics text format
//! (`prometheus-client`): counters and histograms updated where things
//! happen (the hub, the connection tasks, the webhook sender), and the
//! figures other parts already count (relay, limits, admission, presence,
//! process) read at each scrape. docs/operations.md lists every series;
//! a test checks that the list and this file agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use calling_api::{EndReason, ErrorCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use signaling_proto::{CallEvent, InvitationOutcome};

use crate::limits::LimitCounts;
use crate::relay::RelayCounts;
use server_core::ClusterStatus;

/// Live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubStats {
    /// Users logged in.
    pub online: usize,
    /// Sessions whose connection broke, waiting for a resume (among `online`).
    pub reconnecting: usize,
    /// Calls ringing or connected.
    pub calls: usize,
    /// Calls by how many members have entered them.
    pub calls_by_members: CallsByMembers,
    /// Invites refused over a session's invitation limits.
    pub invitations_rate_limited: u64,
    /// Invitees answered busy because their messages piled up.
    pub invitees_congested: u64,
    /// In cluster mode: this node's place in its cluster.
    pub cluster: Option<ClusterStatus>,
}

/// One label: its name and value.
type Label = [(&'static str, String); 1];

/// What the server counts as things happen.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    invitations: Family<Label, Counter>,
    calls_started: Counter,
    calls_ended: Family<Label, Counter>,
    call_duration: Histogram,
    logins: Family<Label, Counter>,
    resumes: Family<Label, Counter>,
    sessions_detached: Counter,
    rtt: Histogram,
    loss: Histogram,
    webhooks: Family<Label, Counter>,
    call_records: Family<Label, Counter>,
    /// Connection tasks by state, read at each scrape.
    pub(crate) connections: Arc<ConnectionGauges>,
    /// The figures read at each scrape, refreshed just before encoding.
    snapshot: Arc<Mutex<Snapshot>>,
}

/// Connection tasks by state.
#[derive(Debug, Default)]
pub(crate) struct ConnectionGauges {
    handshaking: AtomicUsize,
    logging_in: AtomicUsize,
    logged_in: AtomicUsize,
}

/// A connection's state, for [`ConnectionGauges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionState {
    Handshaking,
    LoggingIn,
    LoggedIn,
}

impl ConnectionGauges {
    fn state(&self, state: ConnectionState) -> &AtomicUsize {
        match state {
            ConnectionState::Handshaking => &self.handshaking,
            ConnectionState::LoggingIn => &self.logging_in,
            ConnectionState::LoggedIn => &self.logged_in,
        }
    }

    /// Counts a connection in `state` until the guard moves or drops.
    pub(crate) fn enter(self: &Arc<Self>, state: ConnectionState) -> ConnectionStateGuard {
        self.state(state).fetch_add(1, Ordering::Relaxed);
        ConnectionStateGuard {
            gauges: Arc::clone(self),
            state,
        }
    }
}

/// A connection counted in one state.
#[derive(Debug)]
pub(crate) struct ConnectionStateGuard {
    gauges: Arc<ConnectionGauges>,
    state: ConnectionState,
}

impl ConnectionStateGuard {
    /// The connection is now in `state`.
    pub(crate) fn set(&mut self, state: ConnectionState) {
        self.gauges
            .state(self.state)
            .fetch_sub(1, Ordering::Relaxed);
        self.gauges.state(state).fetch_add(1, Ordering::Relaxed);
        self.state = state;
    }
}

impl Drop for ConnectionStateGuard {
    fn drop(&mut self) {
        self.gauges
            .state(self.state)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The figures other parts count, as of a scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) hub: Option<HubStats>,
    pub(crate) relay: RelayCounts,
    pub(crate) limits: LimitCounts,
    pub(crate) admission: crate::admission::AdmissionCounts,
    pub(crate) sends: signaling_quic::SendCounts,
    pub(crate) process: Option<ProcessStats>,
    pub(crate) connections: [(&'static str, usize); 3],
    pub(crate) ready: bool,
    pub(crate) webhook_queue: usize,
}

/// The process's own figures (Linux `/proc/self`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessStats {
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) open_fds: u64,
    pub(crate) threads: u64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is none.
    pub(crate) fn read() -> Option<Self> {
        let own = process_stats::ProcessStats::own()?;
        Some(Self {
            cpu_seconds: own.cpu.as_secs_f64(),
            threads: own.threads,
            virtual_bytes: own.virtual_bytes,
            resident_bytes: own.resident_bytes,
            open_fds: process_stats::own_open_fds().unwrap_or(0),
        })
    }
}

fn label(name: &'static str, value: impl Into<String>) -> Label {
    [(name, value.into())]
}

/// A stable label value for an end reason.
pub(crate) fn reason_label(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Hangup => "hangup",
        EndReason::Rejected => "rejected",
        EndReason::NoResponse => "no_response",
        EndReason::LineBusy => "line_busy",
        EndReason::Cancelled => "cancelled",
        EndReason::TimedOut => "timed_out",
        EndReason::AnsweredElsewhere => "answered_elsewhere",
        EndReason::RejectedElsewhere => "rejected_elsewhere",
        EndReason::Kicked => "kicked",
        EndReason::ServerShutdown => "server_shutdown",
        EndReason::ConnectionLost => "connection_lost",
        EndReason::EndedByOperator => "ended_by_operator",
        EndReason::LoggedOutByOperator => "logged_out_by_operator",
        _ => "other",
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("opencalling");
        let invitations = Family::<Label, Counter>::default();
        registry.register(
            "invitations",
            "Invitations by outcome (answered, rejected, no_response, timed_out, busy, cancelled)",
            invitations.clone(),
        );
        // Every outcome shows from the start, at zero.
        for outcome in InvitationOutcome::ALL {
            let _ = invitations.get_or_create(&label("outcome", outcome.as_str()));
        }
        let calls_started = Counter::default();
        registry.register("calls_started", "Calls opened", calls_started.clone());
        let calls_ended = Family::<Label, Counter>::default();
        registry.register(
            "calls_ended",
            "Calls over, by the reason their last member was told",
            calls_ended.clone(),
        );
        // Ten seconds to about three hours.
        let call_duration = Histogram::new(exponential_buckets(10.0, 2.0, 11));
        registry.register_with_unit(
            "call_duration",
            "How long ended calls lasted, from the first invitation to the end",
            Unit::Seconds,
            call_duration.clone(),
        );
        let logins = Family::<Label, Counter>::default();
        registry.register(
            "logins",
            "Logins by result code (OK, or the refusal's code name)",
            logins.clone(),
        );
        let resumes = Family::<Label, Counter>::default();
        registry.register(
            "resumes",
            "Session resumes by result (resumed, refused)",
            resumes.clone(),
        );
        let sessions_detached = Counter::default();
        registry.register(
            "sessions_detached",
            "Connections lost under a resumable session, which then waited for its client",
            sessions_detached.clone(),
        );
        // 1 ms to about 4 s.
        let rtt = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register_with_unit(
            "connection_rtt",
            "Round-trip time of QUIC connections, sampled a second after the login, then every 10 s",
            Unit::Seconds,
            rtt.clone(),
        );
        let loss = Histogram::new([0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]);
        registry.register(
            "connection_loss_ratio",
            "Share of a QUIC connection's packets lost since its previous sample",
            loss.clone(),
        );
        let webhooks = Family::<Label, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by result (delivered, retried, failed, dropped)",
            webhooks.clone(),
        );
        let call_records = Family::<Label, Counter>::default();
        registry.register(
            "call_records",
            "Call records by result (written, failed, dropped)",
            call_records.clone(),
        );
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(SnapshotCollector(Arc::clone(&snapshot))));
        Self {
            registry,
            invitations,
            calls_started,
            calls_ended,
            call_duration,
            logins,
            resumes,
            sessions_detached,
            rtt,
            loss,
            webhooks,
            call_records,
            connections: Arc::default(),
            snapshot,
        }
    }

    /// Counts what a call event says; `duration` comes with an `Ended`.
    pub(crate) fn observe_event(&self, event: &CallEvent, duration: Option<Duration>) {
        match event {
            CallEvent::Started { .. } => {
                self.calls_started.inc();
            }
            CallEvent::InvitationEnded { outcome, .. } => {
                self.invitations
                    .get_or_create(&label("outcome", outcome.as_str()))
                    .inc();
            }
            CallEvent::Ended { reason, .. } => {
                self.calls_ended
                    .get_or_create(&label("reason", reason_label(*reason)))
                    .inc();
                if let Some(duration) = duration {
                    self.call_duration.observe(duration.as_secs_f64());
                }
            }
            CallEvent::Invited { .. } | CallEvent::Joined { .. } | CallEvent::Left { .. } => {}
        }
    }

    pub(crate) fn login(&self, code: ErrorCode) {
        let name = code.name().unwrap_or("UNKNOWN");
        self.logins.get_or_create(&label("code", name)).inc();
    }

    pub(crate) fn resume(&self, resumed: bool) {
        let result = if resumed { "resumed" } else { "refused" };
        self.resumes.get_or_create(&label("result", result)).inc();
    }

    pub(crate) fn session_detached(&self) {
        self.sessions_detached.inc();
    }

    pub(crate) fn path_sample(&self, rtt: Duration, loss: Option<f64>) {
        self.rtt.observe(rtt.as_secs_f64());
        if let Some(loss) = loss {
            self.loss.observe(loss);
        }
    }

    pub(crate) fn webhook(&self, result: &'static str) {
        self.webhooks.get_or_create(&label("result", result)).inc();
    }

    pub(crate) fn call_record(&self, result: &'static str) {
        self.call_records
            .get_or_create(&label("result", result))
            .inc();
    }

    /// Connections by state now.
    pub(crate) fn connection_counts(&self) -> [(&'static str, usize); 3] {
        let load = |gauge: &AtomicUsize| gauge.load(Ordering::Relaxed);
        [
            ("handshaking", load(&self.connections.handshaking)),
            ("logging_in", load(&self.connections.logging_in)),
            ("logged_in", load(&self.connections.logged_in)),
        ]
    }

    /// The exposition, with `snapshot` as the scraped figures.
    pub(crate) fn encode(&self, snapshot: Snapshot) -> Result<String, std::fmt::Error> {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Encodes the scraped figures with the registry's prefix.
#[derive(Debug)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(Label, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0_u64).metric_type())?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(Label, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, unit, ConstGauge::new(0.0_f64).metric_type())?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter of one series, without labels.
fn single_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0_u64).metric_type())?;
    ConstCounter::new(value).encode(metric)
}

/// A gauge of one series, without labels.
fn single_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric =
        encoder.encode_descriptor(name, help, unit, ConstGauge::new(0.0_f64).metric_type())?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        encode_refusals(&mut encoder, &snapshot)?;
        encode_presence(&mut encoder, &snapshot)?;
        encode_sends(&mut encoder, snapshot.sends)?;
        if let Some(process) = snapshot.process {
            encode_process(&mut encoder, process)?;
        }
        Ok(())
    }
}

/// What the relay forwarded and what every limit turned away.
fn encode_refusals(
    encoder: &mut DescriptorEncoder<'_>,
    snapshot: &Snapshot,
) -> Result<(), std::fmt::Error> {
    let relay = snapshot.relay;
    single_counter(
        encoder,
        "relay_datagrams_forwarded",
        "Audio datagrams sent on to a call member (one per receiver)",
        relay.forwarded,
    )?;
    counter(
        encoder,
        "relay_datagrams_dropped",
        "Audio datagrams not relayed, by cause",
        &[
            (label("cause", "not_in_call"), relay.dropped_not_in_call),
            (label("cause", "malformed"), relay.dropped_malformed),
            (label("cause", "over_rate"), snapshot.limits.media_dropped),
            (label("cause", "unsendable"), relay.unsendable),
        ],
    )?;
    let limits = snapshot.limits;
    let admission = snapshot.admission;
    let hub = snapshot.hub.as_ref();
    counter(
        encoder,
        "limit_refusals",
        "What each limit refused or closed, by limit",
        &[
            (label("limit", "requests_per_sec"), limits.requests_refused),
            (
                label("limit", "flooding_closed"),
                limits.closed_for_flooding,
            ),
            (label("limit", "write_timeout"), limits.write_timeouts),
            (label("limit", "login_throttle"), limits.logins_delayed),
            (label("limit", "max_connections"), admission.refused_full),
            (
                label("limit", "max_connections_per_ip"),
                admission.refused_per_address,
            ),
            (
                label("limit", "max_before_login"),
                admission.refused_before_login,
            ),
            (
                label("limit", "max_before_login_evicted"),
                admission.evicted_before_login,
            ),
            (
                label("limit", "handshakes_per_sec"),
                admission.refused_handshake_budget,
            ),
            (
                label("limit", "address_validation_retry"),
                admission.retried,
            ),
            (
                label("limit", "invitations_per_session"),
                hub.map_or(0, |hub| hub.invitations_rate_limited),
            ),
            (
                label("limit", "invitee_congested"),
                hub.map_or(0, |hub| hub.invitees_congested),
            ),
        ],
    )
}

/// What the QUIC sockets sent, and in how many system calls.
fn encode_sends(
    encoder: &mut DescriptorEncoder<'_>,
    sends: signaling_quic::SendCounts,
) -> Result<(), std::fmt::Error> {
    single_counter(
        encoder,
        "udp_packets_sent",
        "QUIC packets handed to the kernel",
        sends.packets,
    )?;
    single_counter(
        encoder,
        "udp_send_calls",
        "System calls that sent them (one sendmmsg sends many)",
        sends.calls,
    )?;
    single_counter(
        encoder,
        "udp_packets_refused",
        "QUIC packets the kernel refused to send, dropped",
        sends.dropped,
    )
}

/// Connections, users, calls, readiness, queues.
fn encode_presence(
    encoder: &mut DescriptorEncoder<'_>,
    snapshot: &Snapshot,
) -> Result<(), std::fmt::Error> {
    let connections: Vec<(Label, f64)> = snapshot
        .connections
        .iter()
        .map(|(state, count)| (label("state", *state), *count as f64))
        .collect();
    gauge(
        encoder,
        "connections",
        "Open client connections by state",
        None,
        &connections,
    )?;
    if let Some(hub) = &snapshot.hub {
        single_gauge(
            encoder,
            "users_online",
            "Users logged in (reconnecting sessions included)",
            None,
            hub.online as f64,
        )?;
        single_gauge(
            encoder,
            "sessions_reconnecting",
            "Sessions whose connection broke, waiting for their client to resume",
            None,
            hub.reconnecting as f64,
        )?;
        single_gauge(
            encoder,
            "calls_active",
            "Calls ringing or connected",
            None,
            hub.calls as f64,
        )?;
        let by_size: Vec<(Label, f64)> = hub
            .calls_by_members
            .iter()
            .map(|(members, calls)| (label("members", members.to_string()), *calls as f64))
            .collect();
        gauge(
            encoder,
            "calls_by_members",
            "Active calls by how many members have entered",
            None,
            &by_size,
        )?;
    }
    single_gauge(
        encoder,
        "ready",
        "1 while the server takes new users (not draining or stopping, every critical task alive)",
        None,
        f64::from(u8::from(snapshot.ready)),
    )?;
    single_gauge(
        encoder,
        "webhook_queue",
        "Webhook events waiting to be handed to the URLs' queues",
        None,
        snapshot.webhook_queue as f64,
    )
}

/// The process's CPU, memory, descriptors and threads.
fn encode_process(
    encoder: &mut DescriptorEncoder<'_>,
    process: ProcessStats,
) -> Result<(), std::fmt::Error> {
    counter_f64(
        encoder,
        "process_cpu",
        "CPU time the process used",
        process.cpu_seconds,
    )?;
    single_gauge(
        encoder,
        "process_resident_memory",
        "Resident memory",
        Some(&Unit::Bytes),
        process.resident_bytes as f64,
    )?;
    single_gauge(
        encoder,
        "process_virtual_memory",
        "Virtual memory",
        Some(&Unit::Bytes),
        process.virtual_bytes as f64,
    )?;
    single_gauge(
        encoder,
        "process_open_fds",
        "Open file descriptors",
        None,
        process.open_fds as f64,
    )?;
    single_gauge(
        encoder,
        "process_threads",
        "Threads",
        None,
        process.threads as f64,
    )
}

fn counter_f64(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    seconds: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(
        name,
        help,
        Some(&Unit::Seconds),
        ConstCounter::new(0.0_f64).metric_type(),
    )?;
    ConstCounter::new(seconds).encode(metric)
}

/// Calls by entered members, for [`HubStats`].
pub(crate) type CallsByMembers = BTreeMap<usize, usize>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the server exports is listed in docs/operations.md.
    #[test]
    fn docs_list_every_metric() {
        let metrics = Metrics::new();
        let snapshot = Snapshot {
            hub: Some(HubStats {
                online: 2,
                reconnecting: 0,
                calls: 1,
                calls_by_members: BTreeMap::from([(2, 1)]),
                invitations_rate_limited: 0,
                invitees_congested: 0,
                cluster: None,
            }),
            process: ProcessStats::read(),
            ..Snapshot::default()
        };
        assert!(snapshot.process.is_some(), "this test runs on Linux");
        let text = metrics.encode(snapshot).unwrap_or_default();
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
        let docs = std::fs::read_to_string(path).unwrap_or_default();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.split_whitespace().next())
            .collect();
        assert!(names.len() > 20, "{text}");
        for name in names {
            assert!(
                docs.contains(&format!("`{name}`")),
                "docs/operations.md lacks `{name}`"
            );
        }
    }
}
