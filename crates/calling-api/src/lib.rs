#![doc = include_str!("../README.md")]

mod call;
mod device_id;
mod error;
mod event;
mod user_id;

pub use call::{CallId, CallType, EndReason, InvalidCallType};
pub use device_id::{DeviceId, InvalidDeviceId};
pub use error::{CallingError, CallingResult, ErrorCode};
pub use event::{
    AudioDeviceKind, CallingEvent, ElsewhereAnswer, KeyProblem, MemberQuality, NetworkQuality,
    UserVolume,
};
pub use user_id::{InvalidUserId, UserId};
