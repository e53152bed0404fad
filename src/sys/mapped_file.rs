//! A fixed-size file shared with the page cache through a locked `MAP_SHARED` mapping: the
//! ring and the boost journal. Opened under [`run_dir`](super::run_dir)'s rules and locked
//! with `flock` against a second writer. Invariant: after [`MappedFile::open`], a store into
//! [`MappedFile::bytes`] is a memory write (no system call, no allocation, no wait on I/O),
//! and what was stored stays in the file when the process dies, SIGKILL included.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::{fallocate, flock, fstat, ftruncate, FallocateFlags, FlockOperation, OFlags};
use rustix::io::Errno;
use rustix::mm::{mlock, mmap, munmap, MapFlags, ProtFlags};

use super::run_dir;

/// An open, mapped and locked file of a fixed size.
#[derive(Debug)]
pub struct MappedFile {
    map: NonNull<u8>,
    len: usize,
    /// Kept open for the `flock` that keeps a second writer off the file.
    _file: OwnedFd,
}

// SAFETY: the mapping is owned by the `MappedFile` alone (like a `Box<[u8]>`); moving it to
// another thread moves that ownership.
unsafe impl Send for MappedFile {}

impl MappedFile {
    /// Opens (creating it, and its parent directory with mode 0700, if needed) the file at
    /// `path` with mode 0600 and [`run_dir::open_file`]'s refusals, locks it with `flock`, makes
    /// it exactly `len` bytes (preallocated) and maps it. Also returns whether the file already
    /// had that size, i.e. whether its content is worth reading. Startup only (may allocate).
    pub fn open(path: &Path, len: usize) -> Result<(MappedFile, bool), String> {
        let fail = |what: &str, e: Errno| format!("cannot {what} {}: {e}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            run_dir::ensure_dir(parent)?;
        }
        let file = run_dir::open_file(path, OFlags::RDWR | OFlags::CREATE, 0o600)?;
        flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|e| match e {
            Errno::WOULDBLOCK => format!("{} is in use by another stalld", path.display()),
            e => fail("lock", e),
        })?;
        let stat = fstat(&file).map_err(|e| fail("stat", e))?;
        let same_size = u64::try_from(stat.st_size).ok() == Some(len as u64);
        if !same_size {
            ftruncate(&file, 0).map_err(|e| fail("truncate", e))?;
            match fallocate(&file, FallocateFlags::empty(), 0, len as u64) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
                    ftruncate(&file, len as u64).map_err(|e| fail("size", e))?;
                }
                Err(e) => return Err(fail("preallocate", e)),
            }
        }
        // SAFETY: a fresh mapping of `len` bytes of an open file, placed by the kernel (no
        // address given), so it overlaps nothing of ours; the file is that long.
        let map = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| fail("map", e))?;
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(|| fail("map", Errno::NOMEM))?;
        let mapped = MappedFile {
            map,
            len,
            _file: file,
        };
        // SAFETY: the range is exactly our mapping.
        unsafe { mlock(mapped.map.as_ptr().cast(), mapped.len) }.map_err(|e| fail("mlock", e))?;
        Ok((mapped, same_size))
    }

    /// The mapped file.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `map` is a live read-write mapping of `len` bytes owned by `self` (unmapped
        // only in Drop), and `&mut self` makes this the only reference into it here. Other
        // processes may write the file too (root could); the formats built on it check what
        // they read back.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: our own mapping, not used after this.
        let _ = unsafe { munmap(self.map.as_ptr().cast(), self.len) };
    }
}
