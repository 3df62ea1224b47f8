//! The server's core: sessions by connection, the resume books and tokens,
//! congestion, drain, call durations, over any [`Board`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use calling_api::{CallId, ErrorCode, UserId};
use calling_cluster::ClusterNode;
use signaling_proto::{
    CallEvent, CallSummary, ClientMessage, ConnId, DeviceLogin, PROTOCOL_VERSION, Replay,
    ResumeClaim, ServerMessage, SessionSummary, SessionToken,
};
use tracing::{debug, warn};

use crate::board::Board;
use crate::output::{Counted, MemberAt, RoutedMember, ServerOutput};

/// Where session tokens come from: the system's random generator in the
/// server, a counter in tests. A token of all zeros matches no claim (the
/// server's answer to a random generator that failed).
pub type TokenSource = Box<dyn FnMut() -> SessionToken + Send>;

/// How much may wait for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Messages an outbox (the queue to a connection's writer) holds.
    pub outbox_capacity: usize,
    /// Messages a resumable session keeps unacknowledged before it counts
    /// as stuck: fewer than an outbox holds, so that a resume's resend
    /// always fits in the new one.
    pub replay_capacity: usize,
    /// Queued messages above which a client counts as congested…
    pub congested_above: usize,
    /// …and below which it no longer does.
    pub relieved_below: usize,
}

impl OutboxLimits {
    /// The limits for outboxes of `capacity` messages: 16 fewer kept for a
    /// resume, congested above three quarters, relieved below half.
    pub const fn for_outbox(capacity: usize) -> Self {
        Self {
            outbox_capacity: capacity,
            replay_capacity: capacity.saturating_sub(16),
            congested_above: capacity * 3 / 4,
            relieved_below: capacity / 2,
        }
    }
}

/// Whether the server drains, and how many calls it still carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainState {
    /// A drain was asked: no new login or call.
    pub draining: bool,
    /// Calls ringing or connected.
    pub calls: usize,
}

/// An authenticated login or resume on connection `link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The connection.
    pub link: ConnId,
    /// Who (its UserSig checked).
    pub user: UserId,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// The device it named (a login of version 5), and how many its user
    /// may have (the app's rule).
    pub device: DeviceLogin,
    /// For a resume: the session it claims.
    pub resume: Option<ResumeClaim>,
}

/// The answer to a [`Login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAnswer {
    /// The connection carries `session` now.
    Attached {
        /// The session (named by the connection that logged it in).
        session: ConnId,
        /// Its client owes heartbeats and may resume it.
        resumable: bool,
    },
    /// Refused: send the connection `redirect` if any, then this
    /// `LoginResult`, and close it with its code.
    Refused {
        /// The version the answer is written in.
        protocol_version: u16,
        /// Why.
        code: ErrorCode,
        /// Why, in words.
        message: String,
        /// Where the client should go instead (a [`ServerMessage::Redirect`]).
        redirect: Option<ServerMessage>,
    },
}

impl LoginAnswer {
    fn refused(protocol_version: u16, code: ErrorCode, message: &str) -> Self {
        Self::Refused {
            protocol_version: protocol_version.min(PROTOCOL_VERSION),
            code,
            message: message.to_owned(),
            redirect: None,
        }
    }
}

/// The first protocol version that understands [`ServerMessage::Redirect`].
pub(crate) const REDIRECT_SINCE: u16 = 6;

/// Whether a refusal or close with `code` says "not here": the client is
/// told where to go instead, if the server knows.
fn sends_elsewhere(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::SERVER_DRAINING | ErrorCode::SERVER_SHUTDOWN
    )
}

/// A session's books beyond the board.
#[derive(Debug)]
struct SessionBook {
    /// The connection that carries it now; `None` while it waits for a
    /// resume.
    link: Option<ConnId>,
    /// Version 2: kept for a resume, with its numbered messages.
    resumable: bool,
    /// The protocol version it logged in with: a version-1 session is
    /// sent no version-2 message (no `HeartbeatAck`).
    protocol_version: u16,
    token: SessionToken,
    replay: Replay<ServerMessage>,
}

