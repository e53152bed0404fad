//! End-to-end harness: real starving tasks on a real kernel, and the daemon run as a child.
//!
//! Invariants, kept also when a test panics (every resource is owned by a guard):
//! - hogs and victims are forked children that pin themselves to one CPU and exit on their own
//!   when their CLOCK_MONOTONIC deadline passes; their guard SIGKILLs and reaps them anyway;
//! - `sched_rt_runtime_us` is saved when a test starts and written back when it ends;
//! - the daemon child is stopped (SIGTERM, then SIGKILL) and reaped;
//! - the harness threads (test thread, log readers) and every child start pinned to the
//!   housekeeping CPU, so that log time stamps are not delayed by the hog.
//!
//! Submodules: `guest` (QEMU guests for tests/vm.rs and the scale bench: kernels, initramfs, a
//! bounded boot, the guest's report), `sandbox` (seccomp and mount-namespace wrappers that take
//! the eBPF and debugfs backends away from the daemon) and `sleepers` (a busy workload that
//! never starves).
#![allow(dead_code)]
// The crate's [lints] hold for the daemon; this harness (fork, pre_exec, raw pthreads) has not
// been brought under them yet.
#![allow(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation
)]

pub mod guest;
pub mod sandbox;
pub mod sleepers;

use sandbox::Sandbox;
use std::ffi::CStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The CPU the scenarios starve.
pub const TEST_CPU: usize = 1;
/// The CPU the harness (and the daemon it starts) runs on.
pub const HOUSEKEEPING_CPU: usize = 0;

/// A boost that makes the victim's progress plain: the largest runtime (1 ms) and the shortest
/// period (200 ms) stalld accepts, 0.5 % of the CPU.
pub const MEASURABLE_BOOST: [&str; 4] = ["-r", "1000000", "-p", "200000000"];

/// The daemon's options in most tests: foreground, verbose, watching [`TEST_CPU`] with
/// `-t threshold_s -d boost_s`, then `more`.
pub fn watch_test_cpu<'a>(
    threshold_s: &'a str,
    boost_s: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["-f", "-v", "-c", "1", "-t", threshold_s, "-d", boost_s];
    args.extend_from_slice(more);
    args
}

pub const SCHED_OTHER: u32 = 0;
pub const SCHED_FIFO: u32 = 1;
pub const SCHED_RR: u32 = 2;
pub const SCHED_DEADLINE: u32 = 6;

/// `SCHED_ATTR_SIZE_VER0`: the layout without utilisation clamps, accepted by every kernel
/// that has `sched_setattr`.
const SCHED_ATTR_SIZE_VER0: u32 = 48;

const RT_RUNTIME_PATH: &str = "/proc/sys/kernel/sched_rt_runtime_us";

/// Set to `1` to turn a skipped end-to-end test (not root, one CPU) into a failure; CI sets it.
pub const REQUIRE_ENV: &str = "STALLD_E2E_REQUIRE";

/// The detection backends the daemon offers (`-b NAME`), each end-to-end test runs per backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendUnderTest {
    QueueTrack,
    SchedDebug,
    Procfs,
}

impl BackendUnderTest {
    /// The name passed to `-b` and logged in `using <name> backend`.
    pub fn name(self) -> &'static str {
        match self {
            BackendUnderTest::QueueTrack => "queue_track",
            BackendUnderTest::SchedDebug => "sched_debug",
            BackendUnderTest::Procfs => "procfs",
        }
    }

    /// Whether the backend dates every wait exactly: queue_track sees each wait begin (and
    /// its task iterator reads those under way at its start). sched_debug and procfs prove a
    /// wait's start only for a task they saw running before it was preempted; any other wait
    /// (a task that woke, or one already waiting when the daemon started) counts from the
    /// first pass that sees it, up to one poll interval late.
    pub fn dates_waits_exactly(self) -> bool {
        matches!(self, BackendUnderTest::QueueTrack)
    }
}

