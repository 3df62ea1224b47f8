//! The client's call logic: what each API call means in each state, and how
//! server messages become the calling API's events. Sans-IO.
//!
//! The application (or the facade) calls [`CallEngine::login`],
//! [`CallEngine::call`], [`CallEngine::accept`]… which validate, change state
//! and queue messages for the server; the transport delivers the server's
//! messages to [`CallEngine::handle_message`]. Out come three queues:
//! [`CallEngine::poll_transmit`] (messages to send),
//! [`CallEngine::poll_event`] (the events of the calling API) and
//! [`CallEngine::poll_completion`] (the server's verdict on each request).
//!
//! The engine reads no clock. The server owns every call timeout; the
//! engine's own timers (one variant each of a private timer enum in a
//! [`TimerTable`]) are driven by [`CallEngine::poll_timeout`] /
//! [`CallEngine::handle_timeout`]: the periodic `onUserVoiceVolume` report
//! while in a call, from the levels the audio side feeds to
//! [`CallEngine::record_voice_level`]; the heartbeat of a resumable session
//! (it acknowledges what arrived); and, with reconnection on, the deadline
//! by which the server must have said something.
//!
//! # Reconnection
//!
//! With [`CallEngine::set_reconnect`] on, a logged-in session outlives its
//! connection: [`CallEngine::handle_disconnect`] (or the liveness deadline:
//! nothing heard from the server for [`ReconnectTimings::dead_after`]) emits
//! [`CallingEvent::Reconnecting`] and keeps the call state; requests made
//! meanwhile wait. [`CallEngine::wants_connection`] tells the driver to open
//! a new connection and report it with [`CallEngine::handle_connected`]; the
//! engine then resumes the session ([`ClientMessage::Resume`], resending the
//! numbered messages the server missed, see [`crate::resume`]) or, when the
//! server no longer has it, ends what was lost (`onCallEnd` with
//! [`EndReason::ConnectionLost`]) and logs in again with the same
//! credentials. [`CallingEvent::Reconnected`] says it is done. A server
//! that stays unreachable past the grace its `Session` message announced
//! (plus two liveness periods: the time it may have taken to notice the
//! break) has surely ended the session: the engine ends what it held
//! there and then (`onCallEnd` once, [`EndReason::ConnectionLost`]) and
//! keeps trying to log in. A server
//! that shuts down (`SERVER_SHUTDOWN`: a restart, a rolling upgrade) is
//! treated the same way: its calls end with [`EndReason::ServerShutdown`],
//! [`CallingEvent::Reconnecting`] follows, and the engine logs in again
//! once a connection answers; only with reconnection off does the notice
//! end the session (`onError`, logged out).
//!
//! # Driving it
//!
//! After every input (an API call, [`CallEngine::handle_message`],
//! [`CallEngine::handle_timeout`], [`CallEngine::handle_disconnect`]) drain
//! the three queues in this order: [`CallEngine::poll_transmit`] first (so
//! the server hears of a request before anything else can happen),
//! then [`CallEngine::poll_event`], then [`CallEngine::poll_completion`]
//! (an application awaiting a request sees the events it caused first);
//! then sleep until the next message or [`CallEngine::poll_timeout`].
//!
//! # Bugs and bad input
//!
//! No server message can make the engine panic: messages out of place are
//! logged and ignored. Debug builds check every invariant
//! ([`CallEngine::check_invariants`]) after every `handle_*` and panic at
//! the first broken one: that is a bug here, never a reaction to input.
//!
//! | API call | idle | dialing | ringing | in a call |
//! | --- | --- | --- | --- | --- |
//! | `call` | new call | error | error | invite into the call |
//! | `accept` | error | error | accept | error |
//! | `reject` | error | error | reject | error |
//! | `hangup` | error | cancel | reject | leave |
//!
//! "Dialing" is the moment between `call` and the server's reply; once the
//! reply comes the caller is in the call, waiting for its invitees.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use calling_api::{
    CallId, CallType, CallingError, CallingEvent, CallingResult, DeviceId, EndReason, ErrorCode,
    UserId, UserVolume,
};
use tracing::{debug, warn};

use crate::message::{
    ClientMessage, FlowId, MAX_USER_SIG_LEN, MediaEncryption, PROTOCOL_VERSION, RequestId,
    ServerMessage, SessionToken, UserSig, check_invitation,
};
use crate::resume::Replay;
use crate::timer::TimerTable;

/// How the engine watches its connection, with reconnection on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectTimings {
    /// How often a heartbeat goes to the server (it answers each).
    pub heartbeat_interval: Duration,
    /// Nothing from the server for this long, while an answer is due,
    /// and the connection counts as dead.
    pub dead_after: Duration,
}

impl ReconnectTimings {
    /// A heartbeat a second; dead after 3 s of silence.
    pub const DEFAULT: Self = Self {
        heartbeat_interval: Duration::from_secs(1),
        dead_after: Duration::from_secs(3),
    };
}

impl Default for ReconnectTimings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The most of our numbered messages kept for the server to acknowledge;
/// past it the session cannot be resumed and a reconnect logs in afresh.
const REPLAY_CAPACITY: usize = 1024;

/// A resumable session acknowledges at least every this many numbered
/// messages, besides every heartbeat: the server keeps what it sent until
/// then, and closes a session that leaves too much unacknowledged
/// (docs/protocol.md, "Resume").
pub const ACKNOWLEDGE_EVERY: u64 = 64;

/// Where the connection under a logged-in session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Messages flow.
    Up,
    /// Broken; waiting for the driver's next connection.
    Down,
    /// [`ClientMessage::Resume`] sent, no answer yet.
    Resuming,
    /// The session was lost; a new [`ClientMessage::Login`] is sent.
    LoggingInAgain,
}

/// Per-call options beyond the original's `call(userId, type)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// How long the invitation rings, in milliseconds; `None` for the
    /// server's default (30 s unless configured).
    pub timeout_ms: Option<u32>,
    /// Opaque data handed to the invitee, at most 4096 bytes.
    pub user_data: Option<String>,
}

/// The server's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request, as returned when it was made.
    pub request: RequestId,
    /// `Ok` with the call for invites and accepts, or why it failed.
    pub result: CallingResult<Option<CallId>>,
}

/// An invitation as the invitee sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The call.
    pub call_id: CallId,
    /// Who invites.
    pub sponsor: UserId,
    /// The call's other members and invitees.
    pub user_ids: Vec<UserId>,
    /// Audio or video.
    pub call_type: CallType,
    /// The inviter's application data.
    pub user_data: Option<String>,
}

/// Where the engine stands, for display and assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStatus {
    /// No session.
    LoggedOut,
    /// Login sent, no answer yet.
    LoggingIn,
    /// Logged in, no call.
    Idle,
    /// `call` sent, no answer yet.
    Dialing,
    /// An invitation rings.
    Ringing(Invitation),
    /// `accept` sent, no answer yet.
    Accepting(CallId),
    /// In a call: the other members who have entered.
    InCall {
        /// The call.
        call_id: CallId,
        /// Everyone else who entered, not yet left.
        members: BTreeSet<UserId>,
    },
}

