//! QEMU guests, shared by tests/vm.rs and the scale bench (tests/bench/scale.rs): Debian kernel
//! packages fetched with `apt-get download` and cached, busybox initramfs images, one bounded
//! qemu run under the machine lock, and the `<uptime> <kind> <rest>` records a guest reports.
//!
//! Invariants: a qemu run is bounded by `timeout` and dies with the process that started it
//! (`PR_SET_PDEATHSIG`); it holds the machine lock ([`super::MachineLock`]) for its whole run.
//! Kernels are cached under `<target>/tmp/stalld-vm/kernels/<package>/vmlinuz`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Where guests keep their kernels, initramfs trees and reports.
pub fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("stalld-vm")
}

/// The tools an x86_64 guest needs on the host, with the Debian package that brings each.
pub const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("chrt", "util-linux"),
    ("timeout", "coreutils"),
    ("ldd", "libc-bin"),
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("tar", "tar"),
];

/// Root, and every tool of [`HOST_TOOLS`] and `extra`; else what is missing.
pub fn check_host(extra: &[(&str, &str)]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root, like the other end-to-end tests".into());
    }
    let missing: Vec<String> = HOST_TOOLS
        .iter()
        .chain(extra)
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, package)| format!("{tool} (apt package {package})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

/// The comma-separated list in the environment variable `name`, or `default` where it is unset
/// or empty.
pub fn env_list(name: &str, default: &[&str]) -> Vec<String> {
    match std::env::var(name) {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|item| item.trim().to_owned())
            .filter(|item| !item.is_empty())
            .collect(),
        _ => default.iter().map(|item| item.to_string()).collect(),
    }
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Runs `command`, returning its output if it exited 0, else a message with its stderr.
pub fn run(command: &mut Command) -> Result<Output, String> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{shown}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

/// `vmlinuz` of `package` (for Debian's architecture `arch`, e.g. `amd64`) from
/// `<target>/tmp/stalld-vm/kernels/<package>/`; the first call downloads the package and the
/// image package it depends on (apt-get download), and keeps only the kernel image. Remove the
/// folder to fetch a newer version.
pub fn fetch_kernel(package: &str, arch: &str) -> Result<PathBuf, String> {
    let dir = work_dir().join("kernels").join(package);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let download = work_dir().join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| format!("{}: {e}", download.display()))?;
    let started = Instant::now();
    let meta = apt_download(&download, package, arch)?;
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"))?;
    let depends = String::from_utf8_lossy(&depends.stdout).into_owned();
    let image = image_package(&depends)
        .ok_or_else(|| format!("{package} depends on no linux-image package: {depends:?}"))?;
    let deb = apt_download(&download, image, arch)?;
    let unpacked = download.join("unpacked");
    std::fs::create_dir_all(&unpacked).map_err(|e| e.to_string())?;
    unpack(&deb, &unpacked, &["./boot/vmlinuz-*"])?;
    let boot = unpacked.join("boot");
    let found = std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("no /boot/vmlinuz-* in {}", deb.display()))?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let deb_name = deb.file_name().unwrap_or(OsStr::new("?")).to_string_lossy();
    std::fs::write(dir.join("source.txt"), format!("{deb_name}\n")).map_err(|e| e.to_string())?;
    std::fs::rename(&found, &vmlinuz).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&download);
    eprintln!(
        "vm: fetched {deb_name} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(vmlinuz)
}

/// `apt-get download package:arch` into `dir`; the path of the .deb.
pub fn apt_download(dir: &Path, package: &str, arch: &str) -> Result<PathBuf, String> {
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}:{arch}")])
        .current_dir(dir))
    .map_err(|e| format!("not reachable with apt ({e}); is `apt-get update` done?"))?;
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .ok_or_else(|| format!("apt-get download {package} left no {prefix}*.deb"))
}

