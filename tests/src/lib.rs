//! Shared helpers for cluster tests (see tests/tests/).
