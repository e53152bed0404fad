//! Sandboxes for the daemon under test, applied in the forked child between fork and exec:
//! a seccomp filter that makes `bpf(2)` fail with EPERM (the eBPF backend is refused by the
//! kernel, exactly as under a restrictive policy), and a private mount namespace in which an
//! empty tmpfs covers `/sys/kernel/debug` (debugfs is still listed in `/proc/mounts`, but its
//! files are gone).
//!
//! Invariants: the code run in the child is raw syscalls on data built at compile time (no
//! allocation, no lock), so it is safe after `fork` in a multi-threaded test process; the mount
//! namespace is made recursively private before anything is mounted, so nothing leaks into the
//! machine's namespace. The harness does not depend on the code under test.

use std::io;
use std::time::Duration;

/// What to take away from the daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// `bpf(2)` fails with EPERM (seccomp filter).
    pub refuse_bpf: bool,
    /// `/sys/kernel/debug` is an empty, mode 000 tmpfs (private mount namespace).
    pub hide_debugfs: bool,
}

impl Sandbox {
    pub const NONE: Sandbox = Sandbox {
        refuse_bpf: false,
        hide_debugfs: false,
    };
    pub const NO_BPF: Sandbox = Sandbox {
        refuse_bpf: true,
        hide_debugfs: false,
    };
    pub const NO_BPF_NO_DEBUGFS: Sandbox = Sandbox {
        refuse_bpf: true,
        hide_debugfs: true,
    };

    /// Applies the sandbox to the calling process. Meant for the child between fork and exec
    /// (`CommandExt::pre_exec`): only raw syscalls, no allocation. Debugfs is hidden first
    /// (mounting needs no syscall the filter refuses, but keeps the order obvious).
    pub fn enter(&self) -> io::Result<()> {
        if self.hide_debugfs {
            hide_debugfs()?;
        }
        if self.refuse_bpf {
            refuse_bpf()?;
        }
        Ok(())
    }
}

/// Where debugfs lives and what covers it.
pub const DEBUGFS_DIR: &std::ffi::CStr = c"/sys/kernel/debug";
pub const SCHED_DEBUG_PATH: &std::ffi::CStr = c"/sys/kernel/debug/sched/debug";

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `DEBUGFS_MAGIC` (`include/uapi/linux/magic.h`).
const DEBUGFS_MAGIC: i64 = 0x6462_6720;

