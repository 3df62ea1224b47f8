//! Workspace-level tests, one binary with a module per concern: the
//! repository's rules, and the SDK against a real server over loopback QUIC.

// A failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]
// Helpers are shared between modules of this one binary.
#![allow(unreachable_pub)]

mod audio;
mod auth;
mod browser;
mod calls;
mod child;
mod cluster;
mod cluster_store;
mod connecting;
mod descriptors;
mod devices;
mod e2ee;
mod echo;
mod fairness;
mod fallback;
mod limits;
mod lossy;
mod map;
mod media;
mod operations;
mod quality;
mod reconnect;
mod resilience;
mod support;
mod tidy;
mod web_sdk;
