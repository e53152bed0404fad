//! Scheduling policy of a thread: `sched_getattr`/`sched_setattr`, CPU affinity, memory locking.
//! Invariant: the wrappers never allocate, so the monitor loop may boost and restore freely;
//! an attribute saved with [`sched_getattr`] and passed through [`restorable`] puts back exactly
//! what was read.

use core::mem::size_of;

use rustix::io::Errno;
use rustix::mm::{mlockall, MlockAllFlags};
use rustix::process::Pid;
use rustix::thread::{sched_setaffinity, CpuSet};

use crate::task::Tid;

/// `SCHED_OTHER` (`SCHED_NORMAL`): the default time-sharing policy.
pub const SCHED_OTHER: u32 = 0;
/// `SCHED_FIFO`: fixed-priority real-time, no time slice.
pub const SCHED_FIFO: u32 = 1;
/// `SCHED_RR`: fixed-priority real-time with a time slice.
pub const SCHED_RR: u32 = 2;
/// `SCHED_BATCH`: time-sharing, treated as CPU-bound.
pub const SCHED_BATCH: u32 = 3;
/// `SCHED_IDLE`: runs only when nothing else wants the CPU.
pub const SCHED_IDLE: u32 = 5;
/// `SCHED_DEADLINE`: constant bandwidth server (runtime every period, within deadline).
pub const SCHED_DEADLINE: u32 = 6;
/// `SCHED_EXT`: a BPF scheduler (sched_ext, 6.12+).
pub const SCHED_EXT: u32 = 7;

/// Children created by `fork` start with the default policy.
pub const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
/// DEADLINE: the task may reclaim bandwidth left unused by others (GRUB).
pub const SCHED_FLAG_RECLAIM: u64 = 0x02;
/// DEADLINE: the task gets `SIGXCPU` when it overruns its runtime.
pub const SCHED_FLAG_DL_OVERRUN: u64 = 0x04;
/// `sched_setattr` keeps the current policy (changes parameters only).
pub const SCHED_FLAG_KEEP_POLICY: u64 = 0x08;
/// `sched_setattr` keeps the current parameters (changes util clamps only).
pub const SCHED_FLAG_KEEP_PARAMS: u64 = 0x10;
/// `sched_util_min` is meant: set the minimum utilization clamp.
pub const SCHED_FLAG_UTIL_CLAMP_MIN: u64 = 0x20;
/// `sched_util_max` is meant: set the maximum utilization clamp.
pub const SCHED_FLAG_UTIL_CLAMP_MAX: u64 = 0x40;

/// The flags that describe a task's state (as opposed to instructions to `sched_setattr`).
const RESTORABLE_FLAGS: u64 = SCHED_FLAG_RESET_ON_FORK | SCHED_FLAG_RECLAIM | SCHED_FLAG_DL_OVERRUN;

/// `SCHED_ATTR_SIZE_VER1`: the layout with utilization clamps (Linux 5.3+).
#[allow(clippy::cast_possible_truncation, reason = "56 bytes")]
const SCHED_ATTR_SIZE: u32 = size_of::<SchedAttr>() as u32;

/// `struct sched_attr` (`include/uapi/linux/sched/types.h`), `SCHED_ATTR_SIZE_VER1`.
///
/// Times are in nanoseconds. For fair policies the kernel reports the task's time slice
/// (EEVDF request size, 6.6+) in `sched_runtime`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SchedAttr {
    /// `size_of::<SchedAttr>()`: the layout version.
    pub size: u32,
    /// `SCHED_OTHER`, `SCHED_FIFO`, `SCHED_DEADLINE`, ...
    pub sched_policy: u32,
    /// `SCHED_FLAG_*`.
    pub sched_flags: u64,
    /// Nice value of fair policies.
    pub sched_nice: i32,
    /// Static priority of SCHED_FIFO/RR (1..99).
    pub sched_priority: u32,
    /// SCHED_DEADLINE runtime, ns.
    pub sched_runtime: u64,
    /// SCHED_DEADLINE relative deadline, ns.
    pub sched_deadline: u64,
    /// SCHED_DEADLINE period, ns.
    pub sched_period: u64,
    /// Utilization clamp minimum.
    pub sched_util_min: u32,
    /// Utilization clamp maximum.
    pub sched_util_max: u32,
}

