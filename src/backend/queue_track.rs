//! queue_track: the eBPF backend. `bpf/stalld.bpf.c` keeps, for every CPU, the tasks waiting
//! on its run queue and the exact moment each one's wait began; this side copies the monitored
//! CPUs' tables (one consistent `BPF_F_LOCK` copy per CPU, into buffers allocated at startup)
//! and arms a wake event while nothing waits, so the loop sleeps until a task can first reach
//! the threshold and not at all while nothing waits.
//!
//! Invariants: sampling never allocates; before the loop acts on a task, its entry is checked
//! against `/proc/<tid>/sched` (same `nr_switches` as when its wait began, and the same
//! `se.exec_start` or the 0 a fair task's migration leaves), so a stale entry can delay
//! nothing and boost nobody.

mod skel {
    include!(concat!(env!("OUT_DIR"), "/stalld.skel.rs"));
}

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Mutex;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, Link, MapCore, MapFlags, OpenObject, PrintLevel, RingBuffer};

use skel::types::{stalld_cpu_queue, stalld_waiter};
use skel::{StalldSkel, StalldSkelBuilder};

use super::{Backend, Cadence, LastRun, SampleError, Snapshot, WaitingTask};
use crate::cpuset::CpuSet;
use crate::sys::procfs;
use crate::task::{Comm, Tid};

/// Where the kernel publishes its BTF; CO-RE relocations need it.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// `1` on PREEMPT_RT kernels.
const REALTIME_FLAG: &str = "/sys/kernel/realtime";
/// Kernel priorities below this are real-time.
const MAX_RT_PRIO: i32 = 100;

/// libbpf's first warning since the load began: the root cause, for a failed start's reason.
static LIBBPF_FIRST_WARNING: Mutex<String> = Mutex::new(String::new());

fn remember_libbpf_warning(_level: PrintLevel, message: String) {
    if let Ok(mut first) = LIBBPF_FIRST_WARNING.lock() {
        if first.is_empty() {
            *first = message.trim().replace('\n', " ");
        }
    }
}

/// `context: error (libbpf's first warning)`.
fn failure(context: &str, error: libbpf_rs::Error) -> String {
    let detail = LIBBPF_FIRST_WARNING
        .lock()
        .map(|w| w.clone())
        .unwrap_or_default();
    if detail.is_empty() {
        format!("{context}: {error}")
    } else {
        format!("{context}: {error} ({detail})")
    }
}

/// The kernel's count of runs and run time of one tracepoint program.
#[derive(Clone, Copy, Debug)]
pub struct ProgramStats {
    pub tracepoint: &'static str,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// One monitored CPU's BPF table as last copied.
struct CpuTable {
    cpu: u32,
    table: stalld_cpu_queue,
    /// The table's overflow count at the previous copy: tasks it had no room for since then
    /// are reported as overflowed in the sample.
    overflows_seen: u64,
}

impl CpuTable {
    /// How many of `table.waiters` are in use (the count is the kernel's: never trusted
    /// beyond the array).
    fn len(&self) -> usize {
        (self.table.nr_waiting as usize).min(self.table.waiters.len())
    }
}

pub struct QueueTrackBackend {
    skel: StalldSkel<'static>,
    /// Attached tracepoints, by name; dropping them detaches.
    links: Vec<(&'static str, Link)>,
    events: RingBuffer<'static>,
    /// Earliest wait start posted to the ring buffer since the last `take_events`.
    earliest_event_ns: Rc<Cell<Option<u64>>>,
    /// The monitored CPUs' tables, in the snapshot's CPU order.
    tables: Vec<CpuTable>,
    /// Whether `armed` is set in the BPF program: nothing waited at the last sample.
    armed: bool,
    /// PREEMPT_RT runs the ring buffer's wake-up in a SCHED_FIFO 1 thread of the CPU where the
    /// task started waiting, which a hog can starve: sample once per threshold even when armed.
    wake_may_starve: bool,
}

impl QueueTrackBackend {
    /// Loads and attaches the BPF programs, then snapshots the tasks already waiting.
    /// Fails with a one-line reason (no BTF, BPF refused, attach failed, ...).
    pub fn open(monitored: &CpuSet, possible_cpus: u32) -> Result<Self, String> {
        if std::fs::metadata(KERNEL_BTF).is_err() {
            return Err(format!(
                "the kernel has no BTF ({KERNEL_BTF} is missing; needs CONFIG_DEBUG_INFO_BTF)"
            ));
        }
        if let Ok(mut first) = LIBBPF_FIRST_WARNING.lock() {
            first.clear();
        }
        libbpf_rs::set_print(Some((PrintLevel::Warn, remember_libbpf_warning)));
        let result = Self::load(monitored, possible_cpus);
        libbpf_rs::set_print(None);
        result
    }

