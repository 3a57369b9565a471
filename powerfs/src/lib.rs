//! powerfs: a FUSE file system that loses what a power cut loses. It passes every call through
//! to a backing directory, except written file data, which it keeps in memory until the file
//! is fsynced; `powerfs cut` then throws away every byte no fsync covered, as a machine that
//! loses power does (like LazyFS). chaos puts each node's data directory on one, so that a
//! write acknowledged before it was synced shows up as a lost write. It can also fail like a
//! dying disk (EIO on reads or writes, a full disk) until it is healed.
pub mod cache;
pub mod control;
pub mod faults;
pub mod fs;
