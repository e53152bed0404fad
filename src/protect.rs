//! Self-protection: where the daemon runs and the CPU budget the kernel holds it to, so that
//! neither a saturated housekeeping CPU can delay it nor a bug in it can take more than its share.
//!
//! - CPUs: `-a LIST`, else the online CPUs it does not monitor and that are not isolated, else
//!   (every one is monitored) the online CPUs that are not isolated, else all online CPUs.
//! - Budget (`--self_sched`): SCHED_DEADLINE, `--self_runtime` every `--self_period` (`-R PCT`
//!   sets the runtime to PCT% of the period), with `SCHED_FLAG_DL_OVERRUN` so that every
//!   exhausted runtime arrives as a SIGXCPU that is counted and logged (the kernel throttles the
//!   daemon either way). Where the kernel refuses DEADLINE (and `-R` was not given), SCHED_FIFO
//!   [`FIFO_PRIORITY`] under `RLIMIT_RTTIME`: at the soft limit the SIGXCPU handler demotes the
//!   daemon to SCHED_OTHER at once, the loop logs it and promotes it back after
//!   [`DEMOTION_NS`]; the hard limit (SIGKILL) is the kernel's backstop.
//! - `mlockall` and `oom_score_adj` -1000.
//!
//! Invariant: the SIGXCPU handler only touches atomics and makes one raw syscall; after
//! [`protect_self`], [`SelfGuard::tick`] and [`SelfGuard::next_wake_ns`] never allocate.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::process::{setrlimit, Resource, Rlimit};

use crate::config::{Config, SelfSched};
use crate::cpuset::CpuSet;
use crate::log::Log;
use crate::sys::process;
use crate::sys::sched::{self, SchedAttr, SCHED_FLAG_DL_OVERRUN, SCHED_OTHER};

/// Default `--self_runtime`, ns. The worst sample of all CPUs (the bulk of a pass; `cargo
/// bench --bench figures`, 500 samples each) measured here: procfs 0.92 ms (132 threads),
/// sched_debug 0.42 ms, queue_track 5 us; a procfs pass takes about 0.2 s in a 4-vCPU TCG
/// guest. 20 ms every 100 ms holds the host's worst pass 20 times over in one period, spreads
/// the guest's slowest pass over about 1 s (tests/vm.rs procfs still passes), and leaves 80% of
/// the housekeeping CPU to everything else whatever the daemon does.
pub const DEFAULT_SELF_RUNTIME_NS: u64 = 20_000_000;
/// Default `--self_period`, ns (also the period `-R PCT` applies to, as before).
pub const DEFAULT_SELF_PERIOD_NS: u64 = 100_000_000;
/// SCHED_FIFO priority where DEADLINE is refused: upstream's unit runs stalld at FIFO 10.
pub const FIFO_PRIORITY: u32 = 10;
/// `RLIMIT_RTTIME` soft limit, us: CPU time at [`FIFO_PRIORITY`] without blocking before the
/// daemon demotes itself. 2.5 times the slowest pass measured anywhere (0.2 s, TCG guest).
pub const RTTIME_SOFT_US: u64 = 500_000;
/// `RLIMIT_RTTIME` hard limit, us: the kernel SIGKILLs the daemon here if the demotion failed.
pub const RTTIME_HARD_US: u64 = 2_000_000;
/// How long a demoted daemon stays SCHED_OTHER before it takes SCHED_FIFO again.
pub const DEMOTION_NS: u64 = 10_000_000_000;
/// Budget overruns are logged at most this often, with their count.
const OVERRUN_LOG_INTERVAL_NS: u64 = 10_000_000_000;

const ISOLATED_CPUS_PATH: &str = "/sys/devices/system/cpu/isolated";
const ONLINE_CPUS_PATH: &str = "/sys/devices/system/cpu/online";
const OOM_SCORE_ADJ_PATH: &str = "/proc/self/oom_score_adj";
/// `oom_score_adj` that exempts the process from the OOM killer.
const OOM_SCORE_ADJ_NEVER: &str = "-1000";

/// SIGXCPUs received: DEADLINE overruns or `RLIMIT_RTTIME` soft limits.
static XCPU_SIGNALS: AtomicU64 = AtomicU64::new(0);
/// Set while the daemon runs SCHED_FIFO: the SIGXCPU handler demotes it.
static DEMOTE_ON_XCPU: AtomicBool = AtomicBool::new(false);
/// Set by the handler once it demoted the daemon; cleared when the loop promotes it back.
static DEMOTED: AtomicBool = AtomicBool::new(false);

