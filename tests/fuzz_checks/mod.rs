//! The fuzzed properties, one function per target, each taking the raw input and panicking
//! when its property fails. Used by the libFuzzer targets (`fuzz/`) and by the corpus replay
//! (`tests/fuzz_corpus.rs`), so CI checks every corpus file without a fuzzing tool.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use rustix::io::Errno;
use stalld::backend::sched_debug::{Record, SchedDebugParser, TaskRow};
use stalld::backend::{CpuQueue, LastRun, RunningTask, Snapshot, WaitingTask};
use stalld::boost::{BoostEvent, BoostParams, BoostPolicy, Booster, Scheduler};
use stalld::boost_budget::BudgetEnforcement;
use stalld::cli::{self, Command};
use stalld::cpuset::{CpuSet, MAX_CPUS_U32};
use stalld::detect::{Tracker, CONFIRMATION_NS};
use stalld::sys::lines::LineReader;
use stalld::sys::proc_files::{self, ProcSched};
use stalld::sys::sched::{self, SchedAttr};
use stalld::task::{Comm, Tid, COMM_MAX_LEN};

/// The targets, by the name of their fuzz binary and corpus folder.
/// A property over one input; panics when it fails.
pub type Check = fn(&[u8]);

pub const TARGETS: [(&str, Check); 6] = [
    ("sched_debug_raw", sched_debug_raw),
    ("sched_debug_layouts", sched_debug_layouts),
    ("proc_files", proc_files),
    ("cli", cli),
    ("lines", lines),
    ("tracker_booster", tracker_booster),
];

/// Decisions drawn from the input; past its end every draw is 0.
struct Draw<'a>(&'a [u8]);

impl Draw<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        let wide = usize::from(self.byte()) << 8 | usize::from(self.byte());
        wide % n
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// 1. sched_debug, raw bytes.

/// Any text: no panic, every task row is plausible, and skipping the rows of some CPUs (as
/// the backend does for unmonitored ones) changes nothing else: the same CPU blocks, clocks
/// and counts, and exactly the rows of the other CPUs.
pub fn sched_debug_raw(data: &[u8]) {
    let records = |unwanted_cpus: u32| {
        let mut parser = SchedDebugParser::new();
        let mut out = Vec::new();
        let mut cpu = None;
        for line in data.split(|&b| b == b'\n') {
            let Some(record) = parser.feed(line) else {
                continue;
            };
            match record {
                Record::Cpu(n) => {
                    cpu = Some(n);
                    parser.set_want_rows(unwanted_cpus >> (n % 32) & 1 == 0);
                }
                Record::Task(row) => {
                    assert!(row.tid > 0, "{row:?}");
                    assert!(line.len() > row.comm.as_bytes().len(), "{row:?}");
                }
                Record::ClockTask { .. } | Record::RtNrRunning(_) => {}
            }
            out.push((cpu, record));
        }
        out
    };
    let all = records(0);
    let unwanted = u32::from(data.first().copied().unwrap_or(0)) | 1 << 1;
    let wanted_only: Vec<_> = all
        .iter()
        .filter(|(cpu, record)| {
            !matches!(record, Record::Task(_)) || cpu.is_none_or(|n| unwanted >> (n % 32) & 1 == 0)
        })
        .copied()
        .collect();
    assert_eq!(records(unwanted), wanted_only);
}

// 2. sched_debug, kernel-style text of every layout with hostile names.

/// The task table layouts of `kernel/sched/debug.c` (see FACTS.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// 3.x: no state column; the current task is prefixed `R`, the others ` `.
    V3,
    /// 4.14..5.7: ` %c` or `>R`, then `%15s` touching it.
    V4_18,
    /// 5.8..6.5: ` %c %15s`.
    V5_8,
    /// 6.6..6.11: EEVDF columns under the old header.
    V6_6,
    /// 6.12+: EEVDF header and columns.
    V6_12,
}

const HEADER_3: &[u8] = b"            task   PID         tree-key  switches  prio     exec-runtime         sum-exec        sum-sleep";
const HEADER_4_18: &[u8] = b" S           task   PID         tree-key  switches  prio     wait-time             sum-exec        sum-sleep";
const HEADER_5_8: &[u8] = b" S            task   PID         tree-key  switches  prio     wait-time             sum-exec        sum-sleep";
const HEADER_6_12: &[u8] = b" S            task   PID       vruntime   eligible    deadline             slice          sum-exec      switches  prio         wait-time        sum-sleep       sum-block  node   group-id  group-path";

