//! A SCHED_DEADLINE boost gives its bandwidth back when it ends. The kernel counts every
//! SCHED_DEADLINE task's bandwidth in its root domain's `total_bw` and refuses a new one
//! (EBUSY) that would not fit; a task that leaves the class while asleep stays counted (6.18:
//! +20,971 per default boost), so a daemon that boosts kthreads, which are mostly asleep
//! again when their boost ends, used to fill the root domain: its own boosts fell back to
//! SCHED_FIFO and the appliance's SCHED_DEADLINE applications were refused. Its own binary,
//! so that no other test's boost moves `total_bw` meanwhile.

mod common;

use common::{MachineLock, RtRuntimeGuard};
use stalld::boost::{BoostParams, BoostPolicy, Booster, KernelScheduler};
use stalld::boost_budget::BudgetEnforcement;
use stalld::task::Comm;

/// The measurable boost's bandwidth (1 ms every 200 ms: 5,242 in the kernel's units) times
/// this is more than twice a 2-CPU root domain (1,992,294 with the default RT limit), so
/// each boost leaving even a twentieth of it behind fills the domain before the end.
const BOOSTS: u64 = 400;

/// The root domain's SCHED_DEADLINE bandwidth in use, as the kernel counts it for CPU 0
/// (`dl_bw->total_bw` in sched_debug).
fn total_bw() -> i64 {
    let text = std::fs::read_to_string("/sys/kernel/debug/sched/debug")
        .expect("read sched_debug (debugfs mounted, root)");
    text.lines()
        .find_map(|line| line.trim().strip_prefix(".dl_bw->total_bw"))
        .and_then(|rest| rest.trim_start_matches([' ', ':']).trim().parse().ok())
        .expect("a dl_bw->total_bw line in sched_debug")
}

/// A `sleep` child, asleep, and its tid.
fn sleeping_task() -> (std::process::Child, i32) {
    let child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let tid = i32::try_from(child.id()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::proc_state(tid).ok() != Some('S') {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep {tid} not asleep after 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (child, tid)
}

#[test]
fn deadline_boosts_leave_no_bandwidth_behind() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: boosting a task needs root");
        return;
    }
    let _machine = MachineLock::take();
    // Written back at the end whatever happens: the write also makes the kernel count the
    // root domain's bandwidth afresh, so a failure here leaves no full domain to the next test.
    let rt_runtime = RtRuntimeGuard::save().expect("read sched_rt_runtime_us");
    let (mut sleeper, tid) = sleeping_task();
    let mut booster = Booster::new(BoostParams {
        policy: BoostPolicy::Deadline,
        runtime_ns: 1_000_000,
        period_ns: 200_000_000,
        duration_ns: 200_000_000,
        fifo_priority: 98,
        budget: BudgetEnforcement::Kernel,
    });
    let mut scheduler = KernelScheduler;
    let before = total_bw();
    let mut outcome = Ok(());
    for round in 0..BOOSTS {
        let policy = booster.boost(
            &mut scheduler,
            tid,
            Comm::new(b"sleep"),
            round * 1_000_000_000,
        );
        if policy != Ok(BoostPolicy::Deadline) {
            outcome = Err(format!(
                "boost {round}: {policy:?}, total_bw {} (before {before})",
                total_bw()
            ));
            break;
        }
        while let Some(next) = booster.next_deadline_ns() {
            booster.service(&mut scheduler, next, |_| {});
        }
    }
    let after = total_bw();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    common::write_rt_runtime_us(rt_runtime.saved).expect("rewrite sched_rt_runtime_us");
    outcome.unwrap();
    assert_eq!(
        after, before,
        "total_bw after {BOOSTS} SCHED_DEADLINE boosts and restores of a sleeping task"
    );
}
