//! The fair DL-server (6.12+): which monitored CPUs it protects. Such CPUs give SCHED_OTHER
//! tasks 50 ms every second, so those tasks are never starved there.

use crate::cpuset::CpuSet;
use crate::log::{Log, Logger};
use crate::sys::procfs;

/// Where the DL-server's per-CPU knobs live (6.12+).
const FAIR_SERVER_DIR: &str = "/sys/kernel/debug/sched/fair_server";
/// The scheduler's debugfs directory: readable means the absence of [`FAIR_SERVER_DIR`] is real.
const DEBUGFS_SCHED_DIR: &str = "/sys/kernel/debug/sched";

/// CPUs of `cpus` whose DL-server serves SCHED_OTHER tasks; `None` on kernels without one.
/// A runtime that cannot be read (kernel lockdown) cannot have been changed either: it is on
/// by default. Without a readable debugfs at all (lockdown=confidentiality), a 6.12+ kernel is
/// taken to have it on every CPU.
pub fn dl_server_cpus(cpus: &CpuSet, logger: &mut Logger) -> Option<CpuSet> {
    if std::fs::metadata(FAIR_SERVER_DIR).is_err() {
        if std::fs::metadata(DEBUGFS_SCHED_DIR).is_ok() || !kernel_has_dl_server() {
            return None;
        }
        logger.info(format_args!(
            "debugfs is not readable: DL-server assumed on every CPU (kernel 6.12 or later)"
        ));
        return Some(*cpus);
    }
    let mut covered = CpuSet::empty();
    for cpu in cpus.iter() {
        let runtime = std::fs::read_to_string(format!("{FAIR_SERVER_DIR}/cpu{cpu}/runtime"));
        if runtime.map_or(true, |r| r.trim() != "0") {
            covered.insert(cpu);
        }
    }
    Some(covered)
}

/// Whether the running kernel is 6.12 or later, the first with the fair DL-server.
fn kernel_has_dl_server() -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_bytes();
    let mut numbers = release
        .split(|&b| b == b'.' || b == b'-')
        .map(procfs::parse_u64);
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 12),
        _ => false,
    }
}
