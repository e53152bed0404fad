//! CPU sets: the one parser of the kernel cpu-list syntax (`0,2-4`) into a fixed bitset.
//! Invariant: a `CpuSet` never holds a CPU >= `MAX_CPUS`; no operation allocates or panics.

use core::fmt;

/// Largest number of CPUs the daemon handles (the bitset is `MAX_CPUS` bits, 128 bytes).
pub const MAX_CPUS: usize = 1024;
/// [`MAX_CPUS`] as a CPU number type.
#[allow(clippy::cast_possible_truncation, reason = "1024")]
pub const MAX_CPUS_U32: u32 = MAX_CPUS as u32;

const BITS_PER_WORD: usize = u64::BITS as usize;
const WORDS: usize = MAX_CPUS / BITS_PER_WORD;

/// Longest part of a bad cpu-list item kept for the error message.
const MAX_ITEM_ECHO_LEN: usize = 24;

/// A set of CPU numbers below `MAX_CPUS`, stored as a fixed bitset.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuSet {
    words: [u64; WORDS],
}

/// Why a cpu list was refused. Display is one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuListError {
    /// The list holds no CPU at all (empty or only whitespace).
    Empty,
    /// An item is not a decimal number or a `first-last` range (the item, maybe shortened).
    BadNumber(heapless::String<MAX_ITEM_ECHO_LEN>),
    /// `first-last` with `last < first`.
    ReversedRange { first_cpu: u32, last_cpu: u32 },
    /// A CPU this machine does not have.
    NoSuchCpu { cpu: u32, nr_cpus: u32 },
    /// A CPU the machine may have but the daemon cannot handle (>= `MAX_CPUS`).
    BeyondMaxCpus { cpu: u32 },
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty CPU list"),
            Self::BadNumber(item) => write!(
                f,
                "{:?} is not a CPU number or range (expected a list like 0,2-4)",
                item.as_str()
            ),
            Self::ReversedRange {
                first_cpu,
                last_cpu,
            } => write!(
                f,
                "reversed CPU range {first_cpu}-{last_cpu} (write {last_cpu}-{first_cpu})"
            ),
            Self::NoSuchCpu { cpu, nr_cpus } => match nr_cpus {
                0 => write!(f, "CPU {cpu} does not exist (this machine has no CPUs)"),
                1 => write!(f, "CPU {cpu} does not exist (this machine has 1 CPU: 0)"),
                n => write!(
                    f,
                    "CPU {cpu} does not exist (this machine has {n} CPUs: 0-{})",
                    n - 1
                ),
            },
            Self::BeyondMaxCpus { cpu } => write!(
                f,
                "CPU {cpu} is beyond the {MAX_CPUS} CPUs this build of stalld supports"
            ),
        }
    }
}

impl std::error::Error for CpuListError {}

impl CpuSet {
    /// The set with no CPU.
    pub const fn empty() -> CpuSet {
        CpuSet { words: [0; WORDS] }
    }

    /// CPUs `0..nr_cpus` (capped at `MAX_CPUS`).
    pub fn all(nr_cpus: u32) -> CpuSet {
        let mut set = CpuSet::empty();
        for cpu in 0..nr_cpus.min(MAX_CPUS_U32) {
            set.insert(cpu);
        }
        set
    }

    /// Parses a kernel cpu list (`0`, `0,2-4`, `1-3,7`). Whitespace around the list and around
    /// each item is ignored, so a sysfs file's trailing newline is fine. Every CPU must be below
    /// `nr_cpus` (the machine's configured CPUs) and below `MAX_CPUS`.
    pub fn parse(list: &str, nr_cpus: u32) -> Result<CpuSet, CpuListError> {
        let list = list.trim();
        if list.is_empty() {
            return Err(CpuListError::Empty);
        }
        let mut set = CpuSet::empty();
        for item in list.split(',') {
            let item = item.trim();
            let (first_cpu, last_cpu) = match item.split_once('-') {
                Some((first, last)) => (
                    parse_cpu(first.trim(), item, nr_cpus)?,
                    parse_cpu(last.trim(), item, nr_cpus)?,
                ),
                None => {
                    let cpu = parse_cpu(item, item, nr_cpus)?;
                    (cpu, cpu)
                }
            };
            if last_cpu < first_cpu {
                return Err(CpuListError::ReversedRange {
                    first_cpu,
                    last_cpu,
                });
            }
            for cpu in first_cpu..=last_cpu {
                set.insert(cpu);
            }
        }
        Ok(set)
    }

    /// Adds `cpu`; returns false (and changes nothing) if `cpu >= MAX_CPUS`.
    pub fn insert(&mut self, cpu: u32) -> bool {
        match bit_of(cpu) {
            Some((word, mask)) => {
                self.words[word] |= mask;
                true
            }
            None => false,
        }
    }

