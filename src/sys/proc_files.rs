//! Per-task and per-CPU facts from `/proc` (and finding or mounting debugfs): pure parsers of
//! kernel text plus readers that use stack paths and fixed buffers, never the heap.
//! Invariant: kernel text is untrusted; a parser returns `None` rather than guess.

use core::ffi::CStr;
use std::ffi::CString;

use rustix::io::Errno;

use crate::sys::lines::{read_small_file, LineReader};
use crate::task::{Comm, Tid};

/// Parses an unsigned decimal integer made of digits only.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Parses a decimal integer with an optional leading `-`.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    match text.split_first() {
        Some((b'-', digits)) => i64::try_from(parse_u64(digits)?).ok()?.checked_neg(),
        _ => i64::try_from(parse_u64(text)?).ok(),
    }
}

/// Converts the kernel's `SPLIT_NS` milliseconds text (`2687702.471334`, up to six decimals)
/// to nanoseconds with integer math. Negative values are refused.
pub fn ms_text_to_ns(text: &[u8]) -> Option<u64> {
    let dot = text.iter().position(|&b| b == b'.')?;
    let (int_ms, frac) = (&text[..dot], &text[dot + 1..]);
    if frac.is_empty() || frac.len() > 6 {
        return None;
    }
    let mut frac_ns = parse_u64(frac)?;
    for _ in frac.len()..6 {
        frac_ns *= 10;
    }
    parse_u64(int_ms)?
        .checked_mul(1_000_000)?
        .checked_add(frac_ns)
}

/// Strips ASCII spaces and tabs from both ends.
pub fn trim(mut text: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = text {
        text = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = text {
        text = rest;
    }
    text
}

/// Splits a `key : value` line at its first `:` into trimmed key and value.
pub fn key_value(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some((trim(&line[..colon]), trim(&line[colon + 1..])))
}

/// Values from `/proc/<tid>/sched`, fed one line at a time.
///
/// The file starts with `<comm> (<pid>, #threads: <n>)` and a line of dashes; the comm may
/// hold newlines, so lines before a dash line longer than any comm are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSched {
    /// `se.exec_start`: when the task last ran, in its CPU's `clock_task` domain.
    pub exec_start_ns: Option<u64>,
    /// `se.sum_exec_runtime`: CPU time consumed so far.
    pub sum_exec_runtime_ns: Option<u64>,
    /// `nr_switches`: voluntary plus involuntary context switches.
    pub nr_switches: Option<u64>,
    /// `nr_voluntary_switches`: switches where the task gave up the CPU to sleep.
    pub nr_voluntary_switches: Option<u64>,
    /// `se.nr_migrations`: times the task moved to another CPU.
    pub nr_migrations: Option<u64>,
    past_header: bool,
}

impl ProcSched {
    /// Parses a whole `/proc/<tid>/sched` text.
    pub fn parse(text: &[u8]) -> Self {
        let mut sched = ProcSched::default();
        text.split(|&b| b == b'\n').for_each(|l| sched.feed_line(l));
        sched
    }

    /// Takes one line of the file (without its newline).
    pub fn feed_line(&mut self, line: &[u8]) {
        if !self.past_header {
            self.past_header = line.len() >= 20 && line.iter().all(|&b| b == b'-');
            return;
        }
        let Some((key, value)) = key_value(line) else {
            return;
        };
        match key {
            b"se.exec_start" => self.exec_start_ns = ms_text_to_ns(value),
            b"se.sum_exec_runtime" => self.sum_exec_runtime_ns = ms_text_to_ns(value),
            b"nr_switches" => self.nr_switches = parse_u64(value),
            b"nr_voluntary_switches" => self.nr_voluntary_switches = parse_u64(value),
            b"se.nr_migrations" => self.nr_migrations = parse_u64(value),
            _ => {}
        }
    }
}

/// What the kernel says of a task's last run (`/proc/<tid>/sched`), read just after a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastRun {
    /// `se.exec_start`: when it last ran, in the `clock_task` domain of the CPU it ran on.
    /// 0 when unknown: it never ran, or it is a fair task that migrated since.
    pub exec_start_ns: u64,
    /// `nr_switches`: ties this reading to a sampled switch count.
    pub switches: u64,
    /// `nr_voluntary_switches`: the times it gave up the CPU to sleep. Unchanged since it
    /// was seen running means it was preempted, not woken, so its wait began when it last ran.
    pub voluntary_switches: u64,
    /// `se.nr_migrations`: unchanged since it was seen running on a CPU means it last ran there.
    pub migrations: u64,
}

