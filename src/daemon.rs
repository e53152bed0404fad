//! The daemon: startup (may allocate, may fail with a clear message), the monitor loop (one
//! thread, no allocation, no blocking call but the one wait) and shutdown, which restores every
//! boosted task and RT throttling however the loop ends.

use crate::backend::sched_debug::SchedDebugBackend;
use crate::backend::{Backend, Cadence, Snapshot};
use crate::boost::{
    BoostError, BoostEvent, BoostParams, BoostPolicy, Booster, KernelScheduler, Scheduler,
};
use crate::config::{BackendChoice, Config, ThreadingMode, SCHED_FIFO_BOOST_PRIORITY};
use crate::cpuset::CpuSet;
use crate::detect::{CpuVerdict, Tracker, WaitingEntry};
use crate::ignore::IgnoreList;
use crate::log::{LogSinks, Logger};
use crate::sys::process::{self, Pidfile};
use crate::sys::procfs::{self, IdleMonitor};
use crate::sys::sched::{self, SchedAttr};
use crate::sys::signal::SignalWaiter;
use crate::sys::throttling::{RtThrottling, ThrottlingGuard};
use crate::task::Tid;

const NS_PER_S: u64 = 1_000_000_000;

/// Where the DL-server's per-CPU knobs live (6.12+).
const FAIR_SERVER_DIR: &str = "/sys/kernel/debug/sched/fair_server";
/// The scheduler's debugfs directory: readable means the absence of [`FAIR_SERVER_DIR`] is real.
const DEBUGFS_SCHED_DIR: &str = "/sys/kernel/debug/sched";

/// Most threads whose "ignored" line was already logged; older ones may be logged again.
const IGNORED_LOG_MEMORY: usize = 64;

/// Period of the daemon's own SCHED_DEADLINE reservation (`-R`).
const RESERVATION_PERIOD_NS: u64 = 100_000_000;

/// A wake-up time meaning "no deadline": the loop waits for a signal or a backend event.
pub const NEVER: u64 = u64::MAX;

/// The parts of [`Config`] the loop needs, in loop units.
pub struct MonitorSettings {
    pub threshold_ns: u64,
    /// Longest time between two passes.
    pub poll_interval_ns: u64,
    pub log_only: bool,
    pub idle_detection: bool,
    pub ignore_threads: IgnoreList,
    pub ignore_processes: IgnoreList,
    /// CPUs whose DL-server keeps SCHED_OTHER tasks from starving: those are never boosted.
    pub dl_server_cpus: CpuSet,
}

impl MonitorSettings {
    pub fn from_config(config: &Config, dl_server_cpus: CpuSet) -> Self {
        let threshold_ns = config.starving_threshold.as_nanos() as u64;
        let granularity_ns = config.granularity.as_nanos() as u64;
        MonitorSettings {
            threshold_ns,
            // A waiting task must be seen before its threshold passes: its wait start is then
            // known exactly, and the pass that boosts it is scheduled for that moment.
            poll_interval_ns: granularity_ns.min(threshold_ns / 2),
            log_only: config.log_only,
            idle_detection: config.idle_detection,
            ignore_threads: config.ignore_threads.clone(),
            ignore_processes: config.ignore_processes.clone(),
            dl_server_cpus,
        }
    }
}

pub fn boost_params(config: &Config) -> BoostParams {
    BoostParams {
        policy: if config.force_fifo {
            BoostPolicy::Fifo
        } else {
            BoostPolicy::Deadline
        },
        runtime_ns: config.boost_runtime_ns,
        period_ns: config.boost_period_ns,
        duration_ns: config.boost_duration.as_nanos() as u64,
        fifo_priority: SCHED_FIFO_BOOST_PRIORITY,
    }
}

/// Counters of what the loop could not do; each kind is logged once when it first happens.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonitorStats {
    pub passes: u64,
    /// Passes that sampled nothing because every monitored CPU had idled.
    pub idle_passes: u64,
    pub sample_errors: u64,
    pub queue_overflows: u64,
    pub boost_table_full: u64,
}

