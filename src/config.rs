//! The daemon's configuration: defaults, accepted ranges and cross-field rules.
//! A `Config` that passed `validate()` is consistent; the daemon treats it as immutable.

use core::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::BackendKind;
use crate::cpuset::CpuSet;
use crate::ignore::IgnoreList;

/// SCHED_FIFO priority used to boost when DEADLINE is not used (-F), as upstream.
pub const SCHED_FIFO_BOOST_PRIORITY: u32 = 98;

/// Default -t: how long a task waits runnable before it is boosted.
pub const DEFAULT_STARVING_THRESHOLD: Duration = Duration::from_secs(20);
/// Default -d: how long a boost lasts.
pub const DEFAULT_BOOST_DURATION: Duration = Duration::from_secs(3);
/// Default -p: SCHED_DEADLINE period of a boost.
pub const DEFAULT_BOOST_PERIOD_NS: u64 = 1_000_000_000;
/// Default -r: SCHED_DEADLINE runtime of a boost, per period.
pub const DEFAULT_BOOST_RUNTIME_NS: u64 = 20_000;
/// Default -g: longest time between two passes.
pub const DEFAULT_GRANULARITY: Duration = Duration::from_secs(5);

/// The accepted range of an integer option, with what messages need to name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Both spellings of the option, e.g. `-t/--starving_threshold`.
    pub option: &'static str,
    pub min: u64,
    pub max: u64,
    /// Unit of the option's value as written on the command line.
    pub unit: &'static str,
}

impl Limit {
    /// Whether `value` is within `min..=max`.
    pub fn contains(&self, value: u64) -> bool {
        (self.min..=self.max).contains(&value)
    }

    /// Whether `duration` is within `min..=max` read as seconds.
    pub fn contains_duration(&self, duration: Duration) -> bool {
        (Duration::from_secs(self.min)..=Duration::from_secs(self.max)).contains(&duration)
    }
}

/// `1..3600 seconds`.
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{} {}", self.min, self.max, self.unit)
    }
}

pub const STARVING_THRESHOLD_LIMIT_S: Limit = Limit {
    option: "-t/--starving_threshold",
    min: 1,
    max: 3600,
    unit: "seconds",
};
pub const BOOST_DURATION_LIMIT_S: Limit = Limit {
    option: "-d/--boost_duration",
    min: 1,
    max: 60,
    unit: "seconds",
};
pub const BOOST_PERIOD_LIMIT_NS: Limit = Limit {
    option: "-p/--boost_period",
    min: 200_000_000,
    max: 4_000_000_000,
    unit: "nanoseconds (200 ms..4 s)",
};
pub const BOOST_RUNTIME_LIMIT_NS: Limit = Limit {
    option: "-r/--boost_runtime",
    min: 8_000,
    max: 1_000_000,
    unit: "nanoseconds (8 us..1 ms)",
};
pub const GRANULARITY_LIMIT_S: Limit = Limit {
    option: "-g/--granularity",
    min: 1,
    max: 600,
    unit: "seconds",
};
pub const RESERVATION_LIMIT_PERCENT: Limit = Limit {
    option: "-R/--reservation",
    min: 10,
    max: 90,
    unit: "percent",
};

pub const SELF_RUNTIME_LIMIT_NS: Limit = Limit {
    option: "--self_runtime",
    min: 1_000_000,
    max: 1_000_000_000,
    unit: "nanoseconds (1 ms..1 s), at most --self_period",
};
pub const SELF_PERIOD_LIMIT_NS: Limit = Limit {
    option: "--self_period",
    min: 10_000_000,
    max: 4_000_000_000,
    unit: "nanoseconds (10 ms..4 s)",
};

pub const LOG_RING_SIZE_LIMIT_KIB: Limit = Limit {
    option: "--log_ring_size",
    min: 16,
    max: 65_536,
    unit: "KiB (16 KiB..64 MiB)",
};

/// Default --log_ring: the ring file, on unless `--log_ring none`.
pub const DEFAULT_LOG_RING: &str = crate::log::ring::DEFAULT_RING_PATH;
/// Default --log_ring_size: about 2,000 lines of 60 characters.
pub const DEFAULT_LOG_RING_SIZE_KIB: u64 = 256;

/// How run queues are sampled (-b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The first that works, in the backend table's order.
    Auto,
    /// `-b NAME`: only this one.
    Only(BackendKind),
}

