//! Ignore lists (-i/-I): comma-separated regexes matched against task names.
//! Regexes compile once at startup; `matches` copies the name into a stack buffer and does not
//! allocate in steady state. Like upstream, a pattern matches anywhere in the name (unanchored).

use core::fmt;

use regex_lite::Regex;

/// Longest name matched in full. `comm` is at most 15 bytes, but `/proc/<pid>/comm` of a
/// workqueue worker can show a longer name (`kworker/u8:3-events_unbound`); longer names are
/// matched on their first `MAX_NAME_LEN` bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Byte that stands for any non-ASCII byte of a name, which may not be UTF-8.
const NON_ASCII_STAND_IN: u8 = b'?';

/// Compiled name patterns; a name is ignored if any pattern matches it.
#[derive(Clone, Default)]
pub struct IgnoreList {
    patterns: Vec<Regex>,
}

/// A pattern that does not compile. Display is one line naming the pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreError {
    pattern: String,
    reason: String,
}

impl IgnoreError {
    /// The pattern as written in the list.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Display for IgnoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad regex {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for IgnoreError {}

impl IgnoreList {
    /// The list that ignores nothing.
    pub fn empty() -> IgnoreList {
        IgnoreList::default()
    }

    /// Compiles a comma-separated list such as `kworker.*,ksoftirqd`. Whitespace around each
    /// pattern is dropped and empty entries are skipped (as upstream's `strtok` does), so an
    /// empty list compiles to the empty `IgnoreList`. A comma cannot appear inside a pattern.
    pub fn parse(list: &str) -> Result<IgnoreList, IgnoreError> {
        let mut patterns = Vec::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let regex = Regex::new(pattern).map_err(|err| IgnoreError {
                pattern: pattern.to_owned(),
                reason: one_line(&err.to_string()),
            })?;
            patterns.push(regex);
        }
        Ok(IgnoreList { patterns })
    }

    /// Whether the list has no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether any pattern matches `name`: raw kernel bytes, cut at the first NUL, with every
    /// non-ASCII byte replaced by `?` before matching.
    pub fn matches(&self, name: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let mut buffer = [0u8; MAX_NAME_LEN];
        let name = ascii_name(name, &mut buffer);
        self.patterns.iter().any(|regex| regex.is_match(name))
    }
}

/// Lists the patterns: `IgnoreList["kworker.*", "ksoftirqd"]`.
impl fmt::Debug for IgnoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IgnoreList")?;
        f.debug_list()
            .entries(self.patterns.iter().map(Regex::as_str))
            .finish()
    }
}

/// Two lists are equal when they hold the same patterns in the same order.
impl PartialEq for IgnoreList {
    fn eq(&self, other: &IgnoreList) -> bool {
        self.patterns.len() == other.patterns.len()
            && self
                .patterns
                .iter()
                .zip(other.patterns.iter())
                .all(|(a, b)| a.as_str() == b.as_str())
    }
}

impl Eq for IgnoreList {}

