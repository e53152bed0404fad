//! End-to-end: a stalld started in the initramfs (`argv[0]` `@stalld`) hands over to the one
//! the real system starts later, with no gap (src/handover.rs), once per backend
//! (`handover::<backend>`).
//!
//! Scenario: the early instance A monitors CPU 1 (`-t 2 -d 1`) and boosts `stv_victim`,
//! starved by `stv_hog`; once that boost has ended and the victim waits again, a second
//! instance B starts with the same arguments. B must take over (A exits 0 saying it handed
//! over), `stalld throttlectl off` (the unit's first command) must succeed beside A, RT
//! throttling must stay off from A's reign to B's (sampled every millisecond), and B
//! must boost the victim one threshold after its wait began (or, where the backend dates waits
//! from its first sighting, after B started). At B's stop, RT throttling is back to its
//! original value. Uses the harness of `tests/starvation.rs` (`common`): root, two CPUs, one
//! test at a time, RT throttling restored and every child killed and reaped, also on failure.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const THRESHOLD: Duration = Duration::from_secs(2);
const ARGS_WITHOUT_BACKEND: [&str; 8] = ["-f", "-v", "-c", "1", "-t", "2", "-d", "1"];
/// The boost must come at most this long after the threshold where the backend knows when the
/// wait began: the contract of tests/starvation.rs (measured 1-5 ms there).
const MAX_LATENESS: Duration = Duration::from_secs(1);
/// sched_debug and procfs date a wait they did not see begin from their first pass that sees
/// it: B's first pass comes as it starts monitoring, plus a pass interval (min(-g, -t / 2)).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const SCENARIO_LIFETIME: Duration = Duration::from_secs(25);
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Samples `sched_rt_runtime_us` every millisecond until stopped; returns the values other
/// than -1 (throttling on) that it saw.
struct ThrottlingSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<i64>>,
}

impl ThrottlingSampler {
    fn start() -> ThrottlingSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut on = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match read_rt_runtime_us() {
                    Ok(-1) => {}
                    Ok(value) => on.push(value),
                    Err(e) => panic!("read sched_rt_runtime_us: {e}"),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            on
        });
        ThrottlingSampler { stop, thread }
    }

    fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

fn started(daemon: &Daemon, what: &str) {
    assert!(
        daemon
            .wait_for_line("monitoring CPUs 1", START_TIMEOUT)
            .is_some(),
        "{what} did not start\n{}",
        daemon.transcript()
    );
}

fn transcripts(early: &Daemon, late: &Daemon) -> String {
    format!("{}{}", early.transcript(), late.transcript())
}

fn run(backend: BackendUnderTest) {
    let test = format!("handover::{}", backend.name());
    let Some(e2e) = e2e_begin(&test) else {
        return;
    };
    let original_runtime = read_rt_runtime_us().expect("sched_rt_runtime_us");
    let mut args = ARGS_WITHOUT_BACKEND.to_vec();
    args.extend(["-b", backend.name()]);

    let mut early = Daemon::spawn_as("@stalld", &args);
    started(&early, "the early instance");
    let scenario = Scenario::start(
        SCENARIO_LIFETIME,
        SCENARIO_LIFETIME + Duration::from_secs(5),
    );
    let victim = scenario.victim.pid;
    let boosted = format!("boosted pid {victim} ");
    let restored = format!("restored pid {victim} ");
    let first_timeout = THRESHOLD + POLL_INTERVAL * 2 + MAX_LATENESS;
    assert!(
        early.wait_for_line(&boosted, first_timeout).is_some(),
        "{test}: the early instance did not boost the victim\n{}",
        early.transcript()
    );
    let (waits_again, _) = early
        .wait_for_line(&restored, Duration::from_secs(3))
        .unwrap_or_else(|| {
            panic!(
                "{test}: the early instance did not restore the victim\n{}",
                early.transcript()
            )
        });
    // The victim waits again; the next boost is due one threshold after its restore.
    std::thread::sleep(Duration::from_millis(500));

    let sampler = ThrottlingSampler::start();
    // The unit's `ExecStartPre=stalld throttlectl off` runs first: with the early instance
    // holding throttling off, it has nothing to do and must not fail.
    let throttlectl = std::process::Command::new(daemon_bin())
        .args(["throttlectl", "off"])
        .output()
        .expect("run stalld throttlectl off");
    assert!(
        throttlectl.status.success()
            && String::from_utf8_lossy(&throttlectl.stdout).contains("started in the initramfs"),
        "{test}: `stalld throttlectl off` beside the early instance: {throttlectl:?}"
    );
    let late_started = Instant::now();
    let mut late = Daemon::spawn(&args);
    let took_over = format!("took over from the early stalld (pid {})", early.pid());
    let took_over_at = late.wait_for_line(&took_over, START_TIMEOUT);
    let early_exit = early.wait_exit(Duration::from_secs(5));
    let late_boost = late.wait_for_line(&boosted, THRESHOLD + POLL_INTERVAL * 2 + MAX_LATENESS);
    let throttling_on = sampler.finish();
    let (took_over_at, _) = took_over_at
        .unwrap_or_else(|| panic!("{test}: no `{took_over}`\n{}", transcripts(&early, &late)));
    assert!(
        early_exit.is_some_and(|s| s.success()),
        "{test}: the early instance did not exit 0 after the handover: {early_exit:?}\n{}",
        transcripts(&early, &late)
    );
    assert!(
        !early
            .lines_containing("handed over: RT throttling left off")
            .is_empty(),
        "{test}: the early instance did not say it left RT throttling off\n{}",
        transcripts(&early, &late)
    );
    assert!(
        throttling_on.is_empty(),
        "{test}: RT throttling came on during the handover ({} samples, values {:?})\n{}",
        throttling_on.len(),
        &throttling_on[..throttling_on.len().min(5)],
        transcripts(&early, &late)
    );
    let (late_boost_at, _) = late_boost.unwrap_or_else(|| {
        panic!(
            "{test}: the new instance did not boost\n{}",
            transcripts(&early, &late)
        )
    });
    // Its wait began at the restore, or, for a backend that dates waits from its first
    // sighting, when the new instance first sampled, right after it took over.
    let wait_dated_from = if backend.dates_waits_exactly() {
        waits_again
    } else {
        took_over_at + POLL_INTERVAL
    };
    let due = wait_dated_from + THRESHOLD;
    assert!(
        late_boost_at <= due + MAX_LATENESS,
        "{test}: the new instance boosted {:.3} s after the wait's threshold (at most {:?})\n{}",
        late_boost_at.saturating_duration_since(due).as_secs_f64(),
        MAX_LATENESS,
        transcripts(&early, &late)
    );

    drop(scenario);
    let stopped = late.terminate(Duration::from_secs(5));
    assert!(
        stopped.is_some_and(|(s, _)| s.success()),
        "{test}: the new instance did not stop cleanly\n{}",
        transcripts(&early, &late)
    );
    let after = read_rt_runtime_us().expect("sched_rt_runtime_us");
    assert_eq!(
        after,
        original_runtime,
        "{test}: RT throttling not back to its original value after the new instance stopped\n{}",
        transcripts(&early, &late)
    );
    eprintln!(
        "{test}: took over {:.0} ms after the new instance started; it boosted the victim {:.3} s \
         after its wait began anew (threshold {} s)",
        took_over_at
            .saturating_duration_since(late_started)
            .as_secs_f64()
            * 1000.0,
        late_boost_at
            .saturating_duration_since(waits_again)
            .as_secs_f64(),
        THRESHOLD.as_secs(),
    );
    drop(e2e);
}

test_each_backend!(run);
