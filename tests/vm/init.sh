#!/bin/sh
# Guest /init for tests/vm.rs: runs starvation scenarios against stalld in a QEMU guest and
# reports raw observations; tests/vm.rs judges them.
#
# Kernel command line: stalld_vm.backend=NAME stalld_vm.scenarios=A,B,...
#   stalld_vm.report=DEVICE (default /dev/ttyS1; the arm64 guest's is a virtio console, hvc0)
# Scenarios: rescue_fifo, rescue_other, migration, migration_other, isolated, ... (see
# tests/vm.rs for what each expects).
#
# Report: one record per line on the report device, `<guest uptime s> <kind> <fields...>`:
#   boot kernel=... preempt_rt=0|1 btf=0|1 dl_server=0|1 cpus=N isolated=LIST nohz_full=LIST
#     rt_runtime_us=N
#   begin <scenario>            end <scenario> daemon_exit=N rt_runtime_us=N
#   mark <what> k=v...          sched <label> pid=N cpu=N state=S sum_exec_ms=X policy=N prio=N
#                                 read=<uptime when /proc was read>
#   log <a line the daemon wrote>   error <what went wrong>   done
#   <kernel log time s> klog <a boosted/restored line the daemon wrote to /dev/kmsg>: stamped
#     by the kernel when the daemon wrote it, so two of them time a boost exactly (the `log`
#     records are stamped when this shell gets to them, up to a few hundred ms late under TCG)
# The kernel console (ttyS0) only carries diagnostics.
#
# Safety: this shell and everything it starts stay on vCPU 0 unless moved on purpose; every
# hog and victim is bounded by `timeout -s KILL` and killed by PID when its scenario ends, hogs
# first (a starved victim cannot even die while its hog owns the CPU).

