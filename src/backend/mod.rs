//! Detection backends: each fills the same fixed per-CPU run-queue tables ([`Snapshot`]).
//! Sampling allocates nothing; tables are sized once at startup.
//!
//! The table of backends ([`backends!`] below) is the one place that lists them: `-b`, the
//! usage text, the fallback order and [`AnyBackend`] all come from it. The rules every backend
//! shares (what is real-time, what is fair, how a sample starts) live here once; what an
//! unknown `se.exec_start` (0) means is [`LastRun`]'s to say and the detector's to judge.

#![warn(missing_docs)]

pub mod procfs;
#[cfg(feature = "bpf")]
pub mod queue_track;
pub mod sched_debug;
pub mod select;

use core::fmt;

use crate::cpuset::CpuSet;
pub use crate::sys::proc_files::{LastRun, Schedstat};
use crate::task::{Comm, Tid};

/// Kernel priorities on sched_debug's scale: SCHED_DEADLINE -1, real-time 0..=99, fair
/// 100..=139. Below this is real-time (or DEADLINE).
pub const MAX_RT_PRIO: i32 = 100;

/// Whether `prio` is a real-time (SCHED_FIFO/RR) task's: the class `rt_nr_running` counts.
pub fn is_rt_prio(prio: i32) -> bool {
    (0..MAX_RT_PRIO).contains(&prio)
}

/// Whether `prio` is a fair (SCHED_OTHER/BATCH/IDLE) task's: the class the DL-server serves.
pub fn is_fair_prio(prio: i32) -> bool {
    prio >= MAX_RT_PRIO
}

/// Most waiting (runnable, not running) tasks kept per CPU in one sample; more are counted
/// in [`CpuQueue::overflowed`], never silently dropped, and [`CpuQueue::offer`] decides which
/// ones are kept.
pub const MAX_WAITING_PER_CPU: usize = 64;

/// A wait the detector tracked on a CPU after the previous sample, so that the next sample of
/// that CPU keeps it first ([`CpuQueue::offer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedWait {
    /// The thread's id.
    pub tid: Tid,
    /// Its context switches when the wait was first seen: the same wait while unchanged.
    pub switches: u64,
    /// The detector already acted on it (boosted, ignored, logged).
    pub acted: bool,
}

/// Where a task stands when a full queue must choose (lower is kept first): a wait the
/// detector tracks and has not acted on keeps its place (dropping it would restart its clock
/// on the polled backends), then waits it does not track yet, then those it already acted on
/// (which must not hold a slot for ever while others starve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    TrackedPending = 0,
    Untracked = 1,
    TrackedActed = 2,
}

/// Bits of a rank below the [`Standing`]: a backend's order key is capped to them.
const RANK_KEY_BITS: u32 = 62;
const RANK_KEY_MAX: u64 = (1 << RANK_KEY_BITS) - 1;

/// A task that is runnable on a CPU but not the one running there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingTask {
    /// The thread's id.
    pub tid: Tid,
    /// The thread's own name.
    pub comm: Comm,
    /// Context switches so far (`nvcsw + nivcsw`); unchanged means the task made no progress.
    pub switches: u64,
    /// Kernel priority as sched_debug prints it (see [`MAX_RT_PRIO`]).
    pub prio: i32,
    /// When its wait began (monotonic ns), if the backend knows it exactly: the detector then
    /// takes it as is, without bounds or confirmation.
    pub waiting_since_ns: Option<u64>,
    /// How much it had run when seen waiting, if the backend read that: the wait goes on for
    /// as long as `/proc/<tid>/schedstat` says the same ([`Backend::still_waiting`]).
    pub run_counts: Option<Schedstat>,
}

/// The task a CPU was running when it was sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunningTask {
    /// Its thread id.
    pub tid: Tid,
    /// Context switches so far (`nvcsw + nivcsw`).
    pub switches: u64,
}

