//! QEMU guest tests: the static daemon on the kernels users run, and scenarios the 2-CPU host
//! cannot show (a task that migrates between two starved CPUs while it waits).
//!
//! Each test boots one Debian kernel package (6.1 without DL-server, 6.12 with it, 6.12-rt
//! with PREEMPT_RT; all with BTF) in `qemu-system-x86_64 -accel tcg` (no KVM here) with 4
//! vCPUs run by one host thread ([`TCG`]), once per backend in [`backends`]. The guest's
//! `/init` (`tests/vm/init.sh`, busybox) runs the scenarios with the static musl `stalld` and
//! reports raw observations on its second serial port; this file judges them. Inside the
//! guest, FIFO hogs may run on any vCPU but 0, always bounded by `timeout` and killed by PID
//! when their scenario ends.
//!
//! Invariants: a boot is bounded by `timeout` (and dies with the test process); one boot at a
//! time, also against other worktrees' end-to-end tests (the harness's machine lock), because
//! a busy TCG guest takes a whole host CPU and would blur their timings. Kernels are fetched with `apt-get download` once
//! and cached under the cargo target directory.
//!
//! Needs root, `qemu-system-x86`, `busybox-static`, `cpio`, util-linux `chrt` and, for the
//! first run, Debian's apt. Without them the tests are skipped with a message; with `CI` set
//! (as in CI) a skip is a failure.
//!
//! The isolated-CPUs guest ([`KERNEL_6_12_ISOLATED`]): 6.12 with 8 vCPUs, 4-7 isolated
//! ([`ISOLATED_CPUS`]: `isolcpus`, `nohz_full`, `rcu_nocbs`) and a host thread per vCPU
//! ([`Kernel::accel`]), where the daemon must pick its housekeeping CPUs itself and rescue two
//! CPUs starving at once.
//!
//! The arm64 guest ([`KERNEL_6_12_ARM64`]): Debian's arm64 kernel in `qemu-system-aarch64 -M
//! virt -cpu max` (TCG), with the cross-built aarch64 `stalld` and arm64 busybox and `chrt`
//! fetched from Debian (`apt-get download`, multiarch: `dpkg --add-architecture arm64`). It
//! proves the BPF object, built once with the repository's `bpf/vmlinux.h`, relocates against
//! another architecture's BTF. Also needs `qemu-system-arm` and, to build stalld,
//! `gcc-aarch64-linux-gnu` and `musl-dev:arm64` (README, "Cross builds").

mod common;

use common::guest::{
    self, fetch_kernel, parse_records, read_lossy, run, tail, work_dir, Qemu, Record,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The backends every kernel is booted with (one boot each, 20-30 s); `STALLD_VM_BACKENDS=a,b`
/// overrides the list.
const DEFAULT_BACKENDS: &[&str] = &["sched_debug", "queue_track", "procfs"];

/// Backends that date every wait exactly (queue_track sees each wait begin), so that they
/// must report one threshold after the wait began. sched_debug and procfs prove a wait's
/// start only for a task they saw running before it was preempted (and keep it when the task
/// migrates while waiting); the victim here may start waiting before any pass saw it run, and
/// then counts from the first pass that sees it waiting: up to two [`POLL_INTERVAL_S`] late.
fn dates_waits_exactly(backend: &str) -> bool {
    matches!(backend, "queue_track" | "Q")
}

/// Names the daemon prints in `using <name> backend` for the names and aliases of `-b`.
fn backend_log_name(backend: &str) -> &str {
    match backend {
        "S" => "sched_debug",
        "Q" => "queue_track",
        "P" => "procfs",
        other => other,
    }
}

/// `STALLD_VM_BACKENDS` or [`DEFAULT_BACKENDS`].
fn backends() -> Vec<String> {
    guest::env_list("STALLD_VM_BACKENDS", DEFAULT_BACKENDS)
}

/// A static `stalld` to test instead of building one.
const BIN_ENV: &str = "STALLD_VM_BIN";

// Must match tests/vm/init.sh.
const THRESHOLD_S: f64 = 3.0;
const BOOST_S: f64 = 1.0;
/// `sched_rt_runtime_us` a Debian kernel boots with.
const DEFAULT_RT_RUNTIME_US: &str = "950000";
/// `policy` / `prio` in `/proc/<pid>/sched`.
const POLICY_OTHER: i64 = 0;
const POLICY_FIFO: i64 = 1;
const POLICY_DEADLINE: i64 = 6;
const PRIO_FIFO_1: i64 = 98;
const PRIO_NICE_0: i64 = 120;

/// The isolated guest: its CPUs, the CPUs isolated from the scheduler's domains, managed
/// interrupts, the tick and RCU callbacks, the housekeeping CPUs left, and the CPUs its two victims starve on (must
/// match tests/vm/init.sh's `isolated`).
const ISOLATED_VCPUS: &str = "8";
const ISOLATED_CPUS: &str = "4-7";
const HOUSEKEEPING_CPUS: &str = "0-3";
const ISOLATED_VICTIM_CPUS: [u32; 2] = [5, 6];
/// "At once": both waits overlap for most of the threshold (the guest starts the two hogs
/// back to back).
const TOGETHER_S: f64 = 0.5;

/// Uptime resolution is 10 ms, and the hog notes its start a few ms after it took the CPU.
const EARLY_SLACK_S: f64 = 0.1;
/// The report may come at most this long after the threshold (as on the host).
const MAX_LATENESS_S: f64 = 1.0;
/// The daemon passes at least every min(-g, -t / 2): 1.5 s with `-t 3`; the first pass after
/// the CPU idled samples nothing (idle detection), so a first sighting may take two.
const POLL_INTERVAL_S: f64 = 1.5;
/// Victim CPU time that counts as "none" (starved) and as "made progress" (boosted: 1 ms of
/// every 200 ms for 1 s is about 5 ms).
const MAX_STARVED_GAIN_MS: f64 = 1.0;
const MIN_BOOST_GAIN_MS: f64 = 1.0;

/// One boot gets at most this long (measured: about 30 s for three scenarios).
fn boot_limit(scenarios: usize) -> Duration {
    Duration::from_secs(120 + 60 * scenarios as u64)
}

/// One host thread runs all four vCPUs in turn. Multi-threaded TCG gave each vCPU a host
/// thread: the guest's two spinning hogs then kept both shared host CPUs busy, the boot took
/// longer (6.12-rt: 29.7 s against 21.1 s), and 6.12-rt once died of `Oops: int3` while
/// booting (a code-patching race between vCPU threads). The guest still has four CPUs.
const TCG: &str = "tcg,thread=single";

// ---------------------------------------------------------------------------------------------
// Kernels and scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// A FIFO 1 victim starved by a FIFO 50 hog on vCPU 1 is boosted and restored.
    RescueFifo,
    /// The same with a SCHED_OTHER (nice 0) victim: only where no DL-server serves it.
    RescueOther,
    /// The victim waits on vCPU 1, is moved to vCPU 2 (busy too) after 1 s and keeps waiting.
    Migration,
    /// The same with a SCHED_OTHER victim (the kernel zeroes a fair task's `se.exec_start`
    /// when it migrates): only where no DL-server serves it.
    MigrationOther,
    /// RescueOther and MigrationOther on a kernel with a DL-server, switched off on vCPUs 1-2
    /// by the guest (`fair_server/cpuN/runtime` = 0) before the daemon starts.
    RescueOtherNoDlServer,
    MigrationOtherNoDlServer,
    /// A SCHED_OTHER victim behind a FIFO 50 hog where the DL-server serves it: it progresses
    /// and the daemon never boosts it.
    OtherDlServerOn,
    /// PREEMPT_RT: vCPU 1's `ktimers/1` and `rcuc/1` (SCHED_FIFO 1) behind a FIFO 50 hog are
    /// boosted and restored.
    Kthreads,
    /// `stalld --selftest=3` exits 0 with every backend that opens rescuing its thread
    /// (once per kernel, in the first backend's boot).
    Selftest,
    /// stalld started by the initramfs's `/init` through `initramfs/stalld-early`, before
    /// anything else, as `@stalld`; it rescues a FIFO 1 victim later (an early boot).
    EarlyBoot,
    /// With CPUs 4-7 isolated: stalld `-c 4-7` runs on CPUs 0-3 by itself, and FIFO 1 victims
    /// starved at once on CPUs 5 and 6 (a FIFO 50 hog each) are both boosted and restored.
    Isolated,
    /// After EarlyBoot: switch_root into a tmpfs root; the same daemon follows PID 1 there and
    /// rescues a new victim; then the real system starts stalld again, the early daemon hands
    /// over to it, and the new one rescues a victim that waited across the handover and stops
    /// cleanly on SIGTERM.
    SwitchRoot,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::RescueFifo => "rescue_fifo",
            Scenario::RescueOther => "rescue_other",
            Scenario::Migration => "migration",
            Scenario::MigrationOther => "migration_other",
            Scenario::RescueOtherNoDlServer => "rescue_other_no_dl_server",
            Scenario::MigrationOtherNoDlServer => "migration_other_no_dl_server",
            Scenario::OtherDlServerOn => "other_dl_server_on",
            Scenario::Kthreads => "kthreads",
            Scenario::Selftest => "selftest",
            Scenario::Isolated => "isolated",
            Scenario::EarlyBoot => "early_boot",
            Scenario::SwitchRoot => "switch_root",
        }
    }

    /// The daemon of this scenario is the one the initramfs started.
    fn early(self) -> bool {
        matches!(self, Scenario::EarlyBoot | Scenario::SwitchRoot)
    }
}

