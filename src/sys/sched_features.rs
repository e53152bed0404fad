//! The scheduler's feature switches (`<debugfs>/sched/features`), for `HRTICK_DL`: with it on,
//! the kernel ends a SCHED_DEADLINE runtime shorter than a tick on time (a high-resolution
//! timer); with it off, only at the next tick (4 ms at HZ=250).
//! Invariant: the daemon writes `NO_HRTICK_DL` back at exit exactly when it turned the feature
//! on, once, when the [`HrtickDl`] guard is dropped. Startup and exit only (allocates).

use core::ffi::CStr;
use std::ffi::CString;

use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;

use crate::sys::debugfs::{self, DEFAULT_DEBUGFS};
use crate::sys::lines::read_small_file;

/// The feature that arms a high-resolution timer at the end of a SCHED_DEADLINE runtime.
const HRTICK_DL: &[u8] = b"HRTICK_DL";
/// The same feature, off.
const NO_HRTICK_DL: &[u8] = b"NO_HRTICK_DL";

/// `sched/features` is a single line of about 60 names.
const FEATURES_BYTES: usize = 4096;

/// How `HRTICK_DL` was found, and what the guard does at exit.
#[derive(Debug, PartialEq, Eq)]
pub enum HrtickDlState {
    /// Already on: left as it is.
    WasOn,
    /// Turned on by the daemon: turned off again when the guard is dropped.
    TurnedOn,
}

/// `HRTICK_DL` on while it lives; turned back off at drop if the daemon turned it on.
#[derive(Debug)]
#[must_use = "dropping it turns HRTICK_DL back off"]
pub struct HrtickDl {
    path: CString,
    state: HrtickDlState,
}

impl HrtickDl {
    /// Turns `HRTICK_DL` on in the features file of the debugfs listed in `/proc/mounts`
    /// (else [`DEFAULT_DEBUGFS`]). `Err(PERM)` under kernel lockdown (debugfs files that can be
    /// written cannot even be opened then); `Err(NOENT)` without debugfs, or on a kernel
    /// without the feature (before 5.x it was part of `HRTICK`).
    pub fn enable() -> Result<HrtickDl, Errno> {
        let mut path = (debugfs::mount_points().into_iter().next())
            .unwrap_or_else(|| DEFAULT_DEBUGFS.to_bytes().to_vec());
        path.extend_from_slice(b"/sched/features");
        Self::enable_at(CString::new(path).map_err(|_| Errno::INVAL)?)
    }

    /// [`HrtickDl::enable`] on the features file at `path`.
    pub fn enable_at(path: CString) -> Result<HrtickDl, Errno> {
        let state = if is_on(&path)? {
            HrtickDlState::WasOn
        } else {
            write(&path, HRTICK_DL)?;
            if !is_on(&path)? {
                return Err(Errno::PERM);
            }
            HrtickDlState::TurnedOn
        };
        Ok(HrtickDl { path, state })
    }

    /// Whether it was on already or the daemon turned it on.
    pub fn state(&self) -> &HrtickDlState {
        &self.state
    }
}

impl Drop for HrtickDl {
    fn drop(&mut self) {
        if self.state == HrtickDlState::TurnedOn {
            let _ = write(&self.path, NO_HRTICK_DL);
        }
    }
}

/// `Some(on)` when the features line names `HRTICK_DL` (on) or `NO_HRTICK_DL` (off).
fn hrtick_dl_in(features: &[u8]) -> Option<bool> {
    features
        .split(u8::is_ascii_whitespace)
        .find_map(|name| match name {
            HRTICK_DL => Some(true),
            NO_HRTICK_DL => Some(false),
            _ => None,
        })
}

/// Whether the features file at `path` says `HRTICK_DL` is on; `Err(NOENT)` if it has no
/// such feature.
fn is_on(path: &CStr) -> Result<bool, Errno> {
    let mut buf = [0u8; FEATURES_BYTES];
    hrtick_dl_in(read_small_file(path, &mut buf)?).ok_or(Errno::NOENT)
}

fn write(path: &CStr, feature: &[u8]) -> Result<(), Errno> {
    let file = open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&file, feature).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A features file as 6.18 prints it, with `HRTICK_DL` in the given state.
    fn features(hrtick_dl: &str) -> Vec<u8> {
        format!("PLACE_LAG RUN_TO_PARITY NO_HRTICK {hrtick_dl} DOUBLE_TICK NONTASK_CAPACITY\n")
            .into_bytes()
    }

    #[test]
    fn finds_the_feature_and_its_state() {
        assert_eq!(hrtick_dl_in(&features("HRTICK_DL")), Some(true));
        assert_eq!(hrtick_dl_in(&features("NO_HRTICK_DL")), Some(false));
        assert_eq!(hrtick_dl_in(b"NO_HRTICK DOUBLE_TICK\n"), None);
        assert_eq!(hrtick_dl_in(b""), None);
    }

    #[test]
    fn a_missing_file_is_noent() {
        let path = c"/nonexistent/sched/features".to_owned();
        assert_eq!(HrtickDl::enable_at(path).err(), Some(Errno::NOENT));
    }

    #[test]
    fn already_on_is_left_as_it_is_and_a_kernel_without_it_is_noent() {
        let path = std::env::temp_dir().join(format!("stalld-features-{}", std::process::id()));
        let c_path = || CString::new(path.to_str().unwrap()).unwrap();
        std::fs::write(&path, features("HRTICK_DL")).unwrap();
        let guard = HrtickDl::enable_at(c_path()).unwrap();
        assert_eq!(guard.state(), &HrtickDlState::WasOn);
        drop(guard);
        assert_eq!(std::fs::read(&path).unwrap(), features("HRTICK_DL"));
        std::fs::write(&path, b"NO_HRTICK DOUBLE_TICK\n").unwrap();
        assert_eq!(HrtickDl::enable_at(c_path()).err(), Some(Errno::NOENT));
        std::fs::remove_file(&path).unwrap();
    }
}
