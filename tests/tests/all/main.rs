//! Workspace-level tests, one binary with a module per concern.

mod tidy;
