//! The monitor loop as a state machine: samples a [`Backend`], dates waits with the
//! [`Tracker`], decides about each starving task ([`Decider::decide`], which logs nothing) and
//! words every line in one place ([`report`]).
//! Invariant: after [`Monitor::new`], nothing here allocates or blocks; time comes in as an
//! argument (monotonic ns), so the whole loop runs in unit tests with a fake clock.

use rustix::io::Errno;

use crate::backend::{Backend, Cadence, SampleError, Snapshot, WaitingTask};
use crate::boost::{BoostError, BoostEvent, BoostParams, BoostPolicy, Booster, Scheduler};
use crate::config::Config;
use crate::cpuset::CpuSet;
use crate::detect::{Tracker, WaitingEntry};
use crate::ignore::IgnoreList;
use crate::log::Log;
use crate::sys::proc_files::{self, IdleMonitor};
use crate::sys::process;
use crate::task::{Comm, Tid};

const NS_PER_S: u64 = 1_000_000_000;

/// Most threads whose "ignored" line was already logged; older ones may be logged again.
const IGNORED_LOG_MEMORY: usize = 64;

/// Most due tasks confirmed one by one between two samples ([`Backend::still_waiting`]);
/// more take a sample. Measured here (bench `figures`, section `bpf`): queue_track confirms a
/// task in 9-10 us (two small `/proc` files); a sample took 19-21 us with the 76 tasks of the
/// machine, about 0.27 us per task, so 8 confirmations cost what a sample of 300 tasks does.
const MOST_RECHECKS: usize = 8;

/// Shortest time between two "more tasks wait than the tables hold" lines about one CPU:
/// a queue that fills and drains every pass cannot flood the log.
pub const OVERFLOW_LOG_INTERVAL_NS: u64 = 60 * NS_PER_S;

/// The parts of [`Config`] the loop needs, in loop units.
pub struct MonitorSettings {
    pub threshold_ns: u64,
    /// Longest time between two passes.
    pub poll_interval_ns: u64,
    /// `-g`: with `-l`, how often a task that stays starved is reported again.
    pub granularity_ns: u64,
    pub log_only: bool,
    pub idle_detection: bool,
    pub ignore_threads: IgnoreList,
    pub ignore_processes: IgnoreList,
    /// CPUs whose DL-server keeps SCHED_OTHER tasks from starving: those are never due there
    /// ([`Tracker::set_served_cpus`]), so never boosted nor waited for.
    pub dl_server_cpus: CpuSet,
}

impl MonitorSettings {
    pub fn from_config(config: &Config, dl_server_cpus: CpuSet) -> Self {
        let threshold_ns = duration_ns(config.starving_threshold);
        let granularity_ns = duration_ns(config.granularity);
        MonitorSettings {
            threshold_ns,
            // A waiting task must be seen before its threshold passes: its wait start is then
            // known exactly, and the pass that boosts it is scheduled for that moment.
            poll_interval_ns: granularity_ns.min(threshold_ns / 2),
            granularity_ns,
            log_only: config.log_only,
            idle_detection: config.idle_detection,
            ignore_threads: config.ignore_threads.clone(),
            ignore_processes: config.ignore_processes.clone(),
            dl_server_cpus,
        }
    }
}

/// Counters of what the loop could not do; each kind is logged once when it first happens.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonitorStats {
    /// Passes that sampled the backend (or found every CPU idle).
    pub passes: u64,
    /// Passes that only confirmed the tasks then due, without a sample
    /// ([`Backend::still_waiting`]).
    pub rechecks: u64,
    /// Passes that sampled nothing because every monitored CPU had idled.
    pub idle_passes: u64,
    pub sample_errors: u64,
    /// Passes times CPUs where more tasks waited than the tables hold.
    pub queue_overflows: u64,
    /// Waiting tasks left out of the tables, summed over passes.
    pub untracked_tasks: u64,
    pub boost_table_full: u64,
}

/// What the loop decided about one task whose wait reached the threshold, and what came of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Matched `-i` or `-I` (or `-I` could not be checked); `first` when this thread was not
    /// reported as ignored lately.
    Ignored { by: IgnoredBy, first: bool },
    /// `-l`: reported, never boosted.
    LogOnly,
    /// Boosted with `policy`; `deadline_refused` when the kernel refused SCHED_DEADLINE first.
    Boosted {
        policy: BoostPolicy,
        deadline_refused: Option<Errno>,
    },
    /// Every boost slot is taken: it stays due and is offered again when one frees up.
    /// `first` for the first time this ever happened.
    NoSlot { first: bool },
    /// The boost did not happen: the task left, is boosted already, or the kernel said no.
    Failed(BoostError),
}

/// Why a starving task is not boosted on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoredBy {
    /// Its thread name matches `-i`.
    Thread,
    /// Its process (thread group leader) name, given, matches `-I`.
    Process(Comm),
    /// `-I` is set but its process name cannot be read: not boosted (fails closed).
    ProcessUnknown,
}

/// Everything the loop logs. [`report`] words each one.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// The verdict on a starving task.
    Starving {
        cpu: u32,
        task: &'a WaitingTask,
        waited_s: u64,
        verdict: Verdict,
    },
    /// Verbose, each pass: a CPU's real-time and waiting counts.
    Checking {
        cpu: u32,
        rt_nr_running: u32,
        starving: usize,
    },
    /// Verbose, each pass: a task waiting for a second or more, not yet handled.
    MightStarve {
        cpu: u32,
        task: &'a WaitingTask,
        waited_s: u64,
    },
    /// The first sample that failed.
    SampleFailed {
        backend: &'static str,
        error: &'a SampleError,
    },
    /// A CPU has more waiting tasks than its table holds, after a pass where all fitted;
    /// `unlogged` earlier such episodes were not logged (rate limit).
    QueueOverflow {
        cpu: u32,
        untracked: u32,
        unlogged: u32,
    },
    /// Every waiting task of a CPU fits again, `lasted_s` after its logged overflow began;
    /// at most `peak_untracked` were left out in one pass meanwhile.
    QueueOverflowEnded {
        cpu: u32,
        lasted_s: u64,
        peak_untracked: u32,
    },
    /// A boost ended or could not be undone.
    Boost(&'a BoostEvent),
}

