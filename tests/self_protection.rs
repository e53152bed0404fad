//! End-to-end: the daemon's own protection (`src/protect.rs`) on the real kernel.
//!
//! - `rescue_is_as_fast_with_cpu0_saturated`: two busy SCHED_OTHER nice -20 hogs pinned to the
//!   housekeeping CPU 0 do not delay the rescue of the CPU 1 victim: the same bound as with CPU 0
//!   idle (the daemon runs under SCHED_DEADLINE on CPU 0 by default).
//! - `spinning_loop_is_held_to_its_budget::{deadline, fifo}`: a build with the `fault_spin`
//!   feature (built here into its own target dir, never the tested release binary) spins in its
//!   loop; CPU 0 keeps serving a SCHED_OTHER task, the daemon's share stays within its budget,
//!   and the daemon logs the overrun (DEADLINE) or its demotion (SCHED_FIFO + RLIMIT_RTTIME).
//!
//! The CPU 0 hogs are SCHED_OTHER, bounded in time, and killed by pid; the usual rules of
//! `common` hold (machine lock, RT throttling saved and restored, every child killed).

mod common;

use common::sandbox::Sandbox;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const THRESHOLD: Duration = Duration::from_secs(3);
/// queue_track dates waits exactly: the boost comes at most this long after the threshold
/// (the contract of tests/starvation.rs; measured 1-5 ms).
const MAX_LATENESS: Duration = Duration::from_secs(1);
/// See tests/starvation.rs: `t_hog` is taken a little after the victim's wait began.
const EARLY_SLACK: Duration = Duration::from_millis(50);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A forked SCHED_OTHER busy loop at `nice`, pinned to one CPU, exiting after its lifetime;
/// Drop SIGKILLs and reaps it by pid.
struct OtherHog {
    pid: libc::pid_t,
}

impl OtherHog {
    fn spawn(name: &str, nice: i32, cpu: usize, lifetime: Duration) -> OtherHog {
        let mut comm = [0u8; 16];
        comm[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
        let deadline = Instant::now() + lifetime;
        // SCHED_OTHER explicitly: the child must not inherit a raised harness's SCHED_FIFO.
        let attr = SchedAttr {
            sched_nice: nice,
            ..SchedAttr::default()
        };
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::CPU_SET(cpu, &mut cpus) };
        // SAFETY: the child makes raw syscalls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child; raw syscalls on data prepared before the fork.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
                if libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) != 0
                    || libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus)
                        != 0
                {
                    libc::_exit(1);
                }
                while Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                libc::_exit(0)
            }
        }
        OtherHog { pid }
    }

    fn cpu_time_ns(&self) -> u64 {
        cpu_time_ns(self.pid).expect("hog schedstat")
    }
}

impl Drop for OtherHog {
    fn drop(&mut self) {
        // SAFETY: our own unreaped child: the pid cannot have been reused.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Every thread of this test process (harness, log readers) at SCHED_FIFO 20 while it lives,
/// back to SCHED_OTHER after: the nice -20 hogs on CPU 0 must not delay the time stamps the
/// test takes, only (if at all) the daemon.
struct HarnessAboveHogs;

impl HarnessAboveHogs {
    fn raise() -> HarnessAboveHogs {
        for_each_own_thread(&SchedAttr::fifo(20));
        HarnessAboveHogs
    }
}

impl Drop for HarnessAboveHogs {
    fn drop(&mut self) {
        for_each_own_thread(&SchedAttr::default());
    }
}

fn for_each_own_thread(attr: &SchedAttr) {
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let tid = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok());
        if let Some(tid) = tid {
            let _ = sched_setattr(tid, attr);
        }
    }
}

fn start_daemon(daemon: Daemon) -> Daemon {
    let protected = daemon.wait_for_line("running on CPUs", STARTUP_TIMEOUT);
    assert!(
        protected.is_some(),
        "no 'running on CPUs' line\n{}",
        daemon.transcript()
    );
    let armed = daemon.wait_for_line("monitoring CPUs", STARTUP_TIMEOUT);
    assert!(
        armed.is_some(),
        "daemon did not start\n{}",
        daemon.transcript()
    );
    daemon
}

fn stop_daemon(mut daemon: Daemon, env: &E2e) {
    let Some((status, _)) = daemon.terminate(EXIT_TIMEOUT) else {
        panic!(
            "daemon still running after SIGTERM\n{}",
            daemon.transcript()
        );
    };
    assert!(status.success(), "exit {status}\n{}", daemon.transcript());
    assert_eq!(
        read_rt_runtime_us().expect("read sched_rt_runtime_us"),
        env.rt_runtime.saved,
        "sched_rt_runtime_us not restored\n{}",
        daemon.transcript()
    );
}

