//! The hub: the one task that owns the switchboard and drives it with the
//! real clock. Connection tasks talk to it over channels; it never awaits a
//! client, so a slow client cannot hold up the others.
//!
//! It publishes the audio relay's routes from the switchboard's
//! [`Output::Membership`]: each member of a call with someone to hear it
//! gets a [`Route`] to the others' media links. It knows connections only
//! by their [`MediaLink`], whatever the transport.
//!
//! It also keeps each resumable session's books ([`Replay`]): the messages
//! the client has not acknowledged, resent after a resume; the session's
//! token; which connection (link) carries the session now. A session is
//! named by the [`ConnId`] of the connection that logged it in; a
//! connection that resumes it carries that name from then on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use calling_api::{CallId, ErrorCode, UserId};
use signaling_link::MediaLink;
use signaling_proto::{
    CallEvent, CallSummary, ClientMessage, ConnId, FlowId, PROTOCOL_VERSION, Replay, ResumeClaim,
    ServerMessage, SessionSummary, SessionToken,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::board::{Board, MemberAt, RoutedMember, Step};
use crate::cluster::{IoInput, Mesh};
use crate::metrics::{HubStats, Metrics};
use crate::relay::{MediaRoutes, Route};
use crate::stamped::StampedEvent;

/// How many messages may wait for one client before it counts as stuck and
/// is disconnected.
pub(crate) const OUTBOX_CAPACITY: usize = 256;

/// How many messages a resumable session keeps unacknowledged (sent or
/// waiting for the resume) before it counts as stuck: less than an outbox,
/// so that a resume's resend always fits in the new one.
const REPLAY_CAPACITY: usize = OUTBOX_CAPACITY - 16;

/// What the hub tells a connection task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send this message.
    Message(ServerMessage),
    /// Flush what was sent, then close with this code.
    Close(ErrorCode),
}

#[derive(Debug)]
pub(crate) enum HubInput {
    /// An authenticated login or resume.
    Login(Attach),
    Message {
        link: ConnId,
        message: ClientMessage,
    },
    /// Connection `link` is gone: its network broke, or (`expelled`) the
    /// server closed it for breaking the protocol or a limit.
    Disconnect {
        link: ConnId,
        expelled: bool,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<HubStats>,
    },
    /// The operator's request (admin API).
    Admin {
        request: AdminRequest,
        reply: oneshot::Sender<AdminReply>,
    },
    /// What the cluster's IO brought (store answers, node links).
    Cluster(IoInput),
}

/// What the operator may ask the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Every session.
    Sessions,
    /// Every call.
    Calls,
    /// Log a user out (it gets `KickedOffline`).
    Kick(UserId),
    /// End a call for everyone.
    EndCall(CallId),
    /// Stop taking new logins and calls; the server stops once its calls
    /// are over (or the drain limit passes).
    Drain,
}

/// The hub's answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// Every session, sorted by user.
    Sessions(Vec<SessionSummary>),
    /// Every call with its age, sorted by id.
    Calls(Vec<(CallSummary, Duration)>),
    /// Whether the user or call existed (a drain: whether it started now).
    Done(bool),
}

/// Whether the server drains, and how many calls it still carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainState {
    /// A drain was asked: no new login or call.
    pub draining: bool,
    /// Calls ringing or connected.
    pub calls: usize,
}

/// Where the hub's call events go besides the metrics: bounded queues it
/// never waits on; what does not fit is counted and dropped.
#[derive(Debug)]
pub(crate) struct EventSink {
    pub(crate) queue: mpsc::Sender<Arc<StampedEvent>>,
    /// Counts a dropped event.
    pub(crate) dropped: fn(&Metrics),
}

/// What the hub reports to, beyond its connections.
#[derive(Debug)]
pub(crate) struct HubOps {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sinks: Vec<EventSink>,
    pub(crate) drain: watch::Sender<DrainState>,
}

impl HubOps {
    /// Reports to `metrics` and `sinks`; the drain state is published on
    /// the receiver.
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        sinks: Vec<EventSink>,
    ) -> (Self, watch::Receiver<DrainState>) {
        let (drain, state) = watch::channel(DrainState::default());
        let ops = Self {
            metrics,
            sinks,
            drain,
        };
        (ops, state)
    }
}

/// An authenticated login or resume on connection `link`.
#[derive(Debug)]
pub(crate) struct Attach {
    pub(crate) link: ConnId,
    pub(crate) user: UserId,
    pub(crate) protocol_version: u16,
    /// For a resume: the session it claims.
    pub(crate) resume: Option<ResumeClaim>,
    pub(crate) outbox: mpsc::Sender<Outbound>,
    /// Where the relay sends this member's peers' audio.
    pub(crate) media: Arc<dyn MediaLink>,
    /// The session the connection now carries, and whether it is
    /// resumable (its client then owes heartbeats); `None` when the resume
    /// was refused (the refusal and a close are in the outbox).
    pub(crate) session: oneshot::Sender<Option<(ConnId, bool)>>,
}

