//! The boost's budget: a SCHED_DEADLINE boost gives the task its runtime per period, no more.
//! The kernel ends a runtime shorter than a tick on time only with `HRTICK_DL` on (see
//! `sys::sched_features`); otherwise the task runs on to the next tick (4 ms at HZ=250, 200
//! times a 20 us runtime). Where the feature cannot be turned on (kernel lockdown), the daemon
//! is that high-resolution tick: right after the boosted task should have used its runtime, it
//! changes the task's runtime by 1 ns (alternately), and `sched_setattr` then makes the kernel
//! account the running task's time (`update_curr_dl`) and throttle it until its next period,
//! as the tick would. The task stays SCHED_DEADLINE for the whole boost and the kernel keeps
//! the reservation's books: whatever a late poke lets through is taken from the next periods.
//! Invariant: [`BudgetWatch`] is pure (time and CPU time are arguments) and pokes only in
//! the first [`POKE_WINDOW_NS`] of a period.

use rustix::io::Errno;

use crate::boost::Scheduler;
use crate::config::{Config, SelfSched};
use crate::log::Log;
use crate::sys::sched::SchedAttr;
use crate::sys::sched_features::{HrtickDl, HrtickDlState};
use crate::task::Tid;

/// Who ends a SCHED_DEADLINE boost's runtime in each period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetEnforcement {
    /// The kernel, on time (`HRTICK_DL` on, or a runtime of at least a tick).
    Kernel,
    /// The daemon, with a [`BudgetWatch`] per boost.
    Daemon,
}

/// Startup: who will keep SCHED_DEADLINE boosts within their runtime, said once in the log.
/// Turns `HRTICK_DL` on if it can (the returned guard turns it back off at exit); where the
/// kernel refuses (lockdown), the daemon does it, its wake-ups kept on time by its own budget
/// (`protect.rs`). SCHED_FIFO boosts (`-F`) and `-l` need neither: the daemon times each
/// SCHED_FIFO window itself.
pub fn choose(config: &Config, log: &mut impl Log) -> (Option<HrtickDl>, BudgetEnforcement) {
    if config.force_fifo || config.log_only {
        return (None, BudgetEnforcement::Kernel);
    }
    let runtime_us = config.boost_runtime_ns / 1_000;
    let errno = match HrtickDl::enable() {
        Ok(hrtick) => {
            let how = match hrtick.state() {
                HrtickDlState::TurnedOn if config.boost_runtime_ns < 1_000_000 => {
                    "dl_runtime is shorter than 1ms, setting HRTICK_DL (off again at exit)"
                }
                HrtickDlState::TurnedOn => "setting HRTICK_DL (off again at exit)",
                HrtickDlState::WasOn => "HRTICK_DL is on",
            };
            log.info(format_args!(
                "{how}: the kernel ends each boost's {runtime_us} us runtime on time"
            ));
            return (Some(hrtick), BudgetEnforcement::Kernel);
        }
        Err(errno) => errno,
    };
    let why = if errno == Errno::PERM {
        "hrtick cannot be set in lockdown mode"
    } else {
        "cannot set HRTICK_DL"
    };
    log.info(format_args!(
        "{why} ({errno}): stalld ends each boost's {runtime_us} us runtime itself (it makes the \
         kernel account the boosted task right after its runtime in every period)"
    ));
    if config.self_sched == SelfSched::Other {
        log.warn(format_args!(
            "stalld runs as SCHED_OTHER (--self_sched other): its ends of boosts' runtimes \
             come as late as it wakes up"
        ));
    }
    (None, BudgetEnforcement::Daemon)
}

/// The loop wakes this long before a poke and spins to its exact moment: a timed wait of a
/// SCHED_OTHER process overshoots by its timer slack (50 us) plus its wake-up latency, while
/// a 20 us runtime must end within 20 us of its due time. 300 us of spinning per period and
/// boost (0.03 % of the housekeeping CPU at the default 1 s period) covers the wake-up
/// latencies measured on the housekeeping CPU here (cyclictest on CPU 0: README's figures).
pub const SPIN_BEFORE_POKE_NS: u64 = 300_000;

/// A poke comes this long after the task is expected to have used its runtime: it started
/// running a few microseconds after its period began (the kernel's replenishment timer and the
/// IPI), and a poke that comes before its runtime is used up does nothing but cost a re-poke.
const POKE_MARGIN_NS: u64 = 5_000;

