//! With the `bpf` feature: compiles `bpf/stalld.bpf.c` and generates its libbpf skeleton into
//! `$OUT_DIR` (never into `src/`: packaging trees may be read-only).
//!
//! Cross builds (Yocto, Buildroot): `BPF_CLANG` names the clang to use (default: `clang` on
//! PATH), `BPF_CFLAGS` adds space-separated flags. The target architecture is Cargo's target,
//! not the build machine's. Little-endian targets only (clang's `-target bpf` is host-endian).

fn main() {
    #[cfg(feature = "bpf")]
    bpf::build_skeleton();
}

#[cfg(feature = "bpf")]
mod bpf {
    use std::env;
    use std::path::PathBuf;

    const SOURCE: &str = "bpf/stalld.bpf.c";
    const HEADERS: [&str; 2] = ["bpf/stalld.h", "bpf/vmlinux.h"];

    /// libbpf's name for Cargo's `target_arch` (the kernel's `ARCH`), for `__TARGET_ARCH_*`.
    fn kernel_arch(cargo_arch: &str) -> &str {
        match cargo_arch {
            "x86_64" | "x86" => "x86",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" | "powerpc" => "powerpc",
            "riscv64" => "riscv",
            "s390x" => "s390",
            "loongarch64" => "loongarch",
            other => other,
        }
    }

    pub fn build_skeleton() {
        for path in [SOURCE].iter().chain(HEADERS.iter()) {
            println!("cargo:rerun-if-changed={path}");
        }
        println!("cargo:rerun-if-env-changed=BPF_CLANG");
        println!("cargo:rerun-if-env-changed=BPF_CFLAGS");

        let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        let out =
            PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it")).join("stalld.skel.rs");
        let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets it");
        if env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() == Ok("big") {
            panic!("the bpf feature supports little-endian targets only; build with --no-default-features");
        }

        let mut args = vec![
            format!("-D__TARGET_ARCH_{}", kernel_arch(&arch)),
            format!("-I{}", manifest_dir.join("bpf").display()),
            // The v3 instruction set (32-bit jumps and ALU: shorter programs) needs kernel 5.1,
            // below the 5.11 that task storage for tracing programs needs.
            "-mcpu=v3".to_string(),
            "-Wall".to_string(),
        ];
        if let Ok(flags) = env::var("BPF_CFLAGS") {
            args.extend(flags.split_whitespace().map(str::to_string));
        }

        let mut builder = libbpf_cargo::SkeletonBuilder::new();
        builder.source(manifest_dir.join(SOURCE)).clang_args(&args);
        if let Some(clang) = env::var_os("BPF_CLANG") {
            builder.clang(clang);
        }
        if let Err(e) = builder.build_and_generate(&out) {
            panic!(
                "cannot build {SOURCE}: {e:#}\n\
                 (needs clang with the BPF target; set BPF_CLANG to pick one, or build without \
                 BPF: cargo build --no-default-features)"
            );
        }
    }
}
