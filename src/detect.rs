//! Tracker: decides which waiting tasks are starving.
//! Pure (the clock and the kernel's "when did it last run" come in as arguments) and allocation
//! free after `new`: two fixed tables per monitored CPU.
//!
//! A task is starving when it has been runnable, not running, with an unchanged context-switch
//! count for at least the threshold. Invariant: a wait is never dated before the task became
//! runnable, so nothing is reported early; where the proof is missing, it errs late.
//! - A backend that saw the wait begin (queue_track) gives its start: taken as is.
//! - A task seen waiting in the previous pass with the same switch count, on this CPU or
//!   another monitored one (it migrated), keeps the start it had.
//! - A task the previous pass saw *running* on a monitored CPU, now waiting with its voluntary
//!   switches unchanged, never slept since: its wait began when it last ran, `se.exec_start`.
//!   That is read in the clock of the CPU it last ran on (the `clock_task` domains of two CPUs
//!   differ by their interrupt time since boot), which is the CPU it was seen on when it has
//!   switched only once since (the preemption, there) or never migrated.
//! - Anything else (it slept and woke, it came from an unmonitored CPU, the daemon just
//!   started) is dated from the pass that first saw it waiting: `se.exec_start` is when it
//!   last ran, not when it woke.
//!
//! A fair task on a CPU whose DL-server serves it is tracked but never due (it runs, if
//! little); if the DL-server stops, the wait it had is due at once.

use crate::backend::{
    is_fair_prio, CpuQueue, LastRun, RunningTask, Snapshot, TrackedWait, WaitingTask,
    MAX_WAITING_PER_CPU,
};
use crate::cpuset::CpuSet;
use crate::task::Tid;

/// A task must be seen waiting in two passes at least this far apart before it is reported,
/// so that a single sample (e.g. at startup, with no earlier pass to bound the wait) never
/// boosts a task that merely woke up.
pub const CONFIRMATION_NS: u64 = 100_000_000;

/// A task waiting on a monitored CPU, with when its wait began (monotonic ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingEntry {
    pub task: WaitingTask,
    pub wait_began_ns: u64,
    pub first_seen_ns: u64,
    /// Set once the daemon acted on this wait (boosted, ignored); cleared by progress.
    pub handled: bool,
    /// Not offered again before this moment (monotonic ns; 0: no such bound): a wait that
    /// `-l` reported is reported again one `-g` later while it lasts.
    pub report_again_ns: u64,
}

impl WaitingEntry {
    pub fn waited_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.wait_began_ns)
    }

    /// When this entry becomes reportable: the threshold reached, the sighting confirmed, and
    /// not reported again too soon.
    fn due_at_ns(&self, threshold_ns: u64) -> u64 {
        self.wait_began_ns
            .saturating_add(threshold_ns)
            .max(self.first_seen_ns.saturating_add(CONFIRMATION_NS))
            .max(self.report_again_ns)
    }
}

/// One CPU's waiting tasks.
type Table = heapless::Vec<WaitingEntry, MAX_WAITING_PER_CPU>;

/// The task the previous examination of a CPU saw running there.
#[derive(Clone, Copy, Debug)]
struct SeenRunning {
    task: RunningTask,
    /// Its `/proc/<tid>/sched` then (`nr_voluntary_switches`, `se.nr_migrations`), if it
    /// could be read with the sampled switch count.
    run: Option<LastRun>,
}

/// The waiting tasks of one monitored CPU.
#[derive(Debug)]
pub struct CpuTrack {
    pub cpu: u32,
    pub entries: Table,
    /// The last pass that examined this CPU: any task not then waiting here began its wait later.
    last_examined_ns: Option<u64>,
    running: Option<SeenRunning>,
}

