//! The `sched_debug` backend: a pure line parser of the kernel's sched/debug text (3.x to
//! 6.18 layouts) and a backend that streams that file through one fixed buffer per sample.
//! Invariant: nothing allocates per sample, and a row that does not fit the layout is
//! skipped and counted, never guessed; no input can make it panic.

use core::ffi::CStr;
use std::ffi::CString;

use rustix::io::Errno;

use crate::backend::{
    BackendKind, CpuQueue, LastRun, PolledBackend, Remedy, RunningTask, SampleError, Snapshot,
    Unavailable, WaitingTask,
};
use crate::sys::debugfs::{self, MountedDebugfs};
use crate::sys::lines::{open_read, LineReader};
use crate::sys::proc_files;
use crate::task::{Comm, Tid, COMM_MAX_LEN};

/// One line of the `runnable tasks:` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRow {
    /// The task running on the CPU (`>R`, or `R` on 3.x).
    pub current: bool,
    /// State character (`R`, `S`, `D`, `I`, ...); `None` on 3.x, which has no state column.
    pub state: Option<u8>,
    /// The task's name (`%15s`, may hold spaces).
    pub comm: Comm,
    /// Its thread id.
    pub tid: Tid,
    /// `nvcsw + nivcsw`.
    pub switches: u64,
    /// Kernel priority (see [`crate::backend::MAX_RT_PRIO`]).
    pub prio: i32,
}

/// What one line of sched/debug says, if anything the daemon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A `cpu#N` block starts; the records until the next one are about CPU N.
    Cpu(u32),
    /// The CPU's `.clock_task`.
    ClockTask {
        /// Nanoseconds.
        ns: u64,
    },
    /// `.rt_nr_running` of the CPU's root `rt_rq`.
    RtNrRunning(u32),
    /// A row of the task table.
    Task(TaskRow),
}

/// Rows the parser could not understand since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParserStats {
    /// Task rows that could not be parsed.
    pub bad_rows: u32,
}

/// Where the task name column sits: it follows a `prefix_len`-byte prefix (state or
/// current marker) and ends at column `name_end`, where the header word `task` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    prefix_len: usize,
    name_end: usize,
}

/// ` S            task   PID` (5.8+), also used when the header is missing.
const LAYOUT_5_8: Layout = Layout {
    prefix_len: 2,
    name_end: 18,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Other,
    Cpu,
    RootRtRq,
    TableHeader,
    Table,
}

/// Line-at-a-time state machine over sched/debug text; no I/O, no allocation.
pub struct SchedDebugParser {
    section: Section,
    layout: Layout,
    /// Inside a row split by newlines in a task name: name bytes still to come.
    split_name_bytes: Option<usize>,
    want_rows: bool,
    stats: ParserStats,
}

impl Default for SchedDebugParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SchedDebugParser {
    /// A parser before any line.
    pub const fn new() -> Self {
        SchedDebugParser {
            section: Section::Other,
            layout: LAYOUT_5_8,
            split_name_bytes: None,
            want_rows: true,
            stats: ParserStats { bad_rows: 0 },
        }
    }

    /// Prepares for a new pass over the file.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Counters since the last reset.
    pub fn stats(&self) -> ParserStats {
        self.stats
    }

    /// With `false`, task rows are skipped without being parsed (rows of an unmonitored
    /// CPU); rows split by hostile names are still tracked so they cannot desynchronise.
    pub fn set_want_rows(&mut self, want: bool) {
        self.want_rows = want;
    }

    /// Feeds one line (without its `\n`).
    pub fn feed(&mut self, line: &[u8]) -> Option<Record> {
        match self.section {
            Section::Table => self.table_line(line),
            Section::TableHeader => {
                self.section = Section::Table;
                match header_layout(line) {
                    Some(layout) => {
                        self.layout = layout;
                        None
                    }
                    None => {
                        self.layout = LAYOUT_5_8;
                        self.table_line(line)
                    }
                }
            }
            Section::Other | Section::Cpu | Section::RootRtRq => self.section_line(line),
        }
    }

