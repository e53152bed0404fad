//! Reads kernel text files line by line through one fixed buffer, never allocating.
//! Invariant: every line handed out is complete; a line longer than the buffer is skipped
//! whole and counted, never truncated.

use core::ffi::CStr;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::{retry_on_intr, Errno};

/// What one pass over a file saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Lines handed to the callback.
    pub lines: u32,
    /// Lines longer than the buffer, skipped whole.
    pub overlong_lines: u32,
}

/// A line reader owning an `N`-byte buffer: lines of up to `N` bytes (without the `\n`)
/// are delivered, longer ones skipped. Create it once and reuse it for every pass.
pub struct LineReader<const N: usize> {
    buf: [u8; N],
}

impl<const N: usize> Default for LineReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineReader<N> {
    /// A reader with an `N`-byte line buffer.
    pub const fn new() -> Self {
        LineReader { buf: [0; N] }
    }

    /// Opens `path` and calls `f` with each line, without its `\n`; a last line without
    /// `\n` is delivered too. Interrupted reads are retried.
    pub fn for_each_line(&mut self, path: &CStr, f: impl FnMut(&[u8])) -> Result<ReadStats, Errno> {
        let fd = open_read(path)?;
        self.for_each_line_fd(&fd, f)
    }

    /// [`LineReader::for_each_line`] of `path` relative to the directory `dir` (`openat`).
    pub fn for_each_line_at(
        &mut self,
        dir: impl AsFd,
        path: &CStr,
        f: impl FnMut(&[u8]),
    ) -> Result<ReadStats, Errno> {
        let fd = open_read_at(dir, path)?;
        self.for_each_line_fd(&fd, f)
    }

    fn for_each_line_fd(&mut self, fd: &OwnedFd, f: impl FnMut(&[u8])) -> Result<ReadStats, Errno> {
        self.for_each_line_from(|buf| rustix::io::read(fd, buf), f)
    }

    /// [`LineReader::for_each_line`] over any byte source: `read(buf)` puts up to `buf.len()`
    /// bytes at the front of `buf` and returns how many, 0 at the end, as `read(2)` does.
    /// The lines are the same whatever sizes the reads return.
    pub fn for_each_line_from(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Result<usize, Errno>,
        mut f: impl FnMut(&[u8]),
    ) -> Result<ReadStats, Errno> {
        let mut stats = ReadStats::default();
        // Bytes of the current, incomplete line kept at the front of `buf`.
        let mut len_bytes = 0usize;
        // True while dropping the rest of an overlong line up to its `\n`.
        let mut skipping = false;
        loop {
            if len_bytes == N {
                // Full buffer without a newline: the line fits only if it ends right here.
                let mut probe = [0u8; 1];
                let n = retry_on_intr(|| read(&mut probe))?;
                if n == 0 || probe[0] == b'\n' {
                    f(&self.buf[..N]);
                    stats.lines += 1;
                    if n == 0 {
                        return Ok(stats);
                    }
                } else {
                    skipping = true;
                }
                len_bytes = 0;
                continue;
            }
            let n = retry_on_intr(|| read(&mut self.buf[len_bytes..]))?;
            if n == 0 {
                if skipping {
                    stats.overlong_lines += 1;
                } else if len_bytes > 0 {
                    f(&self.buf[..len_bytes]);
                    stats.lines += 1;
                }
                return Ok(stats);
            }
            let end = len_bytes + n;
            let mut start = 0usize;
            let mut scan = len_bytes;
            while let Some(pos) = self.buf[scan..end].iter().position(|&b| b == b'\n') {
                let nl = scan + pos;
                if skipping {
                    skipping = false;
                    stats.overlong_lines += 1;
                } else {
                    f(&self.buf[start..nl]);
                    stats.lines += 1;
                }
                start = nl + 1;
                scan = start;
            }
            if skipping {
                len_bytes = 0;
            } else {
                self.buf.copy_within(start..end, 0);
                len_bytes = end - start;
            }
        }
    }
}

/// Opens `path` read-only, close-on-exec, retrying on `EINTR`.
pub fn open_read(path: &CStr) -> Result<OwnedFd, Errno> {
    retry_on_intr(|| rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()))
}

/// Opens `path` relative to the directory `dir` (`openat`), read-only, close-on-exec,
/// retrying on `EINTR`.
pub fn open_read_at(dir: impl AsFd, path: &CStr) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    retry_on_intr(|| rustix::fs::openat(dir, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()))
}

/// Reads the whole of a small file into `buf`; `Err(FBIG)` when it does not fit, so a
/// caller never parses a silently cut file.
pub fn read_small_file<'a>(path: &CStr, buf: &'a mut [u8]) -> Result<&'a [u8], Errno> {
    read_whole(&open_read(path)?, buf)
}

/// [`read_small_file`] of `path` relative to the directory `dir`.
pub fn read_small_file_at<'a>(
    dir: impl AsFd,
    path: &CStr,
    buf: &'a mut [u8],
) -> Result<&'a [u8], Errno> {
    read_whole(&open_read_at(dir, path)?, buf)
}