/// The monitor loop as a state machine: fed by a [`Backend`], acting through a [`Scheduler`].
pub struct Monitor<B: Backend, S: Scheduler> {
    settings: MonitorSettings,
    backend: B,
    scheduler: S,
    snapshot: Snapshot,
    tracker: Tracker,
    booster: Booster,
    idle: Option<IdleMonitor>,
    ignored_logged: heapless::Deque<Tid, IGNORED_LOG_MEMORY>,
    next_pass_ns: u64,
    stats: MonitorStats,
    /// Read once a sample is complete: what it saw, it saw by then (a sample can take a
    /// while: procfs reads a file per thread), so first sightings and boosts date from it.
    clock: fn() -> u64,
}

impl<B: Backend, S: Scheduler> Monitor<B, S> {
    /// Preallocates every table for `cpus`. Fails only if `/proc/stat` is unreadable while idle
    /// detection is on.
    pub fn new(
        cpus: &CpuSet,
        settings: MonitorSettings,
        boost: BoostParams,
        backend: B,
        scheduler: S,
    ) -> Result<Self, String> {
        // An exact backend sees every wait begin: skipping idle CPUs would gain nothing.
        let idle = if settings.idle_detection && backend.cadence() == Cadence::Poll {
            let mut monitor = IdleMonitor::new(cpus.iter().max().unwrap_or(0));
            monitor
                .update()
                .map_err(|e| format!("cannot read /proc/stat for idle detection: {e}; use -N"))?;
            Some(monitor)
        } else {
            None
        };
        // A regex builds its match cache on first use: do that now, not in the loop.
        settings.ignore_threads.matches(b"");
        settings.ignore_processes.matches(b"");
        Ok(Monitor {
            tracker: Tracker::new(cpus.iter(), settings.threshold_ns),
            snapshot: Snapshot::new(cpus.iter()),
            booster: Booster::new(boost),
            settings,
            backend,
            scheduler,
            idle,
            ignored_logged: heapless::Deque::new(),
            next_pass_ns: 0,
            stats: MonitorStats::default(),
            clock: process::monotonic_ns,
        })
    }