/// The first `linux-image-*` package in a Depends field: `linux-image-6.1.0-56-amd64 (= ...)`.
pub fn image_package(depends: &str) -> Option<&str> {
    depends
        .split([',', '|'])
        .map(|alt| alt.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-"))
}

/// `dpkg-deb --fsys-tarfile deb | tar -x members`: the files of `dpkg-deb -x` that the guest
/// needs (a kernel .deb is ~100 MB, its modules ~400 MB unpacked); `members` may be patterns.
pub fn unpack(deb: &Path, into: &Path, members: &[&str]) -> Result<(), String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    let tar_input = dpkg.stdout.take().expect("piped stdout");
    let tar = Command::new("tar")
        .args(["-x", "--wildcards"])
        .args(members)
        .current_dir(into)
        .stdin(tar_input)
        .output();
    let dpkg_status = dpkg.wait().map_err(|e| e.to_string())?;
    let tar = tar.map_err(|e| format!("tar: {e}"))?;
    if !dpkg_status.success() || !tar.status.success() {
        return Err(format!(
            "unpacking {}: dpkg-deb {dpkg_status}, tar {}: {}",
            deb.display(),
            tar.status,
            String::from_utf8_lossy(&tar.stderr).trim_end()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Initramfs
// ---------------------------------------------------------------------------------------------

/// A fresh initramfs tree `<work>/<name>` with the folders every guest mounts or writes to,
/// and `/bin/sh` a link to the `/bin/busybox` the caller installs.
pub fn initramfs_root(name: &str) -> Result<PathBuf, String> {
    let root = work_dir().join(name);
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["bin", "sbin", "usr/bin", "dev", "proc", "sys", "tmp", "run"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
    Ok(root)
}

/// Copies `program` to `root/dest` and the shared libraries `ldd` names to the same paths
/// under `root` (nothing for a static program).
pub fn install_program(root: &Path, program: &Path, dest: &str) -> Result<(), String> {
    copy_executable(program, &root.join(dest))?;
    let ldd = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    for lib in shared_libraries(&String::from_utf8_lossy(&ldd.stdout)) {
        let inside = root.join(lib.trim_start_matches('/'));
        if !inside.exists() {
            std::fs::create_dir_all(inside.parent().expect("a library path has a folder"))
                .map_err(|e| e.to_string())?;
            copy_executable(Path::new(lib), &inside)?;
        }
    }
    Ok(())
}

/// Absolute paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; none for "not a dynamic executable".
pub fn shared_libraries(ldd: &str) -> Vec<&str> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then_some(path)
        })
        .collect()
}

pub fn copy_executable(from: &Path, to: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())
}

/// The host's busybox as `root/bin/busybox`.
pub fn install_busybox(root: &Path) -> Result<(), String> {
    let busybox = which("busybox").ok_or("no busybox")?;
    install_program(root, &busybox, "bin/busybox")
}

/// `script` (a path in this repository) as the guest's `/init`, with the helpers every guest's
/// init sources (tests/vm/guest_common.sh) as `/guest_common.sh`.
pub fn install_init(root: &Path, script: &str) -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_executable(&repo.join(script), &root.join("init"))?;
    copy_executable(
        &repo.join("tests/vm/guest_common.sh"),
        &root.join("guest_common.sh"),
    )
}

