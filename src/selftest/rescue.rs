//! One real rescue: a stalld child process with one backend watches `cpu`, boosting and
//! scheduling itself as the command line says ([`child_options`]); a child of ours
//! at SCHED_FIFO 1 spins there, another at SCHED_FIFO 50 takes the CPU from it for a bounded
//! time, and the victim must run again, boosted, before the hog ends, then be restored. The
//! self-test stays single-threaded (children are forked, not threads): std's thread machinery
//! would cost the static binary about 20 KB.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};

use crate::backend::BackendKind;
use crate::config::Config;
use crate::sys::process;
use crate::sys::sched::{self, SchedAttr, SCHED_FIFO};
use crate::sys::throttling::RtThrottling;

/// The child's `-t`: short, so that the test is quick, and long enough for every backend's
/// pass interval.
pub const THRESHOLD: Duration = Duration::from_secs(3);
/// The child's shortest `-d`; longer when the boost's `-p` is (a boost lasts one period at
/// least).
const SHORTEST_BOOST: Duration = Duration::from_secs(1);
/// How long the hog holds the CPU after the threshold, besides the boost: time for a poll
/// backend's late pass (two passes of 1.5 s at most).
const HOG_TIME_PAST_THRESHOLD: Duration = Duration::from_secs(3);
/// How late a restore may come after its boost's end: a poll backend's pass under QEMU's
/// emulation takes up to 0.2 s, and the loop may be busy with another boost.
const RESTORE_SLACK: Duration = Duration::from_millis(1500);
/// The victim's priority and the hog's.
const VICTIM_PRIORITY: u32 = 1;
const HOG_PRIORITY: u32 = 50;
/// How long the child may take to arm its backend (the BPF one loads in seconds under QEMU's
/// emulation).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the child may take to restore and exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The log line that says the child's monitor is armed.
const READY_LINE: &str = "monitoring CPUs";

/// What one rescue showed.
pub struct Outcome {
    /// How long the victim did not run once the hog took its CPU.
    pub starved_for: Duration,
    /// When the daemon's `boosted pid <victim>` line was read, after the hog started (10 ms
    /// late at most, plus the daemon's own logging).
    pub boosted_after: Option<Duration>,
    /// The victim ran again before the hog ended: the daemon boosted it.
    pub rescued: bool,
    /// The victim was back at SCHED_FIFO 1 after the boost.
    pub restored: bool,
    /// The child's exit code after SIGTERM (`None`: killed, or no status).
    pub exit_code: Option<i32>,
    /// RT throttling was back to its value from before the child started.
    pub throttling_restored: bool,
}

impl Outcome {
    /// Everything a working stalld does happened.
    pub fn protected(&self) -> bool {
        self.rescued && self.restored && self.exit_code == Some(0) && self.throttling_restored
    }
}

/// The child's `-d`: `SHORTEST_BOOST`, or the boost period rounded up to whole seconds.
fn boost_duration(config: &Config) -> Duration {
    let period_s = config.boost_period_ns.div_ceil(1_000_000_000);
    SHORTEST_BOOST.max(Duration::from_secs(period_s))
}

/// The stalld child's options besides `-f -v -b NAME -c CPU --log_ring none`: the test's
/// threshold and boost duration, then the boost and the daemon's own scheduling as `config`
/// has them, so that the test proves the settings it is given.
pub fn child_options(config: &Config) -> Vec<String> {
    let mut options: Vec<String> = [
        "-t",
        &THRESHOLD.as_secs().to_string(),
        "-d",
        &boost_duration(config).as_secs().to_string(),
        "-r",
        &config.boost_runtime_ns.to_string(),
        "-p",
        &config.boost_period_ns.to_string(),
        "--self_sched",
        config.self_sched.name(),
        "--self_runtime",
        &config.self_runtime_ns.to_string(),
        "--self_period",
        &config.self_period_ns.to_string(),
    ]
    .map(str::to_owned)
    .into();
    if config.force_fifo {
        options.push("-F".to_owned());
    }
    if let Some(percent) = config.reservation_percent {
        options.extend(["-R".to_owned(), percent.to_string()]);
    }
    if let Some(cpus) = &config.affinity {
        options.extend(["-a".to_owned(), cpus.to_string()]);
    }
    options
}