/// A session's books beyond the switchboard.
#[derive(Debug)]
struct SessionBook {
    /// The connection that carries it now (or last did).
    link: ConnId,
    /// Version 2: kept for a resume, with its numbered messages.
    resumable: bool,
    token: SessionToken,
    replay: Replay<ServerMessage>,
}

/// What the hub knows besides the switchboard: how to reach each
/// session, and who was routed to whom.
#[derive(Debug, Default)]
struct Links {
    /// Per session, while a connection carries it.
    outboxes: HashMap<ConnId, mpsc::Sender<Outbound>>,
    media: HashMap<ConnId, Arc<dyn MediaLink>>,
    sessions: HashMap<ConnId, SessionBook>,
    /// The session each live connection carries.
    by_link: HashMap<ConnId, ConnId>,
    /// The connections each call's routes were last published for.
    routed: HashMap<CallId, Vec<ConnId>>,
    /// Connections given messages by the last dispatch, or still congested:
    /// the ones whose outbox fill is checked after it.
    to_check: HashSet<ConnId>,
    /// Connections whose outbox is nearly full.
    congested: HashSet<ConnId>,
    /// When each call started.
    started: HashMap<CallId, Instant>,
}

/// Queued messages above which a connection counts as congested…
const CONGESTED_ABOVE: usize = OUTBOX_CAPACITY * 3 / 4;
/// …and below which it no longer does.
const RELIEVED_BELOW: usize = OUTBOX_CAPACITY / 2;

/// What the hub's helpers share besides the switchboard and its links.
#[derive(Debug)]
struct Env {
    routes: Arc<MediaRoutes>,
    ops: HubOps,
    /// In a cluster: the links to the other nodes' members.
    mesh: Option<Arc<Mesh>>,
}

pub(crate) async fn run(
    mut switchboard: Board,
    mut inputs: mpsc::Receiver<HubInput>,
    routes: Arc<MediaRoutes>,
    ops: HubOps,
) {
    let mut links = Links::default();
    let mesh = match &switchboard {
        Board::Cluster(cluster) => Some(cluster.io.mesh()),
        Board::Local(_) => None,
    };
    let env = Env { routes, ops, mesh };
    let mut shutting_down = false;
    let mut draining = false;
    loop {
        let deadline = switchboard.poll_timeout();
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = signaling_link::sleep_until(deadline), if deadline.is_some() => {
                let now = Instant::now();
                switchboard.handle_timeout(now);
                if draining {
                    switchboard.move_idle_sessions(now);
                }
                dispatch(&mut switchboard, &mut links, &env);
                report_drain(&switchboard, &env, draining);
                continue;
            }
        };
        let Some(input) = input else {
            break;
        };
        let now = Instant::now();
        match input {
            HubInput::Login(attach) => {
                let refusal = if shutting_down {
                    Some(ErrorCode::SERVER_SHUTDOWN)
                } else if draining && attach.resume.is_none() {
                    // A resume goes on: its session may be in a call.
                    Some(ErrorCode::SERVER_DRAINING)
                } else {
                    None
                };
                if let Some(code) = refusal {
                    refuse_login(attach, code);
                    continue;
                }
                on_login(&mut switchboard, &mut links, &env, now, attach);
                continue;
            }
            HubInput::Message { link, message } => {
                let Some(conn) = links.by_link.get(&link).copied() else {
                    // A connection a resume replaced: its client moved on.
                    continue;
                };
                if let ClientMessage::Heartbeat { received } = message {
                    heartbeat(&mut links, conn, received);
                    continue;
                }
                if message.is_numbered() {
                    if let Some(book) = links.sessions.get_mut(&conn) {
                        book.replay.record_received();
                    }
                }
                switchboard.handle_message(now, conn, message);
            }
            HubInput::Disconnect { link, expelled } => {
                on_disconnect(&mut switchboard, &mut links, &env, now, (link, expelled));
            }
            HubInput::Shutdown { done } => {
                shutting_down = true;
                switchboard.shutdown(now);
                dispatch(&mut switchboard, &mut links, &env);
                let _ = done.send(());
                continue;
            }
            HubInput::Stats { reply } => {
                let _ = reply.send(stats(&switchboard));
            }
            HubInput::Cluster(input) => {
                if let Board::Cluster(cluster) = &mut switchboard {
                    cluster.handle_io(now, input);
                }
            }
            HubInput::Admin { request, reply } => {
                if request == AdminRequest::Drain && !draining {
                    info!(
                        calls = switchboard.call_count(),
                        "draining: no new logins or calls"
                    );
                    draining = true;
                    switchboard.set_accepting_calls(false);
                    let _ = reply.send(AdminReply::Done(true));
                } else {
                    let _ = reply.send(admin(&mut switchboard, &links, now, request));
                }
            }
        }
        if draining {
            switchboard.move_idle_sessions(now);
        }
        dispatch(&mut switchboard, &mut links, &env);
        report_drain(&switchboard, &env, draining);
    }
}

