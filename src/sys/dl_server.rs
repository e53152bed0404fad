//! The fair DL-server (6.12+): which monitored CPUs it protects. Such CPUs give SCHED_OTHER
//! tasks 50 ms every second, so those tasks are never starved there.

use crate::cpuset::CpuSet;
use crate::sys::proc_files;

/// Where the DL-server's per-CPU knobs live (6.12+).
const FAIR_SERVER_DIR: &str = "/sys/kernel/debug/sched/fair_server";
/// The scheduler's debugfs directory: readable means the absence of [`FAIR_SERVER_DIR`] is real.
const DEBUGFS_SCHED_DIR: &str = "/sys/kernel/debug/sched";

/// What the kernel says about its DL-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlServer {
    /// The kernel has none (before 6.12).
    Absent,
    /// The monitored CPUs whose DL-server is on, as read from debugfs.
    Probed(CpuSet),
    /// debugfs is not readable at all (lockdown=confidentiality) on a 6.12+ kernel: taken
    /// to be on for every monitored CPU.
    Assumed(CpuSet),
}

/// Which CPUs of `cpus` have a DL-server serving SCHED_OTHER tasks. A runtime that cannot be
/// read (kernel lockdown) cannot have been changed either: it is on by default.
pub fn dl_server_cpus(cpus: &CpuSet) -> DlServer {
    if std::fs::metadata(FAIR_SERVER_DIR).is_err() {
        if std::fs::metadata(DEBUGFS_SCHED_DIR).is_ok() || !kernel_has_dl_server() {
            return DlServer::Absent;
        }
        return DlServer::Assumed(*cpus);
    }
    let mut covered = CpuSet::empty();
    for cpu in cpus.iter() {
        let runtime = std::fs::read_to_string(format!("{FAIR_SERVER_DIR}/cpu{cpu}/runtime"));
        if runtime.map_or(true, |r| r.trim() != "0") {
            covered.insert(cpu);
        }
    }
    DlServer::Probed(covered)
}

/// Whether the running kernel is 6.12 or later, the first with the fair DL-server.
fn kernel_has_dl_server() -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_bytes();
    let mut numbers = release
        .split(|&b| b == b'.' || b == b'-')
        .map(proc_files::parse_u64);
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 12),
        _ => false,
    }
}
