//! Benchmark, not a test: what stalld costs on a many-CPU machine with thousands of threads,
//! by backend and thread count. Run as root: `cargo bench --bench scale`; it prints a table per
//! backend and asserts nothing.
//!
//! Each row is one boot of Debian's 6.12 kernel in a QEMU TCG guest (no KVM here; the
//! tests/vm.rs machinery, `common::guest`) with [`VCPUS_ENV`] vCPUs (8), CPUs 2 and up isolated
//! (`isolcpus=domain,managed_irq`, `nohz_full`, `rcu_nocbs`), a SCHED_FIFO 50 hog on each, and
//! N extra threads (tests/bench/scale_load.c, built with `musl-gcc -static`): one waiting
//! behind each hog, N/20 churning (10 wake-ups a second each), the rest sleeping. The guest's
//! /init (tests/bench/scale_init.sh) starts `stalld <args> -b <backend> -c 2-<last>`, lets it
//! settle, samples it at both ends of a window, then starves a FIFO 1 victim on CPU 3.
//!
//! Columns: guest uptime when /init ran and when all N threads ran; the daemon's CPU time per
//! minute by utime+stime (10 ms ticks) and by its threads' schedstat run time (ns); BPF run time
//! per minute and per event, and events per minute (`run_time_ns` and `run_cnt` of the daemon's
//! program fds, `bpf_stats_enabled`=1); peak RSS (VmHWM); how late past the threshold the
//! victim's `boosted` line came (both stamped by the guest kernel's log); CPU time per pass
//! (schedstat time per minute over the passes a minute has at the nominal interval
//! min(-g, -t/2), src/monitor.rs). Last, the slope of CPU per minute against N (least squares),
//! per 1,000 threads.
//!
//! Under TCG a vCPU is a host thread: guest CPU times include the time the host ran something
//! else instead (the guest cannot tell), so they are high and noisy; compare rows of one run.
//!
//! Environment: [`BIN_ENV`] (the stalld to measure: static, or dynamic with the libraries `ldd`
//! names copied into the guest), [`ARGS_ENV`], [`BACKENDS_ENV`], [`THREADS_ENV`],
//! [`WINDOW_ENV`], [`VCPUS_ENV`]. Needs what tests/vm.rs needs, plus `musl-gcc` (musl-tools).
//! Every boot holds the machine lock (one boot took 1.5-2.5 minutes with the 60 s window).

#[path = "../common/mod.rs"]
mod common;

use common::guest::{self, parse_records, read_lossy, Qemu, Record};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN_ENV: &str = "STALLD_SCALE_BIN";
/// The daemon's options besides `-b` and `-c`. The default: foreground, the log to /dev/kmsg
/// (where the victim's `boosted` line gets its time stamp), a 10 s threshold (passes every
/// 5 s, the default granularity), and a 50 ms budget every 100 ms as in tests/vm/init.sh (TCG
/// runs the daemon tens of times slower than hardware: with `-t 3`, 1.5 s passes, procfs used
/// its whole budget from 1,000 threads on and sched_debug at 10,000).
const ARGS_ENV: &str = "STALLD_SCALE_ARGS";
const DEFAULT_ARGS: &str = "-f -k -t 10 --self_runtime 50000000";
const BACKENDS_ENV: &str = "STALLD_SCALE_BACKENDS";
const DEFAULT_BACKENDS: &[&str] = &["queue_track", "sched_debug", "procfs"];
const THREADS_ENV: &str = "STALLD_SCALE_THREADS";
const DEFAULT_THREADS: &[&str] = &["100", "1000", "5000", "10000"];
/// Seconds between the two samples of the daemon.
const WINDOW_ENV: &str = "STALLD_SCALE_WINDOW_S";
const DEFAULT_WINDOW_S: u64 = 60;
const VCPUS_ENV: &str = "STALLD_SCALE_VCPUS";
const DEFAULT_VCPUS: u32 = 8;
/// vCPUs 0 and 1 do the housekeeping; the others are isolated.
const FIRST_ISOLATED: u32 = 2;
const KERNEL_PACKAGE: &str = "linux-image-6.12-amd64";
/// `USER_HZ`: the unit of utime and stime.
const TICK_MS: f64 = 10.0;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let setup = match Setup::new() {
        Ok(setup) => setup,
        Err(why) => {
            eprintln!("scale bench: cannot run: {why}");
            std::process::exit(1);
        }
    };
    println!(
        "scale bench: {} ({} vCPUs, isolated {}, {} MiB), stalld {} with `{} -b <backend> -c {}`, \
         {} s window",
        KERNEL_PACKAGE,
        setup.vcpus,
        setup.isolated,
        memory_mb(setup.vcpus),
        setup.stalld.display(),
        setup.args,
        setup.isolated,
        setup.window_s
    );
    for backend in guest::env_list(BACKENDS_ENV, DEFAULT_BACKENDS) {
        let rows: Vec<(u64, Result<Row, String>)> = guest::env_list(THREADS_ENV, DEFAULT_THREADS)
            .iter()
            .map(|n| {
                let n: u64 = n.parse().expect("thread counts are numbers");
                (n, setup.boot(&backend, n))
            })
            .collect();
        print_table(&backend, &setup, &rows);
    }
}