    fn load(monitored: &CpuSet, possible_cpus: u32) -> Result<Self, String> {
        // The skeleton borrows its object for as long as it lives: the daemon's lifetime.
        let object: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = StalldSkelBuilder::default()
            .open(object)
            .map_err(|e| failure("cannot open the BPF object", e))?;
        open.maps
            .queues
            .set_max_entries(possible_cpus.max(1))
            .map_err(|e| failure("cannot size the queue table", e))?;
        let skel = open
            .load()
            .map_err(|e| failure("the kernel refused the BPF programs", e))?;

        let tables: Vec<CpuTable> = monitored
            .iter()
            .map(|cpu| CpuTable {
                cpu,
                table: Default::default(),
                overflows_seen: 0,
            })
            .collect();
        for cpu in monitored.iter() {
            let mut table = stalld_cpu_queue {
                monitored: 1,
                ..Default::default()
            };
            skel.maps
                .queues
                .update(&cpu.to_ne_bytes(), table_bytes(&mut table), MapFlags::ANY)
                .map_err(|e| failure("cannot mark the monitored CPUs", e))?;
        }

        let progs = &skel.progs;
        let mut links = Vec::with_capacity(5);
        for (name, prog) in [
            ("sched_wakeup", &progs.handle__sched_wakeup),
            ("sched_wakeup_new", &progs.handle__sched_wakeup_new),
            ("sched_switch", &progs.handle__sched_switch),
            ("sched_migrate_task", &progs.handle__sched_migrate_task),
            ("sched_process_exit", &progs.handle__sched_process_exit),
        ] {
            let link = prog
                .attach()
                .map_err(|e| failure(&format!("cannot attach to {name}"), e))?;
            links.push((name, link));
        }
        // Attached first, then the snapshot: a task that starts or stops waiting meanwhile is
        // seen by a tracepoint, and the snapshot only adds what no tracepoint has.
        let iter_link = progs
            .snapshot_waiting
            .attach_iter_with_opts(libbpf_rs::IterOpts::None)
            .map_err(|e| failure("cannot create the task iterator", e))?;
        let mut iter =
            Iter::new(&iter_link).map_err(|e| failure("cannot start the task iterator", e))?;
        std::io::copy(&mut iter, &mut std::io::sink())
            .map_err(|e| format!("the task iterator failed: {e}"))?;

        let earliest_event_ns = Rc::new(Cell::new(None));
        let sink = Rc::clone(&earliest_event_ns);
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&skel.maps.wake_events, move |event: &[u8]| {
                // struct stalld_wake_event (bpf/stalld.h) starts with `__u64 since_ns`.
                if let Some(since) = event.get(..8).and_then(|b| b.try_into().ok()) {
                    let since_ns = u64::from_ne_bytes(since);
                    sink.set(Some(sink.get().map_or(since_ns, |t: u64| t.min(since_ns))));
                }
                0
            })
            .map_err(|e| failure("cannot watch the wake events", e))?;
        let events = builder
            .build()
            .map_err(|e| failure("cannot watch the wake events", e))?;

        Ok(QueueTrackBackend {
            skel,
            links,
            events,
            earliest_event_ns,
            tables,
            armed: false,
            wake_may_starve: std::fs::read(REALTIME_FLAG).is_ok_and(|flag| flag.starts_with(b"1")),
        })
    }

    /// What each tracepoint program has cost so far, from the kernel's BPF statistics
    /// (counted only while `/proc/sys/kernel/bpf_stats_enabled` is 1). Allocates: for
    /// benchmarks and reports, not the loop.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let ids: Vec<(&'static str, u32)> = self
            .links
            .iter()
            .filter_map(|(name, link)| {
                let info = libbpf_rs::query::LinkInfo::from_fd(link.as_fd()).ok()?;
                Some((*name, info.prog_id))
            })
            .collect();
        libbpf_rs::query::ProgInfoIter::default()
            .filter_map(|info| {
                let (name, _) = ids.iter().find(|(_, id)| *id == info.id)?;
                Some(ProgramStats {
                    tracepoint: name,
                    runs: info.run_cnt,
                    run_time_ns: info.run_time_ns,
                })
            })
            .collect()
    }