/// One monitored CPU's run queue as last sampled.
#[derive(Clone, Debug, Default)]
pub struct CpuQueue {
    /// The CPU this queue belongs to.
    pub cpu: u32,
    /// The task running on the CPU, when the backend can tell.
    pub running: Option<RunningTask>,
    /// The CPU's `clock_task` when sampled, ns; `se.exec_start` is in this clock domain.
    pub clock_task_ns: u64,
    /// Runnable real-time tasks (`.rt_nr_running`), for the verbose pass line.
    pub rt_nr_running: u32,
    /// Its waiting tasks, in the order [`CpuQueue::offer`] keeps them (first kept first).
    pub waiting: heapless::Vec<WaitingTask, MAX_WAITING_PER_CPU>,
    /// The rank of each of `waiting` (same index), ascending.
    ranks: heapless::Vec<u64, MAX_WAITING_PER_CPU>,
    /// Waiting tasks that did not fit in `waiting` during this sample.
    pub overflowed: u32,
    /// False when the backend found no block for this CPU (offline, or not in the file).
    pub present: bool,
    /// The detector's waits on this CPU after the previous sample; kept by [`CpuQueue::clear`].
    pub tracked: heapless::Vec<TrackedWait, MAX_WAITING_PER_CPU>,
    /// Where [`CpuQueue::rotation_key`] starts counting; kept by [`CpuQueue::clear`].
    rotation_from: Tid,
}

impl CpuQueue {
    /// An empty queue of `cpu`.
    pub fn new(cpu: u32) -> Self {
        CpuQueue {
            cpu,
            ..CpuQueue::default()
        }
    }

    /// Empties the queue before a new sample, keeping its CPU number, the detector's tracked
    /// waits and the rotation.
    pub fn clear(&mut self) {
        let tracked = core::mem::take(&mut self.tracked);
        let rotation_from = self.rotation_from;
        *self = CpuQueue {
            tracked,
            rotation_from,
            ..CpuQueue::new(self.cpu)
        };
    }

    /// The rank `offer` gives `tid` (with `switches`) and the backend's order `key`: lower is
    /// kept first.
    pub fn rank(&self, tid: Tid, switches: u64, key: u64) -> u64 {
        let standing = match self
            .tracked
            .iter()
            .find(|t| t.tid == tid && t.switches == switches)
        {
            Some(t) if t.acted => Standing::TrackedActed,
            Some(_) => Standing::TrackedPending,
            None => Standing::Untracked,
        };
        ((standing as u64) << RANK_KEY_BITS) | key.min(RANK_KEY_MAX)
    }

    /// Offers a waiting task, with the backend's order `key` (lower first: its wait start
    /// where the backend knows it, else [`CpuQueue::rotation_key`]). A full queue keeps the
    /// best ranks ([`CpuQueue::rank`]) and counts every task it drops in `overflowed`.
    pub fn offer(&mut self, task: WaitingTask, key: u64) {
        let rank = self.rank(task.tid, task.switches, key);
        let at = self.ranks.partition_point(|&r| r <= rank);
        if self.waiting.is_full() {
            self.overflowed = self.overflowed.saturating_add(1);
            if at == self.waiting.len() {
                return;
            }
            self.waiting.pop();
            self.ranks.pop();
        }
        // Room was made above: neither insert can fail.
        let _ = self.waiting.insert(at, task);
        let _ = self.ranks.insert(at, rank);
    }

    /// An order key that rotates: `tid`'s distance past where the last overflowing sample's
    /// untracked tasks ended, so that tasks dropped by one sample come first in the next.
    pub fn rotation_key(&self, tid: Tid) -> u64 {
        // Tids are positive: the wrapped difference, read unsigned, is the distance onwards.
        u64::from(tid.wrapping_sub(self.rotation_from) as u32)
    }

    /// After a sample that used [`CpuQueue::rotation_key`]: when tasks were dropped, the next
    /// sample starts after the last untracked task this one kept.
    pub fn advance_rotation(&mut self) {
        if self.overflowed == 0 {
            return;
        }
        let last_kept = self
            .ranks
            .iter()
            .filter(|&&r| r >> RANK_KEY_BITS == Standing::Untracked as u64)
            .map(|&r| r & RANK_KEY_MAX)
            .max();
        if let Some(distance) = last_kept.and_then(|d| u32::try_from(d).ok()) {
            self.rotation_from = self
                .rotation_from
                .wrapping_add(distance as Tid)
                .wrapping_add(1);
        }
    }
}

/// The monitored CPUs' run queues, one [`CpuQueue`] each, in ascending CPU order.
/// Allocated once at startup; sampling only overwrites it.
#[derive(Debug)]
pub struct Snapshot {
    /// One queue per monitored CPU.
    pub queues: Vec<CpuQueue>,
}

