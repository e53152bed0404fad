//! The daemon as a process: clock, privileges, CPU count, daemonizing and its pidfile.
//! Invariant: [`monotonic_ns`] is the only clock of the monitor loop and never allocates; the
//! rest runs at startup (or in `Drop` at exit) and may allocate.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, ftruncate, lstat, open, unlink, Mode, OFlags};
use rustix::io::{write, Errno};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{chdir, geteuid, getpid, setsid, Pid};
use rustix::stdio::{dup2_stderr, dup2_stdin, dup2_stdout};
use rustix::time::{clock_gettime, ClockId};

use super::run_dir;

/// Bit of `CAP_SYS_NICE` in the capability sets (`include/uapi/linux/capability.h`).
const CAP_SYS_NICE: u32 = 23;

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds: never jumps with the wall clock.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/clock_gettime.2.html)
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    geteuid().is_root()
}

/// Whether the effective capabilities include `CAP_SYS_NICE` (needed to boost other users'
/// tasks), from `CapEff` in `/proc/self/status`. `false` if it cannot be read.
pub fn has_cap_sys_nice() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| cap_eff(&status))
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`, fixed since Linux 3.8).
const INITIAL_PID_NAMESPACE_INO: u64 = 0xEFFF_FFFC;

/// Whether the daemon runs in the initial PID namespace, from the inode of
/// `/proc/self/ns/pid` (the same whatever `/proc` is mounted there); `None` if it cannot be
/// read.
pub fn in_initial_pid_namespace() -> Option<bool> {
    let ns = rustix::fs::stat("/proc/self/ns/pid").ok()?;
    Some(ns.st_ino == INITIAL_PID_NAMESPACE_INO)
}

/// The `CapEff:` hex mask of a `/proc/<pid>/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(value.trim(), 16).ok()
}

/// The number of CPU ids the kernel may ever use (highest possible CPU + 1), from
/// `/sys/devices/system/cpu/possible`, else `sysconf(_SC_NPROCESSORS_CONF)`, else 1.
///
/// The sysfs file comes first because musl's `sysconf` answers `_SC_NPROCESSORS_CONF` with
/// the size of the caller's affinity mask, which is wrong for a daemon pinned with `-a`.
pub fn configured_cpus() -> u32 {
    fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|list| highest_cpu(&list))
        .map(|highest| highest.saturating_add(1))
        .or_else(sysconf_cpus_conf)
        .unwrap_or(1)
}

/// The highest CPU of a kernel CPU list such as `0-3,8-11`.
fn highest_cpu(list: &str) -> Option<u32> {
    crate::cpuset::CpuSet::parse(list, crate::cpuset::MAX_CPUS_U32)
        .ok()?
        .iter()
        .last()
}

/// `sysconf(_SC_NPROCESSORS_CONF)`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man3/sysconf.3.html)
fn sysconf_cpus_conf() -> Option<u32> {
    // SAFETY: `sysconf` only reads system configuration; the name is a valid constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u32::try_from(n).ok().filter(|&n| n > 0)
}

/// Detaches from the terminal: fork, `setsid`, fork again (so the daemon can never reacquire
/// a terminal), `chdir("/")`, stdin/stdout/stderr to `/dev/null`. The first parent waits until
/// the daemon reports through the returned [`StartupReport`]: it exits 0 once the daemon is
/// ready, else with the daemon's exit code and error message on its stderr (1 if the daemon
/// died without a word).
///
/// Write the pidfile afterwards: the pid changes.
///
/// # Safety
/// The process must be single-threaded (call it before spawning any thread): only the calling
/// thread survives `fork`, and a lock another thread held would stay locked forever.
pub unsafe fn daemonize() -> Result<StartupReport, Errno> {
    let (report_read, report_write) = pipe_with(PipeFlags::CLOEXEC)?;
    // SAFETY: the caller guarantees the process is single-threaded.
    if unsafe { fork() }? != 0 {
        drop(report_write);
        exit_now(wait_for_startup(&report_read));
    }
    drop(report_read);
    setsid()?;
    // SAFETY: still single-threaded: the child of a single-threaded process has one thread.
    if unsafe { fork() }? != 0 {
        exit_now(0);
    }
    chdir("/")?;
    let null = open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    dup2_stdin(&null)?;
    dup2_stdout(&null)?;
    dup2_stderr(&null)?;
    Ok(StartupReport {
        pipe: Some(report_write),
    })
}

