//! debugfs, where the scheduler's debug files live: found where `/proc/mounts` says, or
//! mounted by the daemon, which then unmounts it when done.
//! Invariant: a debugfs the daemon mounted is unmounted exactly once, when its
//! [`MountedDebugfs`] is dropped, unless it was left to others
//! ([`MountedDebugfs::leave_mounted`]); one that was mounted before is never touched. Startup and
//! exit only (allocates).

use core::ffi::CStr;
use std::ffi::CString;

use rustix::io::Errno;

use crate::sys::lines::LineReader;
use crate::sys::proc_files;

/// Where debugfs is mounted when nothing says otherwise.
pub const DEFAULT_DEBUGFS: &CStr = c"/sys/kernel/debug";

/// Longest `/proc/mounts` line read whole (longer ones are skipped).
const MOUNTS_LINE_BYTES: usize = 4096;

/// Mount points of debugfs listed in `/proc/mounts` (none if it cannot be read).
pub fn mount_points() -> Vec<Vec<u8>> {
    let mut reader = LineReader::<MOUNTS_LINE_BYTES>::new();
    let mut points = Vec::new();
    let _ = reader.for_each_line(c"/proc/mounts", |line| {
        points.extend(proc_files::mount_point_of_type(line, b"debugfs"));
    });
    points
}

/// A debugfs this process mounted: lazily unmounted when dropped.
#[derive(Debug)]
#[must_use = "dropping it unmounts debugfs at once"]
pub struct MountedDebugfs {
    target: CString,
}

impl MountedDebugfs {
    /// Where it is mounted.
    pub fn target(&self) -> &CStr {
        &self.target
    }

    /// Leaves it mounted for good: it now serves others (the real system after switch_root
    /// moved `/sys` with it, or the stalld that takes over).
    pub fn leave_mounted(self) {
        std::mem::forget(self);
    }
}

impl Drop for MountedDebugfs {
    fn drop(&mut self) {
        // MNT_DETACH: a reader that still has a file open keeps it until it closes it.
        // SAFETY: `target` is a NUL-terminated string that outlives the call.
        let _ = unsafe { libc::umount2(self.target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Mounts debugfs at [`DEFAULT_DEBUGFS`] when `/proc/mounts` lists none (the daemon may start
/// before anything is mounted). `Ok(None)`: one is mounted already, left as it is.
pub fn mount_if_absent() -> Result<Option<MountedDebugfs>, Errno> {
    if !mount_points().is_empty() {
        return Ok(None);
    }
    mount(DEFAULT_DEBUGFS)?;
    Ok(Some(MountedDebugfs {
        target: DEFAULT_DEBUGFS.into(),
    }))
}

/// `mount("debugfs", target, "debugfs", 0, NULL)`: rustix is built without its `mount`
/// feature, so this calls libc directly.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/mount.2.html)
fn mount(target: &CStr) -> Result<(), Errno> {
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, and a null
    // `data` is allowed for debugfs.
    let rc = unsafe {
        libc::mount(
            c"debugfs".as_ptr(),
            target.as_ptr(),
            c"debugfs".as_ptr(),
            0,
            core::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
}
