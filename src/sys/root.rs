//! Following PID 1 across `switch_root`: a daemon started from the initramfs keeps the
//! emptied initramfs as its root while `/proc`, `/sys`, `/dev` and `/run` are moved into the
//! real root, so every path it opens afterwards would fail. A `/proc` descriptor held since
//! startup still reaches PID 1's root (`/proc/1/root`); the daemon changes into it and
//! `chroot`s there, and its paths work again.
//!
//! Invariant: [`RootWatch::moved`] costs two `stat` calls and never allocates (it runs in the
//! monitor loop); [`RootWatch::follow`] runs once per switch.

use std::os::fd::OwnedFd;

use rustix::fs::{open, stat, statat, AtFlags, Mode, OFlags, Stat};
use rustix::io::Errno;
use rustix::process::{chdir, chroot, fchdir};

/// Whether this process runs from an initramfs: its root is the kernel's rootfs (ramfs or
/// tmpfs), which switch_root empties and leaves.
pub fn in_initramfs() -> bool {
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    rustix::fs::statfs(c"/").is_ok_and(|fs| {
        let kind = fs.f_type as u64;
        kind == RAMFS_MAGIC || kind == TMPFS_MAGIC
    })
}

/// A `/proc` directory opened at startup, before any switch of root.
#[derive(Debug)]
pub struct RootWatch {
    proc_dir: OwnedFd,
}

fn same_file(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

impl RootWatch {
    /// Opens `/proc` (it must be mounted).
    pub fn open() -> Result<RootWatch, Errno> {
        let proc_dir = open(
            c"/proc",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootWatch { proc_dir })
    }

    /// Whether PID 1 now has another root than this process (after `switch_root`). `false`
    /// when either cannot be read: nothing is followed on a guess.
    pub fn moved(&self) -> bool {
        match (
            statat(&self.proc_dir, c"1/root", AtFlags::empty()),
            stat(c"/"),
        ) {
            (Ok(init_root), Ok(own_root)) => !same_file(&init_root, &own_root),
            _ => false,
        }
    }

    /// Makes PID 1's root this process's root and working directory.
    pub fn follow(&self) -> Result<(), Errno> {
        let root = rustix::fs::openat(
            &self.proc_dir,
            c"1/root",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        fchdir(&root)?;
        chroot(c".")?;
        chdir(c"/")
    }
}