/// Bytes a hostile name is made of: separators, digits, the state letters, table syntax.
const NAME_BYTES: &[u8] = b" \n\t()R>SDI-.:/#[]0123456789cpu_rqtask PIDE\x01\x7f\xff";
const STATES: &[u8] = b"RSDTtXZPI";

#[derive(Clone, Debug)]
struct GenRow {
    cpu: u32,
    current: bool,
    state: u8,
    comm: Vec<u8>,
    tid: Tid,
    switches: u64,
    prio: i32,
}

/// `SPLIT_NS`: `%Ld.%06ld` of nanoseconds, right-aligned in `width` for the integer part.
fn split_ns(out: &mut Vec<u8>, width: usize, ns: i64) {
    let sign = if ns < 0 { "-" } else { "" };
    let int = format!("{sign}{}", (ns / 1_000_000).unsigned_abs());
    out.extend(format!("{int:>width$}.{:06}", (ns % 1_000_000).unsigned_abs()).bytes());
}

fn row_text(layout: Layout, row: &GenRow, draw: &mut Draw) -> Vec<u8> {
    let mut out = Vec::new();
    match (layout, row.current) {
        (Layout::V3, true) => out.push(b'R'),
        (Layout::V3, false) => out.push(b' '),
        (_, true) => out.extend(b">R"),
        (_, false) => out.extend([b' ', row.state]),
    }
    if matches!(layout, Layout::V5_8 | Layout::V6_6 | Layout::V6_12) {
        out.push(b' ');
    }
    out.resize(
        out.len() + COMM_MAX_LEN.saturating_sub(row.comm.len()),
        b' ',
    );
    out.extend(&row.comm);
    out.extend(format!(" {:5} ", row.tid).bytes());
    let mut ns = || i64::try_from(draw.u64() >> 20).unwrap_or(0) - (1 << 40);
    match layout {
        Layout::V3 | Layout::V4_18 | Layout::V5_8 => {
            split_ns(&mut out, 9, ns());
            out.extend(format!(" {:9} {:5} ", row.switches, row.prio).bytes());
        }
        Layout::V6_6 => {
            split_ns(&mut out, 9, ns());
            out.extend(b" E ");
            split_ns(&mut out, 9, ns());
            out.push(b' ');
            split_ns(&mut out, 9, ns());
            out.push(b' ');
            split_ns(&mut out, 9, ns());
            out.extend(format!(" {:9} {:5} ", row.switches, row.prio).bytes());
        }
        Layout::V6_12 => {
            split_ns(&mut out, 10, ns());
            out.extend(b"   N   ");
            split_ns(&mut out, 10, ns());
            out.extend(b" S ");
            split_ns(&mut out, 9, ns());
            out.extend(b"   ");
            split_ns(&mut out, 9, ns());
            out.extend(format!(" {:9}   {:5} ", row.switches, row.prio).bytes());
        }
    }
    for _ in 0..3 {
        split_ns(&mut out, 9, ns());
        out.push(b' ');
    }
    // NUMA node and group, then the cgroup path (which may hold spaces and digits).
    out.extend(b"0 0 ");
    out.extend(draw.pick(&[&b"/"[..], b"/a b/12 34", b"/user.slice/-5 7"]));
    out
}

fn header(layout: Layout) -> &'static [u8] {
    match layout {
        Layout::V3 => HEADER_3,
        Layout::V4_18 => HEADER_4_18,
        Layout::V5_8 | Layout::V6_6 => HEADER_5_8,
        Layout::V6_12 => HEADER_6_12,
    }
}

