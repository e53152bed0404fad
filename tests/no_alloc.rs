//! Proves the monitor loop allocates nothing after startup: 1,000 passes over a fixture-fed
//! sched_debug backend, over the real sched_debug file, over the real queue_track BPF tables
//! and over the live `/proc` (procfs backend), under a counting global allocator; and that
//! logging to every sink (stderr, kmsg, ring file, syslog) allocates nothing either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use stalld::backend::procfs::ProcfsBackend;
use stalld::backend::sched_debug::SchedDebugBackend;
use stalld::backend::Backend;
use stalld::boost::{BoostParams, BoostPolicy, KernelScheduler};
use stalld::boost_budget::BudgetEnforcement;
use stalld::cpuset::CpuSet;
use stalld::ignore::IgnoreList;
use stalld::log::ring::Ring;
use stalld::log::{Log, LogSinks, Logger};
use stalld::monitor::{Monitor, MonitorSettings};

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

/// Runs `PASSES` loop passes (after one warm-up pass) and returns the allocations they made.
/// The loop's clock starts at `start_ns` and runs faster than real time: each step jumps to
/// the loop's next wake-up, at most `S / 2` ahead.
fn allocations_in_loop<B: Backend>(
    backend: B,
    cpus: CpuSet,
    idle_detection: bool,
    start_ns: u64,
) -> u64 {
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
    let mut now_ns = start_ns;
    monitor.step(now_ns, &mut logger);

    ALLOCATIONS.store(0, Ordering::Relaxed);
    ABORT.store(
        std::env::var_os("ABORT_ON_ALLOC").is_some(),
        Ordering::Relaxed,
    );
    COUNTING.with(|c| c.set(true));
    let passes_before = monitor.stats().passes;
    while monitor.stats().passes - passes_before < PASSES {
        now_ns = monitor
            .step(now_ns, &mut logger)
            .clamp(now_ns + 1, now_ns + S / 2);
    }
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed)
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

    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
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
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0);
    // SAFETY: the read end is ours.
    unsafe { libc::close(fds[0]) };
    let _ = std::fs::remove_dir_all(&dir);
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

/// The real BPF tables, with SCHED_OTHER spinners so that tasks really wait: the loop's fast
/// clock makes their waits due, so the passes also re-check them in /proc and log them.
#[cfg(feature = "bpf")]
#[test]
fn no_allocation_over_the_real_queue_track_tables() {
    use stalld::backend::queue_track::QueueTrackBackend;

    let nr_cpus = stalld::sys::process::configured_cpus();
    let cpus = CpuSet::all(nr_cpus);
    let backend = match QueueTrackBackend::open(&cpus, nr_cpus) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: queue_track cannot load here: {e}");
            return;
        }
    };
    let allocations = with_busy_threads(2 * nr_cpus, || {
        let start_ns = stalld::sys::process::monotonic_ns();
        allocations_in_loop(backend, cpus, false, start_ns)
    });
    assert_eq!(allocations, 0);
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
