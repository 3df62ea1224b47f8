//! Workspace-level tests of OpenCalling; the tests live in `tests/`.
