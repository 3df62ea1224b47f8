//! The public vocabulary of OpenCalling: the words an application uses to talk
//! about calls, shared by the SDK, the wire protocol and the server.
//!
//! It holds [`UserId`] (validated on construction), [`CallType`], [`CallId`],
//! [`EndReason`], the event enum [`CallingEvent`] with one variant per event of
//! the calling API plus our extensions, and the stable numeric [`ErrorCode`]s
//! behind [`CallingError`] and [`CallingResult`].
//!
//! This crate never does I/O, never spawns, never reads a clock and depends on
//! no other crate of ours: it is plain data, so any client or server, sync or
//! async, can share it.

mod call;
mod error;
mod event;
mod user_id;

pub use call::{CallId, CallType, EndReason, InvalidCallType};
pub use error::{CallingError, CallingResult, ErrorCode};
pub use event::{AudioDeviceKind, CallingEvent, UserVolume};
pub use user_id::{InvalidUserId, UserId};
