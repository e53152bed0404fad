//! End-to-end: a SCHED_DEADLINE boost gives the starved task its runtime per period, no more
//! (issue 9 item 10). The scenario of `tests/starvation.rs`: `stv_victim` (SCHED_FIFO 1)
//! starved by `stv_hog` (SCHED_FIFO 50) on CPU 1, RT throttling off; the daemon runs with its
//! default boost (20 us every 1 s) for 3 s. The victim's CPU time comes from
//! `se.sum_exec_runtime` in `/proc/<tid>/sched`, sampled from CPU 0 between its runs (it only
//! runs in the first microseconds of each period, so samples taken half a period away from a
//! period start are exact).

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// The daemon's defaults, spelt out: the budget under test.
const RUNTIME_NS: u64 = 20_000;
const PERIOD: Duration = Duration::from_secs(1);
const BOOST_S: u32 = 3;

/// Per period the victim may get twice its runtime (the goal), plus what the kernel charges
/// it for being switched in and out, which `se.sum_exec_runtime` counts and no timer avoids.
/// Measured here (lockdown, the daemon poking, load average 7-12 on 2 CPUs): 23-32 us per
/// period over 16 periods (4 runs); without a budget (the kernel's tick) 2,000-4,000 us in the
/// first period. The last interval holds the restore: through SCHED_FIFO 99 it gave the task a
/// run ahead of the hog (up to 54 us in all), now through the priority above its own it gives
/// none. 10 us over twice the runtime covers the switch costs without hiding a tick-long run.
const MAX_PER_PERIOD_NS: u64 = 2 * RUNTIME_NS + 10_000;

/// `se.sum_exec_runtime` of `pid`, ns (the file prints ms with six decimals).
fn sum_exec_runtime_ns(pid: libc::pid_t) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/sched")).expect("read sched");
    let line = text
        .lines()
        .find(|l| l.starts_with("se.sum_exec_runtime"))
        .expect("se.sum_exec_runtime in /proc/<pid>/sched");
    let value = line.rsplit(':').next().unwrap().trim();
    let (ms, frac) = value.split_once('.').unwrap_or((value, "0"));
    let frac_ns: u64 = format!("{frac:0<6}")[..6].parse().unwrap();
    ms.parse::<u64>().unwrap() * 1_000_000 + frac_ns
}

#[test]
fn deadline_boost_keeps_to_its_runtime_per_period() {
    let Some(env) = e2e_begin("deadline_boost_keeps_to_its_runtime_per_period") else {
        return;
    };
    let boost_s = BOOST_S.to_string();
    let mut daemon = Daemon::spawn(&["-f", "-v", "-c", "1", "-t", "3", "-d", &boost_s]);
    let budget_line = daemon.wait_for(
        |l| l.text.contains("HRTICK_DL") || l.text.contains("hrtick cannot be set"),
        Duration::from_secs(10),
    );
    assert!(
        budget_line.is_some(),
        "no line saying who enforces the boost's runtime\n{}",
        daemon.transcript()
    );
    let lifetime = Duration::from_secs(3 + 3 + 1 + u64::from(BOOST_S) + 3);
    let scenario = Scenario::start(lifetime, lifetime);
    let victim = scenario.victim.pid;
    let boosted = daemon.wait_for_line(
        &format!("boosted pid {victim} "),
        Duration::from_secs(3 + 3 + 2),
    );
    let Some((boosted_at, _)) = boosted else {
        panic!("victim never boosted\n{}", daemon.transcript());
    };
    // Half a period after each period start (the boost's first one at `boosted_at`, known to a
    // few ms): the victim does not run then.
    let mut samples = Vec::new();
    for k in 0..=BOOST_S {
        let at = boosted_at + PERIOD * k + PERIOD / 2;
        thread::sleep(at.saturating_duration_since(Instant::now()));
        if k == 0 {
            // The victim's time when the boost began: it had not run since the hog came.
            samples.push(scenario.victim_cpu_at_hog_ns);
        }
        samples.push(sum_exec_runtime_ns(victim));
    }
    let per_period: Vec<u64> = samples.windows(2).map(|w| w[1] - w[0]).collect();
    let restored = wait_for_policy(
        victim,
        Policy::fifo(VICTIM_PRIORITY),
        Duration::from_secs(2),
    );
    assert!(restored.is_ok(), "victim not restored: {restored:?}");
    let lines = daemon.transcript();
    stop_daemon_and_check(&mut daemon, &env);
    let budget_lines = lines
        .lines()
        .filter(|l| l.contains("HRTICK_DL") || l.contains("hrtick cannot be set"))
        .count();
    eprintln!(
        "budget: {}; victim's CPU per period (us): {:?}",
        budget_line.unwrap().text,
        per_period
            .iter()
            .map(|&ns| ns as f64 / 1e3)
            .collect::<Vec<_>>()
    );
    assert_eq!(budget_lines, 1, "say once who enforces the budget\n{lines}");
    // The first interval reaches back to the hog's start: it holds the boost's first period.
    let total: u64 = per_period.iter().sum();
    assert!(
        total > 0,
        "the boost gave the victim no CPU at all\n{lines}"
    );
    for (k, &ns) in per_period.iter().enumerate() {
        assert!(
            ns <= MAX_PER_PERIOD_NS,
            "period {k}: the victim got {:.1} us, want at most {:.1} us (2 x {} us runtime \
             + switch costs)\n{lines}",
            ns as f64 / 1e3,
            MAX_PER_PERIOD_NS as f64 / 1e3,
            RUNTIME_NS / 1_000
        );
    }
}

/// SIGTERM, exit 0, RT throttling restored.
fn stop_daemon_and_check(daemon: &mut Daemon, env: &E2e) {
    let stopped = daemon.terminate(Duration::from_secs(2));
    assert!(
        stopped.is_some_and(|(status, _)| status.success()),
        "daemon did not exit cleanly on SIGTERM: {stopped:?}"
    );
    assert_eq!(
        read_rt_runtime_us().expect("read sched_rt_runtime_us"),
        env.rt_runtime.saved
    );
}