/// The daemon's word to the process that started it, said once: ready, or failed with an exit
/// code and a message. In the foreground there is nobody to tell.
#[derive(Debug, Default)]
pub struct StartupReport {
    pipe: Option<OwnedFd>,
}

impl StartupReport {
    /// Startup is complete: the starting process exits 0.
    pub fn ready(&mut self) {
        self.say(0, "");
    }

    /// Startup failed with `message`: the starting process prints it and exits with `code`.
    /// Nothing happens after [`StartupReport::ready`].
    pub fn failed(&mut self, code: u8, message: &str) {
        self.say(code, message);
    }

    fn say(&mut self, code: u8, message: &str) {
        if let Some(pipe) = self.pipe.take() {
            let _ = write(&pipe, &[code]).and_then(|_| write(&pipe, message.as_bytes()));
        }
    }
}

/// The first parent's side: reads the daemon's report until the pipe closes and returns the
/// exit code, printing the daemon's message on stderr. Raw reads and writes into a fixed
/// buffer: it runs in a child forked from a process that may have had other threads.
fn wait_for_startup(pipe: &OwnedFd) -> i32 {
    const PREFIX: &[u8] = b"stalld: ";
    let mut report = [0u8; 4096];
    report[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut len = PREFIX.len();
    let end = report.len() - 1;
    while len < end {
        match rustix::io::read(pipe, &mut report[len..end]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    if len == PREFIX.len() {
        let died = b"stalld: the daemon exited during startup (see its log)\n";
        let _ = write(rustix::stdio::stderr(), died);
        return 1;
    }
    let code = report[PREFIX.len()];
    if len > PREFIX.len() + 1 {
        report.copy_within(PREFIX.len() + 1..len, PREFIX.len());
        len -= 1;
        report[len] = b'\n';
        let _ = write(rustix::stdio::stderr(), &report[..=len]);
    }
    i32::from(code)
}

/// `fork()`—Returns the child's pid in the parent and 0 in the child.
///
/// # Safety
/// The process must be single-threaded, as for [`daemonize`].
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/fork.2.html)
unsafe fn fork() -> Result<i32, Errno> {
    // SAFETY: the caller guarantees the process is single-threaded, so no lock can be held by
    // a thread that does not exist in the child.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(pid)
    }
}

/// Runs `body` in a forked child, which exits with the code `body` returns; returns the
/// child's pid (the caller reaps it).
///
/// # Safety
/// The process must be single-threaded, as for [`daemonize`].
pub unsafe fn fork_with(body: impl FnOnce() -> i32) -> Result<Pid, Errno> {
    // SAFETY: the caller guarantees the process is single-threaded.
    let pid = unsafe { fork() }?;
    if pid == 0 {
        exit_now(body());
    }
    Pid::from_raw(pid).ok_or(Errno::IO)
}

/// Starts this program again (`/proc/self/exe`) with `argv` (argv[0] first) and its stderr on
/// `stderr`; returns the child's pid. Everything the child needs is built before `fork`; after
/// it the child only calls `dup2`, `execv` and `_exit`, which are async-signal-safe, so a lock
/// held by another thread of the parent cannot block it.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/fork.2.html),
///    [execv(3)](https://man7.org/linux/man-pages/man3/exec.3.html)
pub fn spawn_self(argv: &[&CStr], stderr: BorrowedFd<'_>) -> Result<Pid, Errno> {
    let argv = ArgvPointers::new(argv);
    // SAFETY: the child runs only async-signal-safe calls (dup2, execv, _exit) on memory
    // prepared before the fork, so it is sound in a multi-threaded parent.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `stderr` is an open descriptor of this process.
        unsafe { libc::dup2(stderr.as_raw_fd(), 2) };
        argv.exec_self();
        exit_now(127);
    }
    Pid::from_raw(pid)
        .ok_or_else(|| Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
}

/// An `argv` array for `execv`, built before a `fork` so that the child allocates nothing.
struct ArgvPointers<'a> {
    pointers: Vec<*const libc::c_char>,
    _strings: core::marker::PhantomData<&'a CStr>,
}