/// What one boot runs, in order; with `early` stalld starts from the initramfs.
struct Plan {
    scenarios: Vec<Scenario>,
    early: bool,
}

/// A kernel's boots for one backend: its scenarios (and the self-test in the first backend's
/// boot), then the early-boot boot; the arm64 and the isolated guests run their scenarios only.
fn plans(kernel: &Kernel, first_backend: bool) -> Vec<Plan> {
    let mut regular = Plan {
        scenarios: kernel.scenarios.to_vec(),
        early: false,
    };
    if first_backend && kernel.selftest {
        regular.scenarios.push(Scenario::Selftest);
    }
    if kernel.arch == Arch::Aarch64 || kernel.isolated {
        return vec![regular];
    }
    let early = Plan {
        scenarios: vec![Scenario::EarlyBoot, Scenario::SwitchRoot],
        early: true,
    };
    vec![regular, early]
}

/// The guest's CPU architecture: the QEMU machine, the packages and the binaries it boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name of the architecture, for `apt-get download package:arch`.
    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The guest's vCPUs: the arm64 guest's one scenario needs vCPUs 0 and 1 only, and each
    /// vCPU more slows its boot (one host thread runs them all, [`TCG`]).
    fn vcpus(self) -> &'static str {
        match self {
            Arch::X86_64 => "4",
            Arch::Aarch64 => "2",
        }
    }

    /// How much shorter than `-d` a boost may look in the kernel log: its `boosted` line is
    /// written after the boost began. Under arm64 TCG (slower than x86 TCG) on a busy 2-CPU
    /// host, the daemon's kmsg lines came 50-130 ms after the same lines reached its stderr
    /// reader, and 1 s boosts measured 0.896, 0.93, 0.98, 1.00 s (queue_track) and 0.87 (host
    /// load average 10), 1.01, 1.01 s (sched_debug). x86 guests stayed within 0.1 s until the
    /// daemon ran under its own SCHED_DEADLINE budget (20 ms every 100 ms, issue 8): the
    /// kernel may then hold it for the rest of a period (80 ms) between applying a boost and
    /// writing its line, while the restore is timed from the boost itself. The first
    /// fresh-clone CI run with the budget measured one victim boost of 0.893 s on 6.1 /
    /// queue_track among 60 victim boosts, all others 0.90-1.29 s: 0.1 s of log lag plus one
    /// throttled period.
    fn boost_log_slack_s(self) -> f64 {
        match self {
            Arch::X86_64 | Arch::Aarch64 => 0.2,
        }
    }

    /// The environment variable naming a prebuilt static `stalld` for this architecture.
    fn bin_env(self) -> &'static str {
        match self {
            Arch::X86_64 => BIN_ENV,
            Arch::Aarch64 => "STALLD_VM_BIN_AARCH64",
        }
    }
}

struct Kernel {
    label: &'static str,
    arch: Arch,
    /// The Debian package apt offers (a metapackage naming the real image package).
    package: &'static str,
    /// `uname -r` must start with this.
    release_prefix: &'static str,
    dl_server: bool,
    preempt_rt: bool,
    /// Whether `--selftest` runs in the first backend's boot.
    selftest: bool,
    /// [`ISOLATED_VCPUS`] vCPUs booted with [`ISOLATED_CPUS`] isolated.
    isolated: bool,
    scenarios: &'static [Scenario],
}

impl Kernel {
    fn vcpus(&self) -> &'static str {
        if self.isolated {
            ISOLATED_VCPUS
        } else {
            self.arch.vcpus()
        }
    }

    /// What the kernel command line adds for this guest.
    fn extra_cmdline(&self) -> String {
        if self.isolated {
            let cpus = ISOLATED_CPUS;
            format!(" isolcpus=domain,managed_irq,{cpus} nohz_full={cpus} rcu_nocbs={cpus}")
        } else {
            String::new()
        }
    }

    /// QEMU's accelerator: [`TCG`], but one host thread per vCPU for the isolated guest. One
    /// thread runs the vCPUs in turn and moves on when an interrupt comes or after 100 ms; the
    /// victims' CPUs are tickless there (`nohz_full`), so the guest's shell waited about
    /// 200 ms for every turn: it took 9.7, 7.6 and 9.8 s to start the hogs (three boots, one
    /// with a 4 ms timer on CPU 1 to force turns), the daemon's lines reached it up to 3 s
    /// late, and every timing check failed. Without `nohz_full`: 0.8 s, and 15.5-19.7 s a
    /// boot; with a thread per vCPU and `nohz_full`, 18.9 s. The price: the two spinning
    /// hogs keep both host CPUs busy for the scenario's ~10 s.
    fn accel(&self) -> &'static str {
        if self.isolated {
            "tcg,thread=multi"
        } else {
            TCG
        }
    }
}

const KERNEL_6_1: Kernel = Kernel {
    label: "6.1",
    arch: Arch::X86_64,
    package: "linux-image-amd64",
    release_prefix: "6.1.",
    dl_server: false,
    preempt_rt: false,
    selftest: true,
    isolated: false,
    scenarios: &[
        Scenario::RescueFifo,
        Scenario::RescueOther,
        Scenario::Migration,
        Scenario::MigrationOther,
    ],
};

const KERNEL_6_12: Kernel = Kernel {
    label: "6.12",
    arch: Arch::X86_64,
    package: "linux-image-6.12-amd64",
    release_prefix: "6.12.",
    dl_server: true,
    preempt_rt: false,
    selftest: true,
    isolated: false,
    scenarios: &[
        Scenario::RescueFifo,
        Scenario::Migration,
        Scenario::OtherDlServerOn,
        Scenario::RescueOtherNoDlServer,
        Scenario::MigrationOtherNoDlServer,
    ],
};

const KERNEL_6_12_RT: Kernel = Kernel {
    label: "6.12-rt",
    arch: Arch::X86_64,
    package: "linux-image-6.12-rt-amd64",
    release_prefix: "6.12.",
    dl_server: true,
    preempt_rt: true,
    selftest: true,
    isolated: false,
    scenarios: &[
        Scenario::RescueFifo,
        Scenario::Migration,
        Scenario::Kthreads,
    ],
};

/// The arm64 guest: only the scenario the issue asks for (its boot under TCG is the slow part).
const KERNEL_6_12_ARM64: Kernel = Kernel {
    label: "6.12-arm64",
    arch: Arch::Aarch64,
    package: "linux-image-6.12-arm64",
    release_prefix: "6.12.",
    dl_server: true,
    preempt_rt: false,
    selftest: false,
    isolated: false,
    scenarios: &[Scenario::RescueFifo],
};

