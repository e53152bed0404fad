//! RT throttling (`/proc/sys/kernel/sched_rt_runtime_us`; `-1` means off).
//! Invariant: a value the daemon changed is written back once, by [`ThrottlingGuard::restore`]
//! or, failing that, by the guard's `Drop` (retried only while the kernel answers EBUSY).
//! Startup/shutdown only: these calls allocate and may sleep.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sysctl that holds the RT runtime budget per period, in microseconds.
pub const RT_RUNTIME_PATH: &str = "/proc/sys/kernel/sched_rt_runtime_us";

/// The value of `sched_rt_runtime_us` that turns RT throttling off.
pub const THROTTLING_OFF: i64 = -1;

/// A restore the kernel refuses with EBUSY is tried this often, this far apart (1 s in all).
/// The kernel refuses an RT runtime smaller than the SCHED_DEADLINE bandwidth it has booked;
/// Debian's 6.12 refused 950000 for a moment after a daemon that had boosted tasks stopped
/// (tests/vm.rs, about one run in four) and took it a fraction of a second later.
const BUSY_ATTEMPTS: u32 = 50;
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Access to the RT throttling knob at a given path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtThrottling {
    path: PathBuf,
}

impl Default for RtThrottling {
    fn default() -> Self {
        RtThrottling::at(RT_RUNTIME_PATH)
    }
}

impl RtThrottling {
    /// The knob at `path` (tests use a regular file).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        RtThrottling { path: path.into() }
    }

    /// The sysctl file it reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current RT runtime in microseconds, or [`THROTTLING_OFF`].
    pub fn read(&self) -> io::Result<i64> {
        let text = fs::read_to_string(&self.path).map_err(|e| context(&self.path, "read", e))?;
        text.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a number: {:?}", self.path.display(), text.trim()),
            )
        })
    }

    /// Whether RT throttling is off (`-1`).
    pub fn is_off(&self) -> io::Result<bool> {
        Ok(self.read()? == THROTTLING_OFF)
    }

    /// Turns RT throttling off and returns the guard that turns it back on. If it was already
    /// off nothing is written, now or later.
    pub fn disable(&self) -> io::Result<ThrottlingGuard> {
        let saved = self.read()?;
        if saved == THROTTLING_OFF {
            return Ok(ThrottlingGuard {
                path: self.path.clone(),
                saved: None,
            });
        }
        write_value(&self.path, THROTTLING_OFF)?;
        Ok(ThrottlingGuard {
            path: self.path.clone(),
            saved: Some(saved),
        })
    }

    /// The guard that writes `saved` back: for throttling that someone else turned off and
    /// whose value from before was saved (a daemon that died, `throttlectl off`).
    pub fn adopt(&self, saved: i64) -> ThrottlingGuard {
        ThrottlingGuard {
            path: self.path.clone(),
            saved: Some(saved),
        }
    }
}

/// Holds the RT runtime that was in force before [`RtThrottling::disable`].
#[derive(Debug)]
#[must_use = "dropping the guard turns RT throttling back on at once"]
pub struct ThrottlingGuard {
    path: PathBuf,
    /// `None` once restored, or when throttling was already off.
    saved: Option<i64>,
}

impl ThrottlingGuard {
    /// The value that will be written back, if any.
    pub fn saved(&self) -> Option<i64> {
        self.saved
    }

    /// Writes the saved value back, trying again for up to 1 s while the kernel answers EBUSY;
    /// returns how many EBUSY answers came before the write went through. Only the first call
    /// writes, whether or not it succeeds, so a failure is reported once and `Drop` does not
    /// repeat it.
    pub fn restore(&mut self) -> io::Result<u32> {
        let Some(value) = self.saved.take() else {
            return Ok(0);
        };
        let mut busy = 0;
        loop {
            match write_raw(&self.path, value) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && busy + 1 < BUSY_ATTEMPTS => {
                    busy += 1;
                    std::thread::sleep(BUSY_RETRY_DELAY);
                }
                result => {
                    return result
                        .map(|()| busy)
                        .map_err(|e| context(&self.path, "write", e))
                }
            }
        }
    }
}

impl ThrottlingGuard {
    /// Leaves throttling as it is now, for good: the saved value is kept elsewhere.
    pub fn release(&mut self) -> Option<i64> {
        self.saved.take()
    }
}

impl Drop for ThrottlingGuard {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

fn write_value(path: &Path, value: i64) -> io::Result<()> {
    write_raw(path, value).map_err(|e| context(path, "write", e))
}

/// The write with the kernel's errno intact.
fn write_raw(path: &Path, value: i64) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{value}\n").as_bytes()))
}

fn context(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_knob(name: &str, content: &str) -> (PathBuf, RtThrottling) {
        let dir = std::env::temp_dir().join(format!("stalld-throttling-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        (path.clone(), RtThrottling::at(path))
    }

    #[test]
    fn default_path_is_the_sysctl() {
        assert_eq!(RtThrottling::default().path(), Path::new(RT_RUNTIME_PATH));
    }

    #[test]
    fn reads_value_and_off() {
        let (_, knob) = temp_knob("read", "950000\n");
        assert_eq!(knob.read().unwrap(), 950000);
        assert!(!knob.is_off().unwrap());
        let (_, knob) = temp_knob("read-off", "-1\n");
        assert!(knob.is_off().unwrap());
    }

    #[test]
    fn garbage_and_missing_are_errors_naming_the_file() {
        let (path, knob) = temp_knob("garbage", "lots\n");
        let err = knob.read().unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        let err = RtThrottling::at("/nonexistent/knob").read().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/knob"), "{err}");
    }

    #[test]
    fn disable_then_drop_restores() {
        let (path, knob) = temp_knob("drop", "950000\n");
        let guard = knob.disable().unwrap();
        assert_eq!(guard.saved(), Some(950000));
        assert_eq!(fs::read_to_string(&path).unwrap(), "-1\n");
        drop(guard);
        assert_eq!(fs::read_to_string(&path).unwrap(), "950000\n");
    }

    #[test]
    fn explicit_restore_writes_exactly_once() {
        let (path, knob) = temp_knob("once", "800000\n");
        let mut guard = knob.disable().unwrap();
        guard.restore().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "800000\n");
        // Someone else changes it afterwards: neither a second restore nor drop touches it.
        fs::write(&path, "123\n").unwrap();
        guard.restore().unwrap();
        drop(guard);
        assert_eq!(fs::read_to_string(&path).unwrap(), "123\n");
    }

    #[test]
    fn already_off_writes_nothing() {
        let (path, knob) = temp_knob("already-off", "-1\n");
        let guard = knob.disable().unwrap();
        assert_eq!(guard.saved(), None);
        fs::write(&path, "555\n").unwrap();
        drop(guard);
        assert_eq!(fs::read_to_string(&path).unwrap(), "555\n");
    }
}