    /// Replaces the clock read after each sample (tests that drive the loop with a fake time
    /// give one that never runs ahead of it, e.g. `|| 0`).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    pub fn stats(&self) -> MonitorStats {
        self.stats
    }

    /// The backend, e.g. for its event descriptor while the loop waits.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// One turn of the loop at `now_ns`: ends due boosts and, when owed, samples and acts.
    /// Returns the moment the loop wants to run again ([`NEVER`]: only for an event).
    pub fn step(&mut self, now_ns: u64, logger: &mut Logger) -> u64 {
        if let Some(began_ns) = self.backend.take_events() {
            // A task began waiting while none did: it can starve one threshold later.
            let due_ns = began_ns.saturating_add(self.settings.threshold_ns);
            self.next_pass_ns = self.next_pass_ns.min(due_ns);
        }
        self.service_boosts(now_ns, logger);
        let due = self.tracker.next_due_ns().is_some_and(|t| t <= now_ns);
        if now_ns >= self.next_pass_ns || due {
            self.pass(now_ns, logger);
            self.next_pass_ns = match self.backend.cadence() {
                Cadence::Poll => now_ns + self.settings.poll_interval_ns,
                // Whatever starts waiting after this pass reaches the threshold no sooner.
                Cadence::Exact => now_ns + self.settings.threshold_ns,
                Cadence::Armed => NEVER,
            };
        }
        let mut next = self.next_pass_ns;
        // A due entry still unhandled after the pass waits for a free boost slot: the booster's
        // next deadline wakes the loop then; waking for it now would spin.
        if let Some(t) = self.tracker.next_due_ns().filter(|&t| t > now_ns) {
            next = next.min(t);
        }
        if let Some(t) = self.booster.next_deadline_ns() {
            next = next.min(t);
        }
        next
    }

    /// Restores every boosted task now.
    pub fn shutdown(&mut self, logger: &mut Logger) {
        self.booster
            .restore_all(&mut self.scheduler, |event| log_boost_event(logger, event));
    }

    fn service_boosts(&mut self, now_ns: u64, logger: &mut Logger) {
        self.booster.service(&mut self.scheduler, now_ns, |event| {
            log_boost_event(logger, event)
        });
    }

    fn pass(&mut self, now_ns: u64, logger: &mut Logger) {
        self.stats.passes += 1;
        let idle = match self.idle.as_mut() {
            Some(monitor) => monitor.update().ok().map(|()| &*monitor),
            None => None,
        };
        if let Some(m) = idle {
            // Nothing can starve on a CPU that idled since the last pass: when that holds for
            // every monitored CPU, the run queues need not be sampled at all.
            if self.snapshot.queues.iter().all(|q| m.had_idle(q.cpu)) {
                self.stats.idle_passes += 1;
                self.tracker.forget_all();
                return;
            }
        }
        if let Err(e) = self.backend.sample(&mut self.snapshot) {
            // What was seen before the failure cannot be confirmed: start afresh next pass.
            self.tracker.forget_all();
            self.stats.sample_errors += 1;
            if self.stats.sample_errors == 1 {
                logger.error(format_args!(
                    "{} backend: cannot sample run queues: {e:?}; retrying every pass",
                    self.backend.name()
                ));
            }
            return;
        }
        // Never earlier than the pass began, whatever clock the caller drives the loop with.
        let now_ns = (self.clock)().max(now_ns);
        let backend = &mut self.backend;
        self.tracker.update(
            &self.snapshot,
            now_ns,
            |cpu| match idle {
                Some(m) if m.had_idle(cpu) => CpuVerdict::Skip,
                _ => CpuVerdict::Examine,
            },
            |tid| backend.last_run(tid),
        );
        self.log_overflow(logger);
        self.log_pass(now_ns, logger);
        self.act_on_starving(now_ns, logger);
    }

    fn log_overflow(&mut self, logger: &mut Logger) {
        for queue in self.snapshot.queues.iter().filter(|q| q.overflowed > 0) {
            self.stats.queue_overflows += 1;
            if self.stats.queue_overflows == 1 {
                logger.warn(format_args!(
                    "cpu {}: more than {} waiting tasks, {} not tracked this pass",
                    queue.cpu,
                    crate::backend::MAX_WAITING_PER_CPU,
                    queue.overflowed
                ));
            }
        }
    }

    fn log_pass(&self, now_ns: u64, logger: &mut Logger) {
        if !logger.is_verbose() {
            return;
        }
        for (queue, track) in self.snapshot.queues.iter().zip(self.tracker.cpus()) {
            logger.debug(format_args!(
                "checking cpu {} - rt: {} - starving: {}",
                queue.cpu,
                queue.rt_nr_running,
                track.entries.len()
            ));
            for entry in track.entries.iter().filter(|e| !e.handled) {
                let waited_s = entry.waited_ns(now_ns) / NS_PER_S;
                if waited_s > 0 {
                    logger.debug(format_args!(
                        "{}-{} might starve on CPU {} (waiting for {} seconds)",
                        entry.task.comm, entry.task.tid, queue.cpu, waited_s
                    ));
                }
            }
        }
    }

    fn act_on_starving(&mut self, now_ns: u64, logger: &mut Logger) {
        let Monitor {
            settings,
            backend,
            scheduler,
            tracker,
            booster,
            ignored_logged,
            stats,
            ..
        } = self;
        tracker.for_each_starving(now_ns, |cpu, entry| {
            entry.handled = true;
            let task = entry.task;
            if task.prio >= 100 && settings.dl_server_cpus.contains(cpu) {
                return;
            }
            if !backend.still_waiting(cpu, &task) {
                logger.debug(format_args!(
                    "{}-{} on CPU {}: no longer waiting as sampled, skipped",
                    task.comm, task.tid, cpu
                ));
                return;
            }
            if let Some(reason) = ignore_reason(settings, entry) {
                if !ignored_logged.iter().any(|&t| t == task.tid) {
                    if ignored_logged.is_full() {
                        ignored_logged.pop_front();
                    }
                    let _ = ignored_logged.push_back(task.tid);
                    logger.info(format_args!(
                        "ignoring {}-{} on CPU {}: {reason}",
                        task.comm, task.tid, cpu
                    ));
                }
                return;
            }
            logger.info(format_args!(
                "{}-{} starved on CPU {} for {} seconds",
                task.comm,
                task.tid,
                cpu,
                entry.waited_ns(now_ns) / NS_PER_S
            ));
            if settings.log_only {
                return;
            }
            match booster.boost(scheduler, task.tid, task.comm, now_ns) {
                Ok(policy) => {
                    if policy == BoostPolicy::Fifo {
                        if let Some(errno) = booster.deadline_refused.take() {
                            logger.warn(format_args!(
                                "SCHED_DEADLINE refused ({errno}): boosting with SCHED_FIFO"
                            ));
                        }
                    }
                    logger.info(format_args!(
                        "boosted pid {} ({}) (cpu {}) using {}",
                        task.tid,
                        task.comm,
                        cpu,
                        policy.name()
                    ));
                }
                Err(BoostError::Gone) => logger.debug(format_args!(
                    "pid {} ({}) exited before it could be boosted",
                    task.tid, task.comm
                )),
                Err(BoostError::AlreadyBoosted) => {}
                Err(BoostError::TableFull) => {
                    stats.boost_table_full += 1;
                    if stats.boost_table_full == 1 {
                        logger.warn(format_args!(
                            "{} tasks already boosted: pid {} waits for a free slot",
                            crate::boost::MAX_ACTIVE_BOOSTS,
                            task.tid
                        ));
                    }
                    entry.handled = false;
                }
                Err(BoostError::Denied(errno)) => logger.error(format_args!(
                    "failed to boost pid {} ({}): {errno}",
                    task.tid, task.comm
                )),
            }
        });
    }
}

