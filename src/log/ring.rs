//! The ring file: the last log lines in a fixed-size file that outlives the daemon.
//! Invariant: after [`Ring::open`], appending is a copy into a locked `MAP_SHARED` mapping:
//! no system call, no allocation, no wait on I/O. The page cache holds the data, so the
//! records written before a crash or a SIGKILL stay readable ([`dump`]).
//!
//! On-disk format (every integer little-endian), defined here and nowhere else:
//!
//! ```text
//! header (HEADER_SIZE = 64 bytes)
//!   0  [u8; 8]  FILE_MAGIC "STALLDRG"
//!   8  u32      FORMAT_VERSION
//!  12  u32      HEADER_SIZE
//!  16  u64      size of the data area in bytes (file size - HEADER_SIZE)
//!  24  ...      zero
//! data area: records, each at a multiple of RECORD_ALIGN (16) bytes from its start
//!   0  u32      RECORD_MAGIC, stored last: a record without it is not one
//!   4  u32      FNV-1a of bytes 8 .. 40 + length
//!   8  u64      sequence number, +1 per record, continued across restarts
//!  16  u64      CLOCK_MONOTONIC, ns
//!  24  u64      CLOCK_REALTIME, ns since the epoch
//!  32  u16      text length in bytes (at most MAX_LINE)
//!  34  u8       level (syslog severity)
//!  35  [u8; 5]  zero
//!  40  text (UTF-8, no newline), zero padding up to the next RECORD_ALIGN boundary
//! ```
//!
//! A record that does not fit before the end of the data area goes to its start, and the
//! unused tail is zeroed. Readers scan every aligned offset for a record whose magic and
//! checksum hold, so a record torn by a crash, or an old one partly overwritten, is skipped;
//! the records found are put in sequence order.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};

use super::{Level, MAX_LINE};
use crate::sys::mapped_file::MappedFile;

/// Where the ring lives unless `--log_ring` says otherwise.
pub const DEFAULT_RING_PATH: &str = "/run/stalld/stalld.ring";
/// The first bytes of every ring file.
pub const FILE_MAGIC: [u8; 8] = *b"STALLDRG";
/// Bumped whenever the layout above changes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the data area.
pub const HEADER_SIZE: usize = 64;
const HEADER_SIZE_U32: u32 = 64;
/// Marks the start of a complete record ("SLTR" as little-endian bytes).
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SLTR");
/// Bytes before a record's text.
const RECORD_HEADER: usize = 40;
/// Records start at multiples of this from the data area's start.
const RECORD_ALIGN: usize = 16;

/// Where the next record goes and its sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Offset in the data area.
    pub offset: usize,
    pub next_seq: u64,
}

/// When a line was logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub monotonic_ns: u64,
    pub wall_ns: u64,
}

impl Stamp {
    /// Both clocks now (vDSO calls: no system call on x86-64).
    pub fn now() -> Stamp {
        let ns = |clock| {
            let t = rustix::time::clock_gettime(clock);
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec).unwrap_or(0)
        };
        Stamp {
            monotonic_ns: ns(rustix::time::ClockId::Monotonic),
            wall_ns: ns(rustix::time::ClockId::Realtime),
        }
    }
}

/// One record read back from a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub stamp: Stamp,
    /// Syslog severity (3 error .. 7 debug).
    pub level: u8,
    pub text: String,
}

/// Why bytes are not a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    TooShort(usize),
    BadMagic,
    UnsupportedVersion(u32),
    BadSize { header: u64, actual: usize },
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort(len) => write!(f, "not a stalld ring file ({len} bytes)"),
            Self::BadMagic => f.write_str("not a stalld ring file (bad magic)"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "stalld ring format version {v}, this stalld reads version {FORMAT_VERSION}"
            ),
            Self::BadSize { header, actual } => write!(
                f,
                "damaged stalld ring file: header says {header} data bytes, file has {actual}"
            ),
        }
    }
}