/// Writes the lines of `event`: the only place the loop's log wording lives.
pub fn report(log: &mut impl Log, event: Event<'_>) {
    match event {
        Event::Starving {
            cpu,
            task,
            waited_s,
            verdict,
        } => report_verdict(log, cpu, task, waited_s, verdict),
        Event::Checking {
            cpu,
            rt_nr_running,
            starving,
        } => log.debug(format_args!(
            "checking cpu {cpu} - rt: {rt_nr_running} - starving: {starving}"
        )),
        Event::MightStarve {
            cpu,
            task,
            waited_s,
        } => log.debug(format_args!(
            "{}-{} might starve on CPU {cpu} (waiting for {waited_s} seconds)",
            task.comm, task.tid
        )),
        Event::SampleFailed { backend, error } => log.error(format_args!(
            "{backend} backend: cannot sample run queues: {error:?}; retrying every pass"
        )),
        Event::QueueOverflow {
            cpu,
            untracked,
            unlogged,
        } => {
            log.warn(format_args!(
                "cpu {cpu}: more than {} waiting tasks, {untracked} not tracked this pass; \
                 the longest waiting are kept, the others rotate in",
                crate::backend::MAX_WAITING_PER_CPU
            ));
            if unlogged > 0 {
                log.warn(format_args!(
                    "cpu {cpu}: {unlogged} shorter overflows not logged since the last one"
                ));
            }
        }
        Event::QueueOverflowEnded {
            cpu,
            lasted_s,
            peak_untracked,
        } => log.info(format_args!(
            "cpu {cpu}: every waiting task tracked again after {lasted_s} seconds \
             (at most {peak_untracked} not tracked in one pass)"
        )),
        Event::Boost(BoostEvent::Restored { tid, comm }) => {
            log.debug(format_args!("restored pid {tid} ({comm})"))
        }
        Event::Boost(BoostEvent::Gone { tid, comm }) => {
            log.debug(format_args!("pid {tid} ({comm}) exited while boosted"))
        }
        Event::Boost(BoostEvent::RestoreFailed { tid, comm, errno }) => log.error(format_args!(
            "failed to restore the scheduling policy of pid {tid} ({comm}): {errno}; gave up \
             after {} attempts",
            crate::boost::RESTORE_ATTEMPTS
        )),
        Event::Boost(BoostEvent::Retrying {
            tid,
            comm,
            errno,
            attempt,
            restore,
        }) => log.warn(format_args!(
            "failed to {} pid {tid} ({comm}): {errno}; retrying (attempt {attempt} of {})",
            if *restore {
                "restore the scheduling policy of"
            } else {
                "switch the SCHED_FIFO boost of"
            },
            crate::boost::RESTORE_ATTEMPTS
        )),
        Event::Boost(BoostEvent::Replaced { tid, comm }) => log.info(format_args!(
            "pid {tid} ({comm}) exited while boosted and its tid was reused: the new task is \
             left alone"
        )),
        Event::Boost(BoostEvent::Changed { tid, comm, policy }) => log.info(format_args!(
            "pid {tid} ({comm}) was switched to {} by someone else during its boost: left alone",
            crate::sys::sched::policy_name(*policy)
        )),
    }
}

fn report_verdict(
    log: &mut impl Log,
    cpu: u32,
    task: &WaitingTask,
    waited_s: u64,
    verdict: Verdict,
) {
    let (comm, tid) = (task.comm, task.tid);
    match verdict {
        Verdict::Ignored { by, first } => {
            if first {
                report_ignored(log, cpu, task, by);
            }
            return;
        }
        // Reported when a slot frees and it is boosted: not again on every pass until then
        // (with every slot taken, passes come each time a boost ends).
        Verdict::NoSlot { first: false } => return,
        _ => {}
    }
    log.info(format_args!(
        "{comm}-{tid} starved on CPU {cpu} for {waited_s} seconds"
    ));
    match verdict {
        Verdict::Boosted {
            policy,
            deadline_refused,
        } => {
            if let Some(errno) = deadline_refused {
                log.warn(format_args!(
                    "SCHED_DEADLINE refused ({errno}): boosting with SCHED_FIFO"
                ));
            }
            log.info(format_args!(
                "boosted pid {tid} ({comm}) (cpu {cpu}) using {}",
                policy.name()
            ));
        }
        Verdict::NoSlot { first: true } => log.warn(format_args!(
            "{} tasks already boosted: pid {tid} waits for a free slot",
            crate::boost::MAX_ACTIVE_BOOSTS
        )),
        Verdict::Failed(BoostError::Gone) => log.debug(format_args!(
            "pid {tid} ({comm}) exited before it could be boosted"
        )),
        Verdict::Failed(BoostError::Denied(errno)) => {
            log.error(format_args!("failed to boost pid {tid} ({comm}): {errno}"))
        }
        Verdict::Failed(BoostError::AlreadyDeadline) => log.info(format_args!(
            "pid {tid} ({comm}) runs under SCHED_DEADLINE already: not boosted (a boost would \
             shrink its reservation)"
        )),
        _ => {}
    }
}

/// Upstream's words, then which CPU and why.
fn report_ignored(log: &mut impl Log, cpu: u32, task: &WaitingTask, by: IgnoredBy) {
    let (comm, tid) = (task.comm, task.tid);
    match by {
        IgnoredBy::Thread => log.info(format_args!(
            "Ignoring the thread {comm} from consideration for boosting (pid {tid}, CPU {cpu}: \
             thread name matches -i)"
        )),
        IgnoredBy::Process(process) => log.info(format_args!(
            "Ignoring the thread {comm} (spawned by {process}) from consideration for boosting \
             (pid {tid}, CPU {cpu}: process name matches -I)"
        )),
        IgnoredBy::ProcessUnknown => log.warn(format_args!(
            "Ignoring the thread {comm} from consideration for boosting (pid {tid}, CPU {cpu}: \
             its process name cannot be read to check -I)"
        )),
    }
}

/// One CPU's overflow episodes: from a pass with more waiting tasks than the tables hold to
/// the first pass where all fit again.
#[derive(Clone, Copy, Debug, Default)]
struct OverflowEpisode {
    /// When the current episode began; `None` while every waiting task fits.
    since_ns: Option<u64>,
    /// Most tasks left out in one pass of the current episode.
    peak_untracked: u32,
    /// Whether the current episode's start was logged (its end is logged then too).
    logged: bool,
    /// When a start was last logged.
    last_logged_ns: Option<u64>,
    /// Episodes begun since then and not logged.
    unlogged: u32,
}

impl OverflowEpisode {
    /// Folds one examined pass in: `untracked` tasks did not fit. Returns what to log.
    fn update(&mut self, cpu: u32, untracked: u32, now_ns: u64) -> Option<Event<'static>> {
        match (self.since_ns, untracked) {
            (None, 0) => None,
            (None, _) => {
                self.since_ns = Some(now_ns);
                self.peak_untracked = untracked;
                self.logged = self
                    .last_logged_ns
                    .is_none_or(|t| now_ns.saturating_sub(t) >= OVERFLOW_LOG_INTERVAL_NS);
                if !self.logged {
                    self.unlogged = self.unlogged.saturating_add(1);
                    return None;
                }
                self.last_logged_ns = Some(now_ns);
                let unlogged = core::mem::take(&mut self.unlogged);
                Some(Event::QueueOverflow {
                    cpu,
                    untracked,
                    unlogged,
                })
            }
            (Some(_), 0) => {
                let since_ns = self.since_ns.take()?;
                self.logged.then_some(Event::QueueOverflowEnded {
                    cpu,
                    lasted_s: now_ns.saturating_sub(since_ns) / NS_PER_S,
                    peak_untracked: self.peak_untracked,
                })
            }
            (Some(_), _) => {
                self.peak_untracked = self.peak_untracked.max(untracked);
                None
            }
        }
    }
}