impl<'a> ArgvPointers<'a> {
    fn new(argv: &[&'a CStr]) -> Self {
        let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
        pointers.push(core::ptr::null());
        ArgvPointers {
            pointers,
            _strings: core::marker::PhantomData,
        }
    }

    /// `execv("/proc/self/exe", argv)`: this program again; returns only if that failed.
    fn exec_self(&self) {
        // SAFETY: the path and each argument are NUL-terminated strings that outlive the call
        // (the lifetime `'a`), and the array ends with a null pointer.
        unsafe { libc::execv(c"/proc/self/exe".as_ptr(), self.pointers.as_ptr()) };
    }
}

/// Where systemd says the system runs from an initramfs.
const INITRD_RELEASE: &str = "/etc/initrd-release";

/// In an initramfs managed by systemd (it writes [`INITRD_RELEASE`]), `systemctl switch-root`
/// kills every process whose `argv[0]` does not begin with `@` (its "root storage daemon"
/// rule). There the daemon executes itself again as `@stalld`, with the same arguments, so
/// that it survives the switch and goes on protecting; anywhere else this does nothing.
/// Returns only if it did not re-execute, with the reason when it tried and failed.
pub fn survive_initrd_switch() -> Result<(), String> {
    let mut args = std::env::args_os();
    let first = args.next().unwrap_or_default();
    if first.as_bytes().first() == Some(&b'@') || !Path::new(INITRD_RELEASE).exists() {
        return Ok(());
    }
    let mut owned = vec![CString::from(c"@stalld")];
    for arg in args {
        owned.push(CString::new(arg.into_vec()).map_err(|e| e.to_string())?);
    }
    let argv: Vec<&CStr> = owned.iter().map(CString::as_c_str).collect();
    ArgvPointers::new(&argv).exec_self();
    Err(format!(
        "cannot execute itself as @stalld ({}): systemd's switch-root may kill it",
        io::Error::last_os_error()
    ))
}

/// `_exit(code)`—Ends the process at once, without running atexit handlers or flushing std
/// buffers that the other side of a `fork` still owns.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/_exit.2.html)
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes any status and never returns.
    unsafe { libc::_exit(code) }
}

/// A pidfile that is removed again when dropped, if it is still the one written.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    /// Kept open so that its inode cannot be freed and reused by a file that replaced it.
    fd: OwnedFd,
}

impl Pidfile {
    /// Writes the current pid and `\n` to `path`, mode 0644 whatever the umask, under
    /// [`run_dir::open_file`]'s rules: never through a symbolic link, only a regular file
    /// (a FIFO is refused without blocking) with no other hard links, owned by root or us.
    /// An existing such file is truncated and reused.
    pub fn create(path: &Path) -> io::Result<Pidfile> {
        let fd = run_dir::open_file(path, OFlags::WRONLY | OFlags::CREATE, 0o644)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("pidfile {e}")))?;
        let content = format!("{}\n", getpid().as_raw_nonzero());
        ftruncate(&fd, 0)
            .and_then(|()| write(&fd, content.as_bytes()))
            .and_then(|n| {
                if n == content.len() {
                    Ok(())
                } else {
                    Err(Errno::IO)
                }
            })
            .map_err(|e| pidfile_error(path, e))?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// Where the pidfile was written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if let (Ok(ours), Ok(now)) = (fstat(&self.fd), lstat(&self.path)) {
            if ours.st_dev == now.st_dev && ours.st_ino == now.st_ino {
                let _ = unlink(&self.path);
            }
        }
    }
}