/// 6.12 with CPUs isolated: one scenario, one boot.
const KERNEL_6_12_ISOLATED: Kernel = Kernel {
    label: "6.12-isolated",
    arch: Arch::X86_64,
    package: "linux-image-6.12-amd64",
    release_prefix: "6.12.",
    dl_server: true,
    preempt_rt: false,
    selftest: false,
    isolated: true,
    scenarios: &[Scenario::Isolated],
};

#[test]
fn kernel_6_1() {
    run_kernel(&KERNEL_6_1);
}

#[test]
fn kernel_6_12() {
    run_kernel(&KERNEL_6_12);
}

#[test]
fn kernel_6_12_rt() {
    run_kernel(&KERNEL_6_12_RT);
}

#[test]
fn kernel_6_12_arm64() {
    run_kernel_with(&KERNEL_6_12_ARM64, &["sched_debug", "queue_track"]);
}

/// One backend is enough: what isolation changes, where the daemon runs and which CPUs it
/// watches, is decided before any backend opens, and every backend's rescue is proven on
/// 6.12 by [`kernel_6_12`]; queue_track dates each wait exactly, so both victims are held to
/// the threshold itself.
#[test]
fn kernel_6_12_isolated() {
    run_kernel_with(&KERNEL_6_12_ISOLATED, &["queue_track"]);
}

// ---------------------------------------------------------------------------------------------
// Test driver
// ---------------------------------------------------------------------------------------------

/// One test at a time in this process: boots share the host's two CPUs.
static VM_LOCK: Mutex<()> = Mutex::new(());

fn run_kernel(kernel: &Kernel) {
    run_kernel_with(kernel, &[]);
}

