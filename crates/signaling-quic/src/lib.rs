//! OpenCalling's QUIC transport (quinn + rustls): one bidirectional stream of
//! length-prefixed signaling frames per connection, and unreliable DATAGRAM
//! frames for audio.
//!
//! Status: not built yet. This crate is the home of the QUIC client and
//! server endpoints; it exports nothing until they exist.
//!
//! It never holds call logic (that is `signaling-proto`'s switchboard and call
//! engine) and never touches audio devices or codecs.
