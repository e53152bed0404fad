//! Booster: gives starving tasks a short SCHED_DEADLINE (or SCHED_FIFO) boost and puts their
//! exact original attributes back when it ends. Never sleeps: every boost has its own restore
//! deadline, and the loop calls [`Booster::service`] when the earliest one is due.
//! Invariant: every task in the table is restored, by `service` when its boost ends or by
//! `restore_all` at shutdown, unless the kernel says it is gone, or it is no longer the task
//! that was boosted (its tid reused) or no longer has the boost's attributes (someone changed
//! them): those are left alone and reported. A restore or SCHED_FIFO toggle the kernel refuses
//! is retried, [`RESTORE_ATTEMPTS`] times at most, each failure reported. With a [`Journal`],
//! each boost is recorded there before it begins and cleared after it ends.

use crate::boost_budget::{self, BudgetEnforcement, BudgetWatch, SPIN_BEFORE_POKE_NS};
use crate::journal::{self, Journal};
use crate::sys::proc_files;
use crate::sys::process;
use crate::sys::sched::{self, SchedAttr};
use crate::task::{Comm, Tid};
use rustix::io::Errno;

/// Most tasks boosted at the same time; more wait for a free slot (counted, logged).
pub const MAX_ACTIVE_BOOSTS: usize = 64;

/// How often a restore or a SCHED_FIFO toggle the kernel refuses is tried in all.
pub const RESTORE_ATTEMPTS: u8 = 5;
/// How long after a refused restore or toggle the next attempt comes.
pub const RETRY_DELAY_NS: u64 = 100_000_000;

/// The scheduler calls the booster makes; the kernel in production, a fake in tests.
pub trait Scheduler {
    fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, Errno>;
    fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno>;
    /// When the task started (`/proc/<tid>/stat` field 22): with the tid, its identity.
    fn start_time(&mut self, tid: Tid) -> Result<u64, Errno>;
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

    fn start_time(&mut self, tid: Tid) -> Result<u64, Errno> {
        proc_files::read_start_time(tid).ok_or(Errno::SRCH)
    }