/// Starves the victim on CPU 1 and returns when its boost line came relative to the threshold
/// (seconds, negative if early), checking the bound.
fn rescue_latency_s(daemon: &Daemon, what: &str) -> f64 {
    let lifetime = THRESHOLD + MAX_LATENESS + Duration::from_secs(3);
    let scenario = Scenario::start(lifetime, lifetime);
    let threshold_at = scenario.t_hog + THRESHOLD;
    let pattern = format!(
        "boosted pid {} ({VICTIM_NAME}) (cpu {TEST_CPU}) using SCHED_DEADLINE",
        scenario.victim.pid
    );
    let found = daemon.wait_for_line(&pattern, lifetime + Duration::from_secs(1));
    let Some((at, _)) = found else {
        panic!("{what}: no {pattern:?}\n{}", daemon.transcript());
    };
    let latency_s = if at >= threshold_at {
        (at - threshold_at).as_secs_f64()
    } else {
        -(threshold_at - at).as_secs_f64()
    };
    assert!(
        at + EARLY_SLACK >= threshold_at && at <= threshold_at + MAX_LATENESS,
        "{what}: boost {latency_s:+.3} s after the threshold (bound 0..{MAX_LATENESS:?})\n{}",
        daemon.transcript()
    );
    drop(scenario);
    latency_s
}

/// Proof (a) of issue 8: CPU 0 saturated by SCHED_OTHER nice -20 hogs does not delay a rescue.
#[test]
fn rescue_is_as_fast_with_cpu0_saturated() {
    let Some(env) = e2e_begin("rescue_is_as_fast_with_cpu0_saturated") else {
        return;
    };
    let daemon = start_daemon(Daemon::spawn(&watch_test_cpu(
        "3",
        "1",
        &["-b", "queue_track"],
    )));
    let idle_s = rescue_latency_s(&daemon, "CPU 0 idle");
    thread::sleep(Duration::from_millis(500));

    let hog_lifetime = THRESHOLD + MAX_LATENESS + Duration::from_secs(6);
    let hogs = [
        OtherHog::spawn("cpu0_hog_a", -20, HOUSEKEEPING_CPU, hog_lifetime),
        OtherHog::spawn("cpu0_hog_b", -20, HOUSEKEEPING_CPU, hog_lifetime),
    ];
    let _harness = HarnessAboveHogs::raise();
    thread::sleep(Duration::from_millis(200));
    let (hogs_before, started) = (
        hogs.iter().map(OtherHog::cpu_time_ns).sum::<u64>(),
        Instant::now(),
    );
    let saturated_s = rescue_latency_s(&daemon, "CPU 0 saturated");
    let hogs_share = (hogs.iter().map(OtherHog::cpu_time_ns).sum::<u64>() - hogs_before) as f64
        / started.elapsed().as_nanos() as f64;
    drop(hogs);
    eprintln!(
        "rescue latency (boost line after the threshold): CPU 0 idle {:+.1} ms, CPU 0 saturated \
         by two nice -20 hogs {:+.1} ms (the hogs had {:.0}% of CPU 0 meanwhile)",
        idle_s * 1e3,
        saturated_s * 1e3,
        hogs_share * 100.0
    );
    // Measured 24-52%: CPU time is shared between cgroups first (other helpers' sessions), so
    // nice -20 saturates only this test's part of CPU 0.
    assert!(
        hogs_share > 0.1,
        "the hogs got only {:.0}% of CPU 0: CPU 0 was not saturated",
        hogs_share * 100.0
    );
    // The contract bound (1 s) alone would not notice an unprotected daemon: measured here,
    // +0.1..3.8 ms with its budget both ways, +278 and +403 ms with `--self_sched other` on a
    // saturated CPU 0. 50 ms is far above the first and far below the second.
    assert!(
        saturated_s <= idle_s.max(0.0) + SATURATION_SLACK.as_secs_f64(),
        "saturating CPU 0 delayed the rescue: {:+.1} ms vs {:+.1} ms idle\n{}",
        saturated_s * 1e3,
        idle_s * 1e3,
        daemon.transcript()
    );
    stop_daemon(daemon, &env);
}

/// How much later a rescue may come with CPU 0 saturated than with it idle.
const SATURATION_SLACK: Duration = Duration::from_millis(50);

/// How long the fault-injection build spins in its loop.
const SPIN: Duration = Duration::from_secs(4);
/// Where the share of CPU 0 is measured: after the RLIMIT_RTTIME soft limit (500 ms) and
/// before the spin ends.
const WINDOW_START: Duration = Duration::from_millis(1000);
const WINDOW: Duration = Duration::from_millis(2500);

/// Builds stalld with `--features fault_spin` (no BPF: the budget does not depend on the
/// backend) into a target dir of its own, once per test run, before any lock is taken.
fn fault_spin_binary() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault_spin");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--locked",
                "--no-default-features",
                "--features",
                "fault_spin",
                "--bin",
                "stalld",
                "--target-dir",
            ])
            .arg(&target_dir)
            .status()
            .expect("run cargo build --features fault_spin");
        assert!(
            status.success(),
            "cargo build --features fault_spin: {status}"
        );
        target_dir
            .join("debug/stalld")
            .to_str()
            .expect("UTF-8 target dir")
            .to_owned()
    })
}