/// Kernel-style text of one layout, with names of arbitrary bytes. No parsed row may be
/// forged: each is a generated one, on its CPU, with its pid, switches, prio, state, current
/// flag and (when the name has no newline) name. A row whose name has no newline is found.
pub fn sched_debug_layouts(data: &[u8]) {
    let mut draw = Draw(data);
    let layout = draw.pick(&[
        Layout::V3,
        Layout::V4_18,
        Layout::V5_8,
        Layout::V6_6,
        Layout::V6_12,
    ]);
    let monitored = draw.byte();
    let mut text = b"Sched Debug Version: v0.11, 6.1.0\nktime : 1.000000\n\n".to_vec();
    let mut rows = Vec::new();
    let mut next_tid: Tid = 1;
    for cpu in 0..1 + draw.below(4) {
        let cpu = u32::try_from(cpu).unwrap();
        text.extend(format!("cpu#{cpu}, 2394.374 MHz\n  .nr_running : 1\n").bytes());
        text.extend(b"  .clock_task                   : 5123.987654\n\nrt_rq[");
        text.extend(format!("{cpu}]:\n  .rt_nr_running : 2\n\nrunnable tasks:\n").bytes());
        text.extend(header(layout));
        text.extend(b"\n-------------------------------------------------------\n");
        let current_at = draw.below(8);
        for index in 0..draw.below(8) {
            let len = draw.below(COMM_MAX_LEN + 1);
            let comm: Vec<u8> = (0..len)
                .map(|_| match draw.byte() {
                    0 => b'x',
                    b if b < 0xC0 => NAME_BYTES[usize::from(b) % NAME_BYTES.len()],
                    b => b,
                })
                .collect();
            let gap = if draw.byte() < 16 { 500_000 } else { 3 };
            next_tid += Tid::try_from(1 + draw.below(gap)).unwrap();
            let switches = match draw.byte() {
                0 => u64::MAX,
                b if b < 128 => u64::from(b),
                _ => draw.u64() >> draw.below(64),
            };
            let row = GenRow {
                cpu,
                current: index == current_at,
                state: draw.pick(STATES),
                comm,
                tid: next_tid,
                switches,
                prio: draw.pick(&[-1, 0, 49, 98, 99, 100, 120, 139]),
            };
            text.extend(row_text(layout, &row, &mut draw));
            text.push(b'\n');
            rows.push(row);
        }
        text.push(b'\n');
    }
    let mut parser = SchedDebugParser::new();
    let mut cpu = None;
    let mut found = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        match parser.feed(line) {
            Some(Record::Cpu(n)) => {
                cpu = Some(n);
                parser.set_want_rows(monitored >> n & 1 == 0);
            }
            Some(Record::Task(row)) => found.push((cpu, row)),
            _ => {}
        }
    }
    for (cpu, row) in &found {
        let generated = rows.iter().find(|g| g.tid == row.tid);
        let Some(g) = generated.filter(|g| same_row(layout, g, row)) else {
            panic!(
                "{layout:?}: forged row {row:?} on cpu {cpu:?} in\n{}",
                String::from_utf8_lossy(&text)
            );
        };
        assert_eq!(*cpu, Some(g.cpu), "{row:?}");
        assert_eq!(
            monitored >> g.cpu & 1,
            0,
            "row of an unmonitored cpu: {row:?}"
        );
    }
    for g in &rows {
        let wanted = monitored >> g.cpu & 1 == 0 && !g.comm.contains(&b'\n');
        if wanted && !found.iter().any(|(_, row)| row.tid == g.tid) {
            panic!(
                "{layout:?}: row {g:?} lost in\n{}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}

fn same_row(layout: Layout, g: &GenRow, row: &TaskRow) -> bool {
    let state = match (layout, g.current) {
        (Layout::V3, _) => None,
        (_, true) => Some(b'R'),
        (_, false) => Some(g.state),
    };
    let start = g
        .comm
        .iter()
        .position(|&b| b != b' ')
        .unwrap_or(g.comm.len());
    let name_ok = g.comm.contains(&b'\n') || row.comm == Comm::new(&g.comm[start..]);
    row.current == g.current
        && row.state == state
        && row.switches == g.switches
        && row.prio == g.prio
        && name_ok
}

// 3. /proc/<tid>/{stat,sched,status}.

/// Raw text through every `/proc` parser without panic, then generated files (names with
/// `)`, spaces, newlines) read back exactly.
pub fn proc_files(data: &[u8]) {
    let stat = proc_files::parse_stat(data);
    if let Some(stat) = stat {
        assert!(stat.comm.as_bytes().len() <= COMM_MAX_LEN);
        let _ = stat.kernel_prio();
    }
    let _ = ProcSched::parse(data).last_run();
    let _ = proc_files::parse_status_tgid(data);
    let _ = proc_files::parse_schedstat(data);
    for line in data.split(|&b| b == b'\n') {
        let _ = proc_files::stat_line_cpu_idle(line);
        let _ = proc_files::ms_text_to_ns(line);
        let parsed = proc_files::parse_u64(line);
        let reference = std::str::from_utf8(line)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        assert_eq!(parsed, reference, "{line:?}");
    }

    let mut draw = Draw(data);
    let comm: Vec<u8> = (0..draw.below(COMM_MAX_LEN + 1))
        .map(|_| draw.byte().max(1))
        .collect();
    let tid = Tid::try_from(1 + draw.below(4_194_304)).unwrap();
    let state = draw.pick(STATES);
    let priority = i32::try_from(draw.below(141)).unwrap() - 101;
    let processor = u32::try_from(draw.below(8192)).unwrap();
    let mut text = format!("{tid} (").into_bytes();
    text.extend(&comm);
    text.extend(format!(") {} 1 {tid} {tid} 0 -1 4194560", char::from(state)).bytes());
    for field in 10..=52 {
        match field {
            18 => text.extend(format!(" {priority}").bytes()),
            19 => text.extend(b" 0"),
            39 => text.extend(format!(" {processor}").bytes()),
            _ => text.extend(format!(" {}", draw.u64() >> 40).bytes()),
        }
    }
    text.push(b'\n');
    let parsed = proc_files::parse_stat(&text).expect("a kernel stat line parses");
    assert_eq!(parsed.comm, Comm::new(&comm));
    assert_eq!(
        (parsed.state, parsed.priority, parsed.processor),
        (state, priority, processor)
    );

    let (cpu_time_ns, runs) = (draw.u64(), draw.u64() >> draw.below(64));
    assert_eq!(
        proc_files::parse_schedstat(format!("{cpu_time_ns} {} {runs}\n", draw.u64()).as_bytes()),
        Some(proc_files::Schedstat { cpu_time_ns, runs })
    );

    let exec_start_ns = draw.u64() >> draw.below(64);
    let (switches, voluntary, migrations) = (draw.u64(), draw.u64() >> 1, draw.u64() >> 3);
    let mut sched_text = comm.clone();
    sched_text.extend(format!(" ({tid}, #threads: 1)\n{}\n", "-".repeat(67)).bytes());
    for (key, value) in [
        ("se.exec_start", split_ms(exec_start_ns)),
        ("se.vruntime", split_ms(draw.u64() >> 24)),
        ("nr_switches", switches.to_string()),
        ("nr_voluntary_switches", voluntary.to_string()),
        ("se.nr_migrations", migrations.to_string()),
    ] {
        sched_text.extend(format!("{key:<45}:{value:>21}\n").bytes());
    }
    assert_eq!(
        ProcSched::parse(&sched_text).last_run(),
        Some(LastRun {
            exec_start_ns: exec_start_ns / 1000 * 1000,
            switches,
            voluntary_switches: voluntary,
            migrations,
        })
    );

    let mut status = b"Name:\t".to_vec();
    for &b in &comm {
        match b {
            b'\n' => status.extend(b"\\n"),
            b'\\' => status.extend(b"\\\\"),
            _ => status.push(b),
        }
    }
    let tgid = Tid::try_from(1 + draw.below(4_194_304)).unwrap();
    status.extend(
        format!("\nUmask:\t0022\nState:\tR (running)\nTgid:\t{tgid}\nPid:\t{tid}\n").bytes(),
    );
    assert_eq!(proc_files::parse_status_tgid(&status), Some(tgid));
}

/// The `%Ld.%06ld` milliseconds of `SPLIT_NS` (microsecond precision, as the kernel prints).
fn split_ms(ns: u64) -> String {
    format!("{}.{:06}", ns / 1_000_000, ns % 1_000_000 / 1000 * 1000)
}

// 4. The command line and CPU lists.

const CLI_TOKENS: &[&str] = &[
    "-c",
    "--cpu",
    "-t",
    "--starving_threshold",
    "-d",
    "--boost_duration",
    "-p",
    "--boost_period",
    "-r",
    "--boost_runtime",
    "-F",
    "-l",
    "-v",
    "-k",
    "-s",
    "-f",
    "-P",
    "--pidfile",
    "-A",
    "-O",
    "-M",
    "-N",
    "-g",
    "--granularity",
    "-R",
    "--reservation",
    "-a",
    "--affinity",
    "-i",
    "-I",
    "-b",
    "--backend",
    "-S",
    "-V",
    "-h",
    "--cpu=",
    "-c0-3",
    "--log_",
    "-fv",
    "0",
    "1",
    "2",
    "3",
    "5",
    "7",
    "60",
    "3600",
    "20000",
    "1000000000",
    "200000000",
    "4000000000",
    "8000",
    "1000000",
    "0-1",
    "0,2-3",
    "1-0",
    " 1 ",
    "1023",
    "1024",
    "0-1023",
    "S",
    "Q",
    "queue_track",
    "sched_debug",
    "procfs",
    "10",
    "90",
    "a,b",
    "=",
    "-",
    "--",
    ",",
    "-5",
    "4294967296",
];

/// Any argv: an accepted configuration validates, its CPU sets are within the machine; any
/// CPU list: what parses is within bounds and prints back to itself.
pub fn cli(data: &[u8]) {
    let mut draw = Draw(data);
    let nr_cpus = u32::try_from(1 + draw.below(1100)).unwrap();
    let mut args = Vec::new();
    while !draw.is_empty() && args.len() < 24 {
        let b = draw.byte();
        if b < 0xE0 {
            args.push(OsString::from(
                CLI_TOKENS[usize::from(b) % CLI_TOKENS.len()],
            ));
        } else {
            let raw: Vec<u8> = (0..draw.below(12)).map(|_| draw.byte()).collect();
            cpu_list(&String::from_utf8_lossy(&raw), nr_cpus);
            args.push(OsString::from_vec(raw));
        }
    }
    for arg in &args {
        if let Some(text) = arg.to_str() {
            cpu_list(text, nr_cpus);
        }
    }
    if let Ok(Command::Run(config)) = cli::parse(args.clone(), nr_cpus) {
        config
            .validate()
            .unwrap_or_else(|e| panic!("{args:?} accepted: {e}"));
        for set in [Some(config.monitored_cpus), config.affinity]
            .into_iter()
            .flatten()
        {
            assert!(!set.is_empty(), "{args:?}");
            assert!(set.iter().all(|cpu| cpu < nr_cpus), "{args:?}: {set}");
        }
    }
    let mut set = CpuSet::empty();
    for _ in 0..draw.below(64) {
        let cpu = u32::try_from(draw.below(1100)).unwrap();
        assert_eq!(set.insert(cpu), cpu < MAX_CPUS_U32);
    }
    if !set.is_empty() {
        assert_eq!(CpuSet::parse(&set.to_string(), MAX_CPUS_U32), Ok(set));
    }
}

fn cpu_list(text: &str, nr_cpus: u32) {
    if let Ok(set) = CpuSet::parse(text, nr_cpus) {
        assert!(!set.is_empty(), "{text:?}");
        assert!(
            set.iter().all(|cpu| cpu < nr_cpus.min(MAX_CPUS_U32)),
            "{text:?}"
        );
        assert_eq!(set.iter().count(), set.len());
        assert_eq!(
            CpuSet::parse(&set.to_string(), nr_cpus),
            Ok(set),
            "{text:?}"
        );
    }
}

// 5. The line reader.

/// The same lines whatever sizes the reads return (and with interrupted reads).
pub fn lines(data: &[u8]) {
    let mut draw = Draw(data);
    let buffer = draw.byte();
    let chunks: Vec<u8> = (0..1 + draw.below(16)).map(|_| draw.byte()).collect();
    let text = draw.0;
    match buffer % 5 {
        0 => lines_with::<1>(text, &chunks),
        1 => lines_with::<2>(text, &chunks),
        2 => lines_with::<7>(text, &chunks),
        3 => lines_with::<16>(text, &chunks),
        _ => lines_with::<4096>(text, &chunks),
    }
}

fn lines_with<const N: usize>(text: &[u8], chunks: &[u8]) {
    let mut expected = Vec::new();
    let mut overlong = 0;
    let mut pieces: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|last| last.is_empty()) {
        pieces.pop();
    }
    for piece in pieces {
        if piece.len() <= N {
            expected.push(piece.to_vec());
        } else {
            overlong += 1;
        }
    }
    let mut rest = text;
    let mut call = 0usize;
    let mut interrupted = false;
    let mut reader = LineReader::<N>::new();
    let mut got = Vec::new();
    let stats = reader
        .for_each_line_from(
            |buf| {
                let chunk = usize::from(chunks[call % chunks.len()]);
                call += 1;
                if chunk == 0 && !interrupted {
                    interrupted = true;
                    return Err(Errno::INTR);
                }
                interrupted = false;
                let n = chunk.max(1).min(buf.len()).min(rest.len());
                buf[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                Ok(n)
            },
            |line| got.push(line.to_vec()),
        )
        .unwrap();
    assert_eq!(got, expected);
    assert_eq!(stats.lines as usize, expected.len());
    assert_eq!(stats.overlong_lines, overlong);
}

// 6. The tracker and the booster over a simulated scheduler.

const MS: u64 = 1_000_000;
/// CPUs the daemon monitors; CPU 1 exists but is not monitored.
const MONITORED: [u32; 2] = [0, 2];
const SIM_CPUS: usize = 3;
const SIM_TASKS: usize = 5;
const FIRST_TID: Tid = 101;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Sleeping,
    /// Runnable, not running, since `since_ns`; `sampled_ns` is the first sample that saw it.
    Waiting {
        cpu: usize,
        since_ns: u64,
        sampled_ns: Option<u64>,
    },
    Running {
        cpu: usize,
    },
    Exited,
}

#[derive(Clone, Copy, Debug)]
struct SimTask {
    place: Place,
    last_cpu: usize,
    prio: i32,
    switches: u64,
    voluntary: u64,
    migrations: u64,
    /// `se.exec_start`, in the `clock_task` domain of `last_cpu`.
    exec_start_ns: u64,
    attr: SchedAttr,
}

/// The kernel as the booster sees it: tasks' attributes, some refusals, exits.
struct SimScheduler<'a> {
    tasks: [SimTask; SIM_TASKS],
    faults: Draw<'a>,
}

impl SimScheduler<'_> {
    fn task(&mut self, tid: Tid) -> Result<&mut SimTask, Errno> {
        let index = usize::try_from(tid - FIRST_TID).map_err(|_| Errno::SRCH)?;
        match self.tasks.get_mut(index) {
            Some(task) if task.place != Place::Exited => Ok(task),
            _ => Err(Errno::SRCH),
        }
    }
}