impl Snapshot {
    /// One empty queue per CPU of `cpus` (ascending).
    pub fn new(cpus: impl Iterator<Item = u32>) -> Self {
        Snapshot {
            queues: cpus.map(CpuQueue::new).collect(),
        }
    }

    /// Empties every queue before a sample. `present`: whether every monitored CPU counts as
    /// seen (backends that find CPUs one by one set [`CpuQueue::present`] themselves).
    pub fn reset(&mut self, present: bool) {
        for queue in &mut self.queues {
            queue.clear();
            queue.present = present;
        }
    }

    /// The queue of `cpu`, if it is monitored.
    pub fn queue_mut(&mut self, cpu: u32) -> Option<&mut CpuQueue> {
        self.queues
            .binary_search_by_key(&cpu, |q| q.cpu)
            .ok()
            .map(|i| &mut self.queues[i])
    }
}

/// Why a sample failed; the loop logs it and tries again next pass.
#[derive(Debug)]
pub enum SampleError {
    /// A read failed.
    Io(rustix::io::Errno),
    /// The source could not be understood (reason for the log).
    Format(&'static str),
}

/// When the loop must sample a backend again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cadence {
    /// Every poll interval: the backend only sees what is waiting when sampled.
    Poll,
    /// Within one threshold: wait starts are exact, so a task that starts waiting after a
    /// sample cannot reach the threshold before the sample's time plus the threshold.
    Exact,
}

/// A source of run-queue samples. No method has a default: every backend states each
/// behaviour, and [`AnyBackend`] forwards each one, checked by the compiler.
pub trait Backend {
    /// Which backend this is; its name comes from the table.
    fn kind(&self) -> BackendKind;

    /// `sched_debug`, `queue_track`, ...: the name users pass to `-b` and see in the log.
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Overwrites `snapshot` with the current waiting tasks of its CPUs.
    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError>;

    /// When `tid` last ran and how often it slept (`/proc/<tid>/sched`), as close as possible
    /// to the latest sample. `None` when unknown (task gone, file unreadable); the detector
    /// then counts a wait from when it first saw it.
    fn last_run(&mut self, tid: Tid) -> Option<LastRun>;

    /// How soon the loop must sample again after the latest sample.
    fn cadence(&self) -> Cadence;

    /// Whether `task`, waiting on `cpu` in the latest sample, has not run since and waits
    /// there still: its wait goes on. Asked, between two samples, about a task reaching the
    /// threshold; `None` when only a new sample can tell (e.g. it moved to another CPU).
    fn still_waiting(&mut self, cpu: u32, task: &WaitingTask) -> Option<bool>;
}

/// A backend that reads the kernel afresh on every pass and dates a wait from its first
/// sighting (or `se.exec_start`): the loop polls it ([`Cadence::Poll`]). Implementing this
/// instead of [`Backend`] states that rule once for sched_debug and procfs.
pub trait PolledBackend {
    /// See [`Backend::kind`].
    fn kind(&self) -> BackendKind;

    /// See [`Backend::sample`].
    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError>;

    /// See [`Backend::last_run`].
    fn last_run(&mut self, tid: Tid) -> Option<LastRun>;
}

impl<P: PolledBackend> Backend for P {
    fn kind(&self) -> BackendKind {
        PolledBackend::kind(self)
    }

    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
        PolledBackend::sample(self, snapshot)
    }

    fn last_run(&mut self, tid: Tid) -> Option<LastRun> {
        PolledBackend::last_run(self, tid)
    }

    fn cadence(&self) -> Cadence {
        Cadence::Poll
    }

    fn still_waiting(&mut self, _cpu: u32, _task: &WaitingTask) -> Option<bool> {
        // A polled backend sees a wait go on only by sampling again.
        None
    }
}

/// What can be done when a backend cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Nothing to suggest beyond the reason itself.
    None,
    /// Only another backend helps.
    OtherBackend,
    /// This fix (e.g. `mount debugfs`), or another backend.
    FixOrOtherBackend(&'static str),
}

/// Why a backend cannot be used, and what the user can do about it. Displays as one line:
/// `<reason>; <fix> or use another backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// What failed, e.g. `cannot read /sys/kernel/debug/sched/debug: EACCES`.
    pub reason: String,
    /// What to do about it.
    pub remedy: Remedy,
}

