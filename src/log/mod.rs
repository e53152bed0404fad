//! Log lines fanned out to stderr, `/dev/kmsg`, the ring file and syslog.
//! Invariant: after [`Logger::open`], logging never allocates, never blocks and never panics:
//! a line is formatted once into a fixed buffer (overlong lines end in `...`), each sink
//! writes it with at most a few nonblocking calls (the ring with none: a memory copy), and a
//! sink that fails drops the line.

pub mod kmsg;
pub mod ring;
pub mod stderr;
pub mod syslog;

use core::fmt::{self, Write};
use std::path::Path;

use kmsg::Kmsg;
use ring::{Ring, Stamp};
use stderr::Stderr;
use syslog::Syslog;

/// Longest message, in bytes, before sink prefixes.
pub const MAX_LINE: usize = 512;

/// Ends a message that did not fit in [`MAX_LINE`].
pub const TRUNCATION_MARKER: &str = "...";

/// A formatted message.
pub type Line = heapless::String<MAX_LINE>;

/// Longest sink prefix (`<31>stalld: `) plus a newline.
const PREFIX_ROOM: usize = 16;

/// A message with a sink prefix.
type Record = heapless::String<{ MAX_LINE + PREFIX_ROOM }>;

/// Importance of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    /// Emitted only with [`LogSinks::verbose`].
    Debug,
}

impl Level {
    /// The syslog severity, which is also the kernel log level: 3, 4, 6 or 7.
    pub fn severity(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }
}

/// Which sinks to open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSinks {
    pub stderr: bool,
    pub kmsg: bool,
    pub syslog: bool,
    /// Emit [`Level::Debug`] lines too.
    pub verbose: bool,
}

/// The open sinks.
#[derive(Debug)]
pub struct Logger {
    stderr: Option<Stderr>,
    verbose: bool,
    kmsg: Option<Kmsg>,
    ring: Option<Ring>,
    syslog: Option<Syslog>,
}

impl Logger {
    /// Opens the wanted sinks at their system paths. Startup only (may allocate).
    pub fn open(sinks: LogSinks) -> Logger {
        Logger::open_with_paths(
            sinks,
            Path::new(kmsg::KMSG_PATH),
            Path::new(syslog::SYSLOG_PATH),
        )
    }

    /// Opens the wanted sinks at the given paths. A kmsg device that cannot be opened is
    /// reported once on stderr; syslog is best effort and silent (see [`Syslog::open`]).
    pub fn open_with_paths(sinks: LogSinks, kmsg_path: &Path, syslog_path: &Path) -> Logger {
        let kmsg = if sinks.kmsg {
            match Kmsg::open(kmsg_path) {
                Ok(kmsg) => Some(kmsg),
                Err(e) => {
                    let mut line = Line::new();
                    let _ = write!(
                        line,
                        "cannot open {}: {e}; not logging to the kernel log",
                        kmsg_path.display()
                    );
                    write_stderr(&line);
                    None
                }
            }
        } else {
            None
        };
        let syslog = if sinks.syslog {
            Syslog::open(syslog_path)
        } else {
            None
        };
        Logger {
            stderr: sinks.stderr.then(Stderr::open),
            verbose: sinks.verbose,
            kmsg,
            ring: None,
            syslog,
        }
    }

    /// Adds the ring file as a sink. Startup only.
    pub fn set_ring(&mut self, ring: Ring) {
        self.ring = Some(ring);
    }

    /// Stops writing to the ring file and gives it back (to be closed).
    pub fn take_ring(&mut self) -> Option<Ring> {
        self.ring.take()
    }

    /// Writes the kernel log counts that came due (a repetition whose window ended, lines
    /// over the rate limit): the loop calls it on each wake-up, which may be long after the
    /// last line.
    pub fn tick(&mut self) {
        if let Some(kmsg) = &mut self.kmsg {
            kmsg.tick(Stamp::now().monotonic_ns);
        }
    }
}

impl Drop for Logger {
    /// Writes the pending kernel log counts.
    fn drop(&mut self) {
        if let Some(kmsg) = &mut self.kmsg {
            kmsg.finish();
        }
    }
}

