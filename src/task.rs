//! Identity of a kernel task as the daemon sees it: thread id and command name.
//! Fixed size, `Copy`, no allocation; names from the kernel are untrusted bytes.

use core::fmt;

/// A kernel thread id (what the kernel calls a pid; `task_pid_nr`).
pub type Tid = i32;

/// Longest command name the kernel keeps (`TASK_COMM_LEN - 1`).
pub const COMM_MAX_LEN: usize = 15;

/// A task's command name, up to [`COMM_MAX_LEN`] raw bytes.
///
/// The kernel lets a name hold any byte but NUL, so `Display` prints control and non-ASCII
/// bytes as `?`: a hostile name can never forge a log line.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Comm {
    len: u8,
    bytes: [u8; COMM_MAX_LEN],
}

impl Comm {
    /// Keeps the first [`COMM_MAX_LEN`] bytes of `name`.
    pub fn new(name: &[u8]) -> Self {
        let len = name.len().min(COMM_MAX_LEN);
        let mut bytes = [0; COMM_MAX_LEN];
        bytes[..len].copy_from_slice(&name[..len]);
        Comm {
            #[allow(clippy::cast_possible_truncation, reason = "len <= COMM_MAX_LEN, 16")]
            len: len as u8,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for &b in self.as_bytes() {
            let c = if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            };
            f.write_char(c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spaces_and_parentheses() {
        assert_eq!(Comm::new(b"my task (x) 1").to_string(), "my task (x) 1");
    }

    #[test]
    fn truncates_to_kernel_length() {
        assert_eq!(
            Comm::new(b"0123456789abcdefgh").as_bytes(),
            b"0123456789abcde"
        );
    }

    #[test]
    fn control_bytes_cannot_forge_log_lines() {
        assert_eq!(Comm::new(b"a\nstalld: b\x1b").to_string(), "a?stalld: b?");
    }
}