    fn set_armed(&mut self, armed: bool) {
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            // SAFETY: `armed` lives in the BPF program's mmapped .bss, which the program
            // updates concurrently; a volatile store makes this write a real, single store.
            unsafe { core::ptr::write_volatile(&mut bss.armed, u32::from(armed)) };
        }
        self.armed = armed;
    }
}

/// The bytes of a table, for the map syscalls.
fn table_bytes(table: &mut stalld_cpu_queue) -> &mut [u8] {
    // SAFETY: `stalld_cpu_queue` is `repr(C)` plain data (integers and arrays of them): every
    // byte pattern is a valid value, and the slice covers exactly the one value borrowed.
    unsafe {
        core::slice::from_raw_parts_mut(
            (table as *mut stalld_cpu_queue).cast::<u8>(),
            core::mem::size_of::<stalld_cpu_queue>(),
        )
    }
}

fn comm_of(waiter: &stalld_waiter) -> Comm {
    let bytes = waiter.comm.map(|c| c as u8);
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Comm::new(&bytes[..len])
}

impl Backend for QueueTrackBackend {
    fn name(&self) -> &'static str {
        "queue_track"
    }

    fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
        // Armed before reading: a task that starts waiting after its CPU's copy posts an event.
        self.set_armed(true);
        let mut waiting = false;
        for (cpu_table, queue) in self.tables.iter_mut().zip(&mut snapshot.queues) {
            debug_assert_eq!(cpu_table.cpu, queue.cpu);
            queue.clear();
            let found = self
                .skel
                .maps
                .queues
                .lookup_into(
                    &queue.cpu.to_ne_bytes(),
                    table_bytes(&mut cpu_table.table),
                    MapFlags::LOCK,
                )
                .map_err(|_| SampleError::Format("cannot copy a BPF queue table"))?;
            if !found {
                continue;
            }
            queue.present = true;
            let overflows = cpu_table.table.overflows;
            let untracked = overflows.saturating_sub(cpu_table.overflows_seen);
            queue.overflowed = u32::try_from(untracked).unwrap_or(u32::MAX);
            cpu_table.overflows_seen = overflows;
            let len = cpu_table.len();
            let waiters = &mut cpu_table.table.waiters[..len];
            // The snapshot holds fewer tasks than the table: keep those waiting longest.
            waiters.sort_unstable_by_key(|w| w.since_ns);
            for w in waiters.iter() {
                let Ok(tid) = Tid::try_from(w.tid) else {
                    continue;
                };
                queue.push(WaitingTask {
                    tid,
                    comm: comm_of(w),
                    switches: w.switches,
                    prio: w.prio,
                    waiting_since_ns: Some(w.since_ns),
                });
                if w.prio < MAX_RT_PRIO {
                    queue.rt_nr_running += 1;
                }
            }
            waiting |= len > 0;
        }
        if waiting {
            // The loop wakes for those anyway; events would only wake it early.
            self.set_armed(false);
        }
        Ok(())
    }

    fn last_run(&mut self, _tid: Tid) -> Option<LastRun> {
        // Every task comes with its exact wait start (`waiting_since_ns`).
        None
    }

    fn cadence(&self) -> Cadence {
        if self.armed && !self.wake_may_starve {
            Cadence::Armed
        } else {
            Cadence::Exact
        }
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the epoll descriptor belongs to `self.events` and stays open while it lives,
        // which outlives the returned borrow of `self`.
        Some(unsafe { BorrowedFd::borrow_raw(self.events.epoll_fd()) })
    }

    fn take_events(&mut self) -> Option<u64> {
        // A failed consume leaves the events for the next call; the loop samples anyway.
        let _ = self.events.consume();
        self.earliest_event_ns.take()
    }

    fn still_waiting(&mut self, cpu: u32, task: &WaitingTask) -> bool {
        let recorded = self.tables.iter().find(|t| t.cpu == cpu).and_then(|t| {
            t.table.waiters[..t.len()]
                .iter()
                .find(|w| Tid::try_from(w.tid) == Ok(task.tid))
        });
        let Some(recorded) = recorded else {
            return false;
        };
        // Unchanged switch count: not switched out since its wait began. Unchanged exec_start:
        // not switched in either (a running task's moves every tick). A fair task that
        // migrates gets exec_start 0 and keeps it until it runs, so 0 means waiting too.
        procfs::read_sched(task.tid).is_some_and(|now| {
            now.nr_switches == Some(recorded.switches)
                && (now.exec_start_ns == Some(recorded.exec_start_ns)
                    || now.exec_start_ns == Some(0))
        })
    }
}
