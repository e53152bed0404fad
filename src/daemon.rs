//! The daemon: startup (may allocate, may fail with a clear message), running the monitor loop
//! until a stop signal, and shutdown, which restores every boosted task and RT throttling
//! however the loop ends. Also, until it gets a module of its own, self-protection.

use crate::backend::select::open_backend;
use crate::backend::Backend;
use crate::boost::{BoostParams, BoostPolicy, KernelScheduler, Scheduler};
use crate::boost_budget::{self, BudgetEnforcement};
use crate::config::{Config, ThreadingMode, SCHED_FIFO_BOOST_PRIORITY};
use crate::cpuset::{CpuSet, MAX_CPUS, MAX_CPUS_U32};
use crate::log::ring::Ring;
use crate::log::{Log, LogSinks, Logger};
use crate::monitor::{duration_ns, Monitor, MonitorSettings, NEVER};
use crate::sys::debugfs::{self, MountedDebugfs};
use crate::sys::dl_server::{DlServerSource, DlServerWatch};
use crate::sys::process::{self, Pidfile};
use crate::sys::sched::{self, SchedAttr};
use crate::sys::signal::SignalWaiter;
use crate::sys::throttling::{RtThrottling, ThrottlingGuard};

/// Period of the daemon's own SCHED_DEADLINE reservation (`-R`).
const RESERVATION_PERIOD_NS: u64 = 100_000_000;

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
    open_ring(&config, &mut logger);
    let result = if !process::is_root() {
        Err("needs root privileges: run it as root".to_string())
    } else if !process::has_cap_sys_nice() {
        Err("needs CAP_SYS_NICE to change other tasks' scheduling policy".to_string())
    } else {
        check_machine().and_then(|()| start_and_run(&config, &mut logger))
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

fn start_and_run(config: &Config, logger: &mut Logger) -> Result<(), String> {
    // Block the stop signals first: a SIGTERM during startup must not skip the cleanup.
    let mut signals =
        SignalWaiter::new().map_err(|e| format!("cannot set up signal handling: {e}"))?;

    // Dropped last: a debugfs mounted here is unmounted at exit, after everything else.
    let _debugfs = mount_debugfs(logger);
    let backend =
        open_backend(config.backend, &config.monitored_cpus, logger).map_err(|e| e.to_string())?;
    logger.info(format_args!("using {} backend", backend.name()));

    let mut throttling_guard = disable_throttling(config)?;
    match throttling_guard.as_ref().map(ThrottlingGuard::saved) {
        Some(Some(_)) => logger.info(format_args!("RT Throttling disabled")),
        _ => logger.info(format_args!(
            "RT throttling already disabled, doing nothing"
        )),
    }
    let mut dl_server = DlServerWatch::open(&config.monitored_cpus);
    let dl_server_cpus = probe_dl_server(&mut dl_server, logger);
    log_modes(config, logger);
    // Dropped before `_debugfs`: HRTICK_DL is turned back off while debugfs is still mounted.
    let (_hrtick_dl, budget) = boost_budget::choose(config, logger);

    if !config.foreground {
        // SAFETY: no thread was spawned yet: startup runs on the main thread alone.
        unsafe { process::daemonize() }.map_err(|e| format!("cannot daemonize: {e}"))?;
    }
    let _pidfile = match &config.pidfile {
        Some(path) => Some(
            Pidfile::create(path)
                .map_err(|e| format!("cannot write pidfile {}: {e}", path.display()))?,
        ),
        None => None,
    };
    protect_self(config, logger)?;
    boost_budget::protect_wakeups(config, budget, logger);

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
    logger.info(format_args!(
        "monitoring CPUs {} (threshold {} s, boost {} s)",
        config.monitored_cpus,
        config.starving_threshold.as_secs(),
        config.boost_duration.as_secs()
    ));

    let result = monitor_loop(&mut monitor, &mut dl_server, &mut signals, logger);
    monitor.shutdown(logger);
    if let Some(guard) = throttling_guard.as_mut() {
        restore_throttling(guard, logger);
    }
    result
}

/// Turns RT throttling off, returning the guard that turns it back on; with `--systemd`,
/// only checks that it is off already.
fn disable_throttling(config: &Config) -> Result<Option<ThrottlingGuard>, String> {
    let throttling = RtThrottling::default();
    if !config.systemd {
        return throttling.disable().map(Some).map_err(|e| {
            format!("cannot turn RT throttling off: {e}; run as root, or use --systemd")
        });
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

fn monitor_loop<B: Backend, S: Scheduler>(
    monitor: &mut Monitor<B, S>,
    dl_server: &mut DlServerWatch,
    signals: &mut SignalWaiter,
    logger: &mut Logger,
) -> Result<(), String> {
    let mut dl_server_read_ns = process::monotonic_ns();
    loop {
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
        let wake_ns = monitor.step(now_ns, logger);
        logger.tick();
        let timeout_ns =
            (wake_ns != NEVER).then(|| wake_ns.saturating_sub(process::monotonic_ns()));
        match signals.wait(timeout_ns, monitor.backend().event_fd()) {
            Ok(Some(signal)) => {
                logger.info(format_args!(
                    "received signal {signal}, starting shutdown: restoring boosted tasks"
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
    match (guard.restore(), saved) {
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
