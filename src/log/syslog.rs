//! The syslog sink: `<priority>stalld: message` datagrams to the local syslog socket.
//! Invariant: every send is `MSG_DONTWAIT`, so a dead, absent or stalled syslog daemon costs
//! the line, never a wait; when the daemon (re)appears, the socket reconnects by itself.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::io::Errno;
use rustix::net::{
    connect, send, socket_with, AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::{record, Level};

/// The local syslog socket.
pub const SYSLOG_PATH: &str = "/dev/log";

/// `LOG_DAEMON`: the facility part of the priority.
const LOG_DAEMON: u8 = 3 << 3;

/// A datagram socket aimed at the syslog daemon.
#[derive(Debug)]
pub struct Syslog {
    fd: OwnedFd,
    addr: SocketAddrUnix,
}

impl Syslog {
    /// A nonblocking, close-on-exec datagram socket connected to `path` if it is there now.
    /// `None` only if no socket can be made for `path` (too long, no sockets at all); a
    /// missing syslog daemon is not an error: the connection is retried when lines are sent.
    pub fn open(path: &Path) -> Option<Syslog> {
        let addr = SocketAddrUnix::new(path).ok()?;
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = socket_with(AddressFamily::UNIX, SocketType::DGRAM, flags, None).ok()?;
        let _ = connect(&fd, &addr);
        Some(Syslog { fd, addr })
    }

    /// Sends one datagram with priority `LOG_DAEMON | severity`; drops it if the receiver
    /// is full or absent. A socket whose peer went away (syslog restarted) or that never
    /// connected is reconnected once and the line sent again.
    pub fn send(&self, level: Level, line: &str) {
        let priority = LOG_DAEMON | level.severity();
        let record = record(format_args!("<{priority}>stalld: "), line, "");
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let sent = send(&self.fd, record.as_bytes(), flags);
        if let Err(Errno::CONNREFUSED | Errno::NOTCONN | Errno::DESTADDRREQ) = sent {
            if connect(&self.fd, &self.addr).is_ok() {
                let _ = send(&self.fd, record.as_bytes(), flags);
            }
        }
    }
}
