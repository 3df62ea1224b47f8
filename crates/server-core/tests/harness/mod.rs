//! A server core on a virtual clock with in-memory clients: what the hub
//! would carry out is recorded per connection instead.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, ErrorCode, UserId};
use calling_cluster::NodeOutput;
use server_core::{
    Board, Counted, Login, LoginAnswer, OutboxLimits, RoutedMember, ServerCore, ServerOutput,
};
use signaling_proto::{
    CallEvent, ClientMessage, ConnId, DeviceLogin, PROTOCOL_VERSION, RequestId, ResumeClaim,
    ServerMessage, SessionToken,
};

/// Small outboxes, so that congestion and stuck clients come quickly.
pub const LIMITS: OutboxLimits = OutboxLimits::for_outbox(32);

/// Tokens 1, 2, 3… in every byte: distinct and never all zeros.
pub fn counting_tokens() -> server_core::TokenSource {
    let mut next = 0_u8;
    Box::new(move || {
        next = next.wrapping_add(1).max(1);
        SessionToken([next; 16])
    })
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// One connection as its writer would see it.
#[derive(Debug, Default)]
pub struct Client {
    pub inbox: Vec<ServerMessage>,
    pub closed: Option<ErrorCode>,
    /// Messages the writer has not taken yet (for congestion).
    pub unread: usize,
    /// Numbered messages received so far (what a heartbeat acknowledges).
    pub received: u64,
}

/// A core and everything it asked to be carried out.
#[derive(Debug)]
pub struct Server<B: Board> {
    pub core: ServerCore<B>,
    pub clients: BTreeMap<u64, Client>,
    /// Each call's routes as last published.
    pub routes: HashMap<CallId, Vec<RoutedMember>>,
    pub events: Vec<(CallEvent, Option<Duration>)>,
    pub counts: Vec<Counted>,
    pub sessions_lost: u32,
    next_trunk: u64,
}

impl<B: Board + std::fmt::Debug> Server<B> {
    pub fn new(board: B, now: Instant, first_link: u64) -> Self {
        Self {
            core: ServerCore::new(board, LIMITS, counting_tokens(), now),
            clients: BTreeMap::new(),
            routes: HashMap::new(),
            events: Vec::new(),
            counts: Vec::new(),
            sessions_lost: 0,
            next_trunk: first_link,
        }
    }

    /// A new connection logs in (or resumes); its link and the answer.
    pub fn connect(
        &mut self,
        now: Instant,
        name: &str,
        resume: Option<ResumeClaim>,
    ) -> (ConnId, LoginAnswer) {
        self.connect_speaking(now, name, resume, PROTOCOL_VERSION)
    }

    /// [`Self::connect`] with a client of `protocol_version`.
    pub fn connect_speaking(
        &mut self,
        now: Instant,
        name: &str,
        resume: Option<ResumeClaim>,
        protocol_version: u16,
    ) -> (ConnId, LoginAnswer) {
        let link = ConnId(self.next_trunk);
        self.next_trunk += 1;
        self.clients.insert(link.0, Client::default());
        let answer = self.core.handle_login(
            now,
            Login {
                link,
                user: user(name),
                protocol_version,
                device: DeviceLogin::ONE_DEVICE,
                resume,
            },
        );
        if let LoginAnswer::Refused { code, .. } = &answer {
            self.clients.get_mut(&link.0).unwrap().closed = Some(*code);
        }
        (link, answer)
    }

    pub fn send(&mut self, now: Instant, link: ConnId, message: ClientMessage) {
        self.core.handle_message(now, link, message);
    }

    /// Carries out the core's outputs; what is for the cluster's IO is
    /// returned.
    pub fn drain(&mut self, now: Instant) -> Vec<NodeOutput> {
        let mut io = Vec::new();
        loop {
            while let Some(output) = self.core.poll_output() {
                match output {
                    ServerOutput::Send { conn, message } => {
                        let client = self.clients.get_mut(&conn.0).expect("a known link");
                        assert!(client.closed.is_none(), "{message:?} after the close");
                        client.received += u64::from(message.is_numbered());
                        client.inbox.push(message);
                        client.unread += 1;
                    }
                    ServerOutput::Close { conn, code } => {
                        let client = self.clients.get_mut(&conn.0).expect("a known link");
                        assert!(client.closed.is_none(), "closed twice");
                        client.closed = Some(code);
                    }
                    ServerOutput::Membership { call_id, members } => {
                        self.routes.insert(call_id, members);
                    }
                    ServerOutput::Event { event, duration } => self.events.push((event, duration)),
                    ServerOutput::AllSessionsLost(_) => {
                        self.sessions_lost += 1;
                        self.routes.clear();
                    }
                    ServerOutput::Cluster(output) => io.push(output),
                    ServerOutput::Count(counted) => self.counts.push(counted),
                }
            }
            let clients = &self.clients;
            self.core
                .handle_congestion(now, |link| clients.get(&link.0).map_or(0, |c| c.unread));
            if !self.core.has_output() {
                return io;
            }
        }
    }

    /// The writer of `link` takes everything queued.
    pub fn read_all(&mut self, link: ConnId) -> Vec<ServerMessage> {
        let client = self.clients.get_mut(&link.0).unwrap();
        client.unread = 0;
        std::mem::take(&mut client.inbox)
    }

    pub fn inbox(&self, link: ConnId) -> &[ServerMessage] {
        &self.clients[&link.0].inbox
    }

    /// Where the members of `call_id` were last routed.
    pub fn routed(&self, call_id: CallId) -> Vec<server_core::MemberAt> {
        self.routes[&call_id]
            .iter()
            .map(|member| member.at)
            .collect()
    }

    /// Numbered messages `link` received so far.
    pub fn received(&self, link: ConnId) -> u64 {
        self.clients[&link.0].received
    }

    pub fn closed(&self, link: ConnId) -> Option<ErrorCode> {
        self.clients[&link.0].closed
    }
}

pub fn invite(request: u32, invitee: &str) -> ClientMessage {
    ClientMessage::Invite {
        request_id: RequestId(request),
        call_id: None,
        user_ids: vec![user(invitee)],
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: None,
    }
}

pub fn accept(request: u32, call_id: CallId) -> ClientMessage {
    ClientMessage::Accept {
        request_id: RequestId(request),
        call_id,
    }
}

/// The call id an invite's ack named.
pub fn acked_call(inbox: &[ServerMessage]) -> CallId {
    inbox
        .iter()
        .find_map(|message| match message {
            ServerMessage::Ack {
                call_id: Some(call_id),
                ..
            } => Some(*call_id),
            _ => None,
        })
        .expect("an acked invite")
}

/// The session token a login was told.
pub fn token_in(inbox: &[ServerMessage]) -> SessionToken {
    inbox
        .iter()
        .find_map(|message| match message {
            ServerMessage::Session { token, .. } | ServerMessage::Resumed { token, .. } => {
                Some(*token)
            }
            _ => None,
        })
        .expect("a session token")
}

/// Numbered messages in `inbox` (what a client counts as received).
pub fn numbered(inbox: &[ServerMessage]) -> u64 {
    inbox.iter().filter(|message| message.is_numbered()).count() as u64
}