/// Packs the tree `root` into the newc cpio archive `image` (files owned by root).
pub fn pack_cpio(root: &Path, image: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    list_tree(root, Path::new("."), &mut files)?;
    let cpio_out = std::fs::File::create(image).map_err(|e| e.to_string())?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(cpio_out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cpio: {e}"))?;
    {
        let mut stdin = cpio.stdin.take().expect("piped stdin");
        for file in &files {
            writeln!(stdin, "{}", file.display()).map_err(|e| e.to_string())?;
        }
    }
    let out = cpio.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "cpio: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Every path under `dir` (relative, `./...`), parents before children.
fn list_tree(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
        .map_err(|e| e.to_string())?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = dir.join(entry.file_name());
        out.push(path.clone());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            list_tree(root, &path, out)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Booting
// ---------------------------------------------------------------------------------------------

/// Boots that die before `/init` runs are retried this often: such a death says nothing about
/// stalld (multi-threaded TCG sometimes kills the kernel while it boots, `Oops: int3`, a
/// code-patching race between vCPU threads; seen here about once in 30 boots).
pub const BOOT_ATTEMPTS: u32 = 2;

/// Boots with `boot_once` until a boot reaches `/init` (`reached_init`), at most
/// [`BOOT_ATTEMPTS`] times; `on_retry` hears of each boot that died before. Returns the last
/// boot and how many boots it took.
pub fn boot_until_init<T>(
    mut boot_once: impl FnMut() -> T,
    reached_init: impl Fn(&T) -> bool,
    mut on_retry: impl FnMut(&T),
) -> (T, u32) {
    let mut boots = 1;
    loop {
        let run = boot_once();
        if boots == BOOT_ATTEMPTS || reached_init(&run) {
            return (run, boots);
        }
        on_retry(&run);
        boots += 1;
    }
}

/// One guest boot: what the qemu command line says, bounded by `limit`.
pub struct Qemu<'a> {
    /// `qemu-system-x86_64` or another system emulator.
    pub program: &'a str,
    /// Machine and CPU options, e.g. `-cpu max`.
    pub machine: &'a [&'a str],
    /// `-accel`: `tcg,thread=single` or `tcg,thread=multi` here (no KVM).
    pub accel: &'a str,
    pub vcpus: &'a str,
    pub memory_mb: u32,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// The kernel command line.
    pub append: &'a str,
    pub limit: Duration,
}

impl Qemu<'_> {
    /// `timeout -k 10 <limit> qemu ...` without a network, its console (the first serial port
    /// or the machine's UART, `-serial mon:stdio`) written to `console`; the caller adds how the
    /// guest's report leaves it.
    pub fn command(&self, console: &Path) -> Command {
        let console_file = std::fs::File::create(console).expect("create the console log");
        let console_err = console_file.try_clone().expect("dup the console log");
        let mut command = Command::new("timeout");
        command
            .args(["-k", "10", &self.limit.as_secs().to_string(), self.program])
            .args(self.machine)
            .args(["-accel", self.accel, "-smp", self.vcpus])
            .args(["-m", &self.memory_mb.to_string()])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", self.append])
            .args(["-serial", "mon:stdio"])
            .stdin(Stdio::null())
            .stdout(console_file)
            .stderr(console_err);
        command
    }

    /// Runs `command` (from [`Qemu::command`]) under the machine lock: its exit status, or why
    /// it failed (killed at `limit`, a non-zero exit, not started), and how long it ran.
    pub fn run(&self, mut command: Command) -> (Result<(), String>, Duration) {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // `timeout` passes SIGTERM on to qemu: no guest outlives the test process.
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let _machine = super::MachineLock::take();
        let started = Instant::now();
        let status = command.status();
        let wall = started.elapsed();
        (self.judge(status), wall)
    }

    fn judge(&self, status: io::Result<ExitStatus>) -> Result<(), String> {
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) if s.code() == Some(124) => {
                Err(format!("qemu still running after {:?}: killed", self.limit))
            }
            Ok(s) => Err(format!("qemu exited with {s}")),
            Err(e) => Err(format!("cannot run qemu: {e}")),
        }
    }
}

pub fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The guest's report
// ---------------------------------------------------------------------------------------------

/// `<uptime s> <kind> <rest>`, one line of a guest's report.
#[derive(Clone, Debug)]
pub struct Record {
    pub t: f64,
    pub kind: String,
    pub rest: String,
}

impl Record {
    /// `key=value` fields of `rest` (values without spaces).
    pub fn fields(&self) -> HashMap<&str, &str> {
        self.rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect()
    }

    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields().get(key).copied()
    }

    pub fn number(&self, key: &str) -> Option<f64> {
        self.field(key)?.parse().ok()
    }

    pub fn integer(&self, key: &str) -> Option<i64> {
        self.field(key)?.parse().ok()
    }

    /// The first word of `rest`: the scenario of `begin`/`end`, the subject of a `mark`.
    pub fn word(&self) -> &str {
        self.rest.split_whitespace().next().unwrap_or("")
    }
}

pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            let (t, rest) = line.split_once(' ')?;
            let t: f64 = t.parse().ok()?;
            let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            Some(Record {
                t,
                kind: kind.to_owned(),
                rest: rest.to_owned(),
            })
        })
        .collect()
}
