//! The kernel log sink: one `write` of `<level>stalld: message\n` per line to `/dev/kmsg`.
//! Invariant: the device is open nonblocking; a write that fails (or that the kernel's
//! `printk_devkmsg` rate limit drops) loses that line and nothing else.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{open, Mode, OFlags};
use rustix::io::{write, Errno};

use super::{record, Level};

/// The kernel log device.
pub const KMSG_PATH: &str = "/dev/kmsg";

/// An open kernel log.
#[derive(Debug)]
pub struct Kmsg {
    fd: OwnedFd,
}

impl Kmsg {
    /// Opens `path` write-only, nonblocking, close-on-exec.
    pub fn open(path: &Path) -> Result<Kmsg, Errno> {
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = open(path, flags, Mode::empty())?;
        Ok(Kmsg { fd })
    }

    /// Writes one record at the kernel log level matching `level`; errors drop the line.
    pub fn write(&self, level: Level, line: &str) {
        let record = record(format_args!("<{}>stalld: ", level.severity()), line, "\n");
        let _ = write(&self.fd, record.as_bytes());
    }
}