/// How long into a period the watch keeps poking a task that has not used its runtime yet.
/// A boosted task runs as soon as its CPU switches to it, which in a virtual machine can take
/// a millisecond or more (measured here: a first period's runtime began up to ~1.4 ms late,
/// and four pokes 25 us apart all came before it). After one tick at HZ=100 the kernel's own
/// tick has accounted the task, so poking longer gains nothing; a task that sleeps through
/// its boost costs at most this much spinning per period.
pub const POKE_WINDOW_NS: u64 = 10_000_000;

/// When to poke one boosted task: after each period's runtime, measured in the CPU time the
/// task really got (`/proc/<tid>/schedstat`, exact just after a poke: the poke accounts it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetWatch {
    started_ns: u64,
    /// The task's CPU time when its current period began (as far as the daemon knows).
    cpu_at_period_start_ns: u64,
    cpu_at_last_poke_ns: u64,
    period_index: u64,
    next_poke_ns: u64,
}

impl BudgetWatch {
    /// A watch for a boost that began at `now_ns`, when the task had used `cpu_ns`.
    pub fn start(now_ns: u64, cpu_ns: u64, runtime_ns: u64) -> Self {
        BudgetWatch {
            started_ns: now_ns,
            cpu_at_period_start_ns: cpu_ns,
            cpu_at_last_poke_ns: cpu_ns,
            period_index: 0,
            next_poke_ns: now_ns + runtime_ns + POKE_MARGIN_NS,
        }
    }

    /// When the next poke is due.
    pub fn next_poke_ns(&self) -> u64 {
        self.next_poke_ns
    }

    /// When the loop must wake for it (it spins the rest).
    pub fn wake_ns(&self) -> u64 {
        self.next_poke_ns.saturating_sub(SPIN_BEFORE_POKE_NS)
    }

    /// Plans the next poke from one made at `now_ns`, after which the task had used `cpu_ns`.
    /// Per period, not over the whole boost: the kernel starts each period with at most the
    /// runtime, less what an overrun left owing, and hands out a fresh runtime after a large
    /// debt too, so only "the task used a runtime in this period" proves the poke throttled it.
    /// Until then (its period began later than the daemon thought, it started late in it, or
    /// it was throttled already or sleeps) it is poked again when it can have used the rest,
    /// within [`POKE_WINDOW_NS`] of its start; then after the next period's runtime.
    pub fn after_poke(&mut self, now_ns: u64, cpu_ns: u64, runtime_ns: u64, period_ns: u64) {
        let elapsed_periods = now_ns.saturating_sub(self.started_ns) / period_ns;
        if elapsed_periods > self.period_index {
            // The daemon came late, into a later period: count from the last reading.
            self.period_index = elapsed_periods;
            self.cpu_at_period_start_ns = self.cpu_at_last_poke_ns;
        }
        let used_ns = cpu_ns.saturating_sub(self.cpu_at_period_start_ns);
        self.cpu_at_last_poke_ns = cpu_ns;
        let window_end_ns = self.started_ns
            + self.period_index.saturating_mul(period_ns)
            + POKE_WINDOW_NS.min(period_ns / 2);
        if used_ns < runtime_ns && now_ns < window_end_ns {
            self.next_poke_ns = now_ns + (runtime_ns - used_ns) + POKE_MARGIN_NS;
            return;
        }
        self.period_index += 1;
        self.cpu_at_period_start_ns = cpu_ns;
        self.next_poke_ns = self.started_ns
            + self.period_index.saturating_mul(period_ns)
            + runtime_ns
            + POKE_MARGIN_NS;
    }
}

/// The attributes of a poke of a task that has `current` (the boost's, as the booster last
/// set them): the boost's, with the runtime 1 ns shorter every other time (the kernel skips a
/// `sched_setattr` that changes nothing).
fn poke_attr(current: &SchedAttr, runtime_ns: u64, period_ns: u64) -> SchedAttr {
    let shaved = current.sched_runtime == runtime_ns;
    SchedAttr::deadline(runtime_ns - u64::from(shaved), period_ns, period_ns)
}