    fn cpu_time_ns(&mut self, tid: Tid) -> Option<u64> {
        proc_files::read_schedstat(tid).map(|s| s.cpu_time_ns)
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

/// Whether a boosted task is still the one boosted, with the attributes it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    Same,
    Gone,
    /// Another task has the tid now.
    Replaced,
    /// Same task, other attributes (these): someone changed them during the boost.
    Changed(SchedAttr),
}

/// Checks that `tid` is still the task that started at `start_time` and has the attributes
/// `expected` describes: the test before every restore and toggle.
pub fn identify(
    scheduler: &mut impl Scheduler,
    tid: Tid,
    start_time: u64,
    expected: &SchedAttr,
) -> Identity {
    match scheduler.start_time(tid) {
        Ok(now) if now == start_time => {}
        Ok(_) => return Identity::Replaced,
        Err(_) => return Identity::Gone,
    }
    match scheduler.get_attr(tid) {
        Ok(now) if same_scheduling(&now, expected) => Identity::Same,
        Ok(now) => Identity::Changed(now),
        Err(_) => Identity::Gone,
    }
}

/// Whether `a` and `b` schedule alike: the same policy and the parameters that policy uses.
fn same_scheduling(a: &SchedAttr, b: &SchedAttr) -> bool {
    a.sched_policy == b.sched_policy
        && match a.sched_policy {
            sched::SCHED_FIFO | sched::SCHED_RR => a.sched_priority == b.sched_priority,
            sched::SCHED_DEADLINE => {
                (a.sched_runtime, a.sched_deadline, a.sched_period)
                    == (b.sched_runtime, b.sched_deadline, b.sched_period)
            }
            _ => a.sched_nice == b.sched_nice,
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
    /// The restore failed [`RESTORE_ATTEMPTS`] times: the task keeps what it has.
    RestoreFailed {
        tid: Tid,
        comm: Comm,
        errno: Errno,
    },
    /// A restore (or, `restore: false`, a SCHED_FIFO toggle) failed; tried again later.
    Retrying {
        tid: Tid,
        comm: Comm,
        errno: Errno,
        attempt: u8,
        restore: bool,
    },
    /// The tid belongs to another task now: nothing is done to it.
    Replaced {
        tid: Tid,
        comm: Comm,
    },
    /// Someone changed the task's policy during the boost (to `policy`): left alone.
    Changed {
        tid: Tid,
        comm: Comm,
        policy: u32,
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
    start_time: u64,
    saved: SchedAttr,
    /// What the booster last gave the task: what it must still have at the next change.
    expected: SchedAttr,
    ends_ns: u64,
    fifo: Option<FifoCycle>,
    /// Failed attempts in a row at the current restore or toggle.
    failures: u8,
    /// The boost has ended; its restore is being retried.
    restoring: bool,
    journal_slot: Option<usize>,
    /// SCHED_DEADLINE boosts whose runtime the daemon ends (`BudgetEnforcement::Daemon`).
    budget: Option<BudgetWatch>,
}

/// A boost whose runtime the daemon ends is restored this long before the period that would
/// begin at its end: the kernel replenishes the task then, and a restore that came a little
/// later (a timed wake-up) let it run unpoked until the restore (134 us of a 20 us runtime, a
/// CI run). The task used its last period's runtime long before: it loses nothing.
const RESTORE_AHEAD_NS: u64 = 1_000_000;

impl ActiveBoost {
    fn next_deadline_ns(&self) -> u64 {
        let restore_ns = self.restore_wake_ns();
        match (self.fifo, self.poke_due_ns()) {
            _ if self.restoring => restore_ns,
            (Some(cycle), _) => cycle.next_toggle_ns.min(restore_ns),
            (None, Some(wake_ns)) => wake_ns.min(restore_ns),
            (None, None) => restore_ns,
        }
    }

    /// When the loop must wake to restore the task: a boost whose runtime the daemon ends is
    /// restored on time, as its pokes are (woken early, then spinning to `ends_ns`).
    fn restore_wake_ns(&self) -> u64 {
        match self.budget {
            Some(_) if !self.restoring => self.ends_ns.saturating_sub(SPIN_BEFORE_POKE_NS),
            _ => self.ends_ns,
        }
    }

    /// When the loop must wake for the next budget poke, if one comes before the boost ends.
    fn poke_due_ns(&self) -> Option<u64> {
        self.budget
            .filter(|watch| watch.next_poke_ns() < self.ends_ns)
            .map(|watch| watch.wake_ns())
    }

    /// The event for a task found to be no longer ours.
    fn left_alone(&self, identity: Identity) -> BoostEvent {
        let (tid, comm) = (self.tid, self.comm);
        match identity {
            Identity::Replaced => BoostEvent::Replaced { tid, comm },
            Identity::Changed(now) => BoostEvent::Changed {
                tid,
                comm,
                policy: now.sched_policy,
            },
            Identity::Same | Identity::Gone => BoostEvent::Gone { tid, comm },
        }
    }
}

pub struct Booster {
    params: BoostParams,
    active: heapless::Vec<ActiveBoost, MAX_ACTIVE_BOOSTS>,
    journal: Option<Journal>,
    /// Set when the kernel refused SCHED_DEADLINE and a boost fell back to SCHED_FIFO.
    pub deadline_refused: Option<Errno>,
}

impl Booster {
    pub fn new(params: BoostParams) -> Self {
        Booster {
            params,
            active: heapless::Vec::new(),
            journal: None,
            deadline_refused: None,
        }
    }

    /// Records every boost from now on in `journal`.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Stops recording boosts and gives the journal back (to be closed).
    pub fn take_journal(&mut self) -> Option<Journal> {
        self.journal.take()
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
        let start_time = scheduler.start_time(tid).map_err(classify)?;
        let p = self.params;
        let mut policy = p.policy;
        let fifo_attr = SchedAttr::fifo(p.fifo_priority);
        let mut expected = match policy {
            BoostPolicy::Deadline => SchedAttr::deadline(p.runtime_ns, p.period_ns, p.period_ns),
            BoostPolicy::Fifo => fifo_attr,
        };
        let journal_slot = self.journal.as_mut().and_then(|journal| {
            journal.record(&journal::Entry {
                tid,
                start_time,
                comm,
                saved,
                expected,
            })
        });
        // Read before the boost, while the task waits: its CPU time is exact then.
        let cpu_ns = (p.budget == BudgetEnforcement::Daemon && policy == BoostPolicy::Deadline)
            .then(|| scheduler.cpu_time_ns(tid))
            .flatten();
        let result = self.apply(scheduler, tid, &mut policy, &mut expected, journal_slot);
        if let Err(e) = result {
            self.forget(journal_slot);
            return Err(classify(e));
        }
        // The task's periods start now, not at `now_ns` (the loop's pass began then, maybe
        // milliseconds ago): read the clock (spinning to a past time).
        let mut ends_ns = now_ns + p.duration_ns;
        let budget = cpu_ns
            .filter(|_| policy == BoostPolicy::Deadline)
            .map(|cpu| {
                let boosted_ns = scheduler.spin_until(now_ns);
                ends_ns = (boosted_ns + p.duration_ns).saturating_sub(RESTORE_AHEAD_NS);
                BudgetWatch::start(boosted_ns, cpu, p.runtime_ns)
            });
        let fifo = (policy == BoostPolicy::Fifo).then_some(FifoCycle {
            boosted: true,
            next_toggle_ns: now_ns + p.runtime_ns,
        });
        let boost = ActiveBoost {
            tid,
            comm,
            start_time,
            saved,
            expected,
            ends_ns,
            fifo,
            failures: 0,
            restoring: false,
            journal_slot,
            budget,
        };
        // Capacity checked above.
        let _ = self.active.push(boost);
        Ok(policy)
    }

    /// Gives `tid` its boost, `expected`: SCHED_DEADLINE refused (EPERM, EBUSY, EINVAL:
    /// throttling, affinity, admission) falls back to SCHED_FIFO, noted in the journal first.
    fn apply(
        &mut self,
        scheduler: &mut impl Scheduler,
        tid: Tid,
        policy: &mut BoostPolicy,
        expected: &mut SchedAttr,
        journal_slot: Option<usize>,
    ) -> Result<(), Errno> {
        if *policy == BoostPolicy::Deadline {
            match scheduler.set_attr(tid, expected) {
                Ok(()) => return Ok(()),
                Err(e @ (Errno::PERM | Errno::BUSY | Errno::INVAL)) => {
                    self.deadline_refused = Some(e);
                    *policy = BoostPolicy::Fifo;
                    *expected = SchedAttr::fifo(self.params.fifo_priority);
                    self.note_expected(journal_slot, expected);
                }
                Err(e) => return Err(e),
            }
        }
        scheduler.set_attr(tid, expected)
    }

    fn note_expected(&mut self, slot: Option<usize>, expected: &SchedAttr) {
        if let (Some(journal), Some(slot)) = (self.journal.as_mut(), slot) {
            journal.set_expected(slot, expected);
        }
    }

    fn forget(&mut self, slot: Option<usize>) {
        if let (Some(journal), Some(slot)) = (self.journal.as_mut(), slot) {
            journal.clear(slot);
        }
    }

    /// Removes boost `i` from the table and the journal.
    fn end(&mut self, i: usize) -> ActiveBoost {
        let ended = self.active.swap_remove(i);
        self.forget(ended.journal_slot);
        ended
    }

    /// The earliest moment [`Booster::service`] has work: a restore or a SCHED_FIFO toggle.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.active.iter().map(ActiveBoost::next_deadline_ns).min()
    }

    /// Ends every boost whose time is up and advances SCHED_FIFO cycles, after checking that
    /// each task is still the one boosted, with the attributes it was given.
    pub fn service(
        &mut self,
        scheduler: &mut impl Scheduler,
        now_ns: u64,
        mut report: impl FnMut(BoostEvent),
    ) {
        let mut i = 0;
        while i < self.active.len() {
            let boost = self.active[i];
            let ending = boost.restore_wake_ns() <= now_ns;
            let toggling = !ending
                && !boost.restoring
                && boost
                    .fifo
                    .is_some_and(|cycle| cycle.next_toggle_ns <= now_ns);
            let poking =
                !ending && !boost.restoring && boost.poke_due_ns().is_some_and(|t| t <= now_ns);
            if !ending && !toggling && !poking {
                i += 1;
                continue;
            }
            match identify(scheduler, boost.tid, boost.start_time, &boost.expected) {
                Identity::Same => {}
                identity => {
                    let ended = self.end(i);
                    report(ended.left_alone(identity));
                    continue;
                }
            }
            let outcome = if ending {
                if boost.budget.is_some() && !boost.restoring {
                    scheduler.spin_until(boost.ends_ns);
                }
                self.restore_at(i, scheduler)
            } else if toggling {
                self.toggle_at(i, scheduler, now_ns)
            } else {
                self.poke_at(i, scheduler)
            };
            match outcome {
                Ok(None) => i += 1,
                Ok(Some(event)) => report(event),
                Err(errno) => {
                    let boost = &mut self.active[i];
                    boost.failures += 1;
                    let (tid, comm, attempt) = (boost.tid, boost.comm, boost.failures);
                    if attempt < RESTORE_ATTEMPTS {
                        if ending {
                            boost.restoring = true;
                            boost.ends_ns = now_ns + RETRY_DELAY_NS;
                        } else if let Some(cycle) = boost.fifo.as_mut() {
                            cycle.next_toggle_ns = now_ns + RETRY_DELAY_NS;
                        }
                        let (expected, slot) = (boost.expected, boost.journal_slot);
                        self.note_expected(slot, &expected);
                        report(BoostEvent::Retrying {
                            tid,
                            comm,
                            errno,
                            attempt,
                            restore: ending,
                        });
                        i += 1;
                    } else if ending {
                        self.end(i);
                        report(BoostEvent::RestoreFailed { tid, comm, errno });
                    } else {
                        // Toggles keep failing: end the boost, with restore attempts of its own.
                        boost.failures = 0;
                        boost.ends_ns = now_ns;
                    }
                }
            }
        }
    }

    /// Restores boost `i`; on success (or a gone task) removes it and returns its event.
    fn restore_at(
        &mut self,
        i: usize,
        scheduler: &mut impl Scheduler,
    ) -> Result<Option<BoostEvent>, Errno> {
        let boost = &mut self.active[i];
        let (tid, comm, saved) = (boost.tid, boost.comm, boost.saved);
        match put_back(scheduler, tid, &mut boost.expected, &saved) {
            Ok(()) => {
                self.end(i);
                Ok(Some(BoostEvent::Restored { tid, comm }))
            }
            Err(Errno::SRCH) => {
                self.end(i);
                Ok(Some(BoostEvent::Gone { tid, comm }))
            }
            Err(errno) => Err(errno),
        }
    }

    /// Switches the SCHED_FIFO boost `i` to its other phase: boosted for `runtime` of every
    /// `period`, its own attributes the rest of the time.
    fn toggle_at(
        &mut self,
        i: usize,
        scheduler: &mut impl Scheduler,
        now_ns: u64,
    ) -> Result<Option<BoostEvent>, Errno> {
        let p = self.params;
        let boost = &mut self.active[i];
        let Some(cycle) = boost.fifo.as_mut() else {
            return Ok(None);
        };
        let (attr, phase_ns) = if cycle.boosted {
            (sched::restorable(&boost.saved), p.period_ns - p.runtime_ns)
        } else {
            (SchedAttr::fifo(p.fifo_priority), p.runtime_ns)
        };
        match scheduler.set_attr(boost.tid, &attr) {
            Ok(()) => {
                cycle.boosted = !cycle.boosted;
                cycle.next_toggle_ns = now_ns + phase_ns;
                boost.expected = attr;
                boost.failures = 0;
                let slot = boost.journal_slot;
                self.note_expected(slot, &attr);
                Ok(None)
            }
            Err(Errno::SRCH) => {
                let gone = self.end(i);
                Ok(Some(BoostEvent::Gone {
                    tid: gone.tid,
                    comm: gone.comm,
                }))
            }
            Err(errno) => Err(errno),
        }
    }

    /// Ends the runtime of the SCHED_DEADLINE boost `i` in this period ([`boost_budget::poke`]).
    /// A poke the kernel refuses is not retried: the next one comes as planned.
    fn poke_at(
        &mut self,
        i: usize,
        scheduler: &mut impl Scheduler,
    ) -> Result<Option<BoostEvent>, Errno> {
        let p = self.params;
        let boost = &mut self.active[i];
        let (tid, slot) = (boost.tid, boost.journal_slot);
        let Some(watch) = boost.budget.as_mut() else {
            return Ok(None);
        };
        let (runtime_ns, period_ns) = (p.runtime_ns, p.period_ns);
        match boost_budget::poke(
            scheduler,
            tid,
            watch,
            &mut boost.expected,
            runtime_ns,
            period_ns,
        ) {
            Err(Errno::SRCH) => {
                let gone = self.end(i);
                Ok(Some(BoostEvent::Gone {
                    tid: gone.tid,
                    comm: gone.comm,
                }))
            }
            _ => {
                let expected = boost.expected;
                self.note_expected(slot, &expected);
                Ok(None)
            }
        }
    }

    /// Restores every boosted task now (shutdown), each checked first and tried up to
    /// [`RESTORE_ATTEMPTS`] times; one that still fails stays in the journal, for the next
    /// start to try again.
    pub fn restore_all(
        &mut self,
        scheduler: &mut impl Scheduler,
        mut report: impl FnMut(BoostEvent),
    ) {
        while let Some(mut boost) = self.active.pop() {
            let (tid, comm) = (boost.tid, boost.comm);
            let identity = identify(scheduler, tid, boost.start_time, &boost.expected);
            if identity != Identity::Same {
                self.forget(boost.journal_slot);
                report(boost.left_alone(identity));
                continue;
            }
            let mut result = Ok(());
            for _ in 0..RESTORE_ATTEMPTS {
                result = put_back(scheduler, tid, &mut boost.expected, &boost.saved);
                if !matches!(result, Err(e) if e != Errno::SRCH) {
                    break;
                }
            }
            match result {
                Ok(()) => report(BoostEvent::Restored { tid, comm }),
                Err(Errno::SRCH) => report(BoostEvent::Gone { tid, comm }),
                Err(errno) => {
                    report(BoostEvent::RestoreFailed { tid, comm, errno });
                    continue;
                }
            }
            self.forget(boost.journal_slot);
        }
    }
}

/// Highest SCHED_FIFO priority.
const FIFO_PRIORITY_MAX: u32 = 99;

/// The SCHED_DEADLINE parameters a boost drops to before it leaves the class: the kernel's
/// least runtime (1,024 ns) in a period past 2^30 ns, a bandwidth that rounds to zero
/// (`to_ratio` shifts the runtime by 20 bits). A task that leaves SCHED_DEADLINE while not
/// queued (asleep, or already inactive: the common case for a rescued kthread) keeps its
/// bandwidth counted in the root domain's `total_bw` for ever (`switched_from_dl`; measured
/// on 6.18: +20,971 per default boost of a sleeping task, until admission control refused
/// every SCHED_DEADLINE request on the machine, this daemon's and the appliance's own).
/// Lowering the bandwidth within the class is accounted at once, so only zero is left behind.
pub fn release_step() -> SchedAttr {
    SchedAttr::deadline(1 << 10, 1 << 31, 1 << 31)
}

/// The RT priority a restore from SCHED_DEADLINE to `saved`, an RT policy, passes through
/// (see [`put_back`]), if any.
fn rt_step(saved: &SchedAttr) -> Option<SchedAttr> {
    let was_rt = saved.sched_policy == sched::SCHED_FIFO || saved.sched_policy == sched::SCHED_RR;
    (was_rt && saved.sched_priority < FIFO_PRIORITY_MAX)
        .then(|| SchedAttr::fifo(saved.sched_priority + 1))
}

/// Whether `now` is one of the states [`put_back`] passes through on its way to `saved`: a
/// daemon that died there left the task in it, and the next one finishes the restore.
pub fn is_restore_step(now: &SchedAttr, saved: &SchedAttr) -> bool {
    same_scheduling(now, &release_step())
        || rt_step(saved).is_some_and(|step| same_scheduling(now, &step))
}

/// Gives `tid`, which has `current` (set by the booster), its `saved` attributes back;
/// `current` follows every change that went through, so a retry knows what the task has.
pub fn put_back(
    scheduler: &mut impl Scheduler,
    tid: Tid,
    current: &mut SchedAttr,
    saved: &SchedAttr,
) -> Result<(), Errno> {
    if current.sched_policy == sched::SCHED_DEADLINE {
        let release = release_step();
        match scheduler.set_attr(tid, &release) {
            Ok(()) => *current = release,
            Err(Errno::SRCH) => return Err(Errno::SRCH),
            // Refused (an admin's shorter `sched_deadline_period_max_us`, a narrowed
            // affinity): only the bandwidth's accounting is lost; the restore goes on.
            Err(_) => {}
        }
        if let Some(step) = rt_step(saved) {
            // The kernel does not reschedule a running task that moves from SCHED_DEADLINE
            // into the RT class (`switched_to_rt` returns early for the current task), so a
            // restored FIFO 1 task would keep its CPU ahead of the hog that starved it.
            // Lowering an RT priority does reschedule (`prio_changed_rt`): enter the RT class
            // one priority above, then step down. No higher: a task waiting for its next
            // period (throttled) would run at the stepping stone's priority, ahead of the
            // task that starved it, until the second call (measured through SCHED_FIFO 99: up
            // to 25 us of CPU past the boost's budget).
            scheduler.set_attr(tid, &step)?;
            *current = step;
        }
    }
    let restored = sched::restorable(saved);
    scheduler.set_attr(tid, &restored)?;
    *current = restored;
    Ok(())
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
        /// Start times other than 0.
        start_times: HashMap<Tid, u64>,
        /// Refuse this many restores to a fair or RT policy with this errno.
        refuse_restores: Option<(u32, Errno)>,
        /// CPU time per task, ns, as `/proc/<tid>/schedstat` would say.
        cpu_ns: HashMap<Tid, u64>,
        /// Every moment the booster spun to.
        spins: Vec<u64>,
        /// The priority of every set, as `sets`.
        priorities: Vec<u32>,
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
            if let Some((left, e)) = self.refuse_restores.as_mut() {
                let restore = attr.sched_policy != SCHED_DEADLINE && attr.sched_priority != 98;
                if *left > 0 && restore {
                    *left -= 1;
                    return Err(*e);
                }
            }
            let slot = self.tasks.get_mut(&tid).ok_or(Errno::SRCH)?;
            *slot = *attr;
            self.sets.push((tid, attr.sched_policy));
            self.priorities.push(attr.sched_priority);
            Ok(())
        }

        fn start_time(&mut self, tid: Tid) -> Result<u64, Errno> {
            if !self.tasks.contains_key(&tid) {
                return Err(Errno::SRCH);
            }
            Ok(self.start_times.get(&tid).copied().unwrap_or(0))
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
        // 30 pokes, then the restore, spun to just before the period after the boost.
        assert_eq!(s.spins.len(), 31);
        assert_eq!(s.spins.last(), Some(&(S + 3 * S - RESTORE_AHEAD_NS)));
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
    fn restore_from_deadline_to_rt_steps_down_from_one_priority_above() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        s.sets.clear();
        s.priorities.clear();
        events(&mut b, &mut s, 3 * S);
        assert_eq!(
            s.sets,
            vec![(7, SCHED_DEADLINE), (7, SCHED_FIFO), (7, SCHED_FIFO)]
        );
        assert_eq!(s.priorities, vec![0, 2, 1]);
        assert_eq!(s.tasks[&7], sched::restorable(&fifo1()));
    }

    #[test]
    fn a_deadline_boost_gives_up_its_bandwidth_before_it_leaves_the_class() {
        let release = release_step();
        // The kernel's `to_ratio`: runtime << BW_SHIFT (20) / period.
        assert_eq!((release.sched_runtime << 20) / release.sched_period, 0);
        assert_eq!(release.sched_runtime, 1024, "the kernel's least runtime");
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, other_nice(0));
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        s.sets.clear();
        events(&mut b, &mut s, 3 * S);
        assert_eq!(s.sets[0], (7, SCHED_DEADLINE));
        assert_eq!(s.tasks[&7], other_nice(0));

        // Refused (a shorter `sched_deadline_period_max_us`): the restore goes on.
        b.boost(&mut s, 7, comm(), 3 * S).unwrap();
        s.refuse_deadline = Some(Errno::INVAL);
        s.sets.clear();
        let restored = events(&mut b, &mut s, 6 * S);
        assert_eq!(
            restored,
            vec![BoostEvent::Restored {
                tid: 7,
                comm: comm()
            }]
        );
        assert_eq!(s.sets, vec![(7, SCHED_OTHER)]);
    }

