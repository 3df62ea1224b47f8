#![doc = include_str!("../README.md")]

pub mod call_event;
pub mod conn_hash;
pub mod datagram;
pub mod engine;
pub mod frame;
pub mod limit;
pub mod login;
pub mod message;
pub mod resume;
pub mod rng;
#[cfg(feature = "sim")]
pub mod sim;
pub mod switchboard;
pub mod timer;

pub use call_event::{CallEvent, InvitationOutcome};
pub use conn_hash::CountedKeyMap;
pub use datagram::{
    DatagramError, DatagramKind, LossReport, MediaHeader, PathQuality, PathTransport,
    ReceiverFeatures,
};
pub use engine::{CallEngine, CallOptions, Completion, EngineStatus, Invitation, ReconnectTimings};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN};
pub use limit::TokenBucket;
pub use login::{
    AcceptedLogin, Credentials, LoginRefusal, ResumeClaim, check_login, login_account,
};
pub use message::{
    ClientMessage, FlowId, MAX_MEMBER_KEY_LEN, MAX_REDIRECT_SERVER_LEN, MAX_REDIRECT_SERVERS,
    MediaEncryption, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, RequestId, ServerMessage,
    SessionToken, UserSig, usable_redirects,
};
pub use resume::{Replay, ReplayError};
pub use rng::SplitMix64;
pub use switchboard::{
    CallMember, CallSummary, ConnId, DeviceLogin, Output, RestoredCall, RestoredSession,
    SessionSummary, Switchboard, SwitchboardConfig, SwitchboardCounters,
};
pub use timer::TimerTable;
