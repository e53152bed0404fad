//! Command line -> `Command`: upstream stalld's options in both getopt spellings, via lexopt.
//! Pure: no I/O. The caller prints `usage()` / `version()` and exits `USAGE_EXIT_CODE` on error.

use core::fmt;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use lexopt::{Arg, Parser};

use crate::backend::{BackendKind, BACKENDS};
use crate::config::{
    BackendChoice, Config, ConfigError, Limit, SelfSched, ThreadingMode, BOOST_DURATION_LIMIT_S,
    BOOST_PERIOD_LIMIT_NS, BOOST_RUNTIME_LIMIT_NS, DEFAULT_LOG_RING, GRANULARITY_LIMIT_S,
    LOG_RING_SIZE_LIMIT_KIB, RESERVATION_LIMIT_PERCENT, SELF_PERIOD_LIMIT_NS,
    SELF_RUNTIME_LIMIT_NS, STARVING_THRESHOLD_LIMIT_S,
};
use crate::cpuset::CpuSet;
use crate::ignore::IgnoreList;

/// Exit status for a bad command line: EINVAL, as upstream.
pub const USAGE_EXIT_CODE: i32 = 22;

/// What the command line asks for.
// `Run` is built once at startup; boxing the Config would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon with this validated configuration.
    Run(Config),
    /// -h/--help: print `usage()`, exit 0.
    Help,
    /// -V/--version: print `version()`, exit 0.
    Version,
    /// --dump_ring [PATH]: print the ring file's records, oldest first, and exit.
    DumpRing(PathBuf),
    /// --selftest[=CPU]: probe the kernel, starve a thread on `cpu` under each backend, print
    /// the table, exit 0 when protection works. The stalld children boost and run themselves
    /// as `config` says (the other options are the test's own).
    Selftest { cpu: u32, config: Config },
}

/// Why the command line was refused. Display is one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageError {
    /// An option stalld does not have, as typed (`-x`, `--cpus`).
    UnknownOption(String),
    /// A long-option prefix shared by several options (`--log_`).
    AmbiguousOption {
        given: String,
        candidates: Vec<&'static str>,
    },
    /// An option that needs a value came last.
    MissingValue { option: &'static str },
    /// `--flag=value` for an option without a value.
    UnexpectedValue { option: String, value: String },
    /// A positional argument: stalld takes none.
    UnexpectedArgument(String),
    /// A value the option does not accept.
    InvalidValue {
        option: &'static str,
        value: String,
        reason: String,
    },
    /// Each value is fine but together they are not.
    Inconsistent(ConfigError),
    /// The command line could not be split into options (lexopt's own error).
    Malformed(String),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOption(option) => write!(f, "unknown option {option} (see --help)"),
            Self::AmbiguousOption { given, candidates } => {
                write!(f, "ambiguous option --{given} (could be ")?;
                for (index, candidate) in candidates.iter().enumerate() {
                    let separator = if index == 0 { "" } else { ", " };
                    write!(f, "{separator}--{candidate}")?;
                }
                f.write_str(")")
            }
            Self::MissingValue { option } => write!(f, "{option} needs a value"),
            Self::UnexpectedValue { option, value } => {
                write!(f, "{option} takes no value (got {value:?})")
            }
            Self::UnexpectedArgument(argument) => write!(
                f,
                "unexpected argument {argument:?}: stalld takes only options (see --help)"
            ),
            Self::InvalidValue {
                option,
                value,
                reason,
            } => write!(f, "invalid {option} {value:?}: {reason}"),
            Self::Inconsistent(error) => write!(f, "{error}"),
            Self::Malformed(message) => write!(f, "bad command line: {message}"),
        }
    }
}

impl std::error::Error for UsageError {}