#[derive(Debug)]
pub struct Tracker {
    threshold_ns: u64,
    /// CPUs whose DL-server serves their fair tasks: such a task is never due there (it runs,
    /// if little), whatever it waited, and asks for no pass. Kept current by the loop.
    served_cpus: CpuSet,
    cpus: Vec<CpuTrack>,
    /// The tables being built by [`Tracker::update`], one per CPU, swapped in at its end.
    next: Vec<Table>,
}

impl Tracker {
    /// One table per CPU, in the order of the snapshot's queues. Allocates; call at startup.
    pub fn new(cpus: impl Iterator<Item = u32>, threshold_ns: u64) -> Self {
        let cpus: Vec<CpuTrack> = cpus
            .map(|cpu| CpuTrack {
                cpu,
                entries: Table::new(),
                last_examined_ns: None,
                running: None,
            })
            .collect();
        Tracker {
            threshold_ns,
            served_cpus: CpuSet::empty(),
            next: cpus.iter().map(|_| Table::new()).collect(),
            cpus,
        }
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    /// Tells which CPUs' DL-server serves fair tasks now: their waits there are never due
    /// while it does, and are due again at once when it stops.
    pub fn set_served_cpus(&mut self, cpus: CpuSet) {
        self.served_cpus = cpus;
    }

    pub fn cpus(&self) -> &[CpuTrack] {
        &self.cpus
    }

    /// Folds a new sample taken at `now_ns` into the tables.
    ///
    /// A CPU the sample did not cover forgets its tasks (their waits, if any, are dated from
    /// a later sighting); `last_run(tid)` reads what the kernel says of a task's last run (see
    /// the module documentation for how it is used).
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        now_ns: u64,
        mut last_run: impl FnMut(Tid) -> Option<LastRun>,
    ) {
        // First every CPU's new table, from the previous tables of all CPUs (a task may have
        // moved), then all of them swapped in.
        for ((next, track), queue) in self.next.iter_mut().zip(&self.cpus).zip(&snapshot.queues) {
            debug_assert_eq!(track.cpu, queue.cpu);
            next.clear();
            if !queue.present {
                continue;
            }
            for task in &queue.waiting {
                let entry = match known_wait(&self.cpus, track, task) {
                    Some(previous) => WaitingEntry {
                        task: *task,
                        ..*previous
                    },
                    None => new_wait(
                        &self.cpus,
                        &snapshot.queues,
                        track,
                        task,
                        now_ns,
                        &mut last_run,
                    ),
                };
                // Both tables have the queue's capacity: this push cannot fail.
                let _ = next.push(entry);
            }
        }
        for ((next, track), queue) in self
            .next
            .iter_mut()
            .zip(&mut self.cpus)
            .zip(&snapshot.queues)
        {
            core::mem::swap(&mut track.entries, next);
            if !queue.present {
                track.running = None;
                continue;
            }
            track.running = queue
                .running
                .map(|task| seen_running(track.running, task, &mut last_run));
            track.last_examined_ns = Some(now_ns);
        }
    }

    /// Tells the next sample which waits each CPU's table holds, so that a full queue keeps
    /// those not yet acted on ([`CpuQueue::offer`]): a polled backend could not date them
    /// again, and dropping them would restart their clocks.
    pub fn share_tracked(&self, snapshot: &mut Snapshot) {
        for (queue, track) in snapshot.queues.iter_mut().zip(&self.cpus) {
            debug_assert_eq!(track.cpu, queue.cpu);
            queue.tracked.clear();
            for entry in &track.entries {
                // Both tables have the queue's capacity: this push cannot fail.
                let _ = queue.tracked.push(TrackedWait {
                    tid: entry.task.tid,
                    switches: entry.task.switches,
                    acted: entry.handled,
                });
            }
        }
    }

    /// Forgets every waiting task, as a pass that found every CPU idle must. The bounds stay:
    /// a task seen waiting later began after the idle moment, so after the last examination.
    pub fn forget_all(&mut self) {
        for track in &mut self.cpus {
            track.entries.clear();
            track.running = None;
        }
    }

