//! The boost journal: which tasks this daemon has boosted, kept in a small fixed file under
//! `/run/stalld/` so that a daemon that died (SIGKILL, OOM kill, crash) leaves enough behind
//! for the next one to undo its boosts. Invariant: a slot is written before its task's boost
//! and cleared after its restore; writing is a store into a locked shared mapping
//! ([`MappedFile`]): no system call, no allocation, no wait.
//!
//! File format (every integer little-endian), defined here and nowhere else:
//!
//! ```text
//! header (HEADER_SIZE = 64 bytes)
//!   0  [u8; 8]  FILE_MAGIC "STALLDJR"
//!   8  u32      FORMAT_VERSION
//!  12  u32      number of slots (SLOTS)
//!  16  u32      slot size (SLOT_SIZE)
//!  20  ...      zero
//! SLOTS slots of SLOT_SIZE (160) bytes
//!   0  u32      SLOT_ACTIVE when the slot holds a boost, stored last (after a fence)
//!   4  i32      tid
//!   8  u64      start time of the task (`/proc/<tid>/stat` field 22): its identity
//!  16  [56]     its attributes before the boost (`struct sched_attr` fields in order)
//!  72  [56]     the attributes the daemon last gave it (the boost, or a SCHED_FIFO pause)
//! 128  [u8; 16] its name, zero padded
//! ```

use std::path::Path;
use std::sync::atomic::{fence, Ordering};

use crate::boost::{self, Identity, Scheduler, MAX_ACTIVE_BOOSTS};
use crate::log::Log;
use crate::sys::mapped_file::MappedFile;
use crate::sys::sched::{policy_name, SchedAttr};
use crate::task::{Comm, Tid, COMM_MAX_LEN};

/// The journal's name in the run directory.
pub const JOURNAL_FILE: &str = "stalld.journal";
/// The first bytes of every journal.
pub const FILE_MAGIC: [u8; 8] = *b"STALLDJR";
/// Bumped whenever the layout above changes.
pub const FORMAT_VERSION: u32 = 1;
/// One slot per boost that can be active at once.
pub const SLOTS: usize = MAX_ACTIVE_BOOSTS;
const HEADER_SIZE: usize = 64;
const SLOT_SIZE: usize = 160;
const SLOTS_U32: u32 = 64;
const SLOT_SIZE_U32: u32 = 160;
const _: () = assert!(SLOTS_U32 as usize == SLOTS && SLOT_SIZE_U32 as usize == SLOT_SIZE);
/// The journal file's size.
pub const JOURNAL_SIZE: usize = HEADER_SIZE + SLOTS * SLOT_SIZE;
/// Marks a slot in use ("BOST" as little-endian bytes).
const SLOT_ACTIVE: u32 = u32::from_le_bytes(*b"BOST");
const ATTR_SIZE: usize = 56;
const SAVED_AT: usize = 16;
const EXPECTED_AT: usize = SAVED_AT + ATTR_SIZE;
const COMM_AT: usize = EXPECTED_AT + ATTR_SIZE;

/// One boost as the journal holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tid: Tid,
    pub start_time: u64,
    pub comm: Comm,
    /// The task's attributes before the boost.
    pub saved: SchedAttr,
    /// The attributes the daemon last gave it.
    pub expected: SchedAttr,
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    file: MappedFile,
}

impl Journal {
    /// Opens the journal at `path` (mode 0600, never through a link, see [`MappedFile`]). A
    /// file that is not a journal of this format is started afresh; the boosts a dead daemon
    /// left in one are returned by [`Journal::leftovers`]. Startup only.
    pub fn open(path: &Path) -> Result<Journal, String> {
        let (file, same_size) = MappedFile::open(path, JOURNAL_SIZE)?;
        let mut journal = Journal { file };
        if !same_size || !journal.header_is_current() {
            format_image(journal.file.bytes());
        }
        Ok(journal)
    }

    fn header_is_current(&mut self) -> bool {
        let image = self.file.bytes();
        image[0..8] == FILE_MAGIC
            && u32_at(image, 8) == FORMAT_VERSION
            && u32_at(image, 12) == SLOTS_U32
            && u32_at(image, 16) == SLOT_SIZE_U32
    }