impl From<lexopt::Error> for UsageError {
    fn from(error: lexopt::Error) -> UsageError {
        match error {
            lexopt::Error::UnexpectedValue { option, value } => UsageError::UnexpectedValue {
                option,
                value: value.to_string_lossy().into_owned(),
            },
            other => UsageError::Malformed(other.to_string()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Cpu,
    StarvingThreshold,
    BoostDuration,
    BoostPeriod,
    BoostRuntime,
    ForceFifo,
    LogOnly,
    Verbose,
    LogKmsg,
    LogSyslog,
    Foreground,
    Pidfile,
    AggressiveMode,
    PowerMode,
    AdaptiveMode,
    NoIdleDetect,
    Granularity,
    Reservation,
    Affinity,
    IgnoreThreads,
    IgnoreProcesses,
    Backend,
    Systemd,
    LogRing,
    LogRingSize,
    DumpRing,
    Selftest,
    SelfSched,
    SelfRuntime,
    SelfPeriod,
    Version,
    Help,
}

struct OptionSpec {
    /// [`NO_SHORT`] for the options upstream does not have.
    short: char,
    long: &'static str,
    /// `-c/--cpu`, as messages name the option.
    names: &'static str,
    opt: Opt,
}

const fn spec(short: char, long: &'static str, names: &'static str, opt: Opt) -> OptionSpec {
    OptionSpec {
        short,
        long,
        names,
        opt,
    }
}

/// The short letter of long-only options: argv cannot hold it.
const NO_SHORT: char = '\0';

/// Upstream's options, same letters and long names, then ours (long only).
const OPTIONS: [OptionSpec; 32] = [
    spec('c', "cpu", "-c/--cpu", Opt::Cpu),
    spec(
        't',
        "starving_threshold",
        "-t/--starving_threshold",
        Opt::StarvingThreshold,
    ),
    spec(
        'd',
        "boost_duration",
        "-d/--boost_duration",
        Opt::BoostDuration,
    ),
    spec('p', "boost_period", "-p/--boost_period", Opt::BoostPeriod),
    spec(
        'r',
        "boost_runtime",
        "-r/--boost_runtime",
        Opt::BoostRuntime,
    ),
    spec('F', "force_fifo", "-F/--force_fifo", Opt::ForceFifo),
    spec('l', "log_only", "-l/--log_only", Opt::LogOnly),
    spec('v', "verbose", "-v/--verbose", Opt::Verbose),
    spec('k', "log_kmsg", "-k/--log_kmsg", Opt::LogKmsg),
    spec('s', "log_syslog", "-s/--log_syslog", Opt::LogSyslog),
    spec('f', "foreground", "-f/--foreground", Opt::Foreground),
    spec('P', "pidfile", "-P/--pidfile", Opt::Pidfile),
    spec(
        'A',
        "aggressive_mode",
        "-A/--aggressive_mode",
        Opt::AggressiveMode,
    ),
    spec('O', "power_mode", "-O/--power_mode", Opt::PowerMode),
    spec(
        'M',
        "adaptive_mode",
        "-M/--adaptive_mode",
        Opt::AdaptiveMode,
    ),
    spec(
        'N',
        "no_idle_detect",
        "-N/--no_idle_detect",
        Opt::NoIdleDetect,
    ),
    spec('g', "granularity", "-g/--granularity", Opt::Granularity),
    spec('R', "reservation", "-R/--reservation", Opt::Reservation),
    spec('a', "affinity", "-a/--affinity", Opt::Affinity),
    spec(
        'i',
        "ignore_threads",
        "-i/--ignore_threads",
        Opt::IgnoreThreads,
    ),
    spec(
        'I',
        "ignore_processes",
        "-I/--ignore_processes",
        Opt::IgnoreProcesses,
    ),
    spec('b', "backend", "-b/--backend", Opt::Backend),
    spec('S', "systemd", "-S/--systemd", Opt::Systemd),
    spec('V', "version", "-V/--version", Opt::Version),
    spec('h', "help", "-h/--help", Opt::Help),
    spec(NO_SHORT, "log_ring", "--log_ring", Opt::LogRing),
    spec(
        NO_SHORT,
        "log_ring_size",
        "--log_ring_size",
        Opt::LogRingSize,
    ),
    spec(NO_SHORT, "dump_ring", "--dump_ring", Opt::DumpRing),
    spec(NO_SHORT, "selftest", "--selftest", Opt::Selftest),
    spec(NO_SHORT, "self_sched", "--self_sched", Opt::SelfSched),
    spec(NO_SHORT, "self_runtime", "--self_runtime", Opt::SelfRuntime),
    spec(NO_SHORT, "self_period", "--self_period", Opt::SelfPeriod),
];

/// The usage text up to the `-b` entry, which comes from the backend table.
const USAGE_HEAD: &str = "\
usage: stalld [-h] [-V] [-l] [-v] [-k] [-s] [-f] [-F] [-S] [-N] [-A | -O | -M]
              [-c cpu-list] [-t s] [-d s] [-p ns] [-r ns] [-g s] [-R percent]
              [-a cpu-list] [-i re,re] [-I re,re] [-b backend] [-P path]
       stalld throttlectl off|on|show

Finds tasks starving on a CPU's run queue and boosts them with SCHED_DEADLINE.

  -c/--cpu LIST               CPUs to monitor, e.g. 0,2-4 (default: all CPUs)
  -t/--starving_threshold S   seconds a task waits runnable before it is
                              boosted, 1..3600 (default: 20)
  -d/--boost_duration S       seconds a boost lasts, 1..60, at most the
                              threshold (default: 3)
  -p/--boost_period NS        SCHED_DEADLINE period, 200000000..4000000000
                              (default: 1000000000)
  -r/--boost_runtime NS       SCHED_DEADLINE runtime, 8000..1000000, below the
                              period (default: 20000)
  -F/--force_fifo             boost with SCHED_FIFO priority 98 instead of
                              SCHED_DEADLINE (default: off)
  -l/--log_only               detect and log, never boost (default: off)
  -v/--verbose                log to stderr too; implies -f (default: off)
  -k/--log_kmsg               log to /dev/kmsg too (default: off)
  -s/--log_syslog             log to syslog (default: on)
  -f/--foreground             do not daemonize (default: off)
  -P/--pidfile PATH           write the daemon's pid to PATH (default: none)
  -A/--aggressive_mode        accepted for compatibility (default: -O)
  -O/--power_mode             one monitor thread (default)
  -M/--adaptive_mode          accepted for compatibility (default: -O)
  -N/--no_idle_detect         sample the run queues on every pass (default:
                              skip a pass when every monitored CPU had idle
                              time since the last one)
  -g/--granularity S          longest time between two checks, 1..600
                              (default: 5)
  -R/--reservation PERCENT    stalld's own SCHED_DEADLINE runtime is PERCENT
                              of --self_period, 10..90; failing is an error
                              (default: --self_runtime)
  -a/--affinity LIST          pin stalld itself to these CPUs (default: the
                              online CPUs neither monitored nor isolated,
                              else the non-isolated ones)
  -i/--ignore_threads RE,RE   regexes of thread names never boosted
                              (default: none)
  -I/--ignore_processes RE,RE regexes of process names whose threads are
                              never boosted (default: none)
";

/// The usage text after the `-b` entry.
const USAGE_TAIL: &str =
    "  -S/--systemd                RT throttling is handled by the unit: refuse to
                              run while it is on (default: off)
  -V/--version                print the version and exit
  -h/--help                   print this help and exit
  --log_ring PATH             ring file of the last log lines, kept after a
                              crash; none: no ring file
                              (default: /run/stalld/stalld.ring)
  --log_ring_size KIB         size of the ring file, locked in memory,
                              16..65536 (default: 256)
  --dump_ring [PATH]          print the ring file's lines, oldest first, and
                              exit (default: the --log_ring file)
  --selftest[=CPU]            probe the kernel, starve a task of its own on
                              CPU under each backend, print a table; exit 0
                              when stalld protects CPU (default: the first -c
                              CPU other than 0); -r, -p, -F, -R, -a and
                              --self_* apply to its stalld children
  --self_sched POLICY         how stalld itself runs: deadline (its budget
                              under SCHED_DEADLINE, else SCHED_FIFO 10 under
                              a 500 ms RLIMIT_RTTIME), fifo, or other (no
                              budget) (default: deadline)
  --self_runtime NS           stalld's SCHED_DEADLINE runtime per period,
                              1000000..1000000000 (default: 20000000)
  --self_period NS            stalld's SCHED_DEADLINE period,
                              10000000..4000000000 (default: 100000000)

One stalld runs at a time (lock: /run/stalld/stalld.lock); one started in the
initramfs (@stalld) hands over to the next one started. Each boost is
recorded in /run/stalld/stalld.journal, so that the next start restores
what a killed stalld left boosted. throttlectl off saves sched_rt_runtime_us
in /run/stalld/rt_runtime_us and turns RT throttling off; on puts it back.
";

/// Column where option descriptions start in the usage text.
const USAGE_TEXT_COLUMN: usize = 30;
/// Widest usage line.
const USAGE_WIDTH: usize = 80;

/// The help text: every option, its long form, its range and its default.
pub fn usage() -> String {
    let names = backend_list(|kind| format!("{} ({})", kind.name(), kind.letter()));
    let text = format!("{names} (default: the first of these that works, in this order)");
    let mut out = String::from(USAGE_HEAD);
    let mut line = format!(
        "  {:<width$}",
        "-b/--backend NAME",
        width = USAGE_TEXT_COLUMN - 2
    );
    let mut line_empty = true;
    for word in text.split(' ') {
        if !line_empty && line.len() + 1 + word.len() > USAGE_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(USAGE_TEXT_COLUMN);
            line_empty = true;
        }
        if !line_empty {
            line.push(' ');
        }
        line.push_str(word);
        line_empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out.push_str(USAGE_TAIL);
    out
}

/// Every backend as `spell(kind)`, in the table's order: `a, b or c`.
fn backend_list(spell: impl Fn(BackendKind) -> String) -> String {
    let mut list = String::new();
    for (i, &kind) in BACKENDS.iter().enumerate() {
        if i > 0 {
            list.push_str(if i + 1 == BACKENDS.len() {
                " or "
            } else {
                ", "
            });
        }
        list.push_str(&spell(kind));
    }
    list
}

/// The version, as Cargo.toml has it.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Parses the arguments after argv[0] on a machine with `nr_cpus` configured CPUs. Options may
/// repeat (the last wins), short flags combine (`-fv`), values attach (`-c2-19`, `--cpu=2-19`)
/// or follow (`-c 2-19`), and a long option may be shortened to a unique prefix, as with getopt.
pub fn parse<I: IntoIterator<Item = OsString>>(
    args: I,
    nr_cpus: u32,
) -> Result<Command, UsageError> {
    let mut parser = Parser::from_args(args);
    let mut config = Config::default_for(nr_cpus);
    let mut selftest = None;
    while let Some(arg) = parser.next()? {
        let spec = match arg {
            Arg::Short(short) => find_short(short)?,
            Arg::Long(long) => find_long(long)?,
            Arg::Value(value) => {
                return Err(UsageError::UnexpectedArgument(lossy(&value)));
            }
        };
        if spec.opt == Opt::Selftest {
            selftest = Some(selftest_cpu(spec, &mut parser, nr_cpus)?);
        } else if let Some(command) = apply(spec, &mut parser, &mut config, nr_cpus)? {
            return Ok(command);
        }
    }
    config.validate().map_err(UsageError::Inconsistent)?;
    match selftest {
        Some(given) => {
            let cpu = given.unwrap_or_else(|| default_selftest_cpu(&config.monitored_cpus));
            Ok(Command::Selftest { cpu, config })
        }
        None => Ok(Command::Run(config)),
    }
}

/// `--selftest[=CPU]`'s CPU when given: exactly one.
fn selftest_cpu(
    spec: &'static OptionSpec,
    parser: &mut Parser,
    nr_cpus: u32,
) -> Result<Option<u32>, UsageError> {
    let Some(given) = parser.optional_value() else {
        return Ok(None);
    };
    let cpus = cpu_list(spec, &given, nr_cpus)?;
    let mut each = cpus.iter();
    match (each.next(), each.next()) {
        (Some(cpu), None) => Ok(Some(cpu)),
        _ => Err(invalid(spec, &given, "give one CPU".to_owned())),
    }
}

/// The first monitored CPU; CPU 0 usually carries the housekeeping, so it is passed over
/// when others are watched.
fn default_selftest_cpu(monitored: &CpuSet) -> u32 {
    let mut watched = monitored.iter();
    let first = watched.next().unwrap_or(0);
    if first == 0 {
        watched.next().unwrap_or(0)
    } else {
        first
    }
}

fn find_short(short: char) -> Result<&'static OptionSpec, UsageError> {
    OPTIONS
        .iter()
        .find(|spec| spec.short == short)
        .ok_or_else(|| UsageError::UnknownOption(format!("-{short}")))
}

/// Exact long name, else the one option it is a prefix of (getopt_long's rule).
fn find_long(long: &str) -> Result<&'static OptionSpec, UsageError> {
    if let Some(spec) = OPTIONS.iter().find(|spec| spec.long == long) {
        return Ok(spec);
    }
    let candidates: Vec<&'static OptionSpec> = OPTIONS
        .iter()
        .filter(|spec| !long.is_empty() && spec.long.starts_with(long))
        .collect();
    match candidates.as_slice() {
        [spec] => Ok(spec),
        [] => Err(UsageError::UnknownOption(format!("--{long}"))),
        several => Err(UsageError::AmbiguousOption {
            given: long.to_owned(),
            candidates: several.iter().map(|spec| spec.long).collect(),
        }),
    }
}

/// Applies one option to `config`; -h and -V end parsing with their own command.
fn apply(
    spec: &'static OptionSpec,
    parser: &mut Parser,
    config: &mut Config,
    nr_cpus: u32,
) -> Result<Option<Command>, UsageError> {
    match spec.opt {
        Opt::Cpu => config.monitored_cpus = cpu_list(spec, &value(spec, parser)?, nr_cpus)?,
        Opt::StarvingThreshold => {
            config.starving_threshold = seconds(spec, parser, STARVING_THRESHOLD_LIMIT_S)?;
        }
        Opt::BoostDuration => {
            config.boost_duration = seconds(spec, parser, BOOST_DURATION_LIMIT_S)?;
        }
        Opt::BoostPeriod => {
            config.boost_period_ns = number(spec, &value(spec, parser)?, BOOST_PERIOD_LIMIT_NS)?;
        }
        Opt::BoostRuntime => {
            config.boost_runtime_ns = number(spec, &value(spec, parser)?, BOOST_RUNTIME_LIMIT_NS)?;
        }
        Opt::ForceFifo => config.force_fifo = true,
        Opt::LogOnly => config.log_only = true,
        Opt::Verbose => {
            config.verbose = true;
            config.foreground = true;
        }
        Opt::LogKmsg => config.log_kmsg = true,
        Opt::LogSyslog => config.log_syslog = true,
        Opt::Foreground => config.foreground = true,
        Opt::Pidfile => {
            let path = value(spec, parser)?;
            if path.is_empty() {
                return Err(invalid(spec, &path, "the path is empty".to_owned()));
            }
            config.pidfile = Some(PathBuf::from(path));
        }
        Opt::AggressiveMode => config.threading_mode = ThreadingMode::Aggressive,
        Opt::PowerMode => config.threading_mode = ThreadingMode::Power,
        Opt::AdaptiveMode => config.threading_mode = ThreadingMode::Adaptive,
        Opt::NoIdleDetect => config.idle_detection = false,
        Opt::Granularity => config.granularity = seconds(spec, parser, GRANULARITY_LIMIT_S)?,
        Opt::Reservation => {
            let percent = number(spec, &value(spec, parser)?, RESERVATION_LIMIT_PERCENT)?;
            // The limit is at most 90, so the conversion holds; u8::MAX would fail validate().
            config.reservation_percent = Some(u8::try_from(percent).unwrap_or(u8::MAX));
        }
        Opt::Affinity => config.affinity = Some(cpu_list(spec, &value(spec, parser)?, nr_cpus)?),
        Opt::IgnoreThreads => config.ignore_threads = ignore_list(spec, &value(spec, parser)?)?,
        Opt::IgnoreProcesses => {
            config.ignore_processes = ignore_list(spec, &value(spec, parser)?)?;
        }
        Opt::Backend => config.backend = backend(spec, &value(spec, parser)?)?,
        Opt::Systemd => config.systemd = true,
        Opt::LogRing => {
            let path = value(spec, parser)?;
            if path.is_empty() {
                return Err(invalid(spec, &path, "the path is empty".to_owned()));
            }
            config.log_ring = (path != "none").then(|| PathBuf::from(path));
        }
        Opt::LogRingSize => {
            config.log_ring_size_kib =
                number(spec, &value(spec, parser)?, LOG_RING_SIZE_LIMIT_KIB)?;
        }
        Opt::DumpRing => {
            let given = parser.optional_value().or_else(|| {
                let mut raw = parser.try_raw_args()?;
                raw.next_if(|arg| !arg.to_string_lossy().starts_with('-'))
            });
            let path = given
                .map(PathBuf::from)
                .or_else(|| config.log_ring.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_RING));
            return Ok(Some(Command::DumpRing(path)));
        }
        // Taken by `parse`, which runs the self-test once every option is read.
        Opt::Selftest => {}
        Opt::SelfSched => {
            let name = value(spec, parser)?;
            config.self_sched = SelfSched::ALL
                .into_iter()
                .find(|policy| name.to_str() == Some(policy.name()))
                .ok_or_else(|| {
                    invalid(spec, &name, "must be deadline, fifo or other".to_owned())
                })?;
        }
        Opt::SelfRuntime => {
            config.self_runtime_ns = number(spec, &value(spec, parser)?, SELF_RUNTIME_LIMIT_NS)?;
        }
        Opt::SelfPeriod => {
            config.self_period_ns = number(spec, &value(spec, parser)?, SELF_PERIOD_LIMIT_NS)?;
        }
        Opt::Version => return Ok(Some(Command::Version)),
        Opt::Help => return Ok(Some(Command::Help)),
    }
    Ok(None)
}

