//! The run directory (`/run/stalld/`) and the one rule for every file the daemon keeps there
//! or at a path it was given (pidfile, instance lock, boost journal, ring, saved RT runtime):
//! never through a symbolic link, never a file with other hard links, never a file owned by
//! another user than root or us, always with an explicit mode. Startup and shutdown only.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{fchmod, fstat, lstat, mkdir, open, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Where the daemon keeps its lock, journal, ring and saved RT runtime.
pub const RUN_DIR: &str = "/run/stalld";

/// Creates `dir` with mode 0700 if it is absent. An existing one must be a real directory
/// (not a symbolic link to one) owned by root or by us.
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    match mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(format!("cannot create the directory {}: {e}", dir.display())),
    }
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
        let dir = std::env::temp_dir().join(format!("stalld-run-dir-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const RW_CREATE: OFlags = OFlags::RDWR.union(OFlags::CREATE);

    #[test]
    fn creates_a_0700_directory_and_refuses_a_symlinked_one() {
        let base = temp_dir("dir");
        let dir = base.join("stalld");
        ensure_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o7777, 0o700);
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
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        open_file(&path, RW_CREATE, 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
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