/// Guest memory: thread stacks (64 KiB each, tests/bench/scale_load.c) and kernel stacks for
/// 10,000 threads fit in 2 GiB.
fn memory_mb(vcpus: u32) -> u32 {
    2048 + 64 * vcpus
}

struct Setup {
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    stalld: PathBuf,
    args: String,
    window_s: u64,
    vcpus: u32,
    /// `2-<last>`.
    isolated: String,
}

impl Setup {
    fn new() -> Result<Setup, String> {
        guest::check_host(&[("musl-gcc", "musl-tools")])?;
        let stalld = std::env::var_os(BIN_ENV).map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/x86_64-unknown-linux-musl/release/stalld")
            },
            PathBuf::from,
        );
        if !stalld.is_file() {
            return Err(format!(
                "no stalld at {} (build it: cargo build --release --target \
                 x86_64-unknown-linux-musl; or set {BIN_ENV})",
                stalld.display()
            ));
        }
        let vcpus = match std::env::var(VCPUS_ENV) {
            Ok(v) => v.parse().map_err(|_| format!("{VCPUS_ENV}={v}"))?,
            Err(_) => DEFAULT_VCPUS,
        };
        if vcpus < FIRST_ISOLATED + 2 {
            return Err(format!(
                "{VCPUS_ENV}: at least {} vCPUs",
                FIRST_ISOLATED + 2
            ));
        }
        let window_s = match std::env::var(WINDOW_ENV) {
            Ok(v) => v.parse().map_err(|_| format!("{WINDOW_ENV}={v}"))?,
            Err(_) => DEFAULT_WINDOW_S,
        };
        let args = std::env::var(ARGS_ENV).unwrap_or_else(|_| DEFAULT_ARGS.to_owned());
        let vmlinuz = guest::fetch_kernel(KERNEL_PACKAGE, "amd64")?;
        let initramfs = build_initramfs(&stalld, &args)?;
        Ok(Setup {
            vmlinuz,
            initramfs,
            stalld,
            args,
            window_s,
            vcpus,
            isolated: format!("{FIRST_ISOLATED}-{}", vcpus - 1),
        })
    }

    /// One boot: `backend` with `threads` extra threads.
    fn boot(&self, backend: &str, threads: u64) -> Result<Row, String> {
        let dir = guest::work_dir().join("runs");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let stem = format!("scale-{}cpu-{backend}-{threads}", self.vcpus);
        let results = dir.join(format!("{stem}.results"));
        let console = dir.join(format!("{stem}.console"));
        let _ = std::fs::remove_file(&results);
        let cpus = &self.isolated;
        let append = format!(
            "console=ttyS0 panic=-1 quiet printk.devkmsg=on isolcpus=domain,managed_irq,{cpus} \
             nohz_full={cpus} rcu_nocbs={cpus} stalld_scale.backend={backend} \
             stalld_scale.threads={threads} stalld_scale.window={} stalld_scale.isolated={cpus}",
            self.window_s
        );
        let vcpus = self.vcpus.to_string();
        // One host thread per vCPU: tests/vm.rs's isolated guest (`Kernel::accel`) says why.
        let qemu = Qemu {
            program: "qemu-system-x86_64",
            machine: &["-cpu", "max"],
            accel: "tcg,thread=multi",
            vcpus: &vcpus,
            memory_mb: memory_mb(self.vcpus),
            vmlinuz: &self.vmlinuz,
            initramfs: &self.initramfs,
            append: &append,
            limit: Duration::from_secs(self.window_s + 600),
        };
        let ((status, wall, records), attempt) = guest::boot_until_init(
            || {
                let mut command = qemu.command(&console);
                command
                    .arg("-serial")
                    .arg(format!("file:{}", results.display()));
                eprintln!("scale bench: booting {stem}");
                let (status, wall) = qemu.run(command);
                (status, wall, parse_records(&read_lossy(&results)))
            },
            |(_, _, records)| records.iter().any(|r| r.kind == "boot"),
            |_| eprintln!("scale bench: {stem}: the guest died before /init; booting again"),
        );
        let errors: Vec<&str> = records
            .iter()
            .filter(|r| r.kind == "error")
            .map(|r| r.rest.as_str())
            .collect();
        let row = status
            .and_then(|()| match errors[..] {
                [] => Row::from_records(&records, self),
                _ => Err(errors.join("; ")),
            })
            .map_err(|e| {
                format!(
                    "{e} (report: {}, console: {})",
                    results.display(),
                    console.display()
                )
            })?;
        eprintln!(
            "scale bench: {stem}: qemu {:.0} s, {attempt} boot(s)",
            wall.as_secs_f64()
        );
        Ok(row)
    }

    /// The value of the daemon's option `name` (e.g. `-t`) in its arguments, or `default` (this
    /// crate's default: another build measured with other defaults should name the option).
    fn option_s(&self, name: &str, default: f64) -> f64 {
        let words: Vec<&str> = self.args.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(default)
    }

    fn threshold_s(&self) -> f64 {
        self.option_s(
            "-t",
            stalld::config::DEFAULT_STARVING_THRESHOLD.as_secs_f64(),
        )
    }

    /// The daemon's own CPU budget, ms a minute: `--self_runtime` over `--self_period` (or this
    /// crate's defaults).
    fn budget_ms_per_min(&self) -> f64 {
        let runtime = self.option_s(
            "--self_runtime",
            stalld::protect::DEFAULT_SELF_RUNTIME_NS as f64,
        );
        let period = self.option_s(
            "--self_period",
            stalld::protect::DEFAULT_SELF_PERIOD_NS as f64,
        );
        60_000.0 * (runtime / period).min(1.0)
    }

    /// The pass interval the daemon's options give: min(-g, -t / 2), s.
    fn pass_interval_s(&self) -> f64 {
        self.option_s("-g", stalld::config::DEFAULT_GRANULARITY.as_secs_f64())
            .min(self.threshold_s() / 2.0)
    }
}

