//! Tracker: decides which waiting tasks are starving.
//! Pure (the clock and the kernel's "when did it last run" come in as arguments) and allocation
//! free after `new`: one fixed table per monitored CPU.
//!
//! A task is starving when it has been runnable, not running, with an unchanged context-switch
//! count for at least the threshold. When it is first seen waiting, its wait is counted from the
//! moment it last ran (`se.exec_start`, in the CPU's `clock_task` domain), but never from before
//! the previous pass that examined its CPU without finding it waiting there: a task that slept
//! for an hour and woke a moment ago has not waited an hour. Both bounds err late, never early.

use crate::backend::{Snapshot, WaitingTask, MAX_WAITING_PER_CPU};
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
    /// Set once the daemon acted on this wait (boosted, ignored, logged); cleared by progress.
    pub handled: bool,
}

impl WaitingEntry {
    pub fn waited_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.wait_began_ns)
    }

    /// When this entry becomes reportable: the threshold reached and the sighting confirmed.
    fn due_at_ns(&self, threshold_ns: u64) -> u64 {
        (self.wait_began_ns + threshold_ns).max(self.first_seen_ns + CONFIRMATION_NS)
    }
}

/// The waiting tasks of one monitored CPU.
#[derive(Debug)]
pub struct CpuTrack {
    pub cpu: u32,
    pub entries: heapless::Vec<WaitingEntry, MAX_WAITING_PER_CPU>,
    /// The last pass that examined this CPU: any task not then waiting here began its wait later.
    last_examined_ns: Option<u64>,
}

/// How a pass treats one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVerdict {
    /// Compare its waiting tasks with the previous pass.
    Examine,
    /// The CPU ran idle since the last pass (nothing on it can starve) or was not sampled:
    /// forget its tasks. Their waits began after the idle moment, so the older bound holds.
    Skip,
}

#[derive(Debug)]
pub struct Tracker {
    threshold_ns: u64,
    cpus: Vec<CpuTrack>,
    scratch: heapless::Vec<WaitingEntry, MAX_WAITING_PER_CPU>,
}

impl Tracker {
    /// One table per CPU, in the order of the snapshot's queues. Allocates; call at startup.
    pub fn new(cpus: impl Iterator<Item = u32>, threshold_ns: u64) -> Self {
        Tracker {
            threshold_ns,
            cpus: cpus
                .map(|cpu| CpuTrack {
                    cpu,
                    entries: heapless::Vec::new(),
                    last_examined_ns: None,
                })
                .collect(),
            scratch: heapless::Vec::new(),
        }
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    pub fn cpus(&self) -> &[CpuTrack] {
        &self.cpus
    }

    /// Folds a new sample taken at `now_ns` into the tables.
    ///
    /// `verdict(cpu)` says whether to examine a CPU; `waited_ns(tid, clock_task_ns)` is how long
    /// a newly seen task has waited since it last ran, if the kernel says.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        now_ns: u64,
        mut verdict: impl FnMut(u32) -> CpuVerdict,
        mut waited_ns: impl FnMut(Tid, u64) -> Option<u64>,
    ) {
        for (track, queue) in self.cpus.iter_mut().zip(&snapshot.queues) {
            debug_assert_eq!(track.cpu, queue.cpu);
            if !queue.present || verdict(track.cpu) == CpuVerdict::Skip {
                track.entries.clear();
                continue;
            }
            self.scratch.clear();
            for task in &queue.waiting {
                let known = track
                    .entries
                    .iter()
                    .find(|e| e.task.tid == task.tid && e.task.switches == task.switches);
                let entry = match known {
                    Some(previous) => WaitingEntry {
                        task: *task,
                        ..*previous
                    },
                    None => match task.waiting_since_ns {
                        // Exact: the backend saw the wait begin.
                        Some(since_ns) => WaitingEntry {
                            task: *task,
                            wait_began_ns: since_ns,
                            first_seen_ns: since_ns,
                            handled: false,
                        },
                        None => {
                            let began_by_kernel = waited_ns(task.tid, queue.clock_task_ns)
                                .map_or(now_ns, |waited| now_ns.saturating_sub(waited));
                            let not_waiting_before = track.last_examined_ns.unwrap_or(0);
                            WaitingEntry {
                                task: *task,
                                wait_began_ns: began_by_kernel.max(not_waiting_before),
                                first_seen_ns: now_ns,
                                handled: false,
                            }
                        }
                    },
                };
                // Both tables have the queue's capacity: this push cannot fail.
                let _ = self.scratch.push(entry);
            }
            core::mem::swap(&mut track.entries, &mut self.scratch);
            track.last_examined_ns = Some(now_ns);
        }
    }