fn value(spec: &'static OptionSpec, parser: &mut Parser) -> Result<OsString, UsageError> {
    parser
        .value()
        .map_err(|_| UsageError::MissingValue { option: spec.names })
}

fn invalid(spec: &OptionSpec, value: &OsStr, reason: String) -> UsageError {
    UsageError::InvalidValue {
        option: spec.names,
        value: lossy(value),
        reason,
    }
}

fn lossy(value: &OsStr) -> String {
    value.to_string_lossy().into_owned()
}

fn text<'v>(spec: &OptionSpec, value: &'v OsStr) -> Result<&'v str, UsageError> {
    value
        .to_str()
        .ok_or_else(|| invalid(spec, value, "not valid UTF-8".to_owned()))
}

/// A plain decimal integer within `limit`: no sign, unit, exponent or spaces.
fn number(spec: &OptionSpec, value: &OsStr, limit: Limit) -> Result<u64, UsageError> {
    let digits = value
        .to_str()
        .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()));
    match digits.map(str::parse::<u64>) {
        Some(Ok(number)) if limit.contains(number) => Ok(number),
        Some(_) => Err(invalid(spec, value, format!("must be {limit}"))),
        None => Err(invalid(
            spec,
            value,
            format!("not a plain decimal integer; must be {limit}"),
        )),
    }
}