/// Where the daemon runs, and why there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Housekeeping {
    /// The CPUs.
    pub cpus: CpuSet,
    /// How they were chosen, for the log line.
    pub reason: &'static str,
}

/// The housekeeping CPUs: `affinity` (`-a`), else `online` minus `monitored` minus
/// `isolated`, else `online` minus `isolated`, else `online`. Pure.
pub fn housekeeping_cpus(
    affinity: Option<CpuSet>,
    monitored: &CpuSet,
    online: &CpuSet,
    isolated: &CpuSet,
) -> Housekeeping {
    if let Some(cpus) = affinity {
        return Housekeeping { cpus, reason: "-a" };
    }
    let not_isolated = online.difference(isolated);
    let free = not_isolated.difference(monitored);
    if !free.is_empty() {
        return Housekeeping {
            cpus: free,
            reason: "not monitored",
        };
    }
    if !not_isolated.is_empty() {
        return Housekeeping {
            cpus: not_isolated,
            reason: "every non-isolated CPU is monitored: no housekeeping CPU, use -a to choose",
        };
    }
    Housekeeping {
        cpus: *online,
        reason: "every online CPU is isolated and monitored: use -a to choose",
    }
}

/// A cpu-list file of sysfs; a missing or empty one is the empty set.
fn read_cpu_list(path: &str, nr_cpus: u32) -> CpuSet {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| CpuSet::parse(text.trim(), nr_cpus).ok())
        .unwrap_or_default()
}

/// How the daemon is scheduled after [`protect_self`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Deadline { runtime_ns: u64, period_ns: u64 },
    Fifo,
    Other,
}

/// The daemon's protection, kept by the loop: reports budget overruns and promotes a demoted
/// daemon back to SCHED_FIFO.
#[derive(Debug)]
pub struct SelfGuard {
    mode: Mode,
    /// SIGXCPUs already logged.
    xcpu_logged: u64,
    last_overrun_log_ns: u64,
    /// When the handler's demotion was noticed; `None` while not demoted.
    demoted_at_ns: Option<u64>,
    /// Fault injection (tests only): spin this long in the first tick.
    #[cfg(feature = "fault_spin")]
    fault_spin_ns: u64,
}

/// Pins the daemon to its housekeeping CPUs, puts it under its kernel-enforced budget, locks
/// its memory and exempts it from the OOM killer; logs one line saying where and how it runs.
/// Fails only for what the user asked explicitly (`-a`, `-R`) and the kernel refused.
pub fn protect_self(config: &Config, logger: &mut impl Log) -> Result<SelfGuard, String> {
    let nr_cpus = process::configured_cpus();
    let online = match read_cpu_list(ONLINE_CPUS_PATH, nr_cpus) {
        cpus if cpus.is_empty() => CpuSet::all(nr_cpus),
        cpus => cpus,
    };
    let isolated = read_cpu_list(ISOLATED_CPUS_PATH, nr_cpus);
    let housekeeping =
        housekeeping_cpus(config.affinity, &config.monitored_cpus, &online, &isolated);
    if let Err(e) = sched::set_affinity(0, housekeeping.cpus.iter()) {
        if config.affinity.is_some() {
            return Err(format!(
                "cannot pin stalld to CPUs {} (-a): {e}",
                housekeeping.cpus
            ));
        }
        logger.warn(format_args!(
            "cannot pin stalld to CPUs {}: {e}",
            housekeeping.cpus
        ));
    }
    let (mode, refused) = apply_budget(config)?;
    let memory = match sched::lock_memory() {
        Ok(()) => "memory locked",
        Err(_) => "memory NOT locked (mlockall failed)",
    };
    // Lowering it needs CAP_SYS_RESOURCE, which a container or a unit may withhold.
    let oom = match std::fs::write(OOM_SCORE_ADJ_PATH, OOM_SCORE_ADJ_NEVER) {
        Ok(()) => "oom_score_adj -1000",
        Err(_) => "oom_score_adj unchanged (needs CAP_SYS_RESOURCE)",
    };
    let cpus = housekeeping.cpus;
    let reason = housekeeping.reason;
    match (mode, refused) {
        (
            Mode::Deadline {
                runtime_ns,
                period_ns,
            },
            _,
        ) => logger.info(format_args!(
            "running on CPUs {cpus} ({reason}) under SCHED_DEADLINE, {} us every {} us \
             (overruns logged), {memory}, {oom}",
            runtime_ns / 1000,
            period_ns / 1000
        )),
        (Mode::Fifo, refused) => logger.info(format_args!(
            "running on CPUs {cpus} ({reason}) under SCHED_FIFO {FIFO_PRIORITY}, RLIMIT_RTTIME \
             {} ms (demoted to SCHED_OTHER for {} s past it, killed at {} ms){}{}, {memory}, \
             {oom}",
            RTTIME_SOFT_US / 1000,
            DEMOTION_NS / 1_000_000_000,
            RTTIME_HARD_US / 1000,
            refused.map_or("", |_| "; SCHED_DEADLINE refused: "),
            Refusal(refused)
        )),
        (Mode::Other, _) => logger.info(format_args!(
            "running on CPUs {cpus} ({reason}) as SCHED_OTHER, no CPU budget (--self_sched \
             other), {memory}, {oom}"
        )),
    }
    Ok(SelfGuard {
        mode,
        xcpu_logged: 0,
        last_overrun_log_ns: 0,
        demoted_at_ns: None,
        #[cfg(feature = "fault_spin")]
        fault_spin_ns: fault_spin_ns_from_env(),
    })
}

