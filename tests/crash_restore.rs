//! Crash-safe restoration and one honest instance, end to end on the real kernel (root):
//! a daemon SIGKILLed during a boost leaves its victim boosted and RT throttling off, and the
//! next start puts both back; a tid reused by another task is left alone; links planted at
//! the pidfile, ring or journal path are neither followed nor written; a second daemon exits
//! 1 naming the first; a `-a` that fails after the fork makes the command fail.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const STALLD: &str = env!("CARGO_BIN_EXE_stalld");
const RUN_DIR: &str = "/run/stalld";
const JOURNAL: &str = "/run/stalld/stalld.journal";
const SAVED_RUNTIME: &str = "/run/stalld/rt_runtime_us";
/// -t 3 and a boost of 3 s (the longest -t 3 allows), long enough to SIGKILL the daemon in it.
fn boost_args() -> Vec<&'static str> {
    watch_test_cpu(
        "3",
        "3",
        &[&MEASURABLE_BOOST[..], &["--log_ring=none"]].concat(),
    )
}
/// The boost those arguments give: what a task must have to look boosted.
const BOOST_RUNTIME_NS: u64 = 1_000_000;
const BOOST_PERIOD_NS: u64 = 200_000_000;
const SCENARIO_LIFETIME: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stalld-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the daemon and waits until it monitors.
fn start_daemon(args: &[&str]) -> Daemon {
    let daemon = Daemon::spawn(args);
    assert!(
        daemon
            .wait_for_line("monitoring CPUs 1", Duration::from_secs(15))
            .is_some(),
        "daemon did not start:\n{}",
        daemon.transcript()
    );
    daemon
}

/// Waits until `pid` runs under the daemon's SCHED_DEADLINE boost.
fn wait_boosted(pid: libc::pid_t, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(12);
    while policy_of(pid).map(|p| p.policy).ok() != Some(SCHED_DEADLINE) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never boosted\n{}",
            daemon.transcript()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigkill(daemon: &mut Daemon) {
    // SAFETY: the pid is our own unreaped child.
    unsafe { libc::kill(daemon.pid(), libc::SIGKILL) };
    assert!(daemon.wait_exit(Duration::from_secs(3)).is_some());
}

/// Proof (e): SIGKILL during a boost, then a restart: the victim's policy is back within 1 s
/// of the restart, and RT throttling is back to its value from before the first start once
/// the restarted daemon stops.
#[test]
fn a_restart_undoes_what_a_killed_daemon_left() {
    let Some(env) = e2e_begin("a_restart_undoes_what_a_killed_daemon_left") else {
        return;
    };
    let original = env.rt_runtime.saved;
    assert_ne!(original, -1, "RT throttling must be on before the test");
    let scenario = Scenario::start(SCENARIO_LIFETIME, SCENARIO_LIFETIME);
    let victim = scenario.victim.pid;
    let mut first = start_daemon(&boost_args());
    wait_boosted(victim, &first);
    sigkill(&mut first);
    // What upstream leaves for ever: the boost and RT throttling off.
    assert_eq!(policy_of(victim).unwrap().policy, SCHED_DEADLINE);
    assert_eq!(read_rt_runtime_us().unwrap(), -1);
    assert_eq!(
        std::fs::read_to_string(SAVED_RUNTIME).unwrap().trim(),
        original.to_string()
    );

    let restart = Instant::now();
    let mut second = Daemon::spawn(&boost_args());
    let restored = wait_for_policy(
        victim,
        Policy::fifo(VICTIM_PRIORITY),
        Duration::from_secs(3),
    );
    let after_ms = restart.elapsed().as_secs_f64() * 1e3;
    eprintln!("victim restored {after_ms:.1} ms after the restart");
    assert!(
        restored.is_ok(),
        "victim not restored\n{}",
        second.transcript()
    );
    // The bound of the issue; measured here: 5.6-13.0 ms over 5 runs (the journal is read
    // before the backend is opened).
    assert!(after_ms < 1000.0, "{after_ms} ms\n{}", second.transcript());
    let line = format!(
        "restored pid {victim} ({VICTIM_NAME}) to SCHED_FIFO: a stalld that died had left it boosted"
    );
    assert!(
        second
            .wait_for_line(&line, Duration::from_secs(5))
            .is_some(),
        "{}",
        second.transcript()
    );
    assert!(
        second
            .wait_for_line(
                &format!("RT Throttling runtime {original} comes back at exit"),
                Duration::from_secs(15)
            )
            .is_some(),
        "{}",
        second.transcript()
    );
    assert_eq!(read_rt_runtime_us().unwrap(), -1);
    assert!(second.terminate(Duration::from_secs(5)).is_some());
    assert_eq!(read_rt_runtime_us().unwrap(), original);
    assert!(!Path::new(SAVED_RUNTIME).exists());
    drop(scenario);
}

/// Writes `pid - 1` to `ns_last_pid` and spawns `sleep 30`, until the sleeper gets `pid`.
fn spawn_with_pid(pid: libc::pid_t) -> std::process::Child {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        if child.id() as libc::pid_t == pid {
            return child;
        }
        let mut other = child;
        let _ = other.kill();
        let _ = other.wait();
    }
    panic!("could not get pid {pid} again (other processes kept taking it)");
}

