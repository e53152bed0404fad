//! A busy but never starving workload on one CPU, for false-positive tests: a forked child
//! (`stv_sleepers`) whose threads sleep and wake, are created and joined, and briefly delay
//! each other, without any of them ever waiting anywhere near a starvation threshold.
//!
//! Threads (all pinned to the workload's CPU, policy set before the move, as [`super::Spinner`]):
//! - `stv_sleep`: SCHED_FIFO above the hog; sleep 1-20 ms, spin a few µs;
//! - `stv_long`: same priority; sleep longer than a threshold (1.2-1.8 s) and wake during a
//!   burst (below), spin a few µs: a task whose last run is long past, waiting since it woke
//!   (5-50 ms) and no longer;
//! - `stv_burst`: one SCHED_FIFO thread above those, spinning 50 ms every 250 ms on a fixed
//!   schedule, so that woken threads (long sleepers always) really wait, up to 50 ms;
//! - `stv_other`: SCHED_OTHER sleepers (behind an RT hog they wait for the DL-server);
//! - `stv_churn`: short-lived threads created in batches by the child's main thread (SCHED_FIFO,
//!   same priority as the sleepers), spinning a few µs, joined, again and again.
//!
//! Invariants: every thread checks a CLOCK_MONOTONIC deadline after each sleep and leaves; the
//! child exits on its own after the deadline and gets SIGKILL if the test process dies; the
//! guard SIGKILLs and reaps it. The child's code is raw syscalls plus `pthread_create`/`join`
//! (glibc resets its allocator and thread-stack locks in a forked child), on data prepared
//! before the fork; progress is counted in a shared anonymous mapping the test reads.

use super::{cpu_set_of, monotonic_ns, SchedAttr, SCHED_OTHER};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The workload's shape. Priorities: `fifo_priority` must be above the hog so that the
/// sleepers really run, `burst_priority` above `fifo_priority`.
#[derive(Clone, Copy, Debug)]
pub struct SleeperSpec {
    pub cpu: usize,
    pub lifetime: Duration,
    pub fifo_priority: u32,
    pub burst_priority: u32,
    /// `stv_sleep` threads.
    pub short_sleepers: usize,
    /// `stv_long` threads.
    pub long_sleepers: usize,
    /// `stv_other` threads.
    pub other_sleepers: usize,
    /// `stv_churn` threads per batch (a batch every 2 ms).
    pub churn_batch: usize,
}

/// Progress counters, written by the child's threads, read by the test.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SleeperCounters {
    /// Threads that took their policy and CPU.
    pub ready: AtomicU64,
    /// Threads that could not (sched_setattr or sched_setaffinity failed).
    pub setup_failures: AtomicU64,
    pub short_wakeups: AtomicU64,
    pub long_wakeups: AtomicU64,
    pub other_wakeups: AtomicU64,
    pub bursts: AtomicU64,
    /// Short-lived threads created and joined.
    pub churned: AtomicU64,
    /// pthread_create failures.
    pub create_failures: AtomicU64,
}

/// A snapshot of [`SleeperCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SleeperProgress {
    pub ready: u64,
    pub setup_failures: u64,
    pub short_wakeups: u64,
    pub long_wakeups: u64,
    pub other_wakeups: u64,
    pub bursts: u64,
    pub churned: u64,
    pub create_failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Short,
    Long,
    Burst,
    Other,
}

/// Everything one thread needs, prepared before the fork.
struct ThreadPlan {
    kind: Kind,
    name: [u8; 16],
    attr: SchedAttr,
    cpus: libc::cpu_set_t,
    /// Bursts start at `epoch_ns + k * BURST_EVERY_NS`.
    epoch_ns: u64,
    deadline_ns: u64,
    seed: u64,
    counters: *const SleeperCounters,
}

/// The running workload. Drop SIGKILLs and reaps it and unmaps the counters.
pub struct Sleepers {
    pub pid: libc::pid_t,
    counters: *mut SleeperCounters,
    reaped: bool,
}

