//! The kernel log sink: one `write` of `<level>stalld: message\n` per line to `/dev/kmsg`.
//! Invariant: the device is open nonblocking, and what reaches it stays within the kernel's
//! `printk_devkmsg=ratelimit` budget (a burst of 10 lines per 5 s per open file; the kernel
//! drops the rest silently, whatever they say). [`KmsgLimiter`] keeps to it: identical lines
//! within [`WINDOW_NS`] are counted and written once more as `<line> (repeated N times)`,
//! verbose lines may take only part of each window's budget so that the lines that matter
//! still fit, and lines beyond the budget are counted and the count written when it renews.

use core::fmt::{self, Write as _};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{open, Mode, OFlags};
use rustix::io::{write, Errno};

use super::{Level, Line, MAX_LINE};

/// The kernel log device.
pub const KMSG_PATH: &str = "/dev/kmsg";

/// Our rate window: longer than the kernel's 5 s, so that each of ours begins when the
/// kernel's has expired and both count the same lines.
pub const WINDOW_NS: u64 = 6_000_000_000;
/// Lines per window: the kernel's burst.
pub const LINES_PER_WINDOW: u32 = 10;
/// Of those, how many verbose (`Debug`) lines may take; the rest are kept for the others.
pub const DEBUG_LINES_PER_WINDOW: u32 = 6;

/// Where the limiter's lines go.
pub trait KmsgOut {
    /// Writes one kernel log line at `level`.
    fn write_line(&mut self, level: Level, text: fmt::Arguments<'_>);
}

/// The rate and repetition rules of [`Kmsg`], with the clock passed in. Pure, no allocation.
#[derive(Debug, Default)]
pub struct KmsgLimiter {
    last: Line,
    last_level: Option<Level>,
    last_ns: u64,
    /// Lines identical to `last` since it was written, not written.
    repeats: u64,
    window_start_ns: u64,
    written_in_window: u32,
    /// Lines over the budget since the last notice.
    suppressed: u64,
    /// The kernel does not rate-limit writes (`printk_devkmsg=on`): no budget is needed.
    unlimited: bool,
}

impl KmsgLimiter {
    /// Handles one line logged at `now_ns`.
    pub fn submit(&mut self, level: Level, line: &str, now_ns: u64, out: &mut impl KmsgOut) {
        self.tick(now_ns, out);
        if self.last_level == Some(level) && self.last.as_str() == line {
            self.repeats += 1;
            return;
        }
        self.flush_repeats(now_ns, out);
        self.last.clear();
        let _ = self.last.push_str(line);
        self.last_level = Some(level);
        self.last_ns = now_ns;
        self.emit(level, now_ns, out, format_args!("{line}"));
    }

    /// Writes what is due at `now_ns`: the count of a repetition whose window ended, and,
    /// first thing in a new budget window, the count of lines that were over the last one.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl KmsgOut) {
        if now_ns.saturating_sub(self.last_ns) >= WINDOW_NS {
            self.flush_repeats(now_ns, out);
            self.last_level = None;
        }
        self.renew(now_ns);
        if self.suppressed > 0 && self.written_in_window == 0 {
            self.written_in_window = 1;
            self.write_suppressed(out);
        }
    }

    /// Writes every pending count now, whatever the budget: the daemon is leaving.
    pub fn finish(&mut self, out: &mut impl KmsgOut) {
        if let (Some(level), 1..) = (self.last_level, self.repeats) {
            let repeats = core::mem::take(&mut self.repeats);
            out.write_line(
                level,
                format_args!("{} (repeated {repeats} times)", self.last.as_str()),
            );
        }
        if self.suppressed > 0 {
            self.write_suppressed(out);
        }
    }

    fn write_suppressed(&mut self, out: &mut impl KmsgOut) {
        let suppressed = core::mem::take(&mut self.suppressed);
        out.write_line(
            Level::Debug,
            format_args!(
                "{suppressed} lines not written to the kernel log (its rate limit); the ring \
                 file has them"
            ),
        );
    }