impl ProcSched {
    /// The fields the detector needs, when all are there.
    pub fn last_run(&self) -> Option<LastRun> {
        Some(LastRun {
            exec_start_ns: self.exec_start_ns?,
            switches: self.nr_switches?,
            voluntary_switches: self.nr_voluntary_switches?,
            migrations: self.nr_migrations?,
        })
    }
}

/// `se.exec_start` of a `/proc/<tid>/sched` text, ns.
pub fn exec_start_ns(sched_text: &[u8]) -> Option<u64> {
    ProcSched::parse(sched_text).exec_start_ns
}

/// The fields of `/proc/<tid>/stat` the daemon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 2: the thread's own name (not its process's), cut to
    /// [`crate::task::COMM_MAX_LEN`] bytes.
    pub comm: Comm,
    /// Field 3: `R`, `S`, `D`, ...
    pub state: u8,
    /// Field 18, `priority`: the kernel prio minus 100 (RT -100..-2, CFS 0..39, DEADLINE -101).
    pub priority: i32,
    /// Field 39: the CPU the task last ran on.
    pub processor: u32,
}

impl ProcStat {
    /// The kernel prio on the scale sched_debug prints: RT 0..99, CFS 100..139, DEADLINE -1.
    pub fn kernel_prio(&self) -> i32 {
        self.priority.saturating_add(100)
    }
}

/// Parses `/proc/<tid>/stat`. The name between parentheses may hold `)`, spaces and
/// newlines, so it runs from the first `(` to the last `)` and the fields are counted from
/// that last `)`.
pub fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let name = text.get(open + 1..close)?;
    let mut fields = text[close + 1..]
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    let state = match fields.next()? {
        [state] => *state,
        _ => return None,
    };
    // Field 3 was the state; field 18 is 15 fields further, field 39 another 21.
    let priority = i32::try_from(parse_i64(fields.nth(14)?)?).ok()?;
    let processor = u32::try_from(parse_u64(fields.nth(20)?)?).ok()?;
    Some(ProcStat {
        comm: Comm::new(name),
        state,
        priority,
        processor,
    })
}

/// Field 22 of a `/proc/<tid>/stat` text, `starttime`: when the task started, in clock ticks
/// since boot. With the tid it names one task: a task that reuses the tid later started later.
pub fn parse_start_time(text: &[u8]) -> Option<u64> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let mut fields = text[close + 1..]
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    // The fields after the name begin with field 3: field 22 is the 20th of them.
    parse_u64(fields.nth(19)?)
}

/// `Tgid` from one `/proc/<tid>/status` line (`Tgid:\t6018`).
pub fn status_line_tgid(line: &[u8]) -> Option<Tid> {
    let value = line.strip_prefix(b"Tgid:")?;
    Tid::try_from(parse_u64(trim(value))?).ok()
}

/// `Tgid` of a whole `/proc/<tid>/status` text. The name line before it is escaped by the
/// kernel, so it cannot forge a `Tgid:` line.
pub fn parse_status_tgid(text: &[u8]) -> Option<Tid> {
    text.split(|&b| b == b'\n').find_map(status_line_tgid)
}

/// CPU number and idle ticks (4th number) of a `/proc/stat` `cpuN` line; `None` for the
/// aggregate `cpu` line and anything else.
pub fn stat_line_cpu_idle(line: &[u8]) -> Option<(u32, u64)> {
    let rest = line.strip_prefix(b"cpu")?;
    let mut fields = rest.split(|&b| b == b' ').filter(|f| !f.is_empty());
    if rest.first() == Some(&b' ') {
        return None;
    }
    let cpu = u32::try_from(parse_u64(fields.next()?)?).ok()?;
    let idle_ticks = parse_u64(fields.nth(3)?)?;
    Some((cpu, idle_ticks))
}

/// Idle ticks of one CPU at the last two updates.
#[derive(Clone, Copy, Debug, Default)]
struct IdleTicks {
    previous: Option<u64>,
    latest: Option<u64>,
}

