//! The `procfs` backend: run queues rebuilt from `/proc/<pid>/task/<tid>/{stat,sched}`, for
//! kernels where debugfs and BPF tracing are closed (`lockdown=confidentiality`).
//!
//! Invariant: nothing allocates after [`ProcfsBackend::open`]. `/proc` and each
//! `/proc/<pid>/task` are listed with `getdents` ([`RawDir`]) into buffers sized at startup;
//! files are opened with `openat` relative to those directories through paths built on the
//! stack and read into fixed buffers. A thread that vanishes mid-scan (`ENOENT`, `ESRCH`) is
//! skipped silently; a file that cannot be read or understood is skipped and counted; a
//! runnable thread that does not fit a table is skipped and counted. No input can panic.
//!
//! How one sample is judged, per sampled CPU:
//! - A thread is a candidate when its `stat` state is `R` and its `processor` field is that CPU.
//!   A candidate's `sched` gives `nr_switches`, `se.sum_exec_runtime` and `se.exec_start`
//!   (all printed without CONFIG_SCHEDSTATS).
//! - `se.exec_start` is when the thread last ran, in the CPU's `clock_task` domain; the kernel
//!   refreshes the running thread's every tick. So the candidate with the largest one is the
//!   thread running on the CPU: it is not waiting, and its `se.exec_start` is the CPU's
//!   `clock_task_ns`. That reference errs low (up to a tick, more if the running thread is not
//!   in `/proc`), so waits come out short: reported late, never early.
//! - Every other candidate is waiting, with `switches = nr_switches`: unchanged means it did
//!   not run. A full table keeps the running candidate, then by [`CpuQueue::rank`]: the waits
//!   the detector tracks, then the tasks that waited longest (smallest `se.exec_start`), so
//!   the tasks a sample drops are the most recent waiters, and a task boosted (or acted on)
//!   gives its place to those still waiting.
//! - `se.sum_exec_runtime` makes "did not run" stronger: the files of one sample are read one
//!   after another, so a thread may have been switched in after the running thread's files
//!   were read. A candidate whose runtime grew since the previous sample while its
//!   `nr_switches` did not was switched in and not yet out: it is running, not waiting, and
//!   is left out. (One whose `nr_switches` changed was switched out since: its wait began at
//!   its `se.exec_start`, which the detector uses.)
//! - `rt_nr_running` counts the CPU's candidates in the RT class (kernel prio 0..99).

use core::ffi::CStr;
use core::mem::MaybeUninit;
use core::ops::ControlFlow;
use std::ffi::CString;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags, RawDir, SeekFrom};
use rustix::io::{retry_on_intr, Errno};

use crate::backend::{
    is_rt_prio, BackendKind, CpuQueue, LastRun, PolledBackend, Remedy, RunningTask, SampleError,
    Snapshot, Unavailable, WaitingTask, MAX_WAITING_PER_CPU,
};
use crate::cpuset::CpuSet;
use crate::sys::lines::{read_small_file_at, LineReader};
use crate::sys::proc_files::{join_path, parse_stat, parse_u64, ProcSched, ProcStat};
use crate::task::{Comm, Tid};

/// Most runnable threads kept per CPU in one sample (the running one and those waiting);
/// more are counted in [`ProcfsStats::table_full`] and the CPU's [`CpuQueue::overflowed`].
pub const MAX_RUNNABLE_PER_CPU: usize = 2 * MAX_WAITING_PER_CPU;

/// A thread whose affinity keeps it off every monitored CPU is read anyway once in this many
/// samples (staggered by tid): a task queued on a monitored CPU when its affinity changed
/// stays there until it runs if it cannot migrate (PREEMPT_RT's migrate-disabled sections),
/// and a starving one is then found this many samples late at most.
const AFFINITY_RECHECK_PASSES: u32 = 8;

/// `getdents` buffer for `/proc` (a few hundred processes per call).
const ROOT_DIR_BUF_BYTES: usize = 16 * 1024;
/// `getdents` buffer for one `/proc/<pid>/task`.
const TASK_DIR_BUF_BYTES: usize = 4 * 1024;
/// A whole `stat` file: about 300 bytes, 52 numbers of at most 20 digits plus a 64-byte name.
const STAT_BYTES: usize = 2048;
/// Longest `sched` line kept (they are under 100 bytes); longer ones are skipped whole.
const SCHED_LINE_BYTES: usize = 2048;
/// `<number>/task` or `<number>/sched`.
const PATH_BYTES: usize = 40;

/// A thread runnable on a sampled CPU, as read in one sample.
#[derive(Clone, Copy, Debug)]
struct Runnable {
    cpu: u32,
    tid: Tid,
    comm: Comm,
    prio: i32,
    switches: u64,
    voluntary_switches: u64,
    migrations: u64,
    sum_exec_runtime_ns: u64,
    exec_start_ns: u64,
}