fn pidfile_error(path: &Path, e: Errno) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("pidfile {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::FileType;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::os::unix::net::UnixStream;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stalld-process-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tests_run_in_the_initial_pid_namespace() {
        assert_eq!(in_initial_pid_namespace(), Some(true));
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b - a >= 2_000_000, "{a} {b}");
    }

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tstalld\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t0000000000800000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some(1 << CAP_SYS_NICE));
        assert_eq!(cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn root_has_cap_sys_nice() {
        if is_root() {
            assert!(has_cap_sys_nice());
        }
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(highest_cpu("0\n"), Some(0));
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        assert_eq!(highest_cpu("0-3,8-11\n"), Some(11));
        assert_eq!(highest_cpu("0,5,2"), Some(5));
        assert_eq!(highest_cpu(""), None);
        assert_eq!(highest_cpu("0-x"), None);
    }

    #[test]
    fn configured_cpus_covers_online_cpus() {
        let online =
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap());
        assert!(configured_cpus() >= online);
    }

    #[test]
    fn pidfile_has_pid_and_mode_0644_and_is_removed_on_drop() {
        let dir = temp_dir("create");
        let path = dir.join("stalld.pid");
        // A leftover with other permissions and longer content: fixed and truncated.
        fs::write(&path, "999999999999\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(pidfile.path(), path);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        drop(pidfile);
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pidfile_refuses_symlink_and_leaves_target_alone() {
        let dir = temp_dir("symlink");
        let target = dir.join("target");
        fs::write(&target, "precious\n").unwrap();
        let link = dir.join("stalld.pid");
        symlink(&target, &link).unwrap();
        let err = Pidfile::create(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pidfile_refuses_fifo_without_blocking() {
        let dir = temp_dir("fifo");
        let path = dir.join("stalld.pid");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(Pidfile::create(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pidfile_replaced_by_another_is_left_alone() {
        let dir = temp_dir("replaced");
        let path = dir.join("stalld.pid");
        let pidfile = Pidfile::create(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, "1\n").unwrap();
        drop(pidfile);
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n");
        let _ = fs::remove_dir_all(&dir);
    }

    /// What the daemonized grandchild reports: pid, session id, stdin/out/err on /dev/null,
    /// cwd is "/".
    const REPORT_LEN: usize = 12;

    #[test]
    fn daemonize_detaches() {
        let null = rustix::fs::stat("/dev/null").unwrap();
        let root = rustix::fs::stat("/").unwrap();
        let (mut parent_end, child_end) = UnixStream::pair().unwrap();
        // SAFETY: the test harness is multi-threaded, so the child may inherit a lock another
        // thread held: it makes only raw syscalls, never allocates, panics or returns.
        let child = unsafe { fork() }.unwrap();
        if child == 0 {
            // Other tests' descriptors (flock'ed rings and journals) must not live on in the
            // daemon: keep only the report socket.
            let keep = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&child_end)).unwrap_or(3);
            // SAFETY: close_range only closes descriptors; the ones this child still uses are
            // the report socket (kept) and stdio (below 3).
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, keep.saturating_sub(1), 0u32);
                libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
            }
            // SAFETY: a forked child has one thread.
            let Ok(mut startup) = (unsafe { daemonize() }) else {
                exit_now(1);
            };
            let on_null = |fd: std::os::fd::BorrowedFd<'_>| {
                fstat(fd).is_ok_and(|s| s.st_rdev == null.st_rdev && s.st_ino == null.st_ino)
            };
            let cwd = rustix::fs::stat(".")
                .is_ok_and(|s| s.st_dev == root.st_dev && s.st_ino == root.st_ino);
            let pid = getpid().as_raw_nonzero().get();
            let sid = rustix::process::getsid(None).map_or(-1, |s| s.as_raw_nonzero().get());
            let mut report = [0u8; REPORT_LEN];
            report[..4].copy_from_slice(&pid.to_ne_bytes());
            report[4..8].copy_from_slice(&sid.to_ne_bytes());
            report[8] = on_null(rustix::stdio::stdin()) as u8;
            report[9] = on_null(rustix::stdio::stdout()) as u8;
            report[10] = on_null(rustix::stdio::stderr()) as u8;
            report[11] = cwd as u8;
            let _ = write(&child_end, &report);
            startup.failed(7, "told to fail");
            exit_now(0);
        }
        drop(child_end);
        let child = rustix::process::Pid::from_raw(child).unwrap();
        let (_, status) =
            rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty())
                .unwrap()
                .unwrap();
        assert_eq!(
            status.exit_status(),
            Some(7),
            "the first parent exits with the daemon's code"
        );
        parent_end
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut report = Vec::new();
        io::Read::read_to_end(&mut parent_end, &mut report).unwrap();
        assert_eq!(report.len(), REPORT_LEN, "no report from the daemon");
        let pid = i32::from_ne_bytes(report[..4].try_into().unwrap());
        let sid = i32::from_ne_bytes(report[4..8].try_into().unwrap());
        assert_ne!(pid, child.as_raw_nonzero().get());
        assert!(
            sid > 0 && sid != pid,
            "not a session leader: pid {pid} sid {sid}"
        );
        assert_eq!(&report[8..], &[1, 1, 1, 1], "stdio on /dev/null, cwd /");
    }
}
