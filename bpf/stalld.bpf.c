// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * queue_track: which tasks wait on each monitored CPU's run queue, and since when.
 *
 * The tracepoints only remember, in each task's storage (`task_waits`), when its latest wait
 * began and its switch count then: a wake-up or a preemption writes two words, without a lock
 * or a table, whatever the number of waiting tasks and whether the CPU is monitored. The
 * record describes the task's wait for as long as its switch count is unchanged: a task that
 * ran since was switched out (the count grows before sched_switch fires), and a task that
 * migrates while waiting keeps its record, so its wait keeps its true start.
 *   sched_process_fork              the new task gets its storage (never created elsewhere in
 *                                   the scheduler: those tracepoints hold the run queue's lock)
 *   sched_wakeup, sched_wakeup_new  the task starts waiting (unless it is woken on an idle
 *                                   CPU, where it runs next)
 *   sched_switch                    a preempted `prev` starts waiting
 * The task iterator (`iter/task`), which user space runs for every sample, writes one record
 * for each task that waits now on a monitored CPU, dated by its storage when the record is of
 * this wait; otherwise (a wait no tracepoint recorded: older than the programs, or begun by
 * a wake-up on an idle CPU) by the kernel's own enqueue time, sched_info.last_queued, or
 * failing that by this first sighting, which it keeps in the storage so that the next samples
 * date the wait alike. It also gives every task its storage. Each record carries the task's
 * run counts, so that user space can tell later, from /proc/<tid>/schedstat alone, whether
 * the wait goes on.
 * Only tp_btf tracepoints: fentry attach waits for an RCU-tasks grace period, which a CPU
 * hogged by a real-time task never gives.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "stalld.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING 0
#define TASK_ON_RQ_QUEUED 1

/* Set by user space before load: bit c of word c / 64 for each monitored CPU c. */
const volatile __u64 monitored_cpus[STALLD_MAX_CPUS / 64] = {};

/* Each task's latest wait. Private to this file: user space never reads it. */
struct task_wait {
	/* CLOCK_MONOTONIC ns when the wait began; 0: no wait recorded yet. */
	__u64 since_ns;
	/* nvcsw + nivcsw then: the same wait while unchanged. */
	__u64 switches;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_wait);
} task_waits SEC(".maps");

/* Never used: makes libbpf-cargo generate the Rust type of the iterator's records. */
struct stalld_waiter _waiter_type = {};

/* Kernels before 5.14 call the state `state`; before 5.16 the CPU is task_struct's own. */
struct task_struct___pre_5_14 {
	long state;
} __attribute__((preserve_access_index));

struct task_struct___pre_5_16 {
	unsigned int cpu;
} __attribute__((preserve_access_index));

static __always_inline unsigned int task_state(struct task_struct *p)
{
	if (bpf_core_field_exists(p->__state))
		return p->__state;
	return ((struct task_struct___pre_5_14 *)p)->state;
}

static __always_inline __u32 task_cpu(struct task_struct *p)
{
	if (bpf_core_field_exists(p->thread_info.cpu))
		return p->thread_info.cpu;
	return ((struct task_struct___pre_5_16 *)p)->cpu;
}

/* Whether `p` is on a CPU right now (or being switched there). */
static __always_inline bool task_on_cpu(struct task_struct *p)
{
	if (bpf_core_field_exists(p->on_cpu))
		return p->on_cpu;
	return p == bpf_get_current_task_btf();
}

static __always_inline __u64 task_switches(struct task_struct *p)
{
	return p->nvcsw + p->nivcsw;
}

/* The task's storage, never created here (see the header). */
static __always_inline struct task_wait *wait_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_waits, p, 0, 0);
}