/// What the backend saw, for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcfsStats {
    /// Threads listed in the last sample.
    pub threads: u32,
    /// Of those, left unread: their affinity keeps them off every monitored CPU.
    pub kept_off: u32,
    /// Of those, runnable on a sampled CPU in the last sample.
    pub runnable: u32,
    /// Since open: runnable threads skipped because their CPU's table was full.
    pub table_full: u64,
    /// Since open: `stat` or `sched` files that could not be understood.
    pub unparsable: u64,
    /// Since open: files or directories that could not be read for another reason than the
    /// thread being gone (e.g. `EACCES`).
    pub unreadable: u64,
}

/// Why a thread was not taken.
enum Skip {
    /// Gone meanwhile (or a name too long for a path): nothing to count.
    Quiet,
    Unreadable,
    Unparsable,
}

impl From<Errno> for Skip {
    fn from(errno: Errno) -> Self {
        match errno {
            Errno::NOENT | Errno::SRCH => Skip::Quiet,
            Errno::FBIG => Skip::Unparsable,
            _ => Skip::Unreadable,
        }
    }
}

/// The per-thread file reader: fixed buffers, counters.
struct ThreadFiles {
    stat_buf: [u8; STAT_BYTES],
    sched_reader: LineReader<SCHED_LINE_BYTES>,
    stats: ProcfsStats,
}

impl ThreadFiles {
    fn note(&mut self, skip: Skip) {
        match skip {
            Skip::Quiet => {}
            Skip::Unreadable => self.stats.unreadable += 1,
            Skip::Unparsable => self.stats.unparsable += 1,
        }
    }

    /// `<tid>/stat` relative to a `task` directory.
    fn stat(&mut self, task_dir: impl AsFd, tid_name: &[u8]) -> Result<ProcStat, Skip> {
        let mut path = [0u8; PATH_BYTES];
        let path = join_path(&mut path, &[tid_name, b"/stat"]).ok_or(Skip::Quiet)?;
        let text = read_small_file_at(task_dir, path, &mut self.stat_buf)?;
        parse_stat(text).ok_or(Skip::Unparsable)
    }

    /// `(last run, se.sum_exec_runtime)` from `<tid>/sched`.
    fn sched(&mut self, task_dir: impl AsFd, tid_name: &[u8]) -> Result<(LastRun, u64), Skip> {
        let mut path = [0u8; PATH_BYTES];
        let path = join_path(&mut path, &[tid_name, b"/sched"]).ok_or(Skip::Quiet)?;
        let mut sched = ProcSched::default();
        self.sched_reader
            .for_each_line_at(task_dir, path, |line| sched.feed_line(line))?;
        match (sched.last_run(), sched.sum_exec_runtime_ns) {
            (Some(run), Some(runtime_ns)) => Ok((run, runtime_ns)),
            _ => Err(Skip::Unparsable),
        }
    }
}

impl ThreadFiles {
    /// Whether one thread's `stat` and `sched` (at `file`) can be read and understood:
    /// `Continue` when the thread vanished meanwhile, so that the next one is tried.
    fn probe(
        &mut self,
        tasks: &OwnedFd,
        tid_name: &[u8],
        file: &str,
    ) -> ControlFlow<Result<(), Unavailable>> {
        match self.stat(tasks, tid_name) {
            Ok(_) => {}
            Err(Skip::Quiet) => return ControlFlow::Continue(()),
            Err(_) => {
                return ControlFlow::Break(Err(Unavailable::new(
                    format!("cannot read or understand {file}/stat"),
                    Remedy::OtherBackend,
                )))
            }
        }
        match self.sched(tasks, tid_name) {
            Ok(_) => ControlFlow::Break(Ok(())),
            Err(Skip::Quiet) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(Err(Unavailable::new(
                format!(
                    "cannot read nr_switches, se.sum_exec_runtime and se.exec_start from \
                     {file}/sched (older kernels print that file only with CONFIG_SCHED_DEBUG)"
                ),
                Remedy::OtherBackend,
            ))),
        }
    }
}

/// Opens a directory relative to `dir` (or absolute), read-only, close-on-exec.
fn open_dir_at(dir: impl AsFd, path: &CStr) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    retry_on_intr(|| {
        rustix::fs::openat(
            dir,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })
}

/// A thread or process id from a directory entry name; `None` for `.`, `self`, ...
fn id_of(name: &[u8]) -> Option<Tid> {
    Tid::try_from(parse_u64(name)?).ok().filter(|&id| id > 0)
}

/// A zeroed `getdents` buffer.
fn dir_buf(bytes: usize) -> Box<[MaybeUninit<u8>]> {
    vec![MaybeUninit::new(0); bytes].into_boxed_slice()
}

/// This sample's runnable threads and the readers that find them.
struct Scan {
    files: ThreadFiles,
    /// Runnable threads found so far; capacity fixed at open.
    threads: Vec<Runnable>,
    /// Runnable threads kept per snapshot queue (by index).
    kept_per_queue: Vec<u32>,
    /// Whether threads are first judged by their affinity (the live `/proc` only: a
    /// fixture's tids are not the kernel's).
    affinity_filter: bool,
    /// Samples taken, for [`AFFINITY_RECHECK_PASSES`].
    passes: u32,
}