/// Tells whether a CPU had idle time between the last two reads of `/proc/stat`.
/// Sized once for the highest CPU; `update` allocates nothing.
pub struct IdleMonitor {
    path: CString,
    reader: LineReader<4096>,
    cpus: Vec<IdleTicks>,
}

impl IdleMonitor {
    /// A monitor of CPUs `0..=max_cpu` reading `/proc/stat`.
    pub fn new(max_cpu: u32) -> Self {
        Self::with_path(c"/proc/stat".into(), max_cpu)
    }

    /// Same, reading another file (tests).
    pub fn with_path(path: CString, max_cpu: u32) -> Self {
        let len = usize::try_from(max_cpu).map_or(0, |m| m.saturating_add(1));
        IdleMonitor {
            path,
            reader: LineReader::new(),
            cpus: vec![IdleTicks::default(); len],
        }
    }

    /// Reads the idle counters again; a CPU missing from the file (offline) gets no value.
    pub fn update(&mut self) -> Result<(), Errno> {
        for ticks in &mut self.cpus {
            ticks.previous = ticks.latest.take();
        }
        let cpus = &mut self.cpus;
        self.reader.for_each_line(&self.path, |line| {
            if let Some((cpu, idle_ticks)) = stat_line_cpu_idle(line) {
                if let Some(ticks) = usize::try_from(cpu).ok().and_then(|i| cpus.get_mut(i)) {
                    ticks.latest = Some(idle_ticks);
                }
            }
        })?;
        Ok(())
    }

    /// True when `cpu`'s idle counter grew between the last two updates; false when there
    /// is no evidence (first update, CPU offline or unknown).
    pub fn had_idle(&self, cpu: u32) -> bool {
        let ticks = usize::try_from(cpu).ok().and_then(|i| self.cpus.get(i));
        matches!(ticks, Some(IdleTicks { previous: Some(p), latest: Some(l) }) if l > p)
    }
}

/// Longest `/proc/<tid>/<leaf>` path plus NUL.
const PROC_PATH_BYTES: usize = 32;

/// Writes `parts` and a NUL into `buf`: a path built on the stack. `None` when it does not fit
/// or a part holds a NUL.
pub fn join_path<'a>(buf: &'a mut [u8], parts: &[&[u8]]) -> Option<&'a CStr> {
    let mut len = 0;
    for part in parts {
        buf.get_mut(len..len + part.len())?.copy_from_slice(part);
        len += part.len();
    }
    *buf.get_mut(len)? = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
}

/// Formats `/proc/<tid>/<leaf>` into `buf`; `None` for a non-positive tid.
fn tid_path<'a>(buf: &'a mut [u8; PROC_PATH_BYTES], tid: Tid, leaf: &[u8]) -> Option<&'a CStr> {
    let mut digits = [0u8; 10];
    let mut rest = u32::try_from(tid).ok().filter(|&t| t > 0)?;
    let mut start = digits.len();
    while rest > 0 {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    join_path(buf, &[b"/proc/", &digits[start..], b"/", leaf])
}

/// `/proc/<tid>/stat`; `None` when the task is gone or the file cannot be understood.
pub fn read_stat(tid: Tid) -> Option<ProcStat> {
    let mut path = [0; PROC_PATH_BYTES];
    let mut buf = [0u8; 2048];
    parse_stat(read_small_file(tid_path(&mut path, tid, b"stat")?, &mut buf).ok()?)
}

/// The task's start time ([`parse_start_time`]); `None` when it is gone.
pub fn read_start_time(tid: Tid) -> Option<u64> {
    let mut path = [0; PROC_PATH_BYTES];
    let mut buf = [0u8; 2048];
    parse_start_time(read_small_file(tid_path(&mut path, tid, b"stat")?, &mut buf).ok()?)
}

/// The task's state character (`R`, `S`, ...).
pub fn read_thread_state(tid: Tid) -> Option<u8> {
    read_stat(tid).map(|stat| stat.state)
}

/// The thread group (process) id of a thread.
pub fn read_tgid(tid: Tid) -> Option<Tid> {
    let mut path = [0; PROC_PATH_BYTES];
    let mut reader = LineReader::<256>::new();
    let mut tgid = None;
    reader
        .for_each_line(tid_path(&mut path, tid, b"status")?, |line| {
            tgid = tgid.or_else(|| status_line_tgid(line));
        })
        .ok()?;
    tgid
}

