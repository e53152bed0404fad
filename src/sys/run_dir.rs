//! The run directory (`/run/stalld/`) and the one rule for every file the daemon keeps there
//! or at a path it was given (pidfile, instance lock, boost journal, ring, saved RT runtime):
//! never through a symbolic link, never a file with other hard links, never a file owned by
//! another user than root or us, always with an explicit mode. Startup and shutdown only.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{
    fchmod, flock, fstat, ftruncate, lstat, mkdir, open, FileType, FlockOperation, Mode, OFlags,
};
use rustix::io::{pread, write, Errno};

/// Where the daemon keeps its lock, journal, ring and saved RT runtime.
pub const RUN_DIR: &str = "/run/stalld";
/// The single-instance lock's name in the run directory; it holds the running daemon's pid.
pub const LOCK_FILE: &str = "stalld.lock";

/// The lock that makes the daemon the only one on the machine: an exclusive `flock` on
/// `stalld.lock` in the run directory, held (across daemonizing: the forked daemon inherits
/// it) until the process ends, whatever way it ends.
#[derive(Debug)]
pub struct InstanceLock {
    file: OwnedFd,
}

/// What [`InstanceLock::try_take`] found.
#[derive(Debug)]
pub enum Locked {
    /// The lock is ours.
    Taken(InstanceLock),
    /// Another process holds it.
    Held {
        /// The holder's pid as it wrote it (`None` while it is starting).
        pid: Option<i32>,
        /// Says who holds it, for the user.
        message: String,
    },
}

impl InstanceLock {
    /// Takes the lock in `dir` (created if needed) and writes our pid into it; another daemon
    /// holding it is an error naming its pid.
    pub fn take(dir: &Path) -> Result<InstanceLock, String> {
        match InstanceLock::try_take(dir)? {
            Locked::Taken(lock) => Ok(lock),
            Locked::Held { message, .. } => Err(message),
        }
    }

    /// Takes the lock in `dir` (created if needed) and writes our pid into it, or says who
    /// holds it.
    pub fn try_take(dir: &Path) -> Result<Locked, String> {
        ensure_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = open_file(&path, OFlags::RDWR | OFlags::CREATE, 0o644)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut buf = [0u8; 16];
                let n = pread(&file, &mut buf, 0).unwrap_or(0);
                let pid = std::str::from_utf8(&buf[..n]).unwrap_or("").trim();
                let message = if pid.is_empty() {
                    format!("another stalld is starting (it holds {})", path.display())
                } else {
                    format!(
                        "another stalld is running (pid {pid}, it holds {}): stop it first",
                        path.display()
                    )
                };
                return Ok(Locked::Held {
                    pid: pid.parse().ok(),
                    message,
                });
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
        let lock = InstanceLock { file };
        lock.write_pid()?;
        Ok(Locked::Taken(lock))
    }

    /// Writes the current pid into the lock file: again after daemonizing, which changes it.
    pub fn write_pid(&self) -> Result<(), String> {
        let pid = format!("{}\n", rustix::process::getpid().as_raw_nonzero());
        ftruncate(&self.file, 0)
            .and_then(|()| rustix::io::pwrite(&self.file, pid.as_bytes(), 0))
            .map(|_| ())
            .map_err(|e| format!("cannot write the pid into {LOCK_FILE}: {e}"))
    }
}