/// Proof (b) of issue 8, for one `--self_sched` policy.
fn spinning_loop_is_held_to_its_budget(policy: &str) {
    let bin = fault_spin_binary();
    let test = format!("spinning_loop_is_held_to_its_budget::{policy}");
    let Some(env) = e2e_begin(&test) else { return };
    let counter = OtherHog::spawn("cpu0_counter", 0, HOUSEKEEPING_CPU, Duration::from_secs(20));
    let spin_ms = SPIN.as_millis().to_string();
    let daemon = start_daemon(Daemon::spawn_program(
        bin,
        &[
            "-f",
            "-v",
            "-c",
            "1",
            "-t",
            "3",
            "-b",
            "sched_debug",
            "--log_ring",
            "none",
            "--self_sched",
            policy,
        ],
        &[("STALLD_FAULT_SPIN_MS", &spin_ms)],
        Sandbox::NONE,
    ));
    let spinning = daemon.wait_for_line("fault injection: the loop spins", STARTUP_TIMEOUT);
    let Some((spin_at, _)) = spinning else {
        panic!("the fault_spin build did not spin\n{}", daemon.transcript());
    };
    thread::sleep((spin_at + WINDOW_START).saturating_duration_since(Instant::now()));
    let (counter_before, daemon_before) =
        (counter.cpu_time_ns(), cpu_time_ns(daemon.pid()).unwrap());
    let started = Instant::now();
    thread::sleep(WINDOW);
    let during = policy_of(daemon.pid()).expect("daemon policy");
    let elapsed = started.elapsed().as_nanos() as f64;
    let counter_share = (counter.cpu_time_ns() - counter_before) as f64 / elapsed;
    let daemon_share = (cpu_time_ns(daemon.pid()).unwrap() - daemon_before) as f64 / elapsed;
    eprintln!(
        "{test}: while the loop spins, CPU 0 gives {:.0}% to a SCHED_OTHER task and {:.0}% to \
         the daemon ({})",
        counter_share * 100.0,
        daemon_share * 100.0,
        policy_name(during.policy)
    );
    let logged = match policy {
        "deadline" => {
            // The budget is 20 ms every 100 ms (20%); measured 16%. Without it the spinning
            // daemon would leave the task only what the DL-server gives (5%).
            assert_eq!(during.policy, SCHED_DEADLINE, "{}", daemon.transcript());
            assert!(
                daemon_share < 0.25,
                "daemon took {:.0}%",
                daemon_share * 100.0
            );
            "used up its SCHED_DEADLINE budget"
        }
        _ => {
            // Demoted to an ordinary task: it shares CPU 0 with the counter (measured 41% /
            // 58%); undemoted at FIFO 10 it would leave the counter 5%.
            assert_eq!(
                during.policy,
                SCHED_OTHER,
                "not demoted\n{}",
                daemon.transcript()
            );
            "demoted itself to SCHED_OTHER"
        }
    };
    // Other helpers' builds share CPU 0 (the counter got 18-83% in runs here): the bar is
    // what an unbudgeted spinning daemon would leave the task, the DL-server's 5%, and half
    // the daemon's own share (equal weights once demoted, 1:4 or better under DEADLINE).
    assert!(
        counter_share > 0.08 && counter_share >= daemon_share / 2.0,
        "CPU 0 gave only {:.0}% to the SCHED_OTHER task ({:.0}% to the daemon) while the \
         daemon spun\n{}",
        counter_share * 100.0,
        daemon_share * 100.0,
        daemon.transcript()
    );
    let until_logged =
        (spin_at + SPIN + Duration::from_secs(2)).saturating_duration_since(Instant::now());
    assert!(
        daemon.wait_for_line(logged, until_logged).is_some(),
        "no {logged:?} line\n{}",
        daemon.transcript()
    );
    if policy == "fifo" {
        // Promoted back 10 s after the demotion was noticed (at the end of the spin).
        let back = daemon.wait_for_line(
            "back to SCHED_FIFO 10",
            (spin_at + SPIN + Duration::from_secs(12)).saturating_duration_since(Instant::now()),
        );
        assert!(
            back.is_some(),
            "never promoted back\n{}",
            daemon.transcript()
        );
        assert_eq!(policy_of(daemon.pid()).unwrap(), Policy::fifo(10));
    }
    stop_daemon(daemon, &env);
    drop(counter);
}

mod spinning_loop_is_held_to_its_budget {
    #[test]
    fn deadline() {
        super::spinning_loop_is_held_to_its_budget("deadline");
    }

    #[test]
    fn fifo() {
        super::spinning_loop_is_held_to_its_budget("fifo");
    }
}