fn ignore_reason(settings: &MonitorSettings, entry: &WaitingEntry) -> Option<&'static str> {
    if settings.ignore_threads.matches(entry.task.comm.as_bytes()) {
        return Some("thread name matches -i");
    }
    if settings.ignore_processes.is_empty() {
        return None;
    }
    let tgid = procfs::read_tgid(entry.task.tid)?;
    let process = procfs::read_comm(tgid)?;
    settings
        .ignore_processes
        .matches(process.as_bytes())
        .then_some("process name matches -I")
}

fn log_boost_event(logger: &mut Logger, event: BoostEvent) {
    match event {
        BoostEvent::Restored { tid, comm } => {
            logger.debug(format_args!("restored pid {tid} ({comm})"))
        }
        BoostEvent::Gone { tid, comm } => {
            logger.debug(format_args!("pid {tid} ({comm}) exited while boosted"))
        }
        BoostEvent::RestoreFailed { tid, comm, errno } => logger.error(format_args!(
            "failed to restore the scheduling policy of pid {tid} ({comm}): {errno}"
        )),
    }
}

/// CPUs of `cpus` whose DL-server serves SCHED_OTHER tasks; `None` on kernels without one.
/// A runtime that cannot be read (kernel lockdown) cannot have been changed either: it is on
/// by default. Without a readable debugfs at all (lockdown=confidentiality), a 6.12+ kernel is
/// taken to have it on every CPU.
fn dl_server_cpus(cpus: &CpuSet, logger: &mut Logger) -> Option<CpuSet> {
    if std::fs::metadata(FAIR_SERVER_DIR).is_err() {
        if std::fs::metadata(DEBUGFS_SCHED_DIR).is_ok() || !kernel_has_dl_server() {
            return None;
        }
        logger.info(format_args!(
            "debugfs is not readable: DL-server assumed on every CPU (kernel 6.12 or later)"
        ));
        return Some(*cpus);
    }
    let mut covered = CpuSet::empty();
    for cpu in cpus.iter() {
        let runtime = std::fs::read_to_string(format!("{FAIR_SERVER_DIR}/cpu{cpu}/runtime"));
        if runtime.map_or(true, |r| r.trim() != "0") {
            covered.insert(cpu);
        }
    }
    Some(covered)
}

