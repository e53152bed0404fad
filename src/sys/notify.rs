//! systemd's service notification protocol (`Type=notify`, `sd_notify(3)`) without libsystemd:
//! one datagram per message to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written `@name`), and `WATCHDOG=1` every `$WATCHDOG_USEC / 2` when systemd asks
//! for keep-alives (`$WATCHDOG_PID`, when set, must be this process).
//! Invariant: the variables are read once at startup and removed from the environment, so
//! that no child inherits them; after startup, sending allocates nothing and never blocks
//! (`MSG_DONTWAIT`): a message that cannot go now is dropped and counted.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;
use rustix::net::{
    sendto, socket_with, AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The keep-alive message.
const WATCHDOG: &[u8] = b"WATCHDOG=1";
/// Sent when shutdown begins: systemd then expects the exit, not a crash.
const STOPPING: &[u8] = b"STOPPING=1\nSTATUS=stopping: restoring boosted tasks";

const NS_PER_US: u64 = 1_000;

/// Where the notifications go, and when the next keep-alive is due.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    address: SocketAddrUnix,
    /// Half of `$WATCHDOG_USEC`, in ns, if systemd wants keep-alives.
    watchdog_interval_ns: Option<u64>,
    /// Monotonic time of the next keep-alive; armed by [`Notifier::ready`].
    next_keepalive_ns: Option<u64>,
    failures: u64,
    last_error: Option<Errno>,
}

/// How systemd started us, as read from the environment.
#[derive(Debug)]
pub enum Supervision {
    /// No `$NOTIFY_SOCKET`: nobody listens.
    None,
    /// Notifications go to the socket.
    Notify(Notifier),
    /// `$NOTIFY_SOCKET` or `$WATCHDOG_USEC` is set but unusable; the reason.
    Unusable(String),
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, removes them from the
    /// environment and opens the socket. Call it at startup, before any thread is spawned (the
    /// environment is not thread-safe) and before forking (`$WATCHDOG_PID` names this process).
    pub fn from_env() -> Supervision {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let Some(socket) = socket else {
            return Supervision::None;
        };
        let setup = parse_address(&socket).and_then(|address| {
            let interval =
                watchdog_interval_ns(usec.as_deref(), pid.as_deref(), std::process::id())?;
            Notifier::open(address, interval).map_err(|e| format!("cannot open a socket: {e}"))
        });
        match setup {
            Ok(notifier) => Supervision::Notify(notifier),
            Err(e) => Supervision::Unusable(format!(
                "NOTIFY_SOCKET={}: {e}; not notifying systemd",
                socket.to_string_lossy()
            )),
        }
    }

    /// A notifier sending to `address`, with keep-alives every `watchdog_interval_ns`.
    pub fn open(
        address: SocketAddrUnix,
        watchdog_interval_ns: Option<u64>,
    ) -> Result<Notifier, Errno> {
        let socket = socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok(Notifier {
            socket,
            address,
            watchdog_interval_ns,
            next_keepalive_ns: None,
            failures: 0,
            last_error: None,
        })
    }

    /// The keep-alive interval systemd asked for (half its timeout), if any.
    pub fn watchdog_interval_ns(&self) -> Option<u64> {
        self.watchdog_interval_ns
    }

    /// `READY=1` with a `STATUS=` line; arms the keep-alives from `now_ns`. Startup only (the
    /// message is built here).
    pub fn ready(&mut self, status: &str, now_ns: u64) -> Result<(), Errno> {
        let message = format!("READY=1\nSTATUS={status}");
        self.next_keepalive_ns = self.watchdog_interval_ns.map(|i| now_ns.saturating_add(i));
        self.send(message.as_bytes())
    }

    /// Sends `WATCHDOG=1` if one is due at `now_ns`; returns when the next one is due (`None`:
    /// no watchdog, or not ready yet). Allocates nothing, never blocks.
    pub fn keepalive(&mut self, now_ns: u64) -> Option<u64> {
        let interval = self.watchdog_interval_ns?;
        let due = self.next_keepalive_ns?;
        if now_ns < due {
            return Some(due);
        }
        // A failure is counted in `send`; the next try comes one interval later all the same.
        let _ = self.send(WATCHDOG);
        let next = now_ns.saturating_add(interval);
        self.next_keepalive_ns = Some(next);
        Some(next)
    }

    /// `STOPPING=1`: shutdown began. Stops the keep-alives.
    pub fn stopping(&mut self) -> Result<(), Errno> {
        self.next_keepalive_ns = None;
        self.send(STOPPING)
    }

    /// Messages that could not be sent so far, and the reason of the last one.
    pub fn failures(&self) -> (u64, Option<Errno>) {
        (self.failures, self.last_error)
    }

