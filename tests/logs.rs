//! Logs that survive a hang, on the real kernel (root): `-k` lines in the kernel log and a
//! burst of identical lines coalesced there; the ring file holding a real rescue, dumped while
//! the daemon runs and after it was SIGKILLed; `-v` with a stderr pipe nobody reads still
//! rescues. Non-root runs check only `--dump_ring`'s refusals.
//!
//! The kmsg burst is made through the library (`Logger` on the real `/dev/kmsg`), not through
//! the daemon: the burst needs 1,000 identical lines at once, which the daemon never writes,
//! and a hidden option or feature only for this would ship test code in the binary.

mod common;

use common::*;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stalld::log::{Log, LogSinks, Logger};

const STALLD: &str = env!("CARGO_BIN_EXE_stalld");
/// -t 3, -d 1, and boost parameters that make the victim progress measurably.
const RESCUE_ARGS: [&str; 11] = [
    "-f",
    "-c",
    "1",
    "-t",
    "3",
    "-d",
    "1",
    "-r",
    "1000000",
    "-p",
    "200000000",
];
/// Long enough for the threshold, a late first sighting (sched_debug/procfs) and the boost.
const SCENARIO_LIFETIME: Duration = Duration::from_secs(12);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stalld-logs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `stalld --dump_ring PATH`: exit code, stdout, stderr.
fn dump_ring(path: &Path) -> (i32, String, String) {
    let out = Command::new(STALLD)
        .arg("--dump_ring")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dump_ring_refuses_missing_and_foreign_files() {
    let dir = temp_dir("refuse");
    let (code, out, err) = dump_ring(&dir.join("missing"));
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("cannot read") && err.contains("missing"),
        "{err}"
    );
    std::fs::write(dir.join("text"), "hello\n".repeat(10_000)).unwrap();
    let (code, _, err) = dump_ring(&dir.join("text"));
    assert_eq!(code, 1);
    assert!(err.contains("not a stalld ring file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether user-space lines reach the kernel log here (`printk_devkmsg` not `off`).
fn kmsg_usable(test: &str) -> bool {
    let setting = std::fs::read_to_string("/proc/sys/kernel/printk_devkmsg").unwrap_or_default();
    let usable = is_root() && setting.trim() != "off" && Path::new("/dev/kmsg").exists();
    if !usable {
        eprintln!("SKIPPED {test}: needs root and /dev/kmsg with printk_devkmsg not off");
    }
    usable
}

/// Every kernel log record still in the buffer: (sequence number, text).
fn kmsg_records() -> Vec<(u64, String)> {
    let fd = rustix::fs::open(
        "/dev/kmsg",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut records = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) | Err(rustix::io::Errno::AGAIN) => break,
            // EPIPE: records were overwritten while reading; the next read goes on.
            Err(rustix::io::Errno::PIPE) => continue,
            Err(e) => panic!("read /dev/kmsg: {e}"),
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                let (head, text) = record.split_once(';').unwrap_or(("", ""));
                let seq = head.split(',').nth(1).and_then(|s| s.parse().ok());
                let text = text.lines().next().unwrap_or("").to_owned();
                records.push((seq.unwrap_or(0), text));
            }
        }
    }
    records
}

fn kmsg_lines_after(seq: u64, containing: &str) -> Vec<String> {
    kmsg_records()
        .into_iter()
        .filter(|(s, text)| *s > seq && text.contains(containing))
        .map(|(_, text)| text)
        .collect()
}

fn last_kmsg_seq() -> u64 {
    kmsg_records().last().map_or(0, |r| r.0)
}

#[test]
fn kmsg_burst_of_identical_lines_is_coalesced() {
    if !kmsg_usable("kmsg_burst_of_identical_lines_is_coalesced") {
        return;
    }
    let token = format!("burst-{}-{:?}", std::process::id(), Instant::now());
    let before = last_kmsg_seq();
    let sinks = LogSinks {
        kmsg: true,
        ..LogSinks::default()
    };
    let mut logger = Logger::open_with_paths(sinks, Path::new("/dev/kmsg"), Path::new("/x"));
    for _ in 0..1000 {
        logger.info(format_args!("same line {token}"));
    }
    logger.info(format_args!("end of {token}"));
    drop(logger);
    let lines = kmsg_lines_after(before, &token);
    assert_eq!(
        lines,
        [
            format!("stalld: same line {token}"),
            format!("stalld: same line {token} (repeated 999 times)"),
            format!("stalld: end of {token}"),
        ]
    );
}