    /// Whether `cpu` is in the set (false for any `cpu >= MAX_CPUS`).
    pub fn contains(&self, cpu: u32) -> bool {
        bit_of(cpu).is_some_and(|(word, mask)| self.words[word] & mask != 0)
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            #[allow(clippy::cast_possible_truncation, reason = "below MAX_CPUS")]
            let base = (index * BITS_PER_WORD) as u32;
            BitsOf(word).map(move |bit| base + bit)
        })
    }

    /// CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        let mut result = *self;
        for (word, other_word) in result.words.iter_mut().zip(other.words.iter()) {
            *word &= !other_word;
        }
        result
    }

    /// CPUs `0..nr_cpus` not in `self`: where the daemon pins itself, off the monitored CPUs.
    pub fn complement_within(&self, nr_cpus: u32) -> CpuSet {
        CpuSet::all(nr_cpus).difference(self)
    }
}

impl Default for CpuSet {
    fn default() -> CpuSet {
        CpuSet::empty()
    }
}

/// Canonical kernel list form: ascending, ranges collapsed (`0,2-4`); the empty set is "".
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut separator = "";
        while let Some(first) = cpus.next() {
            let mut last = first;
            while let Some(&next) = cpus.peek() {
                if next != last + 1 {
                    break;
                }
                last = next;
                cpus.next();
            }
            if first == last {
                write!(f, "{separator}{first}")?;
            } else {
                write!(f, "{separator}{first}-{last}")?;
            }
            separator = ",";
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

/// Iterates over the set bit positions of one word, lowest first.
struct BitsOf(u64);

impl Iterator for BitsOf {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

fn bit_of(cpu: u32) -> Option<(usize, u64)> {
    let cpu = cpu as usize;
    (cpu < MAX_CPUS).then(|| (cpu / BITS_PER_WORD, 1u64 << (cpu % BITS_PER_WORD)))
}

/// One CPU number: decimal digits only (no sign, no spaces inside), checked against the machine.
fn parse_cpu(number: &str, item: &str, nr_cpus: u32) -> Result<u32, CpuListError> {
    let bad_number = || CpuListError::BadNumber(echo(item));
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_number());
    }
    let cpu: u32 = number.parse().map_err(|_| bad_number())?;
    if cpu >= nr_cpus {
        return Err(CpuListError::NoSuchCpu { cpu, nr_cpus });
    }
    if cpu as usize >= MAX_CPUS {
        return Err(CpuListError::BeyondMaxCpus { cpu });
    }
    Ok(cpu)
}