impl Scan {
    fn clear(&mut self) {
        self.threads.clear();
        self.kept_per_queue.iter_mut().for_each(|kept| *kept = 0);
        self.passes = self.passes.wrapping_add(1);
        self.files.stats.threads = 0;
        self.files.stats.kept_off = 0;
        self.files.stats.runnable = 0;
    }

    /// Reads one thread and keeps it if it is runnable on a sampled CPU, in place of a worse
    /// one if that CPU's table is full (see the module documentation).
    fn thread(
        &mut self,
        tasks: &OwnedFd,
        tid: Tid,
        tid_name: &[u8],
        queues: &mut [CpuQueue],
    ) -> Result<(), Skip> {
        self.files.stats.threads += 1;
        if self.affinity_filter
            && tid.unsigned_abs() % AFFINITY_RECHECK_PASSES != self.passes % AFFINITY_RECHECK_PASSES
            && !may_run_on(tid, queues)
        {
            self.files.stats.kept_off += 1;
            return Ok(());
        }
        let stat = self.files.stat(tasks, tid_name)?;
        if stat.state != b'R' {
            return Ok(());
        }
        let Ok(queue) = queues.binary_search_by_key(&stat.processor, |q| q.cpu) else {
            return Ok(());
        };
        self.files.stats.runnable += 1;
        let (run, sum_exec_runtime_ns) = self.files.sched(tasks, tid_name)?;
        let thread = Runnable {
            cpu: stat.processor,
            tid,
            comm: stat.comm,
            prio: stat.kernel_prio(),
            switches: run.switches,
            voluntary_switches: run.voluntary_switches,
            migrations: run.migrations,
            sum_exec_runtime_ns,
            exec_start_ns: run.exec_start_ns,
        };
        let Some(kept) = self.kept_per_queue.get_mut(queue) else {
            return Ok(());
        };
        if usize::try_from(*kept).is_ok_and(|k| k < MAX_RUNNABLE_PER_CPU)
            && self.threads.len() < self.threads.capacity()
        {
            *kept += 1;
            self.threads.push(thread);
            return Ok(());
        }
        self.files.stats.table_full += 1;
        let queue = &mut queues[queue];
        queue.overflowed += 1;
        if let Some(worst) = replaceable(&self.threads, &thread, queue) {
            self.threads[worst] = thread;
        }
        Ok(())
    }
}

/// Whether `tid`'s affinity allows one of the sampled CPUs (true when it cannot be read:
/// its files then say what became of it). A `sched_getaffinity` costs a fraction of a `stat`
/// read (no path lookup, no text), and with isolated CPUs almost every thread is kept off
/// the monitored ones; read every pass, so an affinity change counts from the next one.
fn may_run_on(tid: Tid, sampled: &[CpuQueue]) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(tid) else {
        return true;
    };
    rustix::thread::sched_getaffinity(Some(pid)).map_or(true, |allowed| {
        sampled.iter().any(|q| allowed.is_set(q.cpu as usize))
    })
}

/// The rank a waiting `thread` gets in `queue` (see [`CpuQueue::rank`]).
fn rank_in(queue: &CpuQueue, thread: &Runnable) -> u64 {
    queue.rank(thread.tid, thread.switches, thread.exec_start_ns)
}

/// Which of `threads` a newcomer to `queue`'s full table replaces, if any: of the CPU's
/// threads and the newcomer, the one with the largest `se.exec_start` (maybe the running one)
/// stays, and of the others the worst ranked goes (`None`: the newcomer itself).
fn replaceable(threads: &[Runnable], newcomer: &Runnable, queue: &CpuQueue) -> Option<usize> {
    let on_cpu = || {
        threads
            .iter()
            .enumerate()
            .filter(|(_, t)| t.cpu == newcomer.cpu)
    };
    let latest = on_cpu()
        .max_by_key(|(_, t)| t.exec_start_ns)
        .filter(|(_, t)| t.exec_start_ns >= newcomer.exec_start_ns)
        .map(|(i, _)| i);
    let (worst, worst_rank) = on_cpu()
        .filter(|(i, _)| Some(*i) != latest)
        .map(|(i, t)| (i, rank_in(queue, t)))
        .max_by_key(|(_, rank)| *rank)?;
    match latest {
        // The newcomer may be the one running: it stays, and the table's latest is now an
        // ordinary waiting thread.
        None => Some(worst),
        Some(_) => (worst_rank > rank_in(queue, newcomer)).then_some(worst),
    }
}

/// Run-queue samples from `/proc`. See the module documentation for how a sample is judged.
pub struct ProcfsBackend {
    root_path: CString,
    root: OwnedFd,
    root_dir_buf: Box<[MaybeUninit<u8>]>,
    task_dir_buf: Box<[MaybeUninit<u8>]>,
    scan: Scan,
    /// The last complete sample's runnable threads, sorted by tid.
    latest: Vec<Runnable>,
}

impl ProcfsBackend {
    /// Checks that `/proc` lists threads whose `stat` and `sched` files can be understood,
    /// and sizes every table for `monitored`.
    pub fn open(monitored: &CpuSet) -> Result<Self, Unavailable> {
        let mut backend = Self::open_root(c"/proc", monitored)?;
        backend.scan.affinity_filter = true;
        Ok(backend)
    }