    /// Forgets every waiting task, as a pass that found every CPU idle must. The bounds stay:
    /// a task seen waiting later began after the idle moment, so after the last examination.
    pub fn forget_all(&mut self) {
        for track in &mut self.cpus {
            track.entries.clear();
        }
    }

    /// Calls `act(cpu, entry)` for every unhandled task that is starving at `now_ns`.
    /// `act` marks the entry handled (or leaves it, to be offered again next pass).
    pub fn for_each_starving(&mut self, now_ns: u64, mut act: impl FnMut(u32, &mut WaitingEntry)) {
        let threshold_ns = self.threshold_ns;
        for track in &mut self.cpus {
            for entry in track.entries.iter_mut() {
                if !entry.handled && entry.due_at_ns(threshold_ns) <= now_ns {
                    act(track.cpu, entry);
                }
            }
        }
    }

    /// The earliest moment an unhandled task can become starving: when the next pass is owed.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.cpus
            .iter()
            .flat_map(|t| t.entries.iter())
            .filter(|e| !e.handled)
            .map(|e| e.due_at_ns(self.threshold_ns))
            .min()
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
        }
    }

    fn snapshot(cpus: &[u32], waiting: &[(u32, WaitingTask)]) -> Snapshot {
        let mut snap = Snapshot::new(cpus.iter().copied());
        for q in &mut snap.queues {
            q.present = true;
        }
        for (cpu, t) in waiting {
            snap.queue_mut(*cpu).unwrap().push(*t);
        }
        snap
    }

    fn examine_all(_: u32) -> CpuVerdict {
        CpuVerdict::Examine
    }

    fn unknown(_: Tid, _: u64) -> Option<u64> {
        None
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
        tr.update(&snap, 10 * S, examine_all, unknown);
        assert_eq!(tr.next_due_ns(), Some(13 * S));
        tr.update(&snap, 13 * S - 1, examine_all, unknown);
        assert!(starving(&mut tr, 13 * S - 1).is_empty());
        tr.update(&snap, 13 * S, examine_all, unknown);
        assert_eq!(starving(&mut tr, 13 * S), vec![(1, 10, THRESHOLD)]);
    }

    #[test]
    fn counts_the_wait_from_when_the_task_last_ran() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        let snap = snapshot(&[1], &[(1, task(10, 5))]);
        tr.update(&snap, 0, examine_all, unknown);
        let snap_empty = snapshot(&[1], &[]);
        tr.update(&snap_empty, 9 * S, examine_all, unknown);
        // Seen at 10 s, kernel says it last ran 0.8 s before: due at 9.2 + 3 s.
        tr.update(&snap, 10 * S, examine_all, |_, _| Some(800_000_000));
        assert_eq!(tr.next_due_ns(), Some(12_200_000_000));
    }

    #[test]
    fn a_task_that_just_woke_has_not_waited_since_its_sleep() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[]), 9 * S, examine_all, unknown);
        // Last ran an hour ago (it slept), but was not waiting at the 9 s pass.
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            10 * S,
            examine_all,
            |_, _| Some(3600 * S),
        );
        assert_eq!(tr.next_due_ns(), Some(12 * S));
    }

    #[test]
    fn first_pass_needs_a_confirming_pass() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        let snap = snapshot(&[1], &[(1, task(10, 5))]);
        tr.update(&snap, 100 * S, examine_all, |_, _| Some(50 * S));
        assert!(starving(&mut tr, 100 * S).is_empty());
        assert_eq!(tr.next_due_ns(), Some(100 * S + CONFIRMATION_NS));
        tr.update(&snap, 100 * S + CONFIRMATION_NS, examine_all, unknown);
        let got = starving(&mut tr, 100 * S + CONFIRMATION_NS);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, 50 * S + CONFIRMATION_NS);
    }

    #[test]
    fn progress_restarts_the_wait() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            0,
            examine_all,
            unknown,
        );
        tr.update(
            &snapshot(&[1], &[(1, task(10, 6))]),
            2 * S,
            examine_all,
            unknown,
        );
        tr.update(
            &snapshot(&[1], &[(1, task(10, 6))]),
            4 * S,
            examine_all,
            unknown,
        );
        assert!(starving(&mut tr, 4 * S).is_empty());
        assert_eq!(tr.next_due_ns(), Some(5 * S));
    }

    #[test]
    fn idle_or_missing_cpu_forgets_its_tasks() {
        let mut tr = Tracker::new([1, 2].into_iter(), THRESHOLD);
        let snap = snapshot(&[1, 2], &[(1, task(10, 5)), (2, task(20, 1))]);
        tr.update(&snap, 0, examine_all, unknown);
        tr.update(
            &snap,
            S,
            |cpu| {
                if cpu == 1 {
                    CpuVerdict::Skip
                } else {
                    CpuVerdict::Examine
                }
            },
            unknown,
        );
        assert!(tr.cpus()[0].entries.is_empty());
        assert_eq!(tr.cpus()[1].entries.len(), 1);
        let mut snap_missing = snapshot(&[1, 2], &[(1, task(10, 5))]);
        snap_missing.queues[1].present = false;
        tr.update(&snap_missing, 2 * S, examine_all, unknown);
        assert!(tr.cpus()[1].entries.is_empty());
    }

    #[test]
    fn forget_all_keeps_the_not_waiting_before_bound() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            5 * S,
            examine_all,
            unknown,
        );
        tr.forget_all();
        assert_eq!(tr.next_due_ns(), None);
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            6 * S,
            examine_all,
            |_, _| Some(60 * S),
        );
        assert_eq!(tr.next_due_ns(), Some(8 * S));
    }

    #[test]
    fn many_cpus_report_independently_and_once() {
        let cpus: Vec<u32> = (0..8).collect();
        let waiting: Vec<(u32, WaitingTask)> =
            cpus.iter().map(|&c| (c, task(100 + c as Tid, 1))).collect();
        let mut tr = Tracker::new(cpus.iter().copied(), THRESHOLD);
        let snap = snapshot(&cpus, &waiting);
        tr.update(&snap, 0, examine_all, unknown);
        tr.update(&snap, THRESHOLD, examine_all, unknown);
        let mut seen = Vec::new();
        tr.for_each_starving(THRESHOLD, |cpu, e| {
            seen.push(cpu);
            e.handled = true;
        });
        assert_eq!(seen, cpus);
        tr.update(&snap, THRESHOLD + S, examine_all, unknown);
        assert!(starving(&mut tr, THRESHOLD + S).is_empty());
        assert_eq!(tr.next_due_ns(), None);
    }

    #[test]
    fn an_exact_wait_start_needs_no_bound_or_confirmation() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(&snapshot(&[1], &[]), 9 * S, examine_all, unknown);
        let exact = WaitingTask {
            waiting_since_ns: Some(8 * S),
            ..task(10, 5)
        };
        // First seen at 11 s, waiting since 8 s (before the 9 s pass): due at 11 s, now.
        tr.update(&snapshot(&[1], &[(1, exact)]), 11 * S, examine_all, unknown);
        assert_eq!(tr.next_due_ns(), Some(11 * S));
        assert_eq!(starving(&mut tr, 11 * S), vec![(1, 10, THRESHOLD)]);
    }

    #[test]
    fn a_task_that_left_the_queue_is_dropped() {
        let mut tr = Tracker::new([1].into_iter(), THRESHOLD);
        tr.update(
            &snapshot(&[1], &[(1, task(10, 5))]),
            0,
            examine_all,
            unknown,
        );
        tr.update(&snapshot(&[1], &[]), S, examine_all, unknown);
        assert_eq!(tr.next_due_ns(), None);
    }
}