impl Scheduler for SimScheduler<'_> {
    fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, Errno> {
        Ok(self.task(tid)?.attr)
    }

    fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno> {
        self.task(tid)?;
        let fault = self.faults.byte();
        if fault >= 0xF0 {
            return Err(
                [Errno::PERM, Errno::BUSY, Errno::INVAL, Errno::AGAIN][usize::from(fault & 3)]
            );
        }
        self.task(tid)?.attr = *attr;
        Ok(())
    }

    /// Simulated tids are never reused: one start time fits all.
    fn start_time(&mut self, tid: Tid) -> Result<u64, Errno> {
        self.task(tid).map(|_| 0)
    }

    /// Unused: the simulated boosts' budget is the kernel's (`BudgetEnforcement::Kernel`).
    fn cpu_time_ns(&mut self, _: Tid) -> Option<u64> {
        None
    }

    fn spin_until(&mut self, when_ns: u64) -> u64 {
        when_ns
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenBoost {
    tid: Tid,
    saved: SchedAttr,
    ends_ns: u64,
}

/// A random schedule of wake-ups, preemptions, sleeps, migrations, exits, samples and due
/// tasks confirmed between two samples: no wait is dated before it began, no task is reported before it has waited the threshold
/// (nor, polled, before two sightings `CONFIRMATION_NS` apart), and every boost ends exactly
/// once, restored to what it was.
pub fn tracker_booster(data: &[u8]) {
    let half = data.len() / 2;
    let mut draw = Draw(&data[..half]);
    let exact = draw.byte() & 1 == 1;
    let threshold_ns = (1 + draw.below(40)) as u64 * 100 * MS;
    let duration_ns = (1 + draw.below(30)) as u64 * 100 * MS;
    let policy = if draw.byte() & 1 == 0 {
        BoostPolicy::Deadline
    } else {
        BoostPolicy::Fifo
    };
    let mut booster = Booster::new(BoostParams {
        policy,
        runtime_ns: 20_000,
        period_ns: 1_000 * MS,
        duration_ns,
        fifo_priority: 98,
        budget: BudgetEnforcement::Kernel,
    });
    let mut tracker = Tracker::new(MONITORED.into_iter(), threshold_ns);
    let fair = SchedAttr {
        sched_nice: 0,
        ..SchedAttr::default()
    };
    let mut sim = SimScheduler {
        tasks: core::array::from_fn(|i| SimTask {
            place: Place::Sleeping,
            last_cpu: i % SIM_CPUS,
            prio: if i % 2 == 0 { 98 } else { 120 },
            switches: 0,
            voluntary: 0,
            migrations: 0,
            exec_start_ns: 0,
            attr: if i % 2 == 0 { SchedAttr::fifo(1) } else { fair },
        }),
        faults: Draw(&data[half..]),
    };
    let mut now_ns = 1_000 * MS;
    let mut irq_ns = [0u64; SIM_CPUS];
    let mut open: Vec<OpenBoost> = Vec::new();
    let clock = |irq: &[u64; SIM_CPUS], now_ns: u64, cpu: usize| now_ns - irq[cpu];

    while !draw.is_empty() {
        let t = draw.below(SIM_TASKS);
        let cpu = draw.below(SIM_CPUS);
        match draw.byte() % 10 {
            0 => {
                let dt = u64::from(draw.byte()) * 20 * MS;
                now_ns += dt;
                for irq in &mut irq_ns {
                    *irq += dt * u64::from(draw.byte() % 4) / 16;
                }
            }
            1 => {
                let task = &mut sim.tasks[t];
                if task.place == Place::Sleeping {
                    if task.last_cpu != cpu {
                        task.migrations += 1;
                        if task.prio >= 100 {
                            task.exec_start_ns = 0;
                        }
                    }
                    task.place = Place::Waiting {
                        cpu,
                        since_ns: now_ns,
                        sampled_ns: None,
                    };
                }
            }
            2 => {
                if let Place::Waiting { cpu, .. } = sim.tasks[t].place {
                    let clock_ns = clock(&irq_ns, now_ns, cpu);
                    for other in &mut sim.tasks {
                        if other.place == (Place::Running { cpu }) {
                            other.place = Place::Waiting {
                                cpu,
                                since_ns: now_ns,
                                sampled_ns: None,
                            };
                            other.switches += 1;
                            other.exec_start_ns = clock_ns;
                        }
                    }
                    let task = &mut sim.tasks[t];
                    task.place = Place::Running { cpu };
                    if task.last_cpu != cpu {
                        task.migrations += 1;
                    }
                    task.last_cpu = cpu;
                    task.exec_start_ns = clock_ns;
                }
            }
            3 => {
                if let Place::Running { cpu } = sim.tasks[t].place {
                    let task = &mut sim.tasks[t];
                    task.place = Place::Sleeping;
                    task.switches += 1;
                    task.voluntary += 1;
                    task.exec_start_ns = clock(&irq_ns, now_ns, cpu);
                }
            }
            4 => {
                let task = &mut sim.tasks[t];
                if let Place::Waiting {
                    cpu: from,
                    since_ns,
                    sampled_ns,
                } = task.place
                {
                    if from != cpu {
                        task.migrations += 1;
                        if task.prio >= 100 {
                            task.exec_start_ns = 0;
                        }
                        task.place = Place::Waiting {
                            cpu,
                            since_ns,
                            sampled_ns,
                        };
                    }
                }
            }
            op @ (5 | 6 | 8) => {
                let acts = if op == 8 {
                    // Between two samples: the due tasks confirmed one by one, as queue_track
                    // does (unchanged counts and the same CPU: not run since, waiting there).
                    let tasks = sim.tasks;
                    tracker.recheck_due(now_ns, 8, |cpu, task| {
                        let index = usize::try_from(task.tid - FIRST_TID).ok()?;
                        match tasks[index].place {
                            Place::Waiting { cpu: on, .. }
                                if tasks[index].switches == task.switches =>
                            {
                                (u32::try_from(on).ok()? == cpu).then_some(true)
                            }
                            _ => Some(false),
                        }
                    })
                } else {
                    let present = draw.byte();
                    let mut snapshot = Snapshot::new(MONITORED.into_iter());
                    for queue in &mut snapshot.queues {
                        let cpu = usize::try_from(queue.cpu).unwrap();
                        fill_queue(
                            queue,
                            &mut sim.tasks,
                            present >> cpu & 1 == 0,
                            exact,
                            now_ns,
                            clock(&irq_ns, now_ns, cpu),
                        );
                    }
                    let tasks = sim.tasks;
                    tracker.update(&snapshot, now_ns, |tid| {
                        let task = usize::try_from(tid - FIRST_TID)
                            .ok()
                            .and_then(|i| tasks.get(i))?;
                        (task.place != Place::Exited).then_some(LastRun {
                            exec_start_ns: task.exec_start_ns,
                            switches: task.switches,
                            voluntary_switches: task.voluntary,
                            migrations: task.migrations,
                        })
                    });
                    // The module's invariant: no wait is dated before the task became runnable.
                    for track in tracker.cpus() {
                        for entry in &track.entries {
                            let task =
                                sim.tasks[usize::try_from(entry.task.tid - FIRST_TID).unwrap()];
                            let Place::Waiting { since_ns, .. } = task.place else {
                                panic!("{entry:?} tracked but the task is {task:?}");
                            };
                            assert!(
                                entry.wait_began_ns >= since_ns,
                                "{entry:?} began {since_ns}"
                            );
                        }
                    }
                    true
                };
                if acts {
                    act_on_starving(
                        &mut tracker,
                        &mut sim,
                        &mut booster,
                        &mut open,
                        now_ns,
                        exact,
                        duration_ns,
                    );
                }
                service(&mut booster, &mut sim, now_ns, &mut open);
            }
            7 => service(&mut booster, &mut sim, now_ns, &mut open),
            _ => sim.tasks[t].place = Place::Exited,
        }
    }
    let mut events = Vec::new();
    booster.restore_all(&mut sim, |event| events.push(event));
    for event in events {
        close_boost(&mut open, &mut sim, &event);
    }
    assert_eq!(booster.active_count(), 0);
    assert!(open.is_empty(), "boosts never ended: {open:?}");
}

/// Acts as the loop does on every task `tracker` finds starving at `now_ns` (boosts it), after
/// checking that it really waited the threshold, on that CPU, in that same wait (and, polled,
/// was confirmed by two sightings).
fn act_on_starving(
    tracker: &mut Tracker,
    sim: &mut SimScheduler,
    booster: &mut Booster,
    open: &mut Vec<OpenBoost>,
    now_ns: u64,
    exact: bool,
    duration_ns: u64,
) {
    let threshold_ns = tracker.threshold_ns();
    let mut starving = Vec::new();
    tracker.for_each_starving(now_ns, |cpu, entry| {
        entry.handled = true;
        starving.push((cpu, entry.task));
    });
    for (cpu, task) in starving {
        let index = usize::try_from(task.tid - FIRST_TID).unwrap();
        let sim_task = sim.tasks[index];
        let Place::Waiting {
            cpu: on,
            since_ns,
            sampled_ns,
        } = sim_task.place
        else {
            panic!("{task:?} reported on cpu {cpu} but it is {sim_task:?}");
        };
        assert_eq!(u32::try_from(on).unwrap(), cpu);
        assert_eq!(task.switches, sim_task.switches);
        assert!(
            now_ns >= since_ns + threshold_ns,
            "{task:?} reported at {now_ns} after waiting since {since_ns}"
        );
        if !exact {
            let first = sampled_ns.expect("reported, so sampled");
            assert!(
                now_ns >= first + CONFIRMATION_NS,
                "{task:?} confirmed early"
            );
        }
        if !booster.is_boosted(task.tid) && booster.boost(sim, task.tid, task.comm, now_ns).is_ok()
        {
            open.push(OpenBoost {
                tid: task.tid,
                saved: sim_task.attr,
                ends_ns: now_ns + duration_ns,
            });
        }
    }
}

/// `Booster::service` at `now_ns`: each event closes an open boost, and every boost whose
/// time is up is closed.
fn service(booster: &mut Booster, sim: &mut SimScheduler, now_ns: u64, open: &mut Vec<OpenBoost>) {
    let mut events = Vec::new();
    booster.service(sim, now_ns, |event| events.push(event));
    for event in events {
        if let BoostEvent::Retrying {
            tid, restore: true, ..
        } = event
        {
            if let Some(boost) = open.iter_mut().find(|b| b.tid == tid) {
                boost.ends_ns = now_ns + stalld::boost::RETRY_DELAY_NS;
            }
            continue;
        }
        if let BoostEvent::Retrying { .. } = event {
            continue;
        }
        close_boost(open, sim, &event);
    }
    if let Some(late) = open.iter().find(|b| b.ends_ns <= now_ns) {
        panic!("boost {late:?} not ended at {now_ns}");
    }
    assert_eq!(booster.active_count(), open.len());
}

fn close_boost(open: &mut Vec<OpenBoost>, sim: &mut SimScheduler, event: &BoostEvent) {
    let tid = match *event {
        BoostEvent::Restored { tid, .. }
        | BoostEvent::Gone { tid, .. }
        | BoostEvent::RestoreFailed { tid, .. } => tid,
        BoostEvent::Retrying { .. } | BoostEvent::Replaced { .. } | BoostEvent::Changed { .. } => {
            panic!("{event:?}: the simulation never reuses a tid nor changes a policy itself")
        }
    };
    let at = open
        .iter()
        .position(|b| b.tid == tid)
        .unwrap_or_else(|| panic!("{event:?} of a boost not open"));
    let boost = open.swap_remove(at);
    if let BoostEvent::Restored { .. } = event {
        assert_eq!(sim.task(tid).unwrap().attr, sched::restorable(&boost.saved));
    }
}

/// What a sample of `queue`'s CPU sees; marks the waiting tasks seen.
fn fill_queue(
    queue: &mut CpuQueue,
    tasks: &mut [SimTask; SIM_TASKS],
    present: bool,
    exact: bool,
    now_ns: u64,
    clock_task_ns: u64,
) {
    queue.present = present;
    if !present {
        return;
    }
    queue.clock_task_ns = clock_task_ns;
    let cpu = usize::try_from(queue.cpu).unwrap();
    for (index, task) in tasks.iter_mut().enumerate() {
        let tid = FIRST_TID + Tid::try_from(index).unwrap();
        match &mut task.place {
            Place::Running { cpu: on } if *on == cpu => {
                queue.running = Some(RunningTask {
                    tid,
                    switches: task.switches,
                });
            }
            Place::Waiting {
                cpu: on,
                since_ns,
                sampled_ns,
            } if *on == cpu => {
                sampled_ns.get_or_insert(now_ns);
                let key = queue.rotation_key(tid);
                queue.offer(
                    WaitingTask {
                        tid,
                        comm: Comm::new(b"sim"),
                        switches: task.switches,
                        prio: task.prio,
                        waiting_since_ns: exact.then_some(*since_ns),
                        run_counts: None,
                    },
                    key,
                );
            }
            _ => {}
        }
    }
}