    /// Writes the pending repetition count, if any.
    fn flush_repeats(&mut self, now_ns: u64, out: &mut impl KmsgOut) {
        let (Some(level), repeats) = (self.last_level, self.repeats) else {
            return;
        };
        if repeats == 0 {
            return;
        }
        self.repeats = 0;
        let last = core::mem::take(&mut self.last);
        self.emit(
            level,
            now_ns,
            out,
            format_args!("{} (repeated {repeats} times)", last.as_str()),
        );
        self.last = last;
    }

    fn renew(&mut self, now_ns: u64) {
        if self.written_in_window == 0 || now_ns.saturating_sub(self.window_start_ns) >= WINDOW_NS {
            self.window_start_ns = now_ns;
            self.written_in_window = 0;
        }
    }

    /// Writes a line if the budget allows, else counts it.
    fn emit(&mut self, level: Level, now_ns: u64, out: &mut impl KmsgOut, text: fmt::Arguments) {
        self.renew(now_ns);
        let budget = if level == Level::Debug {
            DEBUG_LINES_PER_WINDOW
        } else {
            LINES_PER_WINDOW
        };
        if self.unlimited || self.written_in_window < budget {
            self.written_in_window += 1;
            out.write_line(level, text);
        } else {
            self.suppressed += 1;
        }
    }
}

/// A kernel log line with its prefix: room for a full line and a repetition count.
type KmsgRecord = heapless::String<{ MAX_LINE + 64 }>;

/// The open device.
#[derive(Debug)]
struct Device {
    fd: OwnedFd,
}

impl KmsgOut for Device {
    fn write_line(&mut self, level: Level, text: fmt::Arguments<'_>) {
        let mut record = KmsgRecord::new();
        let _ = write!(record, "<{}>stalld: ", level.severity());
        let _ = record.write_fmt(text);
        if record.push('\n').is_err() {
            record.pop();
            let _ = record.push('\n');
        }
        let _ = write(&self.fd, record.as_bytes());
    }
}

/// Whether the kernel takes every user-space line (`printk_devkmsg=on`, a boot option or
/// sysctl); it rate-limits them by default (`ratelimit`).
fn kernel_writes_unlimited() -> bool {
    std::fs::read("/proc/sys/kernel/printk_devkmsg").is_ok_and(|mode| mode.starts_with(b"on"))
}

/// An open kernel log.
#[derive(Debug)]
pub struct Kmsg {
    device: Device,
    limiter: KmsgLimiter,
}

impl Kmsg {
    /// Opens `path` write-only, nonblocking, close-on-exec.
    pub fn open(path: &Path) -> Result<Kmsg, Errno> {
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = open(path, flags, Mode::empty())?;
        Ok(Kmsg {
            device: Device { fd },
            limiter: KmsgLimiter {
                unlimited: kernel_writes_unlimited(),
                ..KmsgLimiter::default()
            },
        })
    }

    /// Writes `line` at the kernel log level matching `level`, within the rate rules.
    pub fn write(&mut self, level: Level, line: &str, now_ns: u64) {
        self.limiter.submit(level, line, now_ns, &mut self.device);
    }

    /// Writes the counts due at `now_ns` (see [`KmsgLimiter::tick`]).
    pub fn tick(&mut self, now_ns: u64) {
        self.limiter.tick(now_ns, &mut self.device);
    }