/// Starves a thread on `cpu` under a stalld child using `backend` and `config`'s boost and
/// self-scheduling options; an error says why the test itself could not run (and what the
/// child said).
pub fn rescue(backend: BackendKind, cpu: u32, config: &Config) -> Result<Outcome, String> {
    let throttling = RtThrottling::default();
    let throttling_before = throttling.read().map_err(|e| e.to_string())?;
    let boost = boost_duration(config);
    let mut daemon = Daemon::start(backend, cpu, &child_options(config))?;
    daemon.wait_ready()?;

    let hog_time = THRESHOLD + HOG_TIME_PAST_THRESHOLD + boost;
    let victim = Victim::start(cpu, hog_time + boost)?;
    // Let the victim settle on its CPU as SCHED_FIFO 1 before the hog arrives.
    thread::sleep(Duration::from_millis(200));
    let hog_started = Instant::now();
    let hog_until_ns = process::monotonic_ns() + duration_ns(hog_time);
    // SAFETY: the self-test is single-threaded (its children are processes).
    let hog = unsafe { process::fork_with(|| hog(cpu, hog_until_ns)) }
        .map_err(|e| format!("cannot fork the hog: {e}"))?;
    let hog = Reaped::new(hog);
    let boost_line = format!("boosted pid {} ", victim.child.pid.as_raw_nonzero());
    let mut boosted_at = None;
    let hog_code = loop {
        if let Some(code) = hog.try_exit_code() {
            break code;
        }
        thread::sleep(Duration::from_millis(10));
        if boosted_at.is_none() && daemon.read_stderr_for(&boost_line) {
            boosted_at = Some(Instant::now());
        }
    };
    let hog_ended = Instant::now();
    // A second boost may have begun just before the hog ended (a victim starved again after
    // its restore is boosted one threshold later): give it time to end.
    let restored = wait_restored(victim.child.pid, hog_ended + boost + RESTORE_SLACK);
    let first_starvation = victim.result();
    let exit_code = daemon.stop();
    if hog_code != Some(0) {
        let why = hog_code.map_or("killed".to_owned(), |code| {
            rustix::io::Errno::from_raw_os_error(code).to_string()
        });
        return Err(format!(
            "cannot run the SCHED_FIFO {HOG_PRIORITY} hog: {why}"
        ));
    }
    // No starvation at all: the hog never took the CPU, and the test proves nothing.
    let gap = first_starvation?.ok_or(format!(
        "the victim was never starved: the SCHED_FIFO {HOG_PRIORITY} hog did not take CPU {cpu}"
    ))?;

    let throttling_after = throttling.read().map_err(|e| e.to_string())?;
    let hog_ended_ns = process::monotonic_ns() - duration_ns(hog_ended.elapsed());
    Ok(Outcome {
        starved_for: Duration::from_nanos(gap.length_ns),
        boosted_after: boosted_at.map(|at| at.saturating_duration_since(hog_started)),
        rescued: gap.ended_ns < hog_ended_ns,
        restored,
        exit_code,
        throttling_restored: throttling_after == throttling_before,
    })
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the victim is back at SCHED_FIFO 1 by `deadline`.
fn wait_restored(victim: Pid, deadline: Instant) -> bool {
    loop {
        let restored = sched::sched_getattr(victim.as_raw_nonzero().get()).is_ok_and(|attr| {
            attr.sched_policy == SCHED_FIFO && attr.sched_priority == VICTIM_PRIORITY
        });
        if restored || Instant::now() >= deadline {
            return restored;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A stalld child with one backend on one CPU; its stderr is a nonblocking pipe.
struct Daemon {
    child: Reaped,
    stderr: OwnedFd,
    said: Vec<u8>,
}

impl Daemon {
    fn start(backend: BackendKind, cpu: u32, options: &[String]) -> Result<Daemon, String> {
        let fixed = [
            "stalld",
            "-f",
            "-v",
            "-b",
            backend.name(),
            "-c",
            &cpu.to_string(),
            "--log_ring",
            "none",
        ]
        .map(str::to_owned);
        let argv = fixed
            .into_iter()
            .chain(options.iter().cloned())
            .map(|text| CString::new(text).map_err(|e| e.to_string()))
            .collect::<Result<Vec<CString>, String>>()?;
        let argv: Vec<&CStr> = argv.iter().map(CString::as_c_str).collect();
        let (read_end, write_end) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        let pid = process::spawn_self(&argv, write_end.as_fd())
            .map_err(|e| format!("cannot start stalld: {e}"))?;
        Ok(Daemon {
            child: Reaped::new(pid),
            stderr: read_end,
            said: Vec::new(),
        })
    }

    /// Waits for the line that says the monitor is armed.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.read_stderr_for(READY_LINE) {
                return Ok(());
            }
            if let Some(code) = self.child.try_exit_code() {
                return Err(self.failure(&format!("exited with {code:?} during startup")));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(self.failure("did not start within 60 s"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads what the child wrote since; whether the new text holds `pattern`.
    fn read_stderr_for(&mut self, pattern: &str) -> bool {
        let seen = self.said.len().saturating_sub(pattern.len());
        self.read_stderr();
        self.said[seen..]
            .windows(pattern.len())
            .any(|window| window == pattern.as_bytes())
    }

    /// Appends what the child wrote so far.
    fn read_stderr(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = rustix::io::read(&self.stderr, &mut chunk) {
            self.said.extend_from_slice(&chunk[..n]);
        }
    }

    /// SIGTERM, then the exit code; SIGKILL if it does not exit in time.
    fn stop(&mut self) -> Option<i32> {
        let _ = kill_process(self.child.pid, Signal::TERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(code) = self.child.try_exit_code() {
                return code;
            }
            if Instant::now() >= deadline {
                self.child.kill();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `what` with the child's last log lines.
    fn failure(&mut self, what: &str) -> String {
        self.read_stderr();
        let text = String::from_utf8_lossy(&self.said);
        let lines: Vec<&str> = text.lines().collect();
        let last = lines.len().saturating_sub(5);
        format!("stalld {what}; it said: {}", lines[last..].join(" | "))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_exit_code().is_none() {
            self.stop();
        }
    }
}

/// The victim's first starvation: how long it did not run, and when it ran again (monotonic
/// clock, ns).
struct Gap {
    length_ns: u64,
    ended_ns: u64,
}

/// A pause of the spinning victim at least this long is its starvation, not scheduling noise
/// (an interrupt, or a vCPU that QEMU's emulation runs in turn): far below the threshold.
const STARVED_GAP_NS: u64 = 500_000_000;

/// A child process that is SIGKILLed and reaped when dropped, unless it was reaped before.
struct Reaped {
    pid: Pid,
    exited: core::cell::Cell<Option<Option<i32>>>,
}

impl Reaped {
    fn new(pid: Pid) -> Self {
        Reaped {
            pid,
            exited: core::cell::Cell::new(None),
        }
    }

    /// Its exit code once it exited (`Some(None)`: killed by a signal); never blocks.
    fn try_exit_code(&self) -> Option<Option<i32>> {
        if self.exited.get().is_none() {
            if let Ok(Some((_, status))) = waitpid(Some(self.pid), WaitOptions::NOHANG) {
                self.exited.set(Some(status.exit_status()));
            }
        }
        self.exited.get()
    }

    /// SIGKILL, then reaped, unless it exited already.
    fn kill(&self) {
        if self.try_exit_code().is_none() {
            let _ = kill_process(self.pid, Signal::KILL);
            let _ = waitpid(Some(self.pid), WaitOptions::empty());
            self.exited.set(Some(None));
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A SCHED_FIFO 1 child spinning on the CPU under test, timing its first starvation; it ends
/// by itself (`lifetime` and a margin) and writes what it saw to a pipe.
struct Victim {
    child: Reaped,
    report: OwnedFd,
}

impl Victim {
    fn start(cpu: u32, lifetime: Duration) -> Result<Victim, String> {
        let (report, write_end) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))?;
        let until_ns = process::monotonic_ns()
            + duration_ns(lifetime + RESTORE_SLACK + Duration::from_secs(1));
        let body = move || {
            if let Err(e) = into_class(cpu, SchedAttr::fifo(VICTIM_PRIORITY)) {
                return e.raw_os_error();
            }
            let mut last = process::monotonic_ns();
            let mut first = [0u8; 16];
            while last < until_ns {
                let now = process::monotonic_ns();
                if first == [0; 16] && now - last >= STARVED_GAP_NS {
                    first[..8].copy_from_slice(&(now - last).to_ne_bytes());
                    first[8..].copy_from_slice(&now.to_ne_bytes());
                }
                last = now;
            }
            match rustix::io::write(&write_end, &first) {
                Ok(16) => 0,
                _ => 1,
            }
        };
        // SAFETY: the self-test is single-threaded (its children are processes).
        let pid = unsafe { process::fork_with(body) }
            .map_err(|e| format!("cannot fork the victim: {e}"))?;
        let victim = Victim {
            child: Reaped::new(pid),
            report,
        };
        // Up to the moment it is SCHED_FIFO 1 on its CPU, or gone.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Some(code) = victim.child.try_exit_code() {
                let why = code.map_or("killed".to_owned(), |code| {
                    rustix::io::Errno::from_raw_os_error(code).to_string()
                });
                return Err(format!("cannot run the SCHED_FIFO 1 victim: {why}"));
            }
            if wait_restored(pid, Instant::now()) {
                return Ok(victim);
            }
            thread::sleep(Duration::from_millis(5));
        }
        Err("the victim did not become SCHED_FIFO 1 within 1 s".to_owned())
    }

    /// Waits for the victim to end by itself; its first starvation, if it had one.
    fn result(self) -> Result<Option<Gap>, String> {
        let mut report = [0u8; 16];
        match rustix::io::read(&self.report, &mut report) {
            Ok(16) => {}
            _ => return Err("the victim ended without a report".to_owned()),
        }
        let _ = waitpid(Some(self.child.pid), WaitOptions::empty());
        self.child.exited.set(Some(Some(0)));
        let length_ns = u64::from_ne_bytes(report[..8].try_into().unwrap_or_default());
        let ended_ns = u64::from_ne_bytes(report[8..].try_into().unwrap_or_default());
        Ok((length_ns > 0).then_some(Gap {
            length_ns,
            ended_ns,
        }))
    }
}

/// Spins at SCHED_FIFO 50 on `cpu` until the monotonic clock reads `until_ns`; the exit code
/// is 0, or the errno that refused it.
fn hog(cpu: u32, until_ns: u64) -> i32 {
    if let Err(e) = into_class(cpu, SchedAttr::fifo(HOG_PRIORITY)) {
        return e.raw_os_error();
    }
    while process::monotonic_ns() < until_ns {
        core::hint::spin_loop();
    }
    0
}

/// Puts the calling thread into the scheduling class `attr`, then moves it to `cpu`: in that
/// order, the hog preempts the victim on `cpu` the moment it arrives. Moved first, it would
/// arrive as SCHED_OTHER behind a SCHED_FIFO victim and, without a DL-server (6.1) and with RT
/// throttling off, never run to change its class until stalld boosted it.
fn into_class(cpu: u32, attr: SchedAttr) -> Result<(), rustix::io::Errno> {
    sched::sched_setattr(0, &attr)?;
    sched::set_affinity(0, core::iter::once(cpu))
}
