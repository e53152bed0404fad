//! The daemon: startup (may allocate, may fail with a clear message), running the monitor loop
//! until a stop signal, and shutdown, which restores every boosted task and RT throttling
//! however the loop ends. Self-protection lives in `protect.rs`.

use crate::backend::select::open_backend;
use crate::backend::{AnyBackend, Backend};
use crate::boost::{BoostParams, BoostPolicy, KernelScheduler, Scheduler};
use crate::boost_budget::{self, BudgetEnforcement};
use crate::config::{Config, ThreadingMode, SCHED_FIFO_BOOST_PRIORITY};
use crate::cpuset::{CpuSet, MAX_CPUS, MAX_CPUS_U32};
use crate::handover::{self, HANDOVER_SIGNAL};
use crate::journal::{self, Journal, JOURNAL_FILE};
use crate::log::ring::Ring;
use crate::log::{Log, LogSinks, Logger};
use crate::monitor::{duration_ns, Monitor, MonitorSettings};
use crate::protect::{protect_self, SelfGuard};
use crate::sys::caps;
use crate::sys::debugfs::{self, MountedDebugfs};
use crate::sys::dl_server::{DlServerSource, DlServerWatch};
use crate::sys::notify::{Notifier, Supervision};
use crate::sys::process::{self, Pidfile, StartupReport};
use crate::sys::root::RootWatch;
use crate::sys::run_dir::{InstanceLock, Locked, RUN_DIR};
use crate::sys::signal::SignalWaiter;
use crate::sys::throttling::RtThrottling;
use crate::throttlectl::{self, SavedRuntime, TurnedOff};
use std::path::Path;

/// The boost `config` asks for.
pub fn boost_params(config: &Config) -> BoostParams {
    BoostParams {
        policy: if config.force_fifo {
            BoostPolicy::Fifo
        } else {
            BoostPolicy::Deadline
        },
        runtime_ns: config.boost_runtime_ns,
        period_ns: config.boost_period_ns,
        duration_ns: duration_ns(config.boost_duration),
        fifo_priority: SCHED_FIFO_BOOST_PRIORITY,
        budget: BudgetEnforcement::Kernel,
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
    let mut startup = StartupReport::default();
    let result = if !process::is_root() {
        Err("needs root privileges: run it as root".to_string())
    } else if !process::has_cap_sys_nice() {
        Err("needs CAP_SYS_NICE to change other tasks' scheduling policy".to_string())
    } else {
        check_machine()
            .and_then(|()| InstanceLock::try_take(Path::new(RUN_DIR)))
            .and_then(|locked| {
                let owner = match locked {
                    Locked::Taken(lock) => Owner::Us(lock),
                    Locked::Held { pid: Some(pid), .. } if handover::is_early_instance(pid) => {
                        Owner::EarlyInstance(pid)
                    }
                    Locked::Held { message, .. } => return Err(message),
                };
                start_and_run(&config, &mut logger, owner, &mut startup)
            })
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            logger.error(format_args!("{message}"));
            // Without -v the logger does not write to stderr, yet whoever started us must see why.
            if !config.verbose {
                eprintln!("stalld: {message}");
            }
            // After daemonizing, stderr is /dev/null: the process that started us says it.
            startup.failed(1, &message);
            1
        }
    }
}

/// Adds the ring file to the sinks; without it the daemon still runs, and says why.
fn open_ring(config: &Config, logger: &mut Logger) {
    let Some(path) = &config.log_ring else {
        return;
    };
    let size_bytes = usize::try_from(config.log_ring_size_kib * 1024).unwrap_or(usize::MAX);
    match Ring::open(path, size_bytes) {
        Ok(ring) => logger.set_ring(ring),
        Err(e) => logger.warn(format_args!("{e}; not logging to a ring file")),
    }
}

/// Refuses machines and places where the daemon would watch other tasks than it thinks.
fn check_machine() -> Result<(), String> {
    if process::in_initial_pid_namespace() == Some(false) {
        return Err(
            "runs in a PID namespace other than the initial one: the kernel reports the \
                    thread ids of the initial namespace, which are not this one's; run stalld \
                    on the host (or in a container sharing the host's PID namespace)"
                .into(),
        );
    }
    let possible = process::configured_cpus();
    if possible > MAX_CPUS_U32 {
        return Err(format!(
            "the kernel may have {possible} CPUs, and this build of stalld handles at most \
             {MAX_CPUS}: it will not monitor a subset silently; rebuild with a larger \
             cpuset::MAX_CPUS"
        ));
    }
    Ok(())
}

