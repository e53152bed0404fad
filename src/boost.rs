//! Booster: gives starving tasks a short SCHED_DEADLINE (or SCHED_FIFO) boost and puts their
//! exact original attributes back when it ends. Never sleeps: every boost has its own restore
//! deadline, and the loop calls [`Booster::service`] when the earliest one is due.
//! Invariant: every task in the table is restored, by `service` when its boost ends or by
//! `restore_all` at shutdown, unless the kernel says it is gone.

use crate::boost_budget::{self, BudgetEnforcement, BudgetWatch};
use crate::sys::proc_files;
use crate::sys::process;
use crate::sys::sched::{self, SchedAttr};
use crate::task::{Comm, Tid};
use rustix::io::Errno;

/// Most tasks boosted at the same time; more wait for a free slot (counted, logged).
pub const MAX_ACTIVE_BOOSTS: usize = 64;

/// The scheduler calls the booster makes; the kernel in production, a fake in tests.
pub trait Scheduler {
    fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, Errno>;
    fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno>;
    /// CPU time `tid` has used, ns (see `boost_budget`); `None` when it cannot be read.
    fn cpu_time_ns(&mut self, tid: Tid) -> Option<u64>;
    /// Busy-waits until the monotonic clock reaches `when_ns` and returns the time then: the
    /// budget's pokes, too short and too exact for a timed wait.
    fn spin_until(&mut self, when_ns: u64) -> u64;
}

/// `sched_getattr` / `sched_setattr` on the running kernel.
pub struct KernelScheduler;

impl Scheduler for KernelScheduler {
    fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, Errno> {
        sched::sched_getattr(tid)
    }

    fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno> {
        sched::sched_setattr(tid, attr)
    }

    fn cpu_time_ns(&mut self, tid: Tid) -> Option<u64> {
        proc_files::read_cpu_time_ns(tid)
    }

