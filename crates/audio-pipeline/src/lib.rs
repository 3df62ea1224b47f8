//! OpenCalling's audio processing: resampling, Opus encode and decode, the
//! adaptive jitter buffer, the mixer and level meters.
//!
//! Status: not built yet; it exports nothing until the pipeline exists.
//!
//! It never touches the network or an audio device, and its jitter buffer
//! takes time as an argument instead of reading a clock.
