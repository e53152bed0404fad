#!/bin/sh
# Guest /init for the scale bench (tests/bench/scale.rs): one daemon, one backend, one thread
# count per boot. Reports raw figures on ttyS1; scale.rs turns them into the table.
#
# Kernel command line: stalld_scale.backend=NAME stalld_scale.threads=N stalld_scale.window=S
#   stalld_scale.isolated=FIRST-LAST (the isolated CPUs: hogs, waiting threads, `-c`)
# /etc/stalld_scale_args: the daemon's other options, one line.
#
# Steps: a SCHED_FIFO 50 hog on every isolated CPU; N threads (scale_load: one waiting behind
# each hog, N/20 churning, the rest sleeping) on the housekeeping CPUs; BPF run-time statistics
# on; the daemon started, given WARMUP_S, then sampled at the start and the end of a window of S
# seconds; then a FIFO 1 victim starved on the second isolated CPU until the daemon boosts it.
#
# Report: `<uptime s> <kind> <fields...>`:
#   boot kernel=... cpus=N isolated=LIST nohz_full=LIST backend=B threads=N
#   mark load_ready sleeping=.. churning=.. waiting=..   mark daemon_ready
#   mark not_boosted pid=P within=S (the victim, after RESCUE_WAIT_S)
#   sample start|end|peak ticks=utime+stime exec_ns=sum of its threads' schedstat run time
#     bpf_run_ns=.. bpf_run_cnt=.. (sums over its BPF program fds) hwm_kb=VmHWM
#     sleeps=its threads' voluntary context switches
#   kmsg <a dmesg line about the victim>   error <what went wrong>   done
#
# Safety: everything is bounded: hogs and threads exit after LIFETIME_S, the victim is killed
# by PID (after the hogs, so that it can run to die), the daemon gets SIGTERM then SIGKILL.

export PATH=/bin:/usr/bin:/sbin
/bin/busybox --install -s /bin
. /guest_common.sh
mount_kernel_fs
mount_debug_fs
stay_on_cpu0
exec 3>/dev/ttyS1

out() {
    local up
    read -r up _ </proc/uptime
    echo "$up $*" >&3
}