/// Who holds the instance lock when the daemon starts.
enum Owner {
    /// We do.
    Us(InstanceLock),
    /// An instance started in the initramfs, which hands over to us ([`handover`]).
    EarlyInstance(i32),
}

/// How the monitor loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// A stop signal: restore everything.
    Shutdown,
    /// [`HANDOVER_SIGNAL`] from the stalld that takes over: restore the boosts, leave RT
    /// throttling off and debugfs mounted for it.
    HandOver,
}

/// debugfs (mounted if absent) and the backend, armed.
type Armed = (Option<MountedDebugfs>, AnyBackend);

fn arm_backend(config: &Config, logger: &mut Logger) -> Result<Armed, String> {
    let debugfs_mount = mount_debugfs(logger);
    let backend =
        open_backend(config.backend, &config.monitored_cpus, logger).map_err(|e| e.to_string())?;
    logger.info(format_args!("using {} backend", backend.name()));
    Ok((debugfs_mount, backend))
}

/// Takes the lock over from the early instance `pid`, this daemon's backend armed already.
fn take_over(pid: i32, logger: &mut Logger) -> Result<InstanceLock, String> {
    logger.info(format_args!(
        "the stalld started in the initramfs (pid {pid}) holds the lock: taking over from it"
    ));
    let started = std::time::Instant::now();
    let lock = handover::take_over(Path::new(RUN_DIR), pid)?;
    logger.info(format_args!(
        "took over from the early stalld (pid {pid}) in {} ms",
        started.elapsed().as_millis()
    ));
    Ok(lock)
}

