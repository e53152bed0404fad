//! End-to-end: the daemon against a task really starved on a real kernel.
//!
//! Scenario (see `common`): `stv_victim` (SCHED_FIFO 1) and then `stv_hog` (SCHED_FIFO 50) spin
//! on CPU 1; with RT throttling off the victim gets no CPU at all, whatever the DL-server does
//! for SCHED_OTHER. The daemon watches CPU 1 with a 3 s threshold. Needs root and two CPUs;
//! otherwise every test is skipped with a message (a failure when `STALLD_E2E_REQUIRE=1`).
//! The tests run one at a time (a lock in `common`), unit tests stay parallel.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const THRESHOLD: Duration = Duration::from_secs(3);
const THRESHOLD_ARG: &str = "3";
/// The daemon may log a line this much "before" the threshold measured from `t_hog`: `t_hog`
/// is taken when the harness learns the hog runs, a little after the victim's wait began.
const EARLY_SLACK: Duration = Duration::from_millis(50);
/// The boost must come at most this long after the threshold (contract).
const MAX_LATENESS: Duration = Duration::from_secs(1);
/// Boost parameters for SCHED_DEADLINE: the largest runtime (1 ms) and the shortest period
/// (200 ms) stalld accepts, 0.5 % of the CPU, so the victim's progress is measurable.
const DL_ARGS: [&str; 4] = ["-r", "1000000", "-p", "200000000"];
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

/// Starts the daemon and waits until it has chosen a backend and turned RT throttling off.
fn start_daemon(args: &[&str]) -> Daemon {
    let mut daemon = Daemon::spawn(args);
    let backend = daemon.wait_for(
        |l| l.stream == "stderr" && l.text.contains("using ") && l.text.contains(" backend"),
        STARTUP_TIMEOUT,
    );
    if backend.is_none() {
        let status = daemon.try_status();
        panic!(
            "no `using <name> backend` line within {STARTUP_TIMEOUT:?} (daemon exit status: \
             {status:?})\n{}",
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
/// [`MAX_LATENESS`] after it.
fn expect_line_on_time(daemon: &Daemon, pattern: &str, threshold_at: Instant) -> (Instant, String) {
    let found = daemon.wait_for_line(
        pattern,
        until(threshold_at + MAX_LATENESS + Duration::from_secs(2)),
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
        at <= threshold_at + MAX_LATENESS,
        "{line:?} came {:.3} s after the threshold (max {:?})\n{}",
        delta(at, threshold_at),
        MAX_LATENESS,
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

/// The shared body of the two boost tests.
fn boost_rescues_starved_fifo_task(test: &str, extra_args: &[&str], policy_name: &str) {
    let Some(env) = e2e_begin(test) else { return };
    let duration = Duration::from_secs(1);
    let mut args = vec!["-f", "-v", "-c", "1", "-t", THRESHOLD_ARG, "-d", "1"];
    args.extend_from_slice(extra_args);
    let daemon = start_daemon(&args);
    let lifetime = THRESHOLD + MAX_LATENESS + duration + Duration::from_secs(3);
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
         through SCHED_FIFO 99 first (see common::restore_fifo)\n{}",
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

#[test]
fn deadline_boost_rescues_starved_fifo_task() {
    boost_rescues_starved_fifo_task(
        "deadline_boost_rescues_starved_fifo_task",
        &DL_ARGS,
        "SCHED_DEADLINE",
    );
}

#[test]
fn fifo_boost_rescues_starved_fifo_task() {
    boost_rescues_starved_fifo_task(
        "fifo_boost_rescues_starved_fifo_task",
        &FIFO_ARGS,
        "SCHED_FIFO",
    );
}

#[test]
fn log_only_reports_but_never_boosts() {
    let Some(env) = e2e_begin("log_only_reports_but_never_boosts") else {
        return;
    };
    let daemon = start_daemon(&["-f", "-v", "-c", "1", "-t", THRESHOLD_ARG, "-d", "1", "-l"]);
    let lifetime = THRESHOLD + Duration::from_secs(5);
    let scenario = Scenario::start(lifetime, lifetime);
    let victim = &scenario.victim;
    let threshold_at = scenario.t_hog + THRESHOLD;
    expect_line_on_time(
        &daemon,
        &starved_pattern(VICTIM_NAME, victim.pid),
        threshold_at,
    );
    // Past the moment a boost would have come and ended.
    sleep_until(threshold_at + MAX_LATENESS + Duration::from_millis(1500));
    let boosted = daemon.lines_containing("boosted");
    assert!(
        boosted.is_empty(),
        "-l must never boost: {boosted:?}\n{}",
        daemon.transcript()
    );
    let gain = scenario.victim_gain_ns();
    eprintln!("log_only: victim gained {:.3} ms", ms(gain));
    assert!(
        gain < MAX_STARVED_GAIN_NS,
        "victim gained {:.3} ms under -l\n{}",
        ms(gain),
        daemon.transcript()
    );
    assert_eq!(victim.policy(), Policy::fifo(VICTIM_PRIORITY));
    stop_daemon(daemon, &env);
}

#[test]
fn ignored_thread_is_never_boosted() {
    let Some(env) = e2e_begin("ignored_thread_is_never_boosted") else {
        return;
    };
    let mut args = vec![
        "-f",
        "-v",
        "-c",
        "1",
        "-t",
        THRESHOLD_ARG,
        "-d",
        "1",
        "-i",
        "stv_vic",
    ];
    args.extend_from_slice(&DL_ARGS);
    let daemon = start_daemon(&args);
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
        "ignore: victim gained {:.3} ms, control gained {:.3} ms",
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

/// `-d` must not exceed `-t` (upstream rule), so the boost lasts 3 s and SIGTERM comes 1 s in.
#[test]
fn sigterm_mid_boost_restores_task_and_throttling() {
    let Some(env) = e2e_begin("sigterm_mid_boost_restores_task_and_throttling") else {
        return;
    };
    let mut args = vec!["-f", "-v", "-c", "1", "-t", THRESHOLD_ARG, "-d", "3"];
    args.extend_from_slice(&DL_ARGS);
    let daemon = start_daemon(&args);
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

#[test]
fn victim_exiting_mid_boost_is_tolerated() {
    let Some(env) = e2e_begin("victim_exiting_mid_boost_is_tolerated") else {
        return;
    };
    let boost = Duration::from_secs(3);
    let mut args = vec!["-f", "-v", "-c", "1", "-t", THRESHOLD_ARG, "-d", "3"];
    args.extend_from_slice(&DL_ARGS);
    let daemon = start_daemon(&args);
    // The victim notices its deadline only when it runs, i.e. during the boost.
    let victim_lifetime = THRESHOLD + Duration::from_millis(500);
    let hog_lifetime = THRESHOLD + MAX_LATENESS + boost + Duration::from_secs(4);
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
        "exit mid-boost: victim exited {:.3} s into the boost; other lines about it: {noise:?}",
        delta(exited_at, boosted_at)
    );
    assert!(
        noise.len() <= 1,
        "more than one line about the vanished task: {noise:?}\n{}",
        daemon.transcript()
    );
    stop_daemon(daemon, &env);
}