/// Connection `link` is gone: its session waits for a resume (a broken
/// network, version 2) or ends.
fn on_disconnect(
    switchboard: &mut Board,
    links: &mut Links,
    env: &Env,
    now: Instant,
    (link, expelled): (ConnId, bool),
) {
    let Some(conn) = links.by_link.remove(&link) else {
        return;
    };
    links.media.remove(&conn);
    env.routes.set(conn, None);
    if links.outboxes.remove(&conn).is_none() {
        return;
    }
    if expelled {
        links.sessions.remove(&conn);
        switchboard.handle_expelled(now, conn);
    } else {
        switchboard.handle_disconnect(now, conn);
        if switchboard.is_detached(conn) {
            env.ops.metrics.session_detached();
        } else {
            links.sessions.remove(&conn);
        }
    }
}

/// Answers the operator (a drain already under way: `Done(false)`).
fn admin(
    switchboard: &mut Board,
    links: &Links,
    now: Instant,
    request: AdminRequest,
) -> AdminReply {
    match request {
        AdminRequest::Sessions => AdminReply::Sessions(switchboard.session_summaries()),
        AdminRequest::Calls => AdminReply::Calls(
            switchboard
                .call_summaries()
                .into_iter()
                .map(|call| {
                    let age = links
                        .started
                        .get(&call.call_id)
                        .map_or(Duration::ZERO, |started| now - *started);
                    (call, age)
                })
                .collect(),
        ),
        AdminRequest::Kick(user) => AdminReply::Done(switchboard.kick(now, &user)),
        AdminRequest::EndCall(call_id) => AdminReply::Done(switchboard.end_call(now, call_id)),
        AdminRequest::Drain => AdminReply::Done(false),
    }
}

/// The switchboard's live figures.
fn stats(switchboard: &Board) -> HubStats {
    let counters = switchboard.counters();
    HubStats {
        online: switchboard.online_count(),
        reconnecting: switchboard.detached_count(),
        calls: switchboard.call_count(),
        calls_by_members: switchboard.call_sizes(),
        invitations_rate_limited: counters.invitations_rate_limited,
        invitees_congested: counters.invitees_congested,
        cluster: switchboard.cluster_status(),
    }
}

/// Publishes the drain state when it changed.
fn report_drain(switchboard: &Board, env: &Env, draining: bool) {
    let state = DrainState {
        draining,
        calls: switchboard.call_count(),
    };
    env.ops.drain.send_if_modified(|kept| {
        let changed = *kept != state;
        *kept = state;
        changed
    });
}

/// Refuses a login or resume the server takes no more of.
fn refuse_login(attach: Attach, code: ErrorCode) {
    let version = attach.protocol_version.min(PROTOCOL_VERSION);
    send_refusal(&attach.outbox, (version, code, code.message()));
    let _ = attach.session.send(None);
}

/// Queues a failed `LoginResult` (`protocol_version`, `code`, `message`)
/// and the close that follows it.
fn send_refusal(
    outbox: &mpsc::Sender<Outbound>,
    (protocol_version, code, message): (u16, ErrorCode, &str),
) {
    let _ = outbox.try_send(Outbound::Message(ServerMessage::LoginResult {
        protocol_version,
        code,
        message: message.to_owned(),
    }));
    let _ = outbox.try_send(Outbound::Close(code));
}

/// Attaches a connection to a new session or, for a resume, to the one it
/// claims, and tells its task which.
fn on_login(switchboard: &mut Board, links: &mut Links, env: &Env, now: Instant, attach: Attach) {
    let Attach {
        link,
        user,
        protocol_version,
        resume,
        outbox,
        media,
        session,
    } = attach;
    let attached = match resume {
        None => {
            if let Err(error) = log_in(switchboard, links, now, link, user, protocol_version) {
                debug!(%error, "login refused by the cluster");
                let version = protocol_version.min(PROTOCOL_VERSION);
                send_refusal(&outbox, (version, error.code(), &error.to_string()));
                let _ = session.send(None);
                return;
            }
            links.outboxes.insert(link, outbox);
            links.media.insert(link, media);
            Some(link)
        }
        Some(claim) => {
            let resumed =
                resume_session(switchboard, links, now, (link, &user, claim), outbox, media);
            env.ops.metrics.resume(resumed.is_some());
            resumed
        }
    };
    let resumable = attached
        .and_then(|conn| links.sessions.get(&conn))
        .is_some_and(|book| book.resumable);
    let _ = session.send(attached.map(|conn| (conn, resumable)));
    dispatch(switchboard, links, env);
}

/// A fresh session token from the system's random generator.
fn new_token() -> SessionToken {
    let mut bytes = [0_u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Without randomness a token could be guessed: make resumes fail
        // instead (no token is all zeros but by this path, and a session
        // with it refuses every resume, see `tokens_match`).
        warn!("the system random generator failed: this session cannot be resumed");
    }
    SessionToken(bytes)
}