    /// Calls `act(cpu, entry)` for every unhandled task that is starving at `now_ns`.
    /// `act` marks the entry handled (or leaves it, to be offered again next pass).
    pub fn for_each_starving(&mut self, now_ns: u64, mut act: impl FnMut(u32, &mut WaitingEntry)) {
        let (threshold_ns, served) = (self.threshold_ns, &self.served_cpus);
        for track in &mut self.cpus {
            for entry in track.entries.iter_mut() {
                if is_due(entry, track.cpu, served, threshold_ns, now_ns) {
                    act(track.cpu, entry);
                }
            }
        }
    }

    /// Between two samples, asks `still_waiting` about every unhandled task due at `now_ns`
    /// and forgets those whose wait ended (a wait they began since is due no sooner than the
    /// next sample, which sees it). Returns false when only a sample can tell: more than
    /// `most` are due, or one cannot be checked (`None`; those not yet asked are kept).
    pub fn recheck_due(
        &mut self,
        now_ns: u64,
        most: usize,
        mut still_waiting: impl FnMut(u32, &WaitingTask) -> Option<bool>,
    ) -> bool {
        let (threshold_ns, served) = (self.threshold_ns, &self.served_cpus);
        let due = self
            .cpus
            .iter()
            .flat_map(|t| t.entries.iter().map(move |e| (t.cpu, e)))
            .filter(|&(cpu, e)| is_due(e, cpu, served, threshold_ns, now_ns))
            .count();
        if due > most {
            return false;
        }
        let mut known = true;
        for track in &mut self.cpus {
            let cpu = track.cpu;
            track.entries.retain(|entry| {
                if !known || !is_due(entry, cpu, served, threshold_ns, now_ns) {
                    return true;
                }
                still_waiting(cpu, &entry.task).unwrap_or_else(|| {
                    known = false;
                    true
                })
            });
        }
        known
    }

    /// The earliest moment an unhandled task can become starving: when the next pass is owed.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.cpus
            .iter()
            .flat_map(|t| t.entries.iter().map(move |e| (t.cpu, e)))
            .filter(|&(cpu, e)| is_due(e, cpu, &self.served_cpus, self.threshold_ns, u64::MAX))
            .map(|(_, e)| e.due_at_ns(self.threshold_ns))
            .min()
    }
}

/// Whether `entry`, waiting on `cpu`, is starving at `now_ns` (`u64::MAX`: ever, as long as
/// nothing changes): not handled yet, past its due moment, and not served by `cpu`'s DL-server.
fn is_due(entry: &WaitingEntry, cpu: u32, served: &CpuSet, threshold_ns: u64, now_ns: u64) -> bool {
    !entry.handled
        && entry.due_at_ns(threshold_ns) <= now_ns
        && !(is_fair_prio(entry.task.prio) && served.contains(cpu))
}

/// The entry of a task seen waiting in the previous pass with the same switch count: on this
/// CPU first, else on another monitored CPU it has since left.
fn known_wait<'a>(
    cpus: &'a [CpuTrack],
    track: &'a CpuTrack,
    task: &WaitingTask,
) -> Option<&'a WaitingEntry> {
    let same = |e: &&WaitingEntry| e.task.tid == task.tid && e.task.switches == task.switches;
    track.entries.iter().find(same).or_else(|| {
        cpus.iter()
            .filter(|other| other.cpu != track.cpu)
            .find_map(|other| other.entries.iter().find(same))
    })
}

