//! One protecting instance at a time, from the initramfs to the real system: a stalld that
//! started in the initramfs runs as `@stalld` ([`crate::sys::process::survive_initrd_switch`])
//! and keeps protecting across switch_root; when the real system starts stalld (its unit, its
//! init script), the new instance takes over from the early one instead of failing on its lock.
//!
//! The protocol, with A the early instance (it holds the instance lock) and B the new one:
//! 1. B arms its backend first: from then on it sees every wait (queue_track dates each from
//!    the kernel's enqueue), while A still boosts.
//! 2. B checks that the lock's holder is an early instance (`argv[0]` begins with `@`), pins
//!    it with a pidfd, and sends it [`HANDOVER_SIGNAL`]. Any other running stalld is left
//!    alone and B refuses to start, as before.
//! 3. A (and only an early instance: anywhere else the signal stops the daemon like any other,
//!    restoring everything) restores every task it boosted, leaves RT throttling off with its original value
//!    saved under the run directory (so that B, or `throttlectl on`, puts that value back, and
//!    throttling never comes on between the two), leaves debugfs mounted, closes its journal,
//!    ring and pidfile and releases the lock, all before it tears its backend down (detaching
//!    BPF programs can wait for a kernel grace period that starved tasks hold up: 36 s on a
//!    6.1 guest), and exits.
//! 4. B takes the lock (within [`HANDOVER_TIMEOUT`], else it fails saying so),
//!    then starts as usual: it adopts the saved throttling value and boosts from its first pass.
//!
//! A boost of A's still running at the handover ends early; if its task still waits, B boosts it
//! again once the task has waited the threshold anew, as after any boost.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::sys::run_dir::{InstanceLock, Locked};

/// What A receives from B: "restore your boosts, leave RT throttling off, exit".
pub const HANDOVER_SIGNAL: i32 = libc::SIGUSR2;

/// How long B waits for A to restore its boosts and exit (64 restores take milliseconds).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often B looks whether the lock is free again.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// Whether `pid` is an instance started in the initramfs: its `argv[0]` begins with `@`.
pub fn is_early_instance(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.first() == Some(&b'@'))
}

/// Asks the early instance `pid`, which holds the lock in `dir`, to hand over, and returns the
/// lock once it has.
pub fn take_over(dir: &Path, pid: i32) -> Result<InstanceLock, String> {
    let target = Pid::from_raw(pid).ok_or_else(|| format!("invalid lock holder pid {pid}"))?;
    // The pidfd pins the process: the signal cannot reach another one that reused the pid.
    let pidfd = pidfd_open(target, PidfdFlags::empty())
        .map_err(|e| format!("cannot reach the early stalld (pid {pid}): {e}"))?;
    match InstanceLock::try_take(dir)? {
        Locked::Taken(lock) => return Ok(lock),
        Locked::Held {
            pid: Some(holder), ..
        } if holder == pid && is_early_instance(pid) => {}
        Locked::Held { message, .. } => return Err(message),
    }
    pidfd_send_signal(&pidfd, Signal::USR2)
        .map_err(|e| format!("cannot ask the early stalld (pid {pid}) to hand over: {e}"))?;
    let deadline = Instant::now() + HANDOVER_TIMEOUT;
    loop {
        if let Locked::Taken(lock) = InstanceLock::try_take(dir)? {
            return Ok(lock);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the early stalld (pid {pid}) did not hand over within {} s",
                HANDOVER_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(LOCK_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_at_sign_makes_an_early_instance() {
        assert!(!is_early_instance(std::process::id() as i32));
        assert!(!is_early_instance(i32::MAX));
    }

    #[test]
    fn a_free_lock_is_taken_without_signalling_anyone() {
        let dir = std::env::temp_dir().join(format!("stalld-handover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Our own pid: pinned, never signalled, since the lock is free.
        let lock = take_over(&dir, std::process::id() as i32).unwrap();
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