/// Decides about starving tasks and boosts them: owns the scheduler, the boosts and the
/// memory of what was already said.
struct Decider<S: Scheduler> {
    scheduler: S,
    booster: Booster,
    ignored_logged: heapless::Deque<Tid, IGNORED_LOG_MEMORY>,
    boost_table_full: u64,
}

impl<S: Scheduler> Decider<S> {
    /// Decides about `entry`, waiting past the threshold, and boosts it if it must.
    /// Logs nothing: the verdict says what happened, [`report`] words it.
    fn decide(&mut self, settings: &MonitorSettings, entry: &WaitingEntry, now_ns: u64) -> Verdict {
        let task = entry.task;
        if let Some(by) = ignored_by(settings, entry) {
            return Verdict::Ignored {
                by,
                first: self.remember_ignored(task.tid),
            };
        }
        if settings.log_only {
            return Verdict::LogOnly;
        }
        match self
            .booster
            .boost(&mut self.scheduler, task.tid, task.comm, now_ns)
        {
            Ok(policy) => Verdict::Boosted {
                policy,
                deadline_refused: match policy {
                    BoostPolicy::Fifo => self.booster.deadline_refused.take(),
                    BoostPolicy::Deadline => None,
                },
            },
            Err(BoostError::TableFull) => {
                self.boost_table_full += 1;
                Verdict::NoSlot {
                    first: self.boost_table_full == 1,
                }
            }
            Err(error) => Verdict::Failed(error),
        }
    }

    /// Remembers that `tid` was reported as ignored; true if it was not remembered yet.
    fn remember_ignored(&mut self, tid: Tid) -> bool {
        if self.ignored_logged.iter().any(|&t| t == tid) {
            return false;
        }
        if self.ignored_logged.is_full() {
            self.ignored_logged.pop_front();
        }
        let _ = self.ignored_logged.push_back(tid);
        true
    }
}

/// The monitor loop as a state machine: fed by a [`Backend`], acting through a [`Scheduler`].
pub struct Monitor<B: Backend, S: Scheduler> {
    settings: MonitorSettings,
    backend: B,
    snapshot: Snapshot,
    tracker: Tracker,
    decider: Decider<S>,
    idle: Option<IdleMonitor>,
    next_pass_ns: u64,
    stats: MonitorStats,
    /// One per monitored CPU, in the snapshot's order.
    overflows: Vec<OverflowEpisode>,
    /// Read once a sample is complete: what it saw, it saw by then (a sample can take a
    /// while: procfs reads a file per thread), so first sightings and boosts date from it.
    clock: fn() -> u64,
}

impl<B: Backend, S: Scheduler> Monitor<B, S> {
    /// Preallocates every table for `cpus`. Fails only if `/proc/stat` is unreadable while idle
    /// detection is on.
    pub fn new(
        cpus: &CpuSet,
        settings: MonitorSettings,
        boost: BoostParams,
        backend: B,
        scheduler: S,
    ) -> Result<Self, String> {
        // An exact backend sees every wait begin: skipping idle CPUs would gain nothing.
        let idle = if settings.idle_detection && backend.cadence() == Cadence::Poll {
            let mut monitor = IdleMonitor::new(cpus.iter().max().unwrap_or(0));
            monitor
                .update()
                .map_err(|e| format!("cannot read /proc/stat for idle detection: {e}; use -N"))?;
            Some(monitor)
        } else {
            None
        };
        // A regex builds its match cache on first use: do that now, not in the loop.
        settings.ignore_threads.matches(b"");
        settings.ignore_processes.matches(b"");
        let mut tracker = Tracker::new(cpus.iter(), settings.threshold_ns);
        tracker.set_served_cpus(settings.dl_server_cpus);
        Ok(Monitor {
            tracker,
            snapshot: Snapshot::new(cpus.iter()),
            decider: Decider {
                scheduler,
                booster: Booster::new(boost),
                ignored_logged: heapless::Deque::new(),
                boost_table_full: 0,
            },
            settings,
            backend,
            idle,
            next_pass_ns: 0,
            stats: MonitorStats::default(),
            overflows: vec![OverflowEpisode::default(); cpus.len()],
            clock: process::monotonic_ns,
        })
    }

