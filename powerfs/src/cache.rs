//! The writes a machine has not yet put on its disk: for each file, the bytes written since its
//! last fsync, kept in memory only, and what a read of the file sees through them.
//!
//! What must stay true: a read returns what the last writes put there (the pending bytes over
//! the disk's); `sync` puts a file's pending bytes on the disk and syncs it before it forgets
//! them; `cut` forgets every pending byte, as a power loss does; nothing here touches a file
//! that `sync` or `write_back` was not asked for.
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// One file's unsynced writes, in the order they were made, and its size as the writer sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    extents: Vec<(u64, Vec<u8>)>,
    size: u64,
}

impl Dirty {
    fn bytes(&self) -> u64 {
        self.extents.iter().map(|(_, d)| d.len() as u64).sum()
    }
}

/// Pending writes of every file, by inode number.
#[derive(Debug, Default)]
pub struct Cache {
    files: HashMap<u64, Dirty>,
    bytes: u64,
}

impl Cache {
    /// Total pending bytes and files with some.
    pub fn pending(&self) -> (u64, usize) {
        (self.bytes, self.files.len())
    }

    /// The size a writer sees, if `ino` has pending writes (else the disk's is right).
    pub fn size(&self, ino: u64) -> Option<u64> {
        self.files.get(&ino).map(|d| d.size)
    }

    /// Keep `data` written at `offset` of `ino` (whose size on the disk is `disk_size`).
    pub fn write(&mut self, ino: u64, disk_size: u64, offset: u64, data: &[u8]) {
        let d = self.files.entry(ino).or_insert_with(|| Dirty {
            extents: Vec::new(),
            size: disk_size,
        });
        match d.extents.last_mut() {
            // A sequential writer grows one extent instead of making many.
            Some((o, v)) if *o + v.len() as u64 == offset => v.extend_from_slice(data),
            _ => d.extents.push((offset, data.to_vec())),
        }
        d.size = d.size.max(offset + data.len() as u64);
        self.bytes += data.len() as u64;
    }

    /// The file was truncated (on the disk, at once) to `size`: pending bytes past it go.
    pub fn truncate(&mut self, ino: u64, size: u64) {
        let Some(d) = self.files.get_mut(&ino) else {
            return;
        };
        let before = d.bytes();
        d.extents.retain_mut(|(o, v)| {
            if *o >= size {
                return false;
            }
            v.truncate((size - *o).min(v.len() as u64) as usize);
            true
        });
        d.size = size;
        self.bytes -= before - d.bytes();
    }

    /// Lay `ino`'s pending bytes over `buf`, which holds the disk's bytes from `offset`
    /// (zeros past the disk's end), and cut it to the size the writer sees.
    pub fn overlay(&self, ino: u64, offset: u64, buf: &mut Vec<u8>, want: usize) {
        let Some(d) = self.files.get(&ino) else {
            return;
        };
        let end = (offset + want as u64).min(d.size);
        buf.resize(end.saturating_sub(offset) as usize, 0);
        for (o, v) in &d.extents {
            let (s, e) = ((*o).max(offset), (*o + v.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&v[(s - *o) as usize..(e - *o) as usize]);
            }
        }
    }

    /// Put `ino`'s pending bytes on the disk through `file` (without a sync) and forget them.
    pub fn write_back(&mut self, ino: u64, file: &File) -> io::Result<()> {
        let Some(d) = self.files.get(&ino) else {
            return Ok(());
        };
        for (o, v) in &d.extents {
            file.write_all_at(v, *o)?;
        }
        if file.metadata()?.len() < d.size {
            file.set_len(d.size)?;
        }
        let d = self.files.remove(&ino).unwrap_or_default();
        self.bytes -= d.bytes();
        Ok(())
    }

    /// The file with the most pending bytes (to write back when too much is pending).
    pub fn largest(&self) -> Option<u64> {
        self.files
            .iter()
            .max_by_key(|(_, d)| d.bytes())
            .map(|(i, _)| *i)
    }

    /// Forget the pending bytes of `ino` (its file is gone).
    pub fn forget(&mut self, ino: u64) {
        if let Some(d) = self.files.remove(&ino) {
            self.bytes -= d.bytes();
        }
    }