/// The entry of a task not seen waiting before (see the module documentation).
fn new_wait(
    cpus: &[CpuTrack],
    queues: &[CpuQueue],
    track: &CpuTrack,
    task: &WaitingTask,
    now_ns: u64,
    last_run: &mut impl FnMut(Tid) -> Option<LastRun>,
) -> WaitingEntry {
    let wait_began_ns = match task.waiting_since_ns {
        // Exact: the backend saw the wait begin.
        Some(since_ns) => since_ns,
        None => preempted_at_ns(cpus, queues, task, now_ns, last_run).map_or(now_ns, |began| {
            began.max(track.last_examined_ns.unwrap_or(0))
        }),
    };
    WaitingEntry {
        task: *task,
        wait_began_ns,
        first_seen_ns: task.waiting_since_ns.unwrap_or(now_ns),
        handled: false,
        report_again_ns: 0,
    }
}

/// When `task` was preempted, if that is provable: the previous examination saw it running
/// on a monitored CPU, and since then it never slept (same voluntary switches) and last ran on
/// that CPU: it switched exactly once (the preemption, there) or never migrated. Its
/// `se.exec_start` is then in that CPU's `clock_task` domain, which this sample of the CPU
/// ties to `now_ns`. (Interrupt time spent there since it ran makes the wait come out short:
/// late, never early.)
fn preempted_at_ns(
    cpus: &[CpuTrack],
    queues: &[CpuQueue],
    task: &WaitingTask,
    now_ns: u64,
    last_run: &mut impl FnMut(Tid) -> Option<LastRun>,
) -> Option<u64> {
    let (then, ran_on) = cpus.iter().zip(queues).find_map(|(track, queue)| {
        let seen = track.running.filter(|seen| seen.task.tid == task.tid)?;
        Some((seen.run?, queue))
    })?;
    if !ran_on.present || ran_on.clock_task_ns == 0 {
        return None;
    }
    let run = last_run(task.tid)?;
    let slept = run.voluntary_switches != then.voluntary_switches;
    let switched_once = then.switches.checked_add(1) == Some(run.switches);
    let stayed = run.migrations == then.migrations;
    if run.switches != task.switches || slept || !(switched_once || stayed) {
        return None;
    }
    if run.exec_start_ns == 0 || run.switches == then.switches {
        return None;
    }
    let waited_ns = ran_on.clock_task_ns.saturating_sub(run.exec_start_ns);
    Some(now_ns.saturating_sub(waited_ns))
}