/// Upstream's threading modes (-O, -A, -M). Accepted for compatibility: this daemon always runs
/// one monitor thread, which its design makes as precise as upstream's per-CPU threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadingMode {
    /// -O/--power_mode, the default: one thread.
    Power,
    /// -A/--aggressive_mode: upstream runs one thread per CPU.
    Aggressive,
    /// -M/--adaptive_mode: upstream spawns per-CPU threads on demand.
    Adaptive,
}

/// How the daemon itself is scheduled (--self_sched); see `protect.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfSched {
    /// SCHED_DEADLINE with its budget, SCHED_FIFO under RLIMIT_RTTIME where refused.
    Deadline,
    /// SCHED_FIFO under RLIMIT_RTTIME.
    Fifo,
    /// Left as started (SCHED_OTHER): no budget.
    Other,
}

impl SelfSched {
    pub const ALL: [SelfSched; 3] = [SelfSched::Deadline, SelfSched::Fifo, SelfSched::Other];

    /// Its `--self_sched` spelling.
    pub fn name(self) -> &'static str {
        match self {
            SelfSched::Deadline => "deadline",
            SelfSched::Fifo => "fifo",
            SelfSched::Other => "other",
        }
    }
}

/// Everything the daemon needs to know from its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// -c: CPUs to monitor; default all configured CPUs.
    pub monitored_cpus: CpuSet,
    /// -t: how long a task waits runnable before it is boosted.
    pub starving_threshold: Duration,
    /// -d: how long a boost lasts; never longer than `starving_threshold`.
    pub boost_duration: Duration,
    /// -p: SCHED_DEADLINE period of a boost.
    pub boost_period_ns: u64,
    /// -r: SCHED_DEADLINE runtime per period; below `boost_period_ns`.
    pub boost_runtime_ns: u64,
    /// -F: boost with SCHED_FIFO at `SCHED_FIFO_BOOST_PRIORITY` instead of SCHED_DEADLINE.
    pub force_fifo: bool,
    /// -l: detect and log, never boost.
    pub log_only: bool,
    /// -v: log to stderr too (sets `foreground`).
    pub verbose: bool,
    /// -k: log to /dev/kmsg too.
    pub log_kmsg: bool,
    /// -s: log to syslog; on by default.
    pub log_syslog: bool,
    /// -f (or -v): do not daemonize.
    pub foreground: bool,
    /// -P/--pidfile: where to write the daemon's pid.
    pub pidfile: Option<PathBuf>,
    /// --log_ring: the ring file of the last log lines; `None` with `--log_ring none`.
    pub log_ring: Option<PathBuf>,
    /// --log_ring_size: the ring file's size, preallocated and locked in memory.
    pub log_ring_size_kib: u64,
    /// -O/-A/-M, accepted for compatibility.
    pub threading_mode: ThreadingMode,
    /// Skip CPUs that had idle time since the last pass; -N turns it off.
    pub idle_detection: bool,
    /// -g: longest time between two passes.
    pub granularity: Duration,
    /// -R: run the daemon itself under SCHED_DEADLINE with this share of the period.
    pub reservation_percent: Option<u8>,
    /// -a: CPUs the daemon itself runs on.
    pub affinity: Option<CpuSet>,
    /// --self_sched: the daemon's own policy and budget.
    pub self_sched: SelfSched,
    /// --self_runtime: the daemon's SCHED_DEADLINE runtime per `self_period_ns` (unless -R).
    pub self_runtime_ns: u64,
    /// --self_period: the daemon's SCHED_DEADLINE period.
    pub self_period_ns: u64,
    /// -i: thread names never boosted.
    pub ignore_threads: IgnoreList,
    /// -I: process (thread group leader) names whose threads are never boosted.
    pub ignore_processes: IgnoreList,
    /// -b: run queue sampler.
    pub backend: BackendChoice,
    /// -S: RT throttling is systemd's job; refuse to run while it is on.
    pub systemd: bool,
}

/// A value outside its range, shown in the unit it was given in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Integer(u64),
    Duration(Duration),
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Integer(value) => write!(f, "{value}"),
            Self::Duration(duration) => write!(f, "{duration:?}"),
        }
    }
}