    fn section_line(&mut self, line: &[u8]) -> Option<Record> {
        match line.first() {
            None => None,
            Some(b' ' | b'\t') => {
                let (key, value) = proc_files::key_value(line)?;
                match (self.section, key) {
                    (Section::Cpu, b".clock_task") => Some(Record::ClockTask {
                        ns: proc_files::ms_text_to_ns(value)?,
                    }),
                    (Section::RootRtRq, b".rt_nr_running") => {
                        let n = u32::try_from(proc_files::parse_u64(value)?).ok()?;
                        Some(Record::RtNrRunning(n))
                    }
                    _ => None,
                }
            }
            Some(_) => {
                self.section = Section::Other;
                if line == b"runnable tasks:" {
                    self.section = Section::TableHeader;
                    return None;
                }
                if let Some(cpu) = cpu_block_start(line) {
                    self.section = Section::Cpu;
                    return Some(Record::Cpu(cpu));
                }
                if is_root_rt_rq(line) {
                    self.section = Section::RootRtRq;
                }
                None
            }
        }
    }

    fn table_line(&mut self, line: &[u8]) -> Option<Record> {
        if let Some(remaining) = self.split_name_bytes {
            if line.len() < remaining {
                // A middle piece of a split name: its bytes and its newline.
                self.split_name_bytes = Some(remaining - line.len() - 1);
                return None;
            }
            // The last piece of the split row. A piece can never pass the column checks,
            // so a line that does was a whole row after a stray short line.
            self.split_name_bytes = None;
            return if self.want_rows {
                parse_row(line, self.layout).map(Record::Task)
            } else {
                None
            };
        }
        if line.is_empty() {
            self.section = Section::Other;
            return None;
        }
        if line.iter().all(|&b| b == b'-') {
            return None;
        }
        if line.len() < self.layout.name_end {
            if row_prefix(line, self.layout).is_some() {
                self.split_name_bytes = Some(self.layout.name_end - line.len() - 1);
            }
            self.stats.bad_rows += 1;
            return None;
        }
        if !self.want_rows {
            return None;
        }
        let row = parse_row(line, self.layout);
        if row.is_none() {
            self.stats.bad_rows += 1;
        }
        row.map(Record::Task)
    }
}

/// `cpu#N, X MHz` (x86) or `cpu#N`.
fn cpu_block_start(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"cpu#")?;
    let digits_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (digits, tail) = rest.split_at(digits_len);
    if !(tail.is_empty() || tail.starts_with(b",")) {
        return None;
    }
    u32::try_from(proc_files::parse_u64(digits)?).ok()
}

/// `rt_rq[N]:` or `rt_rq[N]:/` (the root group, not a child group's `rt_rq`).
fn is_root_rt_rq(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"rt_rq[") else {
        return false;
    };
    let digits_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    matches!(&rest[digits_len..], b"]:" | b"]:/") && digits_len > 0
}

/// The layout announced by a table header line, if it is one.
fn header_layout(line: &[u8]) -> Option<Layout> {
    let task_at = line.windows(6).position(|w| w == b" task ")? + 1;
    let name_end = task_at + 4;
    if !line[name_end..].windows(5).any(|w| w == b" PID ") {
        return None;
    }
    let prefix_len = if line.starts_with(b" S ") {
        2
    } else if line[..task_at].iter().all(|&b| b == b' ') {
        1
    } else {
        return None;
    };
    // The name column is `%15s`, plus the separator space on 5.8+.
    let width = name_end - prefix_len;
    (COMM_MAX_LEN..=COMM_MAX_LEN + 1)
        .contains(&width)
        .then_some(Layout {
            prefix_len,
            name_end,
        })
}

/// `(current, state)` from a row's prefix.
fn row_prefix(line: &[u8], layout: Layout) -> Option<(bool, Option<u8>)> {
    match (layout.prefix_len, line) {
        (2, [b'>', b'R', ..]) => Some((true, Some(b'R'))),
        (2, [b' ', state, ..]) if state.is_ascii_alphabetic() => Some((false, Some(*state))),
        (1, [b'R', ..]) => Some((true, None)),
        (1, [b' ', ..]) => Some((false, None)),
        _ => None,
    }
}