export PATH=/bin:/usr/bin:/sbin
. /guest_common.sh
if [ "$1" != after_switch_root ]; then
    /bin/busybox --install -s /bin
    mount_kernel_fs
    # Early boot (stalld_vm.early=1): stalld starts now, before anything else, the way the
    # initramfs-tools and dracut scripts start it (initramfs/stalld-early, here /sbin): from
    # the integrator's /etc/default/stalld, daemonized, logging to /dev/kmsg. This initramfs
    # says it is one (/etc/initrd-release), as systemd's do: stalld runs as `@stalld` then.
    case " $(cat /proc/cmdline) " in
    *" stalld_vm.early=1 "*)
        for arg in $(cat /proc/cmdline); do
            case $arg in stalld_vm.backend=*) early_backend=${arg#*=} ;; esac
        done
        mkdir -p /etc/default
        : >/etc/initrd-release
        cat >/etc/default/stalld <<EOF_CONFIG
CLIST="-c 1 -a 0"
BP="-p 200000000"
BR="-r 1000000"
BD="-d 1"
THRESH="-t 3"
LOGGING="-v"
PF="-P /run/stalld.pid"
BE="-b $early_backend"
EOF_CONFIG
        /sbin/stalld-early
        EARLY_STATUS=$?
        read -r EARLY_UP _ </proc/uptime
        ;;
    esac
    mount_debug_fs
fi
stay_on_cpu0

REPORT=/dev/ttyS1
for arg in $(cat /proc/cmdline); do
    case $arg in
    stalld_vm.report=*) REPORT=${arg#*=} ;;
    esac
done
exec 3>"$REPORT"

THRESHOLD_S=3
BOOST_S=1
# The largest runtime and shortest period stalld accepts: 5 ms of CPU per boosted second, so
# the victim's progress is plain in sum_exec_runtime.
# The daemon's own CPU budget: 50 ms every 100 ms instead of the default 20 ms. TCG runs it
# tens of times slower than hardware: with 20 ms the kernel throttled a procfs daemon 40 times
# in one scenario and its passes came 3.6 s apart instead of 1.5 s (a CI run).
DAEMON_ARGS="-f -v -k -t $THRESHOLD_S -d $BOOST_S -r 1000000 -p 200000000 --self_runtime 50000000"
# How long a victim is observed past threshold + boost: the judges (tests/vm.rs) accept a
# boost up to threshold + 2 polls of 1.5 s + 1 s lateness = 7 s after the wait began from a
# backend that dates waits from its first sighting (procfs, sched_debug), and need two samples
# (0.2-0.3 s apart) after its 1 s boost; 3 + 1 + 5 = 9 s covers 7 + 1 + 0.6 with room for a
# slow shell (a CI run saw procfs boost 5.6 s after the wait began and end 0.4 s before the
# observation did, one sample short).
OBSERVE_AFTER_S=5
HOG_LIFETIME_S=30
DEFAULT_RT_RUNTIME_US=950000
VICTIM_LIFETIME_S=40

# Sets UP (guest uptime, "12.34") and UP_CS (the same in centiseconds).
now() {
    read -r UP _ </proc/uptime
    local frac=${UP#*.}
    UP_CS=$((${UP%.*} * 100 + ${frac#0}))
}

out() {
    now
    echo "$UP $*" >&3
}

# clock_mark: a kernel-log line written between two reads of /proc/uptime, so that vm.rs can
# bound how far the two clocks differ: the kernel stamps its lines with local_clock(), while
# /proc/uptime is CLOCK_BOOTTIME, and under TCG they differed by more than 10 ms (a sample read
# at 33.69 s by one still showed the boost that the other stamped restored at 33.680 s).
clock_mark() {
    local before
    now
    before=$UP
    echo "stalld_vm: clock tag=$SCENARIO-$before" >/dev/kmsg
    now
    out "mark clock tag=$SCENARIO-$before before=$before after=$UP"
}

# sample LABEL PID: the task's CPU, state and scheduling counters.
sample() {
    local label=$1 pid=$2 key val sum= policy= prio= stat read_at
    # When /proc was read: the record's own stamp comes after, up to 0.25 s under TCG.
    now
    read_at=$UP
    while read -r key _ val; do
        case $key in
        se.sum_exec_runtime) sum=$val ;;
        policy) policy=$val ;;
        prio) prio=$val ;;
        esac
    done <"/proc/$pid/sched" || return
    read -r stat <"/proc/$pid/stat" || return
    # Fields after "(comm) ": 3 (state) is $1, 39 (processor) is ${37}.
    set -- ${stat##*) }
    out "sched $label pid=$pid cpu=${37} state=$1 sum_exec_ms=$sum policy=$policy prio=$prio" \
        "read=$read_at"
}

comm_of() {
    read -r COMM <"/proc/$1/comm"
}

# spawn NAME CPU CHRT_ARGS...: starts /bin/NAME (a busy loop) with CHRT_ARGS (none: SCHED_OTHER)
# on CPU and sets SPAWNED to its PID. The policy is set before the move, so a hog preempts
# whatever runs there at once.
spawn() {
    local name=$1 cpu=$2 lifetime=$VICTIM_LIFETIME_S
    shift 2
    [ "$name" = hog ] && lifetime=$HOG_LIFETIME_S
    if [ $# -gt 0 ]; then
        timeout -s KILL $lifetime chrt "$@" taskset -c "$cpu" "/bin/$name" </dev/null &
    else
        timeout -s KILL $lifetime taskset -c "$cpu" "/bin/$name" </dev/null &
    fi
    SPAWNED=$!
    SPAWNED_PIDS="$SPAWNED $SPAWNED_PIDS"
}

# started_at PID: sets STARTED to the uptime the busy loop PID wrote when it began running.
started_at() {
    local tries=0
    STARTED=
    while [ ! -s "/tmp/started.$1" ] && [ $tries -lt 100 ]; do
        sleep 0.02
        tries=$((tries + 1))
    done
    read -r STARTED <"/tmp/started.$1"
}

# read_kmsg boosts|all: reports the daemon's boost, restore and per-pass lines (`checking cpu`,
# `might starve`, `starved`) and this script's own `stalld_vm:` marks from the kernel log as
# `klog` records, stamped by the kernel when they were written (printk.devkmsg=on: every line
# gets there); with `all` (a daemonized stalld, whose stderr is gone), also every stalld line
# as a `log` record, stamped when read. The log is read from its
# start (earlier scenarios' lines too: vm.rs matches by pid), but `all` skips lines the kernel
# stamped before KMSG_SINCE_US (after switch_root: what the first root's reader reported).
# `cat` reads whole records, as /dev/kmsg requires.
read_kmsg() {
    local all=$1 since_us=${KMSG_SINCE_US:-0}
    rm -f /tmp/kmsg.fifo
    mkfifo /tmp/kmsg.fifo
    (
        while IFS= read -r record; do
            case $record in
            *';stalld: '* | *';stalld_vm: '*) ;;
            *) continue ;;
            esac
            local meta=${record%%;*} usec line=${record#*;}
            IFS=, read -r _ _ usec _ <<EOF_META
$meta
EOF_META
            case $line in
            'stalld: '*)
                line=${line#stalld: }
                if [ "$all" = all ] && [ "$usec" -ge "$since_us" ]; then
                    out "log stalld: $line"
                fi
                ;;
            esac
            case $line in
            'boosted pid '* | 'restored pid '* | 'checking cpu '* | *' might starve on CPU '* | \
                *' starved on CPU '* | 'stalld_vm: '*)
                printf '%d.%06d klog %s\n' $((usec / 1000000)) $((usec % 1000000)) "$line" >&3
                ;;
            esac
        done
    ) </tmp/kmsg.fifo &
    KMSG_READER=$!
    cat /dev/kmsg >/tmp/kmsg.fifo &
    KMSG_CAT=$!
}

# stop_kmsg: ends the kernel log reader, once the daemon's last lines are in.
stop_kmsg() {
    sleep 0.2
    kill "$KMSG_CAT"
    wait "$KMSG_CAT" "$KMSG_READER"
}

# attach_early: the scenario's daemon is the one started at boot; reports how it started.
attach_early() {
    local argv0
    read -r DAEMON </run/stalld.pid || return 1
    EARLY_DAEMON=1
    read_kmsg all
    argv0=$(head -c 1 "/proc/$DAEMON/cmdline")
    out "mark daemon pid=$DAEMON early_status=$EARLY_STATUS started_at=$EARLY_UP argv0=$argv0"
    alive "$DAEMON" || return 1
    out "mark daemon_ready rt_runtime_us=$(cat /proc/sys/kernel/sched_rt_runtime_us)" \
        "hrtick_dl=$(hrtick_dl)"
}

# hrtick_dl: HRTICK_DL or NO_HRTICK_DL as sched/features says (the guest has no lockdown).
hrtick_dl() {
    tr ' ' '\n' </sys/kernel/debug/sched/features | grep -x -e HRTICK_DL -e NO_HRTICK_DL ||
        echo none
}

# start_daemon CPUS: starts stalld and waits until it monitors; fails if it does not start.
start_daemon() {
    local cpus=$1 tries=0
    rm -f /tmp/daemon.fifo /tmp/daemon.log
    mkfifo /tmp/daemon.fifo
    : >/tmp/daemon.log
    (
        while IFS= read -r line; do
            read -r up _ </proc/uptime
            echo "$up log $line" >&3
            echo "$line" >>/tmp/daemon.log
        done
    ) </tmp/daemon.fifo &
    READER=$!
    read_kmsg boosts
    stalld $DAEMON_ARGS -c "$cpus" -b "$BACKEND" >/tmp/daemon.fifo 2>&1 &
    DAEMON=$!
    out "mark daemon pid=$DAEMON args=$DAEMON_ARGS -c $cpus -b $BACKEND"
    while ! grep -q '^stalld: using .* backend$' /tmp/daemon.log; do
        alive $DAEMON || return 1
        [ $tries -ge 300 ] && return 1
        sleep 0.1
        tries=$((tries + 1))
    done
    # The daemon turns RT throttling off before it monitors.
    tries=0
    while [ "$(cat /proc/sys/kernel/sched_rt_runtime_us)" != -1 ] && [ $tries -lt 50 ]; do
        alive $DAEMON || return 1
        sleep 0.1
        tries=$((tries + 1))
    done
    out "mark daemon_ready rt_runtime_us=$(cat /proc/sys/kernel/sched_rt_runtime_us)" \
        "hrtick_dl=$(hrtick_dl)"
}

# terminate PID: SIGTERM, then up to 5 s for it to end; SIGKILL and failure if it does not.
terminate() {
    local tries=0
    kill -TERM "$1" 2>/dev/null
    while alive "$1" && [ $tries -lt 50 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    alive "$1" || return 0
    kill -KILL "$1"
    return 1
}

# Kills hogs, then victims, then stops the daemon; reports its exit status.
finish() {
    local pid status
    clock_mark
    for pid in $HOGS; do kill -KILL "$pid" 2>/dev/null; done
    for pid in $SPAWNED_PIDS; do kill -KILL "$pid" 2>/dev/null; done
    for pid in $SPAWNED_PIDS; do wait "$pid" 2>/dev/null; done
    status=none
    if [ -n "$EARLY_DAEMON" ]; then
        # Not this shell's child: no exit status. It keeps running into switch_root and is
        # stopped at the end of that one.
        status=running
        if [ "$SCENARIO" = switch_root ]; then
            status=gone
            terminate "$DAEMON" || status=alive
            # The early daemon, handed over, may still be tearing its backend down while
            # starved tasks hold the kernel's grace period up; they are gone now.
            if [ -n "$EARLY_PID" ]; then
                local tries=0
                while alive "$EARLY_PID" && [ $tries -lt 50 ]; do
                    sleep 0.1
                    tries=$((tries + 1))
                done
                alive "$EARLY_PID" && out "error the early daemon $EARLY_PID still runs"
            fi
        fi
        stop_kmsg
    elif [ -n "$DAEMON" ]; then
        terminate "$DAEMON" || out "error the daemon ignored SIGTERM for 5 s"
        wait "$DAEMON"
        status=$?
        wait "$READER"
        stop_kmsg
    fi
    local rt_now result
    rt_now=$(cat /proc/sys/kernel/sched_rt_runtime_us)
    if [ "$rt_now" != "$RT_RUNTIME_AT_BOOT" ] && [ "$status" != running ]; then
        # The daemon left RT throttling changed: show the kernel's DEADLINE bandwidth books,
        # then put the value back for the next scenario and say whether the kernel allowed it.
        grep -E 'dl_bw->(bw|total_bw)|^cpu#' /sys/kernel/debug/sched/debug | tr -s ' ' |
            while read -r line; do out "mark dl_bw $line"; done
        result=$( (echo "$RT_RUNTIME_AT_BOOT" >/proc/sys/kernel/sched_rt_runtime_us) 2>&1) &&
            result=ok
        out "mark rt_restore by_init=$(echo "$result" | tr ' ' _)"
    fi
    case $SCENARIO in
    *_no_dl_server) fair_server 50000000 ;;
    esac
    out "end $SCENARIO daemon_exit=$status rt_runtime_us=$rt_now hrtick_dl=$(hrtick_dl)"
    HOGS= SPAWNED_PIDS= DAEMON= READER= KMSG_CAT= KMSG_READER= EARLY_DAEMON= KTHREADS= EARLY_PID=
}

# observe "PID..." UNTIL_CS [LABEL]: samples the victims (as LABEL, default victim) every 0.2 s
# until the uptime UNTIL_CS.
observe() {
    local pid label=${3:-victim}
    now
    while [ "$UP_CS" -lt "$2" ]; do
        for pid in $1; do sample "$label" "$pid"; done
        sleep 0.2
        now
    done
    for pid in $1; do sample "$label" "$pid"; done
}

start_victim() {
    if [ "$1" = other ]; then
        spawn victim 1
    else
        spawn victim 1 -f 1
    fi
    VICTIM=$SPAWNED
    started_at $VICTIM
    comm_of $VICTIM
    out "mark victim pid=$VICTIM comm=$COMM policy=$1 cpu=1 at=$STARTED"
    sleep 0.3
    sample victim $VICTIM
}

start_hog() {
    spawn hog "$1" -f 50
    HOGS="$SPAWNED $HOGS"
    started_at $SPAWNED
    comm_of $SPAWNED
    out "mark hog pid=$SPAWNED comm=$COMM cpu=$1 at=$STARTED"
}

# rescue_fifo / rescue_other: a victim starved by a FIFO 50 hog on vCPU 1.
rescue() {
    start_daemon 1 || return 1
    start_victim "$1"
    start_hog 1
    now
    observe $VICTIM $((UP_CS + (THRESHOLD_S + BOOST_S + OBSERVE_AFTER_S) * 100))
}

# migration POLICY: the victim (fifo or other) starts waiting on vCPU 1 and is moved to vCPU 2
# (busy too) 1 s later.
migration() {
    start_daemon 1-2 || return 1
    start_victim "$1"
    start_hog 2
    start_hog 1
    now
    local hog1_cs=$UP_CS
    observe $VICTIM $((hog1_cs + 100))
    taskset -p -c 2 $VICTIM >/dev/null
    # Stamped by the kernel after the move, in the same stream as the daemon's lines.
    echo "stalld_vm: moved pid=$VICTIM cpu=2" >/dev/kmsg
    out "mark moved pid=$VICTIM cpu=2"
    observe $VICTIM $((hog1_cs + (1 + THRESHOLD_S + BOOST_S + OBSERVE_AFTER_S) * 100))
}

# fair_server RUNTIME_NS: sets the DL-server's runtime on vCPUs 1 and 2 (0: off, which this
# guest allows: no lockdown), reporting what it was. Written with RT throttling off: once a
# daemon has turned throttling off and on again, Debian's 6.12 answers EBUSY to any new
# DL-server runtime (its root domain's DEADLINE bandwidth sum no longer counts the servers),
# and with throttling off it does not check the sum.
fair_server() {
    local cpu knob rt
    rt=$(cat /proc/sys/kernel/sched_rt_runtime_us)
    echo -1 >/proc/sys/kernel/sched_rt_runtime_us
    for cpu in 1 2; do
        knob=/sys/kernel/debug/sched/fair_server/cpu$cpu/runtime
        out "mark fair_server cpu=$cpu was=$(cat $knob) now=$1"
        echo "$1" >"$knob" || out "error cannot write $1 to $knob"
    done
    # The kernel may refuse the old value for a moment (EBUSY) while it settles the servers'
    # bandwidth: retried for up to 5 s.
    local tries=0
    until (echo "$rt" >/proc/sys/kernel/sched_rt_runtime_us) 2>/dev/null; do
        tries=$((tries + 1))
        if [ $tries -ge 50 ]; then
            out "error cannot put sched_rt_runtime_us back to $rt"
            break
        fi
        sleep 0.1
    done
    out "mark fair_server_rt_restored tries=$tries"
}

# other_dl_server_on: a SCHED_OTHER victim behind a FIFO 50 hog where the DL-server serves it:
# it runs a little (the DL-server's 5 %) and the daemon leaves it alone.
other_dl_server_on() {
    start_daemon 1 || return 1
    start_victim other
    start_hog 1
    now
    observe $VICTIM $((UP_CS + (THRESHOLD_S + BOOST_S + 3) * 100))
}

# kthreads: on PREEMPT_RT, timers and RCU callbacks run in per-CPU kthreads at SCHED_FIFO 1
# (ktimers/N, rcuc/N). A SCHED_OTHER task sleeping in 50 ms steps on vCPU 1 keeps its timers
# busy while a FIFO 50 hog holds it: the daemon must boost and restore the kthreads.
kthreads() {
    local pid comm
    start_daemon 1 || return 1
    timeout -s KILL $HOG_LIFETIME_S taskset -c 1 sh -c 'while :; do sleep 0.05; done' &
    SPAWNED_PIDS="$! $SPAWNED_PIDS"
    for pid in $(ls /proc); do
        case $pid in *[!0-9]*) continue ;; esac
        read -r comm 2>/dev/null <"/proc/$pid/comm" || continue
        case $comm in
        ktimers/1 | rcuc/1)
            out "mark kthread pid=$pid comm=$comm"
            sample "kthread_$comm" "$pid"
            KTHREADS="$KTHREADS $pid"
            ;;
        esac
    done
    start_hog 1
    sleep $((THRESHOLD_S + BOOST_S + 3))
    kill -KILL $HOGS
    # A boost may have begun just before the hog went: past its end, all are restored.
    sleep $((BOOST_S + 1))
    for pid in $KTHREADS; do
        read -r comm <"/proc/$pid/comm"
        sample "kthread_$comm" "$pid"
    done
}