/// Why a configuration is refused. Display is one line naming the options to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    OutOfRange {
        limit: Limit,
        value: Amount,
    },
    BoostDurationAboveThreshold {
        boost_duration: Duration,
        starving_threshold: Duration,
    },
    RuntimeNotBelowPeriod {
        boost_runtime_ns: u64,
        boost_period_ns: u64,
    },
    /// Upstream's rule: a boost shorter than one period may end before the task gets to run.
    PeriodAboveBoostDuration {
        boost_period_ns: u64,
        boost_duration: Duration,
    },
    NoMonitoredCpus,
    EmptyAffinity,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { limit, value } => write!(
                f,
                "{} {value} is out of range: must be {limit}",
                limit.option
            ),
            Self::BoostDurationAboveThreshold {
                boost_duration,
                starving_threshold,
            } => write!(
                f,
                "-d/--boost_duration ({boost_duration:?}) must not be longer than \
                 -t/--starving_threshold ({starving_threshold:?})"
            ),
            Self::RuntimeNotBelowPeriod {
                boost_runtime_ns,
                boost_period_ns,
            } => write!(
                f,
                "-r/--boost_runtime ({boost_runtime_ns} ns) must be less than \
                 -p/--boost_period ({boost_period_ns} ns)"
            ),
            Self::PeriodAboveBoostDuration {
                boost_period_ns,
                boost_duration,
            } => write!(
                f,
                "-p/--boost_period ({boost_period_ns} ns) must not be longer than \
                 -d/--boost_duration ({boost_duration:?}): the boosted task might never run"
            ),
            Self::NoMonitoredCpus => f.write_str("no CPU to monitor (-c/--cpu)"),
            Self::EmptyAffinity => f.write_str("empty -a/--affinity CPU list"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Upstream's defaults on a machine with `nr_cpus` configured CPUs.
    pub fn default_for(nr_cpus: u32) -> Config {
        Config {
            monitored_cpus: CpuSet::all(nr_cpus),
            starving_threshold: DEFAULT_STARVING_THRESHOLD,
            boost_duration: DEFAULT_BOOST_DURATION,
            boost_period_ns: DEFAULT_BOOST_PERIOD_NS,
            boost_runtime_ns: DEFAULT_BOOST_RUNTIME_NS,
            force_fifo: false,
            log_only: false,
            verbose: false,
            log_kmsg: false,
            log_syslog: true,
            foreground: false,
            pidfile: None,
            log_ring: Some(PathBuf::from(DEFAULT_LOG_RING)),
            log_ring_size_kib: DEFAULT_LOG_RING_SIZE_KIB,
            threading_mode: ThreadingMode::Power,
            idle_detection: true,
            granularity: DEFAULT_GRANULARITY,
            reservation_percent: None,
            affinity: None,
            self_sched: SelfSched::Deadline,
            self_runtime_ns: crate::protect::DEFAULT_SELF_RUNTIME_NS,
            self_period_ns: crate::protect::DEFAULT_SELF_PERIOD_NS,
            ignore_threads: IgnoreList::empty(),
            ignore_processes: IgnoreList::empty(),
            backend: BackendChoice::Auto,
            systemd: false,
        }
    }

    /// Checks every range and the rules between fields; the first broken rule is returned.
    /// `runtime < period` is checked before the ranges: the kernel refuses such a boost, and the
    /// message is clearer than an out-of-range one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration(STARVING_THRESHOLD_LIMIT_S, self.starving_threshold)?;
        check_duration(BOOST_DURATION_LIMIT_S, self.boost_duration)?;
        if self.boost_duration > self.starving_threshold {
            return Err(ConfigError::BoostDurationAboveThreshold {
                boost_duration: self.boost_duration,
                starving_threshold: self.starving_threshold,
            });
        }
        if self.boost_runtime_ns >= self.boost_period_ns {
            return Err(ConfigError::RuntimeNotBelowPeriod {
                boost_runtime_ns: self.boost_runtime_ns,
                boost_period_ns: self.boost_period_ns,
            });
        }
        check_integer(BOOST_PERIOD_LIMIT_NS, self.boost_period_ns)?;
        check_integer(BOOST_RUNTIME_LIMIT_NS, self.boost_runtime_ns)?;
        if Duration::from_nanos(self.boost_period_ns) > self.boost_duration {
            return Err(ConfigError::PeriodAboveBoostDuration {
                boost_period_ns: self.boost_period_ns,
                boost_duration: self.boost_duration,
            });
        }
        check_duration(GRANULARITY_LIMIT_S, self.granularity)?;
        check_integer(LOG_RING_SIZE_LIMIT_KIB, self.log_ring_size_kib)?;
        if let Some(percent) = self.reservation_percent {
            check_integer(RESERVATION_LIMIT_PERCENT, u64::from(percent))?;
        }
        check_integer(SELF_PERIOD_LIMIT_NS, self.self_period_ns)?;
        check_integer(SELF_RUNTIME_LIMIT_NS, self.self_runtime_ns)?;
        if self.self_runtime_ns > self.self_period_ns {
            return Err(ConfigError::OutOfRange {
                limit: SELF_RUNTIME_LIMIT_NS,
                value: Amount::Integer(self.self_runtime_ns),
            });
        }
        if self.monitored_cpus.is_empty() {
            return Err(ConfigError::NoMonitoredCpus);
        }
        if self.affinity.is_some_and(|cpus| cpus.is_empty()) {
            return Err(ConfigError::EmptyAffinity);
        }
        Ok(())
    }
}