/// `-?[0-9]+`
fn is_integer(token: &[u8]) -> bool {
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// A `%5d` PID at the start of `text`, followed by a space or the end; returns the rest.
fn pid_field(text: &[u8]) -> Option<(Tid, &[u8])> {
    let spaces = text.iter().take_while(|&&b| b == b' ').count();
    let digits = text[spaces..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || spaces != 5usize.saturating_sub(digits) {
        return None;
    }
    let end = spaces + digits;
    let rest = &text[end..];
    if !(rest.is_empty() || rest.starts_with(b" ")) {
        return None;
    }
    let tid = Tid::try_from(proc_files::parse_u64(&text[spaces..end])?).ok()?;
    (tid > 0).then_some((tid, rest))
}

/// Parses one task row: the name sits in fixed columns, then the PID, then `switches` and
/// `prio` are the first two integer tokens (every other column before them has a `.` or
/// is a single letter, in every kernel layout).
fn parse_row(line: &[u8], layout: Layout) -> Option<TaskRow> {
    let (current, state) = row_prefix(line, layout)?;
    let name_area = line.get(layout.prefix_len..layout.name_end)?;
    let pad = name_area.len().checked_sub(COMM_MAX_LEN)?;
    if name_area[..pad].iter().any(|&b| b != b' ') {
        return None;
    }
    let name_start = name_area[pad..]
        .iter()
        .position(|&b| b != b' ')
        .map_or(name_area.len(), |i| pad + i);
    let after_name = line.get(layout.name_end..)?.strip_prefix(b" ")?;
    let (tid, rest) = pid_field(after_name)?;
    let mut integers = rest.split(|&b| b == b' ').filter(|t| is_integer(t));
    let switches = proc_files::parse_u64(integers.next()?)?;
    let prio = i32::try_from(proc_files::parse_i64(integers.next()?)?).ok()?;
    Some(TaskRow {
        current,
        state,
        comm: Comm::new(&name_area[name_start..]),
        tid,
        switches,
        prio,
    })
}

/// Longest sched/debug line kept; longer ones (huge group paths) are skipped and counted.
const LINE_BYTES: usize = 4096;

/// Counters of the last sample, for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleStats {
    /// Task rows that could not be parsed.
    pub bad_rows: u32,
    /// Lines longer than the line buffer, skipped.
    pub overlong_lines: u32,
}

/// The sched/debug file at `path` cannot be read.
fn unreadable(path: &CStr, errno: Errno) -> Unavailable {
    Unavailable::new(
        format!("cannot read {}: {errno}", path.to_string_lossy()),
        Remedy::FixOrOtherBackend("run as root with debugfs mounted"),
    )
}

/// debugfs was not mounted and mounting it failed.
fn mount_failed(errno: Errno) -> Unavailable {
    Unavailable::new(
        format!(
            "cannot read /sys/kernel/debug/sched/debug: debugfs not mounted and mounting it \
             failed ({errno})"
        ),
        Remedy::FixOrOtherBackend("mount debugfs"),
    )
}

/// Run-queue samples from `sched/debug` (debugfs, 5.13+) or `/proc/sched_debug`.
pub struct SchedDebugBackend {
    path: CString,
    reader: LineReader<LINE_BYTES>,
    parser: SchedDebugParser,
    /// State of a task, for 3.x rows that have no state column.
    state_of: fn(Tid) -> Option<u8>,
    stats: SampleStats,
    /// The debugfs this backend mounted to find its file, unmounted when it is dropped.
    mounted: Option<MountedDebugfs>,
}

const DEFAULT_DEBUGFS_FILE: &CStr = c"/sys/kernel/debug/sched/debug";
const PROC_FILE: &CStr = c"/proc/sched_debug";

/// Opens `path` and reads a little of it: debugfs can allow the open and refuse the read.
fn probe(path: &CStr) -> Result<(), Errno> {
    let fd = open_read(path)?;
    let mut buf = [0u8; 64];
    rustix::io::retry_on_intr(|| rustix::io::read(&fd, &mut buf))?;
    Ok(())
}

impl SchedDebugBackend {
    /// Finds the file: debugfs where `/proc/mounts` says, then the usual debugfs place,
    /// then `/proc/sched_debug`; mounts debugfs when it is not mounted at all.
    pub fn open() -> Result<Self, Unavailable> {
        let mount_points = debugfs::mount_points();
        let mut candidates: Vec<CString> = mount_points
            .iter()
            .filter_map(|mp| CString::new([mp.as_slice(), b"/sched/debug"].concat()).ok())
            .collect();
        candidates.push(DEFAULT_DEBUGFS_FILE.into());
        candidates.push(PROC_FILE.into());
        let mut first_error = None;
        for path in candidates {
            match probe(&path) {
                Ok(()) => return Ok(Self::with_path(path)),
                Err(errno) => {
                    first_error.get_or_insert((path, errno));
                }
            }
        }
        if mount_points.is_empty() {
            let mounted = debugfs::mount_if_absent().map_err(mount_failed)?;
            let mut backend = Self::open_path(DEFAULT_DEBUGFS_FILE)?;
            backend.mounted = mounted;
            return Ok(backend);
        }
        let (path, errno) = first_error.unwrap_or((DEFAULT_DEBUGFS_FILE.into(), Errno::NOENT));
        Err(unreadable(&path, errno))
    }

    /// Uses the file at `path` (tests, or a user-given location) if it is readable.
    pub fn open_path(path: &CStr) -> Result<Self, Unavailable> {
        probe(path).map_err(|errno| unreadable(path, errno))?;
        Ok(Self::with_path(path.into()))
    }

    fn with_path(path: CString) -> Self {
        SchedDebugBackend {
            path,
            reader: LineReader::new(),
            parser: SchedDebugParser::new(),
            state_of: proc_files::read_thread_state,
            stats: SampleStats::default(),
            mounted: None,
        }
    }

    /// The file being read.
    pub fn path(&self) -> &CStr {
        &self.path
    }

    /// Counters of the last sample.
    pub fn stats(&self) -> SampleStats {
        self.stats
    }
}

impl PolledBackend for SchedDebugBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::SchedDebug
    }

    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
        snapshot.reset(false);
        self.parser.reset();
        let parser = &mut self.parser;
        let state_of = self.state_of;
        let queues = &mut snapshot.queues;
        let mut queue: Option<usize> = None;
        let mut cpu_blocks = 0u32;
        let read = self
            .reader
            .for_each_line(&self.path, |line| {
                let Some(record) = parser.feed(line) else {
                    return;
                };
                if let Record::Cpu(cpu) = record {
                    cpu_blocks += 1;
                    queue = queues.binary_search_by_key(&cpu, |q| q.cpu).ok();
                    parser.set_want_rows(queue.is_some());
                }
                let Some(q) = queue.and_then(|i| queues.get_mut(i)) else {
                    return;
                };
                match record {
                    Record::Cpu(_) => q.present = true,
                    Record::ClockTask { ns } => q.clock_task_ns = ns,
                    Record::RtNrRunning(n) => q.rt_nr_running = n,
                    Record::Task(row) if !row.current => {
                        let runnable = match row.state {
                            Some(state) => state == b'R',
                            None => state_of(row.tid) == Some(b'R'),
                        };
                        if runnable {
                            // Rows carry no wait start: untracked tasks take turns.
                            let key = q.rotation_key(row.tid);
                            let task = WaitingTask {
                                tid: row.tid,
                                comm: row.comm,
                                switches: row.switches,
                                prio: row.prio,
                                waiting_since_ns: None,
                                run_counts: None,
                            };
                            q.offer(task, key);
                        }
                    }
                    Record::Task(row) => {
                        q.running = Some(RunningTask {
                            tid: row.tid,
                            switches: row.switches,
                        })
                    }
                }
            })
            .map_err(SampleError::Io)?;
        queues.iter_mut().for_each(CpuQueue::advance_rotation);
        self.stats = SampleStats {
            bad_rows: self.parser.stats().bad_rows,
            overlong_lines: read.overlong_lines,
        };
        if cpu_blocks == 0 {
            return Err(SampleError::Format("no cpu# block in sched_debug"));
        }
        Ok(())
    }

    fn last_run(&mut self, tid: Tid) -> Option<LastRun> {
        proc_files::read_last_run(tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const DEBIAN_6_1: &[u8] = include_bytes!("../../tests/fixtures/6.1-debian/sched_debug.txt");
    const DEBIAN_6_12: &[u8] = include_bytes!("../../tests/fixtures/6.12-debian/sched_debug.txt");
    const DEBIAN_6_12_RT: &[u8] =
        include_bytes!("../../tests/fixtures/6.12-rt-debian/sched_debug.txt");
    const HOST_6_18: &[u8] = include_bytes!("../../tests/fixtures/6.18-host/sched_debug.txt");
    const STYLE_4_18: &[u8] = include_bytes!("../../tests/fixtures/synthetic/4.18-style.txt");
    const STYLE_3_X: &[u8] = include_bytes!("../../tests/fixtures/synthetic/3.x-style.txt");

    #[derive(Debug, Default)]
    struct CpuView {
        clock_task_ns: Option<u64>,
        rt_nr_running: Option<u32>,
        rows: Vec<TaskRow>,
    }

    fn parse(text: &[u8]) -> (BTreeMap<u32, CpuView>, ParserStats) {
        let mut parser = SchedDebugParser::new();
        let mut cpus = BTreeMap::<u32, CpuView>::new();
        let mut cpu = None;
        for line in text.split(|&b| b == b'\n') {
            match parser.feed(line) {
                Some(Record::Cpu(n)) => {
                    cpu = Some(n);
                    cpus.entry(n).or_default();
                }
                Some(Record::ClockTask { ns }) => {
                    cpus.get_mut(&cpu.unwrap()).unwrap().clock_task_ns = Some(ns)
                }
                Some(Record::RtNrRunning(n)) => {
                    cpus.get_mut(&cpu.unwrap()).unwrap().rt_nr_running = Some(n)
                }
                Some(Record::Task(row)) => cpus.get_mut(&cpu.unwrap()).unwrap().rows.push(row),
                None => {}
            }
        }
        (cpus, parser.stats())
    }

    fn row(current: bool, state: Option<u8>, name: &[u8], tid: Tid, sw: u64, prio: i32) -> TaskRow {
        TaskRow {
            current,
            state,
            comm: Comm::new(name),
            tid,
            switches: sw,
            prio,
        }
    }

    fn find(view: &CpuView, tid: Tid) -> TaskRow {
        *view.rows.iter().find(|r| r.tid == tid).unwrap()
    }

    /// The rows the test expects on CPU 1, by tid: the scenario tasks of every fixture.
    fn assert_scenario(view: &CpuView, hog: Tid, fifo: Tid, other: Tid, odd: Tid, sw: [u64; 4]) {
        let r = Some(b'R');
        assert_eq!(find(view, hog), row(true, r, b"fx_rt_hog", hog, sw[0], 49));
        assert_eq!(
            find(view, fifo),
            row(false, r, b"fx_fifo1_wrk", fifo, sw[1], 98)
        );
        assert_eq!(
            find(view, other),
            row(false, r, b"fx_other_wrk", other, sw[2], 120)
        );
        assert_eq!(
            find(view, odd),
            row(false, r, b"my task (x) 1", odd, sw[3], 120)
        );
        let host = find(view, odd - 1);
        assert_eq!(
            (host.comm, host.state),
            (Comm::new(b"fx_oddhost"), Some(b'S'))
        );
    }

    #[test]
    fn debian_6_1() {
        let (cpus, stats) = parse(DEBIAN_6_1);
        assert_eq!(stats.bad_rows, 0);
        assert_eq!(cpus.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
        let cpu1 = &cpus[&1];
        assert_eq!(cpu1.clock_task_ns, Some(4_714_647_981));
        assert_eq!(cpu1.rt_nr_running, Some(2));
        assert_eq!(cpu1.rows.len(), 14);
        assert_scenario(cpu1, 129, 128, 125, 127, [3, 3, 4, 5]);
        assert_eq!(
            find(cpu1, 20),
            row(false, Some(b'S'), b"migration/1", 20, 6, 0)
        );
        assert_eq!(
            find(cpu1, 23),
            row(false, Some(b'I'), b"kworker/1:0H", 23, 4, 100)
        );
        assert_eq!(find(cpu1, 1), row(false, Some(b'S'), b"init", 1, 343, 120));
    }

    #[test]
    fn debian_6_12() {
        let (cpus, stats) = parse(DEBIAN_6_12);
        assert_eq!(stats.bad_rows, 0);
        let cpu1 = &cpus[&1];
        assert_eq!(cpu1.clock_task_ns, Some(4_722_622_680));
        assert_eq!(cpu1.rt_nr_running, Some(2));
        assert_eq!(cpu1.rows.len(), 21);
        assert_scenario(cpu1, 180, 179, 176, 178, [2, 2, 10, 8]);
        assert_eq!(
            find(cpu1, 55),
            row(false, Some(b'I'), b"kworker/R-kbloc", 55, 2, 100)
        );
        assert_eq!(
            find(cpu1, 25),
            row(false, Some(b'S'), b"idle_inject/1", 25, 3, 49)
        );
    }

    #[test]
    fn debian_6_12_rt_without_numa_columns() {
        let (cpus, stats) = parse(DEBIAN_6_12_RT);
        assert_eq!(stats.bad_rows, 0);
        let cpu1 = &cpus[&1];
        assert_eq!(cpu1.clock_task_ns, Some(5_186_304_513));
        assert_eq!(cpu1.rt_nr_running, Some(4));
        assert_eq!(cpu1.rows.len(), 26);
        assert_scenario(cpu1, 203, 202, 199, 201, [3, 2, 14, 8]);
        assert_eq!(
            find(cpu1, 32),
            row(false, Some(b'R'), b"rcuc/1", 32, 252, 98)
        );
        assert_eq!(
            find(cpu1, 33),
            row(false, Some(b'R'), b"ktimers/1", 33, 46, 98)
        );
    }

    #[test]
    fn host_6_18_with_optional_slice_column() {
        let (cpus, stats) = parse(HOST_6_18);
        assert_eq!(stats.bad_rows, 0);
        assert_eq!(cpus.keys().copied().collect::<Vec<_>>(), [0, 1]);
        let cpu1 = &cpus[&1];
        assert_eq!(cpu1.clock_task_ns, Some(2_698_789_417_598));
        assert_eq!(cpu1.rt_nr_running, Some(2));
        assert_eq!(cpu1.rows.len(), 38);
        assert_scenario(cpu1, 6021, 6020, 6017, 6019, [2, 3, 8, 9]);
        assert_eq!(
            find(cpu1, 13207),
            row(false, Some(b'I'), b"kworker/1:2H", 13207, 19515, 100)
        );
        assert_eq!(
            find(cpu1, 16567),
            row(false, Some(b'R'), b"kworker/1:0", 16567, 10554, 120)
        );
        assert_eq!(
            find(cpu1, 21),
            row(false, Some(b'S'), b"migration/1", 21, 7912, 0)
        );
        assert_eq!(
            find(cpu1, 51),
            row(false, Some(b'S'), b"irq/25-ACPI:Ged", 51, 5, 49)
        );
    }

    #[test]
    fn synthetic_4_18_name_touching_state_char() {
        let (cpus, stats) = parse(STYLE_4_18);
        assert_eq!(stats.bad_rows, 0);
        let cpu1 = &cpus[&1];
        assert_eq!(cpu1.clock_task_ns, Some(5_123_987_654_321));
        assert_eq!(cpu1.rt_nr_running, Some(2));
        let r = Some(b'R');
        assert_eq!(
            cpu1.rows,
            [
                row(false, Some(b'S'), b"cpuhp/1", 15, 7, 120),
                row(false, Some(b'S'), b"migration/1", 16, 6, 0),
                row(false, Some(b'S'), b"ksoftirqd/1", 18, 6, 120),
                row(false, Some(b'I'), b"kworker/1:0", 19, 4, 120),
                row(false, r, b"fx_other_wrk", 1197, 4, 120),
                row(false, Some(b'S'), b"fx_oddhost", 1198, 6, 120),
                row(false, r, b"my task (x) 1", 1199, 5, 120),
                row(false, r, b"fx_fifo1_worker", 1200, 3, 98),
                row(false, Some(b'D'), b"fx_disk_waiter", 1202, 11, 120),
                row(true, r, b"fx_rt_hog", 1201, 3, 49),
            ]
        );
    }

    #[test]
    fn synthetic_3_x_without_state_column() {
        let (cpus, stats) = parse(STYLE_3_X);
        assert_eq!(stats.bad_rows, 0);
        let cpu1 = &cpus[&1];
        assert_eq!(cpu1.clock_task_ns, Some(6_020_876_543_210));
        assert_eq!(cpu1.rt_nr_running, Some(2));
        assert_eq!(
            cpu1.rows,
            [
                row(false, None, b"ksoftirqd/1", 13, 6, 120),
                row(false, None, b"fx_other_wrk", 898, 4, 120),
                row(false, None, b"my task (x) 1", 900, 5, 120),
                row(false, None, b"fx_fifo1_worker", 901, 3, 98),
                row(true, None, b"fx_rt_hog", 902, 3, 49),
            ]
        );
        assert_eq!(cpus[&0].rows, [row(true, None, b"bash", 1000, 88, 120)]);
    }

    const HEADER_5_8: &str = "runnable tasks:\n \
        S            task   PID       vruntime   eligible    deadline             slice          \
        sum-exec      switches  prio\n---------------\n";
    const GOOD_ROW: &str =
        " R    fx_fifo1_wrk  6020      9336.626892   E           0.674151           \
        1.400000       301.347672         3      98         0.000000 /";

    fn parse_table(rows: &[u8]) -> (Vec<TaskRow>, ParserStats) {
        let mut text = b"cpu#1\n".to_vec();
        text.extend_from_slice(HEADER_5_8.as_bytes());
        text.extend_from_slice(rows);
        let (cpus, stats) = parse(&text);
        (cpus[&1].rows.clone(), stats)
    }

    fn lines(lines: &[&[u8]]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| l.iter().chain(b"\n"))
            .copied()
            .collect()
    }

    #[test]
    fn name_with_newlines_cannot_forge_rows_or_cpus() {
        // Rows of comm "x\n\ncpu#3\n R b" and comm "\n\n", printed %15s: each is split into
        // pieces; a blank piece must not end the table, `cpu#3` must not start a CPU block.
        let text = lines(&[
            b" S   x",
            b"",
            b"cpu#3",
            b" R b  4242     1.000000   E  2.000000  1.400000  5.000000   7   120 /",
            b" S              ",
            b"",
            b"  4343     1.000000   E  2.000000  1.400000  5.000000   9   120 /",
            GOOD_ROW.as_bytes(),
        ]);
        let (rows, stats) = parse_table(&text);
        assert_eq!(rows, [row(false, Some(b'R'), b"fx_fifo1_wrk", 6020, 3, 98)]);
        assert_eq!(stats.bad_rows, 2);
    }

    #[test]
    fn truncated_and_garbage_rows_are_counted() {
        let text = lines(&[
            b" R    fx_fifo1_wrk  6020",
            b" R    fx_fifo1_wrk  6020      9336.626892   E",
            b"garbage garbage garbage garbage",
            b" R    fx_fifo1_wrk 6020 1.000000 3 98",
            b"\x01\x02\x03 \x7f\x80\x81\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6",
            GOOD_ROW.as_bytes(),
        ]);
        let (rows, stats) = parse_table(&text);
        assert_eq!(rows.len(), 1);
        assert_eq!(stats.bad_rows, 5);
    }

    #[test]
    fn huge_numbers_are_refused() {
        let text = lines(&[
            b" R    fx_fifo1_wrk 99999999999  1.000000  3  98 /",
            b" R    fx_fifo1_wrk  6020  1.000000  99999999999999999999999  98 /",
            b" R    fx_fifo1_wrk  6020  1.000000  3  99999999999 /",
            b" R    fx_fifo1_wrk  6020  1.000000  18446744073709551615  -1 /",
        ]);
        let (rows, stats) = parse_table(&text);
        assert_eq!(stats.bad_rows, 3);
        assert_eq!(
            rows,
            [row(false, Some(b'R'), b"fx_fifo1_wrk", 6020, u64::MAX, -1)]
        );
        let mut parser = SchedDebugParser::new();
        assert_eq!(parser.feed(b"cpu#99999999999, 1.0 MHz"), None);
        assert_eq!(parser.feed(b"cpu#4294967295"), Some(Record::Cpu(u32::MAX)));
        assert_eq!(
            parser.feed(b"  .clock_task : 99999999999999999.000000"),
            None
        );
        assert_eq!(parser.feed(b"  .clock_task : -5.000000"), None);
    }

    #[test]
    fn non_utf8_names_are_kept_as_bytes() {
        let text = lines(&[b" R      \xff\xfe caf\xc3\xa9 \x01  6020  1.000000  3  98 /"]);
        let (rows, _) = parse_table(&text);
        assert_eq!(rows[0].comm.as_bytes(), b"\xff\xfe caf\xc3\xa9 \x01");
        assert_eq!(rows[0].tid, 6020);
    }

    #[test]
    fn no_panic_on_any_prefix_of_any_fixture() {
        for text in [
            DEBIAN_6_1,
            DEBIAN_6_12,
            DEBIAN_6_12_RT,
            HOST_6_18,
            STYLE_4_18,
            STYLE_3_X,
        ] {
            for line in text.split(|&b| b == b'\n') {
                let mut parser = SchedDebugParser::new();
                for len in 0..=line.len() {
                    parser.feed(&line[..len]);
                    parser.feed(&line[len..]);
                }
            }
        }
    }

    #[test]
    fn no_panic_on_random_lines() {
        const ALPHABET: &[u8] = b" >RSI-.:/#[]0123456789cpu_rqtask PID\xff\t\n";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut parser = SchedDebugParser::new();
        let mut line = [0u8; 96];
        for round in 0..20_000 {
            let mut below = |n: usize| usize::try_from(next() % n as u64).unwrap();
            let len = below(line.len());
            for b in &mut line[..len] {
                *b = ALPHABET[below(ALPHABET.len())];
            }
            if round % 50 == 0 {
                parser.feed(b"runnable tasks:");
            }
            parser.feed(&line[..len]);
        }
    }

    #[test]
    fn rows_of_unwanted_cpus_are_not_parsed() {
        let mut parser = SchedDebugParser::new();
        parser.feed(b"cpu#0");
        parser.feed(b"runnable tasks:");
        parser.set_want_rows(false);
        assert_eq!(parser.feed(GOOD_ROW.as_bytes()), None);
        parser.set_want_rows(true);
        assert!(matches!(
            parser.feed(GOOD_ROW.as_bytes()),
            Some(Record::Task(_))
        ));
    }

    fn fixture_file(tag: &str, contents: &[u8]) -> CString {
        let path =
            std::env::temp_dir().join(format!("stalld-sched-debug-{}-{tag}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        CString::new(path.to_str().unwrap()).unwrap()
    }

    fn waiting(snapshot: &Snapshot, cpu: usize) -> Vec<(Tid, String, u64, i32)> {
        snapshot.queues[cpu]
            .waiting
            .iter()
            .map(|t| (t.tid, t.comm.to_string(), t.switches, t.prio))
            .collect()
    }

    #[test]
    fn backend_samples_runnable_waiting_tasks() {
        let path = fixture_file("6.18", HOST_6_18);
        let mut backend = SchedDebugBackend::open_path(&path).unwrap();
        assert_eq!(crate::backend::Backend::name(&backend), "sched_debug");
        let mut snapshot = Snapshot::new([1, 7].into_iter());
        backend.sample(&mut snapshot).unwrap();
        let cpu1 = &snapshot.queues[0];
        assert!(cpu1.present);
        assert_eq!(cpu1.clock_task_ns, 2_698_789_417_598);
        assert_eq!(cpu1.rt_nr_running, 2);
        assert_eq!(
            waiting(&snapshot, 0),
            // In turn order (by tid from the rotation's start), not file order.
            [
                (6017, "fx_other_wrk".into(), 8, 120),
                (6019, "my task (x) 1".into(), 9, 120),
                (6020, "fx_fifo1_wrk".into(), 3, 98),
                (16567, "kworker/1:0".into(), 10554, 120),
            ]
        );
        assert!(!snapshot.queues[1].present);
        assert_eq!(backend.stats(), SampleStats::default());
        // A second pass overwrites, it does not accumulate.
        backend.sample(&mut snapshot).unwrap();
        assert_eq!(snapshot.queues[0].waiting.len(), 4);
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
    }

    #[test]
    fn backend_asks_procfs_for_3_x_states() {
        let path = fixture_file("3.x", STYLE_3_X);
        let mut backend = SchedDebugBackend::open_path(&path).unwrap();
        backend.state_of = |tid| Some(if tid == 13 { b'S' } else { b'R' });
        let mut snapshot = Snapshot::new([0, 1].into_iter());
        backend.sample(&mut snapshot).unwrap();
        assert_eq!(waiting(&snapshot, 0), []);
        assert_eq!(
            waiting(&snapshot, 1),
            [
                (898, "fx_other_wrk".into(), 4, 120),
                (900, "my task (x) 1".into(), 5, 120),
                (901, "fx_fifo1_worker".into(), 3, 98),
            ]
        );
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
    }

    #[test]
    fn backend_rejects_a_file_without_cpu_blocks() {
        let path = fixture_file("empty", b"Sched Debug Version: v0.11\n");
        let mut backend = SchedDebugBackend::open_path(&path).unwrap();
        let mut snapshot = Snapshot::new([0].into_iter());
        assert!(matches!(
            backend.sample(&mut snapshot),
            Err(SampleError::Format(_))
        ));
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let err = SchedDebugBackend::open_path(c"/nonexistent/sched/debug")
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .starts_with("cannot read /nonexistent/sched/debug: "));
        let err = mount_failed(Errno::PERM);
        assert!(err
            .to_string()
            .contains("/sys/kernel/debug/sched/debug: debugfs not mounted and mounting it failed"));
        assert!(err
            .to_string()
            .ends_with("mount debugfs or use another backend"));
    }

    #[test]
    fn last_ran_comes_from_proc_sched() {
        let path = fixture_file("lastran", HOST_6_18);
        let mut backend = SchedDebugBackend::open_path(&path).unwrap();
        let tid = Tid::try_from(std::process::id()).unwrap();
        assert!(backend.last_run(tid).is_some());
        assert_eq!(backend.last_run(-1), None);
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
    }
}
