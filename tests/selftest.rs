//! `stalld --selftest=1` on the real kernel: it starves a task of its own on CPU 1 under a
//! stalld child per backend and must find every backend that opens here rescuing it, never
//! before the threshold. Needs root and two CPUs like `starvation.rs`; shares its machine lock.

mod common;

use std::process::{Command, Output};

use common::*;

fn selftest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stalld"))
        .args(args)
        .output()
        .expect("run stalld --selftest")
}

/// The rescue rows' "+N ms past the threshold" figures, by backend.
fn rescues(table: &str) -> Vec<(String, Option<i64>)> {
    table
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rescue "))
        .map(|row| {
            let (backend, result) = row.split_once(' ').unwrap_or((row, ""));
            let past = result
                .trim()
                .strip_prefix("rescued ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|figure| figure.parse().ok());
            (backend.to_owned(), past)
        })
        .collect()
}

#[test]
fn selftest_rescues_with_every_backend_that_opens() {
    let Some(_e2e) = e2e_begin("selftest_rescues_with_every_backend_that_opens") else {
        return;
    };
    // A boost runtime of its own: the children must boost as the command line says.
    let out = selftest(&["--selftest=1", "-r", "100000"]);
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    assert_eq!(out.status.code(), Some(0), "self-test failed:\n{table}");
    assert!(table.contains("result: OK: stalld protects CPU 1"));
    assert!(
        table.contains("stalld child options   -t 3 -d 1 -r 100000 -p 1000000000 "),
        "the children's options:\n{table}"
    );
    let rescues = rescues(&table);
    let opened = table.matches(" opens").count();
    assert_eq!(rescues.len(), opened, "one rescue row per usable backend");
    for backend in ["queue_track", "sched_debug", "procfs"] {
        assert!(
            rescues.iter().any(|(name, _)| name == backend),
            "{backend} did not run here"
        );
    }
    for (backend, past) in rescues {
        let past = past.unwrap_or_else(|| panic!("{backend}: not rescued:\n{table}"));
        // The victim's gap starts when the hog takes the CPU, which is when its wait starts:
        // a rescue before the threshold is an early boost. 10 ms covers the victim's own
        // clock reads (it times its gaps with a spinning loop).
        assert!(
            past >= -10,
            "{backend}: rescued {past} ms before the threshold"
        );
    }
    assert!(
        !table.contains("NOT ") && !table.contains("could not run"),
        "a backend did not protect:\n{table}"
    );
}

#[test]
fn selftest_fails_without_root() {
    let Some(_e2e) = e2e_begin("selftest_fails_without_root") else {
        return;
    };
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_stalld"))
        .arg("--selftest=1")
        .output()
        .expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("result: FAIL") && text.contains("root"),
        "{text}"
    );
}
