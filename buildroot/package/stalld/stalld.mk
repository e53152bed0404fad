################################################################################
#
# stalld
#
################################################################################

# A commit of the stalld-rs repository (its Cargo.lock pins every crate). The project has no
# public address yet: set STALLD_SITE to your clone or mirror in your own external tree, or use
# STALLD_OVERRIDE_SRCDIR for a checkout (README).
STALLD_VERSION = 4fe351ec905285555be4447fe51335b35eec8b4b
STALLD_SITE = https://github.com/stalld-rs/stalld-rs.git
STALLD_SITE_METHOD = git
STALLD_LICENSE = GPL-2.0-or-later
STALLD_LICENSE_FILES = COPYING
# The download is a tarball Buildroot makes: the commit's tree plus the crates cargo vendor
# fetched, so its hash depends on the build machine's cargo. Its integrity comes from the
# commit id above and the sha256 of every crate in Cargo.lock, which cargo vendor checks.
BR_NO_CHECK_HASH_FOR += $(STALLD_SOURCE)

# The cargo feature bpf in both build and install options: cargo install builds again, and
# without the option it would build the default features of its own accord.
ifeq ($(BR2_PACKAGE_STALLD_BPF),y)
STALLD_CARGO_BUILD_OPTS = --no-default-features --features bpf
STALLD_CARGO_INSTALL_OPTS = --no-default-features --features bpf
STALLD_CARGO_ENV = BPF_CLANG="$(call qstrip,$(BR2_PACKAGE_STALLD_BPF_CLANG))"
# libbpf-sys runs elfutils' configure, which insists on argp_parse, fts_close and
# _obstack_free; libelf.a uses none of them (see .cargo/config.toml, which Buildroot's
# vendoring replaces). Harmless with glibc, where configure finds this answer itself.
STALLD_CARGO_ENV += \
	ac_cv_search_argp_parse="none required" \
	ac_cv_search_fts_close="none required" \
	ac_cv_search__obstack_free="none required"
ifeq ($(BR2_TOOLCHAIN_USES_GLIBC),)
STALLD_DEPENDENCIES += argp-standalone
endif
else
STALLD_CARGO_BUILD_OPTS = --no-default-features
STALLD_CARGO_INSTALL_OPTS = --no-default-features
endif

define STALLD_INSTALL_ENVIRONMENT_FILE
	$(INSTALL) -D -m 0644 $(@D)/systemd/stalld.env $(TARGET_DIR)/etc/default/stalld
	mkdir -p $(TARGET_DIR)/etc/sysconfig
	ln -sf ../default/stalld $(TARGET_DIR)/etc/sysconfig/stalld
endef
STALLD_POST_INSTALL_TARGET_HOOKS += STALLD_INSTALL_ENVIRONMENT_FILE

define STALLD_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(BR2_EXTERNAL_STALLD_PATH)/package/stalld/S01stalld \
		$(TARGET_DIR)/etc/init.d/S01stalld
endef

define STALLD_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/stalld.service \
		$(TARGET_DIR)/usr/lib/systemd/system/stalld.service
endef

$(eval $(cargo-package))
