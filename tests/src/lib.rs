//! Workspace-level tests of OpenCalling, in one test binary (`tests/all`):
//! repository-wide rules ("tidy") and end-to-end tests against a real
//! server on loopback; and the tools they share with the network
//! benchmark (`examples/bench_network.rs`): a fault proxy and a probe that
//! notes when audio is heard, the speech fixtures and how a recording is
//! judged; a real Redis for the cluster; headless Chromium and the web
//! pages it loads.
//!
//! This crate is never published.

pub mod chromium;
pub mod heard;
pub mod proxy;
pub mod redis;
pub mod server;
pub mod speech;
pub mod web;