/// Writes a fresh header for a ring of `image.len()` bytes and zeroes the data area.
pub fn format_image(image: &mut [u8]) {
    image.fill(0);
    let data_size = (image.len() - HEADER_SIZE) as u64;
    image[0..8].copy_from_slice(&FILE_MAGIC);
    image[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    image[12..16].copy_from_slice(&HEADER_SIZE_U32.to_le_bytes());
    image[16..24].copy_from_slice(&data_size.to_le_bytes());
}

/// The data area of a ring image after checking its header.
fn data_area(image: &[u8]) -> Result<&[u8], FormatError> {
    if image.len() < HEADER_SIZE + RECORD_HEADER + MAX_LINE {
        return Err(FormatError::TooShort(image.len()));
    }
    if image[0..8] != FILE_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes(image[8..12].try_into().unwrap_or_default());
    let header_size = u32::from_le_bytes(image[12..16].try_into().unwrap_or_default());
    if version != FORMAT_VERSION || header_size as usize != HEADER_SIZE {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let data = &image[HEADER_SIZE..];
    let header = u64::from_le_bytes(image[16..24].try_into().unwrap_or_default());
    if header != data.len() as u64 {
        return Err(FormatError::BadSize {
            header,
            actual: data.len(),
        });
    }
    Ok(data)
}

/// 32-bit FNV-1a.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

/// Bytes a record with `text_len` bytes of text takes.
fn record_size(text_len: usize) -> usize {
    (RECORD_HEADER + text_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The complete record at `offset` of `data`, with its size; `None` for anything else.
fn record_at(data: &[u8], offset: usize) -> Option<(Entry, usize)> {
    let head = data.get(offset..offset + RECORD_HEADER)?;
    if u32_at(head, 0) != RECORD_MAGIC {
        return None;
    }
    let text_len = usize::from(u16::from_le_bytes([head[32], head[33]]));
    if text_len > MAX_LINE {
        return None;
    }
    let size = record_size(text_len);
    let covered = data.get(offset + 8..offset + RECORD_HEADER + text_len)?;
    if offset + size > data.len() || checksum(covered) != u32_at(head, 4) {
        return None;
    }
    let text = &data[offset + RECORD_HEADER..offset + RECORD_HEADER + text_len];
    let entry = Entry {
        seq: u64_at(head, 8),
        stamp: Stamp {
            monotonic_ns: u64_at(head, 16),
            wall_ns: u64_at(head, 24),
        },
        level: head[34],
        text: String::from_utf8_lossy(text).into_owned(),
    };
    Some((entry, size))
}

/// Every complete record of a ring image, oldest first. Never panics, whatever the bytes.
pub fn read_entries(image: &[u8]) -> Result<Vec<Entry>, FormatError> {
    let data = data_area(image)?;
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset + RECORD_HEADER <= data.len() {
        match record_at(data, offset) {
            Some((entry, size)) => {
                entries.push(entry);
                offset += size;
            }
            None => offset += RECORD_ALIGN,
        }
    }
    entries.sort_by_key(|entry| entry.seq);
    Ok(entries)
}

/// Where a writer continues an existing ring: after its newest record.
pub fn resume_cursor(image: &[u8]) -> Result<Cursor, FormatError> {
    let data = data_area(image)?;
    let mut cursor = Cursor::default();
    let mut offset = 0;
    while offset + RECORD_HEADER <= data.len() {
        match record_at(data, offset) {
            Some((entry, size)) => {
                if entry.seq >= cursor.next_seq {
                    cursor = Cursor {
                        offset: offset + size,
                        next_seq: entry.seq + 1,
                    };
                }
                offset += size;
            }
            None => offset += RECORD_ALIGN,
        }
    }
    Ok(cursor)
}

/// Appends one record to a ring image whose header [`format_image`] wrote; `text` beyond
/// [`MAX_LINE`] bytes is cut. The magic is stored last, after a fence, so a record cut short
/// by the writer's death never carries it.
pub fn append(image: &mut [u8], cursor: &mut Cursor, stamp: Stamp, level: u8, text: &[u8]) {
    let text = &text[..text.len().min(MAX_LINE)];
    let data = &mut image[HEADER_SIZE..];
    let size = record_size(text.len());
    if cursor.offset + size > data.len() {
        let tail = cursor.offset.min(data.len());
        data[tail..].fill(0);
        cursor.offset = 0;
    }
    let record = &mut data[cursor.offset..cursor.offset + size];
    record[0..4].fill(0);
    fence(Ordering::Release);
    record[8..16].copy_from_slice(&cursor.next_seq.to_le_bytes());
    record[16..24].copy_from_slice(&stamp.monotonic_ns.to_le_bytes());
    record[24..32].copy_from_slice(&stamp.wall_ns.to_le_bytes());
    // `text` was cut to MAX_LINE bytes above, which fits in a u16.
    let text_len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    record[32..34].copy_from_slice(&text_len.to_le_bytes());
    record[34] = level;
    record[35..RECORD_HEADER].fill(0);
    record[RECORD_HEADER..RECORD_HEADER + text.len()].copy_from_slice(text);
    record[RECORD_HEADER + text.len()..].fill(0);
    let sum = checksum(&record[8..RECORD_HEADER + text.len()]);
    record[4..8].copy_from_slice(&sum.to_le_bytes());
    fence(Ordering::Release);
    record[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    cursor.offset += size;
    cursor.next_seq += 1;
}

/// An open ring file, mapped and locked in memory.
#[derive(Debug)]
pub struct Ring {
    file: MappedFile,
    cursor: Cursor,
}

impl Ring {
    /// Opens the ring file at `path` of `size_bytes` bytes with [`MappedFile::open`]'s rules:
    /// parent directory created with mode 0700, file mode 0600, never through a symlink,
    /// refused if it is not a regular file, has other hard links or belongs to another user
    /// than root or us; locked with `flock` against a second writer. An existing ring of that
    /// size is continued (its records are what a crash left behind), anything else is replaced
    /// by an empty ring. Startup only (may allocate).
    pub fn open(path: &Path, size_bytes: usize) -> Result<Ring, String> {
        let (file, same_size) = MappedFile::open(path, size_bytes)?;
        let mut ring = Ring {
            file,
            cursor: Cursor::default(),
        };
        match resume_cursor(ring.image()) {
            Ok(cursor) if same_size => ring.cursor = cursor,
            _ => format_image(ring.image()),
        }
        Ok(ring)
    }

    /// The mapped file.
    fn image(&mut self) -> &mut [u8] {
        self.file.bytes()
    }

    /// Appends one line. No system call, no allocation.
    pub fn append(&mut self, level: Level, line: &str, stamp: Stamp) {
        let mut cursor = self.cursor;
        append(
            self.image(),
            &mut cursor,
            stamp,
            level.severity(),
            line.as_bytes(),
        );
        self.cursor = cursor;
    }
}

/// Prints every record of the ring at `path`, oldest first, one line each:
/// `#seq YYYY-MM-DDTHH:MM:SS.uuuuuuZ [monotonic s] <level> text`. Returns how many.
pub fn dump(path: &Path, out: &mut impl Write) -> Result<usize, String> {
    let image = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let entries = read_entries(&image).map_err(|e| format!("{}: {e}", path.display()))?;
    for entry in &entries {
        writeln!(out, "{}", format_entry(entry))
            .map_err(|e| format!("cannot write the dump: {e}"))?;
    }
    Ok(entries.len())
}

/// One entry as [`dump`] prints it.
pub fn format_entry(entry: &Entry) -> String {
    let secs = entry.stamp.wall_ns / 1_000_000_000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let day_secs = secs % 86_400;
    let mut out = String::new();
    let _ = write!(
        out,
        "#{} {year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z [{:6}.{:06}] <{}> {}",
        entry.seq,
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        entry.stamp.wall_ns % 1_000_000_000 / 1000,
        entry.stamp.monotonic_ns / 1_000_000_000,
        entry.stamp.monotonic_ns % 1_000_000_000 / 1000,
        entry.level,
        entry.text
    );
    out
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 16 * 1024;

    fn fresh(size: usize) -> Vec<u8> {
        let mut image = vec![0xa5; size];
        format_image(&mut image);
        image
    }

    fn stamp(i: u64) -> Stamp {
        Stamp {
            monotonic_ns: i * 1000,
            wall_ns: 1_700_000_000_000_000_000 + i,
        }
    }

    fn texts(image: &[u8]) -> Vec<String> {
        read_entries(image)
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let mut image = fresh(SIZE);
        let mut cursor = Cursor::default();
        append(&mut image, &mut cursor, stamp(1), 6, b"first");
        append(&mut image, &mut cursor, stamp(2), 7, b"");
        append(
            &mut image,
            &mut cursor,
            stamp(3),
            3,
            "é".repeat(300).as_bytes(),
        );
        let entries = read_entries(&image).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].seq, 0);
        assert_eq!(entries[0].stamp, stamp(1));
        assert_eq!(entries[0].level, 6);
        assert_eq!(entries[0].text, "first");
        assert_eq!(entries[1].text, "");
        assert_eq!(entries[2].text.len(), MAX_LINE);
        assert_eq!(entries[2].seq, 2);
        assert_eq!(resume_cursor(&image).unwrap(), cursor);
    }

    #[test]
    fn wraps_keeping_the_newest_records_in_order() {
        let mut image = fresh(SIZE);
        let mut cursor = Cursor::default();
        for i in 0..2_000u64 {
            let text = format!("line {i} {}", "x".repeat(usize::try_from(i % 97).unwrap()));
            append(&mut image, &mut cursor, stamp(i), 6, text.as_bytes());
        }
        let entries = read_entries(&image).unwrap();
        assert!(entries.len() > 50, "{}", entries.len());
        assert_eq!(entries.last().unwrap().seq, 1_999);
        for pair in entries.windows(2) {
            assert_eq!(pair[0].seq + 1, pair[1].seq, "a gap in the newest records");
        }
        for entry in &entries {
            assert!(entry.text.starts_with(&format!("line {} ", entry.seq)));
        }
        assert_eq!(resume_cursor(&image).unwrap(), cursor);
    }

    #[test]
    fn torn_last_record_is_skipped() {
        let mut image = fresh(SIZE);
        let mut cursor = Cursor::default();
        append(&mut image, &mut cursor, stamp(1), 6, b"complete");
        let before = cursor;
        append(
            &mut image,
            &mut cursor,
            stamp(2),
            6,
            b"being written when killed",
        );
        // Each way the writer can die: text half copied, or everything but the magic.
        let at = HEADER_SIZE + before.offset;
        let mut half = image.clone();
        half[at + RECORD_HEADER + 5..at + RECORD_HEADER + 20].fill(0);
        let mut no_magic = image.clone();
        no_magic[at..at + 4].fill(0);
        for torn in [half, no_magic] {
            assert_eq!(texts(&torn), ["complete"]);
            assert_eq!(resume_cursor(&torn).unwrap(), before);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut image = fresh(SIZE);
        let mut cursor = Cursor::default();
        for i in 0..300 {
            append(&mut image, &mut cursor, stamp(i), 6, b"some line of text");
        }
        let mut state = 0x1234_5678_u32;
        for round in 0..200 {
            let mut broken = image.clone();
            for _ in 0..round {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let at = HEADER_SIZE + usize::try_from(state).unwrap() % (SIZE - HEADER_SIZE);
                broken[at] = broken[at].wrapping_add(u8::try_from(state >> 24).unwrap());
            }
            let entries = read_entries(&broken).unwrap();
            assert!(entries.len() <= 300);
        }
        let random: Vec<u8> = (0..SIZE)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        assert_eq!(read_entries(&random), Err(FormatError::BadMagic));
    }

    #[test]
    fn header_is_checked() {
        assert_eq!(read_entries(b"short"), Err(FormatError::TooShort(5)));
        let mut image = fresh(SIZE);
        image[8] = 2;
        assert_eq!(
            read_entries(&image),
            Err(FormatError::UnsupportedVersion(2))
        );
        let image = fresh(SIZE);
        assert_eq!(
            read_entries(&image[..SIZE - 16]),
            Err(FormatError::BadSize {
                header: (SIZE - HEADER_SIZE) as u64,
                actual: SIZE - HEADER_SIZE - 16
            })
        );
    }

    #[test]
    fn entries_print_with_both_clocks() {
        let entry = Entry {
            seq: 7,
            stamp: Stamp {
                monotonic_ns: 12_345_678_901,
                wall_ns: 1_709_210_096_123_456_789,
            },
            level: 6,
            text: "boosted pid 42".into(),
        };
        assert_eq!(
            format_entry(&entry),
            "#7 2024-02-29T12:34:56.123456Z [    12.345678] <6> boosted pid 42"
        );
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("stalld-ring-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("sub").join("stalld.ring")
    }

    #[test]
    fn file_ring_survives_and_continues() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path("file");
        let mut ring = Ring::open(&path, SIZE).unwrap();
        ring.append(Level::Info, "one", Stamp::now());
        ring.append(Level::Debug, "two", Stamp::now());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
        assert!(Ring::open(&path, SIZE).unwrap_err().contains("in use"));
        drop(ring);
        let mut ring = Ring::open(&path, SIZE).unwrap();
        ring.append(Level::Error, "three", Stamp::now());
        let entries = read_entries(&std::fs::read(&path).unwrap()).unwrap();
        let seqs: Vec<(u64, &str)> = entries.iter().map(|e| (e.seq, e.text.as_str())).collect();
        assert_eq!(seqs, [(0, "one"), (1, "two"), (2, "three")]);
        let mut out = Vec::new();
        assert_eq!(dump(&path, &mut out).unwrap(), 3);
        assert!(String::from_utf8(out).unwrap().ends_with("<3> three\n"));
        drop(ring);
        // Another size starts afresh.
        let ring = Ring::open(&path, 2 * SIZE).unwrap();
        drop(ring);
        assert!(read_entries(&std::fs::read(&path).unwrap())
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn refuses_links_and_foreign_files() {
        let path = temp_path("links");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let target = path.with_file_name("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(Ring::open(&path, SIZE)
            .unwrap_err()
            .contains("symbolic link"));
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&target, &path).unwrap();
        assert!(Ring::open(&path, SIZE).unwrap_err().contains("hard links"));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(Ring::open(&path, SIZE).is_err());
        let mut out = Vec::new();
        assert!(dump(&target, &mut out)
            .unwrap_err()
            .contains("not a stalld ring"));
        assert!(dump(&path.with_file_name("missing"), &mut out)
            .unwrap_err()
            .contains("cannot read"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }
}