const STACK_SIZE: usize = 64 * 1024;
const CHURN_PAUSE_NS: u64 = 2_000_000;
const SHORT_SLEEP_NS: (u64, u64) = (1_000_000, 20_000_000);
const LONG_SLEEP_NS: (u64, u64) = (1_200_000_000, 1_800_000_000);
const OTHER_SLEEP_NS: (u64, u64) = (5_000_000, 50_000_000);
const BURST_EVERY_NS: u64 = 250_000_000;
const BURST_SPIN_NS: u64 = 50_000_000;
const SPIN_NS: (u64, u64) = (2_000, 20_000);

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let len = name.len().min(15);
    out[..len].copy_from_slice(&name.as_bytes()[..len]);
    out
}

impl Sleepers {
    /// Forks the workload. Call from the thread pinned to the housekeeping CPU. Returns once
    /// every thread was created (they take their CPU asynchronously: see [`Self::progress`]).
    pub fn spawn(spec: SleeperSpec) -> io::Result<Sleepers> {
        let epoch_ns = monotonic_ns();
        let deadline_ns = epoch_ns + spec.lifetime.as_nanos() as u64;
        // SAFETY: a fresh anonymous shared mapping; checked against MAP_FAILED below.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<SleeperCounters>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Zero-filled memory is a valid SleeperCounters (all atomics 0).
        let counters = mapping.cast::<SleeperCounters>();
        let rt = SchedAttr::fifo(spec.fifo_priority);
        let cpus = cpu_set_of(spec.cpu);
        let mut plans = Vec::new();
        let mut plan = |kind: Kind, name: &str, attr: SchedAttr| {
            let seed = 0x9e37_79b9_7f4a_7c15 ^ (plans.len() as u64 + 1).wrapping_mul(0xbf58_476d);
            plans.push(ThreadPlan {
                kind,
                name: name16(name),
                attr,
                cpus,
                epoch_ns,
                deadline_ns,
                seed,
                counters,
            });
        };
        for _ in 0..spec.short_sleepers {
            plan(Kind::Short, "stv_sleep", rt);
        }
        for _ in 0..spec.long_sleepers {
            plan(Kind::Long, "stv_long", rt);
        }
        for _ in 0..spec.other_sleepers {
            plan(
                Kind::Other,
                "stv_other",
                SchedAttr {
                    sched_policy: SCHED_OTHER,
                    ..SchedAttr::fifo(0)
                },
            );
        }
        plan(
            Kind::Burst,
            "stv_burst",
            SchedAttr::fifo(spec.burst_priority),
        );
        let churn_batch = spec.churn_batch.min(MAX_CHURN_BATCH);

        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the mapping made above, not shared with anyone yet.
            unsafe { libc::munmap(mapping, std::mem::size_of::<SleeperCounters>()) };
            return Err(e);
        }
        let [read_fd, write_fd] = fds;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child uses only raw syscalls and pthread_create/join on data prepared
        // above (see the module doc) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child, see above.
            unsafe {
                sleepers_child(
                    &plans,
                    &rt,
                    &cpus,
                    churn_batch,
                    deadline_ns,
                    counters,
                    write_fd,
                    parent,
                )
            }
        }
        super::close_fd(write_fd);
        if pid < 0 {
            let e = io::Error::last_os_error();
            super::close_fd(read_fd);
            // SAFETY: no child shares the mapping.
            unsafe { libc::munmap(mapping, std::mem::size_of::<SleeperCounters>()) };
            return Err(e);
        }
        let mut sleepers = Sleepers {
            pid,
            counters,
            reaped: false,
        };
        let step = super::read_step(read_fd, Duration::from_secs(5));
        super::close_fd(read_fd);
        if step != Some(super::STEP_READY) {
            sleepers.kill_and_reap();
            return Err(io::Error::other(format!(
                "stv_sleepers did not start its threads (report {step:?}); {:?}",
                sleepers.progress()
            )));
        }
        Ok(sleepers)
    }

    pub fn progress(&self) -> SleeperProgress {
        // SAFETY: the mapping lives until drop; only atomics are accessed.
        let c = unsafe { &*self.counters };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SleeperProgress {
            ready: get(&c.ready),
            setup_failures: get(&c.setup_failures),
            short_wakeups: get(&c.short_wakeups),
            long_wakeups: get(&c.long_wakeups),
            other_wakeups: get(&c.other_wakeups),
            bursts: get(&c.bursts),
            churned: get(&c.churned),
            create_failures: get(&c.create_failures),
        }
    }

    /// SIGKILL and reap (blocks until every thread is gone: SCHED_OTHER threads behind an RT
    /// hog may need the DL-server's next slot, up to about 1 s).
    pub fn kill_and_reap(&mut self) {
        if !self.reaped {
            // SAFETY: pid is our own unreaped child, so it cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: status is a valid out pointer; pid is our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
            self.reaped = true;
        }
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        self.kill_and_reap();
        // SAFETY: the mapping made in spawn; the child, its only other user, is gone.
        unsafe { libc::munmap(self.counters.cast(), std::mem::size_of::<SleeperCounters>()) };
    }
}

