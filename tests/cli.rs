//! The `stalld` binary's command-line contract: exit codes and messages users' scripts see.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn stalld(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stalld"))
        .args(args)
        .output()
        .expect("run stalld")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_option_and_exits_0() {
    for flag in ["-h", "--help"] {
        let out = stalld(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        for option in [
            "--cpu",
            "--starving_threshold",
            "--boost_duration",
            "--boost_period",
            "--boost_runtime",
            "--force_fifo",
            "--log_only",
            "--verbose",
            "--log_kmsg",
            "--log_syslog",
            "--foreground",
            "--pidfile",
            "--aggressive_mode",
            "--power_mode",
            "--adaptive_mode",
            "--no_idle_detect",
            "--granularity",
            "--reservation",
            "--affinity",
            "--ignore_threads",
            "--ignore_processes",
            "--backend",
            "--systemd",
            "--version",
            "--help",
        ] {
            assert!(text.contains(option), "{option} missing from --help");
        }
        assert!(text.contains("(default: 20)"), "threshold default missing");
    }
}

#[test]
fn version_exits_0() {
    for flag in ["-V", "--version"] {
        let out = stalld(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn usage_errors_exit_22_with_one_line() {
    for args in [
        &["-t", "0"][..],
        &["-t", "3601"],
        &["-d", "61"],
        &["-t", "3", "-d", "5"],
        &["-p", "100"],
        &["-r", "1000"],
        &["-c", "99999"],
        &["-c", "3-1"],
        &["-g", "0"],
        &["-R", "5"],
        &["-b", "nope"],
        &["-i", "("],
        &["--no-such-option"],
        &["-t"],
        &["stray"],
    ] {
        let out = stalld(args);
        assert_eq!(out.status.code(), Some(22), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("stalld: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn procfs_backend_is_offered_and_parsed() {
    let help = String::from_utf8_lossy(&stalld(&["--help"]).stdout).into_owned();
    assert!(help.contains("procfs (P"), "{help}");
    let out = stalld(&["-b", "nope"]);
    assert!(
        stderr(&out).contains("or procfs (or P)"),
        "{}",
        stderr(&out)
    );
    // Options are parsed in order: the error is about -t, so -b was accepted.
    for name in ["procfs", "P"] {
        let out = stalld(&["-b", name, "-t", "0"]);
        assert_eq!(out.status.code(), Some(22));
        assert!(
            stderr(&out).contains("-t/--starving_threshold"),
            "{name}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn not_root_exits_1_with_a_clear_message() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to drop to an unprivileged user");
        return;
    }
    // The checkout may sit where an unprivileged user cannot reach: run a copy from /tmp.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("stalld-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("stalld");
    // Copied by `cp`, not by this process: a child that another test's thread forks while we
    // hold the copy open for writing inherits that descriptor until it execs, and executing the
    // copy meanwhile fails with ETXTBSY (a fresh-clone CI run did).
    let copied = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_stalld"))
        .arg(&copy)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp stalld: {copied}");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&copy)
        .args(["-f", "-c", "1"])
        .uid(65534)
        .gid(65534)
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = out.expect("run stalld as nobody");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("root"), "{}", stderr(&out));
}

/// In a nested PID namespace the kernel's thread ids (what every backend reports) are not the
/// daemon's own: it must refuse before it changes anything, naming the reason.
#[test]
fn nested_pid_namespace_exits_1_before_touching_anything() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to create a PID namespace");
        return;
    }
    const RT_RUNTIME: &str = "/proc/sys/kernel/sched_rt_runtime_us";
    // The end-to-end tests' machine lock: none of them changes RT throttling meanwhile.
    let lock = std::fs::File::create("/tmp/stalld-rs-e2e-cpu1.lock").expect("machine lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("machine lock");
    /// Writes the saved RT runtime back, also when an assertion fails.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(RT_RUNTIME, &self.0);
        }
    }
    let rt_before = std::fs::read_to_string(RT_RUNTIME).unwrap();
    let _restore = Restore(rt_before.clone());
    // `timeout`: a daemon that failed to refuse would otherwise run for ever.
    let out = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "10",
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .arg(env!("CARGO_BIN_EXE_stalld"))
        .args(["-f", "-v", "-c", "1"])
        .output()
        .expect("run stalld under unshare");
    let rt_after = std::fs::read_to_string(RT_RUNTIME).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("PID namespace"), "{}", stderr(&out));
    assert_eq!(
        rt_before,
        rt_after,
        "RT throttling changed: {}",
        stderr(&out)
    );
}