/// Reads `fd` to its end into `buf`; `Err(FBIG)` when the contents do not fit.
fn read_whole<'a>(fd: &OwnedFd, buf: &'a mut [u8]) -> Result<&'a [u8], Errno> {
    let mut len_bytes = 0usize;
    while len_bytes < buf.len() {
        let n = retry_on_intr(|| rustix::io::read(fd, &mut buf[len_bytes..]))?;
        if n == 0 {
            return Ok(&buf[..len_bytes]);
        }
        len_bytes += n;
    }
    let mut probe = [0u8; 1];
    match retry_on_intr(|| rustix::io::read(fd, &mut probe))? {
        0 => Ok(&buf[..len_bytes]),
        _ => Err(Errno::FBIG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn temp_file(tag: &str, contents: &[u8]) -> CString {
        let path = std::env::temp_dir().join(format!(
            "stalld-lines-{}-{}-{}",
            std::process::id(),
            tag,
            contents.len()
        ));
        std::fs::write(&path, contents).unwrap();
        CString::new(path.into_os_string().into_encoded_bytes()).unwrap()
    }

    fn collect<const N: usize>(tag: &str, contents: &[u8]) -> (Vec<Vec<u8>>, ReadStats) {
        let path = temp_file(tag, contents);
        let mut reader = LineReader::<N>::new();
        let mut lines = Vec::new();
        let stats = reader
            .for_each_line(&path, |l| lines.push(l.to_vec()))
            .unwrap();
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
        (lines, stats)
    }

    #[test]
    fn lines_cross_chunk_boundaries() {
        let (lines, stats) = collect::<4>("cross", b"ab\ncde\nf\n\nghij\n");
        assert_eq!(lines, [&b"ab"[..], b"cde", b"f", b"", b"ghij"]);
        assert_eq!(
            stats,
            ReadStats {
                lines: 5,
                overlong_lines: 0
            }
        );
    }

    #[test]
    fn overlong_lines_are_skipped_whole_and_counted() {
        let (lines, stats) = collect::<4>("long", b"ab\nabcdefghijk\ncd\nabcde\nxy");
        assert_eq!(lines, [&b"ab"[..], b"cd", b"xy"]);
        assert_eq!(stats.overlong_lines, 2);
        assert_eq!(stats.lines, 3);
    }

    #[test]
    fn overlong_last_line_without_newline_is_counted() {
        let (lines, stats) = collect::<4>("longlast", b"ab\nabcdefgh");
        assert_eq!(lines, [&b"ab"[..]]);
        assert_eq!(stats.overlong_lines, 1);
    }

    #[test]
    fn line_of_exactly_buffer_size_fits() {
        let (lines, stats) = collect::<4>("exact", b"abcd\nefgh");
        assert_eq!(lines, [&b"abcd"[..], b"efgh"]);
        assert_eq!(stats.overlong_lines, 0);
    }

    #[test]
    fn last_line_without_newline_is_delivered() {
        let (lines, _) = collect::<16>("nonl", b"one\ntwo");
        assert_eq!(lines, [&b"one"[..], b"two"]);
    }

    #[test]
    fn empty_file_has_no_lines() {
        let (lines, stats) = collect::<16>("empty", b"");
        assert!(lines.is_empty());
        assert_eq!(stats, ReadStats::default());
    }

    #[test]
    fn missing_file_is_enoent() {
        let mut reader = LineReader::<16>::new();
        let err = reader
            .for_each_line(c"/nonexistent/stalld-test", |_| {})
            .unwrap_err();
        assert_eq!(err, Errno::NOENT);
    }

    #[test]
    fn small_file_fits_or_is_refused() {
        let path = temp_file("small", b"12345");
        let mut exact = [0u8; 5];
        assert_eq!(read_small_file(&path, &mut exact).unwrap(), b"12345");
        let mut short = [0u8; 4];
        assert_eq!(read_small_file(&path, &mut short), Err(Errno::FBIG));
        std::fs::remove_file(path.to_str().unwrap()).unwrap();
    }

    #[test]
    fn small_file_relative_to_a_directory() {
        let path = temp_file("at", b"abc");
        let path = std::path::PathBuf::from(path.into_string().unwrap());
        let dir =
            open_read(&CString::new(path.parent().unwrap().to_str().unwrap()).unwrap()).unwrap();
        let name = CString::new(path.file_name().unwrap().to_str().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read_small_file_at(&dir, &name, &mut buf).unwrap(), b"abc");
        let mut short = [0u8; 2];
        assert_eq!(
            read_small_file_at(&dir, &name, &mut short),
            Err(Errno::FBIG)
        );
        assert_eq!(
            read_small_file_at(&dir, c"stalld-no-such-file", &mut buf),
            Err(Errno::NOENT)
        );
        let mut lines = Vec::new();
        let mut reader = LineReader::<8>::new();
        reader
            .for_each_line_at(&dir, &name, |l| lines.push(l.to_vec()))
            .unwrap();
        assert_eq!(lines, [b"abc"]);
        std::fs::remove_file(path).unwrap();
    }
}