/// Whether the running kernel is 6.12 or later, the first with the fair DL-server.
fn kernel_has_dl_server() -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_bytes();
    let mut numbers = release
        .split(|&b| b == b'.' || b == b'-')
        .map(procfs::parse_u64);
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 12),
        _ => false,
    }
}

/// Runs the daemon with a validated configuration; returns the process exit code.
pub fn run(config: Config) -> i32 {
    let mut logger = Logger::open(LogSinks {
        stderr: config.verbose,
        kmsg: config.log_kmsg,
        syslog: config.log_syslog,
        verbose: config.verbose,
    });
    let result = if !process::is_root() {
        Err("needs root privileges: run it as root".to_string())
    } else if !process::has_cap_sys_nice() {
        Err("needs CAP_SYS_NICE to change other tasks' scheduling policy".to_string())
    } else {
        start_and_run(&config, &mut logger)
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            logger.error(format_args!("{message}"));
            // Without -v the logger does not write to stderr, yet whoever started us must see why.
            if !config.verbose {
                eprintln!("stalld: {message}");
            }
            1
        }
    }
}

fn start_and_run(config: &Config, logger: &mut Logger) -> Result<(), String> {
    // Block the stop signals first: a SIGTERM during startup must not skip the cleanup.
    let mut signals =
        SignalWaiter::new().map_err(|e| format!("cannot set up signal handling: {e}"))?;

    let backend = open_backend(config, logger)?;
    logger.info(format_args!("using {} backend", backend.name()));

    let throttling = RtThrottling::default();
    let mut throttling_guard = if config.systemd {
        if !throttling.is_off().unwrap_or(false) {
            return Err(
                "RT throttling is on (sched_rt_runtime_us is not -1): with --systemd \
                        it must be turned off before stalld starts"
                    .into(),
            );
        }
        None
    } else {
        Some(throttling.disable().map_err(|e| {
            format!("cannot turn RT throttling off: {e}; run as root, or use --systemd")
        })?)
    };

    let dl_server = dl_server_cpus(&config.monitored_cpus, logger);
    if dl_server.is_some() {
        logger.info(format_args!("DL-server detected."));
    }
    if config.log_only {
        logger.info(format_args!(
            "log-only mode: starving tasks are only reported"
        ));
    } else if config.force_fifo {
        logger.info(format_args!("forcing SCHED_FIFO for boosting"));
    } else {
        logger.info(format_args!("using SCHED_DEADLINE for boosting"));
    }
    if config.threading_mode != ThreadingMode::Power {
        logger.info(format_args!(
            "one event-driven monitor serves every CPU: -A/-M threading modes are not needed"
        ));
    }

    if !config.foreground {
        process::daemonize().map_err(|e| format!("cannot daemonize: {e}"))?;
    }
    let _pidfile = match &config.pidfile {
        Some(path) => Some(
            Pidfile::create(path)
                .map_err(|e| format!("cannot write pidfile {}: {e}", path.display()))?,
        ),
        None => None,
    };
    protect_self(config, logger)?;

    let settings = MonitorSettings::from_config(config, dl_server.unwrap_or_default());
    let mut monitor = Monitor::new(
        &config.monitored_cpus,
        settings,
        boost_params(config),
        backend,
        KernelScheduler,
    )?;
    logger.info(format_args!(
        "monitoring CPUs {} (threshold {} s, boost {} s)",
        config.monitored_cpus,
        config.starving_threshold.as_secs(),
        config.boost_duration.as_secs()
    ));

    let result = monitor_loop(&mut monitor, &mut signals, logger);
    monitor.shutdown(logger);
    if let Some(guard) = throttling_guard.as_mut() {
        restore_throttling(guard, logger);
    }
    result
}

