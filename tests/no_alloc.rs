//! Proves the monitor loop allocates nothing after startup: 1,000 passes over a fixture-fed
//! sched_debug backend, over the real sched_debug file, over the real queue_track BPF iterator
//! and over the live `/proc` (procfs backend), under a counting global allocator, with the
//! systemd watchdog keep-alives sent as the daemon's loop sends them; and that logging to every
//! sink (stderr, kmsg, ring file, syslog) and notifying systemd allocate nothing either, nor do
//! boosts and restores of a real task with the boost journal (identity check included), nor
//! the pokes that end a boost's runtime where the daemon keeps its budget.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use stalld::backend::procfs::ProcfsBackend;
use stalld::backend::sched_debug::SchedDebugBackend;
use stalld::backend::{Backend, Snapshot};
use stalld::boost::{BoostParams, BoostPolicy, Booster, KernelScheduler};
use stalld::boost_budget::BudgetEnforcement;
use stalld::cpuset::CpuSet;
use stalld::ignore::IgnoreList;
use stalld::journal::{Journal, JOURNAL_FILE};
use stalld::log::ring::Ring;
use stalld::log::{Log, LogSinks, Logger};
use stalld::monitor::{Monitor, MonitorSettings, MonitorStats};
use stalld::sys::notify::{parse_address, Notifier};
use stalld::task::Comm;

/// Counts allocations made by threads that switched counting on (the test harness's own
/// threads allocate too, and must not be counted).
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ABORT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if ABORT.load(Ordering::Relaxed) {
            std::process::abort();
        }
    }
}

/// How many allocations `work` made on this thread.
fn allocations_in(work: impl FnOnce()) -> u64 {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const PASSES: u64 = 1_000;
const S: u64 = 1_000_000_000;

/// [`counted_loop`]'s allocations.
fn allocations_in_loop<B: Backend>(
    backend: B,
    cpus: CpuSet,
    idle_detection: bool,
    start_ns: u64,
) -> u64 {
    counted_loop(backend, cpus, idle_detection, start_ns).0
}

/// Runs `PASSES` loop passes (after one warm-up pass) and returns the allocations they made,
/// and the loop's counts. The loop's clock starts at `start_ns` and runs faster than real
/// time: each step jumps to the loop's next wake-up, at most `S / 2` ahead.
fn counted_loop<B: Backend>(
    backend: B,
    cpus: CpuSet,
    idle_detection: bool,
    start_ns: u64,
) -> (u64, MonitorStats) {
    let settings = MonitorSettings {
        threshold_ns: S,
        poll_interval_ns: S / 2,
        granularity_ns: S,
        log_only: true,
        idle_detection,
        ignore_threads: IgnoreList::parse("^kworker").unwrap(),
        ignore_processes: IgnoreList::parse("^nothing-matches$").unwrap(),
        dl_server_cpus: CpuSet::empty(),
    };
    let boost = BoostParams {
        policy: BoostPolicy::Deadline,
        runtime_ns: 20_000,
        period_ns: S,
        duration_ns: S,
        fifo_priority: 98,
        budget: BudgetEnforcement::Kernel,
    };
    // Every line is formatted and written (verbose, to a kmsg-like sink on /dev/null).
    let sinks = LogSinks {
        stderr: false,
        kmsg: true,
        syslog: false,
        verbose: true,
    };
    let mut logger =
        Logger::open_with_paths(sinks, Path::new("/dev/null"), Path::new("/nonexistent"));
    logger.set_ring(Ring::open(&temp_ring(), 64 * 1024).unwrap());
    let mut monitor = Monitor::new(&cpus, settings, boost, backend, KernelScheduler).unwrap();
    // systemd's watchdog, every quarter second of the loop's clock, to a socket nobody reads
    // (it fills, so the loop also meets the dropped keep-alive).
    let (_listener, mut notifier) = notify_socket(Some(S / 4));
    let mut now_ns = start_ns;
    monitor.step(now_ns, &mut logger);
    notifier.ready("ready", now_ns).unwrap();

    ABORT.store(
        std::env::var_os("ABORT_ON_ALLOC").is_some(),
        Ordering::Relaxed,
    );
    let allocations = allocations_in(|| {
        let passes_before = monitor.stats().passes;
        while monitor.stats().passes - passes_before < PASSES {
            let wake_ns = monitor.step(now_ns, &mut logger);
            let keepalive_ns = notifier.keepalive(now_ns).unwrap();
            now_ns = wake_ns.min(keepalive_ns).clamp(now_ns + 1, now_ns + S / 2);
        }
    });
    assert!(notifier.failures().0 > 0, "the notify socket never filled");
    (allocations, monitor.stats())
}

/// A notifier sending to an abstract socket of its own, which nobody reads, and the socket.
fn notify_socket(
    watchdog_interval_ns: Option<u64>,
) -> (std::os::unix::net::UnixDatagram, Notifier) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "stalld-noalloc-notify-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let listener =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    let address = parse_address(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
    (
        listener,
        Notifier::open(address, watchdog_interval_ns).unwrap(),
    )
}