/// Proof (e): a tid reused by another task, which even has the boost's attributes, is left
/// alone by the restart: only the start time tells it from the boosted task.
#[test]
fn a_reused_tid_is_left_alone_by_the_restart() {
    let Some(_env) = e2e_begin("a_reused_tid_is_left_alone_by_the_restart") else {
        return;
    };
    let scenario = Scenario::start(SCENARIO_LIFETIME, SCENARIO_LIFETIME);
    let victim = scenario.victim.pid;
    let mut first = start_daemon(&boost_args());
    wait_boosted(victim, &first);
    sigkill(&mut first);
    drop(scenario);

    let mut stranger = spawn_with_pid(victim);
    let boost = SchedAttr::deadline(BOOST_RUNTIME_NS, BOOST_PERIOD_NS, BOOST_PERIOD_NS);
    sched_setattr(victim, &boost).unwrap();
    let second = start_daemon(&boost_args());
    let line = format!(
        "pid {victim}, boosted by a stalld that died, is another task now (its tid was reused): \
         left alone"
    );
    let seen = second
        .wait_for_line(&line, Duration::from_secs(5))
        .is_some();
    let now = sched_getattr(victim);
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(seen, "{}", second.transcript());
    let now = now.unwrap();
    assert_eq!(now.sched_policy, SCHED_DEADLINE, "{}", second.transcript());
    assert_eq!(now.sched_runtime, BOOST_RUNTIME_NS);
}

/// Runs the daemon to its end (it must refuse to start): exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "20", STALLD])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A target with known content, and the checks that it was neither written nor re-moded.
struct Precious(PathBuf);

impl Precious {
    fn new(path: PathBuf) -> Precious {
        std::fs::write(&path, "precious\n").unwrap();
        Precious(path)
    }

