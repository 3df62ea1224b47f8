//! OpenCalling's server: UserSig authentication, presence, call routing
//! through `signaling-proto`'s switchboard, and the audio relay.
//!
//! Status: not built yet; it exports nothing until the server exists. Until
//! then, `signaling-proto`'s `Switchboard` is the server's call logic, driven
//! in memory by its simulation.
//!
//! It never decodes or mixes audio: it forwards datagrams.