#[test]
fn kmsg_gets_the_daemon_lines() {
    let Some(_env) = e2e_begin("kmsg_gets_the_daemon_lines") else {
        return;
    };
    if !kmsg_usable("kmsg_gets_the_daemon_lines") {
        return;
    }
    let before = last_kmsg_seq();
    let mut daemon = Daemon::spawn(&["-f", "-k", "-l", "-c", "1", "--log_ring", "none"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        lines = kmsg_lines_after(before, "stalld: ");
        if lines
            .iter()
            .any(|l| l.starts_with("stalld: monitoring CPUs 1"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stalld: using ") && l.ends_with(" backend")),
        "{lines:?}\n{}",
        daemon.transcript()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stalld: monitoring CPUs 1")),
        "{lines:?}"
    );
    assert!(daemon.terminate(Duration::from_secs(3)).is_some());
}

/// Waits for the victim to be boosted and then restored; panics with `context` otherwise.
fn expect_rescue(scenario: &Scenario, context: &dyn Fn() -> String) {
    let victim = scenario.victim.pid;
    let boosted = Instant::now() + Duration::from_secs(10);
    while policy_of(victim).map(|p| p.policy).ok() != Some(SCHED_DEADLINE) {
        assert!(
            Instant::now() < boosted,
            "victim never boosted\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let restored = wait_for_policy(
        victim,
        Policy::fifo(VICTIM_PRIORITY),
        Duration::from_secs(3),
    );
    assert!(restored.is_ok(), "victim not restored\n{}", context());
    assert!(
        scenario.victim_gain_ns() > 0,
        "victim never ran\n{}",
        context()
    );
}

fn assert_dump_has_rescue(path: &Path, victim: libc::pid_t) {
    let (code, out, err) = dump_ring(path);
    assert_eq!(code, 0, "{err}");
    let starved = format!("{VICTIM_NAME}-{victim} starved on CPU 1 for");
    let boosted = format!("boosted pid {victim} ({VICTIM_NAME}) (cpu 1) using SCHED_DEADLINE");
    let at = |pattern: &str| {
        out.lines()
            .position(|l| l.contains(pattern))
            .unwrap_or_else(|| panic!("{pattern:?} not in the ring:\n{out}"))
    };
    assert!(at(&starved) < at(&boosted), "{out}");
    assert!(out.lines().next().unwrap_or("").starts_with("#0 "), "{out}");
}

/// Waits until the daemon logged its last startup line to the ring at `path`.
fn wait_until_monitoring(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, err) = dump_ring(path);
        if out.contains("monitoring CPUs 1") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no startup in the ring: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ring_holds_a_rescue_also_after_sigkill() {
    let Some(env) = e2e_begin("ring_holds_a_rescue_also_after_sigkill") else {
        return;
    };
    let dir = temp_dir("rescue");
    let ring = dir.join("stalld.ring");
    let ring_arg = ring.to_str().unwrap();
    let mut args = RESCUE_ARGS.to_vec();
    args.extend(["--log_ring", ring_arg]);
    let mut daemon = Daemon::spawn(&args);
    wait_until_monitoring(&ring);
    let scenario = Scenario::start(SCENARIO_LIFETIME, SCENARIO_LIFETIME);
    expect_rescue(&scenario, &|| dump_ring(&ring).1);
    assert_dump_has_rescue(&ring, scenario.victim.pid);

    // SAFETY: the pid is our own unreaped child.
    unsafe { libc::kill(daemon.pid(), libc::SIGKILL) };
    assert!(daemon.wait_exit(Duration::from_secs(3)).is_some());
    assert_dump_has_rescue(&ring, scenario.victim.pid);
    drop(scenario);
    // A SIGKILLed daemon leaves RT throttling off: put it back as it was.
    write_rt_runtime_us(env.rt_runtime.saved).unwrap();
    assert_eq!(read_rt_runtime_us().unwrap(), env.rt_runtime.saved);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child whose stderr is a pipe that nobody reads; killed and reaped on drop.
struct MutedDaemon {
    child: std::process::Child,
}

impl Drop for MutedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn verbose_with_a_full_stderr_pipe_still_rescues() {
    let Some(_env) = e2e_begin("verbose_with_a_full_stderr_pipe_still_rescues") else {
        return;
    };
    let dir = temp_dir("pipe");
    let ring = dir.join("stalld.ring");
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors, owned below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new and owned by nothing else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Fill the pipe first, through a nonblocking moment of the shared description, then give
    // the daemon a blocking, full pipe: any blocking write of its would hang there.
    let flags = rustix::fs::fcntl_getfl(&writer).unwrap();
    rustix::fs::fcntl_setfl(&writer, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
    while rustix::io::write(&writer, &[b'.'; 4096]).is_ok() {}
    rustix::fs::fcntl_setfl(&writer, flags).unwrap();

    let mut args = RESCUE_ARGS.to_vec();
    args.extend(["-v", "--log_ring", ring.to_str().unwrap()]);
    let mut daemon = MutedDaemon {
        child: Command::new(STALLD)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(writer))
            .spawn()
            .unwrap(),
    };
    let pid = i32::try_from(daemon.child.id()).unwrap();
    wait_until_monitoring(&ring);
    let scenario = Scenario::start(SCENARIO_LIFETIME, SCENARIO_LIFETIME);
    expect_rescue(&scenario, &|| dump_ring(&ring).1);
    assert_dump_has_rescue(&ring, scenario.victim.pid);
    drop(scenario);

    // Make room: the next line goes through, followed by the count of the lost ones.
    let mut reader = std::fs::File::from(reader);
    let mut sink = vec![0u8; 1 << 16];
    let flags = rustix::fs::fcntl_getfl(&reader).unwrap();
    rustix::fs::fcntl_setfl(&reader, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
    while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
    rustix::fs::fcntl_setfl(&reader, flags).unwrap();
    // SAFETY: the pid is our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("lines dropped (stderr was full)"),
        "{rest}\n{}",
        dump_ring(&ring).1
    );
    assert!(
        rest.contains("stalld: RT Throttling runtime restored"),
        "{rest}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