fn seconds(
    spec: &'static OptionSpec,
    parser: &mut Parser,
    limit: Limit,
) -> Result<Duration, UsageError> {
    let value = value(spec, parser)?;
    number(spec, &value, limit).map(Duration::from_secs)
}

fn cpu_list(spec: &OptionSpec, value: &OsStr, nr_cpus: u32) -> Result<CpuSet, UsageError> {
    CpuSet::parse(text(spec, value)?, nr_cpus)
        .map_err(|error| invalid(spec, value, error.to_string()))
}

fn ignore_list(spec: &OptionSpec, value: &OsStr) -> Result<IgnoreList, UsageError> {
    IgnoreList::parse(text(spec, value)?).map_err(|error| invalid(spec, value, error.to_string()))
}

fn backend(spec: &OptionSpec, value: &OsStr) -> Result<BackendChoice, UsageError> {
    match value.to_str().and_then(BackendKind::from_name) {
        Some(kind) => Ok(BackendChoice::Only(kind)),
        None => Err(invalid(
            spec,
            value,
            format!(
                "must be {}",
                backend_list(|kind| format!("{} (or {})", kind.name(), kind.letter()))
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DEFAULT_BOOST_DURATION, DEFAULT_BOOST_PERIOD_NS, DEFAULT_BOOST_RUNTIME_NS,
        DEFAULT_GRANULARITY, DEFAULT_STARVING_THRESHOLD,
    };
    use std::os::unix::ffi::OsStringExt;

    const NR_CPUS: u32 = 20;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn parsed(list: &[&str]) -> Result<Command, UsageError> {
        parse(args(list), NR_CPUS)
    }

    fn run(list: &[&str]) -> Config {
        match parsed(list) {
            Ok(Command::Run(config)) => config,
            other => panic!("{list:?}: expected Run, got {other:?}"),
        }
    }

    fn error(list: &[&str]) -> String {
        match parsed(list) {
            Err(error) => {
                let message = error.to_string();
                assert!(!message.contains('\n'), "{list:?}: {message}");
                message
            }
            Ok(command) => panic!("{list:?}: expected an error, got {command:?}"),
        }
    }

    /// Every spelling getopt accepts for an option with a value.
    fn spellings(short: char, long: &str, value: &str) -> Vec<Vec<String>> {
        vec![
            vec![format!("-{short}"), value.to_owned()],
            vec![format!("-{short}{value}")],
            vec![format!("--{long}={value}")],
            vec![format!("--{long}"), value.to_owned()],
        ]
    }

    fn run_all_spellings(short: char, long: &str, value: &str, check: impl Fn(&Config)) {
        for spelling in spellings(short, long, value) {
            let list: Vec<&str> = spelling.iter().map(String::as_str).collect();
            check(&run(&list));
        }
    }

    #[test]
    fn no_arguments_gives_defaults() {
        assert_eq!(run(&[]), Config::default_for(NR_CPUS));
    }

    #[test]
    fn cpu_option() {
        run_all_spellings('c', "cpu", "2-19", |config| {
            assert_eq!(
                config.monitored_cpus,
                CpuSet::parse("2-19", NR_CPUS).unwrap()
            );
        });
        assert_eq!(run(&["-c", "0,2-4"]).monitored_cpus.to_string(), "0,2-4");
    }

    #[test]
    fn cpu_option_bad_values() {
        assert_eq!(
            error(&["-c", "20"]),
            "invalid -c/--cpu \"20\": CPU 20 does not exist (this machine has 20 CPUs: 0-19)"
        );
        assert_eq!(error(&["-c", ""]), "invalid -c/--cpu \"\": empty CPU list");
        assert!(error(&["--cpu", "3-1"]).contains("reversed CPU range 3-1"));
        assert!(error(&["--cpu=a"]).starts_with("invalid -c/--cpu \"a\": "));
        assert!(error(&["-c", "0,,1"]).starts_with("invalid -c/--cpu"));
    }

    #[test]
    fn starving_threshold_option() {
        run_all_spellings('t', "starving_threshold", "30", |config| {
            assert_eq!(config.starving_threshold, Duration::from_secs(30));
        });
        assert_eq!(
            run(&["-t", "3600"]).starving_threshold,
            Duration::from_secs(3600)
        );
        assert_eq!(
            run(&["-t", "3", "-d", "3"]).starving_threshold,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn boost_duration_option() {
        run_all_spellings('d', "boost_duration", "5", |config| {
            assert_eq!(config.boost_duration, Duration::from_secs(5));
        });
        assert_eq!(run(&["-d", "1"]).boost_duration, Duration::from_secs(1));
        assert_eq!(
            run(&["-d", "60", "-t", "60"]).boost_duration,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn boost_period_option() {
        run_all_spellings('p', "boost_period", "500000000", |config| {
            assert_eq!(config.boost_period_ns, 500_000_000);
        });
        assert_eq!(run(&["-p", "200000000"]).boost_period_ns, 200_000_000);
        assert_eq!(
            run(&["-p", "4000000000", "-d", "4"]).boost_period_ns,
            4_000_000_000
        );
    }

    #[test]
    fn boost_runtime_option() {
        run_all_spellings('r', "boost_runtime", "100000", |config| {
            assert_eq!(config.boost_runtime_ns, 100_000);
        });
        assert_eq!(run(&["-r", "8000"]).boost_runtime_ns, 8_000);
        assert_eq!(run(&["-r", "1000000"]).boost_runtime_ns, 1_000_000);
    }

    #[test]
    fn granularity_option() {
        run_all_spellings('g', "granularity", "10", |config| {
            assert_eq!(config.granularity, Duration::from_secs(10));
        });
        assert_eq!(run(&["-g", "1"]).granularity, Duration::from_secs(1));
        assert_eq!(run(&["-g", "600"]).granularity, Duration::from_secs(600));
    }

    #[test]
    fn reservation_option() {
        run_all_spellings('R', "reservation", "50", |config| {
            assert_eq!(config.reservation_percent, Some(50));
        });
        assert_eq!(run(&["-R", "10"]).reservation_percent, Some(10));
        assert_eq!(run(&["-R", "90"]).reservation_percent, Some(90));
    }

    #[test]
    fn threshold_message_matches_upstream_wording() {
        assert_eq!(
            error(&["-t", "0"]),
            "invalid -t/--starving_threshold \"0\": must be 1..3600 seconds"
        );
        assert_eq!(
            error(&["-t", "3s"]),
            "invalid -t/--starving_threshold \"3s\": not a plain decimal integer; \
             must be 1..3600 seconds"
        );
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let cases: [(&str, &str, &str); 12] = [
            ("-t", "0", "must be 1..3600 seconds"),
            ("-t", "3601", "must be 1..3600 seconds"),
            ("-d", "0", "must be 1..60 seconds"),
            ("-d", "61", "must be 1..60 seconds"),
            (
                "-p",
                "199999999",
                "must be 200000000..4000000000 nanoseconds",
            ),
            (
                "-p",
                "4000000001",
                "must be 200000000..4000000000 nanoseconds",
            ),
            ("-r", "7999", "must be 8000..1000000 nanoseconds"),
            ("-r", "1000001", "must be 8000..1000000 nanoseconds"),
            ("-g", "0", "must be 1..600 seconds"),
            ("-g", "601", "must be 1..600 seconds"),
            ("-R", "9", "must be 10..90 percent"),
            ("-R", "91", "must be 10..90 percent"),
        ];
        for (option, value, reason) in cases {
            let message = error(&[option, value]);
            assert!(
                message.starts_with(&format!("invalid {option}/--")),
                "{message}"
            );
            assert!(
                message.contains(&format!("\"{value}\": {reason}")),
                "{message}"
            );
        }
    }

    #[test]
    fn numbers_must_be_plain_decimal_integers() {
        for option in ["-t", "-d", "-p", "-r", "-g", "-R"] {
            for value in [
                "3s", "-1", "+3", "1e3", "0x10", "3.0", "", " 3", "3 ", "٣", "twenty",
            ] {
                let message = error(&[option, value]);
                assert!(message.contains("not a plain decimal integer"), "{message}");
            }
            let message = error(&[option, "99999999999999999999999"]);
            assert!(message.contains(": must be "), "{message}");
        }
    }

    #[test]
    fn non_utf8_values_are_refused() {
        for option in ["-t", "-c", "-a", "-i", "-I", "-b"] {
            let list = vec![OsString::from(option), OsString::from_vec(vec![b'1', 0xff])];
            let message = parse(list, NR_CPUS).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("invalid {option}/--")),
                "{message}"
            );
        }
    }

    #[test]
    fn flags_short_and_long_change_only_their_field() {
        type Set = fn(&mut Config);
        let flags: [(&str, &str, Set); 11] = [
            ("-F", "--force_fifo", |c| c.force_fifo = true),
            ("-l", "--log_only", |c| c.log_only = true),
            ("-v", "--verbose", |c| {
                c.verbose = true;
                c.foreground = true;
            }),
            ("-k", "--log_kmsg", |c| c.log_kmsg = true),
            ("-s", "--log_syslog", |c| c.log_syslog = true),
            ("-f", "--foreground", |c| c.foreground = true),
            ("-A", "--aggressive_mode", |c| {
                c.threading_mode = ThreadingMode::Aggressive;
            }),
            ("-O", "--power_mode", |c| {
                c.threading_mode = ThreadingMode::Power
            }),
            ("-M", "--adaptive_mode", |c| {
                c.threading_mode = ThreadingMode::Adaptive;
            }),
            ("-N", "--no_idle_detect", |c| c.idle_detection = false),
            ("-S", "--systemd", |c| c.systemd = true),
        ];
        for (short, long, set) in flags {
            let mut expected = Config::default_for(NR_CPUS);
            set(&mut expected);
            assert_eq!(run(&[short]), expected, "{short}");
            assert_eq!(run(&[long]), expected, "{long}");
        }
    }

    #[test]
    fn flags_take_no_value() {
        assert_eq!(
            error(&["--verbose=1"]),
            "--verbose takes no value (got \"1\")"
        );
        assert!(error(&["--systemd=yes"]).starts_with("--systemd takes no value"));
    }

    #[test]
    fn combined_short_flags() {
        let config = run(&["-fv"]);
        assert!(config.foreground && config.verbose);
        let config = run(&["-lkFN"]);
        assert!(config.log_only && config.log_kmsg && config.force_fifo && !config.idle_detection);
        let config = run(&["-fc", "2-3"]);
        assert!(config.foreground);
        assert_eq!(config.monitored_cpus.to_string(), "2-3");
        let config = run(&["-Sfc2-3"]);
        assert!(config.systemd && config.foreground);
        assert_eq!(config.monitored_cpus.to_string(), "2-3");
    }

    #[test]
    fn threading_mode_last_one_wins() {
        assert_eq!(run(&["-A", "-M"]).threading_mode, ThreadingMode::Adaptive);
        assert_eq!(run(&["-M", "-O"]).threading_mode, ThreadingMode::Power);
        assert_eq!(run(&["-O", "-A"]).threading_mode, ThreadingMode::Aggressive);
    }

    #[test]
    fn repeated_options_last_one_wins() {
        assert_eq!(
            run(&["-t", "30", "-t", "40"]).starving_threshold,
            Duration::from_secs(40)
        );
        assert_eq!(run(&["-c", "1", "-c", "2"]).monitored_cpus.to_string(), "2");
    }

    #[test]
    fn pidfile_option() {
        let expected = Some(PathBuf::from("/run/stalld.pid"));
        run_all_spellings('P', "pidfile", "/run/stalld.pid", |config| {
            assert_eq!(config.pidfile, expected);
        });
        let list = vec![
            OsString::from("-P"),
            OsString::from_vec(b"/run/\xff.pid".to_vec()),
        ];
        match parse(list, NR_CPUS) {
            Ok(Command::Run(config)) => {
                assert_eq!(
                    config.pidfile,
                    Some(PathBuf::from(OsString::from_vec(b"/run/\xff.pid".to_vec())))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error(&["--pidfile="]),
            "invalid -P/--pidfile \"\": the path is empty"
        );
        assert_eq!(error(&["-P"]), "-P/--pidfile needs a value");
    }

    #[test]
    fn self_protection_options() {
        assert_eq!(run(&[]).self_sched, SelfSched::Deadline);
        assert_eq!(run(&["--self_sched", "fifo"]).self_sched, SelfSched::Fifo);
        assert_eq!(run(&["--self_sched=other"]).self_sched, SelfSched::Other);
        assert_eq!(
            run(&["--self_sched", "deadline"]).self_sched,
            SelfSched::Deadline
        );
        assert!(error(&["--self_sched", "rr"]).contains("must be deadline, fifo or other"));
        let config = run(&["--self_runtime", "5000000", "--self_period", "50000000"]);
        assert_eq!(
            (config.self_runtime_ns, config.self_period_ns),
            (5_000_000, 50_000_000)
        );
        assert!(error(&["--self_runtime", "999999"]).starts_with("invalid --self_runtime"));
        assert!(error(&["--self_period", "9999999"]).starts_with("invalid --self_period"));
        assert!(
            error(&["--self_runtime", "20000000", "--self_period", "10000000"])
                .contains("--self_runtime")
        );
    }

    #[test]
    fn affinity_option() {
        run_all_spellings('a', "affinity", "0-1", |config| {
            assert_eq!(
                config.affinity,
                Some(CpuSet::parse("0-1", NR_CPUS).unwrap())
            );
        });
        assert!(error(&["-a", "25"]).starts_with("invalid -a/--affinity \"25\": CPU 25"));
        assert!(error(&["-a", ""]).contains("empty CPU list"));
        assert!(error(&["-a", "x"]).starts_with("invalid -a/--affinity"));
    }

    #[test]
    fn ignore_options() {
        run_all_spellings('i', "ignore_threads", "kworker.*,ksoftirqd", |config| {
            assert_eq!(
                config.ignore_threads,
                IgnoreList::parse("kworker.*,ksoftirqd").unwrap()
            );
            assert!(config.ignore_threads.matches(b"ksoftirqd/3"));
            assert!(config.ignore_processes.is_empty());
        });
        run_all_spellings('I', "ignore_processes", "^qemu", |config| {
            assert!(config.ignore_processes.matches(b"qemu-system-x86"));
            assert!(config.ignore_threads.is_empty());
        });
        assert!(run(&["-i", ""]).ignore_threads.is_empty());
        assert!(error(&["-i", "ok,bad("])
            .starts_with("invalid -i/--ignore_threads \"ok,bad(\": bad regex \"bad(\""));
        assert!(error(&["-I", "[z-a]"])
            .starts_with("invalid -I/--ignore_processes \"[z-a]\": bad regex"));
    }

    #[test]
    fn backend_option() {
        for (value, expected) in [
            ("sched_debug", BackendChoice::Only(BackendKind::SchedDebug)),
            ("S", BackendChoice::Only(BackendKind::SchedDebug)),
            ("queue_track", BackendChoice::Only(BackendKind::QueueTrack)),
            ("Q", BackendChoice::Only(BackendKind::QueueTrack)),
            ("procfs", BackendChoice::Only(BackendKind::Procfs)),
            ("P", BackendChoice::Only(BackendKind::Procfs)),
        ] {
            run_all_spellings('b', "backend", value, |config| {
                assert_eq!(config.backend, expected);
            });
        }
        for bad in ["bpf", "s", "q", "p", "proc", "", "auto", "sched_debug "] {
            assert!(
                error(&["-b", bad])
                    .ends_with("must be queue_track (or Q), sched_debug (or S) or procfs (or P)"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn help_and_version() {
        for help in ["-h", "--help", "--he"] {
            assert_eq!(parsed(&[help]), Ok(Command::Help));
        }
        for version in ["-V", "--version", "--vers"] {
            assert_eq!(parsed(&[version]), Ok(Command::Version));
        }
        assert_eq!(parsed(&["-f", "-h", "--bogus"]), Ok(Command::Help));
        assert_eq!(
            parsed(&["-t", "0", "-h"]).map(|_| ()),
            Err(parsed(&["-t", "0"]).unwrap_err())
        );
        assert_eq!(parsed(&["-d", "30", "-V"]), Ok(Command::Version));
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn unknown_options_and_arguments() {
        assert_eq!(error(&["-x"]), "unknown option -x (see --help)");
        assert_eq!(error(&["--cpus=1"]), "unknown option --cpus (see --help)");
        assert_eq!(error(&["--bogus"]), "unknown option --bogus (see --help)");
        assert_eq!(error(&["-fx"]), "unknown option -x (see --help)");
        assert_eq!(error(&["-T", "5"]), "unknown option -T (see --help)");
        assert_eq!(
            error(&["stalld"]),
            "unexpected argument \"stalld\": stalld takes only options (see --help)"
        );
        assert!(error(&["--", "-f"]).starts_with("unexpected argument \"-f\""));
        assert!(error(&["-"]).starts_with("unexpected argument \"-\""));
        assert!(error(&["-f", "20"]).starts_with("unexpected argument \"20\""));
    }

    #[test]
    fn missing_values() {
        for (option, names) in [
            ("-c", "-c/--cpu"),
            ("-t", "-t/--starving_threshold"),
            ("-d", "-d/--boost_duration"),
            ("-p", "-p/--boost_period"),
            ("-r", "-r/--boost_runtime"),
            ("-P", "-P/--pidfile"),
            ("-g", "-g/--granularity"),
            ("-R", "-R/--reservation"),
            ("-a", "-a/--affinity"),
            ("-i", "-i/--ignore_threads"),
            ("-I", "-I/--ignore_processes"),
            ("-b", "-b/--backend"),
            ("--cpu", "-c/--cpu"),
            ("--starving_threshold", "-t/--starving_threshold"),
        ] {
            assert_eq!(error(&["-f", option]), format!("{names} needs a value"));
        }
    }

    #[test]
    fn a_value_may_look_like_an_option() {
        assert!(error(&["-c", "-f"]).starts_with("invalid -c/--cpu \"-f\""));
        assert!(error(&["-t", "--verbose"]).contains("not a plain decimal integer"));
    }

    #[test]
    fn long_options_may_be_abbreviated_when_unique() {
        assert_eq!(
            run(&["--starv", "30"]).starving_threshold,
            Duration::from_secs(30)
        );
        assert_eq!(run(&["--boost_d=2"]).boost_duration, Duration::from_secs(2));
        assert!(run(&["--fore"]).foreground);
        assert_eq!(
            error(&["--log_"]),
            "ambiguous option --log_ (could be --log_only, --log_kmsg, --log_syslog, --log_ring, \
             --log_ring_size)"
        );
        assert!(error(&["--boost", "3"]).starts_with("ambiguous option --boost"));
        assert!(error(&["--ignore", "x"]).starts_with("ambiguous option --ignore"));
        assert_eq!(error(&["--="]), "unknown option -- (see --help)");
    }

    #[test]
    fn boost_duration_cannot_exceed_threshold() {
        assert_eq!(
            error(&["-d", "30"]),
            "-d/--boost_duration (30s) must not be longer than -t/--starving_threshold (20s)"
        );
        assert!(error(&["-t", "2"]).starts_with("-d/--boost_duration (3s)"));
        assert_eq!(
            run(&["-t", "3", "-d", "3"]).boost_duration,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn boost_period_must_fit_in_boost_duration() {
        assert!(error(&["-d", "1", "-p", "2000000000"])
            .starts_with("-p/--boost_period (2000000000 ns) must not be longer than"));
        assert_eq!(
            run(&["-d", "2", "-p", "2000000000"]).boost_period_ns,
            2_000_000_000
        );
    }

    #[test]
    fn common_combination() {
        let config = run(&["-c", "2-19", "-t", "20", "-d", "3"]);
        let mut expected = Config::default_for(NR_CPUS);
        expected.monitored_cpus = CpuSet::parse("2-19", NR_CPUS).unwrap();
        assert_eq!(config, expected);
    }

    #[test]
    fn systemd_unit_command_line() {
        let config = run(&[
            "--systemd",
            "-c",
            "1-3",
            "-p",
            "1000000000",
            "-r",
            "20000",
            "-d",
            "3",
            "-t",
            "20",
            "--foreground",
            "--pidfile",
            "/run/stalld.pid",
        ]);
        let mut expected = Config::default_for(NR_CPUS);
        expected.systemd = true;
        expected.monitored_cpus = CpuSet::parse("1-3", NR_CPUS).unwrap();
        expected.foreground = true;
        expected.pidfile = Some(PathBuf::from("/run/stalld.pid"));
        assert_eq!(config, expected);
    }

    #[test]
    fn every_option_in_one_command_line() {
        let config = run(&[
            "-c0-3",
            "-t",
            "60",
            "-d",
            "10",
            "-p",
            "500000000",
            "-r",
            "50000",
            "-F",
            "-l",
            "-v",
            "-k",
            "-s",
            "-f",
            "-P",
            "/tmp/p",
            "-M",
            "-N",
            "-g",
            "2",
            "-R",
            "20",
            "-a",
            "4",
            "-i",
            "kworker",
            "-I",
            "^bash$",
            "-b",
            "Q",
            "-S",
        ]);
        assert_eq!(config.monitored_cpus.to_string(), "0-3");
        assert_eq!(config.starving_threshold, Duration::from_secs(60));
        assert_eq!(config.boost_duration, Duration::from_secs(10));
        assert_eq!(config.boost_period_ns, 500_000_000);
        assert_eq!(config.boost_runtime_ns, 50_000);
        assert!(config.force_fifo && config.log_only && config.verbose && config.log_kmsg);
        assert!(config.log_syslog && config.foreground && config.systemd);
        assert_eq!(config.pidfile, Some(PathBuf::from("/tmp/p")));
        assert_eq!(config.threading_mode, ThreadingMode::Adaptive);
        assert!(!config.idle_detection);
        assert_eq!(config.granularity, Duration::from_secs(2));
        assert_eq!(config.reservation_percent, Some(20));
        assert_eq!(
            config.affinity.map(|cpus| cpus.to_string()),
            Some("4".to_owned())
        );
        assert!(config.ignore_threads.matches(b"kworker/0:1"));
        assert!(config.ignore_processes.matches(b"bash"));
        assert_eq!(config.backend, BackendChoice::Only(BackendKind::QueueTrack));
    }

    #[test]
    fn ring_options() {
        let default = Some(PathBuf::from(DEFAULT_LOG_RING));
        assert_eq!(run(&[]).log_ring, default);
        assert_eq!(run(&["--log_ring", "none"]).log_ring, None);
        assert_eq!(
            run(&["--log_ring=/var/r"]).log_ring,
            Some(PathBuf::from("/var/r"))
        );
        assert_eq!(run(&["--log_ring_size", "1024"]).log_ring_size_kib, 1024);
        assert!(error(&["--log_ring_size", "8"]).contains("16..65536"));
        assert!(error(&["--log_ring="]).contains("the path is empty"));
        let dump = |list: &[&str]| parsed(list).unwrap();
        let path = |p: &str| Command::DumpRing(PathBuf::from(p));
        assert_eq!(dump(&["--dump_ring"]), path(DEFAULT_LOG_RING));
        assert_eq!(dump(&["--dump_ring", "/x"]), path("/x"));
        assert_eq!(dump(&["--dump_ring=/y"]), path("/y"));
        assert_eq!(dump(&["--dump_ring", "-v"]), path(DEFAULT_LOG_RING));
        assert_eq!(dump(&["--log_ring", "/z", "--dump_ring"]), path("/z"));
    }

    #[test]
    fn selftest_cpu() {
        let cpu = |list: &[&str]| match parsed(list).unwrap() {
            Command::Selftest { cpu, .. } => cpu,
            other => panic!("{list:?} gave {other:?}"),
        };
        // Without -c every CPU is watched and CPU 0 passed over.
        assert_eq!(cpu(&["--selftest"]), 1);
        assert_eq!(cpu(&["--selftest=5"]), 5);
        assert_eq!(cpu(&["-c", "2-19", "--selftest"]), 2);
        // Options count wherever they stand.
        assert_eq!(cpu(&["--selftest", "-c", "2-19"]), 2);
        assert_eq!(cpu(&["-c", "0", "--selftest"]), 0);
        assert!(error(&["--selftest=1-2"]).contains("give one CPU"));
        assert!(error(&["--selftest=x"]).contains("--selftest"));
        assert!(error(&["--selftest=20"]).contains("--selftest"));
    }

    #[test]
    fn selftest_keeps_the_boost_and_self_options() {
        let Ok(Command::Selftest { config, .. }) = parsed(&[
            "--selftest=3",
            "-r",
            "1000000",
            "--self_runtime",
            "50000000",
        ]) else {
            panic!("not a self-test");
        };
        assert_eq!(config.boost_runtime_ns, 1_000_000);
        assert_eq!(config.self_runtime_ns, 50_000_000);
        // Checked as for a daemon.
        assert!(error(&["--selftest", "-r", "2000000000"]).contains("-r/--boost_runtime"));
    }

    #[test]
    fn option_table_is_consistent() {
        for spec in &OPTIONS {
            let names = if spec.short == NO_SHORT {
                format!("--{}", spec.long)
            } else {
                format!("-{}/--{}", spec.short, spec.long)
            };
            assert_eq!(spec.names, names);
            if spec.short == NO_SHORT {
                continue;
            }
            assert_eq!(OPTIONS.iter().filter(|s| s.short == spec.short).count(), 1);
            assert_eq!(OPTIONS.iter().filter(|s| s.long == spec.long).count(), 1);
        }
        for (limit, opt) in [
            (STARVING_THRESHOLD_LIMIT_S, Opt::StarvingThreshold),
            (BOOST_DURATION_LIMIT_S, Opt::BoostDuration),
            (BOOST_PERIOD_LIMIT_NS, Opt::BoostPeriod),
            (BOOST_RUNTIME_LIMIT_NS, Opt::BoostRuntime),
            (GRANULARITY_LIMIT_S, Opt::Granularity),
            (RESERVATION_LIMIT_PERCENT, Opt::Reservation),
            (LOG_RING_SIZE_LIMIT_KIB, Opt::LogRingSize),
            (SELF_RUNTIME_LIMIT_NS, Opt::SelfRuntime),
            (SELF_PERIOD_LIMIT_NS, Opt::SelfPeriod),
        ] {
            let spec = OPTIONS.iter().find(|spec| spec.opt == opt).unwrap();
            assert_eq!(limit.option, spec.names);
        }
    }

    #[test]
    fn usage_lists_every_option_with_its_default() {
        let text = usage();
        let line_of = |names: &str| {
            text.lines()
                .position(|line| line.trim_start().starts_with(names))
                .unwrap_or_else(|| panic!("{names} missing from usage"))
        };
        for spec in &OPTIONS {
            line_of(spec.names);
        }
        let lines: Vec<&str> = text.lines().collect();
        let default_of = |names: &str| {
            let first = line_of(names);
            let entry = lines[first..]
                .iter()
                .take_while(|line| lines[first] == **line || line.starts_with("     "))
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            entry
        };
        let secs = |duration: Duration| format!("(default: {})", duration.as_secs());
        assert!(default_of("-t/").contains(&secs(DEFAULT_STARVING_THRESHOLD)));
        assert!(default_of("-d/").contains(&secs(DEFAULT_BOOST_DURATION)));
        assert!(default_of("-g/").contains(&secs(DEFAULT_GRANULARITY)));
        assert!(default_of("-p/").contains(&format!("(default: {DEFAULT_BOOST_PERIOD_NS})")));
        assert!(default_of("-r/").contains(&format!("(default: {DEFAULT_BOOST_RUNTIME_NS})")));
        assert!(default_of("-F/").contains(&crate::config::SCHED_FIFO_BOOST_PRIORITY.to_string()));
        for (names, limit) in [
            ("-t/", STARVING_THRESHOLD_LIMIT_S),
            ("-d/", BOOST_DURATION_LIMIT_S),
            ("-p/", BOOST_PERIOD_LIMIT_NS),
            ("-r/", BOOST_RUNTIME_LIMIT_NS),
            ("-g/", GRANULARITY_LIMIT_S),
            ("-R/", RESERVATION_LIMIT_PERCENT),
            ("--log_ring_size", LOG_RING_SIZE_LIMIT_KIB),
        ] {
            assert!(
                default_of(names).contains(&format!("{}..{}", limit.min, limit.max)),
                "{names}"
            );
        }
        for spec in &OPTIONS {
            if !matches!(spec.opt, Opt::Help | Opt::Version) {
                assert!(default_of(spec.names).contains("default"), "{}", spec.names);
            }
        }
        assert!(text.lines().all(|line| line.chars().count() <= 80));
    }

    #[test]
    fn every_backend_of_the_table_is_offered_and_parsed() {
        let text = usage();
        for &kind in BACKENDS {
            assert!(text.contains(&format!("{} ({})", kind.name(), kind.letter())));
            for spelling in [kind.name().to_string(), kind.letter().to_string()] {
                assert_eq!(run(&["-b", &spelling]).backend, BackendChoice::Only(kind));
            }
        }
    }

    #[test]
    fn usage_exit_code_is_einval() {
        assert_eq!(USAGE_EXIT_CODE, libc::EINVAL);
    }

    #[test]
    fn never_panics_on_pairs_of_odd_arguments() {
        let tokens = [
            "",
            "-",
            "--",
            "---",
            "-c",
            "--cpu",
            "--cpu=",
            "-t",
            "-t0",
            "--starving_threshold=",
            "-d",
            "-p",
            "-r",
            "-R",
            "-g",
            "-a",
            "-i",
            "-I",
            "-b",
            "-P",
            "-h",
            "-V",
            "-fv",
            "-vvvvvvvvvv",
            "-=",
            "--=",
            "-c=",
            "--c",
            "--log_",
            "1",
            "-1",
            "99999999999999999999",
            "0-1023",
            "1024",
            "4294967295-0",
            "(",
            ",",
            ",,",
            "é",
            "-é",
            "--é",
            "\n",
            "-\n",
        ];
        for first in tokens {
            for second in tokens {
                let _ = parsed(&[first, second]);
                let _ = parsed(&[first, second, first]);
            }
        }
        for nr_cpus in [0, 1, u32::MAX] {
            let _ = parse(args(&["-c", "0-3", "-a", "1023"]), nr_cpus);
            let _ = parse(args(&[]), nr_cpus);
        }
    }
}
