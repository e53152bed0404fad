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
use std::os::fd::BorrowedFd;

use crate::cpuset::CpuSet;
pub use crate::sys::proc_files::LastRun;
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
/// in [`CpuQueue::overflowed`], never silently dropped.
pub const MAX_WAITING_PER_CPU: usize = 64;

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
    /// Its waiting tasks, longest waiting first when a backend knows.
    pub waiting: heapless::Vec<WaitingTask, MAX_WAITING_PER_CPU>,
    /// Waiting tasks that did not fit in `waiting` during this sample.
    pub overflowed: u32,
    /// False when the backend found no block for this CPU (offline, or not in the file).
    pub present: bool,
}

impl CpuQueue {
    /// An empty queue of `cpu`.
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
    /// Only when [`Backend::event_fd`] becomes readable: exact, nothing waits, and the first
    /// task to start waiting posts an event.
    Armed,
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

    /// A descriptor that becomes readable when the backend has events for the loop.
    fn event_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Consumes pending events; returns the earliest wait start they report (monotonic ns).
    fn take_events(&mut self) -> Option<u64>;

    /// Checks with the kernel, just before acting, that `task` still waits on `cpu` as
    /// sampled. Backends whose tables could hold a stale entry say so here.
    fn still_waiting(&mut self, cpu: u32, task: &WaitingTask) -> bool;
}

/// A backend that reads the kernel afresh on every pass: the loop polls it
/// ([`Cadence::Poll`]), it has no events, and nothing it sampled can be stale. Implementing
/// this instead of [`Backend`] states those three rules once for sched_debug and procfs.
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

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn take_events(&mut self) -> Option<u64> {
        None
    }

    fn still_waiting(&mut self, _cpu: u32, _task: &WaitingTask) -> bool {
        true
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

            fn event_fd(&self) -> Option<BorrowedFd<'_>> {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::event_fd(b),)+
                }
            }

            fn take_events(&mut self) -> Option<u64> {
                match self {
                    $($(#[cfg(feature = $feature)])? AnyBackend::$kind(b) => Backend::take_events(b),)+
                }
            }

            fn still_waiting(&mut self, cpu: u32, task: &WaitingTask) -> bool {
                match self {
                    $(
                        $(#[cfg(feature = $feature)])?
                        AnyBackend::$kind(b) => Backend::still_waiting(b, cpu, task),
                    )+
                }
            }
        }
    };
}

// The backends, in the order tried without `-b`. A new backend is one row here plus its own
// module (declared at the top of this file).
backends! {
    /// `-b queue_track` / `-b Q`: BPF tracepoints, exact wait starts.
    QueueTrack {
        name: "queue_track",
        letter: 'Q',
        feature: "bpf",
        backend: queue_track::QueueTrackBackend,
        open: |monitored| queue_track::QueueTrackBackend::open(
            monitored,
            crate::sys::process::configured_cpus(),
        ),
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