    /// Replaces the clock read after each sample (tests that drive the loop with a fake time
    /// give one that never runs ahead of it, e.g. `|| 0`).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    pub fn stats(&self) -> MonitorStats {
        MonitorStats {
            boost_table_full: self.decider.boost_table_full,
            ..self.stats
        }
    }

    /// Records every boost from now on in `journal` ([`Booster::set_journal`]).
    pub fn set_journal(&mut self, journal: crate::journal::Journal) {
        self.decider.booster.set_journal(journal);
    }

    /// Stops recording boosts and gives the journal back ([`Booster::take_journal`]).
    pub fn take_journal(&mut self) -> Option<crate::journal::Journal> {
        self.decider.booster.take_journal()
    }

    /// The CPUs whose DL-server serves fair tasks, as the loop believes.
    pub fn dl_server_cpus(&self) -> CpuSet {
        self.settings.dl_server_cpus
    }

    /// Tells the loop what the DL-server now serves (an admin may switch it on or off).
    pub fn set_dl_server_cpus(&mut self, cpus: CpuSet) {
        self.settings.dl_server_cpus = cpus;
        self.tracker.set_served_cpus(cpus);
    }

    /// The backend, e.g. for its event descriptor while the loop waits.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// One turn of the loop at `now_ns`: ends due boosts and, when owed, samples and acts.
    /// Returns the moment the loop wants to run again.
    pub fn step(&mut self, now_ns: u64, log: &mut impl Log) -> u64 {
        let decider = &mut self.decider;
        decider
            .booster
            .service(&mut decider.scheduler, now_ns, |event| {
                report(log, Event::Boost(&event))
            });
        let due = self.tracker.next_due_ns().is_some_and(|t| t <= now_ns);
        if now_ns >= self.next_pass_ns || (due && !self.recheck(now_ns, log)) {
            self.pass(now_ns, log);
            self.next_pass_ns = match self.backend.cadence() {
                Cadence::Poll => now_ns + self.settings.poll_interval_ns,
                // Whatever starts waiting after this pass reaches the threshold no sooner.
                Cadence::Exact => now_ns + self.settings.threshold_ns,
            };
        }
        let mut next = self.next_pass_ns;
        // A due entry still unhandled after the pass waits for a free boost slot: the booster's
        // next deadline wakes the loop then; waking for it now would spin.
        if let Some(t) = self.tracker.next_due_ns().filter(|&t| t > now_ns) {
            next = next.min(t);
        }
        if let Some(t) = self.decider.booster.next_deadline_ns() {
            next = next.min(t);
        }
        next
    }

    /// Restores every boosted task now.
    pub fn shutdown(&mut self, log: &mut impl Log) {
        let decider = &mut self.decider;
        decider
            .booster
            .restore_all(&mut decider.scheduler, |event| {
                report(log, Event::Boost(&event))
            });
    }

    /// Between two samples: acts on the tasks due now if the backend confirms, without a
    /// sample, that each still waits. False when only a sample can tell.
    fn recheck(&mut self, now_ns: u64, log: &mut impl Log) -> bool {
        let backend = &mut self.backend;
        if !self
            .tracker
            .recheck_due(now_ns, MOST_RECHECKS, |cpu, task| {
                backend.still_waiting(cpu, task)
            })
        {
            return false;
        }
        self.stats.rechecks += 1;
        // The moment of the recheck, not a later one: a task due since was not confirmed.
        self.act_on_starving(now_ns, log);
        true
    }

    fn pass(&mut self, now_ns: u64, log: &mut impl Log) {
        self.stats.passes += 1;
        let idle = match self.idle.as_mut() {
            Some(monitor) => monitor.update().ok().map(|()| &*monitor),
            None => None,
        };
        if let Some(m) = idle {
            // Whatever waits on a CPU that idled since the last pass began waiting after that
            // pass. When that holds for every monitored CPU, the sample is saved (an idle
            // machine costs nothing), at a price: a wait that began after the idle moment is
            // first seen, and dated, by the next pass, up to one poll interval late (-N
            // samples on every pass).
            if self.snapshot.queues.iter().all(|q| m.had_idle(q.cpu)) {
                self.stats.idle_passes += 1;
                self.tracker.forget_all();
                // Nothing waits on an idle CPU: every overflow has ended.
                for (queue, episode) in self.snapshot.queues.iter().zip(&mut self.overflows) {
                    if let Some(event) = episode.update(queue.cpu, 0, now_ns) {
                        report(log, event);
                    }
                }
                return;
            }
        }
        self.tracker.share_tracked(&mut self.snapshot);
        if let Err(error) = self.backend.sample(&mut self.snapshot) {
            // What was seen before the failure cannot be confirmed: start afresh next pass.
            self.tracker.forget_all();
            self.stats.sample_errors += 1;
            if self.stats.sample_errors == 1 {
                let backend = self.backend.name();
                report(
                    log,
                    Event::SampleFailed {
                        backend,
                        error: &error,
                    },
                );
            }
            return;
        }
        // Never earlier than the pass began, whatever clock the caller drives the loop with.
        let now_ns = (self.clock)().max(now_ns);
        // A CPU that idled since the last pass is examined like the others: a task waiting
        // there now is either known from an earlier pass by an unchanged switch count (it
        // never ran: it waited elsewhere meanwhile) or dated as the module `detect` says.
        // Skipping it lost a sighting and made a poll backend's report one pass later.
        let backend = &mut self.backend;
        self.tracker
            .update(&self.snapshot, now_ns, |tid| backend.last_run(tid));
        report_overflow(
            &self.snapshot,
            &mut self.overflows,
            &mut self.stats,
            now_ns,
            log,
        );
        self.report_pass(now_ns, log);
        self.act_on_starving(now_ns, log);
    }

    fn report_pass(&self, now_ns: u64, log: &mut impl Log) {
        if !log.is_verbose() {
            return;
        }
        for (queue, track) in self.snapshot.queues.iter().zip(self.tracker.cpus()) {
            let cpu = queue.cpu;
            report(
                log,
                Event::Checking {
                    cpu,
                    rt_nr_running: queue.rt_nr_running,
                    starving: track.entries.len(),
                },
            );
            for entry in track.entries.iter().filter(|e| !e.handled) {
                let waited_s = entry.waited_ns(now_ns) / NS_PER_S;
                if waited_s > 0 {
                    let task = &entry.task;
                    report(
                        log,
                        Event::MightStarve {
                            cpu,
                            task,
                            waited_s,
                        },
                    );
                }
            }
        }
    }

    fn act_on_starving(&mut self, now_ns: u64, log: &mut impl Log) {
        let clock = self.clock;
        self.tracker.for_each_starving(now_ns, |cpu, entry| {
            // A boost lasts -d from when it begins: boosting other tasks and logging them can
            // take a while (measured 0.1 s in a guest), so the clock is read again for each.
            let acted_ns = clock().max(now_ns);
            let verdict = self.decider.decide(&self.settings, entry, acted_ns);
            match verdict {
                // Offered again when a boost slot frees up.
                Verdict::NoSlot { .. } => {}
                // Reported again, with its growing wait, every -g while it lasts (upstream).
                Verdict::LogOnly => {
                    entry.report_again_ns = now_ns.saturating_add(self.settings.granularity_ns)
                }
                _ => entry.handled = true,
            }
            let waited_s = entry.waited_ns(now_ns) / NS_PER_S;
            let task = &entry.task;
            report(
                log,
                Event::Starving {
                    cpu,
                    task,
                    waited_s,
                    verdict,
                },
            );
        });
    }
}

/// Counts the CPUs whose tables overflowed in the pass at `now_ns` and logs when that starts
/// and ends on one (rate-limited per CPU, see [`OVERFLOW_LOG_INTERVAL_NS`]). A CPU that idled
/// (`verdict`) has no overflow; one not sampled is left as it was.
fn report_overflow(
    snapshot: &Snapshot,
    episodes: &mut [OverflowEpisode],
    stats: &mut MonitorStats,
    now_ns: u64,
    log: &mut impl Log,
) {
    for (queue, episode) in snapshot.queues.iter().zip(episodes) {
        if !queue.present {
            continue;
        }
        let untracked = queue.overflowed;
        if untracked > 0 {
            stats.queue_overflows += 1;
            stats.untracked_tasks += u64::from(untracked);
        }
        if let Some(event) = episode.update(queue.cpu, untracked, now_ns) {
            report(log, event);
        }
    }
}