/// The server's decisions over a [`Board`]. Inputs name connections
/// (links); the core maps them to sessions, and its outputs name
/// connections again. See the [crate docs](crate).
pub struct ServerCore<B> {
    board: B,
    limits: OutboxLimits,
    tokens: TokenSource,
    sessions: HashMap<ConnId, SessionBook>,
    /// The session each live connection carries.
    by_link: HashMap<ConnId, ConnId>,
    /// Sessions given messages since the last congestion check.
    to_check: HashSet<ConnId>,
    /// Sessions whose client counts as congested.
    congested: HashSet<ConnId>,
    /// When each call started.
    started: HashMap<CallId, Instant>,
    draining: bool,
    shutting_down: bool,
    /// Sent before a login refused, or a session closed, for being here
    /// when it should not (see [`ServerCore::set_redirect`]).
    redirect: Option<ServerMessage>,
    /// The latest input's instant.
    now: Instant,
    outputs: VecDeque<ServerOutput>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for ServerCore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCore")
            .field("board", &self.board)
            .field("sessions", &self.sessions.len())
            .field("connections", &self.by_link.len())
            .field("congested", &self.congested.len())
            .field("draining", &self.draining)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

impl<B: Board> ServerCore<B> {
    /// A core over `board`, starting at `now`.
    pub fn new(board: B, limits: OutboxLimits, tokens: TokenSource, now: Instant) -> Self {
        Self {
            board,
            limits,
            tokens,
            sessions: HashMap::new(),
            by_link: HashMap::new(),
            to_check: HashSet::new(),
            congested: HashSet::new(),
            started: HashMap::new(),
            draining: false,
            shutting_down: false,
            redirect: None,
            now,
            outputs: VecDeque::new(),
        }
    }

    /// Where a client of version 6 or later is sent when this server
    /// drains, shuts down or is too busy for it: a [`ServerMessage::Redirect`]
    /// to `servers` (`host:port`, best first) goes before the refusal or
    /// the close. None: clients are only refused or closed.
    pub fn set_redirect(&mut self, servers: &[String]) {
        self.redirect = ServerMessage::redirect(servers);
    }

    /// The board, for the operator's figures.
    pub fn board(&self) -> &B {
        &self.board
    }

    /// The next thing to carry out.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.pump();
        self.outputs.pop_front()
    }

    /// Whether outputs wait (without moving the board's).
    pub fn has_output(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// The earliest timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.board.poll_timeout()
    }