    /// Same, with another directory laid out like `/proc` (tests).
    pub fn open_root(root_path: &CStr, monitored: &CpuSet) -> Result<Self, Unavailable> {
        let root = open_dir_at(rustix::fs::CWD, root_path).map_err(|e| {
            Unavailable::new(
                format!("cannot open {}: {e}", root_path.to_string_lossy()),
                Remedy::FixOrOtherBackend("mount procfs there (mount -t proc proc /proc)"),
            )
        })?;
        let threads = monitored.len().max(1) * MAX_RUNNABLE_PER_CPU;
        let mut backend = ProcfsBackend {
            root_path: root_path.into(),
            root,
            root_dir_buf: dir_buf(ROOT_DIR_BUF_BYTES),
            task_dir_buf: dir_buf(TASK_DIR_BUF_BYTES),
            scan: Scan {
                files: ThreadFiles {
                    stat_buf: [0; STAT_BYTES],
                    sched_reader: LineReader::new(),
                    stats: ProcfsStats::default(),
                },
                threads: Vec::with_capacity(threads),
                kept_per_queue: vec![0; monitored.len()],
                affinity_filter: false,
                passes: 0,
            },
            latest: Vec::with_capacity(threads),
        };
        backend.probe()?;
        Ok(backend)
    }

    /// Counters: the last sample's and the running totals.
    pub fn stats(&self) -> ProcfsStats {
        self.scan.files.stats
    }

    /// Reads the first thread that does not vanish meanwhile, and says what to do if that fails.
    fn probe(&mut self) -> Result<(), Unavailable> {
        let root = self.root_path.to_string_lossy().into_owned();
        let files = &mut self.scan.files;
        let walked = walk_threads(
            &self.root,
            &mut self.root_dir_buf,
            &mut self.task_dir_buf,
            |item| {
                let (pid_name, tasks, tid_name) = match item {
                    Walk::Thread {
                        pid_name,
                        tasks,
                        tid_name,
                        ..
                    } => (pid_name, tasks, tid_name),
                    Walk::RootUnlistable { errno } => {
                        let reason = format!("cannot list {root}: {errno}");
                        return ControlFlow::Break(Err(Unavailable::new(reason, Remedy::None)));
                    }
                    Walk::TaskDirUnopenable {
                        errno: Errno::NOENT | Errno::SRCH,
                        ..
                    }
                    | Walk::TaskDirUnlistable { .. } => return ControlFlow::Continue(()),
                    Walk::TaskDirUnopenable { pid_name, errno } => {
                        let pid = String::from_utf8_lossy(pid_name);
                        let reason = format!("cannot open {root}/{pid}/task: {errno}");
                        return ControlFlow::Break(Err(Unavailable::new(reason, Remedy::None)));
                    }
                };
                let file = format!(
                    "{root}/{}/task/{}",
                    String::from_utf8_lossy(pid_name),
                    String::from_utf8_lossy(tid_name)
                );
                files.probe(tasks, tid_name, &file)
            },
        );
        match walked {
            ControlFlow::Break(result) => result,
            ControlFlow::Continue(()) => Err(Unavailable::new(
                format!("{root} lists no readable process"),
                Remedy::FixOrOtherBackend("mount procfs there without hidepid and run as root"),
            )),
        }
    }

