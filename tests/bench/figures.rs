//! Benchmark, not a test: prints the figures quoted in closing notes. Run as root:
//! `cargo bench --bench figures` (`STALLD_BENCH_IDLE_S` shortens the 60 s idle measurement).
//! Uses the end-to-end harness, so the same safety rules hold: bounded hogs on CPU 1, RT
//! throttling saved and restored, every child killed.

#[path = "../common/mod.rs"]
mod common;

use std::ffi::CString;
use std::thread;
use std::time::{Duration, Instant};

use common::{e2e_begin, Daemon, Scenario, TEST_CPU, VICTIM_NAME};
use stalld::backend::sched_debug::SchedDebugBackend;
use stalld::backend::{Backend, Snapshot};

const THRESHOLD: Duration = Duration::from_secs(3);
const RESCUES: usize = 5;
const PARSE_ROUNDS: u32 = 2_000;
const FIXTURES: [&str; 4] = ["6.1-debian", "6.12-debian", "6.12-rt-debian", "6.18-host"];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    binary_size();
    parse_times();
    detection_latency();
    idle_cost();
}

fn binary_size() {
    let musl = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/x86_64-unknown-linux-musl/release/stalld"
    );
    for path in [musl, env!("CARGO_BIN_EXE_stalld")] {
        if let Ok(meta) = std::fs::metadata(path) {
            println!("binary size: {} bytes ({path})", meta.len());
        }
    }
}

fn mean_sample_us(backend: &mut SchedDebugBackend, cpus: u32) -> f64 {
    let mut snapshot = Snapshot::new(0..cpus);
    let started = Instant::now();
    for _ in 0..PARSE_ROUNDS {
        backend.sample(&mut snapshot).expect("sample");
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(PARSE_ROUNDS)
}

fn parse_times() {
    for kernel in FIXTURES {
        let path = format!(
            "{}/tests/fixtures/{kernel}/sched_debug.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut backend = SchedDebugBackend::open_path(&CString::new(path).unwrap()).unwrap();
        let us = mean_sample_us(&mut backend, 4);
        println!("parse {kernel:>15}: {us:8.1} us per sample ({size} bytes, file read included)");
    }
    if let Ok(mut backend) = SchedDebugBackend::open() {
        let us = mean_sample_us(&mut backend, stalld::sys::process::configured_cpus());
        println!(
            "parse {:>15}: {us:8.1} us per sample (kernel generates the text)",
            "live file"
        );
    }
}

/// Boost line time minus the threshold, over several independent rescues.
fn detection_latency() {
    let Some(_env) = e2e_begin("bench detection_latency") else {
        return;
    };
    let mut late_ms = Vec::new();
    for _ in 0..RESCUES {
        let daemon = Daemon::spawn(&["-f", "-v", "-c", "1", "-t", "3", "-d", "1"]);
        daemon
            .wait_for_line(" backend", Duration::from_secs(10))
            .expect("daemon started");
        let lifetime = THRESHOLD + Duration::from_secs(3);
        let scenario = Scenario::start(lifetime, lifetime);
        let pattern = format!(
            "boosted pid {} ({VICTIM_NAME}) (cpu {TEST_CPU})",
            scenario.victim.pid
        );
        let boosted = daemon.wait_for_line(&pattern, THRESHOLD + Duration::from_secs(3));
        let threshold_at = scenario.t_hog + THRESHOLD;
        match boosted {
            Some((at, _)) => {
                let late = if at >= threshold_at {
                    (at - threshold_at).as_secs_f64() * 1e3
                } else {
                    -(threshold_at - at).as_secs_f64() * 1e3
                };
                late_ms.push(late);
            }
            None => println!("rescue missed:\n{}", daemon.transcript()),
        }
        drop(scenario);
        drop(daemon);
    }
    late_ms.sort_by(f64::total_cmp);
    println!(
        "detection latency past the threshold over {} rescues: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        late_ms.len(),
        late_ms.first().copied().unwrap_or(f64::NAN),
        late_ms.get(late_ms.len() / 2).copied().unwrap_or(f64::NAN),
        late_ms.last().copied().unwrap_or(f64::NAN),
    );
}

fn status_kb(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Daemon CPU time on an idle machine with the default settings, and its memory.
fn idle_cost() {
    let Some(_env) = e2e_begin("bench idle_cost") else {
        return;
    };
    let idle_s: u64 = std::env::var("STALLD_BENCH_IDLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut daemon = Daemon::spawn(&["-f"]);
    thread::sleep(Duration::from_millis(500));
    let pid = daemon.pid();
    let startup_ns = common::cpu_time_ns(pid).expect("daemon schedstat");
    thread::sleep(Duration::from_secs(idle_s));
    let idle_ns = common::cpu_time_ns(pid).expect("daemon schedstat") - startup_ns;
    println!("startup CPU time: {:.3} ms", startup_ns as f64 / 1e6);
    println!(
        "idle CPU time: {:.3} ms per minute (measured over {idle_s} s, defaults: all CPUs, -t 20)",
        idle_ns as f64 / 1e6 * 60.0 / idle_s as f64
    );
    println!(
        "memory: peak RSS {} kB, RSS {} kB, locked {} kB",
        status_kb(pid, "VmHWM:"),
        status_kb(pid, "VmRSS:"),
        status_kb(pid, "VmLck:")
    );
    daemon.terminate(Duration::from_secs(2));
}
