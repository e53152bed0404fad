SUMMARY = "Real-time stall daemon: boosts tasks starving on a run queue"
DESCRIPTION = "stalld-rs, a drop-in for upstream stalld's command line and log lines: one \
               static binary that finds tasks starving on a CPU's run queue and gives them a \
               short SCHED_DEADLINE boost. Backends: eBPF queue_track (PACKAGECONFIG bpf), \
               sched_debug, procfs."
HOMEPAGE = "https://github.com/stalld-rs/stalld-rs"
SECTION = "console/utils"
# GPL-2.0-or-later: stalld itself. With PACKAGECONFIG bpf the binary also links libbpf
# (LGPL-2.1-only | BSD-2-Clause), elfutils' libelf (GPL-2.0-or-later | LGPL-3.0-or-later) and
# zlib (Zlib), built from source by the libbpf-sys crate; the Rust crates are MIT | Apache-2.0.
LICENSE = "GPL-2.0-or-later & (LGPL-2.1-only | BSD-2-Clause) & (GPL-2.0-or-later | LGPL-3.0-or-later) & Zlib & (MIT | Apache-2.0)"
LIC_FILES_CHKSUM = "file://COPYING;md5=b234ee4d69f5fce4486a80fdaf4a4263"
# A reimplementation: upstream stalld's CVEs (product "stalld") are not this code's.
CVE_PRODUCT = "stalld-rs"

# Where the stalld-rs repository is served from. The project has no public address yet:
# set STALLD_GIT_URL in local.conf to your clone or mirror (yocto/README). SRCREV is the commit
# whose Cargo.lock stalld-crates.inc was written from (cargo test --test packaging checks it).
STALLD_GIT_URL ??= "git://github.com/stalld-rs/stalld-rs.git;protocol=https"
SRC_URI = "${STALLD_GIT_URL};branch=main"
SRCREV = "4fe351ec905285555be4447fe51335b35eec8b4b"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd update-rc.d

# The queue_track backend (eBPF), the cargo feature `bpf`. The BPF object is compiled by the
# recipe's clang-native against the repository's own bpf/vmlinux.h (CO-RE: the target kernel's
# BTF relocates it at load time), never against the build machine's kernel. libbpf-sys builds
# its vendored libbpf, libelf and zlib from source with autotools, flex, bison and gawk.
PACKAGECONFIG ??= "bpf"
PACKAGECONFIG[bpf] = "--features bpf,,clang-native autoconf-native automake-native gettext-native flex-native bison-native gawk-native"
CARGO_BUILD_FLAGS += "--no-default-features"
export BPF_CLANG = "${STAGING_BINDIR_NATIVE}/clang"

SYSTEMD_SERVICE:${PN} = "stalld.service"
INITSCRIPT_NAME = "stalld"
INITSCRIPT_PARAMS = "defaults 20"

do_install:append() {
    install -d ${D}${sysconfdir}/default ${D}${sysconfdir}/sysconfig
    install -m 0644 ${S}/systemd/stalld.env ${D}${sysconfdir}/default/stalld
    # The upstream-compatible unit reads /etc/sysconfig/stalld: one file for both.
    ln -sf ../default/stalld ${D}${sysconfdir}/sysconfig/stalld
    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir}
        install -m 0644 ${S}/systemd/stalld.service ${D}${systemd_system_unitdir}/stalld.service
    fi
    if ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', 'true', 'false', d)}; then
        install -d ${D}${sysconfdir}/init.d
        # One SysV script for Yocto and Buildroot, in the repository.
        install -m 0755 ${S}/buildroot/package/stalld/S01stalld ${D}${sysconfdir}/init.d/stalld
    fi
}

CONFFILES:${PN} = "${sysconfdir}/default/stalld"