/// Displays the errno DEADLINE was refused with, or nothing.
struct Refusal(Option<Errno>);

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(e) => write!(f, "{e}"),
            None => Ok(()),
        }
    }
}

/// Applies `--self_sched`; returns the mode and why DEADLINE was refused if it fell back.
fn apply_budget(config: &Config) -> Result<(Mode, Option<Errno>), String> {
    let (runtime_ns, period_ns) = self_budget_ns(config);
    match config.self_sched {
        SelfSched::Other => return Ok((Mode::Other, None)),
        SelfSched::Fifo => return enter_fifo().map(|()| (Mode::Fifo, None)),
        SelfSched::Deadline => {}
    }
    install_xcpu_handler().map_err(|e| format!("cannot handle SIGXCPU: {e}"))?;
    let attr = SchedAttr {
        sched_flags: SCHED_FLAG_DL_OVERRUN,
        ..SchedAttr::deadline(runtime_ns, period_ns, period_ns)
    };
    match sched::sched_setattr(0, &attr) {
        Ok(()) => Ok((
            Mode::Deadline {
                runtime_ns,
                period_ns,
            },
            None,
        )),
        Err(e) if config.reservation_percent.is_some() => Err(format!(
            "cannot reserve {}% CPU for stalld (-R): {e}",
            config.reservation_percent.unwrap_or_default()
        )),
        Err(e) => enter_fifo().map(|()| (Mode::Fifo, Some(e))),
    }
}

/// The daemon's DEADLINE runtime and period: `-R PCT` of the period, else `--self_runtime`.
pub fn self_budget_ns(config: &Config) -> (u64, u64) {
    let period_ns = config.self_period_ns;
    let runtime_ns = match config.reservation_percent {
        Some(percent) => period_ns * u64::from(percent) / 100,
        None => config.self_runtime_ns,
    };
    (runtime_ns, period_ns)
}

/// SCHED_FIFO [`FIFO_PRIORITY`] under `RLIMIT_RTTIME`, demoted by the SIGXCPU handler.
fn enter_fifo() -> Result<(), String> {
    install_xcpu_handler().map_err(|e| format!("cannot handle SIGXCPU: {e}"))?;
    set_rttime_limit().map_err(|e| format!("cannot set RLIMIT_RTTIME for stalld: {e}"))?;
    sched::sched_setattr(0, &SchedAttr::fifo(FIFO_PRIORITY))
        .map_err(|e| format!("cannot run stalld under SCHED_FIFO {FIFO_PRIORITY}: {e}"))?;
    DEMOTE_ON_XCPU.store(true, Ordering::SeqCst);
    Ok(())
}

/// `setrlimit(RLIMIT_RTTIME, {RTTIME_SOFT_US, RTTIME_HARD_US})`; also re-arms the soft limit,
/// which the kernel raises by 1 s each time it signals.
fn set_rttime_limit() -> Result<(), Errno> {
    setrlimit(
        Resource::Rttime,
        Rlimit {
            current: Some(RTTIME_SOFT_US),
            maximum: Some(RTTIME_HARD_US),
        },
    )
}

/// The attribute the handler demotes the daemon to: an ordinary task.
const DEMOTED_ATTR: SchedAttr = SchedAttr {
    size: 0,
    sched_policy: SCHED_OTHER,
    sched_flags: 0,
    sched_nice: 0,
    sched_priority: 0,
    sched_runtime: 0,
    sched_deadline: 0,
    sched_period: 0,
    sched_util_min: 0,
    sched_util_max: 0,
};

