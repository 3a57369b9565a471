//! Counters of the block device holding a path (`/proc/diskstats`), so the benchmark can say
//! how many bytes a put really wrote to the disk and how busy the disk was meanwhile.
use std::path::Path;
use std::time::Instant;

/// One reading of a device's counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Bytes written to the device since boot.
    pub written: u64,
    /// Milliseconds the device had at least one request in flight, since boot.
    pub busy_ms: u64,
    at: Instant,
}

/// What a device did between two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delta {
    pub written: u64,
    /// Share of the wall time the device was busy (0 to 1).
    pub busy: f64,
}

impl Sample {
    pub fn since(&self, earlier: &Sample) -> Delta {
        let wall_ms = self.at.duration_since(earlier.at).as_secs_f64() * 1e3;
        let busy_ms = self.busy_ms.saturating_sub(earlier.busy_ms) as f64;
        Delta {
            written: self.written.saturating_sub(earlier.written),
            busy: if wall_ms > 0.0 {
                (busy_ms / wall_ms).min(1.0)
            } else {
                0.0
            },
        }
    }
}

/// The device (major, minor) the filesystem holding `path` lives on.
#[cfg(target_os = "linux")]
fn device_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    Some((libc::major(dev) as u64, libc::minor(dev) as u64))
}

#[cfg(not(target_os = "linux"))]
fn device_of(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// The counters of the device holding `path`, or `None` where there are none to read (not
/// Linux, or a filesystem without a block device of its own, such as tmpfs or overlayfs).
pub fn sample(path: &Path) -> Option<Sample> {
    let (major, minor) = device_of(path)?;
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    let at = Instant::now();
    text.lines().find_map(|l| parse_line(l, major, minor, at))
}

/// One `/proc/diskstats` line, if it is the device's: fields are major, minor, name, then
/// reads, reads merged, sectors read, ms reading, writes, writes merged, sectors written
/// (512 bytes each), ms writing, requests in flight, ms busy, ...
fn parse_line(line: &str, major: u64, minor: u64, at: Instant) -> Option<Sample> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 13 || f[0].parse::<u64>().ok()? != major || f[1].parse::<u64>().ok()? != minor {
        return None;
    }
    Some(Sample {
        written: f[9].parse::<u64>().ok()? * 512,
        busy_ms: f[12].parse().ok()?,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_the_written_sectors_and_busy_time_of_the_right_device() {
        let at = Instant::now();
        let line = " 253       0 vda 1000 20 30000 400 5000 60 8401344 7000 2 2696 30910 0 0 0 0";
        let s = parse_line(line, 253, 0, at).unwrap();
        assert_eq!((s.written, s.busy_ms), (8_401_344 * 512, 2696));
        assert_eq!(parse_line(line, 253, 1, at), None);
        assert_eq!(parse_line("253 0 vda 1 2", 253, 0, at), None);
    }

    #[test]
    fn a_delta_is_bytes_written_and_the_busy_share_of_the_wall_time() {
        let at = Instant::now();
        let a = Sample {
            written: 1000,
            busy_ms: 100,
            at,
        };
        let b = Sample {
            written: 5000,
            busy_ms: 1100,
            at: at + Duration::from_secs(2),
        };
        let d = b.since(&a);
        assert_eq!(d.written, 4000);
        assert!((d.busy - 0.5).abs() < 1e-9, "{}", d.busy);
    }

    #[test]
    fn the_device_of_a_real_directory_is_found_when_it_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let (major, _) = device_of(dir.path()).unwrap();
        // Major 0 is an anonymous device (tmpfs, overlayfs): no counters, and no error.
        if major != 0 {
            assert!(sample(dir.path()).is_some());
        }
    }
}
