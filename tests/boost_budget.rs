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
/// Under lockdown the daemon ends each runtime, from CPU 0: while the hypervisor runs something
/// else on that vCPU (steal time), its poke comes late, and the task runs on. So each period's
/// allowance grows by CPU 0's steal in it (`steal_ns`), which nothing in a guest can prevent.
/// Six runs here gave 81, 138, 152 and 766 us in 4 of 24 periods before the steal was read;
/// a CI run then gave 134 us in the last interval with no steal at all: the restore came after
/// the kernel replenished the task (fixed: restored 1 ms ahead, see `boost.rs`). Whether the
/// mid-boost outliers were steal, the figures this test prints will tell.
const MAX_PER_PERIOD_NS: u64 = 2 * RUNTIME_NS + 10_000;
/// The CPU the daemon runs on (it watches CPU 1).
const DAEMON_CPU: u32 = 0;

/// The value of a `name : ms.nnnnnn` line (as /proc/<pid>/sched and sched_debug print times),
/// ns.
fn ms_value_ns(line: &str) -> u64 {
    let value = line.rsplit(':').next().unwrap().trim();
    let (ms, frac) = value.split_once('.').unwrap_or((value, "0"));
    let frac_ns: u64 = format!("{frac:0<6}")[..6].parse().unwrap();
    ms.parse::<u64>().unwrap() * 1_000_000 + frac_ns
}

/// `se.sum_exec_runtime` of `pid`, ns.
fn sum_exec_runtime_ns(pid: libc::pid_t) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/sched")).expect("read sched");
    let line = text
        .lines()
        .find(|l| l.starts_with("se.sum_exec_runtime"))
        .expect("se.sum_exec_runtime in /proc/<pid>/sched");
    ms_value_ns(line)
}

/// The time the hypervisor took `cpu`'s vCPU since boot, ns: sched_debug's `.clock` less
/// `.clock_task` (PARAVIRT_TIME_ACCOUNTING; this kernel has no IRQ_TIME_ACCOUNTING, which would
/// add interrupt time). Exact to the ns, where /proc/stat counts 10 ms ticks.
fn steal_ns(cpu: u32) -> u64 {
    let text = std::fs::read_to_string("/sys/kernel/debug/sched/debug").expect("read sched_debug");
    let header = format!("cpu#{cpu},");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&header));
    let mut field = |name: &str| {
        ms_value_ns(
            lines
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("{name} of cpu#{cpu} in sched_debug")),
        )
    };
    let clock = field(".clock ");
    let clock_task = field(".clock_task");
    clock - clock_task
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
    let scenario_steal_ns = steal_ns(DAEMON_CPU);
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
    let mut steals = vec![scenario_steal_ns];
    for k in 0..=BOOST_S {
        let at = boosted_at + PERIOD * k + PERIOD / 2;
        thread::sleep(at.saturating_duration_since(Instant::now()));
        if k == 0 {
            // The victim's time when the boost began: it had not run since the hog came.
            samples.push(scenario.victim_cpu_at_hog_ns);
        }
        samples.push(sum_exec_runtime_ns(victim));
        steals.push(steal_ns(DAEMON_CPU));
    }
    let per_period: Vec<u64> = samples.windows(2).map(|w| w[1] - w[0]).collect();
    let stolen: Vec<u64> = steals.windows(2).map(|w| w[1] - w[0]).collect();
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
    let us = |list: &[u64]| list.iter().map(|&ns| ns as f64 / 1e3).collect::<Vec<_>>();
    eprintln!(
        "budget: {}; victim's CPU per period (us): {:?}; CPU {DAEMON_CPU}'s steal time per \
         period (us): {:?}",
        budget_line.unwrap().text,
        us(&per_period),
        us(&stolen)
    );
    assert_eq!(budget_lines, 1, "say once who enforces the budget\n{lines}");
    // The first interval reaches back to the hog's start: it holds the boost's first period.
    let total: u64 = per_period.iter().sum();
    assert!(
        total > 0,
        "the boost gave the victim no CPU at all\n{lines}"
    );
    for (k, (&ns, &stolen_ns)) in per_period.iter().zip(&stolen).enumerate() {
        assert!(
            ns <= MAX_PER_PERIOD_NS + stolen_ns,
            "period {k}: the victim got {:.1} us, want at most {:.1} us (2 x {} us runtime \
             + switch costs) + {:.1} us (CPU {DAEMON_CPU}'s steal time then)\n{lines}",
            ns as f64 / 1e3,
            MAX_PER_PERIOD_NS as f64 / 1e3,
            RUNTIME_NS / 1_000,
            stolen_ns as f64 / 1e3
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
