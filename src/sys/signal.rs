//! Stop signals as readable events instead of handlers: every signal whose default action
//! ends the process and that others send (not a fault of our own such as SIGSEGV), so that any
//! of them stops the daemon as cleanly as SIGTERM does. SIGPIPE stays ignored (the Rust runtime
//! ignores it: a closed stderr must not end the daemon) and SIGXCPU is left to the CPU budget.
//! Invariant: once a [`SignalWaiter`] exists, the stop signals are blocked in the thread that
//! made it (and in threads it spawns later) and only ever arrive through its `signalfd`;
//! waiting and reading never allocate.

use std::os::fd::{FromRawFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::{read, Errno};

/// The signals that ask the daemon to stop cleanly, besides the real-time ones
/// ([`stop_signals`] has them all). SIGXFSZ, blocked, also makes an oversized write fail
/// with `EFBIG` instead of killing the daemon.
pub const STOP_SIGNALS: [i32; 13] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGSTKFLT,
    libc::SIGXFSZ,
];

/// Every signal that stops the daemon cleanly: [`STOP_SIGNALS`] and the real-time signals
/// the C library leaves to applications (`SIGRTMIN..=SIGRTMAX`).
pub fn stop_signals() -> impl Iterator<Item = i32> {
    STOP_SIGNALS
        .into_iter()
        .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
}

/// `sizeof(struct signalfd_siginfo)`: every read returns whole records of this size.
const SIGINFO_SIZE: usize = 128;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Waits for a stop signal or a timeout.
#[derive(Debug)]
pub struct SignalWaiter {
    fd: OwnedFd,
}

impl SignalWaiter {
    /// Blocks the stop signals in the calling thread and opens a nonblocking, close-on-exec
    /// `signalfd` for them. Call it before spawning threads, which inherit the mask; a thread
    /// that does not block them would take a process-directed SIGTERM and die of it.
    ///
    /// Dropping the waiter leaves the signals blocked: a stop signal that arrives during
    /// cleanup stays pending instead of killing the process half way.
    pub fn new() -> Result<SignalWaiter, Errno> {
        let set = stop_signal_set()?;
        block_signals(&set)?;
        let fd = signalfd(&set)?;
        Ok(SignalWaiter { fd })
    }

    /// Waits until a stop signal arrives (`Ok(Some(signal))`) or `timeout_ns` passes
    /// (`Ok(None)`). An interrupted wait (`EINTR`) returns `Ok(None)`: the caller re-evaluates
    /// its deadlines and waits again.
    pub fn wait(&mut self, timeout_ns: u64) -> Result<Option<i32>, Errno> {
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout_ns / NS_PER_SEC).unwrap_or(i64::MAX),
            tv_nsec: (timeout_ns % NS_PER_SEC) as i64,
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => Ok(None),
            Ok(_) => Ok(self.pending()),
            Err(e) => Err(e),
        }
    }

    /// The next pending stop signal, without waiting.
    pub fn pending(&mut self) -> Option<i32> {
        let mut info = [0u8; SIGINFO_SIZE];
        match read(&self.fd, &mut info) {
            Ok(SIGINFO_SIZE) => {
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                Some(signo as i32)
            }
            _ => None,
        }
    }
}

/// The name of a signal for log lines, e.g. `"SIGTERM"`.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}

/// `sigemptyset(&set); sigaddset(&set, s)...`—The set of [`stop_signals`].
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man3/sigsetops.3.html)
fn stop_signal_set() -> Result<libc::sigset_t, Errno> {
    let mut set = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` initializes the whole set it is given; `sigaddset` then only
    // updates the initialized set, with valid signal numbers.
    let ok = unsafe {
        libc::sigemptyset(set.as_mut_ptr()) == 0
            && stop_signals().all(|s| libc::sigaddset(set.as_mut_ptr(), s) == 0)
    };
    if ok {
        // SAFETY: `sigemptyset` succeeded, so the set is initialized.
        Ok(unsafe { set.assume_init() })
    } else {
        Err(Errno::INVAL)
    }
}

/// `pthread_sigmask(SIG_BLOCK, set, NULL)`—Blocks `set` in the calling thread.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man3/pthread_sigmask.3.html)
fn block_signals(set: &libc::sigset_t) -> Result<(), Errno> {
    // SAFETY: `set` is an initialized signal set; the old mask is not requested (NULL).
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, core::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(ret))
    }
}

/// `signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC)`—A new file descriptor that reads the
/// signals of `set` pending for the calling thread or the process.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/signalfd.2.html)
fn signalfd(set: &libc::sigset_t) -> Result<OwnedFd, Errno> {
    // SAFETY: `set` is an initialized signal set; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    // SAFETY: `fd` was just returned by `signalfd`, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// `pthread_kill(pthread_self(), signal)`—Sends `signal` to the calling thread only, so
    /// the other test threads (which do not block it) never see it.
    fn signal_this_thread(signal: i32) {
        // SAFETY: `pthread_self()` is the live calling thread; `signal` is a valid signal.
        let ret = unsafe { libc::pthread_kill(libc::pthread_self(), signal) };
        assert_eq!(ret, 0);
    }

    #[test]
    fn wait_returns_a_raised_stop_signal() {
        std::thread::spawn(|| {
            let mut waiter = SignalWaiter::new().unwrap();
            assert_eq!(waiter.pending(), None);
            signal_this_thread(libc::SIGTERM);
            assert_eq!(waiter.wait(5 * NS_PER_SEC), Ok(Some(libc::SIGTERM)));
            assert_eq!(waiter.pending(), None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn every_stop_signal_is_caught() {
        std::thread::spawn(|| {
            let mut waiter = SignalWaiter::new().unwrap();
            let signals: Vec<i32> = stop_signals().collect();
            assert!(signals.contains(&libc::SIGRTMAX()), "{signals:?}");
            for signal in signals {
                signal_this_thread(signal);
                assert_eq!(
                    waiter.wait(60 * NS_PER_SEC),
                    Ok(Some(signal)),
                    "{}",
                    signal_name(signal)
                );
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pending_reads_without_waiting() {
        std::thread::spawn(|| {
            let mut waiter = SignalWaiter::new().unwrap();
            signal_this_thread(libc::SIGINT);
            assert_eq!(waiter.pending(), Some(libc::SIGINT));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn timeout_returns_none_after_the_timeout() {
        std::thread::spawn(|| {
            let mut waiter = SignalWaiter::new().unwrap();
            let start = Instant::now();
            assert_eq!(waiter.wait(10_000_000), Ok(None));
            assert!(
                start.elapsed() >= Duration::from_millis(10),
                "{:?}",
                start.elapsed()
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGUSR1), "signal");
    }
}