impl Unavailable {
    /// `reason`, with `remedy` as the hint.
    pub fn new(reason: impl Into<String>, remedy: Remedy) -> Self {
        Unavailable {
            reason: reason.into(),
            remedy,
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        match self.remedy {
            Remedy::None => Ok(()),
            Remedy::OtherBackend => f.write_str("; use another backend"),
            Remedy::FixOrOtherBackend(fix) => write!(f, "; {fix} or use another backend"),
        }
    }
}

impl std::error::Error for Unavailable {}

/// Generates, from one table of backends: [`BackendKind`] (what `-b` names, with its name and
/// letter), [`BACKENDS`] (the fallback order) and [`AnyBackend`] (an open backend of any kind,
/// forwarding every [`Backend`] method with a `match` the compiler checks). A row's optional
/// `feature` is the cargo feature without which that backend is not built.
macro_rules! backends {
    ($(
        $(#[doc = $doc:literal])*
        $kind:ident {
            name: $name:literal,
            letter: $letter:literal,
            $(feature: $feature:literal,)?
            backend: $backend:ty,
            open: $open:expr $(,)?
        }
    )+) => {
        /// A backend `-b` can name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum BackendKind {
            $($(#[doc = $doc])* $kind,)+
        }

        /// Every backend, in the order tried without `-b`.
        pub const BACKENDS: &[BackendKind] = &[$(BackendKind::$kind,)+];

        impl BackendKind {
            /// The name `-b` takes and the log uses.
            pub fn name(self) -> &'static str {
                match self {
                    $(BackendKind::$kind => $name,)+
                }
            }

            /// The one-letter name `-b` also takes.
            pub fn letter(self) -> char {
                match self {
                    $(BackendKind::$kind => $letter,)+
                }
            }

            /// The backend named `text` (full name or letter), if any.
            pub fn from_name(text: &str) -> Option<Self> {
                BACKENDS.iter().copied().find(|kind| {
                    text == kind.name() || text.chars().eq(core::iter::once(kind.letter()))
                })
            }
        }

        /// An open backend of any kind.
        pub enum AnyBackend {
            $(
                $(#[cfg(feature = $feature)])?
                #[doc = concat!("The ", $name, " backend.")]
                $kind($backend),
            )+
        }

        impl AnyBackend {
            /// Opens the backend of `kind` for the `monitored` CPUs.
            pub fn open(kind: BackendKind, monitored: &CpuSet) -> Result<Self, Unavailable> {
                match kind {
                    $(
                        $(#[cfg(feature = $feature)])?
                        BackendKind::$kind => ($open)(monitored).map(AnyBackend::$kind),
                        $(
                            #[cfg(not(feature = $feature))]
                            BackendKind::$kind => Err(Unavailable::new(
                                concat!("this stalld was built without it (cargo feature `",
                                    $feature, "`)"),
                                Remedy::None,
                            )),
                        )?
                    )+
                }
            }
        }

        impl Backend for AnyBackend {
            fn kind(&self) -> BackendKind {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::kind(b),)+
                }
            }

            fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::sample(b, snapshot),)+
                }
            }

            fn last_run(&mut self, tid: Tid) -> Option<LastRun> {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::last_run(b, tid),)+
                }
            }

            fn cadence(&self) -> Cadence {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::cadence(b),)+
                }
            }

            fn still_waiting(&mut self, cpu: u32, task: &WaitingTask) -> Option<bool> {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::still_waiting(b, cpu, task),)+
                }
            }
        }
    };
}

