//! Benchmark, not a test: prints the figures quoted in closing notes. Run as root:
//! `cargo bench --bench figures` (`STALLD_BENCH_IDLE_S` shortens the 60 s idle measurement,
//! `STALLD_BENCH_BACKENDS=queue_track,procfs` limits the backends measured, `STALLD_BENCH_ONLY=bpf`
//! the sections run, `STALLD_UPSTREAM_BIN` names an upstream stalld to measure beside ours).
//! Uses the end-to-end harness, so the same safety rules hold: bounded hogs on CPU 1, RT
//! throttling saved and restored, every child killed.

#[path = "../common/mod.rs"]
mod common;

use std::ffi::CString;
use std::thread;
use std::time::{Duration, Instant};

use common::{e2e_begin, Daemon, Scenario, TEST_CPU, VICTIM_NAME};
use stalld::backend::procfs::ProcfsBackend;
use stalld::backend::sched_debug::SchedDebugBackend;
use stalld::backend::{Backend, Snapshot};
use stalld::cpuset::CpuSet;

const THRESHOLD: Duration = Duration::from_secs(3);
const RESCUES: usize = 10;
/// Every backend, as `-b` takes them.
const BACKENDS: [&str; 3] = ["queue_track", "sched_debug", "procfs"];
const PARSE_ROUNDS: u32 = 2_000;
const PROCFS_ROUNDS: u32 = 500;
const FIXTURES: [&str; 4] = ["6.1-debian", "6.12-debian", "6.12-rt-debian", "6.18-host"];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if section("size") {
        binary_size();
    }
    if section("parse") {
        parse_times();
        procfs_sample_time();
        worst_samples();
    }
    if section("threads") {
        cost_with_sleeping_threads();
        daemons_with_threads();
    }
    #[cfg(feature = "bpf")]
    if section("bpf") {
        bpf_program_costs();
        bpf_cost_by_waiting_tasks();
        bpf_idle_cost();
    }
    if !section("backends") {
        return;
    }
    let only = std::env::var("STALLD_BENCH_BACKENDS").unwrap_or_default();
    for backend in BACKENDS {
        if only.is_empty() || only.split(',').any(|b| b == backend) {
            detection_latency(backend);
            idle_cost(backend);
        }
    }
}

/// Whether `STALLD_BENCH_ONLY` (a comma-separated list of `size`, `parse`, `threads`, `bpf`,
/// `backends`; every section when unset) selects `name`.
fn section(name: &str) -> bool {
    std::env::var("STALLD_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|s| s.trim() == name))
}

fn binary_size() {
    let musl = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/x86_64-unknown-linux-musl/release/stalld"
    );
    for path in [musl, env!("CARGO_BIN_EXE_stalld")] {
        if let Ok(meta) = std::fs::metadata(path) {
            println!("binary size: {} bytes ({path})", meta.len());
        }
    }
}

