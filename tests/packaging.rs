//! The Yocto layer and the Buildroot package (yocto/, buildroot/) against the repository.
//!
//! - `crates_inc_matches_cargo_lock`: yocto/recipes-rt/stalld/stalld-crates.inc is what
//!   `yocto/update-crates` (and `bitbake -c update_crates stalld`) writes from the Cargo.lock
//!   files, and lists every crates.io package of them with its sha256.
//! - `recipes_pin_a_commit_with_this_cargo_lock`: the Yocto SRCREV and the Buildroot
//!   STALLD_VERSION are one commit of this repository whose Cargo.lock files are today's, so a
//!   recipe build fetches the crates the .inc lists.
//! - `offline_vendored_build` (ignored: minutes; CI runs it with `--ignored`): the Buildroot
//!   package's build as Buildroot runs it. A copy of the tree is vendored (`cargo vendor`,
//!   whose output replaces .cargo/config.toml, as Buildroot's download step does), then built
//!   for aarch64-unknown-linux-musl with `--offline --locked --release` and an empty
//!   CARGO_HOME: nothing but the vendored tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const INC: &str = "yocto/recipes-rt/stalld/stalld-crates.inc";
const RECIPE: &str = "yocto/recipes-rt/stalld/stalld_0.1.0.bb";
const BUILDROOT_MK: &str = "buildroot/package/stalld/stalld.mk";
/// The Cargo.lock files bitbake's update_crates reads (every one in the source tree).
const LOCK_FILES: &[&str] = &["Cargo.lock", "fuzz/Cargo.lock"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `command` in the repository; its stdout, or a panic with its stderr.
fn output(command: &mut Command) -> String {
    let shown = format!("{command:?}");
    let out = command
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `(name, version, checksum)` of every crates.io package in a Cargo.lock.
fn crates_io_packages(lock: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_owned())
            })
        };
        if field("source").is_some_and(|s| s.contains("crates.io")) {
            found.push((
                field("name").expect("a package has a name"),
                field("version").expect("a package has a version"),
                field("checksum").expect("a crates.io package has a checksum"),
            ));
        }
    }
    found
}

#[test]
fn crates_inc_matches_cargo_lock() {
    let inc = read(INC);
    let regenerated = output(Command::new("python3").args(["yocto/update-crates", "--stdout"]));
    assert!(
        inc == regenerated,
        "{INC} differs from what yocto/update-crates writes from the Cargo.lock files: run \
         yocto/update-crates and commit the result"
    );
    let mut count = 0;
    for lock in LOCK_FILES {
        for (name, version, checksum) in crates_io_packages(&read(lock)) {
            let uri = format!("    crate://crates.io/{name}/{version} \\\n");
            let sum = format!("SRC_URI[{name}-{version}.sha256sum] = \"{checksum}\"\n");
            assert!(inc.contains(&uri), "{INC} lacks {uri:?} ({lock})");
            assert!(inc.contains(&sum), "{INC} lacks {sum:?} ({lock})");
            count += 1;
        }
    }
    assert!(
        count > 10,
        "only {count} crates.io packages found: the parser broke"
    );
    assert_eq!(
        inc.matches("crate://").count(),
        count,
        "{INC} lists crates no lock file has"
    );
}

/// The value of `NAME = "value"` or `NAME = value` in a recipe or makefile.
fn assignment(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} = ..."))
}

#[test]
fn recipes_pin_a_commit_with_this_cargo_lock() {
    let srcrev = assignment(&read(RECIPE), "SRCREV");
    let version = assignment(&read(BUILDROOT_MK), "STALLD_VERSION");
    assert_eq!(
        srcrev, version,
        "{RECIPE} and {BUILDROOT_MK} pin different commits"
    );
    assert!(
        srcrev.len() == 40 && srcrev.bytes().all(|b| b.is_ascii_hexdigit()),
        "SRCREV {srcrev:?} is not a full commit id"
    );
    if !repo().join(".git").exists() {
        eprintln!(
            "SKIPPED the commit check: {} is not a git checkout",
            repo().display()
        );
        return;
    }
    for lock in LOCK_FILES {
        let pinned = output(Command::new("git").args(["show", &format!("{srcrev}:{lock}")]));
        assert!(
            pinned == read(lock),
            "{lock} at the pinned commit {srcrev} differs from today's: pin a newer commit \
             in {RECIPE} (SRCREV) and {BUILDROOT_MK} (STALLD_VERSION)"
        );
    }
}

/// Copies the files git knows (tracked, and new ones not ignored) to `to`.
fn copy_tree(to: &Path) {
    let files = output(Command::new("git").args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]));
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        let from = repo().join(file);
        let dest = to.join(file);
        std::fs::create_dir_all(dest.parent().expect("a file has a folder")).unwrap();
        let meta = std::fs::symlink_metadata(&from).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &dest).unwrap();
        } else if meta.is_file() {
            std::fs::copy(&from, &dest).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}

#[test]
#[ignore = "builds the whole crate offline (minutes); CI runs it"]
fn offline_vendored_build() {
    const TARGET: &str = "aarch64-unknown-linux-musl";
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vendored-build");
    let _ = std::fs::remove_dir_all(&work);
    let tree = work.join("stalld");
    copy_tree(&tree);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    // Buildroot's support/download/cargo-post-process: `cargo vendor --locked VENDOR >
    // .cargo/config.toml`, with the network (this step runs at download time).
    let vendored = Command::new(&cargo)
        .args(["vendor", "--locked", "VENDOR"])
        .current_dir(&tree)
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo vendor");
    assert!(
        vendored.status.success(),
        "cargo vendor: {}",
        vendored.status
    );
    std::fs::write(tree.join(".cargo/config.toml"), &vendored.stdout).unwrap();

    // The build step of pkg-cargo.mk with stalld.mk's options and environment. The compiler
    // and linker are what Buildroot's toolchain would be (here the repository's wrapper, as
    // .cargo/config.toml is gone); CARGO_HOME is empty, so only VENDOR can serve crates.
    let cargo_home = work.join("cargo-home");
    std::fs::create_dir_all(&cargo_home).unwrap();
    let started = std::time::Instant::now();
    let built = Command::new(&cargo)
        .args([
            "build",
            "--offline",
            "--release",
            "--manifest-path",
            "Cargo.toml",
        ])
        .args(["--locked", "--target", TARGET])
        .args(["--no-default-features", "--features", "bpf"])
        .current_dir(&tree)
        .env("CARGO_HOME", &cargo_home)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .env(
            "CC_aarch64_unknown_linux_musl",
            tree.join(".cargo/musl/aarch64-musl-gcc"),
        )
        .env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("ac_cv_search_argp_parse", "none required")
        .env("ac_cv_search_fts_close", "none required")
        .env("ac_cv_search__obstack_free", "none required")
        .stdin(Stdio::null())
        .status()
        .expect("cargo build");
    assert!(
        built.success(),
        "offline build from the vendored tree: {built}"
    );
    let bin = work.join("target").join(TARGET).join("release/stalld");
    let file = output(Command::new("file").arg("-L").arg(&bin));
    eprintln!(
        "offline vendored build: {:.0} s, {} bytes: {}",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&bin).unwrap().len(),
        file.trim()
    );
    assert!(file.contains("ARM aarch64"), "{file}");
    assert!(
        file.contains("statically linked") || file.contains("static-pie"),
        "{file}"
    );
    let _ = std::fs::remove_dir_all(&work);
}