/// Compares tokens in constant time; the all-zero token matches nothing.
fn tokens_match(kept: &SessionToken, claimed: &SessionToken) -> bool {
    let unset = kept.0.iter().fold(0_u8, |acc, byte| acc | byte) == 0;
    crate::secret::same_bytes(&kept.0, &claimed.0) && !unset
}

/// A new session on connection `link`.
fn log_in(
    switchboard: &mut Board,
    links: &mut Links,
    now: Instant,
    link: ConnId,
    user: UserId,
    protocol_version: u16,
) -> Result<(), calling_cluster::NodeError> {
    switchboard.handle_login(now, link, user, protocol_version)?;
    links.by_link.insert(link, link);
    links.sessions.insert(
        link,
        SessionBook {
            link,
            resumable: protocol_version >= 2 && !switchboard.resume_grace().is_zero(),
            token: new_token(),
            replay: Replay::new(REPLAY_CAPACITY),
        },
    );
    Ok(())
}

/// After the login's answer: what a version-2 client needs to resume.
fn introduce_session(switchboard: &Board, links: &mut Links, conn: ConnId) {
    let Some(book) = links.sessions.get(&conn) else {
        return;
    };
    if !book.resumable {
        return;
    }
    let grace_ms = u32::try_from(switchboard.resume_grace().as_millis()).unwrap_or(u32::MAX);
    let session = ServerMessage::Session {
        token: book.token,
        grace_ms,
    };
    if let Some(outbox) = links.outboxes.get(&conn) {
        let _ = outbox.try_send(Outbound::Message(session));
    }
}

/// Connection `link` claims `user`'s session: if the token is the
/// session's and the client's count fits the books, the connection takes
/// the session over (from a broken connection, or one the server has not
/// yet seen break), gets a new token and every message it missed. Returns
/// the session, or `None` after queueing the refusal.
fn resume_session(
    switchboard: &mut Board,
    links: &mut Links,
    now: Instant,
    (link, user, claim): (ConnId, &UserId, ResumeClaim),
    outbox: mpsc::Sender<Outbound>,
    media: Arc<dyn MediaLink>,
) -> Option<ConnId> {
    let conn = switchboard.conn_of(user);
    let book = conn.and_then(|conn| links.sessions.get_mut(&conn));
    let refusal = match book {
        None => Some("no such session: it expired, or the server restarted"),
        Some(book) if !book.resumable || !tokens_match(&book.token, &claim.token) => {
            Some("not this session's token")
        }
        Some(book) => book
            .replay
            .acknowledge(claim.received)
            .err()
            .map(|_| "the client's count does not fit this session"),
    };
    let (Some(conn), None) = (conn, refusal) else {
        let why = refusal.unwrap_or("no such session");
        debug!(%user, why, "resume refused");
        let refusal = (PROTOCOL_VERSION, ErrorCode::SESSION_EXPIRED, why);
        send_refusal(&outbox, refusal);
        return None;
    };
    let book = links.sessions.get_mut(&conn)?;
    // The connection it replaces, if the server still has it, is closed.
    if let Some(old) = links.outboxes.remove(&conn) {
        let _ = old.try_send(Outbound::Close(ErrorCode::OK));
    }
    links.by_link.remove(&book.link);
    links.by_link.insert(link, conn);
    book.link = link;
    book.token = new_token();
    let resumed = ServerMessage::Resumed {
        token: book.token,
        received: book.replay.received(),
    };
    let _ = outbox.try_send(Outbound::Message(resumed));
    for missed in book.replay.unacknowledged() {
        // Fits: the books keep fewer messages than an outbox holds.
        let _ = outbox.try_send(Outbound::Message(missed.clone()));
    }
    links.outboxes.insert(conn, outbox);
    links.media.insert(conn, media);
    links.to_check.insert(conn);
    if !switchboard.handle_resume(now, conn) {
        return None;
    }
    Some(conn)
}

/// A heartbeat: forget what the client has, answer with what we have.
fn heartbeat(links: &mut Links, conn: ConnId, received: u64) {
    let Some(book) = links.sessions.get_mut(&conn) else {
        return;
    };
    if let Err(error) = book.replay.acknowledge(received) {
        warn!(?conn, %error, "heartbeat with an impossible count");
    }
    let ack = ServerMessage::HeartbeatAck {
        received: book.replay.received(),
    };
    if let Some(outbox) = links.outboxes.get(&conn) {
        let _ = outbox.try_send(Outbound::Message(ack));
    }
    links.to_check.insert(conn);
}

/// Messages waiting for `conn`'s client: in its outbox, or, for a
/// resumable session, not yet acknowledged.
fn queued(links: &Links, conn: ConnId) -> usize {
    let in_outbox = links
        .outboxes
        .get(&conn)
        .map_or(0, |outbox| OUTBOX_CAPACITY - outbox.capacity());
    let unacknowledged = links
        .sessions
        .get(&conn)
        .filter(|book| book.resumable)
        .map_or(0, |book| book.replay.unacknowledged_len());
    in_outbox.max(unacknowledged)
}