/// Boots `kernel` once per backend: [`backends`], or `only` where it is not empty and
/// `STALLD_VM_BACKENDS` is not set.
fn run_kernel_with(kernel: &Kernel, only: &[&str]) {
    let _lock = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let test = format!("vm kernel {}", kernel.label);
    let started = Instant::now();
    let setup = match shared_setup(kernel.arch) {
        Ok(setup) => setup,
        Err(why) => return skip(&test, why),
    };
    let vmlinuz = match fetch_kernel(kernel.package, kernel.arch.debian()) {
        Ok(path) => path,
        Err(why) => return skip(&test, &format!("{}: {why}", kernel.package)),
    };
    let mut failures = Vec::new();
    let mut summary = String::new();
    let backends = if only.is_empty() || std::env::var_os("STALLD_VM_BACKENDS").is_some() {
        backends()
    } else {
        only.iter().map(|b| b.to_string()).collect()
    };
    for (i, backend) in backends.iter().enumerate() {
        for plan in plans(kernel, i == 0) {
            let run = boot(kernel, backend, &plan, &vmlinuz, &setup.initramfs);
            let _ = writeln!(summary, "{}", run.summary());
            if !run.failures.is_empty() {
                failures.push(format!(
                    "--- {} / {backend}{}: {}\n{}",
                    kernel.label,
                    if plan.early { " (early)" } else { "" },
                    run.failures.join("\n"),
                    run.transcript()
                ));
            }
        }
    }
    let summary = format!(
        "{test}: {:.1} s in all\n{summary}",
        started.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    // Kept with the guest reports: a passing run's figures, which cargo test does not show.
    let _ = std::fs::write(
        work_dir()
            .join("runs")
            .join(format!("{}.summary", kernel.label)),
        &summary,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Skips with a message, or fails when `CI` is set.
fn skip(test: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{test}: cannot run ({why}) and CI is set");
    eprintln!("SKIPPED {test}: {why} (with CI set this is a failure)");
}

// ---------------------------------------------------------------------------------------------
// Host preparation: tools, kernels, the static binary, the initramfs
// ---------------------------------------------------------------------------------------------

struct Setup {
    initramfs: PathBuf,
}

/// Built once per test process and architecture; `Err` says why the tests cannot run here.
fn shared_setup(arch: Arch) -> Result<&'static Setup, &'static str> {
    static SETUP: [OnceLock<Result<Setup, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    SETUP[arch as usize]
        .get_or_init(|| {
            check_host(arch)?;
            let stalld = stalld_binary(arch);
            let initramfs = build_initramfs(arch, &stalld)?;
            Ok(Setup { initramfs })
        })
        .as_ref()
        .map_err(String::as_str)
}

/// What the arm64 guest needs besides [`HOST_TOOLS`] (busybox and chrt come from Debian's arm64
/// packages, not from the host).
const HOST_TOOLS_AARCH64: &[(&str, &str)] = &[
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
];

fn check_host(arch: Arch) -> Result<(), String> {
    guest::check_host(match arch {
        Arch::X86_64 => &[],
        Arch::Aarch64 => HOST_TOOLS_AARCH64,
    })
}

/// The architecture's [`Arch::bin_env`], or this crate's static musl build made by a nested
/// cargo in its own target directory (the outer cargo holds the lock of the usual one while
/// tests run).
fn stalld_binary(arch: Arch) -> PathBuf {
    let bin_env = arch.bin_env();
    if let Ok(bin) = std::env::var(bin_env) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "{bin_env}={} is not a file", bin.display());
        return bin;
    }
    let target = arch.rust_target();
    let target_dir = work_dir().join("cargo");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let built = run(Command::new(cargo)
        .args(["build", "--release", "--locked", "--target", target])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    if let Err(e) = built {
        panic!("building the static stalld for the guest failed (set {bin_env} to use another build):\n{e}");
    }
    eprintln!(
        "vm: static stalld for {target} built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    target_dir.join(target).join("release").join("stalld")
}

/// A busybox initramfs: `/init` from tests/vm/init.sh, busybox, util-linux `chrt` (Debian's
/// busybox has none), `stalld`, and whatever shared libraries they need.
fn build_initramfs(arch: Arch, stalld: &Path) -> Result<PathBuf, String> {
    let root = guest::initramfs_root(&format!("initramfs-{}", arch.debian()))?;
    match arch {
        Arch::X86_64 => {
            let chrt = guest::which("chrt").ok_or("no chrt")?;
            guest::install_busybox(&root)?;
            guest::install_program(&root, &chrt, "usr/bin/chrt")?;
        }
        Arch::Aarch64 => install_arm64_userland(&root)?,
    }
    guest::install_program(&root, stalld, "bin/stalld")?;
    // Where initramfs/stalld-early (the initramfs-tools and dracut scripts' starter) expects
    // stalld, and the starter itself.
    std::os::unix::fs::symlink("../bin/stalld", root.join("sbin/stalld"))
        .map_err(|e| e.to_string())?;
    let early = Path::new(env!("CARGO_MANIFEST_DIR")).join("initramfs/stalld-early");
    guest::copy_executable(&early, &root.join("sbin/stalld-early"))?;
    guest::install_init(&root, "tests/vm/init.sh")?;
    let image = work_dir().join(format!("initramfs-{}.cpio", arch.debian()));
    guest::pack_cpio(&root, &image)?;
    Ok(image)
}

/// The arm64 guest's busybox and `chrt` with the glibc it needs, from Debian's arm64 packages
/// (the host's `ldd` cannot read arm64 programs: util-linux's `chrt` needs libc.so.6 and the
/// loader only). The packages are fetched once into `<target>/tmp/stalld-vm/arm64-userland/`.
fn install_arm64_userland(root: &Path) -> Result<(), String> {
    const FILES: &[(&str, &[&str])] = &[
        ("busybox-static", &["./bin/busybox"]),
        ("util-linux", &["./usr/bin/chrt"]),
        (
            "libc6",
            &[
                "./lib/aarch64-linux-gnu/libc.so.6",
                "./lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
                "./lib/ld-linux-aarch64.so.1",
            ],
        ),
    ];
    let cache = work_dir().join("arm64-userland");
    let unpacked = cache.join("unpacked");
    if !unpacked.join("usr/bin/chrt").is_file() {
        let download = cache.join("download");
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&download).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&unpacked).map_err(|e| e.to_string())?;
        for (package, members) in FILES {
            let deb =
                guest::apt_download(&download, package, Arch::Aarch64.debian()).map_err(|e| {
                    format!("{e} (arm64 packages need `dpkg --add-architecture arm64`)")
                })?;
            guest::unpack(&deb, &unpacked, members)?;
        }
        let _ = std::fs::remove_dir_all(&download);
    }
    for (_, members) in FILES {
        for member in *members {
            let from = unpacked.join(member);
            let to = root.join(member);
            std::fs::create_dir_all(to.parent().expect("a member has a folder"))
                .map_err(|e| e.to_string())?;
            match std::fs::read_link(&from) {
                Ok(target) => std::os::unix::fs::symlink(target, &to),
                Err(_) => std::fs::copy(&from, &to).map(drop),
            }
            .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Booting
// ---------------------------------------------------------------------------------------------

/// What one boot (one kernel, one backend, its scenarios) showed.
struct BootRun {
    kernel: &'static str,
    backend: String,
    /// stalld started from the initramfs in this boot.
    early: bool,
    wall: Duration,
    attempts: u32,
    records: Vec<Record>,
    console: String,
    failures: Vec<String>,
    /// Measurements for the summary, in scenario order.
    notes: Vec<String>,
}

fn boot(kernel: &Kernel, backend: &str, plan: &Plan, vmlinuz: &Path, initramfs: &Path) -> BootRun {
    let reached_init = |run: &BootRun| run.records.iter().any(|r| r.kind == "boot");
    let (mut run, attempts) = guest::boot_until_init(
        || boot_once(kernel, backend, plan, vmlinuz, initramfs),
        reached_init,
        |run| {
            eprintln!(
                "vm: {} / {backend}: the guest died before /init; booting again. Console:\n{}",
                kernel.label,
                tail(&run.console, 40)
            )
        },
    );
    run.attempts = attempts;
    if reached_init(&run) {
        check_boot(kernel, &plan.scenarios, &mut run);
    } else {
        run.failures
            .push(format!("the guest never reached /init in {attempts} boots"));
    }
    run
}

fn boot_once(
    kernel: &Kernel,
    backend: &str,
    plan: &Plan,
    vmlinuz: &Path,
    initramfs: &Path,
) -> BootRun {
    let dir = work_dir().join("runs");
    std::fs::create_dir_all(&dir).expect("create the runs folder");
    let early = if plan.early { "-early" } else { "" };
    let stem = format!("{}-{backend}{early}", kernel.label);
    let results = dir.join(format!("{stem}.results"));
    let console = dir.join(format!("{stem}.console"));
    let _ = std::fs::remove_file(&results);
    let scenarios: Vec<&str> = plan.scenarios.iter().map(|s| s.name()).collect();
    // x86_64: the report on the second 16550 (ttyS1). aarch64 `virt` has one PL011 UART, the
    // console: the report goes to a virtio console (hvc0, built into Debian's arm64 kernel).
    // aarch64: `pauth-impdef=on` keeps `-cpu max` but has TCG compute pointer authentication
    // codes with a cheap hash instead of QARMA, which Debian's kernel (ARM64_PTR_AUTH_KERNEL)
    // uses on every function return. With it and 2 vCPUs /init came at 2.6-5.3 s guest uptime;
    // with neither (4 vCPUs), at 34-42 s, though on a host busier than usual.
    let (qemu, machine, console_tty, report_dev) = match kernel.arch {
        Arch::X86_64 => (
            "qemu-system-x86_64",
            &["-cpu", "max"][..],
            "ttyS0",
            "/dev/ttyS1",
        ),
        Arch::Aarch64 => (
            "qemu-system-aarch64",
            &["-M", "virt", "-cpu", "max,pauth-impdef=on"][..],
            "ttyAMA0",
            "/dev/hvc0",
        ),
    };
    let append = format!(
        "console={console_tty} panic=-1 quiet printk.devkmsg=on stalld_vm.report={report_dev} stalld_vm.backend={backend} stalld_vm.scenarios={}{}{}",
        scenarios.join(","),
        if plan.early { " stalld_vm.early=1" } else { "" },
        kernel.extra_cmdline()
    );
    let qemu = Qemu {
        program: qemu,
        machine,
        accel: kernel.accel(),
        vcpus: kernel.vcpus(),
        memory_mb: 1024,
        vmlinuz,
        initramfs,
        append: &append,
        limit: boot_limit(scenarios.len()),
    };
    let mut command = qemu.command(&console);
    match kernel.arch {
        Arch::X86_64 => command
            .arg("-serial")
            .arg(format!("file:{}", results.display())),
        Arch::Aarch64 => command
            .arg("-chardev")
            .arg(format!("file,id=report,path={}", results.display()))
            .args([
                "-device",
                "virtio-serial-pci",
                "-device",
                "virtconsole,chardev=report",
            ]),
    };
    let (status, wall) = qemu.run(command);
    let mut run = BootRun {
        kernel: kernel.label,
        backend: backend.to_owned(),
        early: plan.early,
        wall,
        attempts: 1,
        records: Vec::new(),
        console: read_lossy(&console),
        failures: status.err().into_iter().collect(),
        notes: Vec::new(),
    };
    run.records = parse_records(&read_lossy(&results));
    run
}

impl BootRun {
    fn summary(&self) -> String {
        let init = self
            .records
            .iter()
            .find(|r| r.kind == "boot")
            .map_or("never".to_owned(), |r| format!("{:.2} s", r.t));
        let mut out = format!(
            "  {} / {}{}: qemu {:.1} s wall ({} boot{}), /init at {init} guest uptime{}",
            self.kernel,
            self.backend,
            if self.early { " (early)" } else { "" },
            self.wall.as_secs_f64(),
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            if self.failures.is_empty() {
                ""
            } else {
                ", FAILED"
            }
        );
        for note in &self.notes {
            let _ = write!(out, "\n    {note}");
        }
        out
    }

    fn transcript(&self) -> String {
        let mut out = String::from("guest report:\n");
        for r in &self.records {
            let _ = writeln!(out, "  {:8.2} {} {}", r.t, r.kind, r.rest);
        }
        let _ = write!(out, "console (last 60 lines):\n{}", tail(&self.console, 60));
        out
    }
}

/// Checks the kernel is the one meant, then every scenario.
fn check_boot(kernel: &Kernel, scenarios: &[Scenario], run: &mut BootRun) {
    let boot = run
        .records
        .iter()
        .find(|r| r.kind == "boot")
        .cloned()
        .expect("called after the boot record");
    let release = boot.field("kernel").unwrap_or("?");
    let mut fail = |what: String| run.failures.push(what);
    if !release.starts_with(kernel.release_prefix) {
        fail(format!(
            "kernel {release}, expected {}*",
            kernel.release_prefix
        ));
    }
    let flags = [
        ("btf", true),
        ("dl_server", kernel.dl_server),
        ("preempt_rt", kernel.preempt_rt),
    ];
    for (flag, want) in flags {
        if boot.field(flag) != Some(if want { "1" } else { "0" }) {
            fail(format!(
                "{flag}: want {want}, guest says {:?}",
                boot.field(flag)
            ));
        }
    }
    let vcpus = kernel.vcpus();
    if boot.field("cpus") != Some(vcpus) {
        fail(format!(
            "cpus: want {vcpus}, guest says {:?}",
            boot.field("cpus")
        ));
    }
    let isolated = if kernel.isolated { ISOLATED_CPUS } else { "" };
    if boot.field("isolated") != Some(isolated) {
        fail(format!(
            "isolated CPUs: want {isolated:?}, guest says {:?}",
            boot.field("isolated")
        ));
    }
    if kernel.isolated && boot.field("nohz_full") != Some(ISOLATED_CPUS) {
        fail(format!(
            "nohz_full CPUs: want {ISOLATED_CPUS}, guest says {:?}",
            boot.field("nohz_full")
        ));
    }
    for r in run.records.iter().filter(|r| r.kind == "error") {
        run.failures.push(format!("guest error: {}", r.rest));
    }
    if !run.records.iter().any(|r| r.kind == "done") {
        run.failures
            .push("the guest did not finish its scenarios".into());
    }
    for &scenario in scenarios {
        let records = scenario_records(&run.records, scenario.name());
        if records.is_empty() {
            run.failures.push(format!("{}: no report", scenario.name()));
            continue;
        }
        let mut check = Check {
            scenario,
            arch: kernel.arch,
            backend: &run.backend,
            records: &records,
            failures: Vec::new(),
            notes: Vec::new(),
        };
        check.run();
        let duration = match (records.first(), records.last()) {
            (Some(b), Some(e)) if e.kind == "end" => format!("{:.1} s", e.t - b.t),
            _ => "unfinished".into(),
        };
        run.notes.push(format!(
            "{} ({duration}): {}",
            scenario.name(),
            check.notes.join(", ")
        ));
        run.failures.extend(
            check
                .failures
                .into_iter()
                .map(|f| format!("{}: {f}", scenario.name())),
        );
    }
}

/// The records from `begin <scenario>` to its `end` (both included).
fn scenario_records(records: &[Record], scenario: &str) -> Vec<Record> {
    let Some(start) = records
        .iter()
        .position(|r| r.kind == "begin" && r.word() == scenario)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in &records[start..] {
        out.push(r.clone());
        if r.kind == "end" {
            break;
        }
    }
    out
}

/// One scenario's records judged; `failures` empty means it passed.
struct Check<'a> {
    scenario: Scenario,
    arch: Arch,
    backend: &'a str,
    records: &'a [Record],
    failures: Vec<String>,
    notes: Vec<String>,
}

/// One `sched victim ...` sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    /// When the guest read `/proc` for it (`t` comes after, up to 0.25 s under TCG).
    read: f64,
    pid: i64,
    cpu: i64,
    sum_exec_ms: f64,
    policy: i64,
    prio: i64,
}

impl Check<'_> {
    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    fn mark(&self, subject: &str, cpu: Option<&str>) -> Option<&Record> {
        self.records.iter().find(|r| {
            r.kind == "mark" && r.word() == subject && cpu.is_none_or(|c| r.field("cpu") == Some(c))
        })
    }

    /// How far /proc/uptime's clock (the samples' `read`) may be ahead of the kernel log's
    /// (`klog` stamps), s, at most: from each `clock` mark, a kernel-log line written between
    /// two reads of /proc/uptime (in centiseconds, hence 0.01). The largest over the scenario's
    /// marks (one as it begins, one as it ends); 0 without any.
    fn uptime_ahead_of_klog_max(&self) -> f64 {
        self.records
            .iter()
            .filter(|r| r.kind == "mark" && r.word() == "clock")
            .filter_map(|mark| {
                let line = format!("stalld_vm: clock tag={}", mark.field("tag")?);
                let stamped = self
                    .records
                    .iter()
                    .find(|r| r.kind == "klog" && r.rest == line)?;
                Some(mark.number("after")? + 0.01 - stamped.t)
            })
            .fold(0.0, f64::max)
    }

    fn logs(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.kind == "log")
    }

    fn first_log(&self, pattern: &str) -> Option<f64> {
        self.logs().find(|r| r.rest.contains(pattern)).map(|r| r.t)
    }

    fn samples(&self) -> Vec<Sample> {
        self.records
            .iter()
            .filter(|r| r.kind == "sched" && r.word() == "victim")
            .filter_map(|r| {
                Some(Sample {
                    t: r.t,
                    read: r.number("read").unwrap_or(r.t),
                    pid: r.integer("pid")?,
                    cpu: r.integer("cpu")?,
                    sum_exec_ms: r.number("sum_exec_ms")?,
                    policy: r.integer("policy")?,
                    prio: r.integer("prio")?,
                })
            })
            .collect()
    }

    fn run(&mut self) {
        if self.scenario == Scenario::Selftest {
            return self.check_selftest();
        }
        if !self.check_daemon() {
            return;
        }
        if self.scenario.early() {
            self.check_early();
        }
        if self.scenario == Scenario::SwitchRoot {
            self.check_handover();
        }
        match self.scenario {
            Scenario::Kthreads => return self.check_kthreads(),
            Scenario::OtherDlServerOn => return self.check_left_to_dl_server(),
            Scenario::Isolated => return self.check_isolated(),
            _ => {}
        }
        let victim = self.mark("victim", None).cloned();
        let Some(victim) = victim else {
            return self.fail("no victim started".into());
        };
        let Some(pid) = victim.integer("pid") else {
            return self.fail(format!("victim mark without pid: {}", victim.rest));
        };
        if victim.field("comm") != Some("victim") {
            self.fail(format!("victim comm {:?}", victim.field("comm")));
        }
        let hog = self.mark("hog", Some("1")).cloned();
        let Some(wait_began) = hog.as_ref().and_then(|h| h.number("at")) else {
            return self.fail("no hog on CPU 1".into());
        };
        let (policy, prio) = match self.scenario {
            Scenario::RescueOther
            | Scenario::MigrationOther
            | Scenario::RescueOtherNoDlServer
            | Scenario::MigrationOtherNoDlServer => (POLICY_OTHER, PRIO_NICE_0),
            _ => (POLICY_FIFO, PRIO_FIFO_1),
        };
        let migrates = matches!(
            self.scenario,
            Scenario::Migration | Scenario::MigrationOther | Scenario::MigrationOtherNoDlServer
        );
        let cpu = if migrates { 2 } else { 1 };
        let moved = self.mark("moved", None).map(|m| m.t);
        if migrates {
            let Some(moved) = moved else {
                return self.fail("the victim was never moved".into());
            };
            self.check_migration(pid, moved);
        }
        let Some((boosted, boosted_at)) = self.reported_and_boosted(pid, cpu, wait_began, moved)
        else {
            return;
        };
        if self.scenario.early() {
            // The early daemon is not verbose (stalld-early drops -v), and `restored` lines
            // are verbose ones: the restore is seen in the victim's samples instead.
            let restored = self.samples().into_iter().find(|s| {
                s.t > boosted_at + BOOST_S
                    && s.t < boosted_at + BOOST_S + 1.0
                    && (s.policy, s.prio) == (policy, prio)
            });
            if restored.is_none() {
                self.fail(format!(
                    "no sample within 1 s after the boost's end shows the victim back at \
                     policy {policy} prio {prio}"
                ));
            }
            return;
        }
        self.check_boost(pid, &boosted, boosted_at, (policy, prio), wait_began);
    }

    /// The victim `pid`, waiting on `cpu` since `wait_began`, was reported in time and boosted
    /// at once: the boost's line and when the daemon wrote it, or `None` (and a failure).
    fn reported_and_boosted(
        &mut self,
        pid: i64,
        cpu: u32,
        wait_began: f64,
        moved: Option<f64>,
    ) -> Option<(String, f64)> {
        let starved = format!("victim-{pid} starved on CPU {cpu} for ");
        let boosted = format!("boosted pid {pid} (victim) (cpu {cpu}) using SCHED_DEADLINE");
        let Some(reported) = self.first_log(&starved) else {
            self.fail(format!("no {starved:?} line"));
            return None;
        };
        let Some(boosted_at) = self.first_log(&boosted) else {
            self.fail(format!("no {boosted:?} line"));
            return None;
        };
        // Timed by the kernel log's stamp where the line is there: the `log` record's comes
        // when the guest's shell gets to the line, up to 0.25 s later.
        let reported_k = self
            .records
            .iter()
            .find(|r| r.kind == "klog" && r.rest.starts_with(&starved))
            .map_or(reported, |r| r.t);
        self.check_timing(wait_began, moved, reported_k);
        if boosted_at - reported > 0.5 {
            self.fail(format!(
                "boosted {:.2} s after the report",
                boosted_at - reported
            ));
        }
        Some((boosted, boosted_at))
    }

    /// The daemon watches the isolated CPUs and runs on the others (its log and its affinity
    /// as the guest's kernel reports it), and each victim, starved at the same time as the
    /// other, is reported in time, boosted and restored.
    fn check_isolated(&mut self) {
        let lines = [
            format!("monitoring CPUs {ISOLATED_CPUS} ("),
            format!("running on CPUs {HOUSEKEEPING_CPUS} (not monitored)"),
        ];
        for line in lines {
            if self.first_log(&line).is_none() {
                self.fail(format!("no {line:?} line"));
            }
        }
        let allowed = self
            .mark("daemon_cpus", None)
            .and_then(|m| m.field("allowed"))
            .map(str::to_owned);
        if allowed.as_deref() != Some(HOUSEKEEPING_CPUS) {
            self.fail(format!(
                "the daemon's Cpus_allowed_list is {allowed:?}, want {HOUSEKEEPING_CPUS}"
            ));
        }
        let mut waits = Vec::new();
        for cpu in ISOLATED_VICTIM_CPUS {
            let on = cpu.to_string();
            let pid = self
                .mark("victim", Some(&on))
                .and_then(|v| v.integer("pid"));
            let wait_began = self.mark("hog", Some(&on)).and_then(|h| h.number("at"));
            let (Some(pid), Some(wait_began)) = (pid, wait_began) else {
                self.fail(format!("no victim or no hog on CPU {cpu}"));
                continue;
            };
            waits.push(wait_began);
            self.notes.push(format!("CPU {cpu}"));
            if let Some((boosted, boosted_at)) =
                self.reported_and_boosted(pid, cpu, wait_began, None)
            {
                self.check_boost(
                    pid,
                    &boosted,
                    boosted_at,
                    (POLICY_FIFO, PRIO_FIFO_1),
                    wait_began,
                );
            }
        }
        if let [first, second] = waits[..] {
            let apart = (second - first).abs();
            self.notes.push(format!("hogs {apart:.2} s apart"));
            if apart > TOGETHER_S {
                self.fail(format!(
                    "the hogs started {apart:.2} s apart: the CPUs did not starve at once"
                ));
            }
        }
    }

    /// Every kthread found on vCPU 1 that the daemon boosted was restored to its policy and
    /// priority, and at least one was boosted (the hog starves them all).
    fn check_kthreads(&mut self) {
        let kthreads: Vec<(i64, String)> = self
            .records
            .iter()
            .filter(|r| r.kind == "mark" && r.word() == "kthread")
            .filter_map(|r| Some((r.integer("pid")?, r.field("comm")?.to_owned())))
            .collect();
        if kthreads.is_empty() {
            return self.fail("no ktimers/1 or rcuc/1 in this kernel".into());
        }
        let mut boosted = Vec::new();
        for (pid, comm) in &kthreads {
            let boost = format!("boosted pid {pid} ({comm}) (cpu 1)");
            let Some(boosted_at) = self.first_log(&boost) else {
                continue;
            };
            let restored = format!("restored pid {pid} ({comm})");
            if !self
                .logs()
                .any(|r| r.t > boosted_at && r.rest.contains(&restored))
            {
                self.fail(format!("{comm} boosted, never restored"));
            }
            let label = format!("kthread_{comm}");
            let policies: Vec<(i64, i64)> = self
                .records
                .iter()
                .filter(|r| r.kind == "sched" && r.word() == label)
                .filter_map(|r| Some((r.integer("policy")?, r.integer("prio")?)))
                .collect();
            match (policies.first(), policies.last()) {
                (Some(before), Some(after)) if policies.len() >= 2 && before == after => {}
                _ => self.fail(format!("{comm}: policy/prio before and after {policies:?}")),
            }
            boosted.push(comm.clone());
        }
        if boosted.is_empty() {
            self.fail(format!("none of {kthreads:?} was boosted"));
        }
        self.notes.push(format!("boosted and restored {boosted:?}"));
    }

    /// A SCHED_OTHER victim where the DL-server serves it: never boosted, and it progresses.
    fn check_left_to_dl_server(&mut self) {
        let Some(pid) = self.mark("victim", None).and_then(|v| v.integer("pid")) else {
            return self.fail("no victim started".into());
        };
        let Some(wait_began) = self.mark("hog", Some("1")).and_then(|h| h.number("at")) else {
            return self.fail("no hog on CPU 1".into());
        };
        if let Some(at) = self.first_log(&format!("boosted pid {pid} (victim)")) {
            self.fail(format!(
                "the victim was boosted at {at:.2} although the DL-server serves it"
            ));
        }
        let samples: Vec<Sample> = self
            .samples()
            .into_iter()
            .filter(|s| s.t > wait_began + 0.1)
            .collect();
        match (samples.first(), samples.last()) {
            (Some(first), Some(last))
                if last.sum_exec_ms - first.sum_exec_ms >= MIN_BOOST_GAIN_MS =>
            {
                self.notes.push(format!(
                    "the DL-server gave it {:.1} ms in {:.1} s",
                    last.sum_exec_ms - first.sum_exec_ms,
                    last.t - first.t
                ));
            }
            _ => self.fail("the victim made no progress behind the hog".into()),
        }
    }

    /// The self-test's table says protection works, with a rescue by every backend that
    /// opens (all three: every guest kernel has BTF and debugfs).
    fn check_selftest(&mut self) {
        let status = self
            .mark("selftest", None)
            .and_then(|m| m.integer("status"));
        let table: Vec<String> = self.logs().map(|r| r.rest.clone()).collect();
        if status != Some(0) || !table.iter().any(|l| l.starts_with("result: OK")) {
            self.fail(format!("selftest exit status {status:?}: {table:?}"));
        }
        for backend in DEFAULT_BACKENDS {
            let row = format!("rescue {backend}");
            match table.iter().find(|l| l.trim_start().starts_with(&row)) {
                Some(l) if l.contains(" rescued ") && !l.contains("NOT") => {
                    let figure = l.split(" rescued ").nth(1).unwrap_or("");
                    let ms = figure.split(' ').next().unwrap_or("?");
                    self.notes.push(format!("{backend} {ms} ms"));
                }
                other => self.fail(format!("{row}: {other:?}")),
            }
        }
    }

    /// The daemon the initramfs started: stalld-early succeeded, it runs as `@stalld` (this
    /// initramfs has /etc/initrd-release) and, after switch_root, it said it followed PID 1.
    fn check_early(&mut self) {
        let Some(daemon) = self.mark("daemon", None).cloned() else {
            return;
        };
        if daemon.field("early_status") != Some("0") {
            self.fail(format!(
                "stalld-early exited {:?}",
                daemon.field("early_status")
            ));
        }
        if daemon.field("argv0") != Some("@") {
            self.fail(format!(
                "argv[0] of the early daemon starts with {:?}, want @",
                daemon.field("argv0")
            ));
        }
        if let Some(started) = daemon.field("started_at") {
            self.notes.push(format!("started at {started} s uptime"));
        }
        if self.scenario == Scenario::SwitchRoot {
            let Some(switched) = self.mark("switched", None).map(|r| r.t) else {
                return self.fail("the guest never switched root".into());
            };
            let followed = "PID 1 switched to a new root: stalld followed it";
            if !self
                .logs()
                .any(|r| r.t >= switched && r.rest.contains(followed))
            {
                self.fail(format!("no {followed:?} line after the switch"));
            }
        }
    }

    /// After switch_root, a second start of stalld (not `@stalld`) took over from the early
    /// daemon: the start succeeded once the early one had handed over and exited, RT throttling
    /// was off, and the new daemon boosted the second victim one threshold after its wait
    /// began (or, for a backend that dates waits from its first sighting, after it started).
    fn check_handover(&mut self) {
        let Some(second) = self.mark("second_daemon", None).cloned() else {
            return self.fail("stalld was not started a second time".into());
        };
        let Some(started) = self.mark("second_start", None).map(|r| r.t) else {
            return self.fail("no second_start mark".into());
        };
        // The early daemon may still be alive then, tearing its backend down after it handed
        // over (init.sh checks it is gone once the starved tasks are).
        if second.field("status") != Some("0") {
            self.fail(format!(
                "second start: exit status {:?}, want 0",
                second.field("status")
            ));
        }
        if second.field("rt_runtime_us") != Some("-1") {
            self.fail(format!(
                "RT throttling after the handover: sched_rt_runtime_us={:?}, want -1",
                second.field("rt_runtime_us")
            ));
        }
        let early = second.field("early_pid").unwrap_or("?");
        let took_over = format!("took over from the early stalld (pid {early}) in ");
        let Some(took_over_line) = self
            .logs()
            .find(|r| r.t >= started && r.rest.contains(&took_over))
            .map(|r| r.rest.clone())
        else {
            return self.fail(format!("no {took_over:?} line"));
        };
        if self
            .first_log("handed over: RT throttling left off for the stalld taking over")
            .is_none()
        {
            self.fail("the early daemon did not say it handed over".into());
        }
        let victim = self.mark("victim2", None).and_then(|r| r.integer("pid"));
        let wait_began = self.mark("hog2", None).and_then(|r| r.number("at"));
        let (Some(victim), Some(wait_began)) = (victim, wait_began) else {
            return self.fail("no second victim or hog".into());
        };
        let boosted = format!("boosted pid {victim} (victim) (cpu 1)");
        let Some(boosted_at) = self
            .records
            .iter()
            .find(|r| r.kind == "klog" && r.rest.contains(&boosted))
            .map(|r| r.t)
        else {
            return self.fail(format!("no {boosted:?} line in the kernel log"));
        };
        // Kernel-log stamps against uptime stamps, both from boot (`EARLY_SLACK_S` covers the
        // uptime's 10 ms steps and the hog's late note).
        let latency = boosted_at - wait_began;
        let dated_from = if dates_waits_exactly(self.backend) {
            wait_began
        } else {
            started + POLL_INTERVAL_S
        };
        let latest = dated_from - wait_began + THRESHOLD_S + MAX_LATENESS_S;
        if !(THRESHOLD_S - EARLY_SLACK_S..=latest).contains(&latency) {
            self.fail(format!(
                "after the handover the victim was boosted {latency:.2} s after its wait \
                 began, want {THRESHOLD_S}..{latest:.2} s"
            ));
        }
        let handover_ms = took_over_line
            .split(" in ")
            .nth(1)
            .unwrap_or("?")
            .trim_end_matches(" ms");
        self.notes.push(format!(
            "handover in {handover_ms} ms (early daemon still tearing down: {}), victim \
             boosted {latency:.2} s after its wait began (started {:.2} s before the handover)",
            second.field("early_alive").unwrap_or("?"),
            started - wait_began
        ));
    }

    /// The daemon started, chose the backend, turned RT throttling off, and exited cleanly
    /// restoring it. `false`: it never started, nothing else to judge.
    fn check_daemon(&mut self) -> bool {
        let end = self.records.last().filter(|r| r.kind == "end").cloned();
        let Some(end) = end else {
            self.fail("the scenario did not end".into());
            return false;
        };
        let Some(ready) = self.mark("daemon_ready", None).cloned() else {
            let said: Vec<&str> = self.logs().map(|r| r.rest.as_str()).collect();
            self.fail(format!(
                "the daemon did not start (exit status {}): {said:?}",
                end.field("daemon_exit").unwrap_or("?")
            ));
            return false;
        };
        let backend = format!("using {} backend", backend_log_name(self.backend));
        if self.first_log(&backend).is_none() {
            self.fail(format!("no {backend:?} line"));
        }
        if ready.field("rt_runtime_us") != Some("-1") {
            self.fail(format!(
                "RT throttling while the daemon ran: sched_rt_runtime_us={:?}, want -1",
                ready.field("rt_runtime_us")
            ));
        }
        // No lockdown in a guest: a SCHED_DEADLINE daemon turns HRTICK_DL on (the kernel then
        // ends each boost's runtime on time) and off again at exit (the kernel's default).
        if self.first_log("setting HRTICK_DL").is_none()
            || ready.field("hrtick_dl") != Some("HRTICK_DL")
        {
            self.fail(format!(
                "HRTICK_DL {:?} while the daemon ran, want it on, with a `setting HRTICK_DL` \
                 line",
                ready.field("hrtick_dl")
            ));
        }
        // The daemon started at boot is not the guest shell's child: it runs on after
        // early_boot, and is only seen gone after SIGTERM at the end of switch_root.
        let want_exit = match self.scenario {
            Scenario::EarlyBoot => return true,
            Scenario::SwitchRoot => "gone",
            _ => "0",
        };
        if end.field("hrtick_dl") != Some("NO_HRTICK_DL") {
            self.fail(format!(
                "HRTICK_DL {:?} after the daemon exited, want NO_HRTICK_DL (turned back off)",
                end.field("hrtick_dl")
            ));
        }
        if end.field("daemon_exit") != Some(want_exit) {
            self.fail(format!(
                "daemon exit status {:?} after SIGTERM, want {want_exit}",
                end.field("daemon_exit")
            ));
        }
        if end.field("rt_runtime_us") != Some(DEFAULT_RT_RUNTIME_US) {
            let by_init = self
                .mark("rt_restore", None)
                .and_then(|r| r.field("by_init"))
                .unwrap_or("?");
            self.fail(format!(
                "sched_rt_runtime_us={:?} after the daemon exited, want \
                 {DEFAULT_RT_RUNTIME_US} (writing it back from the guest's init: {by_init})",
                end.field("rt_runtime_us")
            ));
        }
        true
    }

    /// The victim really moved, and nothing was said about it on CPU 1 afterwards.
    fn check_migration(&mut self, pid: i64, moved: f64) {
        if self.mark("hog", Some("2")).is_none() {
            self.fail("no hog on CPU 2".into());
        }
        match self.samples().iter().find(|s| s.t > moved) {
            Some(s) if s.cpu == 2 => {}
            other => self.fail(format!(
                "after the move the victim is on {other:?}, want CPU 2"
            )),
        }
        // Judged on the kernel log's stamps, where the daemon's lines and the guest's mark
        // written right after the move are in one ordered stream. (The `log` records are
        // stamped when the guest's shell reads a line, up to 0.2 s late: a CI run saw a line
        // written before the move stamped 0.20 s after it.) The first pass that logs after
        // the mark may have sampled before the move; every pass after it sampled after it.
        let klog: Vec<&Record> = self.records.iter().filter(|r| r.kind == "klog").collect();
        let Some(moved_k) = klog
            .iter()
            .find(|r| r.rest.starts_with(&format!("stalld_vm: moved pid={pid} ")))
            .map(|r| r.t)
        else {
            return self.fail("no move mark in the kernel log".into());
        };
        let Some(sampled_after) = klog
            .iter()
            .filter(|r| r.t >= moved_k && r.rest.starts_with("checking cpu 1 "))
            .nth(1)
            .map(|r| r.t)
        else {
            return self.fail("no pass over CPU 1 after the move in the kernel log".into());
        };
        let victim = [format!("victim-{pid} "), format!("pid {pid} (victim)")];
        let stale: Vec<String> = klog
            .iter()
            .filter(|r| r.t >= sampled_after)
            .filter(|r| victim.iter().any(|v| r.rest.contains(v.as_str())))
            .filter(|r| mentions_cpu(&r.rest, 1))
            .map(|r| format!("{:.3} {}", r.t, r.rest))
            .collect();
        if !stale.is_empty() {
            self.fail(format!(
                "lines about the victim on CPU 1 after it moved: {stale:?}"
            ));
        }
    }

    fn check_timing(&mut self, wait_began: f64, moved: Option<f64>, reported: f64) {
        let latency = reported - wait_began;
        let mut note = format!("reported {latency:.2} s after the wait began");
        if latency < THRESHOLD_S - EARLY_SLACK_S {
            self.fail(format!(
                "reported {latency:.2} s after the wait began: before the {THRESHOLD_S} s threshold"
            ));
        }
        if let Some(moved) = moved {
            let _ = write!(note, ", {:.2} s after the move", reported - moved);
        }
        let latest = if dates_waits_exactly(self.backend) {
            THRESHOLD_S
        } else {
            THRESHOLD_S + 2.0 * POLL_INTERVAL_S
        };
        if latency > latest + MAX_LATENESS_S {
            self.fail(format!(
                "reported {latency:.2} s after the wait began, want at most {:.2} s",
                latest + MAX_LATENESS_S
            ));
        }
        self.notes.push(note);
    }

    /// Starved before the boost, progress during it, then restored and starved again.
    fn check_boost(
        &mut self,
        pid: i64,
        boosted: &str,
        boosted_at: f64,
        (policy, prio): (i64, i64),
        wait_began: f64,
    ) {
        let restored = format!("restored pid {pid} (victim)");
        let restored_at = self
            .logs()
            .find(|r| r.t >= boosted_at && r.rest.contains(&restored))
            .map(|r| r.t);
        // The kernel log's stamp of the restore line: written right after the restore.
        let restored_k = self
            .records
            .iter()
            .filter(|r| r.kind == "klog" && r.t >= boosted_at - 0.5)
            .find(|r| r.rest.contains(&restored))
            .map(|r| r.t);
        let samples: Vec<Sample> = self
            .samples()
            .into_iter()
            .filter(|s| s.pid == pid)
            .collect();
        // Up to the boost line, but a line is stamped when the guest's shell gets to it, up
        // to 0.2 s after the boost: a sample that already shows the boost's policy is after it.
        let before: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.t > wait_began + 0.1 && s.t < boosted_at)
            .filter(|s| (s.policy, s.prio) == (policy, prio))
            .collect();
        match (before.first(), before.last()) {
            (Some(first), Some(last)) if before.len() >= 3 => {
                let gain = last.sum_exec_ms - first.sum_exec_ms;
                if gain > MAX_STARVED_GAIN_MS {
                    self.fail(format!(
                        "the victim ran {gain:.3} ms while it should starve"
                    ));
                }
            }
            _ => self.fail(format!("only {} samples before the boost", before.len())),
        }
        let Some(restored_at) = restored_at else {
            return self.fail("the victim was never restored".into());
        };
        // Timed by the kernel log's stamps: the `log` records' are taken when the guest's
        // shell gets to a line, which lagged by up to 0.2 s (a fresh-clone CI run measured
        // 0.80-0.90 s for this 1 s boost that way).
        let Some(boost_len) = self.kernel_logged_boost(boosted) else {
            return;
        };
        if !(BOOST_S - self.arch.boost_log_slack_s()..=BOOST_S + 0.5).contains(&boost_len) {
            self.fail(format!(
                "the boost lasted {boost_len:.3} s by the kernel log, want {BOOST_S} s"
            ));
        }
        let start = before.last().map_or(0.0, |s| s.sum_exec_ms);
        // The victim is never SCHED_DEADLINE but boosted: a sample showing it so after the
        // first boost began proves a boost took effect. Any of its boosts counts: the guest's
        // shell once sampled nothing for 1.7 s, the whole of a 1 s boost.
        if !samples
            .iter()
            .any(|s| s.t > boosted_at && s.policy == POLICY_DEADLINE)
        {
            self.fail("no sample shows the victim in SCHED_DEADLINE during its boosts".into());
        }
        // A sample is stamped after it read /proc: one stamped before the next boost line
        // read nothing of that boost. The kernel log's stamp of that line comes first when
        // this shell gets to the daemon's lines late.
        let next_boost = self
            .records
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "log" | "klog"))
            .filter(|r| r.t > restored_at && r.rest.contains(boosted))
            .map(|r| r.t)
            .fold(f64::MAX, f64::min);
        // Read after the restore: by the kernel log's stamp where there is one (a sample read
        // just before the restore was once stamped 0.18 s after its log line, showing the
        // boost's policy "after" it), in /proc/uptime's clock, which the samples' `read` is;
        // else a little after the log record's.
        let read_after =
            restored_k.map_or(restored_at + 0.1, |k| k + self.uptime_ahead_of_klog_max());
        let after: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.read > read_after && s.t < next_boost)
            .collect();
        let Some(first_after) = after.first() else {
            return self.fail("no sample after the restore".into());
        };
        let gain = first_after.sum_exec_ms - start;
        if gain < MIN_BOOST_GAIN_MS {
            self.fail(format!("the victim gained {gain:.3} ms from its boost"));
        }
        for s in &after {
            if (s.policy, s.prio) != (policy, prio) {
                self.fail(format!(
                    "after the restore: policy {} prio {} at {:.2}, want {policy} / {prio}",
                    s.policy, s.prio, s.t
                ));
                break;
            }
        }
        let last = after.last().expect("after is not empty");
        let gain_after = last.sum_exec_ms - first_after.sum_exec_ms;
        if after.len() < 2 || gain_after > MAX_STARVED_GAIN_MS {
            self.fail(format!(
                "after the restore the victim ran {gain_after:.3} ms in {} samples; want it \
                 starved again",
                after.len()
            ));
        }
        self.notes.push(format!(
            "boosted for {boost_len:.2} s, victim +{gain:.1} ms"
        ));
    }
}