    fn send(&mut self, message: &[u8]) -> Result<(), Errno> {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        match sendto(&self.socket, message, flags, &self.address) {
            Ok(n) if n == message.len() => Ok(()),
            Ok(_) => Err(self.failed(Errno::MSGSIZE)),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&mut self, e: Errno) -> Errno {
        self.failures += 1;
        self.last_error = Some(e);
        e
    }
}

/// The socket address `$NOTIFY_SOCKET` names: an absolute path, or `@name` for an abstract
/// socket. Other forms (`vsock:...`) are refused.
pub fn parse_address(value: &OsStr) -> Result<SocketAddrUnix, String> {
    let bytes = value.as_bytes();
    let address = match bytes.first() {
        Some(b'/') => SocketAddrUnix::new(value),
        Some(b'@') if bytes.len() > 1 => SocketAddrUnix::new_abstract_name(&bytes[1..]),
        _ => {
            return Err(
                "not an absolute path nor an abstract socket (@name): only AF_UNIX \
                        sockets are supported"
                    .into(),
            )
        }
    };
    address.map_err(|e| format!("not a usable socket address: {e}"))
}

/// How often to send `WATCHDOG=1` (half of `$WATCHDOG_USEC`, in ns), or `None` when systemd
/// asks for none or asks another process (`$WATCHDOG_PID` is not `own_pid`).
pub fn watchdog_interval_ns(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Result<Option<u64>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let usec = parse_decimal(usec)
        .filter(|&u| u > 0 && u != u64::MAX)
        .ok_or_else(|| format!("WATCHDOG_USEC={}: not a time", usec.to_string_lossy()))?;
    if let Some(pid) = pid {
        let pid = parse_decimal(pid)
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("WATCHDOG_PID={}: not a pid", pid.to_string_lossy()))?;
        if pid != u64::from(own_pid) {
            return Ok(None);
        }
    }
    Ok(Some(usec.saturating_mul(NS_PER_US) / 2))
}

fn parse_decimal(value: &OsStr) -> Option<u64> {
    value.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn addresses() {
        assert!(parse_address(os("/run/systemd/notify")).is_ok());
        assert!(parse_address(os("@/org/freedesktop/systemd1/notify/1")).is_ok());
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(parse_address(os(bad)).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "x".repeat(200));
        assert!(parse_address(os(&long)).is_err());
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
        let half = Some(15_000_000_000);
        assert_eq!(watchdog_interval_ns(None, None, 7), Ok(None));
        assert_eq!(
            watchdog_interval_ns(Some(os("30000000")), None, 7),
            Ok(half)
        );
        assert_eq!(
            watchdog_interval_ns(Some(os("30000000")), Some(os("7")), 7),
            Ok(half)
        );
        assert_eq!(
            watchdog_interval_ns(Some(os("30000000")), Some(os("8")), 7),
            Ok(None)
        );
        for bad in ["", "0", "-1", "1.5", "18446744073709551615", "30s"] {
            assert!(
                watchdog_interval_ns(Some(os(bad)), None, 7).is_err(),
                "{bad:?}"
            );
        }
        assert!(watchdog_interval_ns(Some(os("30000000")), Some(os("x")), 7).is_err());
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("stalld-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let address = parse_address(path.as_os_str()).unwrap();
        let mut notifier = Notifier::open(address, Some(100)).unwrap();
        assert_eq!(notifier.keepalive(0), None, "no keep-alive before READY=1");
        notifier.ready("monitoring CPUs 1", 1_000).unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=monitoring CPUs 1");
        assert_eq!(notifier.keepalive(1_050), Some(1_100));
        assert_eq!(notifier.keepalive(1_120), Some(1_220));
        assert_eq!(receive(&listener), "WATCHDOG=1");
        notifier.stopping().unwrap();
        assert!(receive(&listener).starts_with("STOPPING=1\n"));
        assert_eq!(
            notifier.keepalive(5_000),
            None,
            "no keep-alive after STOPPING=1"
        );
        assert_eq!(notifier.failures(), (0, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("stalld-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let address = parse_address(os(&format!("@{name}"))).unwrap();
        let mut notifier = Notifier::open(address, None).unwrap();
        notifier.ready("up", 0).unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=up");
        assert_eq!(notifier.keepalive(u64::MAX), None, "no watchdog asked for");
    }

    #[test]
    fn a_full_or_missing_socket_counts_failures_without_blocking() {
        let name = format!("stalld-notify-full-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let address = parse_address(os(&format!("@{name}"))).unwrap();
        let mut notifier = Notifier::open(address, Some(1)).unwrap();
        notifier.ready("up", 0).unwrap();
        let start = std::time::Instant::now();
        let mut now = 1;
        while notifier.failures().0 == 0 {
            now = notifier.keepalive(now).unwrap();
        }
        assert_eq!(notifier.failures().1, Some(Errno::AGAIN));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        drop(listener);
        assert_eq!(notifier.stopping(), Err(Errno::CONNREFUSED));
        assert_eq!(notifier.failures().1, Some(Errno::CONNREFUSED));
    }
}