fn mean_sample_us(backend: &mut impl Backend, cpus: u32, rounds: u32) -> f64 {
    let mut snapshot = Snapshot::new(0..cpus);
    let started = Instant::now();
    for _ in 0..rounds {
        backend.sample(&mut snapshot).expect("sample");
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn parse_times() {
    for kernel in FIXTURES {
        let path = format!(
            "{}/tests/fixtures/{kernel}/sched_debug.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut backend = SchedDebugBackend::open_path(&CString::new(path).unwrap()).unwrap();
        let us = mean_sample_us(&mut backend, 4, PARSE_ROUNDS);
        println!("parse {kernel:>15}: {us:8.1} us per sample ({size} bytes, file read included)");
    }
    if let Ok(mut backend) = SchedDebugBackend::open() {
        let us = mean_sample_us(
            &mut backend,
            stalld::sys::process::configured_cpus(),
            PARSE_ROUNDS,
        );
        println!(
            "parse {:>15}: {us:8.1} us per sample (kernel generates the text)",
            "live file"
        );
    }
}

/// One procfs sample of every CPU: every thread's stat, every runnable thread's sched.
fn procfs_sample_time() {
    let cpus = stalld::sys::process::configured_cpus();
    let mut backend = match ProcfsBackend::open(&CpuSet::all(cpus)) {
        Ok(backend) => backend,
        Err(e) => {
            println!("procfs sample: skipped ({e})");
            return;
        }
    };
    let us = mean_sample_us(&mut backend, cpus, PROCFS_ROUNDS);
    let stats = backend.stats();
    println!(
        "procfs sample: {us:8.1} us per sample, all {cpus} CPUs ({} threads, {} runnable; \
         {:.2} us per thread)",
        stats.threads,
        stats.runnable,
        us / f64::from(stats.threads.max(1))
    );
}

/// Sleeping threads the polled backends' cost is measured with (the 3,000).
const EXTRA_THREADS: usize = 3_000;
const THREAD_ROUNDS: u32 = 100;

/// CPU time (this thread's, kernel time included) of one sample of CPU 1 alone, without and
/// with [`EXTRA_THREADS`] more sleeping threads on the machine, first with their default
/// affinity, then pinned to CPU 0, as `isolcpus` keeps every thread not meant for the
/// isolated CPUs: what makes the polled backends' cost grow with all tasks, not the waiting.
fn cost_with_sleeping_threads() {
    let cpus = stalld::sys::process::configured_cpus();
    if cpus < 2 {
        return println!("threads: skipped (one CPU)");
    }
    let monitored = CpuSet::parse("1", cpus).unwrap();
    let measure = |label: &str| {
        let sample_ns = |backend: &mut dyn FnMut(&mut Snapshot)| {
            let mut snapshot = Snapshot::new(1..2);
            backend(&mut snapshot);
            let before = thread_cpu_ns();
            for _ in 0..THREAD_ROUNDS {
                backend(&mut snapshot);
            }
            (thread_cpu_ns() - before) as f64 / f64::from(THREAD_ROUNDS)
        };
        let sched_debug = SchedDebugBackend::open()
            .ok()
            .map(|mut backend| sample_ns(&mut |s| backend.sample(s).map(drop).expect("sample")));
        let mut procfs = ProcfsBackend::open(&monitored).expect("procfs backend");
        let procfs_ns = sample_ns(&mut |s| procfs.sample(s).map(drop).expect("sample"));
        let stats = procfs.stats();
        println!(
            "threads {label:>34}: sched_debug {} per sample; procfs {:.0} us per sample \
             ({} threads listed, {} left unread by their affinity)",
            sched_debug.map_or("unreadable".into(), |ns| format!("{:.0} us", ns / 1e3)),
            procfs_ns / 1e3,
            stats.threads,
            stats.kept_off
        );
    };
    measure("no extra threads");
    for pin_to in [None, Some(0usize)] {
        let sleepers = SleepingThreads::spawn(EXTRA_THREADS, pin_to);
        measure(&match pin_to {
            None => format!("{EXTRA_THREADS} sleeping, any CPU"),
            Some(cpu) => format!("{EXTRA_THREADS} sleeping, pinned to CPU {cpu}"),
        });
        drop(sleepers);
    }
}

/// Threads of this process that sleep until dropped, `pin_to` one CPU or with the default
/// affinity.
struct SleepingThreads {
    release: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl SleepingThreads {
    fn spawn(count: usize, pin_to: Option<usize>) -> SleepingThreads {
        let release =
            std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let threads = (0..count)
            .map(|_| {
                let release = release.clone();
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _pin = pin_to.map(|cpu| {
                            common::ThreadAffinityGuard::pin(cpu).expect("pin a sleeper")
                        });
                        let (released, wake) = &*release;
                        let mut released = released.lock().unwrap();
                        while !*released {
                            released = wake.wait(released).unwrap();
                        }
                    })
                    .expect("spawn a sleeper")
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        SleepingThreads { release, threads }
    }
}

impl Drop for SleepingThreads {
    fn drop(&mut self) {
        *self.release.0.lock().unwrap() = true;
        self.release.1.notify_all();
        self.threads.drain(..).for_each(|t| t.join().unwrap());
    }
}

/// Where [`daemons_with_threads`] finds upstream stalld (built without BPF: its sched_debug
/// backend).
const UPSTREAM_ENV: &str = "STALLD_UPSTREAM_BIN";

/// Daemon CPU time per minute (every thread's, kernel time included) with [`EXTRA_THREADS`]
/// sleeping threads on the machine and CPU 1, the one monitored (`-c 1`, defaults otherwise),
/// kept busy by a SCHED_OTHER spinner so that idle detection never skips a pass: each backend
/// of ours and, in the same run, upstream's stalld named by `STALLD_UPSTREAM_BIN` (built without
/// BPF, so its sched_debug backend).
fn daemons_with_threads() {
    let Some(_env) = e2e_begin("bench daemons_with_threads") else {
        return;
    };
    let window = Duration::from_secs(idle_seconds());
    let upstream = std::env::var(UPSTREAM_ENV).ok();
    let runs = 4;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        // Bounded by itself: four runs (ours and upstream), windows and startups, then it exits.
        let deadline = Instant::now() + (window + Duration::from_secs(10)) * runs;
        thread::spawn(move || {
            let _pin = common::ThreadAffinityGuard::pin(TEST_CPU).expect("pin the busy loop");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                std::hint::spin_loop();
            }
        })
    };
    let sleepers = SleepingThreads::spawn(EXTRA_THREADS, None);
    let measure = |label: &str, bin: &str, args: &[&str]| {
        let mut daemon = Daemon::spawn_program(bin, args, &[], common::sandbox::Sandbox::NONE);
        thread::sleep(Duration::from_secs(3));
        let pid = daemon.pid();
        let before = process_cpu_ns(pid);
        thread::sleep(window);
        let used = process_cpu_ns(pid).saturating_sub(before);
        daemon.terminate(Duration::from_secs(5));
        let per_minute_ms = used as f64 / 1e6 * 60.0 / window.as_secs_f64();
        println!(
            "daemons with {EXTRA_THREADS} sleeping threads, busy CPU 1: {label:>22}: {per_minute_ms:7.1} ms \
             CPU per minute"
        );
        per_minute_ms
    };
    let ours = common::daemon_bin();
    let costs: Vec<(&str, f64)> = BACKENDS
        .iter()
        .map(|&b| (b, measure(b, &ours, &["-f", "-c", "1", "-b", b])))
        .collect();
    if let Some(upstream) = upstream {
        // `-F`: in its default DEADLINE mode upstream exits when it cannot turn HRTICK on
        // (lockdown here); with `-F` it boosts with SCHED_FIFO in its adaptive mode.
        let theirs = measure("upstream sched_debug", &upstream, &["-f", "-c", "1", "-F"]);
        for (backend, cost) in costs {
            println!(
                "daemons with {EXTRA_THREADS} sleeping threads, busy CPU 1: {backend} costs {:.2} \
                 of upstream's sched_debug",
                cost / theirs.max(f64::MIN_POSITIVE)
            );
        }
    } else {
        println!("daemons with threads: {UPSTREAM_ENV} not set, upstream not measured");
    }
    drop(sleepers);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().expect("busy loop");
}

/// CPU time of every thread of `pid`, ns (the first field of each `schedstat`).
fn process_cpu_ns(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| common::cpu_time_ns(tid).ok())
        .sum()
}

/// This thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`): what a CPU budget counts.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Mean and worst CPU time of one sample of every CPU (the bulk of a pass), what the daemon's
/// own budget (`protect.rs`, `--self_runtime`) must hold with headroom.
fn worst_samples() {
    let cpus = stalld::sys::process::configured_cpus();
    let all = CpuSet::all(cpus);
    let report = |name: &str, backend: &mut dyn FnMut(&mut Snapshot)| {
        let mut snapshot = Snapshot::new(0..cpus);
        let (mut worst_ns, mut total_ns) = (0u64, 0u64);
        for _ in 0..PROCFS_ROUNDS {
            let before = thread_cpu_ns();
            backend(&mut snapshot);
            let took = thread_cpu_ns() - before;
            worst_ns = worst_ns.max(took);
            total_ns += took;
        }
        println!(
            "{name}: sample CPU time over {PROCFS_ROUNDS} samples of all {cpus} CPUs: mean \
             {:.1} us, worst {:.1} us",
            total_ns as f64 / 1e3 / f64::from(PROCFS_ROUNDS),
            worst_ns as f64 / 1e3
        );
    };
    if let Ok(mut backend) = SchedDebugBackend::open() {
        report("sched_debug", &mut |s| {
            backend.sample(s).map(drop).expect("sample")
        });
    }
    if let Ok(mut backend) = ProcfsBackend::open(&all) {
        report("procfs", &mut |s| {
            backend.sample(s).map(drop).expect("sample")
        });
    }
    #[cfg(feature = "bpf")]
    if let Ok(mut backend) = stalld::backend::queue_track::QueueTrackBackend::open(&all) {
        report("queue_track", &mut |s| {
            backend.sample(s).map(drop).expect("sample")
        });
    }
}

/// Boost line time minus the threshold, over several independent rescues.
fn detection_latency(backend: &str) {
    let Some(_env) = e2e_begin("bench detection_latency") else {
        return;
    };
    let mut late_ms = Vec::new();
    for _ in 0..RESCUES {
        let daemon = Daemon::spawn(&["-f", "-v", "-c", "1", "-t", "3", "-d", "1", "-b", backend]);
        daemon
            .wait_for_line(" backend", Duration::from_secs(10))
            .expect("daemon started");
        let lifetime = THRESHOLD + Duration::from_secs(3);
        let scenario = Scenario::start(lifetime, lifetime);
        let pattern = format!(
            "boosted pid {} ({VICTIM_NAME}) (cpu {TEST_CPU})",
            scenario.victim.pid
        );
        let boosted = daemon.wait_for_line(&pattern, THRESHOLD + Duration::from_secs(3));
        let threshold_at = scenario.t_hog + THRESHOLD;
        match boosted {
            Some((at, _)) => {
                let late = if at >= threshold_at {
                    (at - threshold_at).as_secs_f64() * 1e3
                } else {
                    -(threshold_at - at).as_secs_f64() * 1e3
                };
                late_ms.push(late);
            }
            None => println!("rescue missed:\n{}", daemon.transcript()),
        }
        drop(scenario);
        drop(daemon);
    }
    late_ms.sort_by(f64::total_cmp);
    println!(
        "{backend}: detection latency past the threshold over {} rescues: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        late_ms.len(),
        late_ms.first().copied().unwrap_or(f64::NAN),
        late_ms.get(late_ms.len() / 2).copied().unwrap_or(f64::NAN),
        late_ms.last().copied().unwrap_or(f64::NAN),
    );
}

fn status_kb(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// How long an idle measurement lasts: `STALLD_BENCH_IDLE_S`, 60 s by default.
fn idle_seconds() -> u64 {
    std::env::var("STALLD_BENCH_IDLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Daemon CPU time on an idle machine with the default settings, and its memory.
fn idle_cost(backend: &str) {
    let Some(_env) = e2e_begin("bench idle_cost") else {
        return;
    };
    let idle_s = idle_seconds();
    let mut daemon = Daemon::spawn(&["-f", "-v", "-b", backend]);
    daemon
        .wait_for_line("monitoring CPUs", Duration::from_secs(10))
        .expect("daemon started");
    let pid = daemon.pid();
    let startup_ns = common::cpu_time_ns(pid).expect("daemon schedstat");
    let passes_before = daemon.lines_containing("checking cpu").len();
    thread::sleep(Duration::from_secs(idle_s));
    let idle_ns = common::cpu_time_ns(pid).expect("daemon schedstat") - startup_ns;
    let cpus = stalld::sys::process::configured_cpus() as usize;
    let passes = (daemon.lines_containing("checking cpu").len() - passes_before) / cpus.max(1);
    println!(
        "{backend}: startup CPU time: {:.3} ms",
        startup_ns as f64 / 1e6
    );
    println!(
        "{backend}: idle CPU time: {:.3} ms per minute, {passes} passes in {idle_s} s (defaults: all CPUs, -t 20)",
        idle_ns as f64 / 1e6 * 60.0 / idle_s as f64
    );
    println!(
        "{backend}: memory: peak RSS {} kB, RSS {} kB, locked {} kB",
        status_kb(pid, "VmHWM:"),
        status_kb(pid, "VmRSS:"),
        status_kb(pid, "VmLck:")
    );
    daemon.terminate(Duration::from_secs(2));
}

/// Samples taken in [`bpf_program_costs`], to measure the task iterator.
#[cfg(feature = "bpf")]
const ITERATOR_SAMPLES: u32 = 100;

/// Kernel-measured cost of each queue_track program per event (`bpf_stats_enabled`), under a
/// load that wakes, switches, migrates, creates and ends tasks; the daemon's own copy of the
/// programs is loaded in this process.
#[cfg(feature = "bpf")]
fn bpf_program_costs() {
    use stalld::backend::queue_track::QueueTrackBackend;
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

    let nr_cpus = stalld::sys::process::configured_cpus();
    let cpus = stalld::cpuset::CpuSet::all(nr_cpus);
    let mut backend = match QueueTrackBackend::open(&cpus) {
        Ok(b) => b,
        Err(e) => return println!("queue_track: cannot load: {e}"),
    };
    let saved = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    if std::fs::write(STATS, "1").is_err() {
        return println!("queue_track: cannot enable {STATS}");
    }
    let started = Instant::now();
    wakeup_load(Duration::from_secs(3));
    // The iterator runs once per sample and once per task in it: its "runs" are task visits.
    let mut snapshot = Snapshot::new(cpus.iter());
    let sampled = Instant::now();
    for _ in 0..ITERATOR_SAMPLES {
        backend.sample(&mut snapshot).expect("sample");
    }
    println!(
        "queue_track: {:.0} us per sample (wall), {ITERATOR_SAMPLES} samples",
        sampled.elapsed().as_secs_f64() * 1e6 / f64::from(ITERATOR_SAMPLES)
    );
    // A due task confirmed between two samples instead: two small /proc files per task, of
    // a thread that sleeps meanwhile (its counts stay, so both files are read every time).
    let (sender, receiver) = std::sync::mpsc::channel();
    let sleeper = thread::spawn(move || {
        sender.send(rustix::thread::gettid()).unwrap();
        thread::sleep(Duration::from_secs(1));
    });
    let tid = receiver.recv().unwrap().as_raw_nonzero().get();
    thread::sleep(Duration::from_millis(100));
    let task = stalld::backend::WaitingTask {
        tid,
        comm: stalld::task::Comm::new(b"sleeper"),
        switches: 0,
        prio: 120,
        waiting_since_ns: Some(0),
        run_counts: stalld::sys::proc_files::read_schedstat(tid),
    };
    let cpu = stalld::sys::proc_files::read_stat(tid).unwrap().processor;
    let checked = Instant::now();
    for _ in 0..ITERATOR_SAMPLES {
        assert_eq!(backend.still_waiting(cpu, &task), Some(true));
    }
    println!(
        "queue_track: {:.1} us per due task confirmed without a sample (/proc/<tid>/schedstat \
         and stat)",
        checked.elapsed().as_secs_f64() * 1e6 / f64::from(ITERATOR_SAMPLES)
    );
    sleeper.join().unwrap();
    let elapsed = started.elapsed();
    let stats = backend.program_stats();
    let _ = std::fs::write(STATS, saved.trim());
    for s in stats {
        println!(
            "queue_track BPF {:>18}: {:>8} runs in {:.1} s, {:>6.0} ns per run, {:>6} \
             instructions verified",
            s.tracepoint,
            s.runs,
            elapsed.as_secs_f64(),
            s.run_time_ns as f64 / s.runs.max(1) as f64,
            s.verified_insns
        );
    }
}

/// `/proc/sys/kernel/bpf_stats_enabled` set to 1 while it lives, its previous value restored
/// when dropped.
#[cfg(feature = "bpf")]
struct BpfStatsGuard(String);

#[cfg(feature = "bpf")]
impl BpfStatsGuard {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Option<BpfStatsGuard> {
        let saved = std::fs::read_to_string(Self::PATH).ok()?;
        std::fs::write(Self::PATH, "1").ok()?;
        Some(BpfStatsGuard(saved.trim().to_owned()))
    }
}

#[cfg(feature = "bpf")]
impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// Runs and run time (ns) summed over the tracepoint programs.
#[cfg(feature = "bpf")]
fn total_runs(stats: &[stalld::backend::queue_track::ProgramStats]) -> (u64, u64) {
    stats
        .iter()
        .fold((0, 0), |(runs, ns), s| (runs + s.runs, ns + s.run_time_ns))
}

/// BPF cost per event with 0, 16, 64 and 127 tasks waiting on CPU 1: a FIFO 50 thread of this
/// process spins 250 us and sleeps 250 us on CPU 1 (about 4,000 switches a second), behind it
/// N forked FIFO 1 spinners wait (one of them runs while the hog sleeps). The cost must not
/// grow with N.
#[cfg(feature = "bpf")]
fn bpf_cost_by_waiting_tasks() {
    use common::{sched_setattr, SchedAttr, Spinner, SpinnerSpec};
    use stalld::backend::queue_track::QueueTrackBackend;
    const WINDOW: Duration = Duration::from_secs(3);

    let Some(_env) = e2e_begin("bench bpf_cost_by_waiting_tasks") else {
        return;
    };
    let nr_cpus = stalld::sys::process::configured_cpus();
    let backend = match QueueTrackBackend::open(&CpuSet::all(nr_cpus)) {
        Ok(b) => b,
        Err(e) => return println!("queue_track: cannot load: {e}"),
    };
    let Some(_stats) = BpfStatsGuard::enable() else {
        return println!("queue_track: cannot enable {}", BpfStatsGuard::PATH);
    };
    for waiting in [0usize, 16, 64, 127] {
        let lifetime = WINDOW + Duration::from_secs(15);
        let hog = thread::spawn(move || periodic_hog(lifetime));
        thread::sleep(Duration::from_millis(50));
        let mut spinners = Vec::with_capacity(waiting);
        for _ in 0..waiting {
            // Above the hog to reach CPU 1, then FIFO 1: it waits from then on.
            let spinner = Spinner::spawn(SpinnerSpec {
                name: "stv_waiter",
                fifo_priority: 51,
                cpu: TEST_CPU,
                lifetime,
            })
            .expect("start a waiting task");
            sched_setattr(spinner.pid, &SchedAttr::fifo(1)).expect("FIFO 1");
            spinners.push(spinner);
        }
        thread::sleep(Duration::from_millis(200));
        let (runs0, ns0) = total_runs(&backend.program_stats());
        thread::sleep(WINDOW);
        let stats = backend.program_stats();
        let (runs1, ns1) = total_runs(&stats);
        let runs = runs1 - runs0;
        println!(
            "queue_track BPF with {waiting:>3} tasks waiting on CPU {TEST_CPU}: {:>6.0} ns per event \
             ({runs} events in {:.0} s, all programs)",
            (ns1 - ns0) as f64 / runs.max(1) as f64,
            WINDOW.as_secs_f64()
        );
        drop(spinners);
        hog.join().expect("hog thread");
    }
}

/// A SCHED_FIFO 50 thread on CPU 1 that spins 250 us and sleeps 250 us until `lifetime` ends.
#[cfg(feature = "bpf")]
fn periodic_hog(lifetime: Duration) {
    use common::{sched_setattr, SchedAttr, ThreadAffinityGuard};
    let _pin = ThreadAffinityGuard::pin(TEST_CPU).expect("pin the hog to CPU 1");
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    sched_setattr(tid, &SchedAttr::fifo(50)).expect("hog FIFO 50");
    let deadline = Instant::now() + lifetime;
    while Instant::now() < deadline {
        let spin_until = Instant::now() + Duration::from_micros(250);
        while Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        thread::sleep(Duration::from_micros(250));
    }
}

/// Kernel time of the daemon's BPF programs on an idle machine with the default options, per
/// minute (`run_time_ns` and `run_cnt` in the fdinfo of its program descriptors).
#[cfg(feature = "bpf")]
fn bpf_idle_cost() {
    let Some(_env) = e2e_begin("bench bpf_idle_cost") else {
        return;
    };
    let idle_s = idle_seconds();
    let mut daemon = Daemon::spawn(&["-f", "-v", "-b", "queue_track"]);
    daemon
        .wait_for_line("monitoring CPUs", Duration::from_secs(10))
        .expect("daemon started");
    let Some(stats) = BpfStatsGuard::enable() else {
        return println!("queue_track: cannot enable {}", BpfStatsGuard::PATH);
    };
    let (runs0, ns0) = daemon_bpf_runs(daemon.pid());
    thread::sleep(Duration::from_secs(idle_s));
    let (runs1, ns1) = daemon_bpf_runs(daemon.pid());
    drop(stats);
    let per_minute = 60.0 / idle_s as f64;
    let runs = runs1 - runs0;
    println!(
        "queue_track BPF idle: {:.2} ms kernel time per minute, {:.0} runs per minute, {:.0} ns \
         per run (defaults, {idle_s} s)",
        (ns1 - ns0) as f64 / 1e6 * per_minute,
        runs as f64 * per_minute,
        (ns1 - ns0) as f64 / runs.max(1) as f64
    );
    daemon.terminate(Duration::from_secs(2));
    bpf_idle_cost_by_program(idle_s);
}

/// The same idle cost per program: the programs loaded in this process (the daemon's
/// descriptors carry no names), monitoring every CPU as the defaults do, over `idle_s`.
#[cfg(feature = "bpf")]
fn bpf_idle_cost_by_program(idle_s: u64) {
    use stalld::backend::queue_track::QueueTrackBackend;
    let nr_cpus = stalld::sys::process::configured_cpus();
    let Ok(backend) = QueueTrackBackend::open(&CpuSet::all(nr_cpus)) else {
        return println!("queue_track: cannot load in the bench");
    };
    let Some(stats) = BpfStatsGuard::enable() else {
        return;
    };
    let before = backend.program_stats();
    thread::sleep(Duration::from_secs(idle_s));
    let after = backend.program_stats();
    drop(stats);
    let per_minute = 60.0 / idle_s as f64;
    for (a, b) in after.iter().zip(&before) {
        let (runs, ns) = (a.runs - b.runs, a.run_time_ns - b.run_time_ns);
        println!(
            "queue_track BPF idle {:>18}: {:7.0} runs per minute, {:5.0} ns per run, {:5.2} ms \
             per minute",
            a.tracepoint,
            runs as f64 * per_minute,
            ns as f64 / runs.max(1) as f64,
            ns as f64 / 1e6 * per_minute
        );
    }
}

/// Runs and run time (ns) of every BPF program `pid` holds, from its descriptors' fdinfo.
#[cfg(feature = "bpf")]
fn daemon_bpf_runs(pid: i32) -> (u64, u64) {
    let mut seen = Vec::new();
    let (mut runs, mut ns) = (0, 0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(time), Some(count)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        if !seen.contains(&id) {
            seen.push(id);
            runs += count;
            ns += time;
        }
    }
    (runs, ns)
}

/// Two threads passing a token back and forth (wakeups, switches), one thread hopping between
/// CPUs 0 and 1 (migrations) and short-lived threads (new tasks, exits), for `duration`.
#[cfg(feature = "bpf")]
fn wakeup_load(duration: Duration) {
    use std::sync::mpsc;
    let deadline = Instant::now() + duration;
    let (ping_tx, ping_rx) = mpsc::sync_channel::<()>(0);
    let (pong_tx, pong_rx) = mpsc::sync_channel::<()>(0);
    let ponger = thread::spawn(move || {
        while ping_rx.recv().is_ok() {
            if pong_tx.send(()).is_err() {
                break;
            }
        }
    });
    let hopper = thread::spawn(move || {
        let mut cpu = 0;
        while Instant::now() < deadline {
            // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays inside it (cpu is 0 or 1).
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
            }
            cpu ^= 1;
            thread::sleep(Duration::from_micros(200));
        }
    });
    let mut spawned = 0u32;
    while Instant::now() < deadline {
        for _ in 0..100 {
            if ping_tx.send(()).is_err() || pong_rx.recv().is_err() {
                break;
            }
        }
        thread::spawn(|| ()).join().unwrap();
        spawned += 1;
    }
    drop(ping_tx);
    ponger.join().unwrap();
    hopper.join().unwrap();
    println!("queue_track BPF load: {spawned} short-lived threads, token ping-pong, CPU hopping");
}