# early_boot: the daemon started at boot rescues a victim starved on vCPU 1.
early_boot() {
    attach_early || return 1
    start_victim fifo
    start_hog 1
    now
    observe $VICTIM $((UP_CS + (THRESHOLD_S + BOOST_S + OBSERVE_AFTER_S) * 100))
}

# switch_root: a second root on tmpfs gets /dev, /proc, /sys and /run moved into it, then
# busybox switch_root empties the initramfs and runs this script there again
# (`after_switch_root`, below), where the daemon started at boot must rescue a new victim.
switch_root_begin() {
    attach_early || return 1
    mkdir -p /newroot
    mount -t tmpfs -o mode=0755 tmpfs /newroot || return 1
    for dir in /*; do
        case $dir in
        /dev | /proc | /sys | /run | /tmp | /newroot) ;;
        *) cp -a "$dir" /newroot/ || return 1 ;;
        esac
    done
    rm -f /newroot/etc/initrd-release
    mkdir -p /newroot/dev /newroot/proc /newroot/sys /newroot/run /newroot/tmp
    stop_kmsg
    out "mark switching"
    for fs in dev proc sys run; do
        mount -o move "/$fs" "/newroot/$fs" || return 1
    done
    exec switch_root /newroot /init after_switch_root
}

# isolated: a guest whose CPUs 4-7 are isolated (isolcpus, nohz_full, rcu_nocbs). The daemon
# watches them and runs on the housekeeping CPUs 0-3; a FIFO 1 victim on CPU 5 and one on CPU 6
# are starved at once by a FIFO 50 hog each (both hogs spawned before either is waited for).
isolated() {
    local cpu pid key val victims='' tries=0
    start_daemon 4-7 || return 1
    # The daemon pins itself before it says what it monitors.
    until grep -q '^stalld: monitoring CPUs' /tmp/daemon.log; do
        alive $DAEMON || return 1
        [ $tries -ge 50 ] && break
        sleep 0.1
        tries=$((tries + 1))
    done
    while read -r key val; do
        [ "$key" = Cpus_allowed_list: ] && out "mark daemon_cpus allowed=$val"
    done <"/proc/$DAEMON/status"
    for cpu in 5 6; do
        spawn victim $cpu -f 1
        victims="$victims $SPAWNED"
        started_at $SPAWNED
        comm_of $SPAWNED
        out "mark victim pid=$SPAWNED comm=$COMM policy=fifo cpu=$cpu at=$STARTED"
    done
    sleep 0.3
    spawn hog 5 -f 50
    HOGS=$SPAWNED
    spawn hog 6 -f 50
    HOGS="$HOGS $SPAWNED"
    cpu=5
    for pid in $HOGS; do
        started_at "$pid"
        comm_of "$pid"
        out "mark hog pid=$pid comm=$COMM cpu=$cpu at=$STARTED"
        cpu=6
    done
    now
    observe "$victims" $((UP_CS + (THRESHOLD_S + BOOST_S + OBSERVE_AFTER_S) * 100))
}

# handover: after switch_root the real system starts stalld again, as its init script would
# (from the same settings, daemonized, logging to /dev/kmsg, not `@stalld`): the daemon started
# at boot must hand over to it (src/handover.rs). A second victim waits behind a new hog from
# 1 s before that start, and the new daemon must rescue it; DAEMON becomes the new one.
handover() {
    local early=$DAEMON pid status early_alive=1
    EARLY_PID=$early
    for pid in $HOGS $VICTIM; do kill -KILL "$pid" 2>/dev/null; done
    HOGS=
    spawn victim 1 -f 1
    VICTIM2=$SPAWNED
    started_at $VICTIM2
    out "mark victim2 pid=$VICTIM2 at=$STARTED"
    spawn hog 1 -f 50
    HOGS=$SPAWNED
    started_at $SPAWNED
    out "mark hog2 pid=$SPAWNED at=$STARTED"
    sleep 1
    out "mark second_start"
    stalld -k -c 1 -a 0 -p 200000000 -r 1000000 -d "$BOOST_S" -t "$THRESHOLD_S" \
        -P /run/stalld.pid -b "$BACKEND"
    status=$?
    read -r DAEMON </run/stalld.pid
    alive "$early" || early_alive=0
    out "mark second_daemon status=$status pid=$DAEMON early_pid=$early early_alive=$early_alive" \
        "rt_runtime_us=$(cat /proc/sys/kernel/sched_rt_runtime_us)"
    now
    observe "$VICTIM2" $((UP_CS + (THRESHOLD_S + BOOST_S + OBSERVE_AFTER_S) * 100)) victim2
}

# selftest: `stalld --selftest=3` with the daemons' options (its stalld children boost and run
# themselves as those say: with the default 20 us boost runtime, TCG's slow context switches
# once used a whole boost before the victim ran a line of its own: a 6.12-rt CI run), its table
# reported line by line.
selftest() {
    local status
    stalld --selftest=3 $DAEMON_ARGS >/tmp/selftest.out 2>&1
    status=$?
    while IFS= read -r line; do
        out "log $line"
    done </tmp/selftest.out
    out "mark selftest status=$status"
}

# The busy loops. Each writes when it began running, then spins without a system call; its
# comm is its file name.
for name in victim hog; do
    cat >/bin/$name <<'EOF'
#!/bin/sh
read -r up _ </proc/uptime
echo "$up" >/tmp/started.$$
while :; do :; done
EOF
    chmod +x /bin/$name
done

BACKEND=sched_debug
SCENARIOS=
for arg in $(cat /proc/cmdline); do
    case $arg in
    stalld_vm.backend=*) BACKEND=${arg#*=} ;;
    stalld_vm.scenarios=*) SCENARIOS=$(echo "${arg#*=}" | tr , ' ') ;;
    esac
done

if [ "$1" = after_switch_root ]; then
    SCENARIO=switch_root
    out "mark switched"
    now
    # Kernel stamps run a little behind the uptime; 1 s before the switch is safely after
    # everything the first root's reader reported (it stopped before the switch).
    KMSG_SINCE_US=$(((UP_CS - 100) * 10000))
    RT_RUNTIME_AT_BOOT=$(cat /run/rt_runtime_at_boot)
    if attach_early; then
        start_victim fifo
        start_hog 1
        now
        observe $VICTIM $((UP_CS + (THRESHOLD_S + BOOST_S + OBSERVE_AFTER_S) * 100))
        handover
    else
        out "error the daemon started at boot is gone after switch_root"
    fi
    finish
    out done
    sync
    poweroff -f
fi

RT_RUNTIME_AT_BOOT=$(cat /proc/sys/kernel/sched_rt_runtime_us)
[ -n "$EARLY_STATUS" ] && RT_RUNTIME_AT_BOOT=$DEFAULT_RT_RUNTIME_US
echo "$RT_RUNTIME_AT_BOOT" >/run/rt_runtime_at_boot
rt=0
[ "$(cat /sys/kernel/realtime 2>/dev/null)" = 1 ] && rt=1
btf=0
[ -e /sys/kernel/btf/vmlinux ] && btf=1
dl=0
[ -d /sys/kernel/debug/sched/fair_server ] && dl=1
out "boot kernel=$(uname -r) preempt_rt=$rt btf=$btf dl_server=$dl cpus=$(grep -c ^processor /proc/cpuinfo)" \
    "isolated=$(cat /sys/devices/system/cpu/isolated)" \
    "nohz_full=$(tr -d ' ' </sys/devices/system/cpu/nohz_full 2>/dev/null)" \
    "rt_runtime_us=$RT_RUNTIME_AT_BOOT backend=$BACKEND"

for SCENARIO in $SCENARIOS; do
    out "begin $SCENARIO"
    clock_mark
    case $SCENARIO in
    rescue_fifo) rescue fifo ;;
    rescue_other) rescue other ;;
    rescue_other_no_dl_server)
        fair_server 0
        rescue other
        ;;
    migration_other_no_dl_server)
        fair_server 0
        migration other
        ;;
    other_dl_server_on) other_dl_server_on ;;
    kthreads) kthreads ;;
    migration) migration fifo ;;
    migration_other) migration other ;;
    selftest) selftest ;;
    isolated) isolated ;;
    early_boot) early_boot ;;
    switch_root) switch_root_begin || out "error switch_root failed" ;;
    *) out "error unknown scenario $SCENARIO" ;;
    esac
    finish
done

out done
sync
poweroff -f