/// Tells the switchboard which connections' outboxes are nearly full (so
/// invitations to them are answered busy) and which have drained again.
fn update_congestion(switchboard: &mut Board, links: &mut Links) {
    let mut to_check = std::mem::take(&mut links.to_check);
    to_check.extend(links.congested.iter().copied());
    for conn in to_check {
        let queued = queued(links, conn);
        let was = links.congested.contains(&conn);
        let now = if was {
            queued >= RELIEVED_BELOW
        } else {
            queued > CONGESTED_ABOVE
        };
        if now != was {
            debug!(?conn, queued, congested = now, "outbox fill");
            switchboard.set_congested(conn, now);
            if now {
                links.congested.insert(conn);
            } else {
                links.congested.remove(&conn);
            }
        }
    }
}

/// Counts a call event and hands it to the sinks (webhooks, records),
/// never waiting for them.
fn report_event(links: &mut Links, env: &Env, event: CallEvent) {
    let now = Instant::now();
    let duration = match &event {
        CallEvent::Started { call_id, .. } => {
            links.started.insert(*call_id, now);
            None
        }
        CallEvent::Ended { call_id, .. } => {
            links.started.remove(call_id).map(|started| now - started)
        }
        _ => None,
    };
    env.ops.metrics.observe_event(&event, duration);
    if env.ops.sinks.is_empty() {
        return;
    }
    let stamped = Arc::new(StampedEvent {
        at: SystemTime::now(),
        event,
        duration,
    });
    for sink in &env.ops.sinks {
        if sink.queue.try_send(Arc::clone(&stamped)).is_err() {
            (sink.dropped)(&env.ops.metrics);
        }
    }
}

/// Republishes the routes of a call whose members changed: each member
/// hears every other one; a member alone in it, or gone from it, has none.
fn publish_routes(call_id: CallId, members: &[RoutedMember], links: &mut Links, env: &Env) {
    let routes = &*env.routes;
    let here = |member: &RoutedMember| match member.at {
        MemberAt::Here(conn) => Some(conn),
        MemberAt::There(_) => None,
    };
    let now_routed: Vec<ConnId> = members.iter().filter_map(here).collect();
    for gone in links
        .routed
        .remove(&call_id)
        .unwrap_or_default()
        .into_iter()
        .filter(|conn| !now_routed.contains(conn))
    {
        routes.set(gone, None);
    }
    for member in members {
        let Some(conn) = here(member) else {
            continue;
        };
        let peers: Vec<(FlowId, Arc<dyn MediaLink>)> = members
            .iter()
            .filter(|other| other.at != member.at)
            .filter_map(|other| {
                let link = match other.at {
                    MemberAt::Here(other) => links.media.get(&other)?.clone(),
                    MemberAt::There(at) => env.mesh.as_ref()?.link_to(at),
                };
                Some((other.flow, link))
            })
            .collect();
        let route = match links.media.get(&conn) {
            Some(own) if !peers.is_empty() => Some(Route {
                flow: member.flow,
                peers,
                own: Arc::clone(own),
            }),
            _ => None,
        };
        routes.set(conn, route);
    }
    if !now_routed.is_empty() {
        links.routed.insert(call_id, now_routed);
    }
}

/// Carries out every switchboard output without waiting: messages go to
/// their connection task's outbox (and a resumable session's books),
/// membership to the relay's routes. A client whose messages pile up is
/// disconnected, which may produce more output for the others: repeat
/// until nothing is left.
fn dispatch(switchboard: &mut Board, links: &mut Links, env: &Env) {
    let routes = &*env.routes;
    loop {
        // Sessions to end now, and connections found gone.
        let mut stuck = Vec::new();
        let mut gone = Vec::new();
        while let Some(output) = switchboard.poll_output() {
            match output {
                Step::Send { conn, message } => {
                    links.to_check.insert(conn);
                    if let Some(book) = links.sessions.get_mut(&conn) {
                        if book.resumable
                            && message.is_numbered()
                            && book.replay.record_sent(&message).is_err()
                        {
                            warn!(?conn, "client acknowledges nothing: disconnecting it");
                            stuck.push(conn);
                            continue;
                        }
                    }
                    let Some(outbox) = links.outboxes.get(&conn) else {
                        // Detached: the books keep it for the resume.
                        continue;
                    };
                    // A login's answer, in a cluster, comes later than the
                    // login: what the client needs to resume follows it.
                    let logged_in = matches!(
                        message,
                        ServerMessage::LoginResult { code, .. } if code.is_ok()
                    );
                    match outbox.try_send(Outbound::Message(message)) {
                        Ok(()) if logged_in => introduce_session(switchboard, links, conn),
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            warn!(
                                ?conn,
                                "client is not reading its messages: disconnecting it"
                            );
                            stuck.push(conn);
                        }
                        Err(TrySendError::Closed(_)) => {
                            debug!(?conn, "connection task already gone");
                            gone.push(conn);
                        }
                    }
                }
                Step::Close { conn, code } => {
                    routes.set(conn, None);
                    links.sessions.remove(&conn);
                    links.media.remove(&conn);
                    if let Some(outbox) = links.outboxes.remove(&conn) {
                        // If the outbox is full the close is lost too; the
                        // task then sees its channel closed and closes anyway.
                        let _ = outbox.try_send(Outbound::Close(code));
                    }
                }
                Step::Membership { call_id, members } => {
                    publish_routes(call_id, &members, links, env);
                }
                Step::Event(event) => report_event(links, env, event),
                Step::AllSessionsLost(code) => end_every_session(links, routes, code),
            }
        }
        if stuck.is_empty() && gone.is_empty() {
            update_congestion(switchboard, links);
            return;
        }
        let now = Instant::now();
        for conn in stuck {
            // Dropping the sender tells the connection task to close.
            links.outboxes.remove(&conn);
            links.media.remove(&conn);
            routes.set(conn, None);
            if links.sessions.remove(&conn).is_some() || switchboard.has_session(conn) {
                switchboard.handle_expelled(now, conn);
            }
        }
        for conn in gone {
            if links.outboxes.remove(&conn).is_some() {
                links.media.remove(&conn);
                routes.set(conn, None);
                switchboard.handle_disconnect(now, conn);
                if !switchboard.is_detached(conn) {
                    links.sessions.remove(&conn);
                }
            }
        }
    }
}

