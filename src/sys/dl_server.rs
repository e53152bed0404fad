//! The fair DL-server (6.12+): which monitored CPUs it protects. Such CPUs give SCHED_OTHER
//! tasks 50 ms every second, so those tasks are never starved there. An admin or a tuning
//! service may switch it off (runtime 0) or on at any time, so the knobs are re-read while
//! the daemon runs.
//! Invariant: after [`DlServerWatch::open`], reading the knobs allocates nothing (paths are
//! built once, files read into a stack buffer).

use core::ffi::CStr;
use std::ffi::CString;

use rustix::io::Errno;

use crate::cpuset::CpuSet;
use crate::sys::lines::read_small_file;
use crate::sys::proc_files;

/// Where the DL-server's per-CPU knobs live (6.12+).
const FAIR_SERVER_DIR: &str = "/sys/kernel/debug/sched/fair_server";
/// The scheduler's debugfs directory: readable means the absence of [`FAIR_SERVER_DIR`] is real.
const DEBUGFS_SCHED_DIR: &str = "/sys/kernel/debug/sched";

/// How the kernel's DL-server is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlServerSource {
    /// The kernel has none (before 6.12).
    Absent,
    /// Its knobs are read from debugfs.
    Knobs,
    /// debugfs is not readable at all (lockdown=confidentiality) on a 6.12+ kernel: taken to be
    /// on for every monitored CPU, the kernel's default.
    Assumed,
}

/// The DL-server's per-CPU runtime knobs of the monitored CPUs.
#[derive(Debug)]
pub struct DlServerWatch {
    source: DlServerSource,
    monitored: CpuSet,
    /// `(cpu, fair_server/cpu<N>/runtime)` for each monitored CPU.
    knobs: Vec<(u32, CString)>,
    /// Whether the last read found a knob that exists but cannot be read (lockdown).
    unreadable: bool,
}

impl DlServerWatch {
    /// Finds the knobs for `monitored` (debugfs must be mounted by now to see them).
    pub fn open(monitored: &CpuSet) -> DlServerWatch {
        Self::open_in(FAIR_SERVER_DIR, DEBUGFS_SCHED_DIR, monitored)
    }

    /// Same, with the knobs in `fair_server_dir` and the scheduler's debugfs in `sched_dir`.
    fn open_in(fair_server_dir: &str, sched_dir: &str, monitored: &CpuSet) -> DlServerWatch {
        let source = if std::fs::metadata(fair_server_dir).is_ok() {
            DlServerSource::Knobs
        } else if std::fs::metadata(sched_dir).is_ok() || !kernel_has_dl_server() {
            DlServerSource::Absent
        } else {
            DlServerSource::Assumed
        };
        let knobs = match source {
            DlServerSource::Knobs => monitored
                .iter()
                .filter_map(|cpu| {
                    let path = format!("{fair_server_dir}/cpu{cpu}/runtime");
                    Some((cpu, CString::new(path).ok()?))
                })
                .collect(),
            DlServerSource::Absent | DlServerSource::Assumed => Vec::new(),
        };
        DlServerWatch {
            source,
            monitored: *monitored,
            knobs,
            unreadable: false,
        }
    }

    /// How the DL-server is known.
    pub fn source(&self) -> DlServerSource {
        self.source
    }

    /// Whether the last [`DlServerWatch::read`] took a knob it could not read as on.
    pub fn had_unreadable_knob(&self) -> bool {
        self.unreadable
    }

    /// The monitored CPUs whose DL-server serves fair tasks now. A runtime that cannot be
    /// read (kernel lockdown) cannot have been changed either: it is on, the default.
    pub fn read(&mut self) -> CpuSet {
        self.unreadable = false;
        match self.source {
            DlServerSource::Absent => return CpuSet::empty(),
            DlServerSource::Assumed => return self.monitored,
            DlServerSource::Knobs => {}
        }
        let mut covered = CpuSet::empty();
        for (cpu, path) in &self.knobs {
            match read_runtime_ns(path) {
                Ok(0) => {}
                Ok(_) => {
                    covered.insert(*cpu);
                }
                Err(_) => {
                    self.unreadable = true;
                    covered.insert(*cpu);
                }
            }
        }
        covered
    }
}

/// A `runtime` knob's value, ns.
fn read_runtime_ns(path: &CStr) -> Result<u64, Errno> {
    let mut buf = [0u8; 32];
    let text = read_small_file(path, &mut buf)?;
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    proc_files::parse_u64(proc_files::trim(text)).ok_or(Errno::INVAL)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A `fair_server` directory with `cpu<N>/runtime` knobs, removed when dropped.
    struct FakeKnobs(PathBuf);

    impl FakeKnobs {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("stalld-fair-server-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeKnobs(dir)
        }

        fn set(&self, cpu: u32, runtime: &str) {
            let dir = self.0.join(format!("cpu{cpu}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("runtime"), runtime).unwrap();
        }

        fn watch(&self, cpus: &str) -> DlServerWatch {
            let cpus = CpuSet::parse(cpus, 8).unwrap();
            DlServerWatch::open_in(self.0.to_str().unwrap(), "/nonexistent", &cpus)
        }
    }

    impl Drop for FakeKnobs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn follows_the_knobs_as_they_change() {
        let knobs = FakeKnobs::new("change");
        knobs.set(1, "50000000\n");
        knobs.set(2, "0\n");
        let mut watch = knobs.watch("1-2");
        assert_eq!(watch.source(), DlServerSource::Knobs);
        assert_eq!(watch.read(), CpuSet::parse("1", 8).unwrap());
        knobs.set(1, "0\n");
        knobs.set(2, "50000000\n");
        assert_eq!(watch.read(), CpuSet::parse("2", 8).unwrap());
        assert!(!watch.had_unreadable_knob());
    }

    #[test]
    fn a_knob_that_cannot_be_read_is_on_and_said_so() {
        let knobs = FakeKnobs::new("unreadable");
        knobs.set(1, "0\n");
        // A directory where the file should be: read() fails as under lockdown.
        std::fs::create_dir_all(knobs.0.join("cpu2/runtime")).unwrap();
        let mut watch = knobs.watch("1-2");
        assert_eq!(watch.read(), CpuSet::parse("2", 8).unwrap());
        assert!(watch.had_unreadable_knob());
    }

    #[test]
    fn no_knobs_and_a_readable_scheduler_directory_mean_no_dl_server() {
        let dir = std::env::temp_dir();
        let cpus = CpuSet::parse("0-1", 8).unwrap();
        let mut watch =
            DlServerWatch::open_in("/nonexistent/fair_server", dir.to_str().unwrap(), &cpus);
        assert_eq!(watch.source(), DlServerSource::Absent);
        assert!(watch.read().is_empty());
    }
}