fn start_and_run(
    config: &Config,
    logger: &mut Logger,
    owner: Owner,
    startup: &mut StartupReport,
) -> Result<(), String> {
    // Block the stop signals first: a SIGTERM during startup must not skip the cleanup.
    let mut signals =
        SignalWaiter::new().map_err(|e| format!("cannot set up signal handling: {e}"))?;
    let mut notifier = open_notifier(logger);
    // An early instance is asked to hand over only once our backend is armed: from then on
    // every wait is seen by one of the two.
    let (armed, lock) = match owner {
        Owner::Us(lock) => (None, lock),
        Owner::EarlyInstance(pid) => {
            let armed = arm_backend(config, logger)?;
            (Some(armed), take_over(pid, logger)?)
        }
    };
    open_ring(config, logger);
    let journal = open_journal(logger)?;

    // Dropped last: a debugfs mounted here is unmounted at exit, after everything else.
    let (debugfs_mount, backend) = match armed {
        Some(armed) => armed,
        None => arm_backend(config, logger)?,
    };
    let needs = caps::Needs {
        unmount: debugfs_mount.is_some(),
        bpf: backend.name() == "queue_track",
        follow_root: crate::sys::root::in_initramfs(),
    };

    let throttling_guard = disable_throttling(config, logger)?;
    let mut dl_server = DlServerWatch::open(&config.monitored_cpus);
    let dl_server_cpus = probe_dl_server(&mut dl_server, logger);
    log_modes(config, logger);
    // Dropped before `debugfs_mount`: HRTICK_DL is turned back off while debugfs is still
    // mounted.
    let (hrtick_dl, budget) = boost_budget::choose(config, logger);

    if !config.foreground && notifier.is_none() {
        // SAFETY: no thread was spawned yet: startup runs on the main thread alone.
        *startup = unsafe { process::daemonize() }.map_err(|e| format!("cannot daemonize: {e}"))?;
        lock.write_pid()?;
    }
    let pidfile = match &config.pidfile {
        Some(path) => Some(
            Pidfile::create(path)
                .map_err(|e| format!("cannot write pidfile {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut self_guard = protect_self(config, logger)?;

    let settings = MonitorSettings::from_config(config, dl_server_cpus);
    let mut monitor = Monitor::new(
        &config.monitored_cpus,
        settings,
        BoostParams {
            budget,
            ..boost_params(config)
        },
        backend,
        KernelScheduler,
    )?;
    monitor.set_journal(journal);
    match caps::drop_unneeded(needs) {
        Ok(kept) => logger.info(format_args!(
            "capabilities dropped but {}; no_new_privs set",
            caps::names(kept)
        )),
        Err(e) => logger.warn(format_args!("{e}: running with every capability")),
    }
    logger.info(format_args!(
        "monitoring CPUs {} (threshold {} s, boost {} s)",
        config.monitored_cpus,
        config.starving_threshold.as_secs(),
        config.boost_duration.as_secs()
    ));
    startup.ready();

    if let Some(notifier) = notifier.as_mut() {
        let status = format!(
            "monitoring CPUs {} with the {} backend",
            config.monitored_cpus,
            monitor.backend().name()
        );
        if let Err(e) = notifier.ready(&status, process::monotonic_ns()) {
            logger.warn(format_args!("cannot tell systemd we are ready: {e}"));
        }
    }

    let mut followed_root = false;
    let result = monitor_loop(
        &mut monitor,
        &mut dl_server,
        &mut signals,
        notifier.as_mut(),
        &mut self_guard,
        &mut followed_root,
        logger,
    );
    if let Some(notifier) = notifier.as_mut() {
        stop_notifying(notifier, logger);
    }
    monitor.shutdown(logger);
    let handing_over = result == Ok(Stop::HandOver);
    if handing_over || followed_root {
        // The real system's now (/sys moved into its root), or the next stalld's.
        if let Some(mounted) = debugfs_mount {
            mounted.leave_mounted();
        }
    }
    match throttling_guard {
        Some(guard) if handing_over => match guard.hand_over() {
            Some(value) => logger.info(format_args!(
                "handed over: RT throttling left off for the stalld taking over (its value \
                 {value} stays saved in {RUN_DIR})"
            )),
            None => logger.info(format_args!("handed over")),
        },
        Some(mut guard) => {
            self_guard.step_down(logger);
            restore_throttling(&mut guard, logger);
        }
        None => {}
    }
    if handing_over {
        // What the stalld taking over opens goes now, the lock last, before the backend is torn
        // down, which can wait on the kernel (on a 6.1 guest, detaching the BPF programs waited
        // 36 s for a grace period that starved tasks held up): it must not wait for that.
        // HRTICK_DL goes back off before the lock: the stalld taking over finds it as the
        // kernel had it, turns it on itself and off at its exit. (Turned off after the lock,
        // it could be off under a stalld that found it on and left it to us.)
        drop(hrtick_dl);
        drop(monitor.take_journal());
        drop(logger.take_ring());
        drop(pidfile);
        drop(lock);
    }
    result.map(|_| ())
}

/// Opens the boost journal and undoes what a daemon that died left in it.
fn open_journal(logger: &mut Logger) -> Result<Journal, String> {
    let mut journal = Journal::open(&Path::new(RUN_DIR).join(JOURNAL_FILE))?;
    let recovered = journal::recover(&mut journal, &mut KernelScheduler, logger);
    if recovered != journal::Recovered::default() {
        logger.info(format_args!(
            "boosts left by a stalld that died: {} restored, {} left alone, {} failed",
            recovered.restored, recovered.left_alone, recovered.failed
        ));
    }
    Ok(journal)
}

/// Turns RT throttling off (its value saved under the run directory first), returning the
/// guard that turns it back on; with `--systemd`, only checks that it is off already.
fn disable_throttling(config: &Config, logger: &mut Logger) -> Result<Option<TurnedOff>, String> {
    let throttling = RtThrottling::default();
    if !config.systemd {
        let saved = SavedRuntime::in_dir(Path::new(RUN_DIR));
        let off = throttlectl::turn_off(&throttling, &saved).map_err(|e| {
            format!("cannot turn RT throttling off: {e}; run as root, or use --systemd")
        })?;
        match (off.adopted, off.saved()) {
            (true, Some(value)) => logger.info(format_args!(
                "RT throttling was left off by a stalld that died (or throttlectl off): \
                 RT Throttling runtime {value} comes back at exit"
            )),
            (_, Some(_)) => logger.info(format_args!("RT Throttling disabled")),
            (_, None) => logger.info(format_args!(
                "RT throttling already disabled, doing nothing"
            )),
        }
        return Ok(Some(off));
    }
    if !throttling.is_off().unwrap_or(false) {
        return Err(
            "RT throttling is on (sched_rt_runtime_us is not -1): with --systemd \
                    it must be turned off before stalld starts"
                .into(),
        );
    }
    Ok(None)
}

/// Mounts debugfs when nothing did (the normal case at early boot): the sched_debug backend
/// and the DL-server's knobs live there. Failing is not fatal: queue_track and procfs need
/// neither, and the DL-server is then assumed on (6.12+).
fn mount_debugfs(logger: &mut Logger) -> Option<MountedDebugfs> {
    match debugfs::mount_if_absent() {
        Ok(Some(mounted)) => {
            logger.info(format_args!(
                "mounted debugfs on {} (unmounted at exit)",
                mounted.target().to_string_lossy()
            ));
            Some(mounted)
        }
        Ok(None) => None,
        Err(e) => {
            logger.warn(format_args!(
                "cannot mount debugfs ({e}): the DL-server's state cannot be read"
            ));
            None
        }
    }
}

/// The monitored CPUs whose DL-server serves fair tasks now (none without a DL-server), and
/// how that is known.
fn probe_dl_server(watch: &mut DlServerWatch, logger: &mut Logger) -> CpuSet {
    let cpus = watch.read();
    match watch.source() {
        DlServerSource::Absent => return cpus,
        DlServerSource::Knobs => {}
        DlServerSource::Assumed => logger.info(format_args!(
            "debugfs is not readable: DL-server assumed on every CPU (kernel 6.12 or later)"
        )),
    }
    if watch.had_unreadable_knob() {
        logger.info(format_args!(
            "the DL-server's runtime cannot be read (kernel lockdown): taken as on, the \
             kernel's default"
        ));
    }
    if cpus.is_empty() {
        logger.info(format_args!(
            "DL-server switched off on every monitored CPU: SCHED_OTHER tasks are boosted too"
        ));
    } else {
        logger.info(format_args!("DL-server detected."));
    }
    cpus
}

/// Says how starving tasks will be handled.
fn log_modes(config: &Config, logger: &mut Logger) {
    if config.log_only {
        logger.info(format_args!(
            "log-only mode: starving tasks are only reported"
        ));
    } else if config.force_fifo {
        logger.info(format_args!(
            "forcing SCHED_FIFO for boosting (the single-threaded monitor times each SCHED_FIFO \
             boost itself: no adaptive mode needed)"
        ));
    } else {
        logger.info(format_args!("using SCHED_DEADLINE for boosting"));
    }
    logger.info(format_args!("single threaded mode"));
    if config.threading_mode != ThreadingMode::Power {
        logger.info(format_args!(
            "one event-driven monitor serves every CPU: -A/-M threading modes are not needed"
        ));
    }
}

/// How stale the DL-server's state may be when the loop acts (its knobs are re-read at most
/// this often, and only when the loop wakes anyway).
const DL_SERVER_REFRESH_NS: u64 = 5_000_000_000;

/// Runs passes until a stop signal; `followed_root` is set once the daemon followed PID 1 into
/// a new root.
fn monitor_loop<B: Backend, S: Scheduler>(
    monitor: &mut Monitor<B, S>,
    dl_server: &mut DlServerWatch,
    signals: &mut SignalWaiter,
    mut notifier: Option<&mut Notifier>,
    self_guard: &mut SelfGuard,
    followed_root: &mut bool,
    logger: &mut Logger,
) -> Result<Stop, String> {
    let mut dl_server_read_ns = process::monotonic_ns();
    // Only an instance started in the initramfs hands over; anywhere else the handover signal
    // stops the daemon like the others (an administrator's `kill -USR2` restores everything).
    let hands_over = handover::is_early_instance(rustix::process::getpid().as_raw_nonzero().get());
    let mut root = RootWatch::open()
        .map_err(|e| {
            logger.warn(format_args!(
                "cannot open /proc ({e}): a switch_root will not be followed"
            ))
        })
        .ok();
    loop {
        if let Some(watch) = root.as_ref().filter(|watch| watch.moved()) {
            if follow_init_root(watch, logger) {
                *followed_root = true;
            } else {
                root = None;
            }
        }
        let now_ns = process::monotonic_ns();
        if now_ns.saturating_sub(dl_server_read_ns) >= DL_SERVER_REFRESH_NS {
            dl_server_read_ns = now_ns;
            let cpus = dl_server.read();
            if cpus != monitor.dl_server_cpus() {
                logger.info(format_args!(
                    "DL-server state changed: it now serves SCHED_OTHER tasks on CPUs [{cpus}] \
                     of the monitored ones"
                ));
                monitor.set_dl_server_cpus(cpus);
            }
        }
        let mut wake_ns = monitor.step(now_ns, logger).min(self_guard.next_wake_ns());
        self_guard.tick(process::monotonic_ns(), logger);
        logger.tick();
        if let Some(keepalive_ns) = notifier.as_mut().and_then(|n| n.keepalive(now_ns)) {
            wake_ns = wake_ns.min(keepalive_ns);
        }
        let timeout_ns = wake_ns.saturating_sub(process::monotonic_ns());
        match signals.wait(timeout_ns) {
            Ok(Some(HANDOVER_SIGNAL)) if hands_over => {
                logger.info(format_args!(
                    "received signal {HANDOVER_SIGNAL}, handing over to the stalld taking \
                     over: restoring boosted tasks"
                ));
                return Ok(Stop::HandOver);
            }
            Ok(Some(signal)) => {
                logger.info(format_args!(
                    "received signal {signal}, starting shutdown: restoring boosted tasks"
                ));
                return Ok(Stop::Shutdown);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for signals failed: {e}")),
        }
    }
}

/// PID 1 switched to the real root (`switch_root` after the initramfs): the daemon follows it,
/// so that `/proc`, `/sys` and `/run`, now moved there, are found again.
/// Whether it did; a failure is logged once and not retried.
fn follow_init_root(root: &RootWatch, logger: &mut Logger) -> bool {
    match root.follow() {
        Ok(()) => {
            logger.info(format_args!(
                "PID 1 switched to a new root: stalld followed it and goes on protecting"
            ));
            true
        }
        Err(e) => {
            logger.error(format_args!(
                "PID 1 switched to a new root and stalld cannot follow it ({e}): /proc, /sys \
                 and /run may be out of reach"
            ));
            false
        }
    }
}

/// Reads systemd's notification settings; under `Type=notify` the daemon stays in the
/// foreground (systemd watches the process it started) and says so.
fn open_notifier(logger: &mut Logger) -> Option<Notifier> {
    match Notifier::from_env() {
        Supervision::None => None,
        Supervision::Unusable(why) => {
            logger.warn(format_args!("{why}"));
            None
        }
        Supervision::Notify(notifier) => {
            match notifier.watchdog_interval_ns() {
                Some(ns) => logger.info(format_args!(
                    "started by systemd (Type=notify): staying in the foreground, watchdog \
                     keep-alive every {} ms",
                    ns / 1_000_000
                )),
                None => logger.info(format_args!(
                    "started by systemd (Type=notify): staying in the foreground"
                )),
            }
            Some(notifier)
        }
    }
}

/// `STOPPING=1`, and how many notifications were lost on the way, if any.
fn stop_notifying(notifier: &mut Notifier, logger: &mut Logger) {
    let _ = notifier.stopping();
    if let (lost @ 1.., Some(e)) = notifier.failures() {
        logger.warn(format_args!(
            "{lost} notifications to systemd could not be sent (last: {e})"
        ));
    }
}

/// Turns RT throttling back on after every boost was undone, saying so if the kernel objected;
/// the saved value is forgotten once it is back.
fn restore_throttling(guard: &mut TurnedOff, logger: &mut Logger) {
    let saved = guard.saved();
    let (result, forgotten) = guard.restore();
    if let Err(e) = forgotten {
        logger.warn(format_args!("{e}"));
    }
    match (result, saved) {
        (Ok(_), None) => {}
        (Ok(0), Some(runtime_us)) => logger.info(format_args!(
            "RT Throttling runtime restored to {runtime_us}"
        )),
        (Ok(busy), Some(runtime_us)) => logger.info(format_args!(
            "RT Throttling runtime restored to {runtime_us} (after {busy} EBUSY answers from \
             the kernel)"
        )),
        (Err(e), _) => logger.error(format_args!(
            "cannot turn RT throttling back on ({e}): write {} to it",
            saved.map_or_else(|| "its old value".to_string(), |v| v.to_string())
        )),
    }
}
