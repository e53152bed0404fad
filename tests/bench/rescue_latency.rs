//! Benchmark, not a test: what the task a rescue takes CPU from feels. `cyclictest -p 95 -a 1`
//! (Debian's `rt-tests`, installed here with apt-get when missing) measures its wake-up
//! latency on CPU 1 while `stv_hog` (SCHED_FIFO 50) starves `stv_victim` (SCHED_FIFO 1) there,
//! without a daemon and with the daemon rescuing the victim (default boost, 20 us every 1 s,
//! for 3 s after a 3 s threshold: two rescues in the run). Prints each run's worst latency and
//! the distribution over runs. RT throttling is off in both (the daemon turns it off). On 6.12+
//! the DL-server still runs starved SCHED_OTHER tasks of CPU 1 (up to 50 ms a second) ahead
//! of cyclictest, which can dominate the worst latency of a run with or without rescues. Run as root: `cargo bench --bench rescue_latency`
//! (`STALLD_BENCH_RUNS`, default 4; `STALLD_E2E_BIN` measures another daemon, e.g. upstream).

#[path = "../common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{e2e_begin, write_rt_runtime_us, Daemon, Scenario};

/// One run: long enough for two rescues (threshold 3 s, boost 3 s, then 3 s more waiting).
const RUN_S: u64 = 11;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !install_cyclictest() {
        eprintln!("rescue_latency: no cyclictest (apt-get install rt-tests failed); skipped");
        return;
    }
    let runs: usize = std::env::var("STALLD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut without = Vec::new();
    let mut with = Vec::new();
    for run in 0..runs {
        for rescuing in [false, true] {
            let Some(worst_us) = one_run(rescuing) else {
                return;
            };
            println!(
                "rescue_latency: run {run}, {}: worst cyclictest wake-up latency {worst_us} us",
                if rescuing {
                    "daemon rescuing"
                } else {
                    "no daemon"
                }
            );
            if rescuing { &mut with } else { &mut without }.push(worst_us);
        }
    }
    summary("no daemon", &mut without);
    summary("daemon rescuing", &mut with);
}

fn install_cyclictest() -> bool {
    let present = || Command::new("cyclictest").arg("--help").output().is_ok();
    present()
        || (Command::new("apt-get")
            .args(["install", "-y", "rt-tests"])
            .status()
            .is_ok_and(|s| s.success())
            && present())
}

/// The worst latency, us, of a cyclictest run on the hogged CPU; `None` if it cannot run.
fn one_run(rescuing: bool) -> Option<u64> {
    let _env = e2e_begin("rescue_latency")?;
    if !rescuing {
        // As the daemon would: without it the kernel throttles the hog and cyclictest alike
        // (50 ms every second), which would drown what a rescue costs.
        write_rt_runtime_us(-1).expect("turn RT throttling off");
    }
    let run = Duration::from_secs(RUN_S);
    let daemon = rescuing.then(|| Daemon::spawn(&["-f", "-c", "1", "-t", "3", "-d", "3"]));
    let scenario = Scenario::start(run + Duration::from_secs(2), run + Duration::from_secs(2));
    let output = Command::new("cyclictest")
        .args(["-p", "95", "-a", "1", "-t", "1", "-i", "1000", "-m", "-q"])
        .args(["-D", &format!("{RUN_S}")])
        .output()
        .expect("run cyclictest");
    drop(scenario);
    drop(daemon);
    let text = String::from_utf8_lossy(&output.stdout);
    let worst = text
        .split_whitespace()
        .skip_while(|w| *w != "Max:")
        .nth(1)
        .and_then(|v| v.parse().ok());
    if worst.is_none() {
        eprintln!("rescue_latency: no Max: in cyclictest's output: {text}");
    }
    worst
}

fn summary(what: &str, worst_us: &mut [u64]) {
    worst_us.sort_unstable();
    let median = worst_us.get(worst_us.len() / 2).copied().unwrap_or(0);
    println!(
        "rescue_latency: {what}: worst latency over {} runs: min {} us, median {median} us, \
         max {} us, all {worst_us:?}",
        worst_us.len(),
        worst_us.first().copied().unwrap_or(0),
        worst_us.last().copied().unwrap_or(0),
    );
}