    /// What of `ino`'s pending bytes a torn power cut leaves on the disk: the writes in the
    /// order they were made, up to half of the bytes, the last one cut at a 512-byte sector
    /// boundary of the file (a sector is written whole or not at all).
    pub fn torn_prefix(&self, ino: u64) -> Vec<(u64, Vec<u8>)> {
        let Some(d) = self.files.get(&ino) else {
            return Vec::new();
        };
        let mut budget = d.bytes() / 2;
        let mut out = Vec::new();
        for (o, v) in &d.extents {
            if budget == 0 {
                break;
            }
            let take = (v.len() as u64).min(budget);
            // Whole sectors only: the end is rounded down to a sector of the file.
            let end = (*o + take) / 512 * 512;
            if end > *o {
                out.push((*o, v[..(end - *o) as usize].to_vec()));
            }
            budget -= take;
        }
        out
    }

    /// Every file with pending bytes.
    pub fn dirty_files(&self) -> Vec<u64> {
        self.files.keys().copied().collect()
    }

    /// A power loss: every pending byte is gone. Returns (bytes, files) dropped.
    pub fn cut(&mut self) -> (u64, usize) {
        let dropped = self.pending();
        self.files.clear();
        self.bytes = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &Cache, disk: &[u8], offset: u64, want: usize) -> Vec<u8> {
        let mut buf: Vec<u8> = disk
            .iter()
            .skip(offset as usize)
            .take(want)
            .copied()
            .collect();
        c.overlay(1, offset, &mut buf, want);
        buf
    }

    #[test]
    fn reads_see_pending_writes_over_the_disk() {
        let mut c = Cache::default();
        let disk = b"0123456789";
        c.write(1, 10, 2, b"ab");
        c.write(1, 10, 8, b"WXYZ");
        assert_eq!(c.size(1), Some(12));
        assert_eq!(read(&c, disk, 0, 100), b"01ab4567WXYZ");
        assert_eq!(read(&c, disk, 3, 6), b"b4567W");
        assert_eq!(c.pending(), (6, 1));
        // A later write wins over an earlier one at the same place.
        c.write(1, 10, 2, b"c");
        assert_eq!(read(&c, disk, 0, 4), b"01cb");
    }

    #[test]
    fn a_write_past_the_end_reads_zeros_in_the_gap() {
        let mut c = Cache::default();
        c.write(1, 2, 5, b"x");
        assert_eq!(read(&c, b"ab", 0, 10), b"ab\0\0\0x");
    }

    #[test]
    fn truncate_drops_pending_bytes_past_the_new_end() {
        let mut c = Cache::default();
        c.write(1, 0, 0, b"abcdef");
        c.write(1, 0, 10, b"gh");
        c.truncate(1, 4);
        assert_eq!(c.size(1), Some(4));
        assert_eq!(c.pending(), (4, 1));
        assert_eq!(read(&c, b"", 0, 100), b"abcd");
    }

    #[test]
    fn a_cut_forgets_everything_and_write_back_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"disk").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut c = Cache::default();
        c.write(1, 4, 4, b"+pending");
        c.write(2, 0, 0, b"other");
        c.write_back(1, &f).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"disk+pending");
        assert_eq!(c.pending(), (5, 1));
        assert_eq!(c.cut(), (5, 1));
        assert_eq!(c.pending(), (0, 0));
        assert_eq!(c.size(2), None);
    }

    #[test]
    fn a_torn_cut_keeps_whole_sectors_of_the_first_half_in_write_order() {
        let mut c = Cache::default();
        c.write(1, 0, 0, &[1u8; 1000]);
        c.write(1, 0, 4096, &[2u8; 3000]);
        // 4000 pending: the first 2000 bytes in write order are all of the first write
        // (cut to 512) and 1000 of the second (cut to the sector boundary at 4608).
        let t = c.torn_prefix(1);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].0, t[0].1.len()), (0, 512));
        assert_eq!((t[1].0, t[1].1.len()), (4096, 512));
        assert!(c.torn_prefix(2).is_empty());
        assert_eq!(c.dirty_files(), vec![1]);
    }
}
