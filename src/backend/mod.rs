//! Detection backends: each fills the same fixed per-CPU run-queue tables ([`Snapshot`]).
//! Sampling allocates nothing; tables are sized once at startup.

pub mod procfs;
#[cfg(feature = "bpf")]
pub mod queue_track;
pub mod sched_debug;

use std::os::fd::BorrowedFd;

pub use crate::sys::procfs::LastRun;
use crate::task::{Comm, Tid};

/// Most waiting (runnable, not running) tasks kept per CPU in one sample; more are counted
/// in [`CpuQueue::overflowed`], never silently dropped.
pub const MAX_WAITING_PER_CPU: usize = 64;

/// A task that is runnable on a CPU but not the one running there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingTask {
    pub tid: Tid,
    pub comm: Comm,
    /// Context switches so far (`nvcsw + nivcsw`); unchanged means the task made no progress.
    pub switches: u64,
    /// Kernel priority as printed by the kernel (0..99 RT, 100..139 CFS).
    pub prio: i32,
    /// When its wait began (monotonic ns), if the backend knows it exactly: the detector then
    /// takes it as is, without bounds or confirmation.
    pub waiting_since_ns: Option<u64>,
}

/// The task a CPU was running when it was sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunningTask {
    pub tid: Tid,
    /// Context switches so far (`nvcsw + nivcsw`).
    pub switches: u64,
}

/// One monitored CPU's run queue as last sampled.
#[derive(Clone, Debug, Default)]
pub struct CpuQueue {
    pub cpu: u32,
    /// The task running on the CPU, when the backend can tell.
    pub running: Option<RunningTask>,
    /// The CPU's `clock_task` when sampled, ns; `se.exec_start` is in this clock domain.
    pub clock_task_ns: u64,
    /// Runnable real-time tasks (`.rt_nr_running`), for the verbose pass line.
    pub rt_nr_running: u32,
    pub waiting: heapless::Vec<WaitingTask, MAX_WAITING_PER_CPU>,
    /// Waiting tasks that did not fit in `waiting` during this sample.
    pub overflowed: u32,
    /// False when the backend found no block for this CPU (offline, or not in the file).
    pub present: bool,
}

impl CpuQueue {
    pub fn new(cpu: u32) -> Self {
        CpuQueue {
            cpu,
            ..CpuQueue::default()
        }
    }

    /// Empties the queue before a new sample, keeping its CPU number.
    pub fn clear(&mut self) {
        let cpu = self.cpu;
        *self = CpuQueue::new(cpu);
    }

    /// Records a waiting task, or counts it when the table is full.
    pub fn push(&mut self, task: WaitingTask) {
        if self.waiting.push(task).is_err() {
            self.overflowed += 1;
        }
    }
}

/// The monitored CPUs' run queues, one [`CpuQueue`] each, in ascending CPU order.
/// Allocated once at startup; sampling only overwrites it.
#[derive(Debug)]
pub struct Snapshot {
    pub queues: Vec<CpuQueue>,
}

impl Snapshot {
    pub fn new(cpus: impl Iterator<Item = u32>) -> Self {
        Snapshot {
            queues: cpus.map(CpuQueue::new).collect(),
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
    /// Only when [`Backend::event_fd`] becomes readable: exact, nothing waits, and the first
    /// task to start waiting posts an event.
    Armed,
}

/// A source of run-queue samples.
pub trait Backend {
    /// `sched_debug`, `queue_track`, ...: the name users pass to `-b` and see in the log.
    fn name(&self) -> &'static str;

    /// Overwrites `snapshot` with the current waiting tasks of its CPUs.
    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError>;

    /// When `tid` last ran and how often it slept (`/proc/<tid>/sched`), as close as possible
    /// to the latest sample. `None` when unknown (task gone, file unreadable); the detector
    /// then counts a wait from when it first saw it.
    fn last_run(&mut self, tid: Tid) -> Option<LastRun>;

    /// How soon the loop must sample again after the latest sample.
    fn cadence(&self) -> Cadence {
        Cadence::Poll
    }

    /// A descriptor that becomes readable when the backend has events for the loop.
    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Consumes pending events; returns the earliest wait start they report (monotonic ns).
    fn take_events(&mut self) -> Option<u64> {
        None
    }

    /// Checks with the kernel, just before acting, that `task` still waits on `cpu` as
    /// sampled. Backends whose tables could hold a stale entry say so here.
    fn still_waiting(&mut self, _cpu: u32, _task: &WaitingTask) -> bool {
        true
    }
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
        (**self).sample(snapshot)
    }

    fn last_run(&mut self, tid: Tid) -> Option<LastRun> {
        (**self).last_run(tid)
    }

    fn cadence(&self) -> Cadence {
        (**self).cadence()
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).event_fd()
    }

    fn take_events(&mut self) -> Option<u64> {
        (**self).take_events()
    }

    fn still_waiting(&mut self, cpu: u32, task: &WaitingTask) -> bool {
        (**self).still_waiting(cpu, task)
    }
}