/// The start of `item` that fits the error's fixed buffer, cut on a character boundary.
fn echo(item: &str) -> heapless::String<MAX_ITEM_ECHO_LEN> {
    let mut kept = heapless::String::new();
    for c in item.chars() {
        if kept.push(c).is_err() {
            break;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(set: &CpuSet) -> Vec<u32> {
        set.iter().collect()
    }

    #[test]
    fn parses_single_cpu() {
        assert_eq!(cpus(&CpuSet::parse("0", 8).unwrap()), [0]);
        assert_eq!(cpus(&CpuSet::parse("7", 8).unwrap()), [7]);
    }

    #[test]
    fn parses_list_and_ranges() {
        assert_eq!(cpus(&CpuSet::parse("0,2-4", 8).unwrap()), [0, 2, 3, 4]);
        assert_eq!(cpus(&CpuSet::parse("1-3,7", 8).unwrap()), [1, 2, 3, 7]);
        assert_eq!(cpus(&CpuSet::parse("5-5", 8).unwrap()), [5]);
    }

    #[test]
    fn overlapping_and_unordered_items_merge() {
        assert_eq!(
            cpus(&CpuSet::parse("4,0-2,1-3", 8).unwrap()),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn tolerates_whitespace_and_sysfs_newline() {
        assert_eq!(cpus(&CpuSet::parse("0-3\n", 8).unwrap()), [0, 1, 2, 3]);
        assert_eq!(
            cpus(&CpuSet::parse("  0, 2 - 4 \t", 8).unwrap()),
            [0, 2, 3, 4]
        );
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(CpuSet::parse("", 8), Err(CpuListError::Empty));
        assert_eq!(CpuSet::parse(" \n", 8), Err(CpuListError::Empty));
    }

    #[test]
    fn rejects_bad_numbers() {
        for bad in [
            "a", "1,", ",1", "1,,2", "-1", "1-", "+1", "1-+3", "0x1", "1.5", "1 2", "1-2-3",
        ] {
            assert!(
                matches!(CpuSet::parse(bad, 8), Err(CpuListError::BadNumber(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_overflowing_number() {
        assert!(matches!(
            CpuSet::parse("99999999999999999999", 8),
            Err(CpuListError::BadNumber(_))
        ));
    }

    #[test]
    fn rejects_reversed_range() {
        let err = CpuSet::parse("4-2", 8).unwrap_err();
        assert_eq!(
            err,
            CpuListError::ReversedRange {
                first_cpu: 4,
                last_cpu: 2
            }
        );
        assert_eq!(err.to_string(), "reversed CPU range 4-2 (write 2-4)");
    }

    #[test]
    fn rejects_cpu_the_machine_lacks() {
        let err = CpuSet::parse("0,8", 8).unwrap_err();
        assert_eq!(err, CpuListError::NoSuchCpu { cpu: 8, nr_cpus: 8 });
        assert_eq!(
            err.to_string(),
            "CPU 8 does not exist (this machine has 8 CPUs: 0-7)"
        );
        assert_eq!(
            CpuSet::parse("2-9", 8).unwrap_err(),
            CpuListError::NoSuchCpu { cpu: 9, nr_cpus: 8 }
        );
        assert_eq!(
            CpuSet::parse("1", 1).unwrap_err().to_string(),
            "CPU 1 does not exist (this machine has 1 CPU: 0)"
        );
        assert_eq!(
            CpuSet::parse("0", 0).unwrap_err().to_string(),
            "CPU 0 does not exist (this machine has no CPUs)"
        );
    }

    #[test]
    fn rejects_cpu_beyond_max_cpus() {
        let err = CpuSet::parse("1024", 4096).unwrap_err();
        assert_eq!(err, CpuListError::BeyondMaxCpus { cpu: 1024 });
        assert!(err.to_string().contains("1024 CPUs"));
        assert_eq!(
            CpuSet::parse("1000-2000", 4096).unwrap_err(),
            CpuListError::BeyondMaxCpus { cpu: 2000 }
        );
        assert_eq!(CpuSet::parse("1023", 4096).unwrap().len(), 1);
    }

    #[test]
    fn bad_number_message_is_one_line_and_bounded() {
        let long_item = "x".repeat(500);
        let message = CpuSet::parse(&long_item, 8).unwrap_err().to_string();
        assert!(!message.contains('\n'));
        assert!(message.len() < 120, "{message}");
        let message = CpuSet::parse("é\nz", 8).unwrap_err().to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("0,2-4"));
    }

    #[test]
    fn all_and_empty() {
        assert_eq!(cpus(&CpuSet::all(4)), [0, 1, 2, 3]);
        assert!(CpuSet::all(0).is_empty());
        assert_eq!(CpuSet::all(5000).len(), MAX_CPUS);
        assert!(CpuSet::empty().is_empty());
        assert_eq!(CpuSet::empty().len(), 0);
        assert_eq!(CpuSet::default(), CpuSet::empty());
    }

    #[test]
    fn insert_and_contains() {
        let mut set = CpuSet::empty();
        assert!(set.insert(3));
        assert!(set.insert(64));
        assert!(set.insert(1023));
        assert!(!set.insert(1024));
        assert!(!set.insert(u32::MAX));
        assert!(set.contains(3) && set.contains(64) && set.contains(1023));
        assert!(!set.contains(4) && !set.contains(1024) && !set.contains(u32::MAX));
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
    }

    #[test]
    fn iterates_ascending_across_words() {
        let set = CpuSet::parse("1023,0,63-65,127", 1024).unwrap();
        assert_eq!(cpus(&set), [0, 63, 64, 65, 127, 1023]);
    }

    #[test]
    fn difference_and_complement() {
        let monitored = CpuSet::parse("2-5", 8).unwrap();
        assert_eq!(cpus(&monitored.complement_within(8)), [0, 1, 6, 7]);
        assert!(CpuSet::all(8).complement_within(8).is_empty());
        let other = CpuSet::parse("0-3", 8).unwrap();
        assert_eq!(cpus(&monitored.difference(&other)), [4, 5]);
    }

    #[test]
    fn displays_canonical_list() {
        assert_eq!(CpuSet::parse("4,3,2,0", 8).unwrap().to_string(), "0,2-4");
        assert_eq!(CpuSet::parse("1-3,7", 8).unwrap().to_string(), "1-3,7");
        assert_eq!(CpuSet::parse("5", 8).unwrap().to_string(), "5");
        assert_eq!(CpuSet::all(1024).to_string(), "0-1023");
        assert_eq!(CpuSet::empty().to_string(), "");
        assert_eq!(
            format!("{:?}", CpuSet::parse("0,2", 8).unwrap()),
            "CpuSet(0,2)"
        );
    }

    #[test]
    fn display_round_trips() {
        let set = CpuSet::parse("0,2-4,63-64,100,1000-1023", 1024).unwrap();
        assert_eq!(CpuSet::parse(&set.to_string(), 1024).unwrap(), set);
    }
}