/// Copies `name` (up to its first NUL, at most `MAX_NAME_LEN` bytes) into `buffer` as ASCII.
fn ascii_name<'b>(name: &[u8], buffer: &'b mut [u8; MAX_NAME_LEN]) -> &'b str {
    let mut len = 0;
    for (slot, &byte) in buffer
        .iter_mut()
        .zip(name.iter().take_while(|&&byte| byte != 0))
    {
        *slot = if byte.is_ascii() {
            byte
        } else {
            NON_ASCII_STAND_IN
        };
        len += 1;
    }
    // Every byte is ASCII, so this cannot fail; the fallback keeps `matches` panic-free.
    core::str::from_utf8(&buffer[..len]).unwrap_or_default()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_any_pattern_unanchored() {
        let list = IgnoreList::parse("kworker.*,ksoftirqd").unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.matches(b"kworker/3:1"));
        assert!(list.matches(b"ksoftirqd/0"));
        assert!(list.matches(b"my-ksoftirqd-x"));
        assert!(!list.matches(b"cyclictest"));
        assert!(!list.matches(b""));
    }

    #[test]
    fn anchors_are_honoured() {
        let list = IgnoreList::parse("^irq/,rcu$").unwrap();
        assert!(list.matches(b"irq/24-eth0"));
        assert!(!list.matches(b"myirq/24"));
        assert!(list.matches(b"foo_rcu"));
        assert!(!list.matches(b"rcu_preempt"));
        let exact = IgnoreList::parse("^ktimers/0$").unwrap();
        assert!(exact.matches(b"ktimers/0"));
        assert!(!exact.matches(b"ktimers/01"));
    }

    #[test]
    fn posix_classes_and_alternation_work() {
        let list = IgnoreList::parse("^rcu[[:alpha:]]+/[[:digit:]]+$,(foo|bar)").unwrap();
        assert!(list.matches(b"rcuc/12"));
        assert!(!list.matches(b"rcuc/x"));
        assert!(list.matches(b"xbar"));
    }

    #[test]
    fn empty_list_ignores_nothing() {
        for list in [IgnoreList::empty(), IgnoreList::parse("").unwrap()] {
            assert!(list.is_empty());
            assert_eq!(list.len(), 0);
            assert!(!list.matches(b"anything"));
        }
    }

    #[test]
    fn skips_empty_entries_and_trims() {
        let list = IgnoreList::parse(" kworker , ,ksoftirqd,").unwrap();
        assert_eq!(list, IgnoreList::parse("kworker,ksoftirqd").unwrap());
        assert!(list.matches(b"ksoftirqd/1"));
        assert!(
            !list.matches(b"bash"),
            "an empty entry must not match everything"
        );
    }

    #[test]
    fn bad_pattern_names_the_pattern() {
        let err = IgnoreList::parse("kworker,foo(,bar").unwrap_err();
        assert_eq!(err.pattern(), "foo(");
        let message = err.to_string();
        assert!(message.starts_with("bad regex \"foo(\": "), "{message}");
        assert!(!message.contains('\n'));
        assert!(IgnoreList::parse("[z-a]").is_err());
        assert!(IgnoreList::parse("*").is_err());
    }

    #[test]
    fn non_utf8_name_matches_with_stand_in() {
        let list = IgnoreList::parse("^caf\\?$,^x.y$").unwrap();
        assert!(list.matches(b"caf\xe9"));
        assert!(list.matches(b"x\xffy"));
        assert!(!list.matches(b"x\xff\xfey"));
    }

    #[test]
    fn name_stops_at_nul_and_long_names_are_cut() {
        let list = IgnoreList::parse("^bash$").unwrap();
        assert!(list.matches(b"bash\0\0\0garbage"));
        let long = IgnoreList::parse("^a+$").unwrap();
        assert!(long.matches(&[b'a'; 500]));
        let tail = IgnoreList::parse("z").unwrap();
        let mut name = vec![b'a'; MAX_NAME_LEN];
        name.push(b'z');
        assert!(!tail.matches(&name));
    }

    #[test]
    fn debug_lists_patterns() {
        let list = IgnoreList::parse("kworker.*,ksoftirqd").unwrap();
        assert_eq!(
            format!("{list:?}"),
            r#"IgnoreList["kworker.*", "ksoftirqd"]"#
        );
        assert_eq!(format!("{:?}", IgnoreList::empty()), "IgnoreList[]");
    }

    #[test]
    fn equality_compares_patterns() {
        assert_eq!(
            IgnoreList::parse("a,b").unwrap(),
            IgnoreList::parse("a,b").unwrap()
        );
        assert_ne!(
            IgnoreList::parse("a,b").unwrap(),
            IgnoreList::parse("b,a").unwrap()
        );
        assert_ne!(
            IgnoreList::parse("a").unwrap(),
            IgnoreList::parse("a,b").unwrap()
        );
    }
}