for arg in $(cat /proc/cmdline); do
    case $arg in
    stalld_scale.backend=*) BACKEND=${arg#*=} ;;
    stalld_scale.threads=*) THREADS=${arg#*=} ;;
    stalld_scale.window=*) WINDOW_S=${arg#*=} ;;
    stalld_scale.isolated=*) ISOLATED=${arg#*=} ;;
    esac
done
read -r DAEMON_ARGS </etc/stalld_scale_args
FIRST=${ISOLATED%-*}
LAST=${ISOLATED#*-}
HOUSEKEEPING=0-$((FIRST - 1))
VICTIM_CPU=$((FIRST + 1))
WARMUP_S=5
# How long the victim is given to be boosted: threshold plus two passes, with room for a
# daemon whose passes come late (a TCG procfs pass over 5,000 threads took seconds).
RESCUE_WAIT_S=60
LOAD_READY_S=300
# Hogs and threads outlive every step above, then exit by themselves.
LIFETIME_S=$((LOAD_READY_S + 60 + WARMUP_S + WINDOW_S + RESCUE_WAIT_S + 30))

# sample LABEL: the daemon's CPU time, BPF run time and peak RSS.
sample() {
    local label=$1 stat ticks exec_ns=0 ns run_ns=0 run_cnt=0 hwm=? sleeps=0 key val fd task
    read -r stat <"/proc/$DAEMON/stat" || return 1
    # Fields after "(comm) ": 14 (utime) is ${12}, 15 (stime) is ${13}.
    set -- ${stat##*) }
    ticks=$((${12} + ${13}))
    for task in /proc/"$DAEMON"/task/*; do
        read -r ns _ <"$task/schedstat" && exec_ns=$((exec_ns + ns))
    done
    for fd in /proc/"$DAEMON"/fdinfo/*; do
        while read -r key val; do
            case $key in
            run_time_ns:) run_ns=$((run_ns + val)) ;;
            run_cnt:) run_cnt=$((run_cnt + val)) ;;
            esac
        done <"$fd"
    done
    while read -r key val _; do
        [ "$key" = VmHWM: ] && hwm=$val
    done <"/proc/$DAEMON/status"
    for task in /proc/"$DAEMON"/task/*; do
        while read -r key val; do
            [ "$key" = voluntary_ctxt_switches: ] && sleeps=$((sleeps + val))
        done <"$task/status"
    done
    out "sample $label ticks=$ticks exec_ns=$exec_ns bpf_run_ns=$run_ns bpf_run_cnt=$run_cnt" \
        "hwm_kb=$hwm sleeps=$sleeps"
}

# run: the steps above; returns at the first that fails.
run() {
    local cpu tries=0 line
    for cpu in $(seq "$FIRST" "$LAST"); do
        scale_load hog "$cpu" "$LIFETIME_S" &
        HOGS="$HOGS $!"
    done
    taskset -c "$HOUSEKEEPING" scale_load threads "$THREADS" "$FIRST" "$LAST" "$LIFETIME_S" \
        >/tmp/load.out 2>&1 &
    LOAD=$!
    until read -r line </tmp/load.out && [ "${line%% *}" = ready ]; do
        alive $LOAD || { out "error scale_load: $(cat /tmp/load.out)"; return 1; }
        [ $tries -ge $((LOAD_READY_S * 10)) ] && { out "error no threads after ${LOAD_READY_S} s"; return 1; }
        sleep 0.1
        tries=$((tries + 1))
    done
    out "mark load_ready ${line#ready }"
    echo 1 >/proc/sys/kernel/bpf_stats_enabled
    stalld $DAEMON_ARGS -b "$BACKEND" -c "$ISOLATED" >/tmp/daemon.out 2>&1 &
    DAEMON=$!
    # The daemon turns RT throttling off before it monitors.
    tries=0
    until [ "$(cat /proc/sys/kernel/sched_rt_runtime_us)" = -1 ]; do
        alive $DAEMON || { out "error the daemon exited: $(tr '\n' ' ' </tmp/daemon.out)"; return 1; }
        [ $tries -ge 600 ] && { out "error the daemon did not start in 60 s"; return 1; }
        sleep 0.1
        tries=$((tries + 1))
    done
    out "mark daemon_ready pid=$DAEMON"
    sleep $WARMUP_S
    sample start || return 1
    sleep "$WINDOW_S"
    sample end || return 1
    scale_load victim "$VICTIM_CPU" &
    VICTIM=$!
    tries=0
    until dmesg | grep -q "stalld: boosted pid $VICTIM "; do
        [ $tries -ge $((RESCUE_WAIT_S * 5)) ] && { out "mark not_boosted pid=$VICTIM within=$RESCUE_WAIT_S"; break; }
        sleep 0.2
        tries=$((tries + 1))
    done
    dmesg | grep -e "stalld_scale: victim pid=$VICTIM " -e "stalld: boosted pid $VICTIM " |
        while IFS= read -r line; do out "kmsg $line"; done
    sample peak
}

out "boot kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)" \
    "isolated=$(cat /sys/devices/system/cpu/isolated)" \
    "nohz_full=$(tr -d ' ' </sys/devices/system/cpu/nohz_full 2>/dev/null)" \
    "backend=$BACKEND threads=$THREADS"
run
for pid in $HOGS; do kill -KILL "$pid" 2>/dev/null; done
for pid in $VICTIM $LOAD; do kill -KILL "$pid" 2>/dev/null; done
if [ -n "$DAEMON" ]; then
    kill -TERM "$DAEMON"
    tries=0
    while alive "$DAEMON" && [ $tries -lt 50 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    alive "$DAEMON" && { out "error the daemon ignored SIGTERM for 5 s"; kill -KILL "$DAEMON"; }
fi
out done
sync
poweroff -f