/// Where log lines go: the [`Logger`] in the daemon, a recorder in tests.
pub trait Log {
    /// Writes one line at `level`.
    fn log(&mut self, level: Level, args: fmt::Arguments<'_>);

    /// Whether `Debug` lines are emitted: callers skip building verbose-only output otherwise.
    fn is_verbose(&self) -> bool;

    fn error(&mut self, args: fmt::Arguments<'_>) {
        self.log(Level::Error, args);
    }

    fn warn(&mut self, args: fmt::Arguments<'_>) {
        self.log(Level::Warning, args);
    }

    fn info(&mut self, args: fmt::Arguments<'_>) {
        self.log(Level::Info, args);
    }

    fn debug(&mut self, args: fmt::Arguments<'_>) {
        self.log(Level::Debug, args);
    }
}

impl Log for Logger {
    /// Formats `args` once and writes it to every open sink.
    fn log(&mut self, level: Level, args: fmt::Arguments<'_>) {
        if level == Level::Debug && !self.verbose {
            return;
        }
        let line = format_line(args);
        let stamp = Stamp::now();
        if let Some(ring) = &mut self.ring {
            ring.append(level, &line, stamp);
        }
        if let Some(stderr) = &mut self.stderr {
            stderr.write(&line);
        }
        if let Some(kmsg) = &mut self.kmsg {
            kmsg.write(level, &line, stamp.monotonic_ns);
        }
        if let Some(syslog) = &self.syslog {
            syslog.send(level, &line);
        }
    }

    fn is_verbose(&self) -> bool {
        self.verbose
    }
}

/// Formats `args` into a fixed buffer; a message longer than [`MAX_LINE`] bytes is cut at a
/// character boundary and ends in [`TRUNCATION_MARKER`].
pub fn format_line(args: fmt::Arguments<'_>) -> Line {
    let mut out = Truncating {
        line: Line::new(),
        truncated: false,
    };
    let _ = out.write_fmt(args);
    let mut line = out.line;
    if out.truncated {
        while line.len() > MAX_LINE - TRUNCATION_MARKER.len() {
            line.pop();
        }
        let _ = line.push_str(TRUNCATION_MARKER);
    }
    line
}

/// Fills a [`Line`] as far as it goes, then remembers that text was lost.
struct Truncating {
    line: Line,
    truncated: bool,
}

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.line.push_str(s).is_ok() {
            return Ok(());
        }
        for c in s.chars() {
            if self.line.push(c).is_err() {
                break;
            }
        }
        self.truncated = true;
        Err(fmt::Error)
    }
}

/// `<prefix><line><suffix>` in a fixed buffer; [`PREFIX_ROOM`] always fits the sinks'
/// prefixes, so nothing of `line` is lost.
fn record(prefix: fmt::Arguments<'_>, line: &str, suffix: &str) -> Record {
    let mut record = Record::new();
    let _ = record.write_fmt(prefix);
    let _ = record.push_str(line);
    let _ = record.push_str(suffix);
    record
}