/// The record of the task now running on a CPU; its voluntary switches are read only when it
/// is not the one already recorded (same task, same switch count: nothing changed).
fn seen_running(
    previous: Option<SeenRunning>,
    task: RunningTask,
    last_run: &mut impl FnMut(Tid) -> Option<LastRun>,
) -> SeenRunning {
    match previous {
        Some(previous) if previous.task == task => previous,
        _ => SeenRunning {
            task,
            run: last_run(task.tid).filter(|run| run.switches == task.switches),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Comm;

    const S: u64 = 1_000_000_000;
    const THRESHOLD: u64 = 3 * S;

    fn task(tid: Tid, switches: u64) -> WaitingTask {
        WaitingTask {
            tid,
            comm: Comm::new(b"victim"),
            switches,
            prio: 98,
            waiting_since_ns: None,
            run_counts: None,
        }
    }

    fn snapshot(cpus: &[u32], waiting: &[(u32, WaitingTask)]) -> Snapshot {
        let mut snap = Snapshot::new(cpus.iter().copied());
        for q in &mut snap.queues {
            q.present = true;
        }
        for (cpu, t) in waiting {
            snap.queue_mut(*cpu).unwrap().offer(*t, 0);
        }
        snap
    }

    fn unknown(_: Tid) -> Option<LastRun> {
        None
    }

    /// `snapshot` with `running` on the CPU of the first queue and its `clock_task` at `clock`.
    fn with_running(mut snap: Snapshot, tid: Tid, switches: u64, clock: u64) -> Snapshot {
        snap.queues[0].running = Some(RunningTask { tid, switches });
        snap.queues[0].clock_task_ns = clock;
        snap
    }

    /// What `/proc/<tid>/sched` says: last ran at `exec_start`, `switches`, `voluntary`,
    /// never migrated.
    fn kernel_says(
        exec_start_ns: u64,
        switches: u64,
        voluntary_switches: u64,
    ) -> impl FnMut(Tid) -> Option<LastRun> {
        kernel_says_migrated(exec_start_ns, switches, voluntary_switches, 0)
    }

    fn kernel_says_migrated(
        exec_start_ns: u64,
        switches: u64,
        voluntary_switches: u64,
        migrations: u64,
    ) -> impl FnMut(Tid) -> Option<LastRun> {
        move |_| {
            Some(LastRun {
                exec_start_ns,
                switches,
                voluntary_switches,
                migrations,
            })
        }
    }

    fn starving(tracker: &mut Tracker, now: u64) -> Vec<(u32, Tid, u64)> {
        let mut out = Vec::new();
        tracker.for_each_starving(now, |cpu, e| out.push((cpu, e.task.tid, e.waited_ns(now))));
        out
    }

    #[test]
    fn reports_exactly_at_the_threshold() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        let snap = snapshot(&[1], &[(1, task(10, 5))]);
        tr.update(&snap, 10 * S, unknown);
        assert_eq!(tr.next_due_ns(), Some(13 * S));
        tr.update(&snap, 13 * S - 1, unknown);
        assert!(starving(&mut tr, 13 * S - 1).is_empty());
        tr.update(&snap, 13 * S, unknown);
        assert_eq!(starving(&mut tr, 13 * S), vec![(1, 10, THRESHOLD)]);
    }

    /// Seen running on CPU 1 at 5 s (5 switches, 2 of them voluntary, no migration), then
    /// waiting at 10 s with `switches`, `voluntary` and `migrations` by `/proc`, having last
    /// run at 99.2 s of CPU 1's clock_task, which now reads 100 s: when its wait is due.
    fn due_after(switches: u64, voluntary: u64, migrations: u64) -> Option<u64> {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        let running = with_running(snapshot(&[1], &[]), 10, 5, 0);
        tr.update(&running, 5 * S, kernel_says(0, 5, 2));
        let waiting = with_running(snapshot(&[1], &[(1, task(10, switches))]), 20, 1, 100 * S);
        let run = kernel_says_migrated(99_200_000_000, switches, voluntary, migrations);
        tr.update(&waiting, 10 * S, run);
        tr.next_due_ns()
    }

    /// Waiting since 9.2 s: due at 12.2 s.
    const DUE_FROM_LAST_RUN: Option<u64> = Some(12_200_000_000);
    /// First seen waiting at 10 s: due at 13 s.
    const DUE_FROM_FIRST_SIGHTING: Option<u64> = Some(13 * S);

    #[test]
    fn a_task_seen_running_then_preempted_is_dated_from_when_it_last_ran() {
        assert_eq!(due_after(6, 2, 0), DUE_FROM_LAST_RUN);
    }

    #[test]
    fn a_task_that_slept_and_woke_is_dated_from_its_first_sighting() {
        // One more switch, but a voluntary one: it slept at 99.2 s and woke at some unknown
        // moment before this pass.
        assert_eq!(due_after(6, 3, 0), DUE_FROM_FIRST_SIGHTING);
    }

    #[test]
    fn a_task_preempted_again_and_again_on_its_cpu_is_dated_from_when_it_last_ran() {
        // Preempted several times since (e.g. by the DL-server), never slept, never moved.
        assert_eq!(due_after(9, 2, 0), DUE_FROM_LAST_RUN);
    }

    #[test]
    fn a_task_that_ran_elsewhere_since_it_was_seen_running_is_dated_from_its_first_sighting() {
        // Two switches and two migrations since: it may have last run on another CPU, whose
        // clock differs.
        assert_eq!(due_after(7, 2, 2), DUE_FROM_FIRST_SIGHTING);
    }

    #[test]
    fn a_task_preempted_once_then_moved_back_is_dated_from_when_it_last_ran() {
        // One switch (the preemption, on CPU 1), then moved away and back while waiting.
        assert_eq!(due_after(6, 2, 2), DUE_FROM_LAST_RUN);
    }

    #[test]
    fn a_task_preempted_on_one_cpu_and_moved_is_dated_in_the_first_cpus_clock() {
        let mut tr = Tracker::new([1, 2].into_iter(), THRESHOLD);
        let running = with_running(snapshot(&[1, 2], &[]), 10, 5, 0);
        tr.update(&running, 5 * S, kernel_says(0, 5, 2));
        // Preempted on CPU 1 at its clock_task 99.2 s, now waiting on CPU 2, whose clock
        // reads 7 s more (other interrupt time since boot): CPU 1's clock dates it.
        let mut waiting = snapshot(&[1, 2], &[(2, task(10, 6))]);
        waiting.queues[0].clock_task_ns = 100 * S;
        waiting.queues[1].clock_task_ns = 107 * S;
        let run = kernel_says_migrated(99_200_000_000, 6, 2, 1);
        tr.update(&waiting, 10 * S, run);
        assert_eq!(tr.next_due_ns(), Some(12_200_000_000));
    }

    #[test]
    fn a_task_that_just_woke_has_not_waited_since_its_sleep() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[]), 9 * S, unknown);
        // Last ran an hour ago (it slept): its wait counts from this first sighting.
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            10 * S,
            kernel_says(1, 5, 5),
        );
        assert_eq!(tr.next_due_ns(), Some(13 * S));
    }

    #[test]
    fn a_task_waiting_at_startup_is_dated_from_the_first_pass() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        let snap = snapshot(&[1], &[(1, task(10, 5))]);
        tr.update(&snap, 100 * S, kernel_says(1, 5, 0));
        assert!(starving(&mut tr, 100 * S).is_empty());
        assert_eq!(tr.next_due_ns(), Some(103 * S));
        tr.update(&snap, 103 * S, unknown);
        assert_eq!(starving(&mut tr, 103 * S), vec![(1, 10, THRESHOLD)]);
    }

    #[test]
    fn a_task_that_migrated_while_waiting_keeps_its_wait_start() {
        let mut tr = Tracker::new([1, 2].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1, 2], &[(1, task(10, 5))]), 10 * S, unknown);
        // Same switch count on CPU 2: it never ran, its wait goes on.
        tr.update(&snapshot(&[1, 2], &[(2, task(10, 5))]), 11 * S, unknown);
        assert!(tr.cpus()[0].entries.is_empty());
        assert_eq!(tr.cpus()[1].entries[0].wait_began_ns, 10 * S);
        assert_eq!(tr.next_due_ns(), Some(13 * S));
    }

    #[test]
    fn progress_restarts_the_wait() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[(1, task(10, 5))]), 0, unknown);
        tr.update(&snapshot(&[1], &[(1, task(10, 6))]), 2 * S, unknown);
        tr.update(&snapshot(&[1], &[(1, task(10, 6))]), 4 * S, unknown);
        assert!(starving(&mut tr, 4 * S).is_empty());
        assert_eq!(tr.next_due_ns(), Some(5 * S));
    }

    #[test]
    fn missing_cpu_forgets_its_tasks() {
        let mut tr = Tracker::new([1, 2].into_iter(), THRESHOLD);
        let snap = snapshot(&[1, 2], &[(1, task(10, 5)), (2, task(20, 1))]);
        tr.update(&snap, 0, unknown);
        assert_eq!(tr.cpus()[1].entries.len(), 1);
        let mut snap_missing = snapshot(&[1, 2], &[(1, task(10, 5))]);
        snap_missing.queues[1].present = false;
        tr.update(&snap_missing, 2 * S, unknown);
        assert!(tr.cpus()[1].entries.is_empty());
    }

    #[test]
    fn forget_all_dates_later_waits_from_their_first_sighting() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[(1, task(10, 5))]), 5 * S, unknown);
        tr.forget_all();
        assert_eq!(tr.next_due_ns(), None);
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            6 * S,
            kernel_says(1, 5, 0),
        );
        assert_eq!(tr.next_due_ns(), Some(9 * S));
    }

    #[test]
    fn many_cpus_report_independently_and_once() {
        let cpus: Vec<u32> = (0..8).collect();
        let waiting: Vec<(u32, WaitingTask)> =
            cpus.iter().map(|&c| (c, task(100 + c as Tid, 1))).collect();
        let mut tr = Tracker::new(cpus.iter().copied(), THRESHOLD);
        let snap = snapshot(&cpus, &waiting);
        tr.update(&snap, 0, unknown);
        tr.update(&snap, THRESHOLD, unknown);
        let mut seen = Vec::new();
        tr.for_each_starving(THRESHOLD, |cpu, e| {
            seen.push(cpu);
            e.handled = true;
        });
        assert_eq!(seen, cpus);
        tr.update(&snap, THRESHOLD + S, unknown);
        assert!(starving(&mut tr, THRESHOLD + S).is_empty());
        assert_eq!(tr.next_due_ns(), None);
    }

    #[test]
    fn an_exact_wait_start_needs_no_bound_or_confirmation() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[]), 9 * S, unknown);
        let exact = WaitingTask {
            waiting_since_ns: Some(8 * S),
            ..task(10, 5)
        };
        // First seen at 11 s, waiting since 8 s (before the 9 s pass): due at 11 s, now.
        tr.update(&snapshot(&[1], &[(1, exact)]), 11 * S, unknown);
        assert_eq!(tr.next_due_ns(), Some(11 * S));
        assert_eq!(starving(&mut tr, 11 * S), vec![(1, 10, THRESHOLD)]);
    }

    #[test]
    fn rechecks_forget_ended_waits_and_stop_at_the_first_unknown() {
        let mut tr = Tracker::new([1, 2].into_iter(), THRESHOLD);
        let since = |tid, at| WaitingTask {
            waiting_since_ns: Some(at),
            ..task(tid, 5)
        };
        // Due at 11 s: 10 (CPU 1), 20 and 21 (CPU 2); 30 only at 13 s.
        let waiting = [(1, since(10, 8 * S)), (2, since(20, 8 * S))];
        let waiting = [
            &waiting[..],
            &[(2, since(21, 8 * S)), (2, since(30, 10 * S))],
        ]
        .concat();
        tr.update(&snapshot(&[1, 2], &waiting), 10 * S, unknown);
        // More due than allowed: nothing asked, nothing changed.
        assert!(!tr.recheck_due(11 * S, 2, |_, _| panic!("asked")));
        let mut asked = Vec::new();
        let answers = |cpu: u32, t: &WaitingTask| {
            asked.push((cpu, t.tid));
            match t.tid {
                10 => Some(true),
                20 => Some(false),
                _ => None,
            }
        };
        assert!(!tr.recheck_due(11 * S, 3, answers));
        assert_eq!(asked, vec![(1, 10), (2, 20), (2, 21)]);
        // 20's wait ended; 21, unknown, and 30, not due, are kept for the sample.
        let tids = |cpu: usize| tr.cpus()[cpu].entries.iter().map(|e| e.task.tid).collect();
        assert_eq!((tids(0), tids(1)), (vec![10], vec![21, 30]));
        assert!(tr.recheck_due(11 * S, 3, |_, _| Some(true)));
        assert_eq!(
            starving(&mut tr, 11 * S),
            vec![(1, 10, THRESHOLD), (2, 21, THRESHOLD)]
        );
    }

    #[test]
    fn a_task_that_left_the_queue_is_dropped() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[(1, task(10, 5))]), 0, unknown);
        tr.update(&snapshot(&[1], &[]), S, unknown);
        assert_eq!(tr.next_due_ns(), None);
    }
}