impl Check<'_> {
    /// The first boost matching `boosted` and the restore after it, as the kernel stamped
    /// them in its log: how long the boost lasted, or `None` (and a failure) without them.
    fn kernel_logged_boost(&mut self, boosted: &str) -> Option<f64> {
        let pid_words = boosted
            .strip_prefix("boosted ")
            .and_then(|rest| rest.split(" (cpu").next())
            .unwrap_or(boosted);
        let restored = format!("restored {pid_words}");
        let klog = |pattern: &str, after: f64| {
            self.records
                .iter()
                .filter(|r| r.kind == "klog" && r.t >= after)
                .find(|r| r.rest.contains(pattern))
                .map(|r| r.t)
        };
        let Some(boosted_at) = klog(boosted, 0.0) else {
            self.fail(format!("no {boosted:?} line in the kernel log"));
            return None;
        };
        let Some(restored_at) = klog(&restored, boosted_at) else {
            self.fail(format!(
                "no {restored:?} line in the kernel log after the boost"
            ));
            return None;
        };
        Some(restored_at - boosted_at)
    }
}

/// Does a daemon line name `cpu`: `CPU 1 `, `CPU 1:`, `(cpu 1)`, at the end?
fn mentions_cpu(line: &str, cpu: u32) -> bool {
    ["CPU ", "cpu "].iter().any(|label| {
        let needle = format!("{label}{cpu}");
        line.match_indices(&needle).any(|(at, _)| {
            !line[at + needle.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    })
}

#[test]
fn parses_guest_records() {
    let records = parse_records(
        "2.14 boot kernel=6.1.0-56-amd64 btf=1\r\n12.35 log victim-120 starved on CPU 2 for 3 \
         seconds\r\ngarbage\n3.5 done\n",
    );
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].field("kernel"), Some("6.1.0-56-amd64"));
    assert_eq!(records[1].kind, "log");
    assert_eq!(records[1].rest, "victim-120 starved on CPU 2 for 3 seconds");
    assert_eq!(records[2].kind, "done");
}

#[test]
fn finds_the_image_package_and_libraries() {
    assert_eq!(
        guest::image_package("linux-image-6.1.0-56-amd64 (= 6.1.192-2)"),
        Some("linux-image-6.1.0-56-amd64")
    );
    assert_eq!(
        guest::image_package(
            "initramfs-tools | linux-initramfs-tool, linux-image-6.12.117+deb12-rt-amd64"
        ),
        Some("linux-image-6.12.117+deb12-rt-amd64")
    );
    let ldd = "\tlinux-vdso.so.1 (0x00007ff)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 \
               (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
    assert_eq!(
        guest::shared_libraries(ldd),
        [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
    );
    assert!(guest::shared_libraries("\tnot a dynamic executable\n").is_empty());
}

#[test]
fn tells_cpu_1_from_cpu_12() {
    assert!(mentions_cpu("victim-5 starved on CPU 1 for 3 seconds", 1));
    assert!(mentions_cpu(
        "boosted pid 5 (victim) (cpu 1) using SCHED_DEADLINE",
        1
    ));
    assert!(mentions_cpu(
        "Ignoring the thread victim from consideration for boosting (pid 5, CPU 1: thread name \
         matches -i)",
        1
    ));
    assert!(!mentions_cpu("victim-5 starved on CPU 12 for 3 seconds", 1));
    assert!(!mentions_cpu("victim-5 starved on CPU 2 for 3 seconds", 1));
}