/// Writes `stalld: `, `line` and a newline to stderr in one `write`, as upstream prefixes
/// every stderr line (lines of concurrent writers do not interleave); errors drop the line.
/// Startup only: the running daemon writes through [`Stderr`].
fn write_stderr(line: &str) {
    let record = record(format_args!("stalld: "), line, "\n");
    let _ = rustix::io::write(rustix::stdio::stderr(), record.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stalld-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn syslog_only(verbose: bool) -> LogSinks {
        LogSinks {
            syslog: true,
            verbose,
            ..LogSinks::default()
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 2048];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn formats_arguments() {
        let line = format_line(format_args!(
            "boosted pid {} ({}) (cpu {})",
            42, "kworker", 1
        ));
        assert_eq!(line.as_str(), "boosted pid 42 (kworker) (cpu 1)");
    }

    #[test]
    fn exact_fit_is_not_truncated() {
        let text = "x".repeat(MAX_LINE);
        assert_eq!(format_line(format_args!("{text}")).as_str(), text);
    }

    #[test]
    fn overlong_lines_end_in_marker() {
        let text = "x".repeat(MAX_LINE + 100);
        let line = format_line(format_args!("{text}"));
        assert_eq!(line.len(), MAX_LINE);
        assert!(line.ends_with(TRUNCATION_MARKER));
        // Pieces after the overflow are dropped too.
        let line = format_line(format_args!("{text}{}", 7));
        assert!(line.ends_with(TRUNCATION_MARKER));
    }

    #[test]
    fn truncation_respects_multibyte_characters() {
        let text = "é".repeat(MAX_LINE);
        let line = format_line(format_args!("{text}"));
        assert!(line.len() <= MAX_LINE);
        assert!(line.ends_with(TRUNCATION_MARKER));
        assert!(line
            .trim_end_matches(TRUNCATION_MARKER)
            .chars()
            .all(|c| c == 'é'));
    }

    #[test]
    fn levels_map_to_severities() {
        let severities =
            [Level::Error, Level::Warning, Level::Info, Level::Debug].map(Level::severity);
        assert_eq!(severities, [3, 4, 6, 7]);
    }

    #[test]
    fn syslog_gets_prefixed_line() {
        let dir = temp_dir("syslog");
        let path = dir.join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut logger =
            Logger::open_with_paths(syslog_only(false), Path::new("/nonexistent"), &path);
        logger.info(format_args!("hello"));
        assert_eq!(receive(&server), "<30>stalld: hello");
        logger.error(format_args!("bad {}", 1));
        assert_eq!(receive(&server), "<27>stalld: bad 1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_only_when_verbose() {
        let dir = temp_dir("verbose");
        let path = dir.join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let nowhere = Path::new("/nonexistent");
        Logger::open_with_paths(syslog_only(false), nowhere, &path).debug(format_args!("quiet"));
        assert!(server.recv(&mut [0u8; 64]).is_err());
        Logger::open_with_paths(syslog_only(true), nowhere, &path).debug(format_args!("loud"));
        assert_eq!(receive(&server), "<31>stalld: loud");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kmsg_gets_level_prefix_and_newline() {
        let dir = temp_dir("kmsg");
        let path = dir.join("kmsg");
        std::fs::write(&path, "").unwrap();
        let sinks = LogSinks {
            kmsg: true,
            ..LogSinks::default()
        };
        let mut logger = Logger::open_with_paths(sinks, &path, Path::new("/nonexistent"));
        logger.info(format_args!("hello"));
        logger.warn(format_args!("careful"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "<6>stalld: hello\n<4>stalld: careful\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_sinks_are_skipped() {
        let dir = temp_dir("missing");
        let sinks = LogSinks {
            kmsg: true,
            syslog: true,
            verbose: true,
            ..LogSinks::default()
        };
        let mut logger = Logger::open_with_paths(sinks, &dir.join("no-kmsg"), &dir.join("no-log"));
        let start = Instant::now();
        for i in 0..1000 {
            logger.debug(format_args!("into the void {i}"));
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_syslog_socket_never_blocks() {
        let dir = temp_dir("full");
        let path = dir.join("log");
        let _server = UnixDatagram::bind(&path).unwrap();
        let mut logger =
            Logger::open_with_paths(syslog_only(false), Path::new("/nonexistent"), &path);
        let start = Instant::now();
        // The receive queue holds far fewer datagrams than this.
        for i in 0..20_000 {
            logger.info(format_args!("nobody reads line {i}"));
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn syslog_comes_back_after_a_restart() {
        let dir = temp_dir("restart");
        let path = dir.join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut logger =
            Logger::open_with_paths(syslog_only(false), Path::new("/nonexistent"), &path);
        drop(server);
        std::fs::remove_file(&path).unwrap();
        logger.info(format_args!("lost"));
        let server = UnixDatagram::bind(&path).unwrap();
        logger.info(format_args!("back"));
        assert_eq!(receive(&server), "<30>stalld: back");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn syslog_started_after_the_daemon_is_used() {
        let dir = temp_dir("late");
        let path = dir.join("log");
        let mut logger =
            Logger::open_with_paths(syslog_only(false), Path::new("/nonexistent"), &path);
        logger.info(format_args!("early"));
        let server = UnixDatagram::bind(&path).unwrap();
        logger.info(format_args!("late"));
        assert_eq!(receive(&server), "<30>stalld: late");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