fn monitor_loop<B: Backend, S: Scheduler>(
    monitor: &mut Monitor<B, S>,
    signals: &mut SignalWaiter,
    logger: &mut Logger,
) -> Result<(), String> {
    loop {
        let now_ns = process::monotonic_ns();
        let wake_ns = monitor.step(now_ns, logger);
        let timeout_ns =
            (wake_ns != NEVER).then(|| wake_ns.saturating_sub(process::monotonic_ns()));
        match signals.wait(timeout_ns, monitor.backend().event_fd()) {
            Ok(Some(signal)) => {
                logger.info(format_args!(
                    "signal {signal} received: restoring and exiting"
                ));
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for signals failed: {e}")),
        }
    }
}

/// Turns RT throttling back on after every boost was undone, saying so if the kernel objected.
fn restore_throttling(guard: &mut ThrottlingGuard, logger: &mut Logger) {
    let saved = guard.saved();
    match guard.restore() {
        Ok(0) => {}
        Ok(busy) => logger.warn(format_args!(
            "sched_rt_runtime_us restored after {busy} EBUSY answers from the kernel"
        )),
        Err(e) => logger.error(format_args!(
            "cannot turn RT throttling back on ({e}): write {} to it",
            saved.map_or_else(|| "its old value".to_string(), |v| v.to_string())
        )),
    }
}

/// Opens the backend `config` asks for. Without `-b`, tries queue_track, sched_debug and
/// procfs in turn, logging in one line why each one passed over cannot be used; a backend
/// named with `-b` is the only one tried.
fn open_backend(config: &Config, logger: &mut Logger) -> Result<Box<dyn Backend>, String> {
    use BackendChoice::{Procfs, QueueTrack, SchedDebug};
    let candidates: &[BackendChoice] = match config.backend {
        BackendChoice::Auto => &[QueueTrack, SchedDebug, Procfs],
        QueueTrack => &[QueueTrack],
        SchedDebug => &[SchedDebug],
        Procfs => &[Procfs],
    };
    let mut reason = String::new();
    for (i, &choice) in candidates.iter().enumerate() {
        if i > 0 {
            logger.warn(format_args!(
                "{} backend unavailable: {reason}; trying {}",
                candidates[i - 1].name(),
                choice.name()
            ));
        }
        match open_one_backend(choice, config) {
            Ok(backend) => return Ok(backend),
            Err(e) => reason = e,
        }
    }
    let last = candidates[candidates.len() - 1];
    Err(format!("cannot use the {} backend: {reason}", last.name()))
}

fn open_one_backend(choice: BackendChoice, config: &Config) -> Result<Box<dyn Backend>, String> {
    match choice {
        BackendChoice::Auto | BackendChoice::QueueTrack => open_queue_track(config),
        BackendChoice::SchedDebug => SchedDebugBackend::open()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| e.to_string()),
        BackendChoice::Procfs => {
            crate::backend::procfs::ProcfsBackend::open(&config.monitored_cpus)
                .map(|b| Box::new(b) as Box<dyn Backend>)
        }
    }
}

#[cfg(feature = "bpf")]
fn open_queue_track(config: &Config) -> Result<Box<dyn Backend>, String> {
    crate::backend::queue_track::QueueTrackBackend::open(
        &config.monitored_cpus,
        process::configured_cpus(),
    )
    .map(|b| Box::new(b) as Box<dyn Backend>)
}

#[cfg(not(feature = "bpf"))]
fn open_queue_track(_: &Config) -> Result<Box<dyn Backend>, String> {
    Err("this stalld was built without BPF support (cargo feature `bpf`)".into())
}