    /// Writes every pending count now, whatever the budget (at exit).
    pub fn finish(&mut self) {
        self.limiter.finish(&mut self.device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl KmsgOut for Recorder {
        fn write_line(&mut self, level: Level, text: fmt::Arguments<'_>) {
            self.0.push(format!("<{}>{text}", level.severity()));
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn identical_lines_are_coalesced_with_their_count() {
        let (mut limiter, mut out) = (KmsgLimiter::default(), Recorder::default());
        let t0 = 100 * S;
        for i in 0..1000 {
            limiter.submit(Level::Info, "same", t0 + i * 1000, &mut out);
        }
        assert_eq!(out.0, ["<6>same"]);
        limiter.submit(Level::Info, "other", t0 + S, &mut out);
        assert_eq!(
            out.0,
            ["<6>same", "<6>same (repeated 999 times)", "<6>other"]
        );
    }

    #[test]
    fn repetition_count_is_written_when_the_window_ends() {
        let (mut limiter, mut out) = (KmsgLimiter::default(), Recorder::default());
        limiter.submit(Level::Warning, "again", S, &mut out);
        limiter.submit(Level::Warning, "again", 2 * S, &mut out);
        limiter.tick(S + WINDOW_NS - 1, &mut out);
        assert_eq!(out.0, ["<4>again"]);
        limiter.tick(S + WINDOW_NS, &mut out);
        assert_eq!(out.0, ["<4>again", "<4>again (repeated 1 times)"]);
        // After the window the same line is written again, not counted.
        limiter.submit(Level::Warning, "again", S + WINDOW_NS + 1, &mut out);
        assert_eq!(out.0.len(), 3);
        assert_eq!(out.0[2], "<4>again");
    }

    #[test]
    fn same_text_at_another_level_is_not_a_repetition() {
        let (mut limiter, mut out) = (KmsgLimiter::default(), Recorder::default());
        limiter.submit(Level::Info, "x", S, &mut out);
        limiter.submit(Level::Debug, "x", S, &mut out);
        assert_eq!(out.0, ["<6>x", "<7>x"]);
    }

    #[test]
    fn no_budget_where_the_kernel_takes_every_line() {
        let mut limiter = KmsgLimiter {
            unlimited: true,
            ..KmsgLimiter::default()
        };
        let mut out = Recorder::default();
        for i in 0..50 {
            limiter.submit(Level::Debug, &format!("line {i}"), S, &mut out);
        }
        assert_eq!(out.0.len(), 50);
    }

    #[test]
    fn budget_keeps_room_for_important_lines_and_counts_the_rest() {
        let (mut limiter, mut out) = (KmsgLimiter::default(), Recorder::default());
        for i in 0..20 {
            limiter.submit(Level::Debug, &format!("checking {i}"), S, &mut out);
        }
        assert_eq!(out.0.len(), 6);
        for i in 0..10 {
            limiter.submit(Level::Info, &format!("starved {i}"), 2 * S, &mut out);
        }
        assert_eq!(out.0.len(), 10, "{:?}", out.0);
        assert_eq!(out.0[9], "<6>starved 3");
        // 14 debug + 6 info lines were over; the count comes with the next window.
        limiter.tick(S + WINDOW_NS, &mut out);
        assert_eq!(out.0.len(), 11);
        assert!(
            out.0[10].starts_with("<7>20 lines not written"),
            "{}",
            out.0[10]
        );
        limiter.tick(S + WINDOW_NS + 1, &mut out);
        assert_eq!(out.0.len(), 11);
    }

    #[test]
    fn the_kernel_rate_limit_never_drops_a_line() {
        // The kernel's ___ratelimit(): interval 5 s, burst 10, window from the first line.
        let (mut begin, mut printed, mut dropped) = (0u64, 0u32, 0u32);
        let mut kernel = |now: u64| {
            if printed == 0 || now >= begin + 5 * S {
                begin = now;
                printed = 0;
            }
            if printed < 10 {
                printed += 1;
            } else {
                dropped += 1;
            }
        };
        let (mut limiter, mut out) = (KmsgLimiter::default(), Recorder::default());
        let mut state = 7u64;
        let mut now = 0;
        for i in 0..20_000u64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            now += (state >> 33) % (S / 3);
            let level = if i % 3 == 0 {
                Level::Info
            } else {
                Level::Debug
            };
            let before = out.0.len();
            limiter.submit(level, &format!("line {}", i % 5), now, &mut out);
            limiter.tick(now, &mut out);
            for _ in before..out.0.len() {
                kernel(now);
            }
        }
        assert!(out.0.len() > 1000, "{}", out.0.len());
        assert_eq!(dropped, 0);
    }
}