    /// Lists `/proc` and every process's threads into `self.scan`.
    fn scan(&mut self, queues: &mut [CpuQueue]) -> Result<(), Errno> {
        self.scan.clear();
        let scan = &mut self.scan;
        let walked = walk_threads(
            &self.root,
            &mut self.root_dir_buf,
            &mut self.task_dir_buf,
            |item| {
                let skipped = match item {
                    Walk::Thread {
                        tasks,
                        tid,
                        tid_name,
                        ..
                    } => scan.thread(tasks, tid, tid_name, queues).err(),
                    Walk::TaskDirUnopenable { errno, .. } | Walk::TaskDirUnlistable { errno } => {
                        Some(errno.into())
                    }
                    Walk::RootUnlistable { errno } => return ControlFlow::Break(errno),
                };
                if let Some(skip) = skipped {
                    scan.files.note(skip);
                }
                ControlFlow::Continue(())
            },
        );
        match walked {
            ControlFlow::Break(errno) => Err(errno),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    /// The latest sample's record of `tid`.
    fn latest(&self, tid: Tid) -> Option<&Runnable> {
        let index = self.latest.binary_search_by_key(&tid, |t| t.tid).ok()?;
        self.latest.get(index)
    }
}

/// One step of [`walk_threads`].
enum Walk<'a> {
    /// A thread of process `pid_name`, whose `task` directory is `tasks`.
    Thread {
        pid_name: &'a [u8],
        tasks: &'a OwnedFd,
        tid: Tid,
        tid_name: &'a [u8],
    },
    /// The process's `task` directory could not be opened (it may be gone: `ENOENT`).
    TaskDirUnopenable { pid_name: &'a [u8], errno: Errno },
    /// Listing the process's `task` directory failed part way; its other threads are skipped.
    TaskDirUnlistable { errno: Errno },
    /// `root` itself could not be listed: the walk ends after this step.
    RootUnlistable { errno: Errno },
}

/// Lists the processes of `root` (from its start) and the threads of each, through the two
/// fixed `getdents` buffers, handing every step to `visit` until it breaks.
fn walk_threads<B>(
    root: &OwnedFd,
    root_dir_buf: &mut [MaybeUninit<u8>],
    task_dir_buf: &mut [MaybeUninit<u8>],
    mut visit: impl FnMut(Walk<'_>) -> ControlFlow<B>,
) -> ControlFlow<B> {
    if let Err(errno) = retry_on_intr(|| rustix::fs::seek(root, SeekFrom::Start(0))) {
        return visit(Walk::RootUnlistable { errno });
    }
    let mut processes = RawDir::new(root, root_dir_buf);
    while let Some(entry) = processes.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(errno) => return visit(Walk::RootUnlistable { errno }),
        };
        let pid_name = entry.file_name().to_bytes();
        if id_of(pid_name).is_none() {
            continue;
        }
        let mut path = [0u8; PATH_BYTES];
        let Some(path) = join_path(&mut path, &[pid_name, b"/task"]) else {
            continue;
        };
        let tasks = match open_dir_at(root, path) {
            Ok(fd) => fd,
            Err(errno) => {
                visit(Walk::TaskDirUnopenable { pid_name, errno })?;
                continue;
            }
        };
        let mut threads = RawDir::new(&tasks, &mut *task_dir_buf);
        while let Some(entry) = threads.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(errno) => {
                    visit(Walk::TaskDirUnlistable { errno })?;
                    break;
                }
            };
            let tid_name = entry.file_name().to_bytes();
            let Some(tid) = id_of(tid_name) else {
                continue;
            };
            visit(Walk::Thread {
                pid_name,
                tasks: &tasks,
                tid,
                tid_name,
            })?;
        }
    }
    ControlFlow::Continue(())
}

/// True when `thread` was switched in since the `previous` sample and not switched out: its
/// runtime grew, its context-switch count did not.
fn running_since(previous: &[Runnable], thread: &Runnable) -> bool {
    previous
        .binary_search_by_key(&thread.tid, |t| t.tid)
        .ok()
        .and_then(|index| previous.get(index))
        .is_some_and(|before| {
            before.switches == thread.switches
                && before.sum_exec_runtime_ns != thread.sum_exec_runtime_ns
        })
}

