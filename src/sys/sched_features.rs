//! The scheduler's feature switches (`<debugfs>/sched/features`), for `HRTICK_DL`: with it on,
//! the kernel ends a SCHED_DEADLINE runtime shorter than a tick on time (a high-resolution
//! timer); with it off, only at the next tick (4 ms at HZ=250).
//! Invariant: the daemon writes `NO_HRTICK_DL` back at exit exactly when it turned the feature
//! on, once, when the [`HrtickDl`] guard is dropped. Startup and exit only (allocates).

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    path: PathBuf,
    state: HrtickDlState,
}

impl HrtickDl {
    /// Turns `HRTICK_DL` on in the features file of the debugfs listed in `/proc/mounts`
    /// (else [`DEFAULT_DEBUGFS`]). `Err(PERM)` under kernel lockdown (debugfs files that can be
    /// written cannot even be opened then); `Err(NOENT)` without debugfs, or on a kernel
    /// without the feature (before 5.x it was part of `HRTICK`).
    pub fn enable() -> Result<HrtickDl, Errno> {
        let mount = debugfs::mount_points().into_iter().next().map_or_else(
            || PathBuf::from(std::ffi::OsStr::from_bytes(DEFAULT_DEBUGFS.to_bytes())),
            |p| PathBuf::from(std::ffi::OsStr::from_bytes(&p)),
        );
        Self::enable_at(&mount.join("sched/features"))
    }

    /// [`HrtickDl::enable`] on the features file at `path`.
    pub fn enable_at(path: &Path) -> Result<HrtickDl, Errno> {
        let state = match hrtick_dl_in(&read(path)?) {
            Some(true) => HrtickDlState::WasOn,
            Some(false) => {
                write(path, HRTICK_DL)?;
                if hrtick_dl_in(&read(path)?) != Some(true) {
                    return Err(Errno::PERM);
                }
                HrtickDlState::TurnedOn
            }
            None => return Err(Errno::NOENT),
        };
        Ok(HrtickDl {
            path: path.to_path_buf(),
            state,
        })
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

fn read(path: &Path) -> Result<Vec<u8>, Errno> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)?;
    let mut buf = vec![0u8; FEATURES_BYTES];
    let len = read_small_file(&c_path, &mut buf)?.len();
    buf.truncate(len);
    Ok(buf)
}

fn write(path: &Path, feature: &[u8]) -> Result<(), Errno> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(feature))
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
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
        let path = Path::new("/nonexistent/sched/features");
        assert_eq!(HrtickDl::enable_at(path).err(), Some(Errno::NOENT));
    }

    #[test]
    fn already_on_is_left_as_it_is_and_a_kernel_without_it_is_noent() {
        let path = std::env::temp_dir().join(format!("stalld-features-{}", std::process::id()));
        std::fs::write(&path, features("HRTICK_DL")).unwrap();
        let guard = HrtickDl::enable_at(&path).unwrap();
        assert_eq!(guard.state(), &HrtickDlState::WasOn);
        drop(guard);
        assert_eq!(std::fs::read(&path).unwrap(), features("HRTICK_DL"));
        std::fs::write(&path, b"NO_HRTICK DOUBLE_TICK\n").unwrap();
        assert_eq!(HrtickDl::enable_at(&path).err(), Some(Errno::NOENT));
        std::fs::remove_file(&path).unwrap();
    }
}