/// The cluster gave every session of this server up: each connection is
/// closed with `code` (its client logs in again), and nothing is routed.
fn end_every_session(links: &mut Links, routes: &MediaRoutes, code: ErrorCode) {
    warn!(
        sessions = links.sessions.len(),
        "the cluster's control lost this node's sessions: closing them"
    );
    for (conn, outbox) in links.outboxes.drain() {
        routes.set(conn, None);
        let _ = outbox.try_send(Outbound::Close(code));
    }
    for conns in links.routed.values() {
        for conn in conns {
            routes.set(*conn, None);
        }
    }
    links.routed.clear();
    links.sessions.clear();
    links.media.clear();
    links.by_link.clear();
    links.congested.clear();
    links.to_check.clear();
    links.started.clear();
}

#[cfg(test)]
mod tests {
    //! The hub and the relay on in-memory links: no sockets, no QUIC.

    use super::*;
    use calling_api::CallType;
    use signaling_link::memory::{MemoryMedia, pair};
    use signaling_link::{DatagramSource, Link};
    use signaling_proto::message::RequestId;
    use signaling_proto::{DatagramKind, LossReport, MediaHeader, ReceiverFeatures};

    /// Metrics only, no sinks.
    fn quiet_ops() -> HubOps {
        HubOps::new(Arc::new(Metrics::new()), Vec::new()).0
    }

    struct Client {
        conn: ConnId,
        outbox: mpsc::Receiver<Outbound>,
        /// The client's end of its media link.
        media: MemoryMedia,
        token: Option<SessionToken>,
    }

    /// Connection `link` logs in as `user`, or resumes its session.
    async fn connect(
        hub: &mpsc::Sender<HubInput>,
        link: u64,
        user: &str,
        resume: Option<ResumeClaim>,
    ) -> (Option<ConnId>, Client) {
        let (client, server): (
            Link<signaling_link::memory::Memory, ServerMessage, ClientMessage>,
            _,
        ) = pair();
        let (outbox_tx, outbox) = mpsc::channel(OUTBOX_CAPACITY);
        let (session, attached) = oneshot::channel();
        hub.send(HubInput::Login(Attach {
            link: ConnId(link),
            user: UserId::new(user).unwrap(),
            protocol_version: PROTOCOL_VERSION,
            resume,
            outbox: outbox_tx,
            media: Arc::new(server.media),
            session,
        }))
        .await
        .unwrap();
        let attached = attached.await.unwrap().map(|(conn, resumable)| {
            assert!(resumable, "version 2 sessions are resumable by default");
            conn
        });
        let client = Client {
            conn: attached.unwrap_or(ConnId(link)),
            outbox,
            media: client.media,
            token: None,
        };
        (attached, client)
    }

    async fn log_in(hub: &mpsc::Sender<HubInput>, conn: u64, user: &str) -> Client {
        let (attached, mut client) = connect(hub, conn, user, None).await;
        assert_eq!(attached, Some(ConnId(conn)));
        assert!(matches!(
            next(&mut client).await,
            ServerMessage::LoginResult { .. }
        ));
        let ServerMessage::Session { token, grace_ms } = next(&mut client).await else {
            panic!("a version 2 login is told its session");
        };
        assert_eq!(grace_ms, 20_000);
        client.token = Some(token);
        client
    }