const _: () = assert!(size_of::<SchedAttr>() == 56);

impl SchedAttr {
    /// `SCHED_DEADLINE` with `runtime_ns` of CPU every `period_ns`, due `deadline_ns` after
    /// each activation. The kernel requires `runtime_ns <= deadline_ns <= period_ns` and
    /// `runtime_ns >= 1024`.
    pub fn deadline(runtime_ns: u64, deadline_ns: u64, period_ns: u64) -> Self {
        SchedAttr {
            size: SCHED_ATTR_SIZE,
            sched_policy: SCHED_DEADLINE,
            sched_runtime: runtime_ns,
            sched_deadline: deadline_ns,
            sched_period: period_ns,
            ..SchedAttr::default()
        }
    }

    /// `SCHED_FIFO` at `priority` (1..=99).
    pub fn fifo(priority: u32) -> Self {
        SchedAttr {
            size: SCHED_ATTR_SIZE,
            sched_policy: SCHED_FIFO,
            sched_priority: priority,
            ..SchedAttr::default()
        }
    }
}

/// The attribute that puts back exactly what `saved` (from [`sched_getattr`]) describes:
/// policy (any, including `SCHED_EXT`), RT priority, nice, DEADLINE parameters, the fair time
/// slice, and the `RESET_ON_FORK`, `RECLAIM` and `DL_OVERRUN` flags.
///
/// Utilization clamps are left alone: `sched_getattr` always reports the effective clamp
/// values, but handing them back with `SCHED_FLAG_UTIL_CLAMP_*` would turn a kernel default
/// (e.g. the RT default `util_min`) into a user-pinned request, and fails with `EOPNOTSUPP`
/// on kernels without `CONFIG_UCLAMP_TASK`. Without those flags the kernel keeps user-set
/// clamps and recomputes the defaulted ones for the restored class, which is what they were.
/// `KEEP_POLICY`/`KEEP_PARAMS` are instructions, not state, and are never passed back.
///
/// For fair policies the slice in `sched_runtime` is passed back so that a slice an
/// application chose survives the boost. The kernel does not report whether the slice was
/// chosen or is the default (`base_slice_ns`), so a default slice comes back as an explicit one
/// of the same length: identical scheduling, but it no longer follows later changes of
/// `base_slice_ns`.
pub fn restorable(saved: &SchedAttr) -> SchedAttr {
    SchedAttr {
        size: SCHED_ATTR_SIZE,
        sched_flags: saved.sched_flags & RESTORABLE_FLAGS,
        sched_util_min: 0,
        sched_util_max: 0,
        ..*saved
    }
}

/// The name of a scheduling policy as used in log lines, e.g. `"SCHED_FIFO"`.
pub fn policy_name(policy: u32) -> &'static str {
    match policy {
        SCHED_OTHER => "SCHED_OTHER",
        SCHED_FIFO => "SCHED_FIFO",
        SCHED_RR => "SCHED_RR",
        SCHED_BATCH => "SCHED_BATCH",
        SCHED_IDLE => "SCHED_IDLE",
        SCHED_DEADLINE => "SCHED_DEADLINE",
        SCHED_EXT => "SCHED_EXT",
        _ => "SCHED_UNKNOWN",
    }
}

/// The `errno` of the syscall that just failed.
fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO)
}

/// `sched_getattr(tid, &attr, sizeof attr, 0)`—Reads the scheduling policy and attributes of
/// thread `tid` (0: the calling thread).
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/sched_getattr.2.html)
pub fn sched_getattr(tid: Tid) -> Result<SchedAttr, Errno> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a valid, writable `struct sched_attr` of `SCHED_ATTR_SIZE` bytes that
    // outlives the call; the kernel writes at most that many bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid as libc::c_int,
            &mut attr as *mut SchedAttr,
            SCHED_ATTR_SIZE as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if ret == 0 {
        Ok(attr)
    } else {
        Err(last_errno())
    }
}

