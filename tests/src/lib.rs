//! Workspace-level tests of OpenCalling, in one test binary (`tests/all`):
//! repository-wide rules ("tidy") now, end-to-end tests against a real
//! server on loopback as the server and SDK land.
//!
//! This crate exports nothing and is never published.