    fn assert_untouched(&self) {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::read_to_string(&self.0).unwrap(), "precious\n");
        let mode = std::fs::metadata(&self.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

/// Proof (f): symlinks and hard links planted at the pidfile, ring and journal paths.
#[test]
fn links_at_the_pidfile_ring_and_journal_are_not_followed() {
    let Some(_env) = e2e_begin("links_at_the_pidfile_ring_and_journal_are_not_followed") else {
        return;
    };
    let dir = temp_dir("links");
    let target = Precious::new(dir.join("target"));
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target.0, &link).unwrap();
    let link_arg = link.to_str().unwrap();
    let hard = dir.join("hard");
    std::fs::hard_link(&target.0, &hard).unwrap();
    let hard_arg = hard.to_str().unwrap();

    // The pidfile is written after the fork: the command itself must fail.
    for (path, why) in [(link_arg, "symbolic link"), (hard_arg, "hard links")] {
        let (code, err) = run_to_exit(&["-l", "-c", "1", "--log_ring=none", "-P", path]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(why) && err.contains(path), "{err}");
        target.assert_untouched();
    }

    // The ring is optional: the daemon runs without it and says why.
    for (path, why) in [(link_arg, "symbolic link"), (hard_arg, "hard links")] {
        let daemon = start_daemon(&["-f", "-v", "-l", "-c", "1", "--log_ring", path]);
        assert!(
            daemon
                .wait_for_line("not logging to a ring file", Duration::from_secs(1))
                .is_some_and(|(_, line)| line.contains(why)),
            "{}",
            daemon.transcript()
        );
        drop(daemon);
        target.assert_untouched();
    }

    // The journal (fixed path): planted in the run directory itself.
    std::fs::create_dir_all(RUN_DIR).unwrap();
    let _ = std::fs::remove_file(JOURNAL);
    let run_target = Precious::new(Path::new(RUN_DIR).join("planted-target"));
    let journal_links: [(&dyn Fn(), &str); 2] = [
        (
            &|| std::os::unix::fs::symlink(&target.0, JOURNAL).unwrap(),
            "symbolic link",
        ),
        (
            &|| std::fs::hard_link(&run_target.0, JOURNAL).unwrap(),
            "hard links",
        ),
    ];
    for (plant, why) in journal_links {
        plant();
        let (code, err) = run_to_exit(&["-f", "-l", "-c", "1", "--log_ring=none"]);
        let _ = std::fs::remove_file(JOURNAL);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(why) && err.contains(JOURNAL), "{err}");
        target.assert_untouched();
        run_target.assert_untouched();
    }
    let _ = std::fs::remove_file(&run_target.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Proof (f): a second daemon exits 1 and names the first one's pid.
#[test]
fn a_second_instance_exits_1_naming_the_first() {
    let Some(_env) = e2e_begin("a_second_instance_exits_1_naming_the_first") else {
        return;
    };
    let first = start_daemon(&["-f", "-v", "-l", "-c", "1", "--log_ring=none"]);
    for foreground in [true, false] {
        let mut args = vec!["-l", "-c", "1", "--log_ring=none"];
        if foreground {
            args.push("-f");
        }
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("another stalld is running (pid {},", first.pid())),
            "{err}"
        );
    }
}

/// A cgroup-v1 cpuset holding CPU 1 only, removed on drop.
struct Cpuset(PathBuf);

impl Cpuset {
    fn cpu1_only() -> Option<Cpuset> {
        let root = Path::new("/sys/fs/cgroup/cpuset");
        if !root.join("cpuset.cpus").exists() {
            return None;
        }
        let dir = root.join(format!("stalld-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let set = Cpuset(dir);
        std::fs::write(set.0.join("cpuset.cpus"), "1").ok()?;
        std::fs::write(set.0.join("cpuset.mems"), "0").ok()?;
        Some(set)
    }
}

impl Drop for Cpuset {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Proof (f): `-a 0` from inside a cpuset that only has CPU 1 fails after the fork (the
/// daemon pins itself after daemonizing): the command exits 1 with the reason, and no
/// daemon is left running.
#[test]
fn an_affinity_that_fails_after_the_fork_fails_the_command() {
    let Some(env) = e2e_begin("an_affinity_that_fails_after_the_fork_fails_the_command") else {
        return;
    };
    let Some(cpuset) = Cpuset::cpu1_only() else {
        eprintln!("SKIPPED: no cgroup-v1 cpuset hierarchy at /sys/fs/cgroup/cpuset");
        return;
    };
    let tasks = cpuset.0.join("tasks");
    let script = format!(
        "echo $$ > {} && exec timeout -s KILL 20 {STALLD} -l -c 1 -a 0 --log_ring=none",
        tasks.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot pin stalld to CPUs 0 (-a)"), "{err}");
    // Nobody holds the instance lock: the daemon is gone, and it restored RT throttling.
    let lock = std::fs::File::open(Path::new(RUN_DIR).join("stalld.lock")).unwrap();
    assert_eq!(
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockShared),
        Ok(())
    );
    assert_eq!(read_rt_runtime_us().unwrap(), env.rt_runtime.saved);
}