/// The notifications the loop and shutdown send: keep-alives (going through, then dropped
/// once the socket is full) and `STOPPING=1`.
#[test]
fn no_allocation_notifying_systemd() {
    let (listener, mut notifier) = notify_socket(Some(1_000));
    notifier.ready("ready", 0).unwrap();
    let allocations = allocations_in(|| {
        let mut now_ns = 0;
        for _ in 0..20_000 {
            now_ns = notifier.keepalive(now_ns).unwrap();
        }
        let _ = notifier.stopping();
    });
    assert_eq!(allocations, 0);
    let (failures, _) = notifier.failures();
    assert!(failures > 0 && failures < 20_001, "{failures} failures");
    drop(listener);
}

/// A ring file path of its own for each caller (rings are locked against a second writer).
fn temp_ring() -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stalld-noalloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("ring-{n}"))
}

/// Every sink at once: stderr (a pipe nobody reads, so lines are also dropped and counted),
/// kmsg (repeated lines coalesced, lines over the rate budget counted), the ring file
/// (wrapping many times) and syslog (a socket nobody reads).
#[test]
fn no_allocation_logging_to_every_sink() {
    use std::os::unix::net::UnixDatagram;

    let dir = std::env::temp_dir().join(format!("stalld-noalloc-sinks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let syslog_path = dir.join("log");
    let _ = std::fs::remove_file(&syslog_path);
    let _syslog = UnixDatagram::bind(&syslog_path).unwrap();
    let sinks = LogSinks {
        stderr: true,
        kmsg: true,
        syslog: true,
        verbose: true,
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array; dup/dup2 act on descriptors this test owns, and fd 2 is
    // put back before anything else could rely on it (libtest captures output in memory).
    let saved_stderr = unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let saved = libc::dup(2);
        libc::dup2(fds[1], 2);
        saved
    };
    let mut logger = Logger::open_with_paths(sinks, Path::new("/dev/null"), &syslog_path);
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved_stderr, 2);
        libc::close(saved_stderr);
        libc::close(fds[1]);
    }
    logger.set_ring(Ring::open(&temp_ring(), 16 * 1024).unwrap());
    logger.info(format_args!("warm-up"));

    let allocations = allocations_in(|| {
        for i in 0..20_000u32 {
            match i % 4 {
                0 => logger.info(format_args!(
                    "stv_victim-{i} starved on CPU 1 for {i} seconds"
                )),
                1 => logger.debug(format_args!("checking cpu 1 - rt: 2 - starving: 1")),
                2 => logger.warn(format_args!("the same warning")),
                _ => logger.error(format_args!("cannot boost pid {i}: EPERM")),
            }
            logger.tick();
        }
    });
    assert_eq!(allocations, 0);
    // SAFETY: the read end is ours.
    unsafe { libc::close(fds[0]) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sleeping task to boost and its tid; `None` (the test skipped) unless root.
fn sleeper_to_boost() -> Option<(std::process::Child, i32)> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: boosting a task needs root");
        return None;
    }
    let sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let tid = i32::try_from(sleeper.id()).unwrap();
    // Asleep before it is boosted: one still starting up (a loaded machine) uses its boost's
    // runtime, and the budget test then saw it poked twice instead of every 25 us.
    let stat = format!("/proc/{tid}/stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&stat).unwrap();
        let state = text.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if state == Some(Some('S')) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sleep {tid} not asleep after 5 s: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Some((sleeper, tid))
}

/// 1,000 boosts and restores of a real sleeping task, SCHED_DEADLINE and SCHED_FIFO (with
/// its toggles), each recorded in and cleared from the journal, each restore and toggle after
/// an identity check (a `/proc/<tid>/stat` read and `sched_getattr`).
#[test]
fn no_allocation_boosting_with_the_journal() {
    let Some((mut sleeper, tid)) = sleeper_to_boost() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("stalld-noalloc-journal-{}", std::process::id()));
    let journal = Journal::open(&dir.join(JOURNAL_FILE)).unwrap();
    let mut boosters = [BoostPolicy::Deadline, BoostPolicy::Fifo].map(|policy| {
        Booster::new(BoostParams {
            policy,
            runtime_ns: 20_000_000,
            period_ns: S,
            duration_ns: S,
            fifo_priority: 98,
            budget: BudgetEnforcement::Kernel,
        })
    });
    boosters[0].set_journal(journal);
    boosters[1].set_journal(Journal::open(&dir.join("fifo.journal")).unwrap());
    let mut scheduler = KernelScheduler;
    let comm = Comm::new(b"sleep");
    let mut events = 0u64;

    let allocations = allocations_in(|| {
        for round in 0..1_000u64 {
            let booster = &mut boosters[(round % 2) as usize];
            let now_ns = round * 10 * S;
            booster.boost(&mut scheduler, tid, comm, now_ns).unwrap();
            while let Some(next) = booster.next_deadline_ns() {
                booster.service(&mut scheduler, next, |_| events += 1);
            }
        }
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(events, 1_000, "one restore per boost");
    assert_eq!(allocations, 0);
}

/// A SCHED_DEADLINE boost whose runtime the daemon ends (`BudgetEnforcement::Daemon`, the way
/// under lockdown) of a real sleeping task, in real time: it never uses its runtime, so the
/// booster pokes it (identity check, `sched_setattr`, `/proc/<tid>/schedstat`, journal) all
/// through the first period's poke window, then restores it.
#[test]
fn no_allocation_poking_a_boost_budget() {
    let Some((mut sleeper, tid)) = sleeper_to_boost() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("stalld-noalloc-budget-{}", std::process::id()));
    let mut booster = Booster::new(BoostParams {
        policy: BoostPolicy::Deadline,
        runtime_ns: 20_000,
        period_ns: S,
        duration_ns: S,
        fifo_priority: 98,
        budget: BudgetEnforcement::Daemon,
    });
    booster.set_journal(Journal::open(&dir.join(JOURNAL_FILE)).unwrap());
    let mut scheduler = KernelScheduler;
    let (mut wakes, mut events) = (0u64, 0u64);

    let mut policy = None;
    let allocations = allocations_in(|| {
        let now_ns = stalld::sys::process::monotonic_ns();
        policy = Some(booster.boost(&mut scheduler, tid, Comm::new(b"sleep"), now_ns));
        while let Some(next) = booster.next_deadline_ns() {
            wakes += 1;
            booster.service(&mut scheduler, next, |_| events += 1);
        }
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        policy,
        Some(Ok(BoostPolicy::Deadline)),
        "the kernel refused DEADLINE"
    );
    assert_eq!(events, 1, "one restore");
    // 10 ms of pokes, each one the runtime plus 5 us after the last.
    assert!(wakes > 100, "only {wakes} wake-ups: the task was not poked");
    assert_eq!(allocations, 0);
}

#[test]
fn no_allocation_over_fixture_fed_sched_debug() {
    for kernel in ["6.1-debian", "6.12-debian", "6.12-rt-debian", "6.18-host"] {
        let path = format!(
            "{}/tests/fixtures/{kernel}/sched_debug.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let backend = SchedDebugBackend::open_path(&CString::new(path).unwrap()).unwrap();
        let cpus = CpuSet::all(2);
        assert_eq!(
            allocations_in_loop(backend, cpus, false, 10 * S),
            0,
            "{kernel}"
        );
    }
}

/// The 6.18 fixture with 300 more waiting rows on CPU 1: full queues (the rotation, the
/// overflow log) allocate nothing either.
#[test]
fn no_allocation_over_an_overflowing_sched_debug() {
    let fixture = format!(
        "{}/tests/fixtures/6.18-host/sched_debug.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(fixture).unwrap();
    let row = " R    fx_fifo1_wrk  6020      9336.626892   E           0.674151           \
               1.400000       301.347672         3      98         0.000000         0.000000 \
                       0.000000   0      0        /autogroup-59\n";
    let crowd: String = (0..300)
        .map(|i| row.replace("  6020 ", &format!(" {:>5} ", 30_000 + i)))
        .collect();
    let at = text.find(" R    fx_fifo1_wrk  6020").unwrap();
    let path = std::env::temp_dir().join(format!("stalld-noalloc-crowd-{}", std::process::id()));
    std::fs::write(&path, [&text[..at], &crowd, &text[at..]].concat()).unwrap();
    let mut backend =
        SchedDebugBackend::open_path(&CString::new(path.to_str().unwrap()).unwrap()).unwrap();
    let mut snapshot = Snapshot::new([1].into_iter());
    backend.sample(&mut snapshot).unwrap();
    assert_eq!(snapshot.queues[0].overflowed, 304 - 64);
    let allocations = allocations_in_loop(backend, CpuSet::all(2), false, 10 * S);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(allocations, 0);
}

#[test]
fn no_allocation_over_the_real_sched_debug_file() {
    let backend = match SchedDebugBackend::open() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: no readable sched_debug here: {e}");
            return;
        }
    };
    assert_eq!(backend.name(), "sched_debug");
    let nr_cpus = stalld::sys::process::configured_cpus();
    // Without idle detection every pass samples the file; with it, idle passes skip sampling.
    assert_eq!(
        allocations_in_loop(backend, CpuSet::all(nr_cpus), false, 10 * S),
        0
    );
    let backend = SchedDebugBackend::open().unwrap();
    assert_eq!(
        allocations_in_loop(backend, CpuSet::all(nr_cpus), true, 10 * S),
        0
    );
}

/// The real BPF task iterator, with SCHED_OTHER spinners so that tasks really wait: the loop's
/// fast clock makes their waits due, so the passes also log them, and confirms them between
/// two samples (`/proc/<tid>/schedstat`).
#[cfg(feature = "bpf")]
#[test]
fn no_allocation_over_the_real_queue_track_tables() {
    use stalld::backend::queue_track::QueueTrackBackend;

    let nr_cpus = stalld::sys::process::configured_cpus();
    let cpus = CpuSet::all(nr_cpus);
    let backend = match QueueTrackBackend::open(&cpus) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: queue_track cannot load here: {e}");
            return;
        }
    };
    let (allocations, stats) = with_busy_threads(2 * nr_cpus, || {
        let start_ns = stalld::sys::process::monotonic_ns();
        counted_loop(backend, cpus, false, start_ns)
    });
    assert_eq!(allocations, 0);
    assert!(
        stats.rechecks > 0,
        "no wait was confirmed between two samples"
    );
}

/// Runs `f` while `count` SCHED_OTHER threads spin, so that tasks really wait on every CPU.
fn with_busy_threads<T>(count: u32, f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..count)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let result = f();
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    result
}

/// The live `/proc`, all CPUs, with spinners so that threads really wait: the loop's fast
/// clock makes their waits due, so the passes also log them.
#[test]
fn no_allocation_over_the_live_proc() {
    let nr_cpus = stalld::sys::process::configured_cpus();
    let cpus = CpuSet::all(nr_cpus);
    let backend = ProcfsBackend::open(&cpus).unwrap();
    assert_eq!(backend.name(), "procfs");
    let allocations = with_busy_threads(2 * nr_cpus, || {
        let start_ns = stalld::sys::process::monotonic_ns();
        allocations_in_loop(backend, cpus, false, start_ns)
    });
    assert_eq!(allocations, 0);
    let backend = ProcfsBackend::open(&cpus).unwrap();
    assert_eq!(allocations_in_loop(backend, cpus, true, 10 * S), 0);
}