/// Writes `text` as the whole content of the file at `path`, mode 0600, under
/// [`open_file`]'s rules.
pub fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let file = open_file(path, OFlags::WRONLY | OFlags::CREATE, 0o600)?;
    ftruncate(&file, 0)
        .and_then(|()| write(&file, text.as_bytes()))
        .and_then(|n| {
            if n == text.len() {
                Ok(())
            } else {
                Err(Errno::IO)
            }
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The content of the file at `path` under [`open_file`]'s rules, `None` if there is none.
pub fn read_file(path: &Path) -> Result<Option<String>, String> {
    if let Err(Errno::NOENT) = lstat(path) {
        return Ok(None);
    }
    let file = open_file(path, OFlags::RDONLY, 0o600)?;
    let mut buf = [0u8; 64];
    let n =
        pread(&file, &mut buf, 0).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// Creates `dir` with mode 0700 if it is absent (and missing parents with mode 0755: early
/// boot may have no `/run` yet). An existing one must be a real directory (not a symbolic
/// link to one) owned by root or by us.
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    make_dir(dir, 0o700)?;
    let stat = lstat(dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err(format!(
            "refusing {}: not a directory (a symbolic link?)",
            dir.display()
        ));
    }
    check_owner(dir, stat.st_uid)
}

/// Opens `path` with `flags` plus `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK`, creating it with
/// `mode` if `flags` has `O_CREAT`, and gives it exactly `mode`. Refuses a symbolic link,
/// anything but a regular file (a FIFO without blocking), a file with other hard links and one
/// owned by another user than root or us.
pub fn open_file(path: &Path, flags: OFlags, mode: u32) -> Result<OwnedFd, String> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let file = open(path, flags, Mode::from_raw_mode(mode)).map_err(|e| match e {
        Errno::LOOP => format!("refusing {}: it is a symbolic link", path.display()),
        e => format!("cannot open {}: {e}", path.display()),
    })?;
    let stat = fstat(&file).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(format!("refusing {}: not a regular file", path.display()));
    }
    if stat.st_nlink != 1 {
        return Err(format!(
            "refusing {}: it has {} hard links",
            path.display(),
            stat.st_nlink
        ));
    }
    check_owner(path, stat.st_uid)?;
    if stat.st_mode & 0o7777 != mode {
        fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    }
    Ok(file)
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    match mkdir(dir, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(Errno::NOENT) if dir.parent().is_some_and(|p| !p.as_os_str().is_empty()) => {
            make_dir(dir.parent().unwrap_or(dir), 0o755)?;
            mkdir(dir, Mode::from_raw_mode(mode))
                .or_else(|e| if e == Errno::EXIST { Ok(()) } else { Err(e) })
                .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))
        }
        Err(e) => Err(format!(
            "cannot create the directory {}: {e}",
            dir.display()
        )),
    }
}

fn check_owner(path: &Path, uid: u32) -> Result<(), String> {
    let us = rustix::process::geteuid().as_raw();
    if uid == 0 || uid == us {
        Ok(())
    } else {
        Err(format!(
            "refusing {}: owned by uid {uid}, neither root nor this user",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stalld-run-dir-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const RW_CREATE: OFlags = OFlags::RDWR.union(OFlags::CREATE);

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = temp_dir("lock");
        let lock = InstanceLock::take(&dir).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE)).unwrap().trim(), pid);
        let err = InstanceLock::take(&dir).unwrap_err();
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        drop(lock);
        InstanceLock::take(&dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn small_files_round_trip() {
        let dir = temp_dir("small");
        let path = dir.join("value");
        assert_eq!(read_file(&path).unwrap(), None);
        write_file(&path, "950000\n").unwrap();
        write_file(&path, "5\n").unwrap();
        assert_eq!(read_file(&path).unwrap().as_deref(), Some("5\n"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn creates_a_0700_directory_and_refuses_a_symlinked_one() {
        let base = temp_dir("dir");
        let dir = base.join("run").join("stalld");
        ensure_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        let parent = fs::metadata(base.join("run")).unwrap();
        assert_eq!(parent.permissions().mode() & 0o7777, 0o755);
        ensure_dir(&dir).unwrap();
        let link = base.join("link");
        symlink(&dir, &link).unwrap();
        assert!(ensure_dir(&link).unwrap_err().contains("not a directory"));
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn creates_with_the_exact_mode_and_fixes_an_old_one() {
        let dir = temp_dir("mode");
        let path = dir.join("file");
        open_file(&path, RW_CREATE, 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        open_file(&path, RW_CREATE, 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_symlinks_hard_links_and_foreign_files_without_writing() {
        let dir = temp_dir("links");
        let target = dir.join("target");
        fs::write(&target, "precious\n").unwrap();
        let link = dir.join("symlink");
        symlink(&target, &link).unwrap();
        assert!(open_file(&link, RW_CREATE, 0o600)
            .unwrap_err()
            .contains("symbolic link"));
        let dangling = dir.join("dangling");
        symlink(dir.join("nothing"), &dangling).unwrap();
        assert!(open_file(&dangling, RW_CREATE, 0o600).is_err());
        assert!(!dir.join("nothing").exists());
        let hard = dir.join("hard");
        fs::hard_link(&target, &hard).unwrap();
        assert!(open_file(&hard, RW_CREATE, 0o600)
            .unwrap_err()
            .contains("hard links"));
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        if rustix::process::geteuid().is_root() {
            let foreign = dir.join("foreign");
            fs::write(&foreign, "x").unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
            assert!(open_file(&foreign, RW_CREATE, 0o600)
                .unwrap_err()
                .contains("uid 65534"));
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