impl PolledBackend for ProcfsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Procfs
    }

    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
        snapshot.reset(true);
        self.scan(&mut snapshot.queues).map_err(SampleError::Io)?;
        if self.scan.files.stats.threads == 0 {
            return Err(SampleError::Format("no thread listed in /proc"));
        }
        let threads = &mut self.scan.threads;
        // Per CPU, the running thread (largest exec_start) first.
        threads.sort_unstable_by(|a, b| {
            a.cpu
                .cmp(&b.cpu)
                .then(b.exec_start_ns.cmp(&a.exec_start_ns))
        });
        for on_cpu in threads.chunk_by(|a, b| a.cpu == b.cpu) {
            let Some((running, others)) = on_cpu.split_first() else {
                continue;
            };
            let Some(queue) = snapshot.queue_mut(running.cpu) else {
                continue;
            };
            queue.clock_task_ns = running.exec_start_ns;
            queue.running = Some(RunningTask {
                tid: running.tid,
                switches: running.switches,
            });
            let rt = on_cpu.iter().filter(|t| is_rt_prio(t.prio)).count();
            queue.rt_nr_running = u32::try_from(rt).unwrap_or(u32::MAX);
            for thread in others {
                if !running_since(&self.latest, thread) {
                    let task = WaitingTask {
                        tid: thread.tid,
                        comm: thread.comm,
                        switches: thread.switches,
                        prio: thread.prio,
                        // Known only through `last_run`, which the detector judges.
                        waiting_since_ns: None,
                        run_counts: None,
                    };
                    queue.offer(task, thread.exec_start_ns);
                }
            }
        }
        threads.sort_unstable_by_key(|t| t.tid);
        core::mem::swap(threads, &mut self.latest);
        Ok(())
    }

    /// From the latest sample, so it matches the sampled switch counts exactly.
    fn last_run(&mut self, tid: Tid) -> Option<LastRun> {
        self.latest(tid).map(|t| LastRun {
            exec_start_ns: t.exec_start_ns,
            switches: t.switches,
            voluntary_switches: t.voluntary_switches,
            migrations: t.migrations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sched_debug::SchedDebugBackend;
    use std::path::PathBuf;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/procfs");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    /// A directory laid out like `/proc`, removed when dropped.
    struct FakeProc {
        dir: PathBuf,
    }

    impl FakeProc {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("stalld-fakeproc-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("self")).unwrap();
            std::fs::write(dir.join("uptime"), "1.0 1.0\n").unwrap();
            FakeProc { dir }
        }

        fn thread(&self, pid: Tid, tid: Tid, stat: &[u8], sched: Option<&[u8]>) {
            let dir = self.dir.join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("stat"), stat).unwrap();
            if let Some(sched) = sched {
                std::fs::write(dir.join("sched"), sched).unwrap();
            }
        }

        fn captured(&self, pid: Tid, tid: Tid, label: &str) {
            self.thread(
                pid,
                tid,
                &fixture(&format!("{label}.stat.txt")),
                Some(&fixture(&format!("{label}.sched.txt"))),
            );
        }

        /// The scenario of `tests/fixtures/procfs` (see its README.txt).
        fn capture() -> Self {
            let fake = FakeProc::new("capture");
            fake.captured(9244, 9244, "sleeping_main");
            fake.captured(9244, 9245, "spaces_thread");
            fake.captured(9244, 9246, "paren_thread");
            fake.captured(9244, 9247, "newline_thread");
            fake.captured(9248, 9248, "victim");
            fake.captured(9266, 9266, "hog");
            fake.captured(12, 12, "kworker_long_name");
            fake
        }

        fn root(&self) -> CString {
            CString::new(self.dir.to_str().unwrap()).unwrap()
        }

        fn open(&self, cpus: &str) -> Result<ProcfsBackend, Unavailable> {
            ProcfsBackend::open_root(&self.root(), &CpuSet::parse(cpus, 2).unwrap())
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn sampled(backend: &mut ProcfsBackend, cpus: core::ops::Range<u32>) -> Snapshot {
        let mut snapshot = Snapshot::new(cpus);
        backend.sample(&mut snapshot).unwrap();
        snapshot
    }

    fn waiting_tids(queue: &CpuQueue) -> Vec<Tid> {
        queue.waiting.iter().map(|t| t.tid).collect()
    }

    /// Victim exec_start and hog exec_start (the CPU's clock_task) in the capture, ns.
    const VICTIM_EXEC_START_NS: u64 = 2_615_105_828_097;
    const HOG_EXEC_START_NS: u64 = 2_616_609_666_443;

    #[test]
    fn finds_the_captured_starvation() {
        let fake = FakeProc::capture();
        let mut backend = fake.open("0-1").unwrap();
        assert_eq!(crate::backend::Backend::name(&backend), "procfs");
        let mut snapshot = sampled(&mut backend, 0..2);
        let cpu0 = &snapshot.queues[0];
        assert!(cpu0.present && cpu0.waiting.is_empty() && cpu0.clock_task_ns == 0);
        let cpu1 = &snapshot.queues[1];
        assert!(cpu1.present);
        assert_eq!(cpu1.clock_task_ns, HOG_EXEC_START_NS);
        // The victim and the hog; fx_threads' busy threads are CFS.
        assert_eq!(cpu1.rt_nr_running, 2);
        // Longest wait first; neither the hog (running), the sleeping main thread nor the
        // idle kworker.
        assert_eq!(waiting_tids(cpu1), [9248, 9247, 9245, 9246]);
        let victim = cpu1.waiting[0];
        assert_eq!(victim.comm, Comm::new(b"fx_victim"));
        assert_eq!((victim.switches, victim.prio), (2, 98));
        let names: Vec<Comm> = cpu1.waiting.iter().map(|t| t.comm).collect();
        assert_eq!(
            names[1..],
            [
                Comm::new(b"nl\nR 2 3"),
                Comm::new(b"my task (x) 1"),
                Comm::new(b"a) R 1 (b")
            ]
        );
        assert!(cpu1.waiting[1..].iter().all(|t| t.prio == 120));
        assert_eq!(
            backend.last_run(9248).map(|run| run.exec_start_ns),
            Some(VICTIM_EXEC_START_NS)
        );
        // Waited 1.504 s, captured 1.500 s after the hog was seen running (capture_meta.txt).
        assert_eq!(HOG_EXEC_START_NS - VICTIM_EXEC_START_NS, 1_503_838_346);
        assert_eq!(backend.last_run(12), None, "not runnable");
        assert_eq!(backend.last_run(4242), None);
        let stats = backend.stats();
        assert_eq!((stats.threads, stats.runnable), (7, 5));
        assert_eq!(
            (stats.unparsable, stats.unreadable, stats.table_full),
            (0, 0, 0)
        );

        // sched_debug, read right after the files, has the same clock_task, and every
        // captured thread it lists as waiting is waiting here too (it skips rows split by a
        // newline in a name, such as 9247's, and lists threads not captured, such as kworkers).
        let ours = waiting_tids(&snapshot.queues[1]);
        let path = CString::new(format!("{FIXTURES}/sched_debug.txt")).unwrap();
        let mut sched_debug = SchedDebugBackend::open_path(&path).unwrap();
        sched_debug.sample(&mut snapshot).unwrap();
        let cpu1 = &snapshot.queues[1];
        assert_eq!(cpu1.clock_task_ns, HOG_EXEC_START_NS);
        let captured = [9244, 9245, 9246, 9247, 9248, 9266, 12];
        let theirs: Vec<Tid> = waiting_tids(cpu1)
            .into_iter()
            .filter(|tid| captured.contains(tid))
            .collect();
        assert!(theirs.contains(&9248), "{theirs:?}");
        assert!(theirs.iter().all(|tid| ours.contains(tid)), "{theirs:?}");
    }

    #[test]
    fn broken_and_hostile_files_are_skipped() {
        let fake = FakeProc::new("broken");
        fake.captured(9248, 9248, "victim");
        fake.captured(9266, 9266, "hog");
        let stat = fixture("victim.stat.txt");
        let sched = fixture("victim.sched.txt");
        let text = |s: &[u8]| String::from_utf8(s.to_vec()).unwrap();
        // Unparsable: cut stat, empty stat, garbage processor, garbage and cut sched.
        fake.thread(9248, 500, &stat[..60], Some(&sched));
        fake.thread(9248, 501, b"", Some(&sched));
        let bad_cpu = text(&stat).replace(" 17 1 1 1 ", " 17 1x 1 1 ");
        fake.thread(9248, 502, bad_cpu.as_bytes(), Some(&sched));
        let bad_switches = text(&sched).replace(
            "nr_switches                                  :                    2",
            "nr_switches : 2x",
        );
        assert_ne!(bad_switches.as_bytes(), sched);
        fake.thread(9248, 503, &stat, Some(bad_switches.as_bytes()));
        let cut = sched.iter().position(|&b| b == b'\n').unwrap() + 1;
        fake.thread(9248, 504, &stat, Some(&sched[..cut + 130]));
        // Gone between its stat and its sched: skipped silently.
        fake.thread(9248, 505, &stat, None);
        // A name that forges a runnable state: the real state is S.
        let forged =
            text(&fixture("sleeping_main.stat.txt")).replace("(fx_threads) S", "(x) R 1 (y) S");
        fake.thread(9244, 9244, forged.as_bytes(), Some(&sched));
        // A process directory without a task directory, and odd names.
        std::fs::create_dir_all(fake.dir.join("600")).unwrap();
        std::fs::create_dir_all(fake.dir.join("+7/task/+7")).unwrap();
        std::fs::create_dir_all(fake.dir.join("99999999999/task")).unwrap();

        let mut backend = fake.open("1").unwrap();
        let snapshot = sampled(&mut backend, 1..2);
        assert_eq!(waiting_tids(&snapshot.queues[0]), [9248]);
        assert_eq!(snapshot.queues[0].clock_task_ns, HOG_EXEC_START_NS);
        let stats = backend.stats();
        assert_eq!(stats.unparsable, 5, "{stats:?}");
        assert_eq!(stats.unreadable, 0);
        assert_eq!(stats.threads, 9);
        // Counts add up over samples.
        sampled(&mut backend, 1..2);
        assert_eq!(backend.stats().unparsable, 10);
    }

    #[test]
    fn a_thread_switched_in_since_the_last_sample_is_not_waiting() {
        let fake = FakeProc::new("switched-in");
        fake.captured(9266, 9266, "hog");
        fake.captured(9248, 9248, "victim");
        let mut backend = fake.open("1").unwrap();
        assert_eq!(waiting_tids(&sampled(&mut backend, 1..2).queues[0]), [9248]);
        let sched = String::from_utf8(fixture("victim.sched.txt")).unwrap();
        let ran = sched.replace("303.309081", "304.000000");
        let write = |text: &str| {
            std::fs::write(fake.dir.join("9248/task/9248/sched"), text).unwrap();
        };
        // Runtime grew, no switch out: on the CPU now, although its exec_start is older.
        write(&ran);
        assert!(sampled(&mut backend, 1..2).queues[0].waiting.is_empty());
        // Switched out since: waiting again.
        write(&ran.replace(
            "nr_switches                                  :                    2",
            "nr_switches                                  :                    3",
        ));
        let snapshot = sampled(&mut backend, 1..2);
        assert_eq!(snapshot.queues[0].waiting[0].switches, 3);
        // Unchanged since: still waiting.
        assert_eq!(waiting_tids(&sampled(&mut backend, 1..2).queues[0]), [9248]);
    }

    #[test]
    fn full_tables_are_counted() {
        let fake = FakeProc::new("full");
        fake.captured(9266, 9266, "hog");
        let extra = 4;
        for tid in 0..Tid::try_from(MAX_RUNNABLE_PER_CPU + extra).unwrap() {
            fake.thread(
                20_000,
                20_000 + tid,
                &fixture("victim.stat.txt"),
                Some(&fixture("victim.sched.txt")),
            );
        }
        let mut backend = fake.open("1").unwrap();
        let snapshot = sampled(&mut backend, 1..2);
        let skipped = u32::try_from(extra).unwrap() + 1;
        assert_eq!(backend.stats().table_full, u64::from(skipped));
        let queue = &snapshot.queues[0];
        assert_eq!(queue.waiting.len(), MAX_WAITING_PER_CPU);
        let not_pushed = u32::try_from(MAX_RUNNABLE_PER_CPU - 1 - MAX_WAITING_PER_CPU).unwrap();
        assert_eq!(queue.overflowed, skipped + not_pushed);
    }

    #[test]
    fn a_full_table_keeps_the_running_thread_and_the_longest_waiting() {
        let fake = FakeProc::new("longest");
        let victim_sched = String::from_utf8(fixture("victim.sched.txt")).unwrap();
        let count = MAX_RUNNABLE_PER_CPU + 40;
        // Later tids waited longer (smaller exec_start), so the scan meets them last.
        for i in 0..count {
            let tid = 20_000 + Tid::try_from(i).unwrap();
            let exec_start = format!("{}.000000", 2_615_000 - i);
            let sched = victim_sched.replace("2615105.828097", &exec_start);
            fake.thread(
                tid,
                tid,
                &fixture("victim.stat.txt"),
                Some(sched.as_bytes()),
            );
        }
        // The running thread (largest exec_start) comes last in the scan too.
        fake.captured(30_000, 30_000, "hog");
        let mut backend = fake.open("1").unwrap();
        let snapshot = sampled(&mut backend, 1..2);
        let queue = &snapshot.queues[0];
        assert_eq!(queue.running.map(|r| r.tid), Some(30_000));
        let oldest = 20_000 + Tid::try_from(count).unwrap() - 1;
        let expected: Vec<Tid> = (0..Tid::try_from(MAX_WAITING_PER_CPU).unwrap())
            .map(|i| oldest - i)
            .collect();
        assert_eq!(waiting_tids(queue), expected);
        assert_eq!(
            usize::try_from(queue.overflowed).unwrap(),
            count - MAX_WAITING_PER_CPU
        );
    }

    #[test]
    fn open_says_what_to_do() {
        let cpus = CpuSet::all(2);
        let err = ProcfsBackend::open_root(c"/nonexistent/stalld-proc", &cpus)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("mount -t proc proc /proc"), "{err}");
        let fake = FakeProc::new("empty");
        let err = fake.open("0-1").err().unwrap().to_string();
        assert!(err.contains("lists no readable process"), "{err}");
        fake.thread(1, 1, b"garbage", None);
        let err = fake.open("0-1").err().unwrap().to_string();
        assert!(err.contains("/1/task/1/stat"), "{err}");
        fake.thread(
            1,
            1,
            &fixture("victim.stat.txt"),
            Some(b"x (1, #threads: 1)\n"),
        );
        let err = fake.open("0-1").err().unwrap().to_string();
        assert!(
            err.contains("/1/task/1/sched") && err.contains("CONFIG_SCHED_DEBUG"),
            "{err}"
        );
        fake.thread(1, 1, b"", Some(&fixture("victim.sched.txt")));
        assert!(fake.open("0-1").is_err());
        fake.thread(
            1,
            1,
            &fixture("victim.stat.txt"),
            Some(&fixture("victim.sched.txt")),
        );
        assert!(fake.open("0-1").is_ok());
    }

    #[test]
    fn threads_kept_off_the_monitored_cpus_are_read_once_in_a_while() {
        let nr_cpus = crate::sys::process::configured_cpus();
        if nr_cpus < 2 {
            return eprintln!("SKIPPED: needs two CPUs");
        }
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let pinned = std::thread::spawn(move || {
            let mut cpu0 = rustix::thread::CpuSet::new();
            cpu0.set(0);
            rustix::thread::sched_setaffinity(None, &cpu0).unwrap();
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        let queues = |cpus| Snapshot::new(cpus).queues;
        assert!(!may_run_on(tid, &queues(1..2)));
        assert!(may_run_on(tid, &queues(0..2)));
        assert!(
            may_run_on(i32::MAX, &queues(1..2)),
            "unknown: read its files"
        );

        let mut backend = ProcfsBackend::open(&CpuSet::parse("1", nr_cpus).unwrap()).unwrap();
        let mut read_passes = 0;
        for _ in 0..AFFINITY_RECHECK_PASSES {
            sampled(&mut backend, 1..2);
            let stats = backend.stats();
            assert!(
                stats.kept_off >= 1 && stats.kept_off < stats.threads,
                "{stats:?}"
            );
            let turn = tid.unsigned_abs() % AFFINITY_RECHECK_PASSES
                == backend.scan.passes % AFFINITY_RECHECK_PASSES;
            read_passes += u32::from(turn);
        }
        assert_eq!(
            read_passes, 1,
            "read in one sample of {AFFINITY_RECHECK_PASSES}"
        );
        drop(done_tx);
        pinned.join().unwrap();
    }

    #[test]
    fn samples_the_live_proc() {
        let nr_cpus = crate::sys::process::configured_cpus();
        let mut backend = ProcfsBackend::open(&CpuSet::all(nr_cpus)).unwrap();
        let snapshot = sampled(&mut backend, 0..nr_cpus);
        assert!(snapshot.queues.iter().all(|q| q.present));
        let stats = backend.stats();
        assert!(stats.threads >= 2, "{stats:?}");
        assert!(stats.runnable >= 1, "{stats:?}");
        // This thread runs while it reads its own stat: runnable, with a known last run.
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        assert!(backend.last_run(me).is_some());
    }
}
