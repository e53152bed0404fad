//! End-to-end: the daemon against a task really starved on a real kernel.
//!
//! Scenario (see `common`): `stv_victim` (SCHED_FIFO 1) and then `stv_hog` (SCHED_FIFO 50) spin
//! on CPU 1; with RT throttling off the victim gets no CPU at all, whatever the DL-server does
//! for SCHED_OTHER. The daemon watches CPU 1 with a 3 s threshold. Needs root and two CPUs;
//! otherwise every test is skipped with a message (a failure when `STALLD_E2E_REQUIRE=1`).
//! The tests run one at a time (a lock in `common`), unit tests stay parallel.
//!
//! Every rescue scenario runs once per detection backend (`<scenario>::queue_track`,
//! `::sched_debug`, `::procfs`, each passing `-b <name>`) and must meet the same contract: the
//! same log lines, the boost no earlier than the threshold (minus [`EARLY_SLACK`]) and at most
//! [`max_lateness`] after it: [`MAX_LATENESS`] where the backend can date the wait exactly. The fallback tests start the daemon without `-b` in a sandbox
//! (`common::sandbox`) where the kernel really refuses `bpf()`, and debugfs is covered.

mod common;

use common::sandbox::{top_mount_type, Sandbox};
use common::sleepers::{SleeperSpec, Sleepers};
use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// Defines, for each `scenario => body`, a module `scenario` with one `#[test]` per backend;
/// `body(test_name, launch)` runs with `-b <backend>`.
macro_rules! per_backend {
    ($($(#[$doc:meta])* $scenario:ident => $body:expr;)+) => {$(
        $(#[$doc])*
        mod $scenario {
            use super::*;

            fn run(backend: BackendUnderTest) {
                let test = format!("{}::{}", stringify!($scenario), backend.name());
                let body: fn(&str, Launch) = $body;
                body(&test, Launch::explicit(backend));
            }

            test_each_backend!(run);
        }
    )+};
}

const THRESHOLD: Duration = Duration::from_secs(3);
const THRESHOLD_ARG: &str = "3";
/// The daemon may log a line this much "before" the threshold measured from `t_hog`: `t_hog`
/// is taken when the harness learns the hog runs, a little after the victim's wait began.
const EARLY_SLACK: Duration = Duration::from_millis(50);
/// The boost must come at most this long after the threshold where the backend knows when the
/// wait began (contract; measured 1-5 ms on every backend, see README's figures).
const MAX_LATENESS: Duration = Duration::from_secs(1);
/// Where it does not (see `BackendUnderTest::dates_waits_exactly`), the first pass that sees
/// the task waiting dates it: passes come at least every min(-g, -t / 2), 1.5 s with `-t 3`,
/// and the first pass after CPU 1 idled samples nothing (idle detection), so that first
/// sighting comes up to two poll intervals after the wait began (measured: 2.99-3.01 s late).
const POLL_INTERVAL: Duration = Duration::from_millis(1500);

/// How long after the threshold a line about `daemon`'s victim may come.
fn max_lateness(daemon: &Daemon) -> Duration {
    if daemon.dates_waits_exactly {
        MAX_LATENESS
    } else {
        2 * POLL_INTERVAL + MAX_LATENESS
    }
}
/// Victim CPU time that proves a 1 s SCHED_DEADLINE boost (1 ms / 200 ms) happened. Measured
/// here: ~5-6 ms per boosted second (harness test); 2 ms leaves room for a late first period.
const MIN_DL_GAIN_NS: u64 = 2_000_000;
/// The same budget for a SCHED_FIFO boost: priority 98 for 1 ms of every 200 ms, as upstream.
const FIFO_ARGS: [&str; 5] = ["-F", "-r", "1000000", "-p", "200000000"];
/// Victim CPU time that proves a 1 s SCHED_FIFO boost cycled through at least three of its
/// five 1 ms windows (a single window, or a boost that never ended, gives 1 ms or 1 s).
const MIN_FIFO_GAIN_NS: u64 = 3_000_000;
const MAX_FIFO_GAIN_NS: u64 = 50_000_000;
/// Victim CPU time that counts as "none": the victim never runs while starved (0 measured).
const MAX_STARVED_GAIN_NS: u64 = 1_000_000;
/// How long the victim is watched after its restore, to see that the boost really ended.
const AFTER_RESTORE: Duration = Duration::from_millis(300);
/// How long the daemon may take to start and report its backend.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// SIGTERM must end the daemon within this.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);
/// An automatic fallback from one backend to the next must take at most this, from the
/// daemon's first line to its `using <name> backend` line (contract).
const FALLBACK_BUDGET: Duration = Duration::from_millis(100);
/// A line about a task stamped this long after the task was reaped may still describe a pass
/// that ran before (the reader threads stamp lines when they receive them, and CPU 0 is
/// shared). A leftover entry shows up much later: at the dead task's threshold, about 1 s
/// after the reap, or in every later pass.
const LOG_MARGIN: Duration = Duration::from_millis(250);

fn sleep_until(t: Instant) {
    thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn until(t: Instant) -> Duration {
    t.saturating_duration_since(Instant::now())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Signed `a - b` in seconds, for messages.
fn delta(a: Instant, b: Instant) -> f64 {
    if a >= b {
        secs(a - b)
    } else {
        -secs(b - a)
    }
}

fn starved_pattern(comm: &str, pid: libc::pid_t) -> String {
    format!("{comm}-{pid} starved on CPU {TEST_CPU} for ")
}

fn boosted_pattern(comm: &str, pid: libc::pid_t, policy: &str) -> String {
    format!("boosted pid {pid} ({comm}) (cpu {TEST_CPU}) using {policy}")
}

/// Does `text` mention `pid` as a whole number?
fn mentions_pid(text: &str, pid: libc::pid_t) -> bool {
    let pid = pid.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|w| w == pid)
}

/// How a test starts the daemon, and which backend it must end up using.
#[derive(Clone, Copy, Debug)]
struct Launch {
    /// `-b <name>`, or `None` for the automatic choice.
    requested: Option<BackendUnderTest>,
    expected: BackendUnderTest,
    sandbox: Sandbox,
}

impl Launch {
    fn explicit(backend: BackendUnderTest) -> Launch {
        Launch {
            requested: Some(backend),
            expected: backend,
            sandbox: Sandbox::NONE,
        }
    }

    /// Without `-b`, in `sandbox`, ending on `expected`.
    fn automatic(sandbox: Sandbox, expected: BackendUnderTest) -> Launch {
        Launch {
            requested: None,
            expected,
            sandbox,
        }
    }

    /// The automatic order, up to the backend it must end on: each skipped backend must log
    /// `<skipped> backend unavailable: <reason>; trying <next>`.
    fn skipped(&self) -> &'static [(&'static str, &'static str)] {
        if self.requested.is_some() {
            return &[];
        }
        match self.expected {
            BackendUnderTest::QueueTrack => &[],
            BackendUnderTest::SchedDebug => &[("queue_track", "sched_debug")],
            BackendUnderTest::Procfs => {
                &[("queue_track", "sched_debug"), ("sched_debug", "procfs")]
            }
        }
    }
}

fn is_backend_choice(text: &str) -> bool {
    text.contains("using ") && text.ends_with(" backend")
}

/// Starts the daemon with `args` as `launch` says and waits until it has chosen the expected
/// backend (after logging every fallback on the way, fast enough) and turned RT throttling off.
fn start_daemon(launch: Launch, args: &[&str]) -> Daemon {
    let mut full_args: Vec<&str> = args.to_vec();
    if let Some(backend) = launch.requested {
        full_args.extend(["-b", backend.name()]);
    }
    let mut daemon = Daemon::spawn_sandboxed(&full_args, launch.sandbox);
    daemon.dates_waits_exactly = launch.expected.dates_waits_exactly();
    let chosen = daemon.wait_for(
        |l| l.stream == "stderr" && is_backend_choice(&l.text),
        STARTUP_TIMEOUT,
    );
    let Some(chosen) = chosen else {
        let status = daemon.try_status();
        panic!(
            "no `using <name> backend` line within {STARTUP_TIMEOUT:?} (daemon exit status: \
             {status:?})\n{}",
            daemon.transcript()
        );
    };
    let want = format!("using {} backend", launch.expected.name());
    assert!(
        chosen.text.ends_with(&want),
        "the daemon chose {:?}, want {want:?}\n{}",
        chosen.text,
        daemon.transcript()
    );
    check_fallbacks(&daemon, launch, &chosen);
    if launch.sandbox.hide_debugfs {
        // The daemon mounts debugfs only when /proc/mounts lists none; here it is listed.
        let top = top_mount_type(daemon.pid(), "/sys/kernel/debug");
        assert_eq!(
            top.as_ref().ok().and_then(|t| t.as_deref()),
            Some("tmpfs"),
            "/sys/kernel/debug in the daemon's namespace is no longer our empty tmpfs: {top:?}\n{}",
            daemon.transcript()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while read_rt_runtime_us().ok() != Some(-1) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        read_rt_runtime_us().ok(),
        Some(-1),
        "the daemon did not turn RT throttling off (sched_rt_runtime_us=-1)\n{}",
        daemon.transcript()
    );
    daemon
}

/// Starts the daemon on CPU 1 with `-t 3`, a boost of `boost_s` seconds and [`MEASURABLE_BOOST`].
fn start_dl_daemon(launch: Launch, boost_s: &str) -> Daemon {
    start_daemon(
        launch,
        &watch_test_cpu(THRESHOLD_ARG, boost_s, &MEASURABLE_BOOST),
    )
}

/// Every backend skipped on the way to `chosen` logged why, before `chosen`, and the whole
/// fallback took at most [`FALLBACK_BUDGET`] from the daemon's first line.
fn check_fallbacks(daemon: &Daemon, launch: Launch, chosen: &LogLine) {
    let skipped = launch.skipped();
    if skipped.is_empty() {
        return;
    }
    let lines = daemon.lines();
    for (backend, next) in skipped {
        let prefix = format!("stalld: {backend} backend unavailable: ");
        let suffix = format!("; trying {next}");
        let found = lines
            .iter()
            .find(|l| l.text.starts_with(&prefix) && l.text.ends_with(&suffix));
        let Some(found) = found else {
            panic!(
                "no `{prefix}<reason>{suffix}` line\n{}",
                daemon.transcript()
            );
        };
        assert!(
            found.at <= chosen.at,
            "{:?} came after {:?}\n{}",
            found.text,
            chosen.text,
            daemon.transcript()
        );
    }
    let first = lines.first().expect("the daemon logged its backend choice");
    let fallback = chosen.at.saturating_duration_since(first.at);
    eprintln!(
        "fallback to {}: {:.1} ms from the first line, {:.1} ms after spawn",
        launch.expected.name(),
        fallback.as_secs_f64() * 1e3,
        chosen
            .at
            .saturating_duration_since(daemon.started)
            .as_secs_f64()
            * 1e3
    );
    assert!(
        fallback <= FALLBACK_BUDGET,
        "the fallback took {:.1} ms from the first line to {:?} (max {FALLBACK_BUDGET:?})\n{}",
        fallback.as_secs_f64() * 1e3,
        chosen.text,
        daemon.transcript()
    );
}

/// SIGTERM; asserts a prompt exit with status 0 and RT throttling restored.
fn stop_daemon(mut daemon: Daemon, env: &E2e) {
    let stopped = daemon.terminate(EXIT_TIMEOUT);
    let Some((status, took)) = stopped else {
        panic!(
            "daemon still running {EXIT_TIMEOUT:?} after SIGTERM\n{}",
            daemon.transcript()
        );
    };
    assert!(
        status.success(),
        "daemon exit status {status} after SIGTERM (want 0), took {:.3} s\n{}",
        secs(took),
        daemon.transcript()
    );
    let now = read_rt_runtime_us().expect("read sched_rt_runtime_us");
    assert_eq!(
        now,
        env.rt_runtime.saved,
        "sched_rt_runtime_us not restored after the daemon exited\n{}",
        daemon.transcript()
    );
}

/// Waits for `pattern` and checks it came after `threshold_at` (minus slack) and at most
/// [`max_lateness`] after it.
fn expect_line_on_time(daemon: &Daemon, pattern: &str, threshold_at: Instant) -> (Instant, String) {
    let lateness = max_lateness(daemon);
    let found = daemon.wait_for_line(
        pattern,
        until(threshold_at + lateness + Duration::from_secs(2)),
    );
    let Some((at, line)) = found else {
        panic!("no line containing {pattern:?}\n{}", daemon.transcript());
    };
    assert!(
        at + EARLY_SLACK >= threshold_at,
        "{line:?} came {:.3} s BEFORE the threshold\n{}",
        delta(threshold_at, at),
        daemon.transcript()
    );
    assert!(
        at <= threshold_at + lateness,
        "{line:?} came {:.3} s after the threshold (max {lateness:?})\n{}",
        delta(at, threshold_at),
        daemon.transcript()
    );
    (at, line)
}

fn assert_never_boosted(daemon: &Daemon, who: &Spinner) {
    let pattern = format!("boosted pid {} ", who.pid);
    let lines = daemon.lines_containing(&pattern);
    assert!(
        lines.is_empty(),
        "{}-{} must not be boosted: {lines:?}\n{}",
        who.name,
        who.pid,
        daemon.transcript()
    );
}

/// The shared body of the boost tests (per backend, and after a fallback).
fn boost_rescues_starved_fifo_task(
    test: &str,
    launch: Launch,
    extra_args: &[&str],
    policy_name: &str,
) {
    let Some(env) = e2e_begin(test) else { return };
    let duration = Duration::from_secs(1);
    let mut args = watch_test_cpu(THRESHOLD_ARG, "1", &[]);
    args.extend_from_slice(extra_args);
    let daemon = start_daemon(launch, &args);
    let lifetime = THRESHOLD + 2 * POLL_INTERVAL + MAX_LATENESS + duration + Duration::from_secs(3);
    let scenario = Scenario::start(lifetime, lifetime);
    let victim = &scenario.victim;
    let threshold_at = scenario.t_hog + THRESHOLD;

    let (starved_at, _) = expect_line_on_time(
        &daemon,
        &starved_pattern(VICTIM_NAME, victim.pid),
        threshold_at,
    );
    let (boosted_at, _) = expect_line_on_time(
        &daemon,
        &boosted_pattern(VICTIM_NAME, victim.pid, policy_name),
        threshold_at,
    );
    if policy_name == "SCHED_DEADLINE" {
        let during = victim.policy();
        assert_eq!(
            during.policy,
            SCHED_DEADLINE,
            "victim not SCHED_DEADLINE right after the boosted line: {during:?}\n{}",
            daemon.transcript()
        );
    } else {
        // A SCHED_FIFO boost holds priority 98 for only 1 ms of each period: wait the boost out.
        thread::sleep(until(boosted_at + duration + Duration::from_millis(100)));
    }

    let restored = wait_for_policy(
        victim.pid,
        Policy::fifo(VICTIM_PRIORITY),
        until(boosted_at + duration + Duration::from_secs(1)),
    );
    let restored_after = match restored {
        Ok(_) => boosted_at.elapsed(),
        Err(last) => panic!(
            "victim not back to SCHED_FIFO {VICTIM_PRIORITY} {:.3} s after the boost: {last:?}\n{}",
            delta(Instant::now(), boosted_at),
            daemon.transcript()
        ),
    };
    let gain = scenario.victim_gain_ns();
    // Once restored, the victim must stop running at once: the hog has the higher priority.
    thread::sleep(AFTER_RESTORE);
    let after_restore = scenario.victim_gain_ns() - gain;
    eprintln!(
        "{test}: starved line at threshold{:+.3} s, boosted line at threshold{:+.3} s, \
         restored {:.3} s after it, victim gained {:.3} ms, then {:.3} ms in the {:?} after",
        delta(starved_at, threshold_at),
        delta(boosted_at, threshold_at),
        secs(restored_after),
        ms(gain),
        ms(after_restore),
        AFTER_RESTORE
    );
    assert!(
        after_restore < MAX_STARVED_GAIN_NS,
        "victim kept running {:.3} ms in the {AFTER_RESTORE:?} after its restore: the kernel does \
         not reschedule a running task moved from SCHED_DEADLINE down to SCHED_FIFO; restore \
         through the priority above first (see common::restore_fifo)\n{}",
        ms(after_restore),
        daemon.transcript()
    );
    if policy_name == "SCHED_DEADLINE" {
        assert!(
            restored_after + Duration::from_millis(200) >= duration,
            "boost lasted only {:.3} s, want {duration:?}\n{}",
            secs(restored_after),
            daemon.transcript()
        );
        assert!(
            gain >= MIN_DL_GAIN_NS,
            "victim gained {:.3} ms of CPU over the boost, want >= {:.3} ms\n{}",
            ms(gain),
            ms(MIN_DL_GAIN_NS),
            daemon.transcript()
        );
    } else {
        assert!(
            (MIN_FIFO_GAIN_NS..MAX_FIFO_GAIN_NS).contains(&gain),
            "victim gained {:.3} ms of CPU over the SCHED_FIFO boost, want {:.0}..{:.0} ms \
             (1 ms of every 200 ms for 1 s)\n{}",
            ms(gain),
            ms(MIN_FIFO_GAIN_NS),
            ms(MAX_FIFO_GAIN_NS),
            daemon.transcript()
        );
    }
    assert_never_boosted(&daemon, &scenario.hog);
    stop_daemon(daemon, &env);
    assert_eq!(victim.policy(), Policy::fifo(VICTIM_PRIORITY));
}

/// Proves the harness without the daemon: the hog really starves the victim (RT throttling
/// off), a SCHED_DEADLINE boost by hand makes it progress, restoring FIFO 1 starves it again.
#[test]
fn harness_hog_really_starves_victim() {
    let Some(env) = e2e_begin("harness_hog_really_starves_victim") else {
        return;
    };
    write_rt_runtime_us(-1).expect("turn RT throttling off");
    let lifetime = Duration::from_secs(6);
    let scenario = Scenario::start(lifetime, lifetime);
    let victim = &scenario.victim;
    let hog = &scenario.hog;
    assert_eq!(victim.policy(), Policy::fifo(VICTIM_PRIORITY));
    assert_eq!(hog.policy(), Policy::fifo(HOG_PRIORITY));

    // Starved: runnable on CPU 1, yet no CPU time.
    let hog_cpu0 = hog.cpu_time_ns();
    thread::sleep(Duration::from_millis(1500));
    let starved_gain = scenario.victim_gain_ns();
    let hog_gain = hog.cpu_time_ns() - hog_cpu0;
    let state = proc_state(victim.pid).expect("victim state");
    assert_eq!(state, 'R', "the victim must be runnable, not sleeping");
    assert_eq!(last_cpu(victim.pid).expect("victim cpu"), TEST_CPU);
    assert_eq!(last_cpu(hog.pid).expect("hog cpu"), TEST_CPU);

    // A boost by hand, with the daemon's test parameters (1 ms every 200 ms), for 1 s.
    let before = victim.cpu_time_ns();
    sched_setattr(
        victim.pid,
        &SchedAttr::deadline(1_000_000, 200_000_000, 200_000_000),
    )
    .expect("SCHED_DEADLINE boost of the victim (needs sched_rt_runtime_us=-1)");
    assert_eq!(victim.policy().policy, SCHED_DEADLINE);
    thread::sleep(Duration::from_secs(1));
    restore_fifo(victim.pid, VICTIM_PRIORITY).expect("restore SCHED_FIFO 1");
    let dl_gain = victim.cpu_time_ns() - before;
    assert_eq!(victim.policy(), Policy::fifo(VICTIM_PRIORITY));

    // Restored: starved again.
    let before = victim.cpu_time_ns();
    thread::sleep(Duration::from_millis(500));
    let restarved_gain = victim.cpu_time_ns() - before;

    // A SCHED_FIFO 98 boost by hand, as -F does, for 300 ms.
    let before = victim.cpu_time_ns();
    sched_setattr(victim.pid, &SchedAttr::fifo(98)).expect("SCHED_FIFO 98 boost");
    thread::sleep(Duration::from_millis(300));
    restore_fifo(victim.pid, VICTIM_PRIORITY).expect("restore SCHED_FIFO 1");
    let fifo_gain = victim.cpu_time_ns() - before;

    eprintln!(
        "harness: starved 1.5 s: victim +{:.3} ms, hog +{:.1} ms; DEADLINE 1ms/200ms for 1 s: \
         victim +{:.3} ms; restored FIFO 1 for 0.5 s: victim +{:.3} ms; FIFO 98 for 0.3 s: \
         victim +{:.1} ms",
        ms(starved_gain),
        ms(hog_gain),
        ms(dl_gain),
        ms(restarved_gain),
        ms(fifo_gain)
    );
    assert!(
        starved_gain < MAX_STARVED_GAIN_NS,
        "victim gained {:.3} ms while starved",
        ms(starved_gain)
    );
    assert!(
        hog_gain > 1_000_000_000,
        "the hog must own CPU 1 (+{:.1} ms in 1.5 s)",
        ms(hog_gain)
    );
    assert!(
        dl_gain >= MIN_DL_GAIN_NS,
        "DEADLINE boost gave {:.3} ms",
        ms(dl_gain)
    );
    assert!(
        restarved_gain < MAX_STARVED_GAIN_NS,
        "victim not starved again after restore"
    );
    assert!(
        fifo_gain >= 200_000_000,
        "FIFO 98 boost gave {:.1} ms",
        ms(fifo_gain)
    );
    drop(scenario);
    drop(env);
}

per_backend! {
    deadline_boost_rescues_starved_fifo_task => |test: &str, launch: Launch| {
        boost_rescues_starved_fifo_task(test, launch, &MEASURABLE_BOOST, "SCHED_DEADLINE")
    };
    fifo_boost_rescues_starved_fifo_task => |test: &str, launch: Launch| {
        boost_rescues_starved_fifo_task(test, launch, &FIFO_ARGS, "SCHED_FIFO")
    };
    log_only_reports_but_never_boosts => log_only_reports_but_never_boosts;
    ignored_thread_is_never_boosted => ignored_thread_is_never_boosted;
    /// `-d` must not exceed `-t` (upstream rule), so the boost lasts 3 s and SIGTERM comes 1 s in.
    sigterm_mid_boost_restores_task_and_throttling =>
        sigterm_mid_boost_restores_task_and_throttling;
    victim_exiting_mid_boost_is_tolerated => victim_exiting_mid_boost_is_tolerated;
    task_starving_before_start_is_rescued_on_time => task_starving_before_start_is_rescued_on_time;
    task_exiting_while_waiting_leaves_nothing_behind =>
        task_exiting_while_waiting_leaves_nothing_behind;
    busy_sleepers_give_no_false_positives => busy_sleepers_give_no_false_positives;
    preempted_task_seen_running_is_boosted_at_the_threshold =>
        preempted_task_seen_running_is_boosted_at_the_threshold;
    sleeper_woken_behind_the_hog_just_before_start_is_not_reported_early =>
        sleeper_woken_behind_the_hog_just_before_start_is_not_reported_early;
    sleeper_woken_between_two_passes_is_not_reported_early =>
        sleeper_woken_between_two_passes_is_not_reported_early;
}

/// How long the sleeping victim sleeps: its last run (`se.exec_start`) is that far behind its
/// wake-up. Longer than the threshold, so dating its wait from its last run reports it at once.
const VICTIM_SLEEP: Duration = Duration::from_secs(4);

/// A FIFO 1 victim that slept [`VICTIM_SLEEP`] on CPU 1 wakes behind the hog; the hog and
/// the victim live long enough for the latest allowed report and a 1 s boost.
fn start_hog_and_sleeper() -> (Spinner, Spinner, Instant) {
    let lifetime = VICTIM_SLEEP + THRESHOLD + 2 * POLL_INTERVAL + MAX_LATENESS;
    let lifetime = lifetime + Duration::from_secs(5);
    let (victim, wakes_at) = Spinner::spawn_sleeping(
        SpinnerSpec {
            name: VICTIM_NAME,
            fifo_priority: VICTIM_PRIORITY,
            cpu: TEST_CPU,
            lifetime,
        },
        VICTIM_SLEEP,
    )
    .expect("start the sleeping victim");
    let hog = Spinner::spawn(SpinnerSpec {
        name: HOG_NAME,
        fifo_priority: HOG_PRIORITY,
        cpu: TEST_CPU,
        lifetime,
    })
    .expect("start hog");
    assert!(
        hog.running_since < wakes_at,
        "the hog started after the victim woke"
    );
    (victim, hog, wakes_at)
}

/// The daemon starts 0.3 s after a victim that slept woke behind the hog: its wait began at
/// the wake-up, not at its last run; no backend may report it before the wake-up plus the
/// threshold (before the fix, queue_track and sched_debug reported it at once, "starved for
/// 4 seconds").
fn sleeper_woken_behind_the_hog_just_before_start_is_not_reported_early(
    test: &str,
    launch: Launch,
) {
    let Some(env) = e2e_begin(test) else { return };
    let (victim, hog, wakes_at) = start_hog_and_sleeper();
    sleep_until(wakes_at + Duration::from_millis(300));
    let daemon = start_dl_daemon(launch, "1");
    let threshold_at = wakes_at + THRESHOLD;
    let rescue = expect_deadline_rescue(&daemon, &victim, threshold_at);
    eprintln!(
        "{test}: woke {:.3} s before the daemon started; starved line at threshold{:+.3} s",
        delta(daemon.started, wakes_at),
        delta(rescue.starved_at, threshold_at),
    );
    assert_never_boosted(&daemon, &hog);
    drop(hog);
    drop(victim);
    stop_daemon(daemon, &env);
}

/// With the daemon running and the hog on CPU 1, a victim that slept wakes behind it at a
/// moment unrelated to the daemon's passes: no backend may date its wait from an earlier
/// pass (before the fix, sched_debug and procfs dated it from the previous pass, up to a pass
/// interval early).
fn sleeper_woken_between_two_passes_is_not_reported_early(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let daemon = start_dl_daemon(launch, "1");
    let (victim, hog, wakes_at) = start_hog_and_sleeper();
    let threshold_at = wakes_at + THRESHOLD;
    let rescue = expect_deadline_rescue(&daemon, &victim, threshold_at);
    eprintln!(
        "{test}: starved line at threshold{:+.3} s",
        delta(rescue.starved_at, threshold_at),
    );
    assert_never_boosted(&daemon, &hog);
    drop(hog);
    drop(victim);
    stop_daemon(daemon, &env);
}

/// Long enough for a pass that examines CPU 1 to see the victim running there: with `-c 1`
/// the first pass after CPU 1 idled is an idle pass that samples nothing, so two poll
/// intervals, plus a margin for a loaded machine.
const RUN_BEFORE_HOG: Duration = Duration::from_millis(2 * 1500 + 500);

/// The victim runs on CPU 1 while the daemon watches, then the hog preempts it: every backend
/// can prove when this wait began (sched_debug and procfs: it was seen running, switched once
/// since, not voluntarily), so every backend must boost it within [`MAX_LATENESS`].
fn preempted_task_seen_running_is_boosted_at_the_threshold(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let mut daemon = start_dl_daemon(launch, "1");
    let lifetime = RUN_BEFORE_HOG + THRESHOLD + MAX_LATENESS + Duration::from_secs(5);
    let victim = Spinner::spawn(SpinnerSpec {
        name: VICTIM_NAME,
        fifo_priority: VICTIM_PRIORITY,
        cpu: TEST_CPU,
        lifetime,
    })
    .expect("start victim");
    thread::sleep(RUN_BEFORE_HOG);
    let hog = Spinner::spawn(SpinnerSpec {
        name: HOG_NAME,
        fifo_priority: HOG_PRIORITY,
        cpu: TEST_CPU,
        lifetime,
    })
    .expect("start hog");
    daemon.dates_waits_exactly = true;
    let threshold_at = hog.running_since + THRESHOLD;
    let rescue = expect_deadline_rescue(&daemon, &victim, threshold_at);
    eprintln!(
        "{test}: starved line at threshold{:+.3} s, boosted line at threshold{:+.3} s",
        delta(rescue.starved_at, threshold_at),
        delta(rescue.boosted_at, threshold_at),
    );
    assert_never_boosted(&daemon, &hog);
    drop(hog);
    drop(victim);
    stop_daemon(daemon, &env);
}

/// `-g` for the `-l` test: a task that stays starved is reported again this often.
const LOG_ONLY_GRANULARITY: Duration = Duration::from_secs(2);

/// The wait in seconds a `starved on CPU N for S seconds` line reports.
fn reported_wait_s(line: &str) -> Option<u64> {
    line.split(" for ").nth(1)?.split(' ').next()?.parse().ok()
}

fn log_only_reports_but_never_boosts(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let daemon = start_daemon(
        launch,
        &watch_test_cpu(THRESHOLD_ARG, "1", &["-l", "-g", "2"]),
    );
    let lifetime = THRESHOLD
        + 2 * POLL_INTERVAL
        + MAX_LATENESS
        + 2 * LOG_ONLY_GRANULARITY
        + Duration::from_secs(4);
    let scenario = Scenario::start(lifetime, lifetime);
    let victim = &scenario.victim;
    let threshold_at = scenario.t_hog + THRESHOLD;
    let pattern = starved_pattern(VICTIM_NAME, victim.pid);
    let (first_at, first) = expect_line_on_time(&daemon, &pattern, threshold_at);
    // Upstream's -l: the same task is reported again every -g while it stays starved, its
    // wait growing. The daemon schedules the report for exactly one -g later; 1 s of margin
    // for a loaded machine.
    let again = daemon.wait_for(
        |l| l.stream == "stderr" && l.text.contains(&pattern) && l.text != first,
        until(first_at + LOG_ONLY_GRANULARITY + Duration::from_secs(1)),
    );
    let Some(again) = again else {
        panic!(
            "no second {pattern:?} line within {LOG_ONLY_GRANULARITY:?} + 1 s of the first\n{}",
            daemon.transcript()
        );
    };
    let gap = delta(again.at, first_at);
    assert!(
        gap + 0.05 >= LOG_ONLY_GRANULARITY.as_secs_f64(),
        "reported again {gap:.3} s after the first report, before -g\n{}",
        daemon.transcript()
    );
    assert!(
        reported_wait_s(&again.text) > reported_wait_s(&first),
        "the second report {:?} does not show a longer wait than {first:?}\n{}",
        again.text,
        daemon.transcript()
    );
    // One -g after the first report, a 1 s boost would have come and ended by now.
    let boosted = daemon.lines_containing("boosted");
    assert!(
        boosted.is_empty(),
        "-l must never boost: {boosted:?}\n{}",
        daemon.transcript()
    );
    let gain = scenario.victim_gain_ns();
    eprintln!("{test}: victim gained {:.3} ms", ms(gain));
    assert!(
        gain < MAX_STARVED_GAIN_NS,
        "victim gained {:.3} ms under -l\n{}",
        ms(gain),
        daemon.transcript()
    );
    assert_eq!(victim.policy(), Policy::fifo(VICTIM_PRIORITY));
    stop_daemon(daemon, &env);
}

fn ignored_thread_is_never_boosted(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let args = [&["-i", "stv_vic"][..], &MEASURABLE_BOOST].concat();
    let daemon = start_daemon(launch, &watch_test_cpu(THRESHOLD_ARG, "1", &args));
    let lifetime = THRESHOLD + Duration::from_secs(5);
    // A second starving task the regex does not match: proves the daemon does boost here.
    let control = SpinnerSpec {
        name: "stv_control",
        fifo_priority: VICTIM_PRIORITY + 1,
        cpu: TEST_CPU,
        lifetime,
    };
    let scenario = Scenario::start_with_others(lifetime, &[control], lifetime);
    let victim = &scenario.victim;
    let control = &scenario.others[0];
    let threshold_at = scenario.t_hog + THRESHOLD;
    let control_cpu0 = control.cpu_time_ns();
    let (boosted_at, _) = expect_line_on_time(
        &daemon,
        &boosted_pattern(control.name, control.pid, "SCHED_DEADLINE"),
        threshold_at,
    );
    sleep_until(boosted_at + Duration::from_millis(1500));
    assert_never_boosted(&daemon, victim);
    let gain = scenario.victim_gain_ns();
    let control_gain = control.cpu_time_ns() - control_cpu0;
    eprintln!(
        "{test}: victim gained {:.3} ms, control gained {:.3} ms",
        ms(gain),
        ms(control_gain)
    );
    assert!(
        gain < MAX_STARVED_GAIN_NS,
        "ignored victim gained {:.3} ms\n{}",
        ms(gain),
        daemon.transcript()
    );
    assert!(
        control_gain > 0,
        "control task boosted but gained no CPU\n{}",
        daemon.transcript()
    );
    assert_eq!(victim.policy(), Policy::fifo(VICTIM_PRIORITY));
    stop_daemon(daemon, &env);
}

fn sigterm_mid_boost_restores_task_and_throttling(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let daemon = start_dl_daemon(launch, "3");
    let lifetime = THRESHOLD + Duration::from_secs(7);
    let scenario = Scenario::start(lifetime, lifetime);
    let victim = &scenario.victim;
    let threshold_at = scenario.t_hog + THRESHOLD;
    let (boosted_at, _) = expect_line_on_time(
        &daemon,
        &boosted_pattern(VICTIM_NAME, victim.pid, "SCHED_DEADLINE"),
        threshold_at,
    );
    sleep_until(boosted_at + Duration::from_secs(1));
    let mid = victim.policy();
    assert_eq!(
        mid.policy,
        SCHED_DEADLINE,
        "victim must still be boosted 1 s into a 3 s boost: {mid:?}\n{}",
        daemon.transcript()
    );
    stop_daemon(daemon, &env);
    assert_eq!(
        victim.policy(),
        Policy::fifo(VICTIM_PRIORITY),
        "victim still boosted after the daemon exited"
    );
}

fn victim_exiting_mid_boost_is_tolerated(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let boost = Duration::from_secs(3);
    let daemon = start_dl_daemon(launch, "3");
    // The victim notices its deadline only when it runs, i.e. during the boost.
    let victim_lifetime = THRESHOLD + Duration::from_millis(500);
    let hog_lifetime =
        THRESHOLD + 2 * POLL_INTERVAL + MAX_LATENESS + boost + Duration::from_secs(4);
    let mut scenario = Scenario::start(victim_lifetime, hog_lifetime);
    let pid = scenario.victim.pid;
    let threshold_at = scenario.t_hog + THRESHOLD;
    let (boosted_at, _) = expect_line_on_time(
        &daemon,
        &boosted_pattern(VICTIM_NAME, pid, "SCHED_DEADLINE"),
        threshold_at,
    );
    let status = scenario.victim.wait_exit(until(boosted_at + boost));
    let exited_at = Instant::now();
    let Some(status) = status else {
        panic!(
            "victim did not exit during its boost\n{}",
            daemon.transcript()
        );
    };
    assert_eq!(
        describe_wait_status(status),
        "exited with 0",
        "victim must exit on its own"
    );
    // Past the end of the boost the daemon would have restored.
    sleep_until(boosted_at + boost + Duration::from_millis(1500));
    let mut daemon = daemon;
    assert!(
        daemon.try_status().is_none(),
        "daemon died after its boosted task exited\n{}",
        daemon.transcript()
    );
    let noise: Vec<_> = daemon
        .lines()
        .into_iter()
        .filter(|l| mentions_pid(&l.text, pid))
        .filter(|l| {
            !l.text.contains(" starved on CPU ")
                && !l.text.contains("boosted pid ")
                && !l.text.contains(" might starve on CPU ")
        })
        .collect();
    eprintln!(
        "{test}: victim exited {:.3} s into the boost; other lines about it: {noise:?}",
        delta(exited_at, boosted_at)
    );
    assert!(
        noise.len() <= 1,
        "more than one line about the vanished task: {noise:?}\n{}",
        daemon.transcript()
    );
    stop_daemon(daemon, &env);
}

/// When a rescue's lines came and what it gave the task.
struct Rescue {
    starved_at: Instant,
    boosted_at: Instant,
    restored_at: Instant,
    gain_ns: u64,
}

/// Waits for `task` (starving at SCHED_FIFO [`VICTIM_PRIORITY`]) to be reported and boosted
/// with SCHED_DEADLINE on time for `threshold_at`, then restored after the 1 s boost (`-d 1`),
/// having gained CPU time.
fn expect_deadline_rescue(daemon: &Daemon, task: &Spinner, threshold_at: Instant) -> Rescue {
    let cpu_before = task.cpu_time_ns();
    let (starved_at, _) =
        expect_line_on_time(daemon, &starved_pattern(task.name, task.pid), threshold_at);
    let (boosted_at, _) = expect_line_on_time(
        daemon,
        &boosted_pattern(task.name, task.pid, "SCHED_DEADLINE"),
        threshold_at,
    );
    let restored = wait_for_policy(
        task.pid,
        Policy::fifo(VICTIM_PRIORITY),
        until(boosted_at + Duration::from_secs(2)),
    );
    if let Err(last) = restored {
        panic!(
            "{}-{} not back to SCHED_FIFO {VICTIM_PRIORITY} 2 s after its boost: {last:?}\n{}",
            task.name,
            task.pid,
            daemon.transcript()
        );
    }
    let restored_at = Instant::now();
    let gain_ns = task.cpu_time_ns() - cpu_before;
    assert!(
        gain_ns >= MIN_DL_GAIN_NS,
        "{}-{} gained {:.3} ms of CPU over its boost, want >= {:.3} ms\n{}",
        task.name,
        task.pid,
        ms(gain_ns),
        ms(MIN_DL_GAIN_NS),
        daemon.transcript()
    );
    Rescue {
        starved_at,
        boosted_at,
        restored_at,
        gain_ns,
    }
}

/// How long the victim already waits when the daemon starts.
const WAIT_BEFORE_START: Duration = Duration::from_secs(2);

/// The victim waits [`WAIT_BEFORE_START`] before the daemon starts (RT throttling still on,
/// as on a machine without stalld: the victim gets nothing either way). queue_track reads when
/// its wait began, so the boost comes about 1 s after the daemon's start; sched_debug and
/// procfs count the wait from their first pass (they cannot prove it began earlier: a task
/// that just woke looks the same), so it comes one threshold after the start, never before.
fn task_starving_before_start_is_rescued_on_time(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let lifetime = 2 * WAIT_BEFORE_START
        + THRESHOLD
        + 2 * POLL_INTERVAL
        + MAX_LATENESS
        + Duration::from_secs(4);
    let scenario = Scenario::start(lifetime, lifetime);
    sleep_until(scenario.t_hog + WAIT_BEFORE_START);
    let gain_before_start = scenario.victim_gain_ns();
    let daemon = start_dl_daemon(launch, "1");
    let threshold_at = if launch.expected.dates_waits_exactly() {
        scenario.t_hog + THRESHOLD
    } else {
        daemon.started + THRESHOLD
    };
    let rescue = expect_deadline_rescue(&daemon, &scenario.victim, threshold_at);
    eprintln!(
        "{test}: daemon started {:.3} s into the wait; starved line at threshold{:+.3} s, \
         boosted line at threshold{:+.3} s ({:.3} s after the daemon started), victim gained \
         {:.3} ms before the daemon, {:.3} ms from its boost",
        delta(daemon.started, scenario.t_hog),
        delta(rescue.starved_at, threshold_at),
        delta(rescue.boosted_at, threshold_at),
        delta(rescue.boosted_at, daemon.started),
        ms(gain_before_start),
        ms(rescue.gain_ns)
    );
    assert!(
        gain_before_start < MAX_STARVED_GAIN_NS,
        "the victim gained {:.3} ms before the daemon started: it was not starving",
        ms(gain_before_start)
    );
    assert_never_boosted(&daemon, &scenario.hog);
    stop_daemon(daemon, &env);
}

/// How long the first victim waits before the test kills it: more than a sched_debug poll
/// interval (threshold / 2), so every backend has it in its tables, less than the threshold.
const WAIT_BEFORE_KILL: Duration = Duration::from_secs(2);
/// From the reap to the second victim: at least one sched_debug pass sees CPU 1 without it.
const GAP_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The victim is SIGKILLed while it waits (it dies once the harness lifts it above the hog).
/// Nothing about it may follow: no starved or boosted line ever (its threshold passes while
/// the hog still runs), no line at all after its reap, while the daemon keeps examining
/// CPU 1 and rescues a second victim started afterwards on time.
fn task_exiting_while_waiting_leaves_nothing_behind(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let daemon = start_dl_daemon(launch, "1");
    let lifetime = WAIT_BEFORE_KILL
        + GAP_AFTER_EXIT
        + THRESHOLD
        + 2 * POLL_INTERVAL
        + MAX_LATENESS
        + Duration::from_secs(5);
    let mut scenario = Scenario::start(lifetime, lifetime);
    let dead = scenario.victim.pid;
    sleep_until(scenario.t_hog + WAIT_BEFORE_KILL);
    // A starved task dies only once it runs: SIGKILL, then lift it above the hog.
    scenario.victim.kill();
    let killed_at = Instant::now();
    sched_setattr(dead, &SchedAttr::fifo(HOG_PRIORITY + 1))
        .unwrap_or_else(|e| panic!("lift the killed victim above the hog: {e}"));
    let Some(status) = scenario.victim.wait_exit(Duration::from_secs(2)) else {
        panic!(
            "killed victim still there 2 s after SIGKILL\n{}",
            daemon.transcript()
        );
    };
    let reaped_at = Instant::now();
    assert!(
        describe_wait_status(status).starts_with("killed by signal 9"),
        "victim: {}",
        describe_wait_status(status)
    );
    thread::sleep(GAP_AFTER_EXIT);
    let second_since = scenario
        .add_waiting_task(SpinnerSpec {
            name: "stv_victim2",
            fifo_priority: VICTIM_PRIORITY,
            cpu: TEST_CPU,
            lifetime,
        })
        .expect("start the second victim");
    let second = scenario.others.last().expect("second victim");
    let rescue = expect_deadline_rescue(&daemon, second, second_since + THRESHOLD);

    let lines = daemon.lines();
    let reported: Vec<_> = lines
        .iter()
        .filter(|l| mentions_pid(&l.text, dead))
        .filter(|l| l.text.contains(" starved on CPU ") || l.text.contains("boosted pid "))
        .collect();
    assert!(
        reported.is_empty(),
        "the task that exited while waiting was reported: {reported:?}\n{}",
        daemon.transcript()
    );
    let after_reap = reaped_at + LOG_MARGIN;
    let left: Vec<_> = lines
        .iter()
        .filter(|l| l.at >= after_reap && mentions_pid(&l.text, dead))
        .collect();
    assert!(
        left.is_empty(),
        "lines about pid {dead} after it was reaped: {left:?}\n{}",
        daemon.transcript()
    );
    let pass_prefix = format!("stalld: checking cpu {TEST_CPU} - ");
    let passes: Vec<&str> = lines
        .iter()
        .filter(|l| l.at >= after_reap && l.text.starts_with(&pass_prefix))
        .map(|l| l.text.trim_start_matches(&pass_prefix))
        .collect();
    eprintln!(
        "{test}: victim reaped {:.3} s after SIGKILL; passes over CPU {TEST_CPU} after the reap: \
         {passes:?}; second victim boosted at threshold{:+.3} s, restored {:.3} s later, gained \
         {:.3} ms",
        delta(reaped_at, killed_at),
        delta(rescue.boosted_at, second_since + THRESHOLD),
        delta(rescue.restored_at, rescue.boosted_at),
        ms(rescue.gain_ns)
    );
    assert!(
        !passes.is_empty(),
        "the daemon never examined CPU {TEST_CPU} after the reap (-v pass lines)\n{}",
        daemon.transcript()
    );
    stop_daemon(daemon, &env);
}

/// Length of the false-positive run.
const BUSY_RUN: Duration = Duration::from_secs(10);

/// `-l -t 1` for [`BUSY_RUN`] over CPU 1 with the hog and the `common::sleepers` workload
/// (threads above the hog that sleep and wake, sleep longer than the threshold, are created
/// and joined by the thousand, and delay each other up to 50 ms; SCHED_OTHER sleepers): no
/// thread there ever waits near 1 s, so not a single `starved` line may appear.
fn busy_sleepers_give_no_false_positives(test: &str, launch: Launch) {
    let Some(env) = e2e_begin(test) else { return };
    let lifetime = BUSY_RUN + Duration::from_secs(3);
    let mut hog = Spinner::spawn(SpinnerSpec {
        name: HOG_NAME,
        fifo_priority: HOG_PRIORITY,
        cpu: TEST_CPU,
        lifetime,
    })
    .expect("start hog");
    let spec = SleeperSpec {
        cpu: TEST_CPU,
        lifetime,
        fifo_priority: HOG_PRIORITY + 10,
        burst_priority: HOG_PRIORITY + 20,
        short_sleepers: 16,
        long_sleepers: 16,
        other_sleepers: 4,
        churn_batch: 4,
    };
    let mut sleepers = Sleepers::spawn(spec).expect("start the sleepers");
    let daemon = start_daemon(launch, &["-f", "-v", "-c", "1", "-t", "1", "-d", "1", "-l"]);
    thread::sleep(BUSY_RUN);
    let progress = sleepers.progress();
    let lines = daemon.lines();
    stop_daemon(daemon, &env);
    hog.kill_and_reap();
    sleepers.kill_and_reap();

    let starved: Vec<_> = lines
        .iter()
        .filter(|l| l.text.contains(" starved on CPU "))
        .map(|l| l.text.as_str())
        .collect();
    let pass_prefix = format!("stalld: checking cpu {TEST_CPU} - ");
    let passes = lines
        .iter()
        .filter(|l| l.text.starts_with(&pass_prefix))
        .count();
    let might_starve: Vec<_> = lines
        .iter()
        .filter(|l| l.text.contains(" might starve on CPU "))
        .map(|l| l.text.as_str())
        .collect();
    eprintln!(
        "{test}: {passes} passes over CPU {TEST_CPU}, {} `starved` lines, {} `might starve` \
         lines (first ones: {:?}); workload: {progress:?}",
        starved.len(),
        might_starve.len(),
        &might_starve[..might_starve.len().min(4)]
    );
    let threads = (spec.short_sleepers + spec.long_sleepers + spec.other_sleepers + 1) as u64;
    assert_eq!(
        (progress.setup_failures, progress.create_failures),
        (0, 0),
        "the workload could not start all its threads: {progress:?}"
    );
    assert_eq!(
        progress.ready,
        threads + 1,
        "not every workload thread reached CPU {TEST_CPU}: {progress:?}"
    );
    assert!(
        progress.churned >= 1000
            && progress.short_wakeups >= 1000
            && progress.long_wakeups >= 3 * spec.long_sleepers as u64
            && progress.bursts >= 20,
        "the workload did not run as planned: {progress:?}"
    );
    assert!(
        passes > 0,
        "the daemon never examined CPU {TEST_CPU} (-v pass lines)"
    );
    assert!(
        starved.is_empty(),
        "false positives: {starved:?}\nworkload: {progress:?}"
    );
}

/// With `bpf()` refused by a seccomp filter, the automatic choice logs why queue_track is
/// unavailable, settles on sched_debug within the budget, and rescues the victim.
#[test]
fn automatic_start_falls_back_to_sched_debug_when_bpf_is_refused() {
    boost_rescues_starved_fifo_task(
        "automatic_start_falls_back_to_sched_debug_when_bpf_is_refused",
        Launch::automatic(Sandbox::NO_BPF, BackendUnderTest::SchedDebug),
        &MEASURABLE_BOOST,
        "SCHED_DEADLINE",
    );
}

/// With `bpf()` refused and debugfs covered too, the automatic choice ends on procfs (without
/// mounting debugfs over the cover) and rescues the victim.
#[test]
fn automatic_start_falls_back_to_procfs_when_bpf_and_debugfs_are_hidden() {
    boost_rescues_starved_fifo_task(
        "automatic_start_falls_back_to_procfs_when_bpf_and_debugfs_are_hidden",
        Launch::automatic(Sandbox::NO_BPF_NO_DEBUGFS, BackendUnderTest::Procfs),
        &MEASURABLE_BOOST,
        "SCHED_DEADLINE",
    );
}

/// An explicitly requested backend that cannot work: exit code 1, the reason, no fallback,
/// RT throttling untouched.
fn explicit_backend_refused(test: &str, backend: BackendUnderTest, sandbox: Sandbox) {
    let Some(env) = e2e_begin(test) else { return };
    let mut daemon =
        Daemon::spawn_sandboxed(&["-f", "-v", "-c", "1", "-b", backend.name()], sandbox);
    if daemon.wait_exit(STARTUP_TIMEOUT).is_none() {
        panic!(
            "-b {} still running {STARTUP_TIMEOUT:?} after start in {sandbox:?}\n{}",
            backend.name(),
            daemon.transcript()
        );
    }
    let (status, _) = daemon
        .terminate(EXIT_TIMEOUT)
        .expect("the daemon has exited");
    let want = format!("cannot use the {} backend: ", backend.name());
    let lines = daemon.lines();
    let reason = lines.iter().find(|l| l.text.contains(&want));
    eprintln!("{test}: {status}, {:?}", reason.map(|l| l.text.as_str()));
    assert_eq!(
        status.code(),
        Some(1),
        "exit status {status}, want 1\n{}",
        daemon.transcript()
    );
    assert!(
        reason.is_some(),
        "no line containing {want:?}\n{}",
        daemon.transcript()
    );
    let chosen: Vec<_> = lines
        .iter()
        .filter(|l| is_backend_choice(&l.text))
        .collect();
    assert!(
        chosen.is_empty(),
        "an explicit backend must not fall back: {chosen:?}\n{}",
        daemon.transcript()
    );
    assert_eq!(
        read_rt_runtime_us().ok(),
        Some(env.rt_runtime.saved),
        "sched_rt_runtime_us changed by a daemon that refused to start\n{}",
        daemon.transcript()
    );
}

#[test]
fn explicit_queue_track_exits_1_when_bpf_is_refused() {
    explicit_backend_refused(
        "explicit_queue_track_exits_1_when_bpf_is_refused",
        BackendUnderTest::QueueTrack,
        Sandbox::NO_BPF,
    );
}

#[test]
fn explicit_sched_debug_exits_1_when_debugfs_is_hidden() {
    explicit_backend_refused(
        "explicit_sched_debug_exits_1_when_debugfs_is_hidden",
        BackendUnderTest::SchedDebug,
        Sandbox {
            refuse_bpf: false,
            hide_debugfs: true,
        },
    );
}
