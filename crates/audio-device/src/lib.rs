//! OpenCalling's audio capture and playback behind small traits: real devices
//! (cpal), WAV files, synthetic sources and a null sink.
//!
//! Status: not built yet; it exports nothing until the backends exist.
//!
//! It never touches Opus or the network, and its device callbacks never
//! allocate, lock, log or block.
