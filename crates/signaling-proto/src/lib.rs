//! OpenCalling's wire protocol and call logic, both ends, as sans-IO state
//! machines.
//!
//! - [`message`]: every [`ClientMessage`] and [`ServerMessage`];
//! - [`login`]: the server's login check ([`check_login`]), the same for the
//!   real server and the simulation;
//! - [`frame`]: length-prefixed postcard frames with a hard size limit;
//! - [`datagram`]: the header of audio datagrams;
//! - [`switchboard`]: the server's call logic ([`Switchboard`]);
//! - [`engine`]: the client's call logic ([`CallEngine`]);
//! - [`limit`]: a token bucket ([`TokenBucket`]) for rate limits;
//! - [`timer`]: the deadlines of both machines, keyed by each machine's
//!   own timer enum ([`TimerTable`]);
//! - [`sim`]: an in-memory network of one switchboard and many engines on a
//!   virtual clock, for tests and demos.
//!
//! This crate never does I/O, never spawns a task or thread, and never reads
//! a clock: time comes in as `now`, and each machine says when it next needs
//! to be woken. Bad input from the network (truncated, oversized or garbage
//! frames, messages out of place) is a typed error or an error reply, never a
//! panic. `docs/protocol.md` describes the wire format byte for byte.
//!
//! # Panics are bugs
//!
//! Nothing a peer sends can make this crate panic: bad input is an error
//! value or an error reply. Both state machines state their invariants
//! (`check_invariants`) and check them after every `handle_*` in debug
//! builds, panicking at the first broken one: a broken invariant is a bug
//! in this crate, found by the tests, never a reaction to input. Release
//! builds skip the check; a code path that finds the state inconsistent
//! logs an `error!` and leaves the state as it is rather than guess.
//!
//! # Driving a switchboard
//!
//! The server glue is one loop: feed inputs, drain outputs, sleep until the
//! next deadline.
//!
//! ```no_run
//! use std::time::Instant;
//! use signaling_proto::{ConnId, Output, Switchboard, SwitchboardConfig};
//! # fn next_input() -> Option<(ConnId, signaling_proto::ClientMessage)> { None }
//! # fn send(_: ConnId, _: signaling_proto::ServerMessage) {}
//! # fn close(_: ConnId) {}
//!
//! let mut switchboard = Switchboard::new(SwitchboardConfig::default());
//! loop {
//!     // 1. inputs: messages (after the glue authenticated the login), disconnects, time
//!     if let Some((conn, message)) = next_input() {
//!         switchboard.handle_message(Instant::now(), conn, message);
//!     }
//!     switchboard.handle_timeout(Instant::now());
//!     // 2. outputs, in order
//!     while let Some(output) = switchboard.poll_output() {
//!         match output {
//!             Output::Send { conn, message } => send(conn, message),
//!             Output::Close { conn, .. } => close(conn),
//!             // Who may hear whom: the audio relay's routes.
//!             Output::Membership { .. } => {}
//!             // For a user on another node, if there is a cluster.
//!             Output::Unrouted { .. } => {}
//!             Output::Event(_) => {}
//!         }
//!     }
//!     // 3. sleep until input arrives or switchboard.poll_timeout() passes
//! #   break;
//! }
//! ```

pub mod call_event;
pub mod datagram;
pub mod engine;
pub mod frame;
pub mod limit;
pub mod login;
pub mod message;
pub mod resume;
pub mod sim;
pub mod switchboard;
pub mod timer;

pub use call_event::{CallEvent, InvitationOutcome};
pub use datagram::{DatagramError, DatagramKind, LossReport, MediaHeader};
pub use engine::{CallEngine, CallOptions, Completion, EngineStatus, Invitation, ReconnectTimings};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN};
pub use limit::TokenBucket;
pub use login::{AcceptedLogin, Credentials, LoginRefusal, ResumeClaim, check_login};
pub use message::{
    ClientMessage, FlowId, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, RequestId, ServerMessage,
    SessionToken, UserSig,
};
pub use resume::{Replay, ReplayError};
pub use switchboard::{
    CallMember, CallSummary, ConnId, Output, SessionSummary, Switchboard, SwitchboardConfig,
    SwitchboardCounters,
};
pub use timer::TimerTable;