/// The bench's initramfs: busybox, the stalld under test (and its libraries), scale_load, the
/// daemon's options in /etc/stalld_scale_args, tests/bench/scale_init.sh as /init.
fn build_initramfs(stalld: &Path, args: &str) -> Result<PathBuf, String> {
    let root = guest::initramfs_root("initramfs-scale")?;
    guest::install_busybox(&root)?;
    guest::install_program(&root, stalld, "bin/stalld")?;
    let load = guest::work_dir().join("scale_load");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench/scale_load.c");
    guest::run(
        Command::new("musl-gcc")
            .args(["-static", "-O2", "-Wall", "-pthread", "-o"])
            .arg(&load)
            .arg(&source),
    )?;
    guest::install_program(&root, &load, "bin/scale_load")?;
    guest::install_init(&root, "tests/bench/scale_init.sh")?;
    std::fs::create_dir_all(root.join("etc")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("etc/stalld_scale_args"), format!("{args}\n"))
        .map_err(|e| e.to_string())?;
    let image = guest::work_dir().join("initramfs-scale.cpio");
    guest::pack_cpio(&root, &image)?;
    Ok(image)
}

/// One boot's figures.
struct Row {
    /// Guest uptime when /init ran, and when all N threads ran.
    boot_s: f64,
    load_ready_s: f64,
    cpu_ms_per_min: f64,
    exec_ms_per_min: f64,
    bpf_ms_per_min: f64,
    bpf_events_per_min: f64,
    /// Voluntary context switches of the daemon's threads: a polled backend's loop sleeps once
    /// after each pass; queue_track's sleeps until the next wait can reach the threshold.
    sleeps_per_min: f64,
    hwm_kib: u64,
    /// The victim's `boosted` line, past its wait's start plus the threshold, s.
    rescue_late_s: Option<f64>,
    pass_ms: f64,
}

impl Row {
    fn from_records(records: &[Record], setup: &Setup) -> Result<Row, String> {
        let find = |kind: &str, word: &str| {
            records
                .iter()
                .find(|r| r.kind == kind && r.word() == word)
                .ok_or_else(|| format!("no `{kind} {word}` record"))
        };
        let boot = records
            .iter()
            .find(|r| r.kind == "boot")
            .ok_or("the guest never reached /init")?;
        if boot.field("isolated") != Some(setup.isolated.as_str()) {
            return Err(format!("isolated CPUs: {:?}", boot.field("isolated")));
        }
        let load = find("mark", "load_ready")?;
        let (start, end, peak) = (
            find("sample", "start")?,
            find("sample", "end")?,
            find("sample", "peak")?,
        );
        let per_min = |key: &str| -> Result<f64, String> {
            let delta = end.number(key).zip(start.number(key));
            let (b, a) = delta.ok_or_else(|| format!("no {key} in the samples"))?;
            Ok((b - a) * 60.0 / (end.t - start.t))
        };
        let exec_ms_per_min = per_min("exec_ns")? / 1e6;
        Ok(Row {
            boot_s: boot.t,
            load_ready_s: load.t,
            cpu_ms_per_min: per_min("ticks")? * TICK_MS,
            exec_ms_per_min,
            bpf_ms_per_min: per_min("bpf_run_ns")? / 1e6,
            bpf_events_per_min: per_min("bpf_run_cnt")?,
            sleeps_per_min: per_min("sleeps")?,
            hwm_kib: peak.integer("hwm_kb").unwrap_or(0) as u64,
            rescue_late_s: rescue_late_s(records, setup.threshold_s()),
            pass_ms: exec_ms_per_min * setup.pass_interval_s() / 60.0,
        })
    }
}