/// Where the login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginState {
    LoggedOut,
    LoggingIn(RequestId),
    LoggedIn,
    LoggingOut,
}

#[derive(Debug)]
enum State {
    Idle,
    Dialing {
        request: RequestId,
        invitees: Vec<UserId>,
    },
    Ringing(Invitation),
    Accepting {
        request: RequestId,
        invitation: Invitation,
    },
    InCall {
        call_id: CallId,
        members: BTreeSet<UserId>,
        flows: HashMap<UserId, FlowId>,
        /// Users this client invited who have not answered yet.
        invited: BTreeSet<UserId>,
    },
}

/// A call this client hung up whose end the server has not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// The call id comes with the reply to this request.
    AfterReply(RequestId),
    Call(CallId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestKind {
    Login,
    Logout,
    Invite {
        invitee: UserId,
    },
    Accept,
    Reject,
    Hangup,
    /// Answered here already (a hangup while reconnecting): the server's
    /// reply, when it comes, completes nothing.
    AnsweredHere,
}

/// The engine's timers: one variant per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// The next `onUserVoiceVolume` report; armed exactly while in a call.
    VoiceVolumeReport,
    /// The next heartbeat; armed while a resumable session's connection
    /// is up.
    Heartbeat,
    /// The server must have said something by then, or the connection is
    /// dead; armed while a connection is expected to work.
    Liveness,
    /// The server has surely ended the session by then (its grace, from
    /// the last word heard, and time for it to notice the break): armed
    /// while a resumable session waits for a connection.
    SessionExpiry,
}

/// How often `onUserVoiceVolume` fires in a call unless configured: the
/// original's 300 ms.
pub const DEFAULT_VOICE_VOLUME_INTERVAL: Duration = Duration::from_millis(300);

/// The client's call logic. See the [module docs](self).
#[derive(Debug)]
pub struct CallEngine {
    me: Option<UserId>,
    voice_volume_interval: Duration,
    timers: TimerTable<Timer>,
    /// Loudest level per user since the last report.
    voice_levels: BTreeMap<UserId, u8>,
    login: LoginState,
    state: State,
    /// Calls hung up locally whose end the server has not confirmed yet;
    /// several when the user dials and hangs up faster than the network.
    leaving: Vec<Leaving>,
    /// An invitation that arrived while a reply to our own invite or accept
    /// was outstanding. If a reply names its call, the server merged the two
    /// (glare) and the invitation is void; otherwise it rings once every
    /// outstanding reply is in and the engine is still free.
    held: Option<Invitation>,
    muted: bool,
    next_request: u32,
    requests: HashMap<RequestId, RequestKind>,
    /// Whether a broken connection is repaired rather than the end.
    reconnect: Option<ReconnectTimings>,
    /// The login's credentials, for a resume or a new login.
    credentials: Option<(u32, UserSig)>,
    /// Which of the user's devices this is, named in every login.
    device: Option<DeviceId>,
    /// How this device encrypts audio end to end, said in every login.
    media_encryption: MediaEncryption,
    /// What members of the current call said about their keys, for the
    /// driver: who, and what.
    member_keys: VecDeque<(UserId, Vec<u8>)>,
    connection: Connection,
    /// The latest token of a resumable session.
    token: Option<SessionToken>,
    /// How long the server keeps the session after a break (its
    /// `Session` message says).
    grace: Option<Duration>,
    /// When the server last said something.
    last_heard: Option<Instant>,
    replay: Replay<ClientMessage>,
    /// What goes out first on a new connection: the resume or login.
    handshake: Option<ClientMessage>,
    /// Numbered messages the server missed, to resend after a resume.
    resend: VecDeque<ClientMessage>,
    /// The count of received messages the server last heard from us.
    acknowledged: u64,
    transmits: VecDeque<ClientMessage>,
    events: VecDeque<CallingEvent>,
    completions: VecDeque<Completion>,
}

impl Default for CallEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl CallEngine {
    /// A logged-out engine.
    pub fn new() -> Self {
        Self {
            me: None,
            voice_volume_interval: DEFAULT_VOICE_VOLUME_INTERVAL,
            timers: TimerTable::new(),
            voice_levels: BTreeMap::new(),
            login: LoginState::LoggedOut,
            state: State::Idle,
            leaving: Vec::new(),
            held: None,
            muted: false,
            next_request: 1,
            requests: HashMap::new(),
            reconnect: None,
            grace: None,
            last_heard: None,
            credentials: None,
            device: None,
            media_encryption: MediaEncryption::None,
            member_keys: VecDeque::new(),
            connection: Connection::Up,
            token: None,
            replay: Replay::new(REPLAY_CAPACITY),
            handshake: None,
            resend: VecDeque::new(),
            acknowledged: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
        }
    }