/// Pins the daemon to its housekeeping CPUs, reserves its CPU time (`-R`) and locks its
/// memory, so that it can neither be starved nor paged out while a CPU hangs.
fn protect_self(config: &Config, logger: &mut Logger) -> Result<(), String> {
    let nr_cpus = process::configured_cpus();
    let housekeeping = match config.affinity {
        Some(cpus) => Some(cpus),
        None => {
            let others = config.monitored_cpus.complement_within(nr_cpus);
            (!others.is_empty()).then_some(others)
        }
    };
    if let Some(cpus) = housekeeping {
        match sched::set_affinity(0, cpus.iter()) {
            Ok(()) => logger.info(format_args!("running on CPUs {cpus}")),
            Err(e) if config.affinity.is_some() => {
                return Err(format!("cannot pin stalld to CPUs {cpus} (-a): {e}"))
            }
            Err(e) => logger.warn(format_args!("cannot pin stalld to CPUs {cpus}: {e}")),
        }
    }
    if let Some(percent) = config.reservation_percent {
        let runtime_ns = RESERVATION_PERIOD_NS * u64::from(percent) / 100;
        let attr = SchedAttr::deadline(runtime_ns, RESERVATION_PERIOD_NS, RESERVATION_PERIOD_NS);
        sched::sched_setattr(0, &attr)
            .map_err(|e| format!("cannot reserve {percent}% CPU for stalld (-R): {e}"))?;
        logger.info(format_args!(
            "running under SCHED_DEADLINE with {percent}% of every {} ms",
            RESERVATION_PERIOD_NS / 1_000_000
        ));
    }
    if let Err(e) = sched::lock_memory() {
        logger.warn(format_args!("cannot lock stalld's memory (mlockall): {e}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LastRun;
    use crate::backend::{SampleError, WaitingTask};
    use crate::task::Comm;
    use rustix::io::Errno;

    const S: u64 = 1_000_000_000;

    /// Serves the same waiting tasks every pass, or fails every pass. With `exact_since`, it
    /// behaves like queue_track: exact wait starts, armed while nothing waits.
    struct FakeBackend {
        waiting: Vec<(u32, Tid)>,
        fail: bool,
        exact_since: Option<u64>,
        event: Option<u64>,
    }

    impl FakeBackend {
        fn polling(waiting: Vec<(u32, Tid)>) -> Self {
            FakeBackend {
                waiting,
                fail: false,
                exact_since: None,
                event: None,
            }
        }
    }

    impl Backend for FakeBackend {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn cadence(&self) -> Cadence {
            match self.exact_since {
                None => Cadence::Poll,
                Some(_) if self.waiting.is_empty() => Cadence::Armed,
                Some(_) => Cadence::Exact,
            }
        }

        fn take_events(&mut self) -> Option<u64> {
            self.event.take()
        }

        fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
            if self.fail {
                return Err(SampleError::Io(Errno::NOENT));
            }
            for queue in &mut snapshot.queues {
                queue.clear();
                queue.present = true;
            }
            for &(cpu, tid) in &self.waiting {
                snapshot.queue_mut(cpu).unwrap().push(WaitingTask {
                    tid,
                    comm: Comm::new(b"victim"),
                    switches: 1,
                    prio: 98,
                    waiting_since_ns: self.exact_since,
                });
            }
            Ok(())
        }

        fn last_run(&mut self, _: Tid) -> Option<LastRun> {
            None
        }
    }

    /// Accepts every change; remembers which tids were boosted.
    #[derive(Default)]
    struct RecordingScheduler {
        boosted: Vec<Tid>,
    }

    impl Scheduler for RecordingScheduler {
        fn get_attr(&mut self, _: Tid) -> Result<SchedAttr, Errno> {
            Ok(SchedAttr::fifo(1))
        }

        fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno> {
            if attr.sched_policy == sched::SCHED_DEADLINE {
                self.boosted.push(tid);
            }
            Ok(())
        }
    }

    fn monitor(backend: FakeBackend, cpus: &str) -> Monitor<FakeBackend, RecordingScheduler> {
        let cpus = CpuSet::parse(cpus, 8).unwrap();
        let settings = MonitorSettings {
            threshold_ns: 3 * S,
            poll_interval_ns: S,
            log_only: false,
            idle_detection: false,
            ignore_threads: IgnoreList::empty(),
            ignore_processes: IgnoreList::empty(),
            dl_server_cpus: CpuSet::empty(),
        };
        let boost = BoostParams {
            policy: BoostPolicy::Deadline,
            runtime_ns: 20_000,
            period_ns: S,
            duration_ns: 3 * S,
            fifo_priority: SCHED_FIFO_BOOST_PRIORITY,
        };
        Monitor::new(
            &cpus,
            settings,
            boost,
            backend,
            RecordingScheduler::default(),
        )
        .unwrap()
        .with_clock(|| 0)
    }

    fn quiet() -> Logger {
        Logger::open(LogSinks::default())
    }

    #[test]
    fn boosts_when_the_wait_reaches_the_threshold() {
        let backend = FakeBackend::polling(vec![(1, 42)]);
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        let mut now = 10 * S;
        let mut wakes = Vec::new();
        while now < 14 * S {
            now = m.step(now, &mut log);
            wakes.push(now);
        }
        assert!(
            wakes.contains(&(13 * S)),
            "no wake at the threshold: {wakes:?}"
        );
        assert_eq!(m.scheduler.boosted, vec![42]);
    }

    #[test]
    fn sample_errors_never_make_the_loop_spin() {
        let backend = FakeBackend::polling(vec![(1, 42)]);
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        m.step(10 * S, &mut log);
        m.backend.fail = true;
        for now in [13 * S, 14 * S, 20 * S] {
            assert!(m.step(now, &mut log) > now);
        }
        assert!(m.scheduler.boosted.is_empty());
        assert_eq!(m.stats().sample_errors, 3);
    }

    #[test]
    fn a_full_boost_table_waits_for_a_free_slot_without_spinning() {
        let waiting: Vec<(u32, Tid)> = (0..40).flat_map(|t| [(1, t), (2, 100 + t)]).collect();
        let mut m = monitor(FakeBackend::polling(waiting), "1-2");
        let mut log = quiet();
        m.step(0, &mut log);
        let next = m.step(3 * S, &mut log);
        assert!(next > 3 * S);
        assert_eq!(m.scheduler.boosted.len(), crate::boost::MAX_ACTIVE_BOOSTS);
        assert_eq!(m.stats().boost_table_full, 80 - 64);
        // The first boosts end at 6 s; the waiting tasks get their slots then.
        let mut now = next;
        while now < 6 * S {
            now = m.step(now, &mut log);
            assert!(now > 3 * S);
        }
        m.step(6 * S, &mut log);
        assert_eq!(m.scheduler.boosted.len(), 80);
    }

    #[test]
    fn an_armed_backend_sleeps_until_an_event_then_one_threshold_after_it() {
        let backend = FakeBackend {
            exact_since: Some(0),
            ..FakeBackend::polling(Vec::new())
        };
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        assert_eq!(m.step(10 * S, &mut log), NEVER);
        // A task began waiting at 11 s: nothing can starve before 14 s.
        m.backend.event = Some(11 * S);
        m.backend.waiting = vec![(1, 42)];
        m.backend.exact_since = Some(11 * S);
        assert_eq!(m.step(11 * S + 1000, &mut log), 14 * S);
        assert_eq!(m.stats().passes, 1);
        // The pass at 14 s finds it due and boosts it at once.
        m.step(14 * S, &mut log);
        assert_eq!(m.scheduler.boosted, vec![42]);
    }

    #[test]
    fn an_exact_backend_with_waiters_samples_once_per_threshold() {
        let backend = FakeBackend {
            exact_since: Some(9 * S),
            ..FakeBackend::polling(vec![(1, 42)])
        };
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        // Due at 12 s (waiting since 9 s); the next pass would be 10 + 3 s at the latest.
        assert_eq!(m.step(10 * S, &mut log), 12 * S);
        m.step(12 * S, &mut log);
        assert_eq!(m.scheduler.boosted, vec![42]);
    }
}