    /// Timers due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.board.handle_timeout(now);
        self.after_input(now);
    }

    /// A connection logs in, or resumes the session it claims.
    pub fn handle_login(&mut self, now: Instant, login: Login) -> LoginAnswer {
        self.now = now;
        let Login {
            link,
            user,
            protocol_version,
            device,
            resume,
        } = login;
        let answer = if self.shutting_down {
            let code = ErrorCode::SERVER_SHUTDOWN;
            self.refused_elsewhere(protocol_version, code)
        } else if self.draining && resume.is_none() {
            // A resume goes on: its session may be in a call.
            let code = ErrorCode::SERVER_DRAINING;
            self.refused_elsewhere(protocol_version, code)
        } else if let Some(claim) = resume {
            let answer = self.resume(now, link, &user, claim);
            let resumed = matches!(answer, LoginAnswer::Attached { .. });
            self.outputs
                .push_back(ServerOutput::Count(Counted::Resume { resumed }));
            answer
        } else {
            self.log_in(now, link, user, protocol_version, device)
        };
        self.finish_input();
        answer
    }

    /// What connection `link`'s client sent.
    pub fn handle_message(&mut self, now: Instant, link: ConnId, message: ClientMessage) {
        self.now = now;
        let Some(session) = self.by_link.get(&link).copied() else {
            // A connection a resume replaced, or one already closed.
            return;
        };
        if let ClientMessage::Heartbeat { received } = message {
            self.heartbeat(link, session, received);
        } else {
            if message.is_numbered()
                && let Some(book) = self.sessions.get_mut(&session)
            {
                book.replay.record_received();
            }
            self.board.handle_message(now, session, message);
        }
        self.after_input(now);
    }

    /// Connection `link` is gone: its network broke, or (`expelled`) the
    /// server closed it for breaking the protocol or a limit. Its session
    /// waits for a resume (a broken network, version 2) or ends.
    pub fn handle_disconnect(&mut self, now: Instant, link: ConnId, expelled: bool) {
        self.now = now;
        if let Some(session) = self.unlink(link) {
            if expelled {
                self.forget(session);
                self.board.handle_expelled(now, session);
            } else {
                self.detach(now, session);
            }
        }
        self.after_input(now);
    }

    /// Connection `link`'s outbox is full: its client does not read. Its
    /// session ends.
    pub fn handle_stuck(&mut self, now: Instant, link: ConnId) {
        self.now = now;
        if let Some(session) = self.by_link.get(&link).copied() {
            warn!(
                ?link,
                "client is not reading its messages: disconnecting it"
            );
            self.expel_stuck(session);
        }
        self.after_input(now);
    }

    /// Connection `link`'s writer is gone before its disconnection
    /// arrived: as a broken network.
    pub fn handle_gone(&mut self, now: Instant, link: ConnId) {
        self.now = now;
        if let Some(session) = self.unlink(link) {
            debug!(?link, "connection task already gone");
            self.detach(now, session);
        }
        self.after_input(now);
    }

    /// Rechecks the clients given messages since the last check, and the
    /// congested ones: `outbox_fill` says how many messages wait in a
    /// connection's outbox. A client counts as congested while its outbox
    /// or (resumable) its unacknowledged messages fill up, and invitations
    /// to it are answered busy.
    pub fn handle_congestion(&mut self, now: Instant, outbox_fill: impl Fn(ConnId) -> usize) {
        self.now = now;
        let mut to_check = std::mem::take(&mut self.to_check);
        to_check.extend(self.congested.iter().copied());
        for session in to_check {
            let Some(book) = self.sessions.get(&session) else {
                continue;
            };
            let in_outbox = book.link.map_or(0, &outbox_fill);
            let unacknowledged = if book.resumable {
                book.replay.unacknowledged_len()
            } else {
                0
            };
            let queued = in_outbox.max(unacknowledged);
            let was = self.congested.contains(&session);
            let is = if was {
                queued >= self.limits.relieved_below
            } else {
                queued > self.limits.congested_above
            };
            if is != was {
                debug!(?session, queued, congested = is, "outbox fill");
                self.board.set_congested(now, session, is);
                if is {
                    self.congested.insert(session);
                } else {
                    self.congested.remove(&session);
                }
            }
        }
        // Follows every dispatch: the input before it ran the drain's moves.
        self.finish_input();
    }

    /// The server stops: no more logins; every session ends.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        self.shutting_down = true;
        self.board.shutdown(now);
        self.finish_input();
    }

    /// No new logins or calls from now on; the server stops once its calls
    /// are over. Whether the drain started now (`false`: already under
    /// way).
    pub fn drain(&mut self, now: Instant) -> bool {
        self.now = now;
        if self.draining {
            return false;
        }
        self.draining = true;
        self.board.set_accepting_calls(false);
        self.after_input(now);
        true
    }

    /// Whether the server drains, and its calls.
    pub fn drain_state(&self) -> DrainState {
        DrainState {
            draining: self.draining,
            calls: self.board.call_count(),
        }
    }

    /// What the cluster's IO brought (store answers, link frames): `apply`
    /// hands it to the node. Nothing on a single server.
    pub fn handle_cluster_io(&mut self, now: Instant, apply: impl FnOnce(&mut ClusterNode)) {
        self.now = now;
        self.board.handle_cluster_io(now, apply);
        // What the IO brought goes out before a drain's moves.
        self.pump();
        self.after_input(now);
    }

    /// The operator logs `user` out; whether it was online.
    pub fn kick(&mut self, now: Instant, user: &UserId) -> bool {
        self.now = now;
        let kicked = self.board.kick(now, user);
        self.after_input(now);
        kicked
    }

    /// The operator ends a call for everyone; whether it existed.
    pub fn end_call(&mut self, now: Instant, call_id: CallId) -> bool {
        self.now = now;
        let ended = self.board.end_call(now, call_id);
        self.after_input(now);
        ended
    }

    /// Every session, sorted by user.
    pub fn session_summaries(&self) -> Vec<SessionSummary> {
        self.board.session_summaries()
    }

    /// Every call with how long it has lasted by `now`, sorted by id.
    pub fn call_summaries(&self, now: Instant) -> Vec<(CallSummary, Duration)> {
        self.board
            .call_summaries()
            .into_iter()
            .map(|call| {
                let age = self
                    .started
                    .get(&call.call_id)
                    .map_or(Duration::ZERO, |started| {
                        now.saturating_duration_since(*started)
                    });
                (call, age)
            })
            .collect()
    }

    /// After a client's, the clock's, the IO's or the operator's input: a
    /// drain's moves, then the outputs.
    fn after_input(&mut self, now: Instant) {
        if self.draining {
            self.board.move_idle_sessions(now);
        }
        self.finish_input();
    }

    fn finish_input(&mut self) {
        self.pump();
        self.check_invariants();
    }

    fn log_in(
        &mut self,
        now: Instant,
        link: ConnId,
        user: UserId,
        protocol_version: u16,
        device: DeviceLogin,
    ) -> LoginAnswer {
        let login = self
            .board
            .handle_login(now, link, user, protocol_version, device);
        if let Err(refusal) = login {
            debug!(%refusal, "login refused by the board");
            return LoginAnswer::refused(protocol_version, refusal.code, &refusal.message);
        }
        let resumable = protocol_version >= 2 && !self.board.resume_grace().is_zero();
        self.by_link.insert(link, link);
        self.sessions.insert(
            link,
            SessionBook {
                link: Some(link),
                resumable,
                protocol_version,
                token: (self.tokens)(),
                replay: Replay::new(self.limits.replay_capacity),
            },
        );
        LoginAnswer::Attached {
            session: link,
            resumable,
        }
    }

    /// Connection `link` claims `user`'s session: if the token is the
    /// session's and the client's count fits the books, the connection
    /// takes the session over (from a broken connection, or one the server
    /// has not yet seen break), gets a new token and every message it
    /// missed.
    fn resume(
        &mut self,
        now: Instant,
        link: ConnId,
        user: &UserId,
        claim: ResumeClaim,
    ) -> LoginAnswer {
        // The user's session whose token the claim carries (one per device).
        let session = self.board.sessions_of(user).into_iter().find(|session| {
            self.sessions
                .get(session)
                .is_some_and(|book| tokens_match(&book.token, &claim.token))
        });
        let book = session.and_then(|session| self.sessions.get_mut(&session));
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
        let (Some(session), None) = (session, refusal) else {
            let why = refusal.unwrap_or("no such session");
            debug!(%user, why, "resume refused");
            return LoginAnswer::refused(PROTOCOL_VERSION, ErrorCode::SESSION_EXPIRED, why);
        };
        // The connection it replaces, if the server still has it, is closed.
        if let Some(old) = self
            .sessions
            .get_mut(&session)
            .and_then(|book| book.link.take())
        {
            self.by_link.remove(&old);
            self.outputs.push_back(ServerOutput::Close {
                conn: old,
                code: ErrorCode::OK,
            });
        }
        if !self.board.handle_resume(now, session) {
            self.forget(session);
            let why = "the session ended";
            return LoginAnswer::refused(PROTOCOL_VERSION, ErrorCode::SESSION_EXPIRED, why);
        }
        let token = (self.tokens)();
        let Some(book) = self.sessions.get_mut(&session) else {
            return LoginAnswer::refused(PROTOCOL_VERSION, ErrorCode::SESSION_EXPIRED, "gone");
        };
        book.link = Some(link);
        book.token = token;
        self.outputs.push_back(ServerOutput::Send {
            conn: link,
            message: ServerMessage::Resumed {
                token,
                received: book.replay.received(),
            },
        });
        for missed in book.replay.unacknowledged() {
            // Fits: the books keep fewer messages than an outbox holds.
            self.outputs.push_back(ServerOutput::Send {
                conn: link,
                message: missed.clone(),
            });
        }
        self.by_link.insert(link, session);
        self.to_check.insert(session);
        LoginAnswer::Attached {
            session,
            resumable: true,
        }
    }

    /// A heartbeat: forget what the client has, answer with what we have.
    /// A version-1 session's is ignored (its version has none); one that
    /// claims a count the books cannot have is a protocol error.
    fn heartbeat(&mut self, link: ConnId, session: ConnId, received: u64) {
        let Some(book) = self.sessions.get_mut(&session) else {
            return;
        };
        if book.protocol_version < 2 {
            debug!(?session, "a heartbeat from a version-1 session: ignored");
            return;
        }
        if let Err(error) = book.replay.acknowledge(received) {
            warn!(?session, %error, "heartbeat with an impossible count: closing");
            self.expel(session, ErrorCode::PROTOCOL_ERROR);
            return;
        }
        self.outputs.push_back(ServerOutput::Send {
            conn: link,
            message: ServerMessage::HeartbeatAck {
                received: book.replay.received(),
            },
        });
        self.to_check.insert(session);
    }

    /// Connection `link` no longer carries its session; the session, if
    /// the link was carrying one.
    fn unlink(&mut self, link: ConnId) -> Option<ConnId> {
        let session = self.by_link.remove(&link)?;
        let book = self.sessions.get_mut(&session)?;
        if book.link != Some(link) {
            return None;
        }
        book.link = None;
        Some(session)
    }

    /// A session's connection broke: it waits for a resume or ends.
    fn detach(&mut self, now: Instant, session: ConnId) {
        self.board.handle_disconnect(now, session);
        if self.board.is_detached(session) {
            self.outputs
                .push_back(ServerOutput::Count(Counted::SessionDetached));
        } else {
            self.forget(session);
        }
    }

    /// A session's client does not read (its outbox or books are full):
    /// its connection closes and the session ends.
    fn expel_stuck(&mut self, session: ConnId) {
        self.expel(session, ErrorCode::SERVER_BUSY);
    }

    /// Ends a session for its client's fault, closing its connection with
    /// `code`: no resume.
    fn expel(&mut self, session: ConnId, code: ErrorCode) {
        let known = self.close_session(session, code);
        if known || self.board.has_session(session) {
            self.board.handle_expelled(self.now, session);
        }
    }

    /// Ends a session's books, closing its connection (if any) with
    /// `code`; whether it had books.
    fn close_session(&mut self, session: ConnId, code: ErrorCode) -> bool {
        let Some(book) = self.sessions.get(&session) else {
            return false;
        };
        if let Some(link) = book.link {
            self.by_link.remove(&link);
            self.outputs
                .push_back(ServerOutput::Close { conn: link, code });
        }
        self.forget(session);
        true
    }

    fn forget(&mut self, session: ConnId) {
        if let Some(book) = self.sessions.remove(&session)
            && let Some(link) = book.link
        {
            self.by_link.remove(&link);
        }
        self.congested.remove(&session);
        self.to_check.remove(&session);
    }

    /// A login refused with `code`, with this server's redirect for a
    /// client that reads one.
    fn refused_elsewhere(&self, protocol_version: u16, code: ErrorCode) -> LoginAnswer {
        let mut answer = LoginAnswer::refused(protocol_version, code, code.message());
        if let LoginAnswer::Refused { redirect, .. } = &mut answer
            && protocol_version >= REDIRECT_SINCE
            && sends_elsewhere(code)
        {
            redirect.clone_from(&self.redirect);
        }
        answer
    }

    /// Before `session` is closed with `code`: where to go instead, if
    /// the code says "not here" and its client reads a redirect.
    fn redirect_before_close(&mut self, session: ConnId, code: ErrorCode) {
        let reads_it = self
            .sessions
            .get(&session)
            .is_some_and(|book| book.protocol_version >= REDIRECT_SINCE);
        if reads_it
            && sends_elsewhere(code)
            && let Some(redirect) = self.redirect.clone()
        {
            self.send(session, redirect);
        }
    }

    /// Moves the board's outputs, turning sessions into connections.
    fn pump(&mut self) {
        while let Some(output) = self.board.poll_output() {
            self.carry(output);
        }
    }

    fn carry(&mut self, output: ServerOutput) {
        match output {
            ServerOutput::Send {
                conn: session,
                message,
            } => self.send(session, message),
            ServerOutput::Close {
                conn: session,
                code,
            } => {
                self.redirect_before_close(session, code);
                self.close_session(session, code);
            }
            ServerOutput::Membership { call_id, members } => {
                let members = members
                    .into_iter()
                    .filter_map(|member| match member.at {
                        MemberAt::Here(session) => {
                            let link = self.sessions.get(&session)?.link?;
                            Some(RoutedMember {
                                flow: member.flow,
                                at: MemberAt::Here(link),
                            })
                        }
                        MemberAt::There(_) => Some(member),
                    })
                    .collect();
                self.outputs
                    .push_back(ServerOutput::Membership { call_id, members });
            }
            ServerOutput::Event { event, .. } => {
                let duration = match &event {
                    CallEvent::Started { call_id, .. } => {
                        self.started.insert(*call_id, self.now);
                        None
                    }
                    CallEvent::Ended { call_id, .. } => self
                        .started
                        .remove(call_id)
                        .map(|started| self.now.saturating_duration_since(started)),
                    _ => None,
                };
                self.outputs
                    .push_back(ServerOutput::Event { event, duration });
            }
            ServerOutput::AllSessionsLost(code) => {
                warn!(
                    sessions = self.sessions.len(),
                    "the cluster's control lost this node's sessions: closing them"
                );
                let mut links: Vec<ConnId> = self.by_link.keys().copied().collect();
                links.sort_unstable();
                for link in links {
                    self.outputs
                        .push_back(ServerOutput::Close { conn: link, code });
                }
                self.sessions.clear();
                self.by_link.clear();
                self.congested.clear();
                self.to_check.clear();
                self.started.clear();
                self.outputs.push_back(ServerOutput::AllSessionsLost(code));
            }
            ServerOutput::Cluster(_) | ServerOutput::Count(_) => self.outputs.push_back(output),
        }
    }

    /// A message for a session: recorded in a resumable session's books
    /// (a client that acknowledges nothing is stuck), sent on its
    /// connection if it has one.
    fn send(&mut self, session: ConnId, message: ServerMessage) {
        self.to_check.insert(session);
        let Some(book) = self.sessions.get_mut(&session) else {
            return;
        };
        if book.resumable && message.is_numbered() && book.replay.record_sent(&message).is_err() {
            warn!(?session, "client acknowledges nothing: disconnecting it");
            self.expel_stuck(session);
            return;
        }
        let Some(link) = book.link else {
            // Detached: the books keep it for the resume.
            return;
        };
        // A login's answer, in a cluster, comes later than the login: what
        // the client needs to resume follows it.
        let introduce = book.resumable
            && matches!(&message, ServerMessage::LoginResult { code, .. } if code.is_ok());
        let token = book.token;
        self.outputs.push_back(ServerOutput::Send {
            conn: link,
            message,
        });
        if introduce {
            let grace_ms = u32::try_from(self.board.resume_grace().as_millis()).unwrap_or(u32::MAX);
            self.outputs.push_back(ServerOutput::Send {
                conn: link,
                message: ServerMessage::Session { token, grace_ms },
            });
        }
    }

    /// Debug builds: the books agree with each other and with the board.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (link, session) in &self.by_link {
            let carried = self.sessions.get(session).and_then(|book| book.link);
            assert_eq!(
                carried,
                Some(*link),
                "connection {link:?} maps to session {session:?}, which it does not carry"
            );
        }
        for (session, book) in &self.sessions {
            if let Some(link) = book.link {
                assert_eq!(
                    self.by_link.get(&link),
                    Some(session),
                    "session {session:?}'s connection {link:?} is not mapped to it"
                );
            }
            assert!(
                self.board.has_session(*session),
                "session {session:?} has books but no session on the board"
            );
            assert!(
                book.replay.unacknowledged_len() <= self.limits.replay_capacity,
                "session {session:?} keeps more than its books hold"
            );
        }
        for session in &self.congested {
            assert!(
                self.sessions.contains_key(session),
                "congested session {session:?} has no books"
            );
        }
    }
}

/// Compares tokens in constant time; the all-zero token matches nothing.
fn tokens_match(kept: &SessionToken, claimed: &SessionToken) -> bool {
    let unset = kept.0.iter().fold(0_u8, |acc, byte| acc | byte) == 0;
    let differ = kept
        .0
        .iter()
        .zip(claimed.0.iter())
        .fold(0_u8, |acc, (a, b)| acc | (a ^ b));
    differ == 0 && !unset
}