/// The kernel log's stamp of `stalld: boosted pid P ` minus that of the victim's own line
/// written just before it moved behind the hog, minus the threshold.
fn rescue_late_s(records: &[Record], threshold_s: f64) -> Option<f64> {
    let stamp = |pattern: &str| {
        records
            .iter()
            .filter(|r| r.kind == "kmsg" && r.rest.contains(pattern))
            .find_map(|r| kmsg_time(&r.rest))
    };
    Some(stamp("stalld: boosted pid ")? - stamp("stalld_scale: victim pid=")? - threshold_s)
}

/// The time of a busybox `dmesg` line: `[   12.345678] text`.
fn kmsg_time(line: &str) -> Option<f64> {
    let inside = line.strip_prefix('[')?.split(']').next()?;
    inside.trim().parse().ok()
}

/// Least-squares slope of `y` against `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn print_table(backend: &str, setup: &Setup, rows: &[(u64, Result<Row, String>)]) {
    println!(
        "\nbackend {backend} (a pass every {:.1} s: {:.0} a minute nominal; threshold {:.0} s)",
        setup.pass_interval_s(),
        60.0 / setup.pass_interval_s(),
        setup.threshold_s()
    );
    println!(
        "{:>6} {:>6} {:>7} {:>10} {:>11} {:>10} {:>9} {:>11} {:>10} {:>9} {:>10} {:>8}",
        "N",
        "boot s",
        "ready s",
        "cpu ms/min",
        "exec ms/min",
        "bpf ms/min",
        "bpf ns/ev",
        "events/min",
        "sleeps/min",
        "VmHWM KiB",
        "rescue +s",
        "ms/pass"
    );
    let budget_ms = setup.budget_ms_per_min();
    let mut cpu = Vec::new();
    let mut exec = Vec::new();
    let mut late = Vec::new();
    for (n, row) in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                println!("{n:>6} failed: {e}");
                continue;
            }
        };
        let per_event = if row.bpf_events_per_min > 0.0 {
            format!("{:.0}", row.bpf_ms_per_min * 1e6 / row.bpf_events_per_min)
        } else {
            "-".into()
        };
        let rescue = row
            .rescue_late_s
            .map_or("none".into(), |s| format!("{s:.2}"));
        let bound = row.exec_ms_per_min >= 0.9 * budget_ms;
        if bound {
            late.push(n.to_string());
        }
        println!(
            "{n:>6} {:>6.1} {:>7.1} {:>10.0} {:>11.1} {:>10.2} {per_event:>9} {:>11.0} {:>10.0} {:>9} \
             {rescue:>10} {:>8.2}{}",
            row.boot_s,
            row.load_ready_s,
            row.cpu_ms_per_min,
            row.exec_ms_per_min,
            row.bpf_ms_per_min,
            row.bpf_events_per_min,
            row.sleeps_per_min,
            row.hwm_kib,
            row.pass_ms,
            if bound { " *" } else { "" }
        );
        cpu.push((*n as f64 / 1000.0, row.cpu_ms_per_min, bound));
        exec.push((*n as f64 / 1000.0, row.exec_ms_per_min, bound));
    }
    if !late.is_empty() {
        println!(
            "* N = {}: the daemon used 90 % or more of its CPU budget ({budget_ms:.0} ms a \
             minute): its passes came late, ms/pass is a lower bound",
            late.join(", ")
        );
    }
    let all = |points: &[(f64, f64, bool)]| -> Vec<(f64, f64)> {
        points.iter().map(|&(x, y, _)| (x, y)).collect()
    };
    let unbound = |points: &[(f64, f64, bool)]| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| !p.2)
            .map(|&(x, y, _)| (x, y))
            .collect()
    };
    for (rows, cpu, exec) in [
        ("all rows", all(&cpu), all(&exec)),
        ("rows not CPU-bound", unbound(&cpu), unbound(&exec)),
    ] {
        match (slope(&cpu), slope(&exec)) {
            (Some(cpu), Some(exec)) => println!(
                "slope ({rows}): {cpu:.1} ms/min (utime+stime), {exec:.1} ms/min (schedstat) \
                 of daemon CPU per 1,000 threads"
            ),
            _ => println!("slope ({rows}): fewer than two rows"),
        }
    }
}