/// The task's command name (`/proc/<tid>/comm`, first [`crate::task::COMM_MAX_LEN`] bytes).
pub fn read_comm(tid: Tid) -> Option<Comm> {
    let mut path = [0; PROC_PATH_BYTES];
    let mut buf = [0u8; 128];
    let text = read_small_file(tid_path(&mut path, tid, b"comm")?, &mut buf).ok()?;
    Some(Comm::new(text.strip_suffix(b"\n").unwrap_or(text)))
}

/// How much a task has run, from `/proc/<tid>/schedstat` (CONFIG_SCHED_INFO; a kernel that
/// does not count prints zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedstat {
    /// CPU time used, ns (`se.sum_exec_runtime`, exact as of the kernel's last accounting of
    /// the task: its last tick or switch).
    pub cpu_time_ns: u64,
    /// Times it was switched in (`sched_info.pcount`).
    pub runs: u64,
}

/// `<cpu time ns> <run delay ns> <runs>\n`; `None` for anything else.
pub fn parse_schedstat(text: &[u8]) -> Option<Schedstat> {
    let mut fields = text
        .strip_suffix(b"\n")
        .unwrap_or(text)
        .split(|&b| b == b' ');
    let cpu_time_ns = parse_u64(fields.next()?)?;
    parse_u64(fields.next()?)?;
    let runs = parse_u64(fields.next()?)?;
    fields
        .next()
        .is_none()
        .then_some(Schedstat { cpu_time_ns, runs })
}

/// `/proc/<tid>/schedstat`; `None` when the task is gone or the file cannot be understood.
pub fn read_schedstat(tid: Tid) -> Option<Schedstat> {
    let mut path = [0; PROC_PATH_BYTES];
    let mut buf = [0u8; 128];
    parse_schedstat(read_small_file(tid_path(&mut path, tid, b"schedstat")?, &mut buf).ok()?)
}

/// `/proc/<tid>/sched`, read line by line through a stack buffer.
pub fn read_sched(tid: Tid) -> Option<ProcSched> {
    let mut path = [0; PROC_PATH_BYTES];
    let mut reader = LineReader::<256>::new();
    let mut sched = ProcSched::default();
    reader
        .for_each_line(tid_path(&mut path, tid, b"sched")?, |line| {
            sched.feed_line(line)
        })
        .ok()?;
    Some(sched)
}

/// When the task last ran and how often it slept, from `/proc/<tid>/sched`.
pub fn read_last_run(tid: Tid) -> Option<LastRun> {
    read_sched(tid)?.last_run()
}