/// Spins to the poke's moment, pokes `tid`, which has `current` (updated when the poke went
/// through), and plans the next poke. `Err(SRCH)`: it is gone.
pub fn poke(
    scheduler: &mut impl Scheduler,
    tid: Tid,
    watch: &mut BudgetWatch,
    current: &mut SchedAttr,
    runtime_ns: u64,
    period_ns: u64,
) -> Result<(), Errno> {
    let now_ns = scheduler.spin_until(watch.next_poke_ns);
    let attr = poke_attr(current, runtime_ns, period_ns);
    let result = scheduler.set_attr(tid, &attr);
    match result {
        Ok(()) => *current = attr,
        Err(Errno::SRCH) => return result,
        Err(_) => {}
    }
    // Unreadable (racing an exit): count the allowance as used, and poke in the next period.
    let cpu_ns = scheduler.cpu_time_ns(tid).unwrap_or(u64::MAX);
    watch.after_poke(now_ns, cpu_ns, runtime_ns, period_ns);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    const S: u64 = 1_000_000_000;
    const RUNTIME: u64 = 20 * US;

    #[test]
    fn first_poke_follows_the_runtime() {
        let w = BudgetWatch::start(S, 7 * S, RUNTIME);
        assert_eq!(w.next_poke_ns(), S + RUNTIME + POKE_MARGIN_NS);
        assert_eq!(w.wake_ns(), w.next_poke_ns() - SPIN_BEFORE_POKE_NS);
    }

    #[test]
    fn a_used_runtime_moves_the_poke_to_the_next_period() {
        let mut w = BudgetWatch::start(0, 0, RUNTIME);
        w.after_poke(25 * US, 22 * US, RUNTIME, S);
        assert_eq!(w.next_poke_ns(), S + RUNTIME + POKE_MARGIN_NS);
        // A large overrun (a late poke) does not make the next periods' pokes earlier: the
        // kernel starts each period with a fresh runtime even after a large debt.
        w.after_poke(S + 25 * US, 22 * US + 3_000 * US, RUNTIME, S);
        assert_eq!(w.next_poke_ns(), 2 * S + RUNTIME + POKE_MARGIN_NS);
    }

    #[test]
    fn a_late_start_is_poked_again_when_the_runtime_can_be_used() {
        let mut w = BudgetWatch::start(0, 0, RUNTIME);
        w.after_poke(25 * US, 12 * US, RUNTIME, S);
        assert_eq!(w.next_poke_ns(), 25 * US + 8 * US + POKE_MARGIN_NS);
        w.after_poke(38 * US, 21 * US, RUNTIME, S);
        assert_eq!(w.next_poke_ns(), S + RUNTIME + POKE_MARGIN_NS);
    }

    #[test]
    fn a_task_that_does_not_run_is_poked_only_in_the_window() {
        let mut w = BudgetWatch::start(0, 0, RUNTIME);
        let (mut now, mut pokes) = (w.next_poke_ns(), 0);
        while now < S {
            w.after_poke(now, 0, RUNTIME, S);
            pokes += 1;
            assert!(now <= POKE_WINDOW_NS + RUNTIME + POKE_MARGIN_NS);
            now = w.next_poke_ns();
        }
        assert_eq!(pokes, POKE_WINDOW_NS / (RUNTIME + POKE_MARGIN_NS));
        assert_eq!(now, S + RUNTIME + POKE_MARGIN_NS);
    }

    #[test]
    fn periods_missed_by_the_daemon_are_skipped() {
        let mut w = BudgetWatch::start(0, 0, RUNTIME);
        w.after_poke(25 * US, 21 * US, RUNTIME, S);
        w.after_poke(3 * S + 30 * US, 41 * US, RUNTIME, S);
        assert_eq!(w.next_poke_ns(), 4 * S + RUNTIME + POKE_MARGIN_NS);
    }

    #[test]
    fn pokes_alternate_the_runtime_by_one_ns() {
        let a = poke_attr(&SchedAttr::deadline(RUNTIME, S, S), RUNTIME, S);
        let b = poke_attr(&a, RUNTIME, S);
        assert_eq!((a.sched_runtime, b.sched_runtime), (RUNTIME - 1, RUNTIME));
        assert_eq!((a.sched_period, a.sched_deadline), (S, S));
        assert_eq!(b, SchedAttr::deadline(RUNTIME, S, S));
    }
}