/// Counts the signal; under SCHED_FIFO, demotes the daemon at once (it may be spinning and never
/// reach the loop). Async-signal-safe: atomics and one raw syscall, `errno` preserved.
extern "C" fn on_sigxcpu(_signal: libc::c_int) {
    XCPU_SIGNALS.fetch_add(1, Ordering::SeqCst);
    if DEMOTE_ON_XCPU.load(Ordering::SeqCst) {
        // SAFETY: `__errno_location` returns this thread's errno slot, valid for its lifetime.
        let errno = unsafe { *libc::__errno_location() };
        if sched::sched_setattr(0, &DEMOTED_ATTR).is_ok() {
            DEMOTE_ON_XCPU.store(false, Ordering::SeqCst);
            DEMOTED.store(true, Ordering::SeqCst);
        }
        // SAFETY: as above; restores the interrupted code's errno.
        unsafe { *libc::__errno_location() = errno };
    }
}

/// `sigaction(SIGXCPU, on_sigxcpu)` and `pthread_sigmask(SIG_UNBLOCK, {SIGXCPU})`: the budget
/// signal must reach the handler even if some other code blocked it.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/sigaction.2.html)
fn install_xcpu_handler() -> Result<(), Errno> {
    let handler: extern "C" fn(libc::c_int) = on_sigxcpu;
    // SAFETY: an all-zero `sigaction` is valid (empty mask, no flags); the handler is set next.
    let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    // SAFETY: `action` is initialized; the old action is not requested (NULL).
    if unsafe { libc::sigaction(libc::SIGXCPU, &action, core::ptr::null_mut()) } != 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    let mut set = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` initializes the set, `sigaddset` adds a valid signal; the mask
    // call only reads it and requests no old mask.
    let ret = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGXCPU);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), core::ptr::null_mut())
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(ret))
    }
}

impl SelfGuard {
    /// Once per loop pass: logs budget overruns (at most every 10 s, with their count) and a
    /// demotion, and promotes a daemon demoted [`DEMOTION_NS`] ago back to SCHED_FIFO.
    pub fn tick(&mut self, now_ns: u64, logger: &mut impl Log) {
        #[cfg(feature = "fault_spin")]
        self.fault_spin(logger);
        let signals = XCPU_SIGNALS.load(Ordering::SeqCst);
        let demoted = DEMOTED.load(Ordering::SeqCst);
        if demoted && self.demoted_at_ns.is_none() {
            self.demoted_at_ns = Some(now_ns);
            self.xcpu_logged = signals;
            self.last_overrun_log_ns = now_ns;
            logger.warn(format_args!(
                "stalld ran {} ms under SCHED_FIFO without sleeping (RLIMIT_RTTIME): demoted \
                 itself to SCHED_OTHER for {} s",
                RTTIME_SOFT_US / 1000,
                DEMOTION_NS / 1_000_000_000
            ));
        } else if signals > self.xcpu_logged
            && now_ns.saturating_sub(self.last_overrun_log_ns) >= OVERRUN_LOG_INTERVAL_NS
        {
            let count = signals - self.xcpu_logged;
            self.xcpu_logged = signals;
            self.last_overrun_log_ns = now_ns;
            if let Mode::Deadline {
                runtime_ns,
                period_ns,
            } = self.mode
            {
                logger.warn(format_args!(
                    "stalld used up its SCHED_DEADLINE budget ({} us every {} us) {count} \
                     times: the kernel throttled it",
                    runtime_ns / 1000,
                    period_ns / 1000
                ));
            } else {
                logger.warn(format_args!(
                    "stalld received SIGXCPU {count} times (CPU budget)"
                ));
            }
        }
        if let Some(at_ns) = self.demoted_at_ns {
            if now_ns.saturating_sub(at_ns) >= DEMOTION_NS {
                self.promote(logger);
            }
        }
    }

    /// At exit, once nothing is boosted and right before the daemon turns RT throttling back
    /// on: it leaves its real-time class for SCHED_OTHER. Writing `sched_rt_runtime_us` while a
    /// SCHED_DEADLINE task runs leaves the kernel's DEADLINE bandwidth books wrong: measured
    /// on 6.18, the daemon's 20 % stayed counted after it exited (and went negative in other
    /// runs), until no new DEADLINE task could be admitted (EBUSY) with throttling on.
    pub fn step_down(&mut self, logger: &mut impl Log) {
        if self.mode == Mode::Other {
            return;
        }
        DEMOTE_ON_XCPU.store(false, Ordering::SeqCst);
        if let Err(e) = sched::sched_setattr(0, &DEMOTED_ATTR) {
            logger.warn(format_args!(
                "cannot leave the real-time class before RT throttling comes back ({e})"
            ));
        }
        // The kernel returns a DEADLINE task's bandwidth at its 0-lag time, up to a period
        // after it left the class.
        if let Mode::Deadline { period_ns, .. } = self.mode {
            std::thread::sleep(std::time::Duration::from_nanos(period_ns));
        }
        self.mode = Mode::Other;
    }

    /// When [`SelfGuard::tick`] must run next (CLOCK_MONOTONIC ns): the end of a demotion,
    /// else `u64::MAX`.
    pub fn next_wake_ns(&self) -> u64 {
        self.demoted_at_ns
            .map_or(u64::MAX, |at_ns| at_ns.saturating_add(DEMOTION_NS))
    }

    fn promote(&mut self, logger: &mut impl Log) {
        let result = set_rttime_limit()
            .and_then(|()| sched::sched_setattr(0, &SchedAttr::fifo(FIFO_PRIORITY)));
        self.demoted_at_ns = None;
        DEMOTED.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => {
                DEMOTE_ON_XCPU.store(true, Ordering::SeqCst);
                logger.info(format_args!(
                    "stalld back to SCHED_FIFO {FIFO_PRIORITY} after its demotion"
                ));
            }
            Err(e) => {
                self.mode = Mode::Other;
                logger.warn(format_args!(
                    "cannot take SCHED_FIFO {FIFO_PRIORITY} again ({e}): stalld stays \
                     SCHED_OTHER"
                ));
            }
        }
    }
}

/// `STALLD_FAULT_SPIN_MS`: how long the loop spins once after startup (fault injection).
#[cfg(feature = "fault_spin")]
pub const FAULT_SPIN_ENV: &str = "STALLD_FAULT_SPIN_MS";

#[cfg(feature = "fault_spin")]
fn fault_spin_ns_from_env() -> u64 {
    std::env::var(FAULT_SPIN_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(0, |ms| ms.saturating_mul(1_000_000))
}

#[cfg(feature = "fault_spin")]
impl SelfGuard {
    /// Fault injection for tests: the loop's first pass spins for `STALLD_FAULT_SPIN_MS`.
    fn fault_spin(&mut self, logger: &mut impl Log) {
        if self.fault_spin_ns == 0 {
            return;
        }
        let spin_ns = core::mem::take(&mut self.fault_spin_ns);
        logger.warn(format_args!(
            "fault injection: the loop spins for {} ms",
            spin_ns / 1_000_000
        ));
        let until_ns = process::monotonic_ns() + spin_ns;
        while process::monotonic_ns() < until_ns {
            core::hint::spin_loop();
        }
        logger.info(format_args!("fault injection: spin over"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list, 64).unwrap()
    }

    #[test]
    fn affinity_wins() {
        let hk = housekeeping_cpus(Some(set("3")), &set("0-3"), &set("0-3"), &set("3"));
        assert_eq!((hk.cpus, hk.reason), (set("3"), "-a"));
    }

    #[test]
    fn unmonitored_non_isolated_cpus() {
        let hk = housekeeping_cpus(None, &set("2-3"), &set("0-7"), &set("4-7"));
        assert_eq!((hk.cpus, hk.reason), (set("0-1"), "not monitored"));
    }

    #[test]
    fn every_cpu_monitored_falls_back_to_non_isolated() {
        let hk = housekeeping_cpus(None, &set("0-7"), &set("0-7"), &set("4-7"));
        assert_eq!(hk.cpus, set("0-3"));
        assert!(hk.reason.contains("no housekeeping CPU"), "{}", hk.reason);
        let hk = housekeeping_cpus(None, &set("0-1"), &set("0-1"), &CpuSet::empty());
        assert_eq!(hk.cpus, set("0-1"));
    }

    #[test]
    fn everything_isolated_falls_back_to_online() {
        let hk = housekeeping_cpus(None, &set("0-1"), &set("0-1"), &set("0-1"));
        assert_eq!(hk.cpus, set("0-1"));
        assert!(hk.reason.contains("isolated"), "{}", hk.reason);
    }

    #[test]
    fn offline_cpus_are_never_chosen() {
        let hk = housekeeping_cpus(None, &set("1"), &set("0-1"), &CpuSet::empty());
        assert_eq!(hk.cpus, set("0"));
    }

    #[test]
    fn budget_from_reservation_or_runtime() {
        let mut config = Config::default_for(2);
        assert_eq!(
            self_budget_ns(&config),
            (DEFAULT_SELF_RUNTIME_NS, DEFAULT_SELF_PERIOD_NS)
        );
        config.reservation_percent = Some(30);
        assert_eq!(
            self_budget_ns(&config),
            (30_000_000, DEFAULT_SELF_PERIOD_NS)
        );
    }
}
