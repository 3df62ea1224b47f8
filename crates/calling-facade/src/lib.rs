//! OpenCalling's drop-in SDK: the calling API (login, call, accept, reject,
//! hangup, mic mute, hands-free and their events) over the protocol, transport
//! and audio crates.
//!
//! Status: not built yet; it exports nothing until the SDK exists. Until then,
//! `signaling-proto`'s `CallEngine` is the client side of the call logic.
//!
//! It never holds call rules of its own: those live in `signaling-proto`.