    fn spin_until(&mut self, when_ns: u64) -> u64 {
        loop {
            let now_ns = process::monotonic_ns();
            if now_ns >= when_ns {
                return now_ns;
            }
            core::hint::spin_loop();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoostPolicy {
    Deadline,
    Fifo,
}

impl BoostPolicy {
    pub fn name(self) -> &'static str {
        match self {
            BoostPolicy::Deadline => "SCHED_DEADLINE",
            BoostPolicy::Fifo => "SCHED_FIFO",
        }
    }
}

/// What a boost gives, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct BoostParams {
    pub policy: BoostPolicy,
    pub runtime_ns: u64,
    pub period_ns: u64,
    pub duration_ns: u64,
    pub fifo_priority: u32,
    /// Who ends a SCHED_DEADLINE boost's runtime in each period (see `boost_budget`).
    pub budget: BudgetEnforcement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoostError {
    /// The task exited before it could be boosted.
    Gone,
    AlreadyBoosted,
    /// The task runs under SCHED_DEADLINE already: a boost would shrink its reservation.
    AlreadyDeadline,
    TableFull,
    Denied(Errno),
}

/// Something the caller should log.
#[derive(Debug, PartialEq, Eq)]
pub enum BoostEvent {
    Restored {
        tid: Tid,
        comm: Comm,
    },
    /// The task exited while boosted: nothing to restore.
    Gone {
        tid: Tid,
        comm: Comm,
    },
    RestoreFailed {
        tid: Tid,
        comm: Comm,
        errno: Errno,
    },
}

/// SCHED_FIFO boosts alternate: boosted for `runtime` of every `period`, original policy else.
#[derive(Clone, Copy, Debug)]
struct FifoCycle {
    boosted: bool,
    next_toggle_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct ActiveBoost {
    tid: Tid,
    comm: Comm,
    saved: SchedAttr,
    ends_ns: u64,
    fifo: Option<FifoCycle>,
    /// SCHED_DEADLINE boosts whose runtime the daemon ends (`BudgetEnforcement::Daemon`).
    budget: Option<BudgetWatch>,
}

impl ActiveBoost {
    fn next_deadline_ns(&self) -> u64 {
        let ends_ns = match self.budget {
            Some(watch) if watch.next_poke_ns() < self.ends_ns => watch.wake_ns(),
            _ => self.ends_ns,
        };
        match self.fifo {
            Some(cycle) => cycle.next_toggle_ns.min(ends_ns),
            None => ends_ns,
        }
    }
}

pub struct Booster {
    params: BoostParams,
    active: heapless::Vec<ActiveBoost, MAX_ACTIVE_BOOSTS>,
    /// Set when the kernel refused SCHED_DEADLINE and a boost fell back to SCHED_FIFO.
    pub deadline_refused: Option<Errno>,
}

impl Booster {
    pub fn new(params: BoostParams) -> Self {
        Booster {
            params,
            active: heapless::Vec::new(),
            deadline_refused: None,
        }
    }

    pub fn is_boosted(&self, tid: Tid) -> bool {
        self.active.iter().any(|b| b.tid == tid)
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Boosts `tid` now and returns the policy used. SCHED_DEADLINE refused (EPERM, EBUSY,
    /// EINVAL: throttling, affinity, admission) falls back to SCHED_FIFO for this boost.
    pub fn boost(
        &mut self,
        scheduler: &mut impl Scheduler,
        tid: Tid,
        comm: Comm,
        now_ns: u64,
    ) -> Result<BoostPolicy, BoostError> {
        if self.is_boosted(tid) {
            return Err(BoostError::AlreadyBoosted);
        }
        if self.active.is_full() {
            return Err(BoostError::TableFull);
        }
        let saved = scheduler.get_attr(tid).map_err(classify)?;
        if saved.sched_policy == crate::sys::sched::SCHED_DEADLINE {
            return Err(BoostError::AlreadyDeadline);
        }
        let p = self.params;
        let mut policy = p.policy;
        let mut budget = None;
        if policy == BoostPolicy::Deadline {
            let attr = SchedAttr::deadline(p.runtime_ns, p.period_ns, p.period_ns);
            // Read before the boost, while the task waits: its CPU time is exact then.
            let cpu_ns = (p.budget == BudgetEnforcement::Daemon)
                .then(|| scheduler.cpu_time_ns(tid))
                .flatten();
            match scheduler.set_attr(tid, &attr) {
                Ok(()) => {
                    // The task's periods start now, not at `now_ns` (the loop's pass began
                    // then, maybe milliseconds ago): read the clock (spinning to a past time).
                    let set_ns = scheduler.spin_until(now_ns);
                    budget = cpu_ns.map(|cpu| BudgetWatch::start(set_ns, cpu, p.runtime_ns));
                }
                Err(e @ (Errno::PERM | Errno::BUSY | Errno::INVAL)) => {
                    self.deadline_refused = Some(e);
                    policy = BoostPolicy::Fifo;
                }
                Err(e) => return Err(classify(e)),
            }
        }
        let fifo = if policy == BoostPolicy::Fifo {
            scheduler
                .set_attr(tid, &SchedAttr::fifo(p.fifo_priority))
                .map_err(classify)?;
            Some(FifoCycle {
                boosted: true,
                next_toggle_ns: now_ns + p.runtime_ns,
            })
        } else {
            None
        };
        let boost = ActiveBoost {
            tid,
            comm,
            saved,
            ends_ns: now_ns + p.duration_ns,
            fifo,
            budget,
        };
        // Capacity checked above.
        let _ = self.active.push(boost);
        Ok(policy)
    }

    /// The earliest moment [`Booster::service`] has work: a restore or a SCHED_FIFO toggle.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.active.iter().map(ActiveBoost::next_deadline_ns).min()
    }

    /// Ends every boost whose time is up and advances SCHED_FIFO cycles.
    pub fn service(
        &mut self,
        scheduler: &mut impl Scheduler,
        now_ns: u64,
        mut report: impl FnMut(BoostEvent),
    ) {
        let p = self.params;
        let mut i = 0;
        while i < self.active.len() {
            let boost = &mut self.active[i];
            if boost.ends_ns <= now_ns {
                let ended = self.active.swap_remove(i);
                report(restore(scheduler, &ended));
                continue;
            }
            let ends_ns = boost.ends_ns;
            if let Some(watch) = (boost.budget.as_mut())
                .filter(|w| w.wake_ns() <= now_ns && w.next_poke_ns() < ends_ns)
            {
                let (runtime_ns, period_ns) = (p.runtime_ns, p.period_ns);
                if boost_budget::poke(scheduler, boost.tid, watch, runtime_ns, period_ns)
                    == Err(Errno::SRCH)
                {
                    let gone = self.active.swap_remove(i);
                    report(BoostEvent::Gone {
                        tid: gone.tid,
                        comm: gone.comm,
                    });
                    continue;
                }
            }
            if let Some(cycle) = boost.fifo.as_mut() {
                if cycle.next_toggle_ns <= now_ns {
                    let (attr, phase_ns) = if cycle.boosted {
                        (sched::restorable(&boost.saved), p.period_ns - p.runtime_ns)
                    } else {
                        (SchedAttr::fifo(p.fifo_priority), p.runtime_ns)
                    };
                    match scheduler.set_attr(boost.tid, &attr) {
                        Ok(()) => {
                            cycle.boosted = !cycle.boosted;
                            cycle.next_toggle_ns = now_ns + phase_ns;
                        }
                        Err(Errno::SRCH) => {
                            let gone = self.active.swap_remove(i);
                            report(BoostEvent::Gone {
                                tid: gone.tid,
                                comm: gone.comm,
                            });
                            continue;
                        }
                        Err(_) => {
                            let ended = self.active.swap_remove(i);
                            report(restore(scheduler, &ended));
                            continue;
                        }
                    }
                }
            }
            i += 1;
        }
    }

    /// Restores every boosted task now (shutdown).
    pub fn restore_all(
        &mut self,
        scheduler: &mut impl Scheduler,
        mut report: impl FnMut(BoostEvent),
    ) {
        while let Some(boost) = self.active.pop() {
            report(restore(scheduler, &boost));
        }
    }
}

/// Highest SCHED_FIFO priority: the stepping stone of a restore from SCHED_DEADLINE.
const FIFO_PRIORITY_MAX: u32 = 99;

fn restore(scheduler: &mut impl Scheduler, boost: &ActiveBoost) -> BoostEvent {
    let (tid, comm) = (boost.tid, boost.comm);
    let saved_policy = boost.saved.sched_policy;
    let was_rt = saved_policy == sched::SCHED_FIFO || saved_policy == sched::SCHED_RR;
    if boost.fifo.is_none() && was_rt {
        // The kernel does not reschedule a running task that moves from SCHED_DEADLINE into the
        // RT class (`switched_to_rt` returns early for the current task), so a restored FIFO 1
        // task would keep its CPU ahead of the hog that starved it. Lowering an RT priority does
        // reschedule (`prio_changed_rt`): enter the RT class at the top, then step down.
        if let Err(Errno::SRCH) = scheduler.set_attr(tid, &SchedAttr::fifo(FIFO_PRIORITY_MAX)) {
            return BoostEvent::Gone { tid, comm };
        }
    }
    match scheduler.set_attr(tid, &sched::restorable(&boost.saved)) {
        Ok(()) => BoostEvent::Restored { tid, comm },
        Err(Errno::SRCH) => BoostEvent::Gone { tid, comm },
        Err(errno) => BoostEvent::RestoreFailed { tid, comm, errno },
    }
}

fn classify(e: Errno) -> BoostError {
    if e == Errno::SRCH {
        BoostError::Gone
    } else {
        BoostError::Denied(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::sched::{SCHED_DEADLINE, SCHED_FIFO, SCHED_OTHER};
    use std::collections::HashMap;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// Tasks and their attributes; records every set. `refuse_deadline` mimics RT throttling.
    #[derive(Default)]
    struct FakeScheduler {
        tasks: HashMap<Tid, SchedAttr>,
        refuse_deadline: Option<Errno>,
        sets: Vec<(Tid, u32)>,
        /// CPU time per task, ns, as `/proc/<tid>/schedstat` would say.
        cpu_ns: HashMap<Tid, u64>,
        /// Every moment the booster spun to.
        spins: Vec<u64>,
    }

    impl Scheduler for FakeScheduler {
        fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, Errno> {
            self.tasks.get(&tid).copied().ok_or(Errno::SRCH)
        }

        fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno> {
            if attr.sched_policy == SCHED_DEADLINE {
                if let Some(e) = self.refuse_deadline {
                    return Err(e);
                }
            }
            let slot = self.tasks.get_mut(&tid).ok_or(Errno::SRCH)?;
            *slot = *attr;
            self.sets.push((tid, attr.sched_policy));
            Ok(())
        }

        fn cpu_time_ns(&mut self, tid: Tid) -> Option<u64> {
            self.cpu_ns.get(&tid).copied()
        }

        fn spin_until(&mut self, when_ns: u64) -> u64 {
            self.spins.push(when_ns);
            when_ns
        }
    }

    fn fifo1() -> SchedAttr {
        SchedAttr {
            size: 56,
            sched_policy: SCHED_FIFO,
            sched_priority: 1,
            ..SchedAttr::default()
        }
    }

    fn other_nice(nice: i32) -> SchedAttr {
        SchedAttr {
            size: 56,
            sched_policy: SCHED_OTHER,
            sched_nice: nice,
            ..SchedAttr::default()
        }
    }

    fn params(policy: BoostPolicy) -> BoostParams {
        BoostParams {
            policy,
            runtime_ns: 20 * MS,
            period_ns: 100 * MS,
            duration_ns: 3 * S,
            fifo_priority: 98,
            budget: BudgetEnforcement::Kernel,
        }
    }

    fn comm() -> Comm {
        Comm::new(b"victim")
    }

    fn events(b: &mut Booster, s: &mut FakeScheduler, now: u64) -> Vec<BoostEvent> {
        let mut out = Vec::new();
        b.service(s, now, |e| out.push(e));
        out
    }

    #[test]
    fn deadline_boost_then_exact_restore_at_its_deadline() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        assert_eq!(b.boost(&mut s, 7, comm(), S), Ok(BoostPolicy::Deadline));
        let boosted = s.tasks[&7];
        assert_eq!(boosted.sched_policy, SCHED_DEADLINE);
        assert_eq!(boosted.sched_runtime, 20 * MS);
        assert_eq!(boosted.sched_period, 100 * MS);
        assert_eq!(boosted.sched_deadline, 100 * MS);
        assert_eq!(b.next_deadline_ns(), Some(4 * S));
        assert!(events(&mut b, &mut s, 4 * S - 1).is_empty());
        assert_eq!(
            events(&mut b, &mut s, 4 * S),
            vec![BoostEvent::Restored {
                tid: 7,
                comm: comm()
            }]
        );
        assert_eq!(s.tasks[&7], sched::restorable(&fifo1()));
        assert_eq!(b.next_deadline_ns(), None);
    }

    #[test]
    fn a_daemon_enforced_budget_pokes_after_each_runtime_until_the_boost_ends() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        s.cpu_ns.insert(7, 5 * MS);
        let mut b = Booster::new(BoostParams {
            budget: BudgetEnforcement::Daemon,
            ..params(BoostPolicy::Deadline)
        });
        b.boost(&mut s, 7, comm(), S).unwrap();
        let first_wake = b.next_deadline_ns().unwrap();
        assert!(
            first_wake < S + 20 * MS,
            "wakes before the first runtime ends"
        );
        assert!(events(&mut b, &mut s, first_wake - 1).is_empty());
        // Only the clock read when the boost began.
        assert_eq!(s.spins, vec![S]);
        s.spins.clear();
        // The task used its 20 ms: the poke (a 1 ns shorter runtime) ends it, the next one
        // comes in the next period.
        s.cpu_ns.insert(7, 25 * MS);
        s.sets.clear();
        assert!(events(&mut b, &mut s, first_wake).is_empty());
        assert_eq!(s.spins.len(), 1);
        assert!(s.spins[0] > S + 20 * MS && s.spins[0] < S + 21 * MS);
        assert_eq!(s.sets, vec![(7, SCHED_DEADLINE)]);
        assert_eq!(s.tasks[&7].sched_runtime, 20 * MS - 1);
        let second_wake = b.next_deadline_ns().unwrap();
        assert!(second_wake > S + 100 * MS - 1 && second_wake < S + 120 * MS);
        // Poked every period, and restored at the end exactly once.
        let mut now = second_wake;
        let mut cpu = 25 * MS;
        while s.tasks[&7].sched_policy == SCHED_DEADLINE {
            cpu += 20 * MS;
            s.cpu_ns.insert(7, cpu);
            events(&mut b, &mut s, now);
            now = b.next_deadline_ns().unwrap_or(u64::MAX);
        }
        assert_eq!(s.spins.len(), 30);
        assert_eq!(s.tasks[&7], sched::restorable(&fifo1()));
        assert_eq!(b.next_deadline_ns(), None);
    }

    #[test]
    fn a_deadline_task_is_never_boosted() {
        let mut s = FakeScheduler::default();
        let own = SchedAttr::deadline(5 * MS, 10 * MS, 10 * MS);
        s.tasks.insert(7, own);
        for policy in [BoostPolicy::Deadline, BoostPolicy::Fifo] {
            let mut b = Booster::new(params(policy));
            assert_eq!(
                b.boost(&mut s, 7, comm(), S),
                Err(BoostError::AlreadyDeadline)
            );
            assert!(s.sets.is_empty());
            assert_eq!(s.tasks[&7], own);
            assert_eq!(b.next_deadline_ns(), None);
        }
    }

    #[test]
    fn restore_from_deadline_to_rt_steps_down_from_fifo_99() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        s.sets.clear();
        events(&mut b, &mut s, 3 * S);
        assert_eq!(s.sets, vec![(7, SCHED_FIFO), (7, SCHED_FIFO)]);
        assert_eq!(s.tasks[&7], sched::restorable(&fifo1()));
    }

    #[test]
    fn nice_of_a_cfs_task_is_restored() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, other_nice(-5));
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        s.sets.clear();
        events(&mut b, &mut s, 3 * S);
        assert_eq!(s.sets, vec![(7, SCHED_OTHER)]);
        assert_eq!(s.tasks[&7].sched_policy, SCHED_OTHER);
        assert_eq!(s.tasks[&7].sched_nice, -5);
    }

    #[test]
    fn refused_deadline_falls_back_to_fifo() {
        let mut s = FakeScheduler {
            refuse_deadline: Some(Errno::PERM),
            ..FakeScheduler::default()
        };
        s.tasks.insert(7, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        assert_eq!(b.boost(&mut s, 7, comm(), 0), Ok(BoostPolicy::Fifo));
        assert_eq!(b.deadline_refused, Some(Errno::PERM));
        assert_eq!(s.tasks[&7].sched_policy, SCHED_FIFO);
        assert_eq!(s.tasks[&7].sched_priority, 98);
    }

    #[test]
    fn fifo_boost_cycles_runtime_out_of_period_until_it_ends() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Fifo));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        assert_eq!(s.tasks[&7].sched_priority, 98);
        assert_eq!(b.next_deadline_ns(), Some(20 * MS));
        events(&mut b, &mut s, 20 * MS);
        assert_eq!(s.tasks[&7].sched_priority, 1);
        assert_eq!(b.next_deadline_ns(), Some(100 * MS));
        events(&mut b, &mut s, 100 * MS);
        assert_eq!(s.tasks[&7].sched_priority, 98);
        let mut now = 100 * MS;
        while let Some(next) = b.next_deadline_ns() {
            assert!(next > now);
            now = next;
            events(&mut b, &mut s, now);
        }
        assert_eq!(now, 3 * S);
        assert_eq!(s.tasks[&7], sched::restorable(&fifo1()));
    }

    #[test]
    fn task_gone_before_or_during_boost_is_dropped_quietly() {
        let mut s = FakeScheduler::default();
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        assert_eq!(b.boost(&mut s, 9, comm(), 0), Err(BoostError::Gone));
        s.tasks.insert(9, fifo1());
        b.boost(&mut s, 9, comm(), 0).unwrap();
        s.tasks.remove(&9);
        assert_eq!(
            events(&mut b, &mut s, 3 * S),
            vec![BoostEvent::Gone {
                tid: 9,
                comm: comm()
            }]
        );
        assert!(events(&mut b, &mut s, 10 * S).is_empty());
    }

    #[test]
    fn many_boosts_each_keep_their_own_deadline() {
        let mut s = FakeScheduler::default();
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        for tid in 1..=4 {
            s.tasks.insert(tid, fifo1());
            b.boost(&mut s, tid, comm(), tid as u64 * S).unwrap();
        }
        assert!(b.boost(&mut s, 2, comm(), 0) == Err(BoostError::AlreadyBoosted));
        let restored: Vec<usize> = (4..=7)
            .map(|t| events(&mut b, &mut s, t * S).len())
            .collect();
        assert_eq!(restored, vec![1, 1, 1, 1]);
    }

    #[test]
    fn restore_all_on_shutdown() {
        let mut s = FakeScheduler::default();
        let mut b = Booster::new(params(BoostPolicy::Fifo));
        for tid in 1..=3 {
            s.tasks.insert(tid, fifo1());
            b.boost(&mut s, tid, comm(), 0).unwrap();
        }
        let mut n = 0;
        b.restore_all(&mut s, |e| {
            assert!(matches!(e, BoostEvent::Restored { .. }));
            n += 1;
        });
        assert_eq!(n, 3);
        assert!(s.tasks.values().all(|a| a.sched_priority == 1));
    }

    #[test]
    fn table_full_is_an_error_not_a_panic() {
        let mut s = FakeScheduler::default();
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        for tid in 0..Tid::try_from(MAX_ACTIVE_BOOSTS).unwrap() {
            s.tasks.insert(tid, fifo1());
            b.boost(&mut s, tid, comm(), 0).unwrap();
        }
        s.tasks.insert(1000, fifo1());
        assert_eq!(b.boost(&mut s, 1000, comm(), 0), Err(BoostError::TableFull));
    }
}