/// Most short-lived threads in one batch.
const MAX_CHURN_BATCH: usize = 16;

/// xorshift64: cheap, deterministic, no allocation.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn random_in(state: &mut u64, (low, high): (u64, u64)) -> u64 {
    low + next_random(state) % (high - low)
}

fn spin_for(ns: u64) {
    let end = monotonic_ns() + ns;
    while monotonic_ns() < end {
        std::hint::spin_loop();
    }
}

/// Sleeps until CLOCK_MONOTONIC `at_ns`, but not past `deadline_ns`.
fn sleep_until_ns(at_ns: u64, deadline_ns: u64) {
    let at_ns = at_ns.min(deadline_ns);
    let ts = libc::timespec {
        tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec; a NULL remainder is allowed.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// Sleeps `ns`, but not past `deadline_ns`.
fn sleep_ns(ns: u64, deadline_ns: u64) {
    sleep_until_ns(monotonic_ns() + ns, deadline_ns);
}

/// The first moment at least `after_ns` from now that lies `offset_ns` into a burst.
fn in_a_burst(epoch_ns: u64, after_ns: u64, offset_ns: u64) -> u64 {
    let earliest = monotonic_ns() + after_ns;
    let k = (earliest.saturating_sub(epoch_ns) / BURST_EVERY_NS) + 1;
    epoch_ns + k * BURST_EVERY_NS + offset_ns
}

/// Policy first, CPU second (see `Spinner::spawn`); counts the outcome.
///
/// # Safety
/// `counters` points to the live shared mapping.
unsafe fn take_place(attr: &SchedAttr, cpus: &libc::cpu_set_t, counters: &SleeperCounters) -> bool {
    let ok = libc::syscall(
        libc::SYS_sched_setattr,
        0,
        attr as *const SchedAttr,
        0 as libc::c_uint,
    ) == 0
        && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpus) == 0;
    if ok {
        counters.ready.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.setup_failures.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

extern "C" fn sleeper_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: arg is a ThreadPlan of the child's copy of the plans, alive until the child
    // exits; the counters mapping too.
    let (plan, counters) = unsafe {
        let plan = &*(arg as *const ThreadPlan);
        (plan, &*plan.counters)
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated 16-byte name.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            plan.name.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: see above.
    if !unsafe { take_place(&plan.attr, &plan.cpus, counters) } {
        return std::ptr::null_mut();
    }
    let mut rng = plan.seed;
    while monotonic_ns() < plan.deadline_ns {
        match plan.kind {
            Kind::Short => {
                sleep_ns(random_in(&mut rng, SHORT_SLEEP_NS), plan.deadline_ns);
                spin_for(random_in(&mut rng, SPIN_NS));
                counters.short_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Long => {
                let wake_ns = in_a_burst(
                    plan.epoch_ns,
                    random_in(&mut rng, LONG_SLEEP_NS),
                    random_in(&mut rng, (0, BURST_SPIN_NS - 5_000_000)),
                );
                sleep_until_ns(wake_ns, plan.deadline_ns);
                spin_for(random_in(&mut rng, SPIN_NS));
                counters.long_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Other => {
                sleep_ns(random_in(&mut rng, OTHER_SLEEP_NS), plan.deadline_ns);
                spin_for(random_in(&mut rng, SPIN_NS));
                counters.other_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Burst => {
                sleep_until_ns(in_a_burst(plan.epoch_ns, 0, 0), plan.deadline_ns);
                spin_for(BURST_SPIN_NS.min(plan.deadline_ns.saturating_sub(monotonic_ns())));
                counters.bursts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    std::ptr::null_mut()
}

extern "C" fn churn_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: PR_SET_NAME reads a NUL-terminated 16-byte name; arg is its static name.
    unsafe { libc::prctl(libc::PR_SET_NAME, arg as libc::c_ulong, 0, 0, 0) };
    spin_for(SPIN_NS.0 * 2);
    std::ptr::null_mut()
}

static CHURN_NAME: [u8; 16] = *b"stv_churn\0\0\0\0\0\0\0";

/// Creates a thread with a small stack; `None` if pthread_create failed.
///
/// # Safety
/// `arg` must stay valid for the thread's life.
unsafe fn create_thread(
    routine: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> Option<libc::pthread_t> {
    let mut attr: libc::pthread_attr_t = std::mem::zeroed();
    libc::pthread_attr_init(&mut attr);
    libc::pthread_attr_setstacksize(&mut attr, STACK_SIZE);
    let mut thread: libc::pthread_t = 0;
    let rc = libc::pthread_create(&mut thread, &attr, routine, arg);
    libc::pthread_attr_destroy(&mut attr);
    (rc == 0).then_some(thread)
}

/// Body of the forked workload: start the planned threads, report, churn until the deadline,
/// join, exit.
#[allow(clippy::too_many_arguments)]
unsafe fn sleepers_child(
    plans: &[ThreadPlan],
    churn_attr: &SchedAttr,
    cpus: &libc::cpu_set_t,
    churn_batch: usize,
    deadline_ns: u64,
    counters: *const SleeperCounters,
    report_fd: libc::c_int,
    parent: libc::pid_t,
) -> ! {
    let counters = &*counters;
    // Never outlive a test process that was SIGKILLed.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    if libc::getppid() != parent {
        libc::_exit(1);
    }
    libc::prctl(
        libc::PR_SET_NAME,
        c"stv_sleepers".as_ptr() as libc::c_ulong,
        0,
        0,
        0,
    );
    let mut threads = [0 as libc::pthread_t; 256];
    let mut started = 0;
    for plan in plans.iter().take(threads.len()) {
        let arg = plan as *const ThreadPlan as *mut libc::c_void;
        match create_thread(sleeper_thread, arg) {
            Some(t) => {
                threads[started] = t;
                started += 1;
            }
            None => {
                counters.create_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let ready = super::STEP_READY;
    libc::write(report_fd, (&ready as *const u8).cast(), 1);
    libc::close(report_fd);
    if take_place(churn_attr, cpus, counters) {
        let mut batch = [0 as libc::pthread_t; MAX_CHURN_BATCH];
        while monotonic_ns() < deadline_ns {
            let mut created = 0;
            for slot in batch.iter_mut().take(churn_batch) {
                match create_thread(churn_thread, CHURN_NAME.as_ptr() as *mut libc::c_void) {
                    Some(t) => {
                        *slot = t;
                        created += 1;
                    }
                    None => {
                        counters.create_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for t in &batch[..created] {
                libc::pthread_join(*t, std::ptr::null_mut());
            }
            counters
                .churned
                .fetch_add(created as u64, Ordering::Relaxed);
            sleep_ns(CHURN_PAUSE_NS, deadline_ns);
        }
    }
    for t in &threads[..started] {
        libc::pthread_join(*t, std::ptr::null_mut());
    }
    libc::_exit(0)
}