/// `sched_setattr(tid, attr, 0)`—Sets the scheduling policy and attributes of thread `tid`
/// (0: the calling thread). `attr.size` is ignored: the full `SCHED_ATTR_SIZE_VER1` layout is
/// always passed. `ESRCH` means the thread has exited.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/sched_setattr.2.html)
pub fn sched_setattr(tid: Tid, attr: &SchedAttr) -> Result<(), Errno> {
    let attr = SchedAttr {
        size: SCHED_ATTR_SIZE,
        ..*attr
    };
    // SAFETY: `attr` is a valid `struct sched_attr` of `attr.size` bytes that outlives the
    // call; the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid as libc::c_int,
            &attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// `sched_setaffinity(tid, cpus)`—Pins thread `tid` (0: the calling thread) to `cpus`.
/// A CPU number beyond `CPU_SETSIZE` gives `EINVAL`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/sched_setaffinity.2.html)
pub fn set_affinity(tid: Tid, cpus: impl Iterator<Item = u32>) -> Result<(), Errno> {
    let mut set = CpuSet::new();
    for cpu in cpus {
        let cpu = cpu as usize;
        if cpu >= CpuSet::MAX_CPU {
            return Err(Errno::INVAL);
        }
        set.set(cpu);
    }
    sched_setaffinity(Pid::from_raw(tid), &set)
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)`—Keeps every page of the process in RAM, so that the
/// daemon never waits for a page fault while the machine is starving.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/mlockall.2.html)
pub fn lock_memory() -> Result<(), Errno> {
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread so that policy changes never touch the test harness.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("test thread panicked")
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn rt_throttling_on() -> bool {
        std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us")
            .map(|v| v.trim() != "-1")
            .unwrap_or(true)
    }

    #[test]
    fn layout_is_ver1() {
        assert_eq!(size_of::<SchedAttr>(), 56);
        assert_eq!(SchedAttr::fifo(10).size, 56);
        assert_eq!(SchedAttr::deadline(1, 2, 3).size, 56);
    }

    #[test]
    fn policy_names() {
        assert_eq!(policy_name(SCHED_FIFO), "SCHED_FIFO");
        assert_eq!(policy_name(SCHED_DEADLINE), "SCHED_DEADLINE");
        assert_eq!(policy_name(SCHED_EXT), "SCHED_EXT");
        assert_eq!(policy_name(4), "SCHED_UNKNOWN");
    }

    #[test]
    fn restorable_keeps_state_drops_instructions_and_clamps() {
        let saved = SchedAttr {
            size: 48,
            sched_policy: SCHED_DEADLINE,
            sched_flags: SCHED_FLAG_RESET_ON_FORK
                | SCHED_FLAG_RECLAIM
                | SCHED_FLAG_DL_OVERRUN
                | SCHED_FLAG_KEEP_POLICY
                | SCHED_FLAG_KEEP_PARAMS
                | SCHED_FLAG_UTIL_CLAMP_MIN
                | SCHED_FLAG_UTIL_CLAMP_MAX,
            sched_nice: 0,
            sched_priority: 0,
            sched_runtime: 10,
            sched_deadline: 20,
            sched_period: 30,
            sched_util_min: 1024,
            sched_util_max: 1024,
        };
        let attr = restorable(&saved);
        assert_eq!(attr.size, 56);
        assert_eq!(
            attr.sched_flags,
            SCHED_FLAG_RESET_ON_FORK | SCHED_FLAG_RECLAIM | SCHED_FLAG_DL_OVERRUN
        );
        assert_eq!(
            (
                attr.sched_policy,
                attr.sched_runtime,
                attr.sched_deadline,
                attr.sched_period
            ),
            (SCHED_DEADLINE, 10, 20, 30)
        );
        assert_eq!((attr.sched_util_min, attr.sched_util_max), (0, 0));
    }

    #[test]
    fn getattr_of_self() {
        let attr = on_thread(|| sched_getattr(0)).unwrap();
        assert_eq!(attr.size, 56);
        assert!(
            policy_name(attr.sched_policy) != "SCHED_UNKNOWN",
            "{attr:?}"
        );
    }

    #[test]
    fn dead_thread_is_esrch() {
        let tid = on_thread(|| rustix::thread::gettid().as_raw_nonzero().get());
        // `join` returns when the thread clears its tid word, a little before the kernel
        // releases the task.
        for _ in 0..1000 {
            if sched_getattr(tid).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(sched_getattr(tid), Err(Errno::SRCH));
        assert_eq!(sched_setattr(tid, &SchedAttr::fifo(10)), Err(Errno::SRCH));
        assert_eq!(sched_getattr(i32::MAX), Err(Errno::SRCH));
    }

    #[test]
    fn fifo_roundtrip_restores_exactly() {
        if !is_root() {
            eprintln!("skipped: setting SCHED_FIFO needs root");
            return;
        }
        let (saved, boosted, restored) = on_thread(|| {
            let saved = sched_getattr(0).unwrap();
            sched_setattr(0, &SchedAttr::fifo(10)).unwrap();
            let boosted = sched_getattr(0).unwrap();
            sched_setattr(0, &restorable(&saved)).unwrap();
            (saved, boosted, sched_getattr(0).unwrap())
        });
        assert_eq!(
            (boosted.sched_policy, boosted.sched_priority),
            (SCHED_FIFO, 10)
        );
        assert_eq!(restored, saved);
    }

    #[test]
    fn nice_survives_boost() {
        if !is_root() {
            eprintln!("skipped: setting SCHED_FIFO needs root");
            return;
        }
        let (saved, restored) = on_thread(|| {
            let mut niced = sched_getattr(0).unwrap();
            niced.sched_policy = SCHED_OTHER;
            niced.sched_nice = 5;
            sched_setattr(0, &restorable(&niced)).unwrap();
            let saved = sched_getattr(0).unwrap();
            sched_setattr(0, &SchedAttr::fifo(20)).unwrap();
            sched_setattr(0, &restorable(&saved)).unwrap();
            (saved, sched_getattr(0).unwrap())
        });
        assert_eq!(saved.sched_nice, 5);
        assert_eq!(restored, saved);
    }

    /// The end-to-end tests' machine lock (`tests/common`, `MACHINE_LOCK_PATH`): while it is
    /// held, no daemon of theirs holds SCHED_DEADLINE bandwidth, which can make the kernel
    /// refuse a reservation (EBUSY).
    fn machine_lock() -> std::fs::File {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/stalld-rs-e2e-cpu1.lock")
            .unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
        file
    }

    #[test]
    fn deadline_roundtrip_restores_exactly() {
        if !is_root() {
            eprintln!("skipped: setting SCHED_DEADLINE needs root");
            return;
        }
        let _machine = machine_lock();
        let result = on_thread(|| {
            let saved = sched_getattr(0)?;
            sched_setattr(
                0,
                &SchedAttr::deadline(10_000_000, 100_000_000, 100_000_000),
            )?;
            let boosted = sched_getattr(0)?;
            sched_setattr(0, &restorable(&saved))?;
            Ok::<_, Errno>((saved, boosted, sched_getattr(0)?))
        });
        match result {
            Ok((saved, boosted, restored)) => {
                assert_eq!(boosted.sched_policy, SCHED_DEADLINE);
                assert_eq!(
                    (
                        boosted.sched_runtime,
                        boosted.sched_deadline,
                        boosted.sched_period
                    ),
                    (10_000_000, 100_000_000, 100_000_000)
                );
                assert_eq!(restored, saved);
            }
            // With RT throttling on, the kernel admits a DEADLINE task only if its affinity
            // covers its whole root domain; the harness may run with a narrower mask.
            Err(Errno::PERM) if rt_throttling_on() => {
                eprintln!("skipped: DEADLINE refused (EPERM): affinity narrower than root domain")
            }
            Err(e) => panic!("DEADLINE roundtrip failed: {e}"),
        }
    }

    #[test]
    fn affinity_rejects_impossible_cpu() {
        let cpus = [u32::try_from(CpuSet::MAX_CPU).unwrap()];
        assert_eq!(set_affinity(0, cpus.into_iter()), Err(Errno::INVAL));
    }

    #[test]
    fn affinity_to_cpu0_on_a_thread() {
        on_thread(|| {
            set_affinity(0, [0].into_iter()).unwrap();
            let set = rustix::thread::sched_getaffinity(None).unwrap();
            assert!(set.is_set(0));
            assert_eq!(set.count(), 1);
        });
    }
}