// The backends, in the order tried without `-b`. A new backend is one row here plus its own
// module (declared at the top of this file).
backends! {
    /// `-b queue_track` / `-b Q`: BPF tracepoints and a task iterator, exact wait starts.
    QueueTrack {
        name: "queue_track",
        letter: 'Q',
        feature: "bpf",
        backend: queue_track::QueueTrackBackend,
        open: queue_track::QueueTrackBackend::open,
    }
    /// `-b sched_debug` / `-b S`: the kernel's sched_debug text.
    SchedDebug {
        name: "sched_debug",
        letter: 'S',
        backend: sched_debug::SchedDebugBackend,
        open: |_| sched_debug::SchedDebugBackend::open(),
    }
    /// `-b procfs` / `-b P`: `/proc/<pid>/task/<tid>/{stat,sched}`, when debugfs and BPF
    /// tracing are closed (`lockdown=confidentiality`).
    Procfs {
        name: "procfs",
        letter: 'P',
        backend: procfs::ProcfsBackend,
        open: procfs::ProcfsBackend::open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(tid: Tid, switches: u64) -> WaitingTask {
        WaitingTask {
            tid,
            comm: Comm::new(b"crowd"),
            switches,
            prio: 98,
            waiting_since_ns: None,
            run_counts: None,
        }
    }

    fn tids(queue: &CpuQueue) -> Vec<Tid> {
        queue.waiting.iter().map(|t| t.tid).collect()
    }

    fn tracked(tid: Tid, switches: u64, acted: bool) -> TrackedWait {
        TrackedWait {
            tid,
            switches,
            acted,
        }
    }

    #[test]
    fn a_full_queue_keeps_the_smallest_keys_and_counts_the_rest() {
        let mut queue = CpuQueue::new(1);
        let extra = 10;
        // Offered latest first: the keys (wait starts) decide, not the order.
        for tid in (0..MAX_WAITING_PER_CPU + extra).rev() {
            let tid = Tid::try_from(tid).unwrap();
            queue.offer(task(tid, 1), u64::try_from(tid).unwrap() * 1000);
        }
        assert_eq!(queue.overflowed, u32::try_from(extra).unwrap());
        let expected: Vec<Tid> = (0..Tid::try_from(MAX_WAITING_PER_CPU).unwrap()).collect();
        assert_eq!(tids(&queue), expected);
    }

    #[test]
    fn pending_tracked_waits_keep_their_place_and_acted_ones_give_it_up() {
        let mut queue = CpuQueue::new(1);
        // 1000: tracked, not acted on; 1001: acted on; 1002: tracked with other switches (a new
        // wait since); all with keys later than every other task's.
        for t in [
            tracked(1000, 5, false),
            tracked(1001, 5, true),
            tracked(1002, 4, false),
        ] {
            queue.tracked.push(t).unwrap();
        }
        queue.clear();
        for tid in [1000, 1001, 1002] {
            queue.offer(task(tid, 5), u64::MAX);
        }
        for tid in 0..Tid::try_from(MAX_WAITING_PER_CPU).unwrap() {
            queue.offer(task(tid, 1), u64::try_from(tid).unwrap());
        }
        let kept = tids(&queue);
        assert_eq!(kept.first(), Some(&1000), "{kept:?}");
        assert!(!kept.contains(&1001) && !kept.contains(&1002), "{kept:?}");
        assert_eq!(queue.overflowed, 3);
    }

    /// Passes over the same `total` untracked tasks with rotation keys: how many passes until
    /// every task was kept once.
    fn passes_to_see_everyone(total: Tid, first_tid: Tid) -> usize {
        let mut queue = CpuQueue::new(1);
        let mut seen = std::collections::BTreeSet::new();
        for pass in 1..100 {
            queue.clear();
            for tid in first_tid..first_tid + total {
                queue.offer(task(tid, 1), queue.rotation_key(tid));
            }
            queue.advance_rotation();
            seen.extend(tids(&queue));
            if seen.len() == usize::try_from(total).unwrap() {
                return pass;
            }
        }
        panic!("some tasks never kept: {} of {total} seen", seen.len());
    }

    #[test]
    fn untracked_tasks_rotate_through_a_full_queue() {
        // 300 tasks, 64 at a time: ceil(300 / 64) passes, wherever the tids sit.
        assert_eq!(passes_to_see_everyone(300, 1), 5);
        assert_eq!(passes_to_see_everyone(300, 4_194_000), 5);
        // Not full: nothing rotates, everyone is kept at once.
        assert_eq!(passes_to_see_everyone(10, 7), 1);
    }

    #[test]
    fn clear_keeps_the_tracked_waits_and_the_rotation() {
        let mut queue = CpuQueue::new(3);
        queue.tracked.push(tracked(9, 1, false)).unwrap();
        for tid in 1..=Tid::try_from(MAX_WAITING_PER_CPU).unwrap() + 1 {
            queue.offer(task(tid, 1), queue.rotation_key(tid));
        }
        queue.advance_rotation();
        let key = queue.rotation_key(70);
        queue.clear();
        assert_eq!(queue.cpu, 3);
        assert!(queue.waiting.is_empty() && queue.overflowed == 0);
        assert_eq!(queue.tracked.len(), 1);
        assert_eq!(queue.rotation_key(70), key);
    }
}