    /// The boosts recorded and not cleared, with their slots: at startup, what a dead daemon
    /// left boosted. Startup only (allocates).
    pub fn leftovers(&mut self) -> Vec<(usize, Entry)> {
        let image = self.file.bytes();
        (0..SLOTS)
            .filter_map(|slot| read_slot(image, slot).map(|entry| (slot, entry)))
            .collect()
    }

    /// Records `entry` in a free slot and returns it; `None` when every slot is taken (the
    /// booster never has more boosts than slots).
    pub fn record(&mut self, entry: &Entry) -> Option<usize> {
        let image = self.file.bytes();
        let slot = (0..SLOTS).find(|&slot| u32_at(image, slot_at(slot)) != SLOT_ACTIVE)?;
        let bytes = &mut image[slot_at(slot)..slot_at(slot) + SLOT_SIZE];
        bytes[4..8].copy_from_slice(&entry.tid.to_le_bytes());
        bytes[8..16].copy_from_slice(&entry.start_time.to_le_bytes());
        put_attr(&mut bytes[SAVED_AT..], &entry.saved);
        put_attr(&mut bytes[EXPECTED_AT..], &entry.expected);
        let name = entry.comm.as_bytes();
        bytes[COMM_AT..COMM_AT + COMM_MAX_LEN].fill(0);
        bytes[COMM_AT..COMM_AT + name.len()].copy_from_slice(name);
        fence(Ordering::Release);
        bytes[0..4].copy_from_slice(&SLOT_ACTIVE.to_le_bytes());
        Some(slot)
    }

    /// Notes the attributes the daemon just gave the task of `slot`. A daemon killed in the
    /// middle of this store leaves attributes that match nothing: its successor then leaves the
    /// task alone and says so.
    pub fn set_expected(&mut self, slot: usize, expected: &SchedAttr) {
        if slot < SLOTS {
            let at = slot_at(slot) + EXPECTED_AT;
            put_attr(&mut self.file.bytes()[at..], expected);
        }
    }

    /// Frees `slot`: its task was restored, or needs nothing more.
    pub fn clear(&mut self, slot: usize) {
        if slot < SLOTS {
            let at = slot_at(slot);
            self.file.bytes()[at..at + 4].fill(0);
        }
    }
}

