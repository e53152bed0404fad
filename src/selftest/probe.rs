//! What the kernel offers stalld, each probe one row of the self-test's table: read-only,
//! except a short-lived thread that checks SCHED_DEADLINE is permitted.

use std::fs;
use std::path::Path;

use rustix::io::Errno;
use rustix::process::{waitpid, WaitOptions};

use crate::backend::{AnyBackend, BackendKind, BACKENDS};
use crate::cpuset::CpuSet;
use crate::sys::debugfs;
use crate::sys::dl_server::{DlServerSource, DlServerWatch};
use crate::sys::sched::{self, SchedAttr};
use crate::sys::throttling::{RtThrottling, THROTTLING_OFF};

/// One probe's answer: a label and what was found.
pub struct Row {
    pub label: String,
    pub value: String,
}

fn row(label: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        label: label.into(),
        value: value.into(),
    }
}

/// A small sysfs/procfs file's text, trimmed; `None` when absent or unreadable.
fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The kernel, BTF, debugfs, SCHED_DEADLINE, RT throttling, DL-server and CPU isolation, as
/// rows of the table. `cpu` is the CPU the rescue test starves.
pub fn kernel_rows(cpu: u32) -> Vec<Row> {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let machine = uname.machine().to_string_lossy().into_owned();
    let preempt_rt = read_trimmed("/sys/kernel/realtime").as_deref() == Some("1");
    let mut rows = vec![
        row("kernel", format!("{release} {machine}")),
        row("PREEMPT_RT", if preempt_rt { "yes" } else { "no" }),
        row(
            "BTF",
            if Path::new("/sys/kernel/btf/vmlinux").exists() {
                "yes (/sys/kernel/btf/vmlinux)"
            } else {
                "no: the queue_track backend cannot load"
            },
        ),
        row("debugfs", debugfs_state()),
        row("SCHED_DEADLINE", deadline_permitted()),
        row("RT throttling", throttling_state()),
        row("DL-server", dl_server_state(cpu)),
    ];
    for (label, file) in [
        ("isolated CPUs", "isolated"),
        ("nohz_full CPUs", "nohz_full"),
    ] {
        let path = format!("/sys/devices/system/cpu/{file}");
        let value = match read_trimmed(&path) {
            Some(list) if !list.is_empty() && list != "(null)" => list,
            Some(_) => "none".to_owned(),
            None if !Path::new(&path).exists() => "none (not built into this kernel)".to_owned(),
            None => format!("unknown ({path} unreadable)"),
        };
        rows.push(row(label, value));
    }
    rows
}

fn debugfs_state() -> String {
    let mounted = debugfs::mount_points();
    let Some(mount) = mounted.first() else {
        return "not mounted (stalld mounts it when it starts)".to_owned();
    };
    let mount = String::from_utf8_lossy(mount);
    let sched_debug = format!("{mount}/sched/debug");
    match fs::File::open(&sched_debug) {
        Ok(_) => format!("{sched_debug} readable"),
        Err(e) => format!("{sched_debug}: {e}"),
    }
}

/// Whether this process may run a task under SCHED_DEADLINE: tried in a child of its own that
/// may run on every CPU (the kernel refuses DEADLINE to a task pinned to fewer CPUs than its
/// root domain while RT throttling is on), which then exits.
fn deadline_permitted() -> String {
    let all = CpuSet::all(crate::sys::process::configured_cpus());
    let attempt = move || {
        let tried = sched::set_affinity(0, all.iter()).and_then(|()| {
            sched::sched_setattr(0, &SchedAttr::deadline(100_000, 10_000_000, 10_000_000))
        });
        tried.err().map_or(0, Errno::raw_os_error)
    };
    // SAFETY: the self-test is single-threaded (its children are processes).
    let child = match unsafe { crate::sys::process::fork_with(attempt) } {
        Ok(child) => child,
        Err(e) => return format!("unknown: cannot fork ({e})"),
    };
    match waitpid(Some(child), WaitOptions::empty()) {
        Ok(Some((_, status))) => match status.exit_status() {
            Some(0) => "permitted".to_owned(),
            Some(code) => format!("refused: {}", Errno::from_raw_os_error(code)),
            None => "unknown: the probe was killed".to_owned(),
        },
        _ => "unknown: the probe was lost".to_owned(),
    }
}

fn throttling_state() -> String {
    let period = read_trimmed("/proc/sys/kernel/sched_rt_period_us");
    match RtThrottling::default().read() {
        Ok(THROTTLING_OFF) => "off (sched_rt_runtime_us -1)".to_owned(),
        Ok(runtime) => format!(
            "on: {runtime} us every {} us (stalld turns it off while it runs)",
            period.as_deref().unwrap_or("?")
        ),
        Err(e) => format!("unknown: {e}"),
    }
}

fn dl_server_state(cpu: u32) -> String {
    let mut single = CpuSet::empty();
    single.insert(cpu);
    let mut watch = DlServerWatch::open(&single);
    let serving = watch.read().contains(cpu);
    let how = match watch.source() {
        DlServerSource::Absent => return "absent (kernel before 6.12)".to_owned(),
        DlServerSource::Knobs if watch.had_unreadable_knob() => {
            ", taken from the kernel default (lockdown)"
        }
        DlServerSource::Knobs => "",
        DlServerSource::Assumed => ", assumed (debugfs not readable)",
    };
    let state = if serving {
        "on: SCHED_OTHER tasks are left to it"
    } else {
        "off: stalld boosts SCHED_OTHER tasks too"
    };
    format!("{state} on CPU {cpu}{how}")
}

/// Each backend and whether it opens on `cpu` (the BPF one loads and attaches its programs).
pub fn backends_usable(cpu: u32) -> Vec<(BackendKind, Result<(), String>)> {
    let mut single = CpuSet::empty();
    single.insert(cpu);
    BACKENDS
        .iter()
        .map(|&kind| {
            let opened = AnyBackend::open(kind, &single)
                .map(drop)
                .map_err(|e| e.to_string());
            (kind, opened)
        })
        .collect()
}