    /// Starts a login. Completes when the server answers.
    pub fn login(
        &mut self,
        sdk_app_id: u32,
        user_id: &str,
        user_sig: &str,
    ) -> CallingResult<RequestId> {
        if self.login != LoginState::LoggedOut {
            return Err(CallingError::new(ErrorCode::ALREADY_LOGGED_IN));
        }
        let user_id = UserId::new(user_id)?;
        if user_sig.is_empty() || user_sig.len() > MAX_USER_SIG_LEN {
            return Err(CallingError::with_desc(
                ErrorCode::USERSIG_MALFORMED,
                format!("a UserSig is 1 to {MAX_USER_SIG_LEN} bytes"),
            ));
        }
        let request = self.register(RequestKind::Login);
        self.login = LoginState::LoggingIn(request);
        self.me = Some(user_id.clone());
        self.state = State::Idle;
        self.leaving.clear();
        self.held = None;
        self.credentials = Some((sdk_app_id, user_sig.into()));
        self.connection = Connection::Up;
        self.token = None;
        self.replay = Replay::new(REPLAY_CAPACITY);
        self.resend.clear();
        self.handshake = None;
        self.transmits.push_back(ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id,
            user_id,
            user_sig: user_sig.into(),
            device_id: self.device.clone(),
            media_encryption: self.media_encryption,
        });
        Ok(request)
    }

    /// The login under way as its message, to send again on another
    /// connection (a server refused it and redirected the client);
    /// `None` when no login is under way.
    pub fn login_message(&self) -> Option<ClientMessage> {
        let LoginState::LoggingIn(_) = self.login else {
            return None;
        };
        let (sdk_app_id, user_sig) = self.credentials.clone()?;
        Some(ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id,
            user_id: self.me.clone()?,
            user_sig,
            device_id: self.device.clone(),
            media_encryption: self.media_encryption,
        })
    }

    /// Whether a logout is under way: sent, and the server's close not yet
    /// seen.
    pub fn is_logging_out(&self) -> bool {
        self.login == LoginState::LoggingOut
    }

    /// Logs out; a call in progress ends as a hangup.
    pub fn logout(&mut self) -> CallingResult<RequestId> {
        self.require_login()?;
        self.abandon_call();
        let request = self.register(RequestKind::Logout);
        self.login = LoginState::LoggingOut;
        self.timers.cancel(&Timer::Heartbeat);
        self.timers.cancel(&Timer::Liveness);
        if self.connection != Connection::Up {
            // Nobody to tell: the server ends the session when its grace
            // runs out.
            self.requests.remove(&request);
            self.finish_logout();
            self.complete(request, Ok(None));
            return Ok(request);
        }
        self.transmits.push_back(ClientMessage::Logout {
            request_id: request,
        });
        Ok(request)
    }

    /// Names this device in the logins that follow (see
    /// [`ClientMessage::Login`]); `None` names none.
    pub fn set_device(&mut self, device: Option<DeviceId>) {
        self.device = device;
    }

    /// Says in the logins that follow how this device encrypts audio end
    /// to end (see [`ClientMessage::Login`]).
    pub fn set_media_encryption(&mut self, encryption: MediaEncryption) {
        self.media_encryption = encryption;
    }

    /// Tells `to`, a member of the current call, something about our
    /// media keys ([`ClientMessage::MemberKey`]); nothing outside a call.
    pub fn send_member_key(&mut self, to: UserId, payload: Vec<u8>) {
        if matches!(self.state, State::InCall { .. }) {
            self.transmits
                .push_back(ClientMessage::MemberKey { to, payload });
        }
    }

    /// The next word a member of the current call sent about its keys.
    pub fn poll_member_key(&mut self) -> Option<(UserId, Vec<u8>)> {
        self.member_keys.pop_front()
    }

    /// Turns reconnection on (with these timings) or off. Off, the default,
    /// a broken connection ends the session as it always did; on, see the
    /// [module docs](self).
    pub fn set_reconnect(&mut self, timings: Option<ReconnectTimings>) {
        self.reconnect = timings;
    }

    /// Whether the session waits for a new connection: the driver opens
    /// one and reports it with [`CallEngine::handle_connected`].
    pub fn wants_connection(&self) -> bool {
        self.reconnect.is_some()
            && self.login == LoginState::LoggedIn
            && self.connection == Connection::Down
    }

    /// Whether a server's shutdown leaves the session waiting for the next
    /// server (reconnection on, logged in) rather than logged out.
    fn survives_shutdown(&self) -> bool {
        self.reconnect.is_some() && self.login == LoginState::LoggedIn
    }

    /// Whether the session is between [`CallingEvent::Reconnecting`] and
    /// [`CallingEvent::Reconnected`].
    pub fn is_reconnecting(&self) -> bool {
        self.login == LoginState::LoggedIn && self.connection != Connection::Up
    }

    /// A new connection is open (after [`CallEngine::wants_connection`]):
    /// the engine queues the resume of its session, or a new login when the
    /// session cannot be resumed, as the connection's first message.
    pub fn handle_connected(&mut self, now: Instant) {
        if !self.wants_connection() {
            return;
        }
        let (Some((sdk_app_id, user_sig)), Some(user_id)) =
            (self.credentials.clone(), self.me.clone())
        else {
            return;
        };
        let handshake = match self.token {
            Some(token) => {
                self.connection = Connection::Resuming;
                ClientMessage::Resume {
                    protocol_version: PROTOCOL_VERSION,
                    sdk_app_id,
                    user_id,
                    user_sig,
                    token,
                    received: self.replay.received(),
                }
            }
            None => {
                self.connection = Connection::LoggingInAgain;
                ClientMessage::Login {
                    protocol_version: PROTOCOL_VERSION,
                    sdk_app_id,
                    user_id,
                    user_sig,
                    device_id: self.device.clone(),
                    media_encryption: self.media_encryption,
                }
            }
        };
        debug!(connection = ?self.connection, "new connection");
        self.handshake = Some(handshake);
        self.heard_from_server(now);
        self.debug_check();
    }

    /// Invites `user_id`: into a new call when idle, into the current call
    /// (making it multi-party) when in one.
    pub fn call(
        &mut self,
        user_id: &str,
        call_type: CallType,
        options: CallOptions,
    ) -> CallingResult<RequestId> {
        self.require_login()?;
        let user = UserId::new(user_id)?;
        if let Some(me) = &self.me {
            check_invitation(
                me,
                std::slice::from_ref(&user),
                options.timeout_ms,
                options.user_data.as_deref(),
            )
            .map_err(|(code, why)| CallingError::with_desc(code, why))?;
        }
        match &self.state {
            State::Idle => {}
            State::InCall {
                members, invited, ..
            } => {
                if members.contains(&user) || invited.contains(&user) {
                    return Err(CallingError::new(ErrorCode::ALREADY_IN_CALL));
                }
            }
            State::Dialing { .. } => {
                return Err(CallingError::with_desc(
                    ErrorCode::WRONG_CALL_STATE,
                    "the previous call() has not been answered by the server yet",
                ));
            }
            State::Ringing(_) | State::Accepting { .. } => {
                return Err(CallingError::with_desc(
                    ErrorCode::WRONG_CALL_STATE,
                    "an invitation is ringing: accept or reject it first",
                ));
            }
        }
        let request = self.register(RequestKind::Invite {
            invitee: user.clone(),
        });
        if let State::InCall { invited, .. } = &mut self.state {
            invited.insert(user.clone());
        } else {
            self.state = State::Dialing {
                request,
                invitees: vec![user.clone()],
            };
        }
        let call_id = match &self.state {
            State::InCall { call_id, .. } => Some(*call_id),
            _ => None,
        };
        self.transmits.push_back(ClientMessage::Invite {
            request_id: request,
            call_id,
            user_ids: vec![user],
            call_type,
            timeout_ms: options.timeout_ms,
            user_data: options.user_data,
        });
        Ok(request)
    }

    /// Accepts the ringing invitation.
    pub fn accept(&mut self) -> CallingResult<RequestId> {
        self.require_login()?;
        let invitation = self.take_ringing()?;
        let request = self.register(RequestKind::Accept);
        self.transmits.push_back(ClientMessage::Accept {
            request_id: request,
            call_id: invitation.call_id,
        });
        self.state = State::Accepting {
            request,
            invitation,
        };
        Ok(request)
    }

    /// Rejects the ringing invitation.
    pub fn reject(&mut self) -> CallingResult<RequestId> {
        self.require_login()?;
        let invitation = self.take_ringing()?;
        let request = self.register(RequestKind::Reject);
        self.transmits.push_back(ClientMessage::Reject {
            request_id: request,
            call_id: invitation.call_id,
        });
        Ok(request)
    }

    /// Ends your part: cancels while dialing, rejects while ringing, leaves
    /// a call. `onCallEnd` follows when the server confirms.
    pub fn hangup(&mut self) -> CallingResult<RequestId> {
        self.require_login()?;
        if matches!(self.state, State::Ringing(_)) {
            return self.reject();
        }
        if matches!(self.state, State::Idle) {
            return Err(CallingError::new(ErrorCode::NOT_IN_CALL));
        }
        self.abandon_call();
        let request = self.register(RequestKind::Hangup);
        self.transmits.push_back(ClientMessage::Hangup {
            request_id: request,
        });
        if self.is_reconnecting() {
            // The user is done with the call now, not when the server can
            // be told: it ends here at once, and the hangup goes out on
            // the resumed session (a lost session ended the call anyway).
            self.end_abandoned_calls();
            self.requests.insert(request, RequestKind::AnsweredHere);
            self.complete(request, Ok(None));
        }
        Ok(request)
    }

    /// Mutes or unmutes the microphone. Works in any state; members of the
    /// call hear of it as audio availability.
    pub fn set_mic_mute(&mut self, muted: bool) {
        if self.muted == muted {
            return;
        }
        self.muted = muted;
        if self.login == LoginState::LoggedIn {
            self.transmits
                .push_back(ClientMessage::Microphone { muted });
        }
    }

    /// Whether the microphone is muted.
    pub fn is_mic_muted(&self) -> bool {
        self.muted
    }

    /// The users this one invited whose invitations still ring (dialing,
    /// or in a call), sorted.
    pub fn invitees(&self) -> Vec<UserId> {
        match &self.state {
            State::Dialing { invitees, .. } => {
                let mut invitees = invitees.clone();
                invitees.sort();
                invitees
            }
            State::InCall { invited, .. } => invited.iter().cloned().collect(),
            State::Idle | State::Ringing(_) | State::Accepting { .. } => Vec::new(),
        }
    }

    /// The logged-in (or logging-in) user.
    pub fn user_id(&self) -> Option<&UserId> {
        self.me.as_ref()
    }

    /// Where the engine stands.
    pub fn status(&self) -> EngineStatus {
        match (self.login, &self.state) {
            (LoginState::LoggedOut | LoginState::LoggingOut, _) => EngineStatus::LoggedOut,
            (LoginState::LoggingIn(_), _) => EngineStatus::LoggingIn,
            (LoginState::LoggedIn, State::Idle) => EngineStatus::Idle,
            (LoginState::LoggedIn, State::Dialing { .. }) => EngineStatus::Dialing,
            (LoginState::LoggedIn, State::Ringing(invitation)) => {
                EngineStatus::Ringing(invitation.clone())
            }
            (LoginState::LoggedIn, State::Accepting { invitation, .. }) => {
                EngineStatus::Accepting(invitation.call_id)
            }
            (
                LoginState::LoggedIn,
                State::InCall {
                    call_id, members, ..
                },
            ) => EngineStatus::InCall {
                call_id: *call_id,
                members: members.clone(),
            },
        }
    }

    /// The flow id of a member of the current call, for matching audio.
    pub fn flow_of(&self, user: &UserId) -> Option<FlowId> {
        match &self.state {
            State::InCall { flows, .. } => flows.get(user).copied(),
            _ => None,
        }
    }

    /// Sets how often `onUserVoiceVolume` fires while in a call (at least 10 ms).
    pub fn set_voice_volume_interval(&mut self, interval: Duration) {
        self.voice_volume_interval = interval.max(Duration::from_millis(10));
    }

    /// Records a measured voice level (0–100) of the local user or of a
    /// member of the current call; the next report carries the loudest
    /// level seen since the previous one. Levels of anyone else are ignored.
    pub fn record_voice_level(&mut self, user: &UserId, volume: u8) {
        let State::InCall { members, .. } = &self.state else {
            return;
        };
        if self.me.as_ref() != Some(user) && !members.contains(user) {
            return;
        }
        let level = self.voice_levels.entry(user.clone()).or_insert(0);
        *level = (*level).max(volume.min(100));
    }

    /// When [`CallEngine::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Fires the `onUserVoiceVolume` report when it is due: every member who
    /// entered and the local user, each with its loudest level since the last
    /// report (0 if none was measured), and as the total the loudest of the
    /// remote members (the local user's level is not part of it).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((timer, due)) = self.timers.expire(now) {
            match timer {
                Timer::VoiceVolumeReport => self.report_voice_volume(now, due),
                Timer::Heartbeat => {
                    self.send_heartbeat();
                    self.schedule_heartbeat(now);
                }
                Timer::Liveness => {
                    debug!("nothing from the server in time: the connection is dead");
                    self.connection_broke();
                }
                Timer::SessionExpiry => {
                    if self.login == LoginState::LoggedIn && self.connection == Connection::Down {
                        // Not reached within its grace: the server ended
                        // the session (or is gone), so its calls are over;
                        // the next connection logs in afresh.
                        debug!("the session's grace is over without a resume");
                        self.lose_session(EndReason::ConnectionLost);
                    }
                }
            }
        }
        self.debug_check();
    }

    fn report_voice_volume(&mut self, now: Instant, due: Instant) {
        let State::InCall { members, .. } = &self.state else {
            return;
        };
        let mut levels = std::mem::take(&mut self.voice_levels);
        let user_volumes: Vec<UserVolume> = self
            .me
            .iter()
            .chain(members.iter())
            .map(|user| UserVolume {
                user_id: user.clone(),
                volume: levels.remove(user).unwrap_or(0),
            })
            .collect();
        // The original's total is the remote participants' volume: your
        // own voice must not light a "someone is speaking" indicator.
        let total_volume = user_volumes
            .iter()
            .filter(|user| self.me.as_ref() != Some(&user.user_id))
            .map(|user| user.volume)
            .max()
            .unwrap_or(0);
        self.events.push_back(CallingEvent::UserVoiceVolume {
            user_volumes,
            total_volume,
        });
        // Catch up without a burst of reports if the driver was late.
        let mut next = due + self.voice_volume_interval;
        if next <= now {
            next = now + self.voice_volume_interval;
        }
        self.timers.set(Timer::VoiceVolumeReport, next);
    }

    /// Feeds one message from the server, received at `now`.
    pub fn handle_message(&mut self, now: Instant, message: ServerMessage) {
        debug!(?message, "server message");
        if message.is_numbered() && self.login != LoginState::LoggedOut {
            self.replay.record_received();
            if self.token.is_some()
                && self.replay.received() - self.acknowledged >= ACKNOWLEDGE_EVERY
            {
                self.send_heartbeat();
            }
        }
        self.heard_from_server(now);
        match message {
            ServerMessage::LoginResult { code, message, .. } => {
                self.on_login_result(code, message);
            }
            // Where to connect next: the driver's business (it picks the
            // addresses); the refusal or close that follows is the
            // engine's.
            ServerMessage::Redirect { .. } => {}
            message @ (ServerMessage::Session { .. }
            | ServerMessage::Resumed { .. }
            | ServerMessage::HeartbeatAck { .. }
            | ServerMessage::MemberConnection { .. }) => self.on_resume_message(now, message),
            ServerMessage::Ack {
                request_id,
                call_id,
            } => self.on_ack(now, request_id, call_id),
            ServerMessage::Error {
                request_id: Some(request_id),
                code,
                message,
            } => self.on_request_failed(request_id, CallingError::with_desc(code, message)),
            ServerMessage::Error {
                request_id: None,
                code,
                message,
            } => self.on_notice(code, message),
            ServerMessage::Invited {
                call_id,
                sponsor,
                user_ids,
                call_type,
                user_data,
                ..
            } => self.on_invited(Invitation {
                call_id,
                sponsor,
                user_ids,
                call_type,
                user_data,
            }),
            ServerMessage::Rejected { call_id, user_id } => {
                self.on_invitee_answer(call_id, CallingEvent::Reject { user_id });
            }
            ServerMessage::NoResponse { call_id, user_id } => {
                self.on_invitee_answer(call_id, CallingEvent::NoResp { user_id });
            }
            ServerMessage::LineBusy { call_id, user_id } => {
                self.on_invitee_answer(call_id, CallingEvent::LineBusy { user_id });
            }
            ServerMessage::InviteeOffline { call_id, user_id } => {
                self.on_invitee_answer(call_id, CallingEvent::InviteeOffline { user_id });
            }
            ServerMessage::Cancelled { call_id } => {
                self.on_invitation_over(call_id, CallingEvent::CallingCancel);
            }
            ServerMessage::HandledElsewhere { call_id, answer } => {
                if self.on_invitation_over(call_id, CallingEvent::CallingCancel) {
                    let event = CallingEvent::HandledElsewhere { call_id, answer };
                    self.events.push_back(event);
                }
            }
            ServerMessage::InvitationTimedOut { call_id } => {
                self.on_invitation_over(call_id, CallingEvent::CallingTimeOut);
            }
            ServerMessage::UserEntered {
                call_id,
                user_id,
                flow_id,
                audio_available,
            } => self.on_user_entered(call_id, user_id, flow_id, audio_available),
            ServerMessage::UserLeft { call_id, user_id } => self.on_user_left(call_id, user_id),
            ServerMessage::AudioAvailability {
                call_id,
                user_id,
                available,
            } => self.on_audio_availability(call_id, user_id, available),
            ServerMessage::CallEnded { call_id, reason } => self.on_call_ended(call_id, reason),
            ServerMessage::Kicked => {
                let code = ErrorCode::KICKED_OFFLINE;
                self.end_session(code, code.message().to_owned(), EndReason::Kicked);
                self.events.push_back(CallingEvent::KickedOffline);
            }
            ServerMessage::MemberKey {
                call_id,
                from,
                payload,
            } => self.on_member_key(call_id, from, payload),
            ServerMessage::Pong { .. } => {}
        }
        self.debug_check();
    }

    /// A member's word about its keys, kept for the driver; one about a
    /// call we left is of no use.
    fn on_member_key(&mut self, call_id: CallId, from: UserId, payload: Vec<u8>) {
        if matches!(self.state, State::InCall { call_id: ours, .. } if ours == call_id) {
            self.member_keys.push_back((from, payload));
        }
    }

    /// An `Error` without a request: a notice, or the session's end.
    fn on_notice(&mut self, code: ErrorCode, message: String) {
        if code == ErrorCode::SERVER_SHUTDOWN && self.survives_shutdown() {
            // A restart or a rolling upgrade: the server's sessions and
            // calls end, as after losing the server, and the next
            // connection logs in again.
            debug!("the server shuts down: logging in again");
            self.connection_broke();
            self.lose_session(EndReason::ServerShutdown);
        } else if closes_the_session(code) {
            let reason = if code == ErrorCode::SERVER_SHUTDOWN {
                EndReason::ServerShutdown
            } else if code == ErrorCode::LOGGED_OUT_BY_OPERATOR {
                EndReason::LoggedOutByOperator
            } else {
                EndReason::ConnectionLost
            };
            self.end_session(code, message, reason);
        } else {
            self.events
                .push_back(CallingEvent::Error { code, msg: message });
        }
    }

    /// The connection to the server is gone. An expected close after logout
    /// is quiet. With reconnection on, a logged-in session waits for a new
    /// connection (see the [module docs](self)). Anything else is an
    /// `onError`, and a call in progress ends with
    /// [`EndReason::ConnectionLost`].
    pub fn handle_disconnect(&mut self) {
        match self.login {
            LoginState::LoggedOut => {}
            LoginState::LoggingOut => self.finish_logout(),
            LoginState::LoggedIn if self.reconnect.is_some() => self.connection_broke(),
            LoginState::LoggingIn(_) | LoginState::LoggedIn => {
                let code = ErrorCode::CONNECTION_LOST;
                self.end_session(code, code.message().to_owned(), EndReason::ConnectionLost);
            }
        }
        self.debug_check();
    }

    /// The next message to send to the server.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        if let Some(handshake) = self.handshake.take() {
            return Some(handshake);
        }
        if self.connection != Connection::Up {
            // Held until the session is resumed (or lost).
            return None;
        }
        if let Some(message) = self.resend.pop_front() {
            return Some(message);
        }
        let message = self.transmits.pop_front()?;
        let in_session = matches!(self.login, LoginState::LoggedIn | LoginState::LoggingOut);
        if in_session && message.is_numbered() && self.replay.record_sent(&message).is_err() {
            warn!("too many messages unacknowledged: the session can no longer be resumed");
            self.token = None;
        }
        Some(message)
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<CallingEvent> {
        self.events.pop_front()
    }

    /// The next request the server has answered.
    #[must_use]
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// Checks every internal invariant; `Err` says which one broke.
    ///
    /// - a call state other than idle exists only while logged in (or, for
    ///   an invitation that crossed the logout, while logging out);
    /// - the voice report timer is armed exactly while in a call;
    /// - a dial or accept in progress, and a hung-up call waiting for its
    ///   reply, each wait for a request still outstanding;
    /// - an invitation is held only while a reply is awaited;
    /// - in a call, every flow is a member's and nobody is both member and
    ///   invitee;
    /// - a session in progress knows its user.
    pub fn check_invariants(&self) -> Result<(), String> {
        let allowed = match self.state {
            State::Idle => true,
            // An invitation the server sent before it read our logout.
            State::Ringing(_) => {
                matches!(self.login, LoginState::LoggedIn | LoginState::LoggingOut)
            }
            _ => self.login == LoginState::LoggedIn,
        };
        if !allowed {
            return Err(format!("{:?} while {:?}", self.state, self.login));
        }
        let in_call = matches!(self.state, State::InCall { .. });
        let armed = self.timers.deadline(&Timer::VoiceVolumeReport).is_some();
        if in_call != armed {
            return Err(format!("in a call: {in_call}, voice report armed: {armed}"));
        }
        if let State::Dialing { request, .. } | State::Accepting { request, .. } = &self.state
            && !self.requests.contains_key(request)
        {
            return Err(format!("{:?} waits for a forgotten request", self.state));
        }
        for leaving in &self.leaving {
            if let Leaving::AfterReply(request) = leaving
                && !self.requests.contains_key(request)
            {
                return Err(format!("hung up {request:?} waits for a forgotten request"));
            }
        }
        if self.held.is_some() && !self.awaits_any_reply() {
            return Err("an invitation is held with no reply awaited".into());
        }
        if let State::InCall {
            members,
            flows,
            invited,
            ..
        } = &self.state
        {
            if let Some(user) = flows.keys().find(|user| !members.contains(*user)) {
                return Err(format!("{user} has a flow but is no member"));
            }
            if let Some(user) = members.intersection(invited).next() {
                return Err(format!("{user} is both member and invitee"));
            }
        }
        if matches!(self.login, LoginState::LoggingIn(_) | LoginState::LoggedIn)
            && self.me.is_none()
        {
            return Err(format!("{:?} without a user", self.login));
        }
        Ok(())
    }

    /// In debug builds, stops at the first broken invariant (a bug here).
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if let Err(broken) = self.check_invariants() {
            panic!("call engine invariant broken: {broken}");
        }
    }

    fn register(&mut self, kind: RequestKind) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request = self.next_request.wrapping_add(1);
        self.requests.insert(request, kind);
        request
    }

    fn require_login(&self) -> CallingResult<()> {
        match self.login {
            LoginState::LoggedIn => Ok(()),
            LoginState::LoggingIn(_) => Err(CallingError::with_desc(
                ErrorCode::NOT_LOGGED_IN,
                "login has not completed yet",
            )),
            LoginState::LoggedOut | LoginState::LoggingOut => {
                Err(CallingError::new(ErrorCode::NOT_LOGGED_IN))
            }
        }
    }

    /// The ringing invitation, leaving the state idle; an error, and the
    /// state untouched, when nothing rings.
    fn take_ringing(&mut self) -> CallingResult<Invitation> {
        if !matches!(self.state, State::Ringing(_)) {
            return Err(CallingError::new(ErrorCode::NO_INVITATION));
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Ringing(invitation) => Ok(invitation),
            _ => Err(CallingError::new(ErrorCode::NO_INVITATION)),
        }
    }

    /// Leaves the current call locally; the server's `CallEnded` for it will
    /// produce `onCallEnd`.
    fn abandon_call(&mut self) {
        self.timers.cancel(&Timer::VoiceVolumeReport);
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle | State::Ringing(_) => {}
            State::Dialing { request, .. } | State::Accepting { request, .. } => {
                self.leaving.push(Leaving::AfterReply(request));
            }
            State::InCall { call_id, .. } => self.leaving.push(Leaving::Call(call_id)),
        }
    }

    fn complete(&mut self, request: RequestId, result: CallingResult<Option<CallId>>) {
        self.completions.push_back(Completion { request, result });
    }

    /// The logout is over: calls abandoned by it end, nothing is pending.
    fn finish_logout(&mut self) {
        self.end_abandoned_calls();
        self.fail_all_requests(ErrorCode::CONNECTION_LOST);
        self.login = LoginState::LoggedOut;
        self.held = None;
        self.state = State::Idle;
        self.forget_connection();
    }

    /// Forgets everything about the connection and the session's resume.
    fn forget_connection(&mut self) {
        self.connection = Connection::Up;
        self.token = None;
        self.replay = Replay::new(REPLAY_CAPACITY);
        self.handshake = None;
        self.resend.clear();
        self.acknowledged = 0;
        self.timers.cancel(&Timer::Heartbeat);
        self.timers.cancel(&Timer::Liveness);
        self.timers.cancel(&Timer::SessionExpiry);
    }

    /// The connection under a logged-in session broke (reconnection on):
    /// wait for the next one, keeping the session.
    fn connection_broke(&mut self) {
        if self.connection == Connection::Up {
            debug!("connection broke: reconnecting");
            self.events.push_back(CallingEvent::Reconnecting);
        }
        self.connection = Connection::Down;
        self.handshake = None;
        // Recomputed from the book when the server says what it has.
        self.resend.clear();
        self.timers.cancel(&Timer::Heartbeat);
        self.timers.cancel(&Timer::Liveness);
        self.arm_session_expiry();
    }

    /// A resumable session without a connection: when the server has
    /// surely given it up. The server's grace runs from when it noticed
    /// the break, at most one liveness period after ours (both sides use
    /// the same timings) and ours at most one after the last word heard.
    fn arm_session_expiry(&mut self) {
        let (Some(_), Some(grace), Some(heard), Some(timings)) =
            (self.token, self.grace, self.last_heard, self.reconnect)
        else {
            return;
        };
        if self.timers.deadline(&Timer::SessionExpiry).is_none() {
            let expiry = heard + grace + timings.dead_after * 2;
            self.timers.set(Timer::SessionExpiry, expiry);
        }
    }

    /// Something came from the server: the connection lives a while longer.
    /// The deadline holds while the server owes an answer: heartbeats run
    /// (a resumable session), or a resume or login is under way.
    fn heard_from_server(&mut self, now: Instant) {
        let Some(timings) = self.reconnect else {
            return;
        };
        self.last_heard = Some(now);
        let expecting = match self.connection {
            Connection::Up => self.token.is_some(),
            Connection::Resuming | Connection::LoggingInAgain => true,
            Connection::Down => false,
        };
        if self.login == LoginState::LoggedIn && expecting {
            self.timers.set(Timer::Liveness, now + timings.dead_after);
        }
    }

    /// A resumable session acknowledges what it received once an interval.
    fn start_heartbeat(&mut self, now: Instant) {
        self.schedule_heartbeat(now);
        self.heard_from_server(now);
    }

    fn schedule_heartbeat(&mut self, now: Instant) {
        let interval = self
            .reconnect
            .unwrap_or(ReconnectTimings::DEFAULT)
            .heartbeat_interval;
        self.timers.set(Timer::Heartbeat, now + interval);
    }

    fn send_heartbeat(&mut self) {
        self.acknowledged = self.replay.received();
        self.transmits.push_back(ClientMessage::Heartbeat {
            received: self.acknowledged,
        });
    }

    /// The messages of protocol version 2's resume.
    fn on_resume_message(&mut self, now: Instant, message: ServerMessage) {
        match message {
            ServerMessage::Session { token, grace_ms } if self.login == LoginState::LoggedIn => {
                self.token = Some(token);
                self.grace = Some(Duration::from_millis(u64::from(grace_ms)));
                self.start_heartbeat(now);
            }
            ServerMessage::Resumed { token, received } => self.on_resumed(now, token, received),
            ServerMessage::HeartbeatAck { received } => {
                if let Err(error) = self.replay.acknowledge(received) {
                    warn!(%error, "the server acknowledged what it cannot have");
                }
            }
            ServerMessage::MemberConnection {
                call_id,
                user_id,
                connected,
            } => self.on_member_connection(call_id, user_id, connected),
            _ => {}
        }
    }

    fn on_resumed(&mut self, now: Instant, token: SessionToken, received: u64) {
        if self.connection != Connection::Resuming {
            warn!("a resume answer without a resume");
            return;
        }
        if let Err(error) = self.replay.acknowledge(received) {
            warn!(%error, "the resumed session does not match ours: logging in afresh");
            self.lose_session(EndReason::ConnectionLost);
            self.connection_broke();
            return;
        }
        self.token = Some(token);
        self.resend = self.replay.unacknowledged().cloned().collect();
        self.connection = Connection::Up;
        self.timers.cancel(&Timer::SessionExpiry);
        debug!(resent = self.resend.len(), "session resumed");
        self.start_heartbeat(now);
        self.events.push_back(CallingEvent::Reconnected);
    }

    /// The server no longer has the session (restarted, grace over): what
    /// it held is over for the application, once; the login is repeated on
    /// the next connection.
    fn lose_session(&mut self, reason: EndReason) {
        debug!("session lost: ending its calls, logging in again");
        self.end_abandoned_calls();
        match std::mem::replace(&mut self.state, State::Idle) {
            State::InCall { call_id, .. } => {
                self.emit_call_end(call_id, reason);
            }
            State::Ringing(_) | State::Accepting { .. } => {
                self.events.push_back(CallingEvent::CallingCancel);
            }
            State::Idle | State::Dialing { .. } => {}
        }
        self.timers.cancel(&Timer::VoiceVolumeReport);
        self.held = None;
        self.fail_all_requests(ErrorCode::CONNECTION_LOST);
        self.token = None;
        self.timers.cancel(&Timer::SessionExpiry);
        self.replay = Replay::new(REPLAY_CAPACITY);
        self.acknowledged = 0;
        self.resend.clear();
        self.transmits.clear();
    }

    fn on_member_connection(&mut self, call_id: CallId, user_id: UserId, connected: bool) {
        if let State::InCall {
            call_id: current,
            members,
            ..
        } = &self.state
            && *current == call_id
            && members.contains(&user_id)
        {
            self.events.push_back(if connected {
                CallingEvent::UserReconnected { user_id }
            } else {
                CallingEvent::UserReconnecting { user_id }
            });
        }
    }

    fn on_login_result(&mut self, code: ErrorCode, message: String) {
        match self.connection {
            Connection::Resuming => {
                // Refused: the server closes; the next connection logs in.
                debug!(?code, "resume refused");
                self.lose_session(EndReason::ConnectionLost);
                self.connection_broke();
                return;
            }
            Connection::LoggingInAgain => {
                if code == ErrorCode::SERVER_DRAINING
                    || code == ErrorCode::CLUSTER_UNAVAILABLE
                    || code == ErrorCode::SERVER_SHUTDOWN
                {
                    // "Connect again later, or elsewhere": the next
                    // connection (the address may lead to another node of
                    // a cluster) logs in again.
                    debug!(?code, "login refused for now: trying again");
                    self.connection_broke();
                    return;
                }
                if code.is_ok() {
                    self.connection = Connection::Up;
                    if self.muted {
                        self.transmits
                            .push_back(ClientMessage::Microphone { muted: true });
                    }
                    // Heartbeats start with the session's token, next.
                    self.events.push_back(CallingEvent::Reconnected);
                } else {
                    self.end_session(code, message, EndReason::ConnectionLost);
                }
                return;
            }
            Connection::Up | Connection::Down => {}
        }
        let LoginState::LoggingIn(request) = self.login else {
            warn!(?code, "login result without a login");
            return;
        };
        self.requests.remove(&request);
        if code.is_ok() {
            self.login = LoginState::LoggedIn;
            if self.muted {
                self.transmits
                    .push_back(ClientMessage::Microphone { muted: true });
            }
            self.complete(request, Ok(None));
        } else {
            self.login = LoginState::LoggedOut;
            self.me = None;
            self.complete(request, Err(CallingError::with_desc(code, message)));
        }
    }

    fn on_ack(&mut self, now: Instant, request: RequestId, call_id: Option<CallId>) {
        let Some(kind) = self.requests.remove(&request) else {
            warn!(?request, "ack for an unknown request");
            return;
        };
        if kind == RequestKind::AnsweredHere {
            return;
        }
        let awaited = self.is_awaited(request);
        self.resolve_leaving(request, call_id);
        let was_in_call = matches!(self.state, State::InCall { .. });
        match (kind, &mut self.state, call_id) {
            (
                RequestKind::Invite { .. },
                State::Dialing {
                    request: dialing,
                    invitees,
                },
                Some(call_id),
            ) if *dialing == request => {
                let merged = self
                    .held
                    .as_ref()
                    .is_some_and(|held| held.call_id == call_id);
                let invitees = std::mem::take(invitees);
                self.state = State::InCall {
                    call_id,
                    members: BTreeSet::new(),
                    flows: HashMap::new(),
                    // In glare the invitee we dialed is already entering.
                    invited: if merged {
                        BTreeSet::new()
                    } else {
                        invitees.into_iter().collect()
                    },
                };
            }
            (
                RequestKind::Accept,
                State::Accepting {
                    request: accepting,
                    invitation,
                },
                _,
            ) if *accepting == request => {
                let call_id = invitation.call_id;
                self.state = State::InCall {
                    call_id,
                    members: BTreeSet::new(),
                    flows: HashMap::new(),
                    invited: BTreeSet::new(),
                };
            }
            _ => {}
        }
        if awaited {
            self.on_awaited_reply(call_id);
        }
        if !was_in_call && matches!(self.state, State::InCall { .. }) {
            self.voice_levels.clear();
            self.timers
                .set(Timer::VoiceVolumeReport, now + self.voice_volume_interval);
        }
        self.complete(request, Ok(call_id));
    }

    fn on_request_failed(&mut self, request: RequestId, error: CallingError) {
        let Some(kind) = self.requests.remove(&request) else {
            warn!(?request, "error for an unknown request");
            return;
        };
        if kind == RequestKind::AnsweredHere {
            return;
        }
        let awaited = self.is_awaited(request);
        self.resolve_leaving(request, None);
        match (kind, &mut self.state) {
            (
                RequestKind::Invite { .. },
                State::Dialing {
                    request: dialing, ..
                },
            )
            | (
                RequestKind::Accept,
                State::Accepting {
                    request: dialing, ..
                },
            ) if *dialing == request => {
                self.state = State::Idle;
            }
            (RequestKind::Invite { invitee }, State::InCall { invited, .. }) => {
                invited.remove(&invitee);
            }
            _ => {}
        }
        if awaited {
            self.on_awaited_reply(None);
        }
        self.complete(request, Err(error));
    }

    /// Whether `request` is a dial or accept whose reply decides what a
    /// held invitation means: one in progress, or one abandoned by hangup.
    fn is_awaited(&self, request: RequestId) -> bool {
        self.leaving.contains(&Leaving::AfterReply(request))
            || matches!(&self.state,
                State::Dialing { request: awaited, .. } | State::Accepting { request: awaited, .. }
                    if *awaited == request)
    }

    fn awaits_any_reply(&self) -> bool {
        matches!(self.state, State::Dialing { .. } | State::Accepting { .. })
            || self
                .leaving
                .iter()
                .any(|leaving| matches!(leaving, Leaving::AfterReply(_)))
    }

    /// An abandoned request's reply names the call to expect an end for, or
    /// (failed) says there is none.
    fn resolve_leaving(&mut self, request: RequestId, call_id: Option<CallId>) {
        if let Some(index) = self
            .leaving
            .iter()
            .position(|leaving| *leaving == Leaving::AfterReply(request))
        {
            match call_id {
                Some(call_id) => self.leaving[index] = Leaving::Call(call_id),
                None => {
                    self.leaving.remove(index);
                }
            }
        }
    }

    /// An awaited reply is in: a held invitation to the call it names was
    /// merged into it; once no reply is outstanding, any other rings if the
    /// engine is free.
    fn on_awaited_reply(&mut self, replied_call: Option<CallId>) {
        if replied_call.is_some() && self.held.as_ref().map(|held| held.call_id) == replied_call {
            self.held = None;
        }
        if self.awaits_any_reply() {
            return;
        }
        let Some(invitation) = self.held.take() else {
            return;
        };
        if matches!(self.state, State::Idle) {
            self.ring(invitation);
        } else {
            warn!(call_id = %invitation.call_id, "dropping an invitation held while busy");
        }
    }

    /// Ends, for the application, the calls it hung up whose end the server
    /// can no longer confirm.
    fn end_abandoned_calls(&mut self) {
        for leaving in std::mem::take(&mut self.leaving) {
            if let Leaving::Call(call_id) = leaving {
                self.emit_call_end(call_id, EndReason::Hangup);
            }
        }
    }

    fn ring(&mut self, invitation: Invitation) {
        self.events.push_back(CallingEvent::Invited {
            sponsor: invitation.sponsor.clone(),
            is_from_group: !invitation.user_ids.is_empty(),
            user_ids: invitation.user_ids.clone(),
            call_type: invitation.call_type,
        });
        self.state = State::Ringing(invitation);
    }

    fn on_invited(&mut self, invitation: Invitation) {
        if self.awaits_any_reply() && self.held.is_none() {
            self.held = Some(invitation);
        } else if matches!(self.state, State::Idle) {
            self.ring(invitation);
        } else {
            warn!(call_id = %invitation.call_id, "invitation while busy; the server should have answered busy");
        }
    }

    fn on_invitee_answer(&mut self, call_id: CallId, event: CallingEvent) {
        let State::InCall {
            call_id: current,
            invited,
            ..
        } = &mut self.state
        else {
            return;
        };
        if *current != call_id {
            return;
        }
        if let CallingEvent::Reject { user_id }
        | CallingEvent::NoResp { user_id }
        | CallingEvent::LineBusy { user_id } = &event
        {
            invited.remove(user_id);
        }
        self.events.push_back(event);
    }

    /// Whether the invitation rang (and `event` was raised).
    fn on_invitation_over(&mut self, call_id: CallId, event: CallingEvent) -> bool {
        match &mut self.state {
            State::Ringing(invitation) | State::Accepting { invitation, .. }
                if invitation.call_id == call_id =>
            {
                self.state = State::Idle;
                self.events.push_back(event);
                true
            }
            _ => {
                if self
                    .held
                    .as_ref()
                    .is_some_and(|held| held.call_id == call_id)
                {
                    self.held = None;
                }
                false
            }
        }
    }

    fn on_user_entered(
        &mut self,
        call_id: CallId,
        user_id: UserId,
        flow: FlowId,
        audio_available: bool,
    ) {
        let State::InCall {
            call_id: current,
            members,
            flows,
            invited,
        } = &mut self.state
        else {
            return;
        };
        if *current != call_id || !members.insert(user_id.clone()) {
            return;
        }
        invited.remove(&user_id);
        flows.insert(user_id.clone(), flow);
        self.events.push_back(CallingEvent::UserEnter {
            user_id: user_id.clone(),
        });
        self.events.push_back(CallingEvent::UserAudioAvailable {
            user_id,
            available: audio_available,
        });
    }

    fn on_user_left(&mut self, call_id: CallId, user_id: UserId) {
        if let State::InCall {
            call_id: current,
            members,
            flows,
            ..
        } = &mut self.state
            && *current == call_id
            && members.remove(&user_id)
        {
            flows.remove(&user_id);
            self.events.push_back(CallingEvent::UserLeave { user_id });
        }
    }

    fn on_audio_availability(&mut self, call_id: CallId, user_id: UserId, available: bool) {
        if let State::InCall {
            call_id: current,
            members,
            ..
        } = &self.state
            && *current == call_id
            && members.contains(&user_id)
        {
            self.events
                .push_back(CallingEvent::UserAudioAvailable { user_id, available });
        }
    }

    fn on_call_ended(&mut self, call_id: CallId, reason: EndReason) {
        if let Some(index) = self
            .leaving
            .iter()
            .position(|leaving| *leaving == Leaving::Call(call_id))
        {
            self.leaving.remove(index);
            self.emit_call_end(call_id, reason);
            return;
        }
        if let State::InCall {
            call_id: current, ..
        } = self.state
            && current == call_id
        {
            self.state = State::Idle;
            self.timers.cancel(&Timer::VoiceVolumeReport);
            self.emit_call_end(call_id, reason);
        }
    }

    fn emit_call_end(&mut self, call_id: CallId, reason: EndReason) {
        self.events.push_back(CallingEvent::CallEnd);
        self.events
            .push_back(CallingEvent::CallEnded { call_id, reason });
    }

    /// The session is over without a logout: tell the application, end the
    /// call, fail what is outstanding.
    fn end_session(&mut self, code: ErrorCode, msg: String, reason: EndReason) {
        self.events.push_back(CallingEvent::Error { code, msg });
        self.end_abandoned_calls();
        if let State::InCall { call_id, .. } = std::mem::replace(&mut self.state, State::Idle) {
            self.emit_call_end(call_id, reason);
        }
        if let LoginState::LoggingIn(request) = self.login {
            self.requests.remove(&request);
            self.complete(request, Err(CallingError::new(code)));
        }
        self.fail_all_requests(code);
        self.login = LoginState::LoggedOut;
        self.timers.cancel(&Timer::VoiceVolumeReport);
        self.held = None;
        self.me = None;
        self.forget_connection();
    }

    fn fail_all_requests(&mut self, code: ErrorCode) {
        let mut outstanding: Vec<RequestId> = self
            .requests
            .drain()
            .filter(|(_, kind)| *kind != RequestKind::AnsweredHere)
            .map(|(request, _)| request)
            .collect();
        outstanding.sort();
        for request in outstanding {
            self.complete(request, Err(CallingError::new(code)));
        }
    }
}

/// Errors after which the server closes the connection: the session is over
/// when they arrive, and the close that follows is expected.
fn closes_the_session(code: ErrorCode) -> bool {
    code == ErrorCode::SERVER_SHUTDOWN
        || code == ErrorCode::PROTOCOL_ERROR
        || code == ErrorCode::LOGGED_OUT_BY_OPERATOR
}