    async fn next(client: &mut Client) -> ServerMessage {
        match client.outbox.recv().await {
            Some(Outbound::Message(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Returns once the hub has carried out every earlier input: it takes
    /// one input at a time and publishes routes before the next.
    async fn barrier(hub: &mpsc::Sender<HubInput>, client: &mut Client) {
        hub.send(HubInput::Message {
            link: client.conn,
            message: ClientMessage::Ping { nonce: 1 },
        })
        .await
        .unwrap();
        while !matches!(next(client).await, ServerMessage::Pong { .. }) {}
    }

    fn datagram(kind: DatagramKind, flow: u32, payload: &[u8]) -> bytes::Bytes {
        let header = MediaHeader {
            kind,
            flow_id: FlowId(flow),
            sequence: 1,
            timestamp: 960,
            voice_activity: true,
            level_dbov: 20,
        };
        let mut buffer = vec![0; 64];
        let len = header.encode(payload, &mut buffer).unwrap();
        buffer.truncate(len);
        buffer.into()
    }

    fn audio(claimed_flow: u32) -> bytes::Bytes {
        datagram(DatagramKind::Audio, claimed_flow, b"opus")
    }

    fn message(client: &Client, message: ClientMessage) -> HubInput {
        HubInput::Message {
            link: client.conn,
            message,
        }
    }

    /// Alice (link 1) and bob (link 2) log in; alice invites bob.
    async fn alice_invites_bob(hub: &mpsc::Sender<HubInput>) -> (Client, Client, CallId) {
        let mut alice = log_in(hub, 1, "alice").await;
        let bob = log_in(hub, 2, "bob").await;
        let invite = ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![UserId::new("bob").unwrap()],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        };
        hub.send(message(&alice, invite)).await.unwrap();
        let ServerMessage::Ack {
            call_id: Some(call_id),
            ..
        } = next(&mut alice).await
        else {
            panic!("no call id");
        };
        (alice, bob, call_id)
    }

    /// Bob accepts: he gets the ack and meets alice, alice meets him.
    /// Their flows, alice's first.
    async fn bob_accepts(
        hub: &mpsc::Sender<HubInput>,
        alice: &mut Client,
        bob: &mut Client,
        call_id: CallId,
    ) -> (FlowId, FlowId) {
        let accept = ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        };
        hub.send(message(bob, accept)).await.unwrap();
        assert!(matches!(next(bob).await, ServerMessage::Ack { .. }));
        let ServerMessage::UserEntered {
            flow_id: alice_flow,
            ..
        } = next(bob).await
        else {
            panic!("bob did not meet alice");
        };
        let ServerMessage::UserEntered {
            flow_id: bob_flow, ..
        } = next(alice).await
        else {
            panic!("bob did not enter");
        };
        (alice_flow, bob_flow)
    }

    #[tokio::test]
    async fn membership_routes_audio_between_members_only() {
        let routes = Arc::new(MediaRoutes::default());
        let (hub, inputs) = mpsc::channel(64);
        tokio::spawn(run(
            Board::Local(Box::new(signaling_proto::Switchboard::new(
                signaling_proto::SwitchboardConfig::DEFAULT,
            ))),
            inputs,
            Arc::clone(&routes),
            quiet_ops(),
        ));
        let (mut alice, mut bob, call_id) = alice_invites_bob(&hub).await;
        assert!(matches!(
            next(&mut bob).await,
            ServerMessage::Invited { .. }
        ));
        // Ringing: alice is alone in the call, her audio goes nowhere.
        routes.relay(alice.conn, audio(0));
        assert_eq!(routes.counts().dropped_not_in_call, 1);

        let (alice_flow, bob_flow) = bob_accepts(&hub, &mut alice, &mut bob, call_id).await;
        barrier(&hub, &mut alice).await;

        routes.relay(bob.conn, audio(999));
        let heard = alice.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!((header.flow_id, payload), (bob_flow, &b"opus"[..]));
        assert_eq!(routes.counts().forwarded, 1);

        // A loss report reaches only the sender it names, restamped with
        // the reporter's flow.
        let report = LossReport { loss_percent: 7 }.to_payload();
        routes.relay(bob.conn, datagram(DatagramKind::Report, 12_345, &report));
        assert_eq!(routes.counts().forwarded, 1, "nobody has flow 12345");
        routes.relay(
            bob.conn,
            datagram(DatagramKind::Report, alice_flow.0, &report),
        );
        let heard = alice.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!(header.kind, DatagramKind::Report);
        assert_eq!(header.flow_id, bob_flow);
        assert_eq!(
            LossReport::from_payload(payload),
            Some(LossReport { loss_percent: 7 })
        );
        assert_eq!(routes.counts().forwarded, 2);
        // So does a receiver's word about what it plays.
        let features = ReceiverFeatures::ours().to_payload();
        routes.relay(
            alice.conn,
            datagram(DatagramKind::Features, 12_345, &features),
        );
        assert_eq!(routes.counts().forwarded, 2, "nobody has flow 12345");
        routes.relay(
            alice.conn,
            datagram(DatagramKind::Features, bob_flow.0, &features),
        );
        let heard = bob.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!(header.kind, DatagramKind::Features);
        assert_eq!(header.flow_id, alice_flow);
        assert_eq!(
            ReceiverFeatures::from_payload(payload),
            Some(ReceiverFeatures::ours())
        );
        assert_eq!(routes.counts().forwarded, 3);

        hub.send(message(
            &bob,
            ClientMessage::Hangup {
                request_id: RequestId(2),
            },
        ))
        .await
        .unwrap();
        while !matches!(next(&mut alice).await, ServerMessage::CallEnded { .. }) {}
        barrier(&hub, &mut alice).await;
        routes.relay(alice.conn, audio(0));
        routes.relay(bob.conn, audio(0));
        assert_eq!(routes.counts().dropped_not_in_call, 3);
        assert_eq!(routes.counts().forwarded, 3);
        drop(bob.media);
    }

    /// Bob's connection breaks mid-call: alice hears he is reconnecting;
    /// what she does meanwhile reaches bob after his resume, once, in
    /// order; his audio flows over the new link; a wrong token or a count
    /// the books cannot match is refused.
    #[tokio::test]
    #[allow(
        clippy::too_many_lines,
        reason = "one outage and resume, told in order, reads best as one story"
    )]
    async fn a_resumed_session_gets_what_it_missed_and_its_audio_back() {
        let routes = Arc::new(MediaRoutes::default());
        let (hub, inputs) = mpsc::channel(64);
        let metrics = Arc::new(Metrics::new());
        let (ops, _drain) = HubOps::new(Arc::clone(&metrics), Vec::new());
        tokio::spawn(run(
            Board::Local(Box::new(signaling_proto::Switchboard::new(
                signaling_proto::SwitchboardConfig::DEFAULT,
            ))),
            inputs,
            Arc::clone(&routes),
            ops,
        ));
        let (mut alice, mut bob, call_id) = alice_invites_bob(&hub).await;
        assert!(matches!(
            next(&mut bob).await,
            ServerMessage::Invited { .. }
        ));
        // Bob's numbered messages: the ack and alice entering.
        bob_accepts(&hub, &mut alice, &mut bob, call_id).await;
        // Bob acknowledges the invitation only, then his network breaks.
        hub.send(message(&bob, ClientMessage::Heartbeat { received: 1 }))
            .await
            .unwrap();
        assert_eq!(
            next(&mut bob).await,
            ServerMessage::HeartbeatAck { received: 1 },
            "the accept counted"
        );
        hub.send(HubInput::Disconnect {
            link: bob.conn,
            expelled: false,
        })
        .await
        .unwrap();
        assert_eq!(
            next(&mut alice).await,
            ServerMessage::MemberConnection {
                call_id,
                user_id: UserId::new("bob").unwrap(),
                connected: false
            }
        );
        hub.send(message(&alice, ClientMessage::Microphone { muted: true }))
            .await
            .unwrap();
        barrier(&hub, &mut alice).await;

        let stolen = ResumeClaim {
            token: SessionToken([7; 16]),
            received: 3,
        };
        let (refused, mut thief) = connect(&hub, 10, "bob", Some(stolen)).await;
        assert_eq!(refused, None);
        assert!(matches!(
            next(&mut thief).await,
            ServerMessage::LoginResult {
                code: ErrorCode::SESSION_EXPIRED,
                ..
            }
        ));
        let token = bob.token.unwrap();
        let (refused, _) = connect(&hub, 11, "bob", Some(ResumeClaim { token, received: 9 })).await;
        assert_eq!(refused, None, "bob cannot have received 9 messages");

        let claim = ResumeClaim { token, received: 3 };
        let (attached, mut bob_again) = connect(&hub, 12, "bob", Some(claim)).await;
        assert_eq!(attached, Some(bob.conn), "the same session");
        let ServerMessage::Resumed {
            token: new_token,
            received,
        } = next(&mut bob_again).await
        else {
            panic!("not resumed");
        };
        assert_ne!(new_token, token, "a resume changes the token");
        let scrape = metrics
            .encode(crate::metrics::Snapshot::default())
            .unwrap_or_default();
        for counted in [
            "opencalling_sessions_detached_total 1\n",
            "opencalling_resumes_total{result=\"refused\"} 2\n",
            "opencalling_resumes_total{result=\"resumed\"} 1\n",
        ] {
            assert!(scrape.contains(counted), "{counted} in {scrape}");
        }
        assert_eq!(received, 1, "the server got bob's accept");
        assert_eq!(
            next(&mut bob_again).await,
            ServerMessage::AudioAvailability {
                call_id,
                user_id: UserId::new("alice").unwrap(),
                available: false
            },
            "what bob missed, once"
        );
        assert_eq!(
            next(&mut alice).await,
            ServerMessage::MemberConnection {
                call_id,
                user_id: UserId::new("bob").unwrap(),
                connected: true
            }
        );
        barrier(&hub, &mut alice).await;
        routes.relay(alice.conn, audio(0));
        let heard = bob_again.media.recv_datagram().await.unwrap();
        assert!(MediaHeader::decode(&heard).is_ok());
        // The old token is void now.
        let (refused, _) = connect(&hub, 13, "bob", Some(ResumeClaim { token, received: 4 })).await;
        assert_eq!(refused, None);
        drop(bob.media);
    }
}
