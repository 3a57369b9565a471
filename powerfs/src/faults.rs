//! The disk faults a powerfs can be told to make, one at a time, until it is healed:
//! `eio-read` (every read fails with EIO), `eio-write` (every write, fsync and change to the
//! tree fails with EIO; an fsync that fails also drops the file's pending bytes, as Linux
//! marks failed pages clean, so a later fsync succeeds without them) and `enospc` (a full
//! disk: writes that grow a file and new files, directories and links fail with ENOSPC, and
//! statfs shows no free space; overwrites, fsyncs, unlinks and renames still work).
//!
//! What must stay true: a fault takes effect for every call that starts after `set` returns,
//! and `heal` puts the disk back as it was (what a fault refused was never stored).
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    ReadEio,
    WriteEio,
    Full,
}

impl DiskFault {
    pub const NAMES: [(&'static str, DiskFault); 3] = [
        ("eio-read", DiskFault::ReadEio),
        ("eio-write", DiskFault::WriteEio),
        ("enospc", DiskFault::Full),
    ];

    pub fn name(self) -> &'static str {
        DiskFault::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    pub fn parse(s: &str) -> Option<DiskFault> {
        DiskFault::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
    }

    fn code(self) -> u8 {
        match self {
            DiskFault::ReadEio => 1,
            DiskFault::WriteEio => 2,
            DiskFault::Full => 3,
        }
    }
}

/// The fault in force, if any (read on every call, so kept in one atomic).
#[derive(Debug, Default)]
pub struct Faults(AtomicU8);

impl Faults {
    pub fn set(&self, f: Option<DiskFault>) {
        self.0.store(f.map_or(0, DiskFault::code), Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<DiskFault> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(DiskFault::ReadEio),
            2 => Some(DiskFault::WriteEio),
            3 => Some(DiskFault::Full),
            _ => None,
        }
    }

    pub fn is(&self, f: DiskFault) -> bool {
        self.get() == Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_set_named_and_healed() {
        let f = Faults::default();
        assert_eq!(f.get(), None);
        for (name, fault) in DiskFault::NAMES {
            assert_eq!(DiskFault::parse(name), Some(fault));
            assert_eq!(fault.name(), name);
            f.set(Some(fault));
            assert!(f.is(fault));
        }
        f.set(None);
        assert_eq!(f.get(), None);
        assert_eq!(DiskFault::parse("melted"), None);
    }
}