/// One `#[test]` per backend, named after it, each calling `$run(BackendUnderTest::...)`
/// (`BackendUnderTest` must be in scope, as `use common::*` brings it).
#[macro_export]
macro_rules! test_each_backend {
    ($run:path) => {
        #[test]
        fn queue_track() {
            $run(BackendUnderTest::QueueTrack);
        }

        #[test]
        fn sched_debug() {
            $run(BackendUnderTest::SchedDebug);
        }

        #[test]
        fn procfs() {
            $run(BackendUnderTest::Procfs);
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Serialisation and preconditions
// ---------------------------------------------------------------------------------------------

/// The end-to-end tests share CPU 1 and the global RT throttling knob: one at a time.
static E2E_LOCK: Mutex<()> = Mutex::new(());

/// Everything an end-to-end test holds for its whole run. Fields drop in declaration order:
/// affinity and RT runtime are restored before the next test may take the lock.
pub struct E2e {
    _pin: ThreadAffinityGuard,
    pub rt_runtime: RtRuntimeGuard,
    _machine_lock: MachineLock,
    _lock: MutexGuard<'static, ()>,
}

/// Path of an advisory lock (flock) held during every end-to-end test, so that two test
/// binaries (two worktrees, a test and a manual experiment) never share CPU 1 at once.
pub const MACHINE_LOCK_PATH: &str = "/tmp/stalld-rs-e2e-cpu1.lock";

/// An exclusive `flock` on [`MACHINE_LOCK_PATH`], released when dropped (or when the process
/// dies). Best effort: if the file cannot be opened the test runs unlocked.
pub struct MachineLock {
    _file: Option<std::fs::File>,
}

impl MachineLock {
    pub fn take() -> MachineLock {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(MACHINE_LOCK_PATH);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                eprintln!("harness: cannot open {MACHINE_LOCK_PATH}: {e}; running unlocked");
                return MachineLock { _file: None };
            }
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!("harness: waiting for {MACHINE_LOCK_PATH} (another e2e run uses CPU 1)");
            // SAFETY: as above, blocking this time.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        }
        MachineLock { _file: Some(file) }
    }
}

/// Takes the end-to-end lock, checks the machine can run the scenario, pins this thread to the
/// housekeeping CPU and saves `sched_rt_runtime_us`. `None` (after printing why) means skip.
pub fn e2e_begin(test: &str) -> Option<E2e> {
    let lock = E2E_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let machine_lock = MachineLock::take();
    if let Err(why) = e2e_preconditions() {
        let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
        assert!(!required, "{test}: cannot run ({why}) but {REQUIRE_ENV}=1");
        eprintln!("SKIPPED {test}: {why} (set {REQUIRE_ENV}=1 to make this a failure)");
        return None;
    }
    let rt_runtime = RtRuntimeGuard::save().expect("read sched_rt_runtime_us");
    let pin = ThreadAffinityGuard::pin(HOUSEKEEPING_CPU).expect("pin test thread to CPU 0");
    Some(E2e {
        _pin: pin,
        rt_runtime,
        _machine_lock: machine_lock,
        _lock: lock,
    })
}

fn e2e_preconditions() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (sched_setattr on other tasks, sched_rt_runtime_us)".into());
    }
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online < 2 {
        return Err(format!("needs at least 2 online CPUs, found {online}"));
    }
    let allowed = current_thread_affinity().map_err(|e| format!("sched_getaffinity: {e}"))?;
    // SAFETY: CPU_ISSET reads a valid, initialised cpu_set_t.
    let usable = unsafe {
        libc::CPU_ISSET(TEST_CPU, &allowed) && libc::CPU_ISSET(HOUSEKEEPING_CPU, &allowed)
    };
    if !usable {
        return Err(format!(
            "CPUs {HOUSEKEEPING_CPU} and {TEST_CPU} must both be in this process's affinity"
        ));
    }
    std::fs::metadata(RT_RUNTIME_PATH).map_err(|e| format!("{RT_RUNTIME_PATH}: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scheduling syscalls (raw: musl's sched_setscheduler is an ENOSYS stub, libc has no wrapper
// for sched_setattr/sched_getattr)
// ---------------------------------------------------------------------------------------------

/// `struct sched_attr` from `linux/sched/types.h` (VER1 layout; VER0 is the first 48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedAttr {
    pub size: u32,
    pub sched_policy: u32,
    pub sched_flags: u64,
    pub sched_nice: i32,
    pub sched_priority: u32,
    pub sched_runtime: u64,
    pub sched_deadline: u64,
    pub sched_period: u64,
    pub sched_util_min: u32,
    pub sched_util_max: u32,
}

impl SchedAttr {
    pub fn fifo(priority: u32) -> Self {
        SchedAttr {
            size: SCHED_ATTR_SIZE_VER0,
            sched_policy: SCHED_FIFO,
            sched_priority: priority,
            ..Default::default()
        }
    }

    pub fn deadline(runtime_ns: u64, deadline_ns: u64, period_ns: u64) -> Self {
        SchedAttr {
            size: SCHED_ATTR_SIZE_VER0,
            sched_policy: SCHED_DEADLINE,
            sched_runtime: runtime_ns,
            sched_deadline: deadline_ns,
            sched_period: period_ns,
            ..Default::default()
        }
    }
}

/// `sched_setattr(pid, attr, 0)`; see sched_setattr(2). `pid` 0 is the calling thread.
pub fn sched_setattr(pid: libc::pid_t, attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: attr points to a valid sched_attr whose `size` field is at most its real size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            pid,
            attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sched_getattr(pid, attr, sizeof attr, 0)`; see sched_getattr(2).
pub fn sched_getattr(pid: libc::pid_t) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size_of::<SchedAttr>()` bytes into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            pid,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Policy and RT priority of a task, the pair the tests compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub policy: u32,
    pub priority: u32,
}

impl Policy {
    pub const fn fifo(priority: u32) -> Self {
        Policy {
            policy: SCHED_FIFO,
            priority,
        }
    }
}

/// Restores a task from a boost to SCHED_FIFO `priority` so that it stops running at once.
///
/// Measured on 6.18: a task switched from SCHED_DEADLINE straight to a lower SCHED_FIFO
/// priority while it is the CPU's current task keeps the CPU, ahead of a higher-priority FIFO
/// task, until the next scheduling event (100-700 ms seen; the kernel's `switched_to_rt` does
/// not reschedule the current task). Passing through the priority above first makes the second
/// call a priority drop inside the RT class, which does reschedule (`prio_changed_rt`).
pub fn restore_fifo(pid: libc::pid_t, priority: u32) -> io::Result<()> {
    if priority < 99 {
        sched_setattr(pid, &SchedAttr::fifo(priority + 1))?;
    }
    sched_setattr(pid, &SchedAttr::fifo(priority))
}

pub fn policy_of(pid: libc::pid_t) -> io::Result<Policy> {
    let attr = sched_getattr(pid)?;
    Ok(Policy {
        policy: attr.sched_policy,
        priority: attr.sched_priority,
    })
}

pub fn policy_name(policy: u32) -> &'static str {
    match policy {
        SCHED_OTHER => "SCHED_OTHER",
        SCHED_FIFO => "SCHED_FIFO",
        SCHED_RR => "SCHED_RR",
        3 => "SCHED_BATCH",
        5 => "SCHED_IDLE",
        SCHED_DEADLINE => "SCHED_DEADLINE",
        _ => "SCHED_?",
    }
}

/// Polls until `pid` has policy `want`; returns how long that took, or the last policy seen.
pub fn wait_for_policy(
    pid: libc::pid_t,
    want: Policy,
    timeout: Duration,
) -> Result<Duration, io::Result<Policy>> {
    let start = Instant::now();
    loop {
        let seen = policy_of(pid);
        if matches!(seen, Ok(p) if p == want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(seen);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// CPU affinity
// ---------------------------------------------------------------------------------------------

fn cpu_set_of(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

fn current_thread_affinity() -> io::Result<libc::cpu_set_t> {
    // SAFETY: the kernel fills at most size_of::<cpu_set_t>() bytes of `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

fn set_current_thread_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to one CPU and restores its previous mask on drop. Threads and
/// processes created meanwhile inherit the pinned mask.
pub struct ThreadAffinityGuard {
    saved: libc::cpu_set_t,
}

impl ThreadAffinityGuard {
    pub fn pin(cpu: usize) -> io::Result<Self> {
        let saved = current_thread_affinity()?;
        set_current_thread_affinity(&cpu_set_of(cpu))?;
        Ok(ThreadAffinityGuard { saved })
    }
}

impl Drop for ThreadAffinityGuard {
    fn drop(&mut self) {
        if let Err(e) = set_current_thread_affinity(&self.saved) {
            eprintln!("harness: cannot restore the test thread's affinity: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RT throttling
// ---------------------------------------------------------------------------------------------

pub fn read_rt_runtime_us() -> io::Result<i64> {
    let text = std::fs::read_to_string(RT_RUNTIME_PATH)?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
}

pub fn write_rt_runtime_us(value: i64) -> io::Result<()> {
    std::fs::write(RT_RUNTIME_PATH, format!("{value}\n"))
}

/// Saves `sched_rt_runtime_us` and writes it back on drop if it changed.
pub struct RtRuntimeGuard {
    pub saved: i64,
}

impl RtRuntimeGuard {
    pub fn save() -> io::Result<Self> {
        Ok(RtRuntimeGuard {
            saved: read_rt_runtime_us()?,
        })
    }
}

impl Drop for RtRuntimeGuard {
    fn drop(&mut self) {
        if read_rt_runtime_us().ok() != Some(self.saved) {
            if let Err(e) = write_rt_runtime_us(self.saved) {
                eprintln!(
                    "harness: cannot restore sched_rt_runtime_us={}: {e}",
                    self.saved
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readers
// ---------------------------------------------------------------------------------------------

/// CPU time the task has consumed, ns: first field of `/proc/<pid>/schedstat`.
pub fn cpu_time_ns(pid: libc::pid_t) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("schedstat {text:?}")))
}

/// Fields of `/proc/<pid>/stat` after the `(comm)`: index 0 is field 3 (state).
fn stat_fields_after_comm(pid: libc::pid_t) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "stat without ')'"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// Scheduler state letter (`R`, `S`, `Z`...), field 3 of `/proc/<pid>/stat`.
pub fn proc_state(pid: libc::pid_t) -> io::Result<char> {
    stat_fields_after_comm(pid)?
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "stat without state"))
}

/// CPU the task last ran on, field 39 of `/proc/<pid>/stat`.
pub fn last_cpu(pid: libc::pid_t) -> io::Result<usize> {
    stat_fields_after_comm(pid)?
        .get(39 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "stat without processor"))
}

/// `comm-tid(policy prio)` of every runnable RT task last seen on `cpu`, for failure messages
/// (what else could be holding the CPU the scenario needs).
pub fn runnable_rt_tasks_on(cpu: usize) -> String {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "(cannot read /proc)".into();
    };
    for proc_entry in procs.flatten() {
        let Ok(tasks) = std::fs::read_dir(proc_entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let (Ok(state), Ok(on), Ok(policy)) = (proc_state(tid), last_cpu(tid), policy_of(tid))
            else {
                continue;
            };
            if state == 'R' && on == cpu && policy.policy != SCHED_OTHER {
                found.push(format!(
                    "{}-{tid}({} {})",
                    comm.trim(),
                    policy_name(policy.policy),
                    policy.priority
                ));
            }
        }
    }
    if found.is_empty() {
        "none".into()
    } else {
        found.join(", ")
    }
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// Hogs and victims: forked children doing only raw syscalls
// ---------------------------------------------------------------------------------------------

/// What a busy child does: take a name, a FIFO priority and one CPU, spin until `lifetime`
/// after its start, then `_exit(0)`. A starved child only checks its deadline when it runs,
/// so it outlives its deadline until it next gets the CPU (that is how "exits mid-boost" works).
#[derive(Clone, Copy, Debug)]
pub struct SpinnerSpec {
    pub name: &'static str,
    pub fifo_priority: u32,
    pub cpu: usize,
    pub lifetime: Duration,
}

/// Setup steps a child reports when it fails; its exit code is then the errno.
const STEP_READY: u8 = b'r';
const STEP_SETATTR: u8 = b'a';
const STEP_AFFINITY: u8 = b'c';
const STEP_PARENT_GONE: u8 = b'p';

/// A forked spinner. Drop SIGKILLs and reaps it.
pub struct Spinner {
    pub pid: libc::pid_t,
    pub name: &'static str,
    /// When the parent learnt that the child runs on its CPU with its policy.
    pub running_since: Instant,
    reaped: Option<i32>,
}

impl Spinner {
    /// Forks the child and waits until it runs on its CPU with its policy (at most 2 s).
    ///
    /// Call from a thread pinned to the housekeeping CPU: the child then starts there, takes
    /// its RT priority, and only then moves to its CPU, where it preempts at once any lower RT
    /// priority task (a SCHED_OTHER child that moved first could wait up to ~1 s for the
    /// DL-server behind a FIFO task).
    pub fn spawn(spec: SpinnerSpec) -> io::Result<Spinner> {
        Self::spawn_waking_at(spec, 0)
    }

    /// Like [`Spinner::spawn`], but the child sleeps `sleep` once on its CPU before it spins:
    /// a task whose last run (`se.exec_start`) is long past when it wakes. Returns once the
    /// child sleeps, with the moment it wakes (it becomes runnable then, waiting if a hog holds
    /// its CPU).
    ///
    /// The child reports ready just before it goes to sleep: a hog started on its CPU in that
    /// instant would keep it runnable from then on, never asleep (seen once in CI: the victim
    /// waited from its start, and the daemon's correct report looked 1 s early).
    pub fn spawn_sleeping(spec: SpinnerSpec, sleep: Duration) -> io::Result<(Spinner, Instant)> {
        let sleep_ns = sleep.as_nanos() as u64;
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        let spinner = Self::spawn_waking_at(spec, now_ns + sleep_ns)?;
        // Its CPU is free: it reaches its sleep within microseconds; a second is a loaded
        // machine's margin, and well within the sleep the callers ask for.
        let asleep_by = Instant::now() + Duration::from_secs(1);
        while proc_state(spinner.pid)? != 'S' {
            if Instant::now() >= asleep_by {
                return Err(io::Error::other(format!(
                    "{}-{} did not go to sleep within a second",
                    spinner.name, spinner.pid
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok((spinner, now + sleep))
    }

    /// Forks the child; with `wake_at_ns` (CLOCK_MONOTONIC, 0 for none) it sleeps until then
    /// before it spins.
    fn spawn_waking_at(spec: SpinnerSpec, wake_at_ns: u64) -> io::Result<Spinner> {
        let mut name = [0u8; 16];
        let len = spec.name.len().min(15);
        name[..len].copy_from_slice(&spec.name.as_bytes()[..len]);
        let attr = SchedAttr::fifo(spec.fifo_priority);
        let cpus = cpu_set_of(spec.cpu);
        let deadline_ns = monotonic_ns() + spec.lifetime.as_nanos() as u64;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let [read_fd, write_fd] = fds;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child runs only async-signal-safe raw syscalls on data prepared above,
        // never allocates or takes a lock, and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = io::Error::last_os_error();
            close_fd(read_fd);
            close_fd(write_fd);
            return Err(e);
        }
        if pid == 0 {
            // SAFETY: in the child, see above.
            unsafe {
                spinner_child(
                    &name,
                    &attr,
                    &cpus,
                    (wake_at_ns, deadline_ns),
                    write_fd,
                    parent,
                )
            }
        }
        close_fd(write_fd);
        let mut spinner = Spinner {
            pid,
            name: spec.name,
            running_since: Instant::now(),
            reaped: None,
        };
        let step = read_step(read_fd, Duration::from_secs(2));
        spinner.running_since = Instant::now();
        close_fd(read_fd);
        match step {
            Some(STEP_READY) => Ok(spinner),
            other => {
                let status = spinner.wait_exit(Duration::from_secs(2));
                let what = match other {
                    Some(STEP_SETATTR) => "sched_setattr(SCHED_FIFO)",
                    Some(STEP_AFFINITY) => "sched_setaffinity",
                    Some(STEP_PARENT_GONE) => "parent check",
                    None => "no report within 2 s",
                    Some(_) => "unknown step",
                };
                Err(io::Error::other(format!(
                    "{} failed at {what}; exit status {status:?} (exit code = errno); \
                     RT tasks runnable on CPU {}: {}",
                    spec.name,
                    spec.cpu,
                    runnable_rt_tasks_on(spec.cpu)
                )))
            }
        }
    }

    /// Waits up to `timeout` for the child to exit on its own; its raw wait status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out pointer; pid is our own child.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc == self.pid {
                self.reaped = Some(status);
                return self.reaped;
            }
            if rc < 0 || start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn has_exited(&self) -> bool {
        self.reaped.is_some()
    }

    /// CPU time consumed so far, ns.
    pub fn cpu_time_ns(&self) -> u64 {
        cpu_time_ns(self.pid)
            .unwrap_or_else(|e| panic!("{}-{} schedstat: {e}", self.name, self.pid))
    }

    pub fn policy(&self) -> Policy {
        policy_of(self.pid)
            .unwrap_or_else(|e| panic!("{}-{} sched_getattr: {e}", self.name, self.pid))
    }
}

impl Spinner {
    /// Sends SIGKILL without waiting. A starved task dies only once it gets the CPU, so kill
    /// the hog before reaping its victims.
    pub fn kill(&self) {
        if self.reaped.is_none() {
            // SAFETY: pid is our own unreaped child, so it cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Kills and reaps the child (blocks until it is gone).
    pub fn kill_and_reap(&mut self) {
        if self.reaped.is_none() {
            self.kill();
            let mut status = 0;
            // SAFETY: status is a valid out pointer; pid is our own child.
            if unsafe { libc::waitpid(self.pid, &mut status, 0) } == self.pid {
                self.reaped = Some(status);
            }
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn close_fd(fd: libc::c_int) {
    // SAFETY: fd is a descriptor this module opened and closes once.
    unsafe { libc::close(fd) };
}

/// Reads the one-byte report of a child, `None` on EOF or timeout.
fn read_step(fd: libc::c_int, timeout: Duration) -> Option<u8> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) } != 1 {
        return None;
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into `byte`.
    (unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) } == 1).then_some(byte)
}

/// Body of a forked spinner. Only raw syscalls: no allocation, no locks, no unwinding.
unsafe fn spinner_child(
    name: &[u8; 16],
    attr: &SchedAttr,
    cpus: &libc::cpu_set_t,
    (wake_at_ns, deadline_ns): (u64, u64),
    report_fd: libc::c_int,
    parent: libc::pid_t,
) -> ! {
    let fail = |step: u8| -> ! {
        let errno = *libc::__errno_location();
        libc::write(report_fd, (&step as *const u8).cast(), 1);
        libc::_exit(errno & 0xff)
    };
    // Never outlive a test process that was SIGKILLed.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    if libc::getppid() != parent {
        fail(STEP_PARENT_GONE);
    }
    libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    // Priority first, CPU second: see Spinner::spawn.
    if libc::syscall(
        libc::SYS_sched_setattr,
        0,
        attr as *const SchedAttr,
        0 as libc::c_uint,
    ) != 0
    {
        fail(STEP_SETATTR);
    }
    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpus) != 0 {
        fail(STEP_AFFINITY);
    }
    // sched_setaffinity returns only once we run on the new CPU.
    let ready = STEP_READY;
    libc::write(report_fd, (&ready as *const u8).cast(), 1);
    libc::close(report_fd);
    if wake_at_ns > 0 {
        let wake_at = libc::timespec {
            tv_sec: (wake_at_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (wake_at_ns % 1_000_000_000) as libc::c_long,
        };
        while libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &wake_at,
            std::ptr::null_mut(),
        ) == libc::EINTR
        {}
    }
    while monotonic_ns() < deadline_ns {
        std::hint::spin_loop();
    }
    libc::_exit(0)
}

/// A starvation scenario: a FIFO victim, then a higher-priority FIFO hog on the same CPU.
pub struct Scenario {
    pub victim: Spinner,
    /// Further starving tasks, started after the victim and before the hog, or later with
    /// [`Scenario::add_waiting_task`].
    pub others: Vec<Spinner>,
    pub hog: Spinner,
    /// When the hog was known to run on the CPU: the victim waits since (at most) then.
    pub t_hog: Instant,
    /// Victim CPU time at `t_hog`, ns.
    pub victim_cpu_at_hog_ns: u64,
}

pub const VICTIM_NAME: &str = "stv_victim";
pub const HOG_NAME: &str = "stv_hog";
pub const VICTIM_PRIORITY: u32 = 1;
pub const HOG_PRIORITY: u32 = 50;

impl Scenario {
    /// Starts `stv_victim` (SCHED_FIFO 1) then `stv_hog` (SCHED_FIFO 50), both on [`TEST_CPU`].
    pub fn start(victim_lifetime: Duration, hog_lifetime: Duration) -> Scenario {
        Self::start_with_others(victim_lifetime, &[], hog_lifetime)
    }

    /// Like [`Scenario::start`], with `others` started between the victim and the hog. Each
    /// must have a higher priority than the task started before it (a FIFO task of equal
    /// priority would never let it reach its CPU) and a lower one than the hog.
    pub fn start_with_others(
        victim_lifetime: Duration,
        others: &[SpinnerSpec],
        hog_lifetime: Duration,
    ) -> Scenario {
        let victim = Spinner::spawn(SpinnerSpec {
            name: VICTIM_NAME,
            fifo_priority: VICTIM_PRIORITY,
            cpu: TEST_CPU,
            lifetime: victim_lifetime,
        })
        .expect("start victim");
        let others = others
            .iter()
            .map(|spec| {
                Spinner::spawn(*spec).unwrap_or_else(|e| panic!("start {}: {e}", spec.name))
            })
            .collect();
        let hog = Spinner::spawn(SpinnerSpec {
            name: HOG_NAME,
            fifo_priority: HOG_PRIORITY,
            cpu: TEST_CPU,
            lifetime: hog_lifetime,
        })
        .expect("start hog");
        let t_hog = hog.running_since;
        let victim_cpu_at_hog_ns = victim.cpu_time_ns();
        Scenario {
            victim,
            others,
            hog,
            t_hog,
            victim_cpu_at_hog_ns,
        }
    }

    /// Starts another task that waits behind the running hog from now on, kept in `others`.
    /// It reaches its CPU at a priority above the hog (below it, it could never get there to
    /// report), then the harness drops it to `spec.fifo_priority`, which puts the hog back on
    /// the CPU at once. Returns when its wait began.
    pub fn add_waiting_task(&mut self, spec: SpinnerSpec) -> io::Result<Instant> {
        let spinner = Spinner::spawn(SpinnerSpec {
            fifo_priority: HOG_PRIORITY + 1,
            ..spec
        })?;
        sched_setattr(spinner.pid, &SchedAttr::fifo(spec.fifo_priority))?;
        let waiting_since = Instant::now();
        self.others.push(spinner);
        Ok(waiting_since)
    }

    /// Victim CPU time gained since the hog took the CPU, ns.
    pub fn victim_gain_ns(&self) -> u64 {
        self.victim.cpu_time_ns() - self.victim_cpu_at_hog_ns
    }
}

impl Drop for Scenario {
    /// The hog first: its victims cannot even die while it owns their CPU.
    fn drop(&mut self) {
        self.hog.kill_and_reap();
        for other in &mut self.others {
            other.kill();
        }
        self.victim.kill();
        for other in &mut self.others {
            other.kill_and_reap();
        }
        self.victim.kill_and_reap();
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------------

/// Runs the end-to-end tests against another program than the crate's `stalld` (upstream
/// stalld, an installed build) when set.
pub const DAEMON_BIN_ENV: &str = "STALLD_E2E_BIN";

/// The stalld under test: [`DAEMON_BIN_ENV`], else this crate's.
pub fn daemon_bin() -> String {
    std::env::var(DAEMON_BIN_ENV).unwrap_or_else(|_| env!("CARGO_BIN_EXE_stalld").to_owned())
}

/// One line the daemon wrote, stamped when the reader thread received it.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Instant,
    pub stream: &'static str,
    pub text: String,
}

#[derive(Default)]
struct LogState {
    lines: Vec<LogLine>,
    /// Streams that reached end of file.
    closed: usize,
}

type SharedLog = Arc<(Mutex<LogState>, Condvar)>;

/// `stalld` run as a child with piped output. Drop stops it (SIGTERM, then SIGKILL) and reaps it.
pub struct Daemon {
    child: Child,
    pub started: Instant,
    log: SharedLog,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    pub args: Vec<String>,
    pub sandbox: Sandbox,
    /// See [`BackendUnderTest::dates_waits_exactly`]; true unless the test says otherwise.
    pub dates_waits_exactly: bool,
}

impl Daemon {
    /// Spawns `CARGO_BIN_EXE_stalld` (or the program named by [`DAEMON_BIN_ENV`]) with `args`.
    /// The daemon inherits the calling thread's affinity (the housekeeping CPU under
    /// [`e2e_begin`]) and gets SIGTERM if that thread dies.
    pub fn spawn(args: &[&str]) -> Daemon {
        Self::spawn_sandboxed(args, Sandbox::NONE)
    }

    /// [`Daemon::spawn`] with `sandbox` entered between fork and exec.
    pub fn spawn_sandboxed(args: &[&str], sandbox: Sandbox) -> Daemon {
        Self::spawn_with_env(args, sandbox, &[])
    }

    /// [`Daemon::spawn_sandboxed`] with `env` added to the daemon's environment.
    pub fn spawn_with_env(args: &[&str], sandbox: Sandbox, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_program(&daemon_bin(), args, env, sandbox)
    }

    /// Spawns the program `bin` (another build of stalld) with `args` and `env` added to the
    /// environment, like [`Daemon::spawn_sandboxed`].
    pub fn spawn_program(
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
        sandbox: Sandbox,
    ) -> Daemon {
        Self::spawn_named(bin, None, args, env, sandbox)
    }

    /// [`Daemon::spawn`] with `arg0` as its `argv[0]` (`@stalld`: as started in an initramfs).
    pub fn spawn_as(arg0: &str, args: &[&str]) -> Daemon {
        Self::spawn_named(&daemon_bin(), Some(arg0), args, &[], Sandbox::NONE)
    }

    fn spawn_named(
        bin: &str,
        arg0: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
        sandbox: Sandbox,
    ) -> Daemon {
        let mut command = Command::new(bin);
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl and the sandbox's raw syscalls are async-signal-safe and allocate
        // nothing; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                sandbox.enter()
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let started = Instant::now();
        let log: SharedLog = Arc::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout = child.stdout.take().expect("piped stdout");
        let readers = vec![
            spawn_reader("stderr", stderr, Arc::clone(&log)),
            spawn_reader("stdout", stdout, Arc::clone(&log)),
        ];
        Daemon {
            child,
            started,
            log,
            readers,
            status: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            sandbox,
            dates_waits_exactly: true,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// First stderr line (from the start of the run) containing `pattern`, waiting up to
    /// `timeout`. Returns early with `None` once the daemon closed its output.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Option<(Instant, String)> {
        self.wait_for(
            |l| l.stream == "stderr" && l.text.contains(pattern),
            timeout,
        )
        .map(|l| (l.at, l.text))
    }

    /// First line matching `pred`, waiting up to `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&LogLine) -> bool, timeout: Duration) -> Option<LogLine> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.log;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = state.lines.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline || state.closed == self.readers.len() {
                return None;
            }
            state = cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<LogLine> {
        let state = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        state.lines.clone()
    }

    /// Every stderr line so far containing `pattern`. Only the matches are copied: a test
    /// polling a verbose daemon must not hold the readers up (a full pipe drops lines).
    pub fn lines_containing(&self, pattern: &str) -> Vec<LogLine> {
        let state = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        state
            .lines
            .iter()
            .filter(|l| l.stream == "stderr" && l.text.contains(pattern))
            .cloned()
            .collect()
    }

    /// The whole output with times relative to the start, for failure messages.
    pub fn transcript(&self) -> String {
        let mut out = format!("--- stalld {} ---\n", self.args.join(" "));
        if self.sandbox != Sandbox::NONE {
            out.push_str(&format!("--- in {:?} ---\n", self.sandbox));
        }
        for l in self.lines() {
            let t = l.at.saturating_duration_since(self.started).as_secs_f64();
            out.push_str(&format!("[{t:8.3}] {}: {}\n", l.stream, l.text));
        }
        if let Some(status) = self.status {
            out.push_str(&format!("--- exit: {status} ---\n"));
        }
        out
    }

    /// The exit status if the daemon has already exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit. `None`: still running (the guard
    /// will SIGKILL it).
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let sent = Instant::now();
        if self.try_status().is_none() {
            // SAFETY: the pid is our own unreaped child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        }
        let status = self.wait_exit(timeout)?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some((status, sent.elapsed()))
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // SAFETY: the pid is our own unreaped child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            if self.wait_exit(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

fn spawn_reader(
    stream: &'static str,
    pipe: impl Read + Send + 'static,
    log: SharedLog,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches('\n')
                        .to_owned();
                    let (lock, cond) = &*log;
                    lock.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .lines
                        .push(LogLine { at, stream, text });
                    cond.notify_all();
                }
            }
        }
        let (lock, cond) = &*log;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed += 1;
        cond.notify_all();
    })
}

/// Describes a wait status from `waitpid`.
pub fn describe_wait_status(status: i32) -> String {
    let s = ExitStatus::from_raw(status);
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (_, Some(sig)) => {
            // SAFETY: strsignal returns a static string for any signal number.
            let name = unsafe { CStr::from_ptr(libc::strsignal(sig)) };
            format!("killed by signal {sig} ({})", name.to_string_lossy())
        }
        _ => format!("wait status {status:#x}"),
    }
}

/// One record of the daemon's ring file (`--log_ring`), as `stalld --dump_ring` prints it.
#[derive(Clone, Debug)]
pub struct RingLine {
    pub seq: u64,
    /// When the daemon wrote it (its CLOCK_MONOTONIC stamp, as an `Instant`).
    pub at: Instant,
    pub text: String,
}

/// Every record of the ring file at `path`, oldest first: unlike stderr, which the daemon
/// lets drop lines when its reader falls behind, the ring keeps every line until it wraps
/// (the first `seq` says whether it did).
pub fn read_ring(path: &std::path::Path) -> Vec<RingLine> {
    let out = Command::new(daemon_bin())
        .arg("--dump_ring")
        .arg(path)
        .output()
        .expect("run stalld --dump_ring");
    assert!(
        out.status.success(),
        "stalld --dump_ring {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // `#seq DATE [   s.micro] <level> text`
            let (seq, rest) = line.strip_prefix('#')?.split_once(' ')?;
            let (_, rest) = rest.split_once(" [")?;
            let (stamp, rest) = rest.split_once("] ")?;
            let (secs, micros) = stamp.trim().split_once('.')?;
            let ns = secs.parse::<u64>().ok()? * 1_000_000_000 + micros.parse::<u64>().ok()? * 1000;
            let (_, text) = rest.split_once("> ")?;
            let at = if ns <= now_ns {
                now.checked_sub(Duration::from_nanos(now_ns - ns))?
            } else {
                now + Duration::from_nanos(ns - now_ns)
            };
            Some(RingLine {
                seq: seq.parse().ok()?,
                at,
                text: text.to_owned(),
            })
        })
        .collect()
}