fn check_integer(limit: Limit, value: u64) -> Result<(), ConfigError> {
    if limit.contains(value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            limit,
            value: Amount::Integer(value),
        })
    }
}

fn check_duration(limit: Limit, duration: Duration) -> Result<(), ConfigError> {
    if limit.contains_duration(duration) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            limit,
            value: Amount::Duration(duration),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config::default_for(8)
    }

    fn out_of_range(config: &Config) -> Limit {
        match config.validate() {
            Err(ConfigError::OutOfRange { limit, .. }) => limit,
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_upstream() {
        let config = Config::default_for(8);
        assert_eq!(config.monitored_cpus, CpuSet::all(8));
        assert_eq!(config.starving_threshold, Duration::from_secs(20));
        assert_eq!(config.boost_duration, Duration::from_secs(3));
        assert_eq!(config.boost_period_ns, 1_000_000_000);
        assert_eq!(config.boost_runtime_ns, 20_000);
        assert!(!config.force_fifo && !config.log_only && !config.verbose);
        assert!(!config.log_kmsg && config.log_syslog && !config.foreground);
        assert_eq!(config.pidfile, None);
        assert_eq!(
            config.log_ring,
            Some(PathBuf::from("/run/stalld/stalld.ring"))
        );
        assert_eq!(config.log_ring_size_kib, 256);
        assert_eq!(config.threading_mode, ThreadingMode::Power);
        assert!(config.idle_detection);
        assert_eq!(config.granularity, Duration::from_secs(5));
        assert_eq!(config.reservation_percent, None);
        assert_eq!(config.affinity, None);
        assert!(config.ignore_threads.is_empty() && config.ignore_processes.is_empty());
        assert_eq!(config.backend, BackendChoice::Auto);
        assert!(!config.systemd);
        assert_eq!(SCHED_FIFO_BOOST_PRIORITY, 98);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn starving_threshold_range() {
        let mut config = valid();
        config.boost_duration = Duration::from_secs(1);
        config.boost_period_ns = 200_000_000;
        for secs in [1, 3600] {
            config.starving_threshold = Duration::from_secs(secs);
            assert_eq!(config.validate(), Ok(()), "{secs}");
        }
        for threshold in [
            Duration::ZERO,
            Duration::from_millis(999),
            Duration::from_secs(3601),
        ] {
            config.starving_threshold = threshold;
            assert_eq!(out_of_range(&config), STARVING_THRESHOLD_LIMIT_S);
        }
    }

    #[test]
    fn boost_duration_range() {
        let mut config = valid();
        config.starving_threshold = Duration::from_secs(3600);
        for secs in [1, 60] {
            config.boost_duration = Duration::from_secs(secs);
            assert_eq!(config.validate(), Ok(()), "{secs}");
        }
        for secs in [0, 61] {
            config.boost_duration = Duration::from_secs(secs);
            assert_eq!(out_of_range(&config), BOOST_DURATION_LIMIT_S);
        }
    }

    #[test]
    fn boost_period_range() {
        let mut config = valid();
        config.boost_duration = Duration::from_secs(4);
        for ns in [200_000_000, 4_000_000_000] {
            config.boost_period_ns = ns;
            assert_eq!(config.validate(), Ok(()), "{ns}");
        }
        for ns in [20_001, 199_999_999, 4_000_000_001, u64::MAX] {
            config.boost_period_ns = ns;
            assert_eq!(out_of_range(&config), BOOST_PERIOD_LIMIT_NS);
        }
    }

    #[test]
    fn boost_runtime_range() {
        let mut config = valid();
        for ns in [8_000, 1_000_000] {
            config.boost_runtime_ns = ns;
            assert_eq!(config.validate(), Ok(()), "{ns}");
        }
        for ns in [0, 7_999, 1_000_001] {
            config.boost_runtime_ns = ns;
            assert_eq!(out_of_range(&config), BOOST_RUNTIME_LIMIT_NS);
        }
    }

    #[test]
    fn granularity_range() {
        let mut config = valid();
        for secs in [1, 600] {
            config.granularity = Duration::from_secs(secs);
            assert_eq!(config.validate(), Ok(()), "{secs}");
        }
        for secs in [0, 601] {
            config.granularity = Duration::from_secs(secs);
            assert_eq!(out_of_range(&config), GRANULARITY_LIMIT_S);
        }
    }

    #[test]
    fn reservation_range() {
        let mut config = valid();
        for percent in [10, 90] {
            config.reservation_percent = Some(percent);
            assert_eq!(config.validate(), Ok(()), "{percent}");
        }
        for percent in [0, 9, 91, 255] {
            config.reservation_percent = Some(percent);
            assert_eq!(out_of_range(&config), RESERVATION_LIMIT_PERCENT);
        }
    }

    #[test]
    fn self_budget_ranges() {
        let mut config = valid();
        assert_eq!(config.self_sched, SelfSched::Deadline);
        config.self_period_ns = 9_999_999;
        assert_eq!(out_of_range(&config), SELF_PERIOD_LIMIT_NS);
        config.self_period_ns = 10_000_000;
        config.self_runtime_ns = 10_000_000;
        assert_eq!(config.validate(), Ok(()));
        config.self_runtime_ns = 10_000_001;
        assert_eq!(out_of_range(&config), SELF_RUNTIME_LIMIT_NS);
        config.self_runtime_ns = 999_999;
        assert_eq!(out_of_range(&config), SELF_RUNTIME_LIMIT_NS);
    }

    #[test]
    fn boost_duration_must_not_exceed_threshold() {
        let mut config = valid();
        config.starving_threshold = Duration::from_secs(3);
        config.boost_duration = Duration::from_secs(3);
        assert_eq!(config.validate(), Ok(()));
        config.boost_duration = Duration::from_secs(4);
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::BoostDurationAboveThreshold {
                boost_duration: Duration::from_secs(4),
                starving_threshold: Duration::from_secs(3),
            }
        );
        assert_eq!(
            err.to_string(),
            "-d/--boost_duration (4s) must not be longer than -t/--starving_threshold (3s)"
        );
    }

    #[test]
    fn runtime_must_be_below_period() {
        let mut config = valid();
        config.boost_period_ns = 200_000_000;
        config.boost_runtime_ns = 1_000_000;
        assert_eq!(config.validate(), Ok(()));
        config.boost_period_ns = 1_000_000;
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::RuntimeNotBelowPeriod {
                boost_runtime_ns: 1_000_000,
                boost_period_ns: 1_000_000,
            }
        );
        assert_eq!(
            err.to_string(),
            "-r/--boost_runtime (1000000 ns) must be less than -p/--boost_period (1000000 ns)"
        );
    }

    #[test]
    fn period_must_fit_in_boost_duration() {
        let mut config = valid();
        config.boost_duration = Duration::from_secs(1);
        config.boost_period_ns = 1_000_000_000;
        assert_eq!(config.validate(), Ok(()));
        config.boost_period_ns = 2_000_000_000;
        let err = config.validate().unwrap_err();
        assert!(matches!(err, ConfigError::PeriodAboveBoostDuration { .. }));
        assert!(err
            .to_string()
            .starts_with("-p/--boost_period (2000000000 ns)"));
    }

    #[test]
    fn needs_cpus_to_monitor_and_a_nonempty_affinity() {
        let mut config = valid();
        config.monitored_cpus = CpuSet::empty();
        assert_eq!(config.validate(), Err(ConfigError::NoMonitoredCpus));
        assert_eq!(
            Config::default_for(0).validate(),
            Err(ConfigError::NoMonitoredCpus)
        );
        let mut config = valid();
        config.affinity = Some(CpuSet::empty());
        assert_eq!(config.validate(), Err(ConfigError::EmptyAffinity));
        config.affinity = Some(CpuSet::all(1));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn out_of_range_message_is_one_line() {
        let mut config = valid();
        config.starving_threshold = Duration::from_millis(3_600_500);
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "-t/--starving_threshold 3600.5s is out of range: must be 1..3600 seconds"
        );
        config = valid();
        config.boost_period_ns = 5_000_000_000;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "-p/--boost_period 5000000000 is out of range: must be 200000000..4000000000 \
             nanoseconds (200 ms..4 s)"
        );
    }

    #[test]
    fn limit_display() {
        assert_eq!(STARVING_THRESHOLD_LIMIT_S.to_string(), "1..3600 seconds");
        assert_eq!(RESERVATION_LIMIT_PERCENT.to_string(), "10..90 percent");
    }
}
