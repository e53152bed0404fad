# Sourced by the guests' /init (tests/vm/init.sh, tests/bench/scale_init.sh), from /: the
# kernel's file systems, this shell and every interrupt kept on vCPU 0, and `alive`.

# mount_kernel_fs: /proc, /sys, /dev and /run, as an initramfs starts without them.
mount_kernel_fs() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mount -t tmpfs -o mode=0755 tmpfs /run
}

# mount_debug_fs: debugfs (sched_debug), and tracefs in case a backend wants it; BTF (for an
# eBPF backend) is /sys/kernel/btf/vmlinux.
mount_debug_fs() {
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
}

# stay_on_cpu0: this shell (and what it starts) on vCPU 0, and interrupts (on PREEMPT_RT their
# FIFO 50 threads) too: a hog on the vCPU of the serial port's interrupt would otherwise stall
# the report until the daemon boosts it.
stay_on_cpu0() {
    taskset -p -c 0 $$ >/dev/null
    echo 1 >/proc/irq/default_smp_affinity
    for irq in /proc/irq/*/smp_affinity_list; do
        echo 0 >"$irq" 2>/dev/null
    done
}

# alive PID: the process exists and is not a zombie (kill -0 succeeds on zombies).
alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    set -- ${stat##*) }
    [ "$1" != Z ]
}