/* The task's storage, created if it has none: no wait recorded. */
static __always_inline struct task_wait *new_wait_of(struct task_struct *p)
{
	struct task_wait none = {};

	return bpf_task_storage_get(&task_waits, p, &none, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

static __always_inline bool is_monitored(__u32 cpu)
{
	if (cpu >= STALLD_MAX_CPUS)
		return false;
	return (monitored_cpus[(cpu / 64) & (STALLD_MAX_CPUS / 64 - 1)] >> (cpu % 64)) & 1;
}

/* `p`, queued and not running, starts a wait now. */
static __always_inline void starts_waiting(struct task_struct *p)
{
	struct task_wait *s = wait_of(p);

	if (!s)
		return;
	s->since_ns = bpf_ktime_get_ns();
	s->switches = task_switches(p);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle__sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	new_wait_of(child);
	return 0;
}

/*
 * Most wake-ups of an idle machine are not recorded: a task woken on this CPU while it idles
 * (the idle task, pid 0, is current: a timer, or the IPI of a remote wake-up) runs next. Its
 * storage keeps the record of an earlier wait, whose switch count no longer matches, so if it
 * does wait after all, the iterator dates it by the kernel's enqueue time or its first
 * sighting: late, never early. Measured idle: this check saves 1.6 us of the 2.5 us a cold
 * wake-up cost (an empty program costs 0.7 us).
 */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(handle__sched_wakeup, struct task_struct *p)
{
	if (task_cpu(p) == bpf_get_smp_processor_id() && !bpf_get_current_task_btf()->pid)
		return 0;
	/* Woken before it was switched out: it never stopped running. */
	if (!task_on_cpu(p))
		starts_waiting(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(handle__sched_wakeup_new, struct task_struct *p)
{
	starts_waiting(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	/* A preempted task, or one that called schedule() still TASK_RUNNING, stays queued. */
	if (prev->pid && (preempt || task_state(prev) == TASK_RUNNING))
		starts_waiting(prev);
	return 0;
}

/*
 * When `p`, waiting now, was queued, as CLOCK_MONOTONIC ns: its sched_info.last_queued
 * (CONFIG_SCHED_INFO; set when it is woken or preempted, reset when it runs or migrates)
 * against its run queue's clock, in the same domain. The queue's clock lags by up to a tick,
 * so the wait can only come out short. Where the kernel keeps neither (or the queue cannot
 * be reached: no CONFIG_FAIR_GROUP_SCHED), `now_ns`: the moment it is proven waiting.
 * Never se.exec_start: that is when it last ran, before any sleep it woke from.
 */
static __always_inline __u64 queued_since(struct task_struct *p, __u64 now_ns)
{
	__u64 queued, clock;

	if (!bpf_core_field_exists(p->sched_info.last_queued) ||
	    !bpf_core_field_exists(((struct cfs_rq *)0)->rq))
		return now_ns;
	queued = BPF_CORE_READ(p, sched_info.last_queued);
	clock = BPF_CORE_READ(p, se.cfs_rq, rq, clock);
	if (!queued || clock < queued || clock - queued >= now_ns)
		return now_ns;
	return now_ns - (clock - queued);
}

/* Whether `p` is queued and not running, nor asleep (kept queued until its lag is paid). */
static __always_inline bool is_waiting(struct task_struct *p)
{
	if (p->on_rq != TASK_ON_RQ_QUEUED || task_on_cpu(p))
		return false;
	return !(bpf_core_field_exists(p->se.sched_delayed) && p->se.sched_delayed);
}

/*
 * Writes a record for `p` if it waits on a monitored CPU now. Its wait began at its storage's
 * record if that is of this wait (same switch count), else at queued_since(), which the
 * storage then keeps. The task's state is read without its run queue's lock: a task that
 * starts or stops waiting meanwhile is seen either way, and a record is never dated before
 * the wait's true start.
 */
SEC("iter/task")
int snapshot_waiting(struct bpf_iter__task *ctx)
{
	struct task_struct *p = ctx->task;
	struct stalld_waiter w = {};
	struct task_wait *s;
	__u64 switches;
	__u32 cpu;

	if (!p || !p->pid)
		return 0;
	s = new_wait_of(p);
	cpu = task_cpu(p);
	/* Most tasks sleep: they are passed over before anything else is read. */
	if (!is_monitored(cpu) || !is_waiting(p))
		return 0;
	/*
	 * Read before the task is found waiting again: if it is switched in meanwhile, the
	 * counts taken are those of before, and a later reading shows that it ran (a weakly
	 * ordered CPU may reorder the loads; the CPU time still shows any run over a tick).
	 */
	if (bpf_core_field_exists(p->sched_info.pcount)) {
		w.runs = BPF_CORE_READ(p, sched_info.pcount);
		w.run_time_ns = p->se.sum_exec_runtime;
	}
	if (!is_waiting(p))
		return 0;
	switches = task_switches(p);
	if (s && s->since_ns && s->switches == switches) {
		w.since_ns = s->since_ns;
	} else {
		w.since_ns = queued_since(p, bpf_ktime_get_ns());
		if (s) {
			s->since_ns = w.since_ns;
			s->switches = switches;
		}
	}
	w.switches = switches;
	w.tid = p->pid;
	w.prio = p->prio;
	w.cpu = cpu;
	/* Two loads instead of a helper call; the kernel keeps comm NUL-terminated. */
	_Static_assert(sizeof(w.comm) == 2 * sizeof(__u64), "comm is two words");
	((__u64 *)w.comm)[0] = *(__u64 *)&p->comm[0];
	((__u64 *)w.comm)[1] = *(__u64 *)&p->comm[8];
	bpf_seq_write(ctx->meta->seq, &w, sizeof(w));
	return 0;
}