fn slot_at(slot: usize) -> usize {
    HEADER_SIZE + slot * SLOT_SIZE
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

/// Writes a fresh header and empties every slot.
fn format_image(image: &mut [u8]) {
    image.fill(0);
    image[0..8].copy_from_slice(&FILE_MAGIC);
    image[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    image[12..16].copy_from_slice(&SLOTS_U32.to_le_bytes());
    image[16..20].copy_from_slice(&SLOT_SIZE_U32.to_le_bytes());
}

fn put_attr(out: &mut [u8], attr: &SchedAttr) {
    out[0..4].copy_from_slice(&attr.size.to_le_bytes());
    out[4..8].copy_from_slice(&attr.sched_policy.to_le_bytes());
    out[8..16].copy_from_slice(&attr.sched_flags.to_le_bytes());
    out[16..20].copy_from_slice(&attr.sched_nice.to_le_bytes());
    out[20..24].copy_from_slice(&attr.sched_priority.to_le_bytes());
    out[24..32].copy_from_slice(&attr.sched_runtime.to_le_bytes());
    out[32..40].copy_from_slice(&attr.sched_deadline.to_le_bytes());
    out[40..48].copy_from_slice(&attr.sched_period.to_le_bytes());
    out[48..52].copy_from_slice(&attr.sched_util_min.to_le_bytes());
    out[52..56].copy_from_slice(&attr.sched_util_max.to_le_bytes());
}

fn get_attr(bytes: &[u8]) -> SchedAttr {
    SchedAttr {
        size: u32_at(bytes, 0),
        sched_policy: u32_at(bytes, 4),
        sched_flags: u64_at(bytes, 8),
        sched_nice: u32_at(bytes, 16) as i32,
        sched_priority: u32_at(bytes, 20),
        sched_runtime: u64_at(bytes, 24),
        sched_deadline: u64_at(bytes, 32),
        sched_period: u64_at(bytes, 40),
        sched_util_min: u32_at(bytes, 48),
        sched_util_max: u32_at(bytes, 52),
    }
}

fn read_slot(image: &[u8], slot: usize) -> Option<Entry> {
    let bytes = image.get(slot_at(slot)..slot_at(slot) + SLOT_SIZE)?;
    if u32_at(bytes, 0) != SLOT_ACTIVE {
        return None;
    }
    let name = &bytes[COMM_AT..COMM_AT + COMM_MAX_LEN];
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(COMM_MAX_LEN);
    Some(Entry {
        tid: u32_at(bytes, 4) as i32,
        start_time: u64_at(bytes, 8),
        comm: Comm::new(&name[..name_len]),
        saved: get_attr(&bytes[SAVED_AT..]),
        expected: get_attr(&bytes[EXPECTED_AT..]),
    })
}

/// What became of the boosts a dead daemon left in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub restored: usize,
    pub left_alone: usize,
    pub failed: usize,
}

/// Undoes the boosts a dead daemon left in `journal`: each task that is still the same task
/// (same start time) and still has exactly the attributes the dead daemon gave it gets its
/// original attributes back, as does one a restore's step left half-way
/// ([`boost::is_restore_step`]); any other is left alone. Every case is logged; a restore the
/// kernel refuses is tried [`boost::RESTORE_ATTEMPTS`] times. Every slot is freed. Startup
/// only (allocates, may sleep).
pub fn recover(
    journal: &mut Journal,
    scheduler: &mut impl Scheduler,
    log: &mut impl Log,
) -> Recovered {
    let mut recovered = Recovered::default();
    for (slot, entry) in journal.leftovers() {
        let (tid, comm) = (entry.tid, entry.comm);
        match boost::identify(scheduler, tid, entry.start_time, &entry.expected) {
            Identity::Same => {
                put_back_leftover(scheduler, &entry, entry.expected, log, &mut recovered)
            }
            // It died half-way through a restore (`boost::put_back`'s steps): finish it.
            Identity::Changed(now) if boost::is_restore_step(&now, &entry.saved) => {
                put_back_leftover(scheduler, &entry, now, log, &mut recovered)
            }
            Identity::Gone => log.info(format_args!(
                "pid {tid} ({comm}), boosted by a stalld that died, has exited: nothing to \
                 restore"
            )),
            Identity::Replaced => {
                recovered.left_alone += 1;
                log.info(format_args!(
                    "pid {tid}, boosted by a stalld that died, is another task now (its tid \
                     was reused): left alone"
                ));
            }
            Identity::Changed(now) => {
                recovered.left_alone += 1;
                log.info(format_args!(
                    "pid {tid} ({comm}), boosted by a stalld that died, runs under {} now, \
                     not under its boost: someone changed it, left alone",
                    policy_name(now.sched_policy)
                ));
            }
        }
        journal.clear(slot);
    }
    recovered
}

/// Restores `entry`'s task, which has `current`, to its saved attributes, counted and logged.
fn put_back_leftover(
    scheduler: &mut impl Scheduler,
    entry: &Entry,
    mut current: SchedAttr,
    log: &mut impl Log,
    recovered: &mut Recovered,
) {
    let (tid, comm) = (entry.tid, entry.comm);
    let mut result = Ok(());
    for attempt in 1..=boost::RESTORE_ATTEMPTS {
        result = boost::put_back(scheduler, tid, &mut current, &entry.saved);
        if result.is_ok() || attempt == boost::RESTORE_ATTEMPTS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    match result {
        Ok(()) => {
            recovered.restored += 1;
            log.info(format_args!(
                "restored pid {tid} ({comm}) to {}: a stalld that died had left \
                 it boosted",
                policy_name(entry.saved.sched_policy)
            ));
        }
        Err(errno) => {
            recovered.failed += 1;
            log.error(format_args!(
                "cannot restore pid {tid} ({comm}), left boosted by a stalld that \
                 died, after {} attempts: {errno}",
                boost::RESTORE_ATTEMPTS
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Level;
    use crate::sys::sched::SCHED_DEADLINE;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stalld-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join(JOURNAL_FILE)
    }

    fn entry(tid: Tid, start_time: u64) -> Entry {
        Entry {
            tid,
            start_time,
            comm: Comm::new(b"victim"),
            saved: SchedAttr::fifo(1),
            expected: SchedAttr::deadline(20_000, 1_000_000_000, 1_000_000_000),
        }
    }

    #[test]
    fn slots_survive_reopening_and_clear() {
        let path = temp_path("reopen");
        let mut journal = Journal::open(&path).unwrap();
        assert!(journal.leftovers().is_empty());
        let a = journal.record(&entry(10, 100)).unwrap();
        let b = journal.record(&entry(11, 111)).unwrap();
        assert_ne!(a, b);
        journal.set_expected(b, &SchedAttr::fifo(98));
        journal.clear(a);
        assert!(Journal::open(&path).unwrap_err().contains("in use"));
        drop(journal);
        let mut journal = Journal::open(&path).unwrap();
        let expected = Entry {
            expected: SchedAttr::fifo(98),
            ..entry(11, 111)
        };
        assert_eq!(journal.leftovers(), vec![(b, expected)]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn every_slot_once_then_none() {
        let path = temp_path("full");
        let mut journal = Journal::open(&path).unwrap();
        for tid in 0..SLOTS_U32 {
            assert!(journal
                .record(&entry(Tid::try_from(tid).unwrap(), 1))
                .is_some());
        }
        assert_eq!(journal.record(&entry(1000, 1)), None);
        assert_eq!(journal.leftovers().len(), SLOTS);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_foreign_file_is_started_afresh() {
        let path = temp_path("foreign");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0xffu8; JOURNAL_SIZE]).unwrap();
        assert!(Journal::open(&path).unwrap().leftovers().is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Tasks with start times and attributes.
    #[derive(Default)]
    struct Tasks(HashMap<Tid, (u64, SchedAttr)>);

    impl Scheduler for Tasks {
        fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, rustix::io::Errno> {
            self.0.get(&tid).map(|t| t.1).ok_or(rustix::io::Errno::SRCH)
        }
        fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), rustix::io::Errno> {
            let task = self.0.get_mut(&tid).ok_or(rustix::io::Errno::SRCH)?;
            task.1 = *attr;
            Ok(())
        }
        fn start_time(&mut self, tid: Tid) -> Result<u64, rustix::io::Errno> {
            self.0.get(&tid).map(|t| t.0).ok_or(rustix::io::Errno::SRCH)
        }
        /// Unused: recovery never pokes.
        fn cpu_time_ns(&mut self, _: Tid) -> Option<u64> {
            None
        }
        fn spin_until(&mut self, when_ns: u64) -> u64 {
            when_ns
        }
    }

    #[derive(Default)]
    struct Lines(Vec<String>);

    impl Log for Lines {
        fn log(&mut self, _: Level, args: std::fmt::Arguments<'_>) {
            self.0.push(args.to_string());
        }
        fn is_verbose(&self) -> bool {
            true
        }
    }

    #[test]
    fn recovery_restores_only_the_same_task_with_the_boost_attributes_or_a_restore_step() {
        let path = temp_path("recover");
        let mut journal = Journal::open(&path).unwrap();
        let boost = entry(0, 0).expected;
        let mut tasks = Tasks::default();
        tasks.0.insert(1, (100, boost));
        tasks.0.insert(2, (999, boost));
        tasks.0.insert(3, (300, SchedAttr::fifo(40)));
        // Left half-way through a restore to SCHED_FIFO 1: at each of its two steps.
        tasks.0.insert(5, (500, boost::release_step()));
        tasks.0.insert(6, (600, SchedAttr::fifo(2)));
        for (tid, start) in [(1, 100), (2, 200), (3, 300), (4, 400), (5, 500), (6, 600)] {
            journal.record(&entry(tid, start)).unwrap();
        }
        let mut lines = Lines::default();
        let recovered = recover(&mut journal, &mut tasks, &mut lines);
        assert_eq!(
            recovered,
            Recovered {
                restored: 3,
                left_alone: 2,
                failed: 0
            },
            "{:?}",
            lines.0
        );
        assert_eq!(tasks.0[&1].1.sched_policy, crate::sys::sched::SCHED_FIFO);
        assert_eq!(tasks.0[&1].1.sched_priority, 1);
        for tid in [5, 6] {
            assert_eq!(tasks.0[&tid].1, SchedAttr::fifo(1), "{:?}", lines.0);
        }
        assert_eq!(tasks.0[&2].1.sched_policy, SCHED_DEADLINE);
        assert_eq!(tasks.0[&3].1, SchedAttr::fifo(40));
        assert!(lines.0[1].contains("tid was reused"), "{:?}", lines.0);
        assert!(lines.0[2].contains("someone changed it"), "{:?}", lines.0);
        assert!(lines.0[3].contains("has exited"), "{:?}", lines.0);
        assert!(journal.leftovers().is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