/// Undoes the octal escapes (`\040` for a space) of a `/proc/mounts` field.
fn unescape_mount_field(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|o| {
            field[i] == b'\\' && o.iter().all(|b| (b'0'..=b'7').contains(b)) && o[0] <= b'3'
        });
        match octal {
            Some(o) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The mount point of a `/proc/mounts` line whose filesystem type is `fstype` (startup only:
/// allocates the unescaped path).
pub fn mount_point_of_type(line: &[u8], fstype: &[u8]) -> Option<Vec<u8>> {
    let mut fields = line.split(|&b| b == b' ');
    let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
    (kind == fstype && !target.is_empty()).then(|| unescape_mount_field(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_whatever_the_name() {
        let text = std::fs::read(format!(
            "{}/tests/fixtures/6.18-host/starved_worker.stat.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert_eq!(parse_start_time(&text), Some(270558));
        let odd = b"7 (a) b (c\nd) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0\n";
        assert_eq!(parse_start_time(odd), Some(4242));
        assert_eq!(parse_start_time(b"7 (x) S 1 2 3"), None);
        let me = Tid::try_from(std::process::id()).unwrap();
        assert!(read_start_time(me).is_some());
        assert_eq!(read_start_time(i32::MAX), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1a"), None);
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(ms_text_to_ns(b"2687702.471334"), Some(2_687_702_471_334));
        assert_eq!(ms_text_to_ns(b"0.5"), Some(500_000));
        assert_eq!(ms_text_to_ns(b"-1.048576"), None);
        assert_eq!(ms_text_to_ns(b"12"), None);
        assert_eq!(ms_text_to_ns(b"1.1234567"), None);
        assert_eq!(ms_text_to_ns(b"99999999999999999.000000"), None);
    }

    #[test]
    fn sched_files_of_every_kernel() {
        let p = ProcSched::parse(include_bytes!(
            "../../tests/fixtures/6.1-debian/starved_worker.sched.txt"
        ));
        assert_eq!(p.exec_start_ns, Some(3_216_735_789));
        assert_eq!(p.sum_exec_runtime_ns, Some(309_886_396));
        assert_eq!(p.nr_switches, Some(3));
        let p = ProcSched::parse(include_bytes!(
            "../../tests/fixtures/6.12-rt-debian/starved_worker.sched.txt"
        ));
        assert_eq!(p.exec_start_ns, Some(3_682_405_335));
        assert_eq!(p.sum_exec_runtime_ns, Some(309_259_113));
        assert_eq!(p.nr_switches, Some(2));
        let text = include_bytes!("../../tests/fixtures/6.18-host/starved_worker.sched.txt");
        assert_eq!(exec_start_ns(text), Some(2_697_291_369_834));
        assert_eq!(ProcSched::parse(text).nr_switches, Some(3));
        let text = include_bytes!("../../tests/fixtures/6.12-debian/oddname_thread.sched.txt");
        assert!(exec_start_ns(text).is_some());
    }

    #[test]
    fn sched_name_cannot_forge_values() {
        let text = b"nr_switches:9\n (12, #threads: 1)\n------------------------------\n\
                     se.exec_start : 5.000000\n";
        let p = ProcSched::parse(text);
        assert_eq!(p.nr_switches, None);
        assert_eq!(p.exec_start_ns, Some(5_000_000));
        assert_eq!(exec_start_ns(b""), None);
    }

    #[test]
    fn stat_files_with_odd_names() {
        let stat = parse_stat(include_bytes!(
            "../../tests/fixtures/6.18-host/oddname_thread.stat.txt"
        ));
        assert_eq!(
            stat,
            Some(ProcStat {
                comm: Comm::new(b"my task (x) 1"),
                state: b'R',
                priority: 20,
                processor: 1
            })
        );
        let stat = parse_stat(include_bytes!(
            "../../tests/fixtures/6.1-debian/starved_worker.stat.txt"
        ));
        assert_eq!(stat.map(|s| (s.state, s.processor)), Some((b'R', 1)));
        assert_eq!(parse_stat(b"1 (a) b) S 1 2 3"), None);
        assert_eq!(parse_stat(b"1 (x) R"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b"1 )x( R"), None);
    }

    fn procfs_fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/procfs/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn thread_stat_files_of_6_18_with_hostile_names() {
        let stat = |label: &str| parse_stat(&procfs_fixture(&format!("{label}.stat.txt")));
        let expect = |name: &[u8], state, priority, processor| ProcStat {
            comm: Comm::new(name),
            state,
            priority,
            processor,
        };
        assert_eq!(stat("victim"), Some(expect(b"fx_victim", b'R', -2, 1)));
        assert_eq!(stat("hog"), Some(expect(b"fx_hog", b'R', -51, 1)));
        assert_eq!(
            stat("spaces_thread"),
            Some(expect(b"my task (x) 1", b'R', 20, 1))
        );
        assert_eq!(
            stat("paren_thread"),
            Some(expect(b"a) R 1 (b", b'R', 20, 1))
        );
        assert_eq!(
            stat("newline_thread"),
            Some(expect(b"nl\nR 2 3", b'R', 20, 1))
        );
        assert_eq!(
            stat("sleeping_main"),
            Some(expect(b"fx_threads", b'S', 20, 0))
        );
        assert_eq!(
            stat("kworker_long_name"),
            Some(expect(b"kworker/u8:0-wr", b'I', 20, 1))
        );
    }

    #[test]
    fn cut_or_garbled_stat_files_are_refused() {
        let text = procfs_fixture("victim.stat.txt");
        // Every cut that loses the processor field (39; the 39th space ends it) is refused.
        let processor_end = text
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b' ')
            .nth(38)
            .map(|(i, _)| i)
            .unwrap();
        for len in 0..processor_end {
            assert_eq!(parse_stat(&text[..len]), None, "{len}");
        }
        assert_eq!(
            parse_stat(&text[..processor_end]).map(|s| s.processor),
            Some(1)
        );
        let text = String::from_utf8(text).unwrap();
        for (from, to) in [
            (" R ", " RR "),
            (" -2 ", " -2x "),
            (" -2 ", " 99999999999 "),
            (" 17 1 1 1 ", " 17 -1 1 1 "),
            (" 17 1 1 1 ", " 17 4294967296 1 1 "),
            ("(fx_victim)", "fx_victim)"),
        ] {
            let garbled = text.replacen(from, to, 1);
            assert_ne!(garbled, text);
            assert_eq!(parse_stat(garbled.as_bytes()), None, "{to}");
        }
    }

    #[test]
    fn thread_sched_files_of_6_18_with_hostile_names() {
        let sched = |label: &str| ProcSched::parse(&procfs_fixture(&format!("{label}.sched.txt")));
        let victim = sched("victim");
        assert_eq!(victim.exec_start_ns, Some(2_615_105_828_097));
        assert_eq!(victim.sum_exec_runtime_ns, Some(303_309_081));
        assert_eq!(victim.nr_switches, Some(2));
        // The header `nl\nR 2 3 (9247, #threads: 4)` spans two lines.
        let newline = sched("newline_thread");
        assert_eq!(newline.exec_start_ns, Some(2_615_797_721_477));
        assert_eq!(newline.nr_switches, Some(7));
        assert_eq!(sched("paren_thread").nr_switches, Some(8));
        assert_eq!(sched("hog").exec_start_ns, Some(2_616_609_666_443));
        assert!(sched("kworker_long_name").sum_exec_runtime_ns.is_some());
        // Cut files lose fields, never invent them; garbage numbers give none.
        let text = procfs_fixture("victim.sched.txt");
        for len in 0..text.len() {
            let cut = ProcSched::parse(&text[..len]);
            assert!(cut.exec_start_ns.is_none_or(|ns| ns <= 2_615_105_828_097));
        }
        let garbled = String::from_utf8(text)
            .unwrap()
            .replace("303.309081", "3o3.309081")
            .replace(":                    2\n", ": 2 2\n");
        let p = ProcSched::parse(garbled.as_bytes());
        assert_eq!((p.sum_exec_runtime_ns, p.nr_switches), (None, None));
        assert_eq!(p.exec_start_ns, Some(2_615_105_828_097));
    }

    #[test]
    fn stat_priority_is_the_kernel_prio_minus_100() {
        let stat = |name: &str| -> ProcStat {
            let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            parse_stat(&std::fs::read(path).unwrap()).unwrap()
        };
        // SCHED_FIFO 1 and 50, printed as prio 98 and 49 by sched_debug and `sched`.
        assert_eq!(stat("6.18-host/starved_worker.stat.txt").kernel_prio(), 98);
        assert_eq!(stat("6.18-host/hog.stat.txt").kernel_prio(), 49);
        assert_eq!(stat("6.18-host/other_worker.stat.txt").kernel_prio(), 120);
        assert_eq!(
            ProcStat {
                priority: i32::MAX,
                ..stat("6.18-host/hog.stat.txt")
            }
            .kernel_prio(),
            i32::MAX
        );
    }

    #[test]
    fn status_tgid() {
        let text = include_bytes!("../../tests/fixtures/6.18-host/oddname_thread.status.txt");
        assert_eq!(parse_status_tgid(text), Some(6018));
        let text = include_bytes!("../../tests/fixtures/6.1-debian/oddname_thread.status.txt");
        assert_eq!(parse_status_tgid(text), Some(126));
        assert_eq!(parse_status_tgid(b"Tgid:\tx\n"), None);
    }

    #[test]
    fn proc_stat_lines() {
        let text = include_bytes!("../../tests/fixtures/6.18-host/proc_stat.txt");
        let idle: Vec<_> = text
            .split(|&b| b == b'\n')
            .filter_map(stat_line_cpu_idle)
            .collect();
        assert_eq!(idle, [(0, 140_877), (1, 96_032)]);
        assert_eq!(stat_line_cpu_idle(b"cpu1 1 2 3"), None);
        assert_eq!(stat_line_cpu_idle(b"cpux 1 2 3 4"), None);
    }

    #[test]
    fn idle_monitor_needs_two_updates() {
        let path = std::env::temp_dir().join(format!("stalld-procstat-{}", std::process::id()));
        let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let mut monitor = IdleMonitor::with_path(cpath, 2);
        std::fs::write(&path, "cpu  1 1 1 1\ncpu0 1 1 1 10\ncpu1 1 1 1 20\n").unwrap();
        monitor.update().unwrap();
        assert!(!monitor.had_idle(0));
        std::fs::write(
            &path,
            "cpu  1 1 1 1\ncpu0 1 1 1 11\ncpu1 1 1 1 20\ncpu9 0 0 0 1\n",
        )
        .unwrap();
        monitor.update().unwrap();
        assert!(monitor.had_idle(0));
        assert!(!monitor.had_idle(1));
        assert!(!monitor.had_idle(2));
        assert!(!monitor.had_idle(9));
        std::fs::write(&path, "cpu0 1 1 1 12\n").unwrap();
        monitor.update().unwrap();
        assert!(monitor.had_idle(0));
        assert!(!monitor.had_idle(1));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn readers_on_this_process() {
        let tid = Tid::try_from(std::process::id()).unwrap();
        assert_eq!(read_tgid(tid), Some(tid));
        assert!(read_thread_state(tid).is_some());
        assert!(read_stat(tid).is_some());
        let comm = std::fs::read("/proc/self/comm").unwrap();
        assert_eq!(
            read_comm(tid).map(|c| c.as_bytes().to_vec()),
            Some(comm.strip_suffix(b"\n").unwrap()[..comm.len().min(16) - 1].to_vec())
        );
        assert!(read_last_run(tid).is_some());
        // This test has run: the kernel counts (CONFIG_SCHED_INFO, here and in CI).
        assert!(read_schedstat(tid).is_some_and(|s| s.runs > 0 && s.cpu_time_ns > 0));
        assert_eq!(read_thread_state(0), None);
        assert_eq!(read_tgid(-5), None);
        assert_eq!(read_comm(Tid::MAX), None);
    }

    #[test]
    fn schedstat_files() {
        let text = std::fs::read(format!(
            "{}/tests/fixtures/6.18-host/starved_worker.schedstat.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert_eq!(
            parse_schedstat(&text),
            Some(Schedstat {
                cpu_time_ns: 301_347_672,
                runs: 3
            })
        );
        // A kernel that does not count.
        assert_eq!(
            parse_schedstat(b"0 0 0\n"),
            Some(Schedstat {
                cpu_time_ns: 0,
                runs: 0
            })
        );
        for garbled in [
            &b""[..],
            b"\n",
            b"1 2\n",
            b"1 2 3 4\n",
            b"1 -2 3\n",
            b"1  2 3\n",
            b"18446744073709551616 0 1\n",
        ] {
            assert_eq!(parse_schedstat(garbled), None, "{garbled:?}");
        }
    }

    #[test]
    fn paths_fit_the_stack_buffer() {
        let mut buf = [0; PROC_PATH_BYTES];
        assert_eq!(
            tid_path(&mut buf, Tid::MAX, b"status"),
            Some(c"/proc/2147483647/status")
        );
        assert_eq!(tid_path(&mut buf, 7, b"sched"), Some(c"/proc/7/sched"));
        let mut small = [0u8; 6];
        assert_eq!(join_path(&mut small, &[b"12", b"/", b"ab"]), Some(c"12/ab"));
        assert_eq!(join_path(&mut small, &[b"12", b"/", b"abc"]), None);
        assert_eq!(join_path(&mut small, &[b"1\x002"]), None);
    }

    #[test]
    fn mounts_lines() {
        let line = b"debugfs /sys/kernel/debug debugfs rw,nosuid,nodev,noexec,relatime 0 0";
        assert_eq!(
            mount_point_of_type(line, b"debugfs").as_deref(),
            Some(&b"/sys/kernel/debug"[..])
        );
        let line = b"none /mnt/my\\040dbg debugfs rw 0 0";
        assert_eq!(
            mount_point_of_type(line, b"debugfs").as_deref(),
            Some(&b"/mnt/my dbg"[..])
        );
        assert_eq!(
            mount_point_of_type(b"proc /proc proc rw 0 0", b"debugfs"),
            None
        );
        assert_eq!(mount_point_of_type(b"x", b"debugfs"), None);
    }
}
