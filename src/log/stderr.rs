//! The stderr sink (`-v`): `stalld: message\n`, one `write` per line.
//! Invariant: writes never block. Stderr is reopened through `/proc/self/fd/2` with
//! `O_NONBLOCK`, a file description of our own, so the flag does not leak to the terminal or
//! pipe that others (the shell) share; where that fails (a socket, no `/proc`), the flag is set
//! on fd 2 itself. A line that cannot be written now (a full pipe, a terminal stopped with
//! Ctrl-S, a reader gone) is dropped and counted, and the count is written once writing works
//! again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{fcntl_getfl, fcntl_setfl, open, Mode, OFlags};

use super::{record, Record};

/// Where lines go, and how many were lost since the last one that got through.
#[derive(Debug)]
pub struct Stderr {
    /// `None`: fd 2 itself, made nonblocking.
    own: Option<OwnedFd>,
    dropped: u64,
}

impl Stderr {
    /// Sets up nonblocking writes to stderr. Startup only.
    pub fn open() -> Stderr {
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let own = open("/proc/self/fd/2", flags, Mode::empty()).ok();
        if own.is_none() {
            let fd = rustix::stdio::stderr();
            if let Ok(old) = fcntl_getfl(fd) {
                let _ = fcntl_setfl(fd, old | OFlags::NONBLOCK);
            }
        }
        Stderr { own, dropped: 0 }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.own {
            Some(fd) => fd.as_fd(),
            None => rustix::stdio::stderr(),
        }
    }

    /// Lines dropped since the last one written.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes `stalld: line`; counts it if it cannot go now. After a loss, the first line
    /// that goes through is followed by the number of lines lost.
    pub fn write(&mut self, line: &str) {
        if !self.write_record(&record(format_args!("stalld: "), line, "\n")) {
            return;
        }
        if self.dropped > 0 {
            let mut notice = Record::new();
            let _ = core::fmt::write(
                &mut notice,
                format_args!("stalld: {} lines dropped (stderr was full)\n", self.dropped),
            );
            self.dropped = 0;
            self.write_record(&notice);
        }
    }

    /// One `write`; true if it went out.
    fn write_record(&mut self, record: &Record) -> bool {
        match rustix::io::write(self.fd(), record.as_bytes()) {
            Ok(_) => true,
            Err(_) => {
                self.dropped += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::FromRawFd;

    /// A pipe, both ends nonblocking.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn full_pipe_drops_counts_and_reports() {
        let (reader, writer) = pipe();
        let mut sink = Stderr {
            own: Some(writer),
            dropped: 0,
        };
        let start = std::time::Instant::now();
        let mut i = 0;
        while sink.dropped() < 100 {
            sink.write(&format!("line {i}"));
            i += 1;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let mut buf = vec![0u8; 1 << 16];
        while rustix::io::read(&reader, &mut buf).is_ok_and(|n| n > 0) {}
        sink.write("back");
        let n = rustix::io::read(&reader, &mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "stalld: back\nstalld: 100 lines dropped (stderr was full)\n"
        );
        assert_eq!(sink.dropped(), 0);
    }
}