    #[test]
    fn nice_of_a_cfs_task_is_restored() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, other_nice(-5));
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        s.sets.clear();
        events(&mut b, &mut s, 3 * S);
        assert_eq!(s.sets, vec![(7, SCHED_DEADLINE), (7, SCHED_OTHER)]);
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
    fn a_reused_tid_is_left_alone() {
        for policy in [BoostPolicy::Deadline, BoostPolicy::Fifo] {
            let mut s = FakeScheduler::default();
            s.tasks.insert(7, fifo1());
            let mut b = Booster::new(params(policy));
            b.boost(&mut s, 7, comm(), 0).unwrap();
            // The victim exits and a new task gets tid 7 (started later, any policy).
            s.start_times.insert(7, 1234);
            s.sets.clear();
            let tid = 7;
            let event = if policy == BoostPolicy::Fifo {
                events(&mut b, &mut s, 20 * MS)
            } else {
                events(&mut b, &mut s, 3 * S)
            };
            assert_eq!(event, vec![BoostEvent::Replaced { tid, comm: comm() }]);
            assert!(s.sets.is_empty(), "{policy:?}: {:?}", s.sets);
            assert_eq!(b.next_deadline_ns(), None);
        }
    }

    #[test]
    fn a_policy_changed_during_the_boost_is_left_alone() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        let theirs = SchedAttr::fifo(30);
        s.tasks.insert(7, theirs);
        s.sets.clear();
        let policy = SCHED_FIFO;
        assert_eq!(
            events(&mut b, &mut s, 3 * S),
            vec![BoostEvent::Changed {
                tid: 7,
                comm: comm(),
                policy
            }]
        );
        assert!(s.sets.is_empty());
        assert_eq!(s.tasks[&7], theirs);
    }

    #[test]
    fn a_task_replaced_during_a_daemon_enforced_budget_is_never_poked() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        s.cpu_ns.insert(7, 0);
        let mut b = Booster::new(BoostParams {
            budget: BudgetEnforcement::Daemon,
            ..params(BoostPolicy::Deadline)
        });
        b.boost(&mut s, 7, comm(), 0).unwrap();
        let first_wake = b.next_deadline_ns().unwrap();
        assert!(first_wake < 20 * MS);
        // A poke keeps the task recognised: the booster expects the runtime it set.
        events(&mut b, &mut s, first_wake);
        assert_eq!(s.tasks[&7].sched_runtime, 20 * MS - 1);
        // The tid is another task's now.
        s.start_times.insert(7, 42);
        s.sets.clear();
        let wake = b.next_deadline_ns().unwrap();
        assert!(wake < 3 * S, "a poke is due before the boost ends");
        assert_eq!(
            events(&mut b, &mut s, wake),
            vec![BoostEvent::Replaced {
                tid: 7,
                comm: comm()
            }]
        );
        assert!(s.sets.is_empty());
        assert_eq!(b.next_deadline_ns(), None);
    }

    #[test]
    fn a_refused_restore_is_retried_then_given_up_with_a_report_each_time() {
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, other_nice(0));
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.boost(&mut s, 7, comm(), 0).unwrap();
        s.refuse_restores = Some((2, Errno::AGAIN));
        let mut now = 3 * S;
        for attempt in 1..=2 {
            let retry = BoostEvent::Retrying {
                tid: 7,
                comm: comm(),
                errno: Errno::AGAIN,
                attempt,
                restore: true,
            };
            assert_eq!(events(&mut b, &mut s, now), vec![retry]);
            assert_eq!(b.next_deadline_ns(), Some(now + RETRY_DELAY_NS));
            now += RETRY_DELAY_NS;
        }
        assert_eq!(
            events(&mut b, &mut s, now),
            vec![BoostEvent::Restored {
                tid: 7,
                comm: comm()
            }]
        );
        assert_eq!(s.tasks[&7].sched_policy, SCHED_OTHER);

        b.boost(&mut s, 7, comm(), now).unwrap();
        s.refuse_restores = Some((u32::MAX, Errno::AGAIN));
        now += 3 * S;
        let mut reports = Vec::new();
        while let Some(next) = b.next_deadline_ns() {
            now = now.max(next);
            reports.extend(events(&mut b, &mut s, now));
        }
        assert_eq!(reports.len(), usize::from(RESTORE_ATTEMPTS));
        assert!(matches!(
            reports.last(),
            Some(BoostEvent::RestoreFailed {
                errno: Errno::AGAIN,
                ..
            })
        ));
    }

    #[test]
    fn the_journal_holds_each_boost_until_its_restore() {
        let dir = std::env::temp_dir().join(format!("stalld-boost-journal-{}", std::process::id()));
        let path = dir.join(journal::JOURNAL_FILE);
        let mut s = FakeScheduler::default();
        s.tasks.insert(7, fifo1());
        s.start_times.insert(7, 77);
        s.tasks.insert(8, fifo1());
        let mut b = Booster::new(params(BoostPolicy::Deadline));
        b.set_journal(Journal::open(&path).unwrap());
        b.boost(&mut s, 7, comm(), 0).unwrap();
        b.boost(&mut s, 8, comm(), S).unwrap();
        let held = |b: &mut Booster| {
            let mut tids: Vec<(Tid, u64)> = b
                .journal
                .as_mut()
                .unwrap()
                .leftovers()
                .into_iter()
                .map(|(_, e)| (e.tid, e.start_time))
                .collect();
            tids.sort();
            tids
        };
        assert_eq!(held(&mut b), vec![(7, 77), (8, 0)]);
        let entry = b.journal.as_mut().unwrap().leftovers()[0].1;
        assert_eq!(entry.saved, fifo1());
        assert_eq!(entry.expected, s.tasks[&7]);
        events(&mut b, &mut s, 3 * S);
        assert_eq!(held(&mut b), vec![(8, 0)]);
        b.restore_all(&mut s, |_| {});
        assert!(held(&mut b).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
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
