#!/bin/bash
# dracut module: starts stalld at the earliest hook (cmdline), before udev and the root
# device. Install as /usr/lib/dracut/modules.d/90stalld/, then run dracut -f.

# Included whenever stalld is installed.
check() {
    require_binaries /usr/sbin/stalld /usr/share/stalld/stalld-early || return 1
    return 0
}

depends() {
    return 0
}

install() {
    inst_simple /usr/sbin/stalld /sbin/stalld
    inst_simple /usr/share/stalld/stalld-early /sbin/stalld-early
    local config
    for config in /etc/default/stalld /etc/sysconfig/stalld; do
        if [[ -f $config ]]; then
            inst_simple "$config"
        fi
    done
    # shellcheck disable=SC2154 # moddir is set by dracut
    inst_hook cmdline 00 "$moddir/stalld-start.sh"
}