/// Mounts debugfs on `/sys/kernel/debug` in the current namespace unless it is there: the
/// sandbox stands for a machine whose debugfs is mounted but closed, so `/proc/mounts` must
/// list it (the daemon mounts debugfs itself where none is listed, and unmounts it at exit).
/// Raw syscalls only: it may run between fork and exec. See statfs(2), mount(2).
pub fn ensure_debugfs_mounted() -> io::Result<()> {
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid C string and `fs` a valid out pointer.
    if unsafe { libc::statfs(DEBUGFS_DIR.as_ptr(), &mut fs) } == 0 && fs.f_type == DEBUGFS_MAGIC {
        return Ok(());
    }
    // SAFETY: every pointer is a valid C string with static lifetime; debugfs takes no data.
    check(unsafe {
        libc::mount(
            c"debugfs".as_ptr(),
            DEBUGFS_DIR.as_ptr(),
            c"debugfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
}

/// Debugfs mounted in the current namespace ([`ensure_debugfs_mounted`]), then
/// `unshare(CLONE_NEWNS)`, then `mount(NULL, "/", NULL, MS_REC|MS_PRIVATE, NULL)` so that no
/// later mount propagates back, then an empty tmpfs (mode 000) over `/sys/kernel/debug`.
/// See unshare(2), mount(2), mount_namespaces(7).
pub fn hide_debugfs() -> io::Result<()> {
    ensure_debugfs_mounted()?;
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: the target is a valid C string; source, type and data may be NULL for a
    // propagation change.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: every pointer is a valid C string with static lifetime.
    check(unsafe {
        libc::mount(
            c"stalld-e2e-no-debugfs".as_ptr(),
            DEBUGFS_DIR.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=000,size=4k".as_ptr().cast(),
        )
    })
}

/// `AUDIT_ARCH_*` of this build's syscall ABI (`linux/audit.h`: EM_* | 64BIT | LE).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;

/// `offsetof(struct seccomp_data, nr)` and `offsetof(struct seccomp_data, arch)`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Classic BPF: on this build's architecture, `bpf` returns EPERM; every other system call
/// (and any other architecture's, which the daemon never uses) is allowed.
const REFUSE_BPF_FILTER: [libc::sock_filter; 6] = [
    stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        SECCOMP_DATA_ARCH,
    ),
    jump_eq(AUDIT_ARCH_NATIVE, 0, 3),
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, SECCOMP_DATA_NR),
    jump_eq(libc::SYS_bpf as u32, 0, 1),
    stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
    ),
    stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
];

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)` then `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog)` with
/// [`REFUSE_BPF_FILTER`]; inherited across fork and exec. See seccomp(2), PR_SET_SECCOMP in
/// prctl(2).
pub fn refuse_bpf() -> io::Result<()> {
    let mut filter = REFUSE_BPF_FILTER;
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    // SAFETY: prog points to `len` valid instructions that outlive the call (the kernel copies
    // them).
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    })
}

/// Exit code of a [`run_sandboxed`] child whose sandbox could not be entered.
pub const ENTER_FAILED: i32 = 255;

/// Forks a child that enters `sandbox`, runs `probe` and exits with its result; returns that
/// exit code. `probe` runs in a forked child of a multi-threaded process: raw syscalls only.
pub fn run_sandboxed(sandbox: Sandbox, probe: fn() -> i32) -> io::Result<i32> {
    // SAFETY: the child runs only `enter` and `probe` (raw syscalls, see above) and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match sandbox.enter() {
            Ok(()) => probe(),
            Err(_) => ENTER_FAILED,
        };
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer; pid is our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return if libc::WIFEXITED(status) {
                Ok(libc::WEXITSTATUS(status))
            } else {
                Err(io::Error::other(super::describe_wait_status(status)))
            };
        }
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if std::time::Instant::now() >= deadline {
            // SAFETY: pid is our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(io::Error::other("sandboxed probe did not exit within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `bpf(BPF_MAP_CREATE, &zeroed_attr, size)`: 0 if it succeeded (the fd is closed), else errno.
/// A zeroed attribute asks for map type 0 (unspecified), which the kernel refuses with EINVAL
/// when bpf() itself is allowed.
pub fn probe_bpf() -> i32 {
    let attr = [0u8; 128];
    // SAFETY: attr is a readable buffer of the size passed; BPF_MAP_CREATE (0) only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0 as libc::c_int,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc >= 0 {
        // SAFETY: rc is a descriptor this probe just got.
        unsafe { libc::close(rc as libc::c_int) };
        0
    } else {
        errno()
    }
}

/// Opens [`SCHED_DEBUG_PATH`] for reading: 0 if it opened, else errno.
pub fn probe_sched_debug() -> i32 {
    // SAFETY: the path is a valid C string.
    let fd = unsafe { libc::open(SCHED_DEBUG_PATH.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: fd was just opened here.
        unsafe { libc::close(fd) };
        0
    } else {
        errno()
    }
}

/// 1 if `/sys/kernel/debug` is a tmpfs (our cover), 0 if not, 255 if statfs failed.
pub fn probe_debugfs_dir_is_tmpfs() -> i32 {
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statfs(DEBUGFS_DIR.as_ptr(), &mut fs) } != 0 {
        return 255;
    }
    i32::from(fs.f_type == libc::TMPFS_MAGIC)
}

/// The mount of `/sys/kernel/debug` that a process sees on top (its filesystem type), from
/// `/proc/<pid>/mountinfo`: the last line for that mount point wins.
pub fn top_mount_type(pid: libc::pid_t, mount_point: &str) -> io::Result<Option<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    // Fields: id parent major:minor root mount-point options [optional...] - type source ...
    Ok(text
        .lines()
        .rev()
        .filter(|line| line.split(' ').nth(4) == Some(mount_point))
        .find_map(|line| {
            let (_, after) = line.split_once(" - ")?;
            after.split(' ').next().map(str::to_owned)
        }))
}

/// Is this machine able to run the sandbox probes (root, for the mount namespace)? `None`
/// (after printing why) means skip, as [`super::e2e_begin`] does.
fn sandbox_preconditions(test: &str) -> Option<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(());
    }
    let required = std::env::var(super::REQUIRE_ENV).is_ok_and(|v| v == "1");
    assert!(!required, "{test}: needs root but {}=1", super::REQUIRE_ENV);
    eprintln!("SKIPPED {test}: needs root");
    None
}

/// The filter really refuses `bpf()` with EPERM, and only under the filter.
#[test]
fn sandbox_refuses_bpf_with_eperm() {
    let Some(()) = sandbox_preconditions("sandbox_refuses_bpf_with_eperm") else {
        return;
    };
    let free = run_sandboxed(Sandbox::NONE, probe_bpf).expect("probe without filter");
    let refused = run_sandboxed(Sandbox::NO_BPF, probe_bpf).expect("probe under the filter");
    eprintln!(
        "bpf(BPF_MAP_CREATE, zeroed): {} without the filter, {} under it",
        io::Error::from_raw_os_error(free),
        io::Error::from_raw_os_error(refused)
    );
    assert_ne!(free, libc::EPERM, "bpf() refused even without the filter");
    assert_eq!(
        refused,
        libc::EPERM,
        "the filter must make bpf() fail with EPERM"
    );
}

/// Inside the namespace, sched/debug is gone and `/sys/kernel/debug` is our tmpfs; outside it
/// nothing changed (checked after the child ran).
#[test]
fn sandbox_hides_debugfs_in_a_private_namespace_only() {
    let Some(()) = sandbox_preconditions("sandbox_hides_debugfs_in_a_private_namespace_only")
    else {
        return;
    };
    ensure_debugfs_mounted().expect("mount debugfs");
    let outside_before = probe_sched_debug();
    let inside = run_sandboxed(Sandbox::NO_BPF_NO_DEBUGFS, probe_sched_debug)
        .expect("probe in the namespace");
    let covered = run_sandboxed(Sandbox::NO_BPF_NO_DEBUGFS, probe_debugfs_dir_is_tmpfs)
        .expect("statfs in the namespace");
    let outside_after = probe_sched_debug();
    eprintln!(
        "open {}: outside {}, inside the namespace {}, outside again {}",
        SCHED_DEBUG_PATH.to_string_lossy(),
        io::Error::from_raw_os_error(outside_before),
        io::Error::from_raw_os_error(inside),
        io::Error::from_raw_os_error(outside_after)
    );
    assert_eq!(
        outside_before, 0,
        "sched/debug must be readable on this machine"
    );
    assert_ne!(inside, ENTER_FAILED, "cannot enter the mount namespace");
    assert_ne!(inside, 0, "sched/debug still readable inside the namespace");
    assert_eq!(covered, 1, "/sys/kernel/debug is not the covering tmpfs");
    assert_eq!(
        outside_after, 0,
        "the cover leaked out of the private namespace"
    );
    assert_eq!(
        top_mount_type(std::process::id() as libc::pid_t, "/sys/kernel/debug")
            .expect("read own mountinfo")
            .as_deref(),
        Some("debugfs"),
        "the test process itself must still see debugfs"
    );
}