/// `duration` in ns; validated durations are at most an hour, far below `u64::MAX` ns.
pub fn duration_ns(duration: core::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Why `entry` must not be boosted, if it must not. `-I` fails closed: a process name that
/// cannot be read (the task is exiting, or `/proc` is unreadable) is not a name that did
/// not match.
fn ignored_by(settings: &MonitorSettings, entry: &WaitingEntry) -> Option<IgnoredBy> {
    if settings.ignore_threads.matches(entry.task.comm.as_bytes()) {
        return Some(IgnoredBy::Thread);
    }
    if settings.ignore_processes.is_empty() {
        return None;
    }
    let Some(process) = proc_files::read_tgid(entry.task.tid).and_then(proc_files::read_comm)
    else {
        return Some(IgnoredBy::ProcessUnknown);
    };
    settings
        .ignore_processes
        .matches(process.as_bytes())
        .then_some(IgnoredBy::Process(process))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, LastRun};
    use crate::boost_budget::BudgetEnforcement;
    use crate::config::SCHED_FIFO_BOOST_PRIORITY;
    use crate::log::{Level, LogSinks, Logger};
    use crate::sys::sched::{self, SchedAttr};
    use crate::task::Comm;
    use rustix::io::Errno;

    const S: u64 = 1_000_000_000;

    /// Serves the same waiting tasks every pass, or fails every pass. With `exact_since`, it
    /// behaves like queue_track: exact wait starts; `still_waiting` is its answer about every
    /// task between two samples.
    struct FakeBackend {
        waiting: Vec<(u32, Tid)>,
        fail: bool,
        exact_since: Option<u64>,
        prio: i32,
        still_waiting: Option<bool>,
        /// The tasks asked about between two samples.
        rechecked: Vec<Tid>,
    }

    impl FakeBackend {
        fn polling(waiting: Vec<(u32, Tid)>) -> Self {
            FakeBackend {
                waiting,
                fail: false,
                exact_since: None,
                prio: 98,
                still_waiting: None,
                rechecked: Vec::new(),
            }
        }
    }

    impl Backend for FakeBackend {
        fn kind(&self) -> BackendKind {
            BackendKind::SchedDebug
        }

        fn cadence(&self) -> Cadence {
            match self.exact_since {
                None => Cadence::Poll,
                Some(_) => Cadence::Exact,
            }
        }

        fn sample(&mut self, snapshot: &mut Snapshot) -> Result<(), SampleError> {
            if self.fail {
                return Err(SampleError::Io(Errno::NOENT));
            }
            snapshot.reset(true);
            for &(cpu, tid) in &self.waiting {
                snapshot.queue_mut(cpu).unwrap().offer(
                    WaitingTask {
                        tid,
                        comm: Comm::new(b"victim"),
                        switches: 1,
                        prio: self.prio,
                        waiting_since_ns: self.exact_since,
                        run_counts: None,
                    },
                    0,
                );
            }
            Ok(())
        }

        fn last_run(&mut self, _: Tid) -> Option<LastRun> {
            None
        }

        fn still_waiting(&mut self, _cpu: u32, task: &WaitingTask) -> Option<bool> {
            self.rechecked.push(task.tid);
            self.still_waiting
        }
    }

    /// Accepts every change, unless told to refuse; remembers which tids were boosted.
    #[derive(Default)]
    struct RecordingScheduler {
        boosted: Vec<Tid>,
        /// What each task was last given (SCHED_FIFO 1 before that).
        attrs: std::collections::HashMap<Tid, SchedAttr>,
        /// Answer to every `get_attr` (ESRCH: the task is gone).
        get_error: Option<Errno>,
        /// Answer to a SCHED_DEADLINE `set_attr`.
        deadline_error: Option<Errno>,
        /// Answer to a SCHED_FIFO `set_attr`.
        fifo_error: Option<Errno>,
    }

    impl Scheduler for RecordingScheduler {
        fn get_attr(&mut self, tid: Tid) -> Result<SchedAttr, Errno> {
            let attr = self.attrs.get(&tid).copied().unwrap_or(SchedAttr::fifo(1));
            self.get_error.map_or(Ok(attr), Err)
        }

        fn start_time(&mut self, _: Tid) -> Result<u64, Errno> {
            self.get_error.map_or(Ok(0), Err)
        }

        fn set_attr(&mut self, tid: Tid, attr: &SchedAttr) -> Result<(), Errno> {
            let refusal = match attr.sched_policy {
                sched::SCHED_DEADLINE => self.deadline_error,
                sched::SCHED_FIFO => self.fifo_error,
                _ => None,
            };
            if let Some(errno) = refusal {
                return Err(errno);
            }
            if attr.sched_policy == sched::SCHED_DEADLINE && *attr != crate::boost::release_step() {
                self.boosted.push(tid);
            }
            self.attrs.insert(tid, *attr);
            Ok(())
        }

        /// Unused: these boosts' budget is the kernel's (`BudgetEnforcement::Kernel`).
        fn cpu_time_ns(&mut self, _: Tid) -> Option<u64> {
            None
        }

        fn spin_until(&mut self, when_ns: u64) -> u64 {
            when_ns
        }
    }

    fn monitor(backend: FakeBackend, cpus: &str) -> Monitor<FakeBackend, RecordingScheduler> {
        let cpus = CpuSet::parse(cpus, 8).unwrap();
        let settings = MonitorSettings {
            threshold_ns: 3 * S,
            poll_interval_ns: S,
            granularity_ns: 5 * S,
            log_only: false,
            idle_detection: false,
            ignore_threads: IgnoreList::empty(),
            ignore_processes: IgnoreList::empty(),
            dl_server_cpus: CpuSet::empty(),
        };
        let boost = BoostParams {
            policy: BoostPolicy::Deadline,
            runtime_ns: 20_000,
            period_ns: S,
            duration_ns: 3 * S,
            fifo_priority: SCHED_FIFO_BOOST_PRIORITY,
            budget: BudgetEnforcement::Kernel,
        };
        Monitor::new(
            &cpus,
            settings,
            boost,
            backend,
            RecordingScheduler::default(),
        )
        .unwrap()
        .with_clock(|| 0)
    }

    fn quiet() -> Logger {
        Logger::open(LogSinks::default())
    }

    #[test]
    fn boosts_when_the_wait_reaches_the_threshold() {
        let backend = FakeBackend::polling(vec![(1, 42)]);
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        let mut now = 10 * S;
        let mut wakes = Vec::new();
        while now < 14 * S {
            now = m.step(now, &mut log);
            wakes.push(now);
        }
        assert!(
            wakes.contains(&(13 * S)),
            "no wake at the threshold: {wakes:?}"
        );
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
    }

    #[test]
    fn log_only_reports_a_lasting_starvation_every_granularity() {
        let backend = FakeBackend::polling(vec![(1, 42)]);
        let mut m = monitor(backend, "1");
        m.settings.log_only = true;
        let mut log = Recorded::default();
        let mut now = 10 * S;
        while now <= 24 * S {
            now = m.step(now, &mut log).min(now + S);
        }
        let starved: Vec<&str> = log
            .0
            .iter()
            .map(|(_, line)| line.as_str())
            .filter(|line| line.contains(" starved on "))
            .collect();
        // Upstream's -l: again every -g (5 s) with the wait growing, until the task runs.
        assert_eq!(
            starved,
            vec![
                "victim-42 starved on CPU 1 for 3 seconds",
                "victim-42 starved on CPU 1 for 8 seconds",
                "victim-42 starved on CPU 1 for 13 seconds",
            ]
        );
        assert!(m.decider.scheduler.boosted.is_empty());
    }

    #[test]
    fn sample_errors_never_make_the_loop_spin() {
        let backend = FakeBackend::polling(vec![(1, 42)]);
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        m.step(10 * S, &mut log);
        m.backend.fail = true;
        for now in [13 * S, 14 * S, 20 * S] {
            assert!(m.step(now, &mut log) > now);
        }
        assert!(m.decider.scheduler.boosted.is_empty());
        assert_eq!(m.stats().sample_errors, 3);
    }

    #[test]
    fn a_full_boost_table_waits_for_a_free_slot_without_spinning() {
        let waiting: Vec<(u32, Tid)> = (0..40).flat_map(|t| [(1, t), (2, 100 + t)]).collect();
        let mut m = monitor(FakeBackend::polling(waiting), "1-2");
        let mut log = quiet();
        m.step(0, &mut log);
        let next = m.step(3 * S, &mut log);
        assert!(next > 3 * S);
        assert_eq!(
            m.decider.scheduler.boosted.len(),
            crate::boost::MAX_ACTIVE_BOOSTS
        );
        assert_eq!(m.stats().boost_table_full, 80 - 64);
        // The first boosts end at 6 s; the waiting tasks get their slots then.
        let mut now = next;
        while now < 6 * S {
            now = m.step(now, &mut log);
            assert!(now > 3 * S);
        }
        m.step(6 * S, &mut log);
        assert_eq!(m.decider.scheduler.boosted.len(), 80);
    }

    #[test]
    fn an_exact_backend_with_nothing_waiting_samples_once_per_threshold() {
        let backend = FakeBackend {
            exact_since: Some(0),
            ..FakeBackend::polling(Vec::new())
        };
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        assert_eq!(m.step(10 * S, &mut log), 13 * S);
        // A task began waiting at 11 s: the sample at 13 s finds it, due at 14 s.
        m.backend.waiting = vec![(1, 42)];
        m.backend.exact_since = Some(11 * S);
        assert_eq!(m.step(13 * S, &mut log), 14 * S);
        assert_eq!(m.stats().passes, 2);
        assert!(m.decider.scheduler.boosted.is_empty());
        m.step(14 * S, &mut log);
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
    }

    #[test]
    fn an_exact_backend_with_waiters_samples_once_per_threshold() {
        let backend = FakeBackend {
            exact_since: Some(9 * S),
            ..FakeBackend::polling(vec![(1, 42)])
        };
        let mut m = monitor(backend, "1");
        let mut log = quiet();
        // Due at 12 s (waiting since 9 s); the next pass would be 10 + 3 s at the latest.
        assert_eq!(m.step(10 * S, &mut log), 12 * S);
        m.step(12 * S, &mut log);
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
    }

    /// Waiting since 9 s, `-t 3`: sampled at 10 s, due at 12 s, between two samples.
    fn due_between_two_samples(
        still_waiting: Option<bool>,
        tids: Vec<Tid>,
    ) -> Monitor<FakeBackend, RecordingScheduler> {
        let backend = FakeBackend {
            exact_since: Some(9 * S),
            still_waiting,
            ..FakeBackend::polling(tids.into_iter().map(|tid| (1, tid)).collect())
        };
        let mut m = monitor(backend, "1");
        assert_eq!(m.step(10 * S, &mut quiet()), 12 * S);
        m
    }

    #[test]
    fn a_fair_task_the_dl_server_serves_is_never_due_until_it_stops() {
        let backend = FakeBackend {
            prio: 120,
            ..FakeBackend::polling(vec![(1, 42)])
        };
        let mut m = monitor(backend, "1-2");
        m.set_dl_server_cpus(CpuSet::parse("1", 8).unwrap());
        // Seen at 10 s: due at 13 s, but served: the loop only polls.
        assert_eq!(m.step(10 * S, &mut quiet()), 11 * S);
        let mut now = 11 * S;
        while now < 20 * S {
            now = m.step(now, &mut quiet());
        }
        assert!(m.decider.scheduler.boosted.is_empty());
        // An admin switches the DL-server off: the wait it had is due at once.
        m.set_dl_server_cpus(CpuSet::empty());
        assert_eq!(m.tracker.next_due_ns(), Some(13 * S));
        m.step(now, &mut quiet());
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
    }

    #[test]
    fn the_dl_server_does_nothing_for_real_time_tasks() {
        let mut m = monitor(FakeBackend::polling(vec![(1, 42)]), "1");
        m.set_dl_server_cpus(CpuSet::parse("1", 8).unwrap());
        m.step(10 * S, &mut quiet());
        m.step(13 * S, &mut quiet());
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
    }

    #[test]
    fn a_due_task_confirmed_between_two_samples_is_boosted_without_a_sample() {
        let mut m = due_between_two_samples(Some(true), vec![42]);
        assert_eq!(m.step(12 * S, &mut quiet()), 13 * S);
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
        assert_eq!(m.backend.rechecked, vec![42]);
        assert_eq!((m.stats().passes, m.stats().rechecks), (1, 1));
        // The samples keep their cadence: the next one within a threshold of the last.
        m.step(13 * S, &mut quiet());
        assert_eq!((m.stats().passes, m.stats().rechecks), (2, 1));
    }

    #[test]
    fn a_due_task_that_ran_between_two_samples_is_forgotten_until_the_next() {
        let mut m = due_between_two_samples(Some(false), vec![42]);
        // Nothing left due: the loop sleeps until the sample owed at 13 s.
        assert_eq!(m.step(12 * S, &mut quiet()), 13 * S);
        assert!(m.decider.scheduler.boosted.is_empty());
        assert_eq!((m.stats().passes, m.stats().rechecks), (1, 1));
        assert!(m.tracker.next_due_ns().is_none());
    }

    #[test]
    fn a_due_task_the_backend_cannot_confirm_takes_a_sample() {
        let mut m = due_between_two_samples(None, vec![42]);
        m.step(12 * S, &mut quiet());
        assert_eq!(m.decider.scheduler.boosted, vec![42]);
        assert_eq!((m.stats().passes, m.stats().rechecks), (2, 0));
    }

    #[test]
    fn more_due_tasks_than_rechecks_take_a_sample() {
        let many: Vec<Tid> = (1..=Tid::try_from(MOST_RECHECKS).unwrap() + 1).collect();
        let mut m = due_between_two_samples(Some(true), many.clone());
        m.step(12 * S, &mut quiet());
        assert!(m.backend.rechecked.is_empty());
        assert_eq!((m.stats().passes, m.stats().rechecks), (2, 0));
        assert_eq!(m.decider.scheduler.boosted, many);
    }

    /// Keeps every line, verbose ones included.
    #[derive(Default)]
    struct Recorded(Vec<(Level, String)>);

    impl Log for Recorded {
        fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
            self.0.push((level, args.to_string()));
        }

        fn is_verbose(&self) -> bool {
            true
        }
    }

    fn victim(prio: i32) -> WaitingEntry {
        WaitingEntry {
            task: WaitingTask {
                tid: 42,
                comm: Comm::new(b"victim"),
                switches: 1,
                prio,
                waiting_since_ns: None,
                run_counts: None,
            },
            wait_began_ns: 0,
            first_seen_ns: 0,
            handled: false,
            report_again_ns: 0,
        }
    }

    /// The verdict on `entry` waiting on CPU 1 at 3 s, after `setup` shaped the monitor.
    fn decide_with(
        entry: &WaitingEntry,
        setup: impl FnOnce(&mut Monitor<FakeBackend, RecordingScheduler>),
    ) -> Verdict {
        let mut m = monitor(FakeBackend::polling(Vec::new()), "1");
        setup(&mut m);
        m.decider.decide(&m.settings, entry, 3 * S)
    }

    fn lines_of(verdict: Verdict) -> Vec<(Level, String)> {
        let mut log = Recorded::default();
        let task = victim(98).task;
        let cpu = 1;
        report(
            &mut log,
            Event::Starving {
                cpu,
                task: &task,
                waited_s: 3,
                verdict,
            },
        );
        log.0
    }

    fn line(level: Level, text: &str) -> (Level, String) {
        (level, text.to_string())
    }

    const STARVED: &str = "victim-42 starved on CPU 1 for 3 seconds";

    #[test]
    fn decides_every_verdict() {
        let rt = victim(98);
        assert_eq!(
            decide_with(&rt, |m| m.settings.log_only = true),
            Verdict::LogOnly
        );
        assert_eq!(
            decide_with(&rt, |_| {}),
            Verdict::Boosted {
                policy: BoostPolicy::Deadline,
                deadline_refused: None
            }
        );
        assert_eq!(
            decide_with(&rt, |m| m.decider.scheduler.deadline_error =
                Some(Errno::PERM)),
            Verdict::Boosted {
                policy: BoostPolicy::Fifo,
                deadline_refused: Some(Errno::PERM)
            }
        );
        assert_eq!(
            decide_with(&rt, |m| m.decider.scheduler.get_error = Some(Errno::SRCH)),
            Verdict::Failed(BoostError::Gone)
        );
        assert_eq!(
            decide_with(&rt, |m| {
                m.decider.scheduler.deadline_error = Some(Errno::PERM);
                m.decider.scheduler.fifo_error = Some(Errno::PERM);
            }),
            Verdict::Failed(BoostError::Denied(Errno::PERM))
        );
    }

    #[test]
    fn decides_ignored_once_then_quietly() {
        let mut m = monitor(FakeBackend::polling(Vec::new()), "1");
        m.settings.ignore_threads = IgnoreList::parse("^vic").unwrap();
        let entry = victim(98);
        let mut decide = || m.decider.decide(&m.settings, &entry, 3 * S);
        let by = IgnoredBy::Thread;
        assert_eq!(decide(), Verdict::Ignored { by, first: true });
        assert_eq!(decide(), Verdict::Ignored { by, first: false });
    }

    #[test]
    fn decides_already_boosted_and_no_slot() {
        let mut m = monitor(FakeBackend::polling(Vec::new()), "1");
        let mut entry = victim(98);
        let decide = |m: &mut Monitor<_, _>, entry: &WaitingEntry| {
            m.decider.decide(&m.settings, entry, 3 * S)
        };
        assert!(matches!(decide(&mut m, &entry), Verdict::Boosted { .. }));
        assert_eq!(
            decide(&mut m, &entry),
            Verdict::Failed(BoostError::AlreadyBoosted)
        );
        for tid in 1..crate::boost::MAX_ACTIVE_BOOSTS {
            entry.task.tid = 1000 + Tid::try_from(tid).unwrap();
            assert!(matches!(decide(&mut m, &entry), Verdict::Boosted { .. }));
        }
        entry.task.tid = 7;
        assert_eq!(decide(&mut m, &entry), Verdict::NoSlot { first: true });
        assert_eq!(decide(&mut m, &entry), Verdict::NoSlot { first: false });
        assert_eq!(m.stats().boost_table_full, 2);
    }

    #[test]
    fn reports_every_verdict_in_upstream_words() {
        use Level::{Debug, Error, Info, Warning};
        let by = IgnoredBy::Thread;
        assert_eq!(
            lines_of(Verdict::Ignored { by, first: true }),
            vec![line(
                Info,
                "Ignoring the thread victim from consideration for boosting (pid 42, CPU 1: \
                 thread name matches -i)"
            )]
        );
        assert_eq!(lines_of(Verdict::Ignored { by, first: false }), vec![]);
        let by = IgnoredBy::Process(Comm::new(b"app"));
        assert_eq!(
            lines_of(Verdict::Ignored { by, first: true }),
            vec![line(
                Info,
                "Ignoring the thread victim (spawned by app) from consideration for boosting \
                 (pid 42, CPU 1: process name matches -I)"
            )]
        );
        let by = IgnoredBy::ProcessUnknown;
        assert_eq!(
            lines_of(Verdict::Ignored { by, first: true }),
            vec![line(
                Warning,
                "Ignoring the thread victim from consideration for boosting (pid 42, CPU 1: \
                 its process name cannot be read to check -I)"
            )]
        );
        assert_eq!(lines_of(Verdict::LogOnly), vec![line(Info, STARVED)]);
        assert_eq!(
            lines_of(Verdict::Boosted {
                policy: BoostPolicy::Deadline,
                deadline_refused: None
            }),
            vec![
                line(Info, STARVED),
                line(Info, "boosted pid 42 (victim) (cpu 1) using SCHED_DEADLINE"),
            ]
        );
        assert_eq!(
            lines_of(Verdict::Boosted {
                policy: BoostPolicy::Fifo,
                deadline_refused: Some(Errno::BUSY)
            }),
            vec![
                line(Info, STARVED),
                line(
                    Warning,
                    &format!(
                        "SCHED_DEADLINE refused ({}): boosting with SCHED_FIFO",
                        Errno::BUSY
                    )
                ),
                line(Info, "boosted pid 42 (victim) (cpu 1) using SCHED_FIFO"),
            ]
        );
        assert_eq!(
            lines_of(Verdict::NoSlot { first: true }),
            vec![
                line(Info, STARVED),
                line(
                    Warning,
                    "64 tasks already boosted: pid 42 waits for a free slot"
                ),
            ]
        );
        assert_eq!(lines_of(Verdict::NoSlot { first: false }), vec![]);
        assert_eq!(
            lines_of(Verdict::Failed(BoostError::Gone)),
            vec![
                line(Info, STARVED),
                line(Debug, "pid 42 (victim) exited before it could be boosted"),
            ]
        );
        assert_eq!(
            lines_of(Verdict::Failed(BoostError::AlreadyBoosted)),
            vec![line(Info, STARVED)]
        );
        assert_eq!(
            lines_of(Verdict::Failed(BoostError::AlreadyDeadline)),
            vec![
                line(Info, STARVED),
                line(
                    Info,
                    "pid 42 (victim) runs under SCHED_DEADLINE already: not boosted (a boost \
                     would shrink its reservation)"
                ),
            ]
        );
        assert_eq!(
            lines_of(Verdict::Failed(BoostError::Denied(Errno::PERM))),
            vec![
                line(Info, STARVED),
                line(
                    Error,
                    &format!("failed to boost pid 42 (victim): {}", Errno::PERM)
                ),
            ]
        );
    }

    #[test]
    fn reports_pass_sample_and_boost_lines() {
        use Level::{Debug, Error, Info, Warning};
        let task = victim(98).task;
        let comm = task.comm;
        let mut log = Recorded::default();
        let events = [
            Event::Checking {
                cpu: 1,
                rt_nr_running: 2,
                starving: 1,
            },
            Event::MightStarve {
                cpu: 1,
                task: &task,
                waited_s: 2,
            },
            Event::SampleFailed {
                backend: "sched_debug",
                error: &SampleError::Format("no cpu# block in sched_debug"),
            },
            Event::QueueOverflow {
                cpu: 1,
                untracked: 5,
                unlogged: 2,
            },
            Event::QueueOverflowEnded {
                cpu: 1,
                lasted_s: 7,
                peak_untracked: 9,
            },
            Event::Boost(&BoostEvent::Restored { tid: 42, comm }),
            Event::Boost(&BoostEvent::Gone { tid: 42, comm }),
            Event::Boost(&BoostEvent::RestoreFailed {
                tid: 42,
                comm,
                errno: Errno::PERM,
            }),
            Event::Boost(&BoostEvent::Retrying {
                tid: 42,
                comm,
                errno: Errno::AGAIN,
                attempt: 2,
                restore: true,
            }),
            Event::Boost(&BoostEvent::Retrying {
                tid: 42,
                comm,
                errno: Errno::AGAIN,
                attempt: 1,
                restore: false,
            }),
            Event::Boost(&BoostEvent::Replaced { tid: 42, comm }),
            Event::Boost(&BoostEvent::Changed {
                tid: 42,
                comm,
                policy: 2,
            }),
        ];
        for event in events {
            report(&mut log, event);
        }
        assert_eq!(
            log.0,
            vec![
                line(Debug, "checking cpu 1 - rt: 2 - starving: 1"),
                line(
                    Debug,
                    "victim-42 might starve on CPU 1 (waiting for 2 seconds)"
                ),
                line(
                    Error,
                    "sched_debug backend: cannot sample run queues: \
                     Format(\"no cpu# block in sched_debug\"); retrying every pass"
                ),
                line(
                    Warning,
                    "cpu 1: more than 64 waiting tasks, 5 not tracked this pass; \
                     the longest waiting are kept, the others rotate in"
                ),
                line(
                    Warning,
                    "cpu 1: 2 shorter overflows not logged since the last one"
                ),
                line(
                    Info,
                    "cpu 1: every waiting task tracked again after 7 seconds \
                     (at most 9 not tracked in one pass)"
                ),
                line(Debug, "restored pid 42 (victim)"),
                line(Debug, "pid 42 (victim) exited while boosted"),
                line(
                    Error,
                    &format!(
                        "failed to restore the scheduling policy of pid 42 (victim): {}; gave \
                         up after 5 attempts",
                        Errno::PERM
                    )
                ),
                line(
                    Warning,
                    &format!(
                        "failed to restore the scheduling policy of pid 42 (victim): {}; \
                         retrying (attempt 2 of 5)",
                        Errno::AGAIN
                    )
                ),
                line(
                    Warning,
                    &format!(
                        "failed to switch the SCHED_FIFO boost of pid 42 (victim): {}; \
                         retrying (attempt 1 of 5)",
                        Errno::AGAIN
                    )
                ),
                line(
                    Info,
                    "pid 42 (victim) exited while boosted and its tid was reused: the new \
                     task is left alone"
                ),
                line(
                    Info,
                    "pid 42 (victim) was switched to SCHED_RR by someone else during its \
                     boost: left alone"
                ),
            ]
        );
    }

    /// What each pass of `untracked` (one CPU, one pass a second) makes the loop log.
    fn overflow_lines(untracked: &[u32]) -> Vec<String> {
        let mut episode = OverflowEpisode::default();
        let mut log = Recorded::default();
        for (second, &n) in (0u64..).zip(untracked) {
            if let Some(event) = episode.update(1, n, second * S) {
                report(&mut log, event);
            }
        }
        log.0.into_iter().map(|(_, text)| text).collect()
    }

    #[test]
    fn overflows_are_logged_when_they_start_and_end_rate_limited() {
        let start = |n: u32| {
            format!(
                "cpu 1: more than 64 waiting tasks, {n} not tracked this pass; the longest \
                 waiting are kept, the others rotate in"
            )
        };
        let end = |s: u64, peak: u32| {
            format!(
                "cpu 1: every waiting task tracked again after {s} seconds (at most {peak} \
                 not tracked in one pass)"
            )
        };
        assert_eq!(overflow_lines(&[0, 5, 9, 3, 0, 0]), [start(5), end(3, 9)]);
        // Flapping every pass: one start and one end per minute, and the count of the others.
        let mut flapping = vec![0u32];
        for _ in 0..70 {
            flapping.extend([4, 0]);
        }
        let lines = overflow_lines(&flapping);
        let skipped = "cpu 1: 29 shorter overflows not logged since the last one";
        // Starts at 1 s, 3 s, ... 139 s: logged at 1 s, 61 s and 121 s.
        let logged_again = [start(4), skipped.into(), end(1, 4)];
        assert_eq!(lines[..2], [start(4), end(1, 4)]);
        assert_eq!(lines[2..5], logged_again);
        assert_eq!(lines[5..], logged_again);
    }

    #[test]
    fn a_pass_reports_starved_then_boosted() {
        let mut m = monitor(FakeBackend::polling(vec![(1, 42)]), "1");
        let mut log = Recorded::default();
        m.step(0, &mut log);
        m.step(3 * S, &mut log);
        let info: Vec<&str> = log
            .0
            .iter()
            .filter(|(level, _)| *level == Level::Info)
            .map(|(_, text)| text.as_str())
            .collect();
        assert_eq!(
            info,
            [
                STARVED,
                "boosted pid 42 (victim) (cpu 1) using SCHED_DEADLINE"
            ]
        );
    }
}
