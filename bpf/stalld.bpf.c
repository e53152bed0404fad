// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * queue_track: which tasks wait on each CPU's run queue, and since when, kept exact by the
 * scheduler's own tracepoints.
 *
 * Invariant: a task is in queues[c] exactly while it is runnable on CPU c and not running,
 * with `since_ns` the moment it last stopped running or was woken. Tracepoints keep it so:
 *   sched_wakeup, sched_wakeup_new  the task starts waiting on task_cpu(p)
 *   sched_switch                    `next` stops waiting; a preempted `prev` starts waiting
 *   sched_migrate_task              a waiting task moves, keeping its `since_ns`
 *   sched_process_exit              whatever is left of the task goes
 * and the `iter/task` program, run once after they are attached, adds the tasks that were
 * already waiting at startup. A table is full at STALLD_MAX_WAITERS: a task that starts waiting
 * then is only counted in `overflows`, and user space runs the iterator again while a table
 * overflows; the iterator keeps the tasks that have waited longest, so none is left out for
 * ever. Only tp_btf tracepoints: fentry attach waits for an RCU-tasks
 * grace period, which a CPU hogged by a real-time task never gives.
 *
 * User space reads queues[c] with BPF_F_LOCK (one consistent copy per CPU) and, while it has
 * nothing to wait for, sets `armed`: the next task to start waiting then posts one wake event.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "stalld.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING 0
#define TASK_ON_RQ_QUEUED 1

/*
 * A table index the verifier can prove in bounds: the compiler may compute an address before
 * the range check that guards it, so every index is masked where it is used.
 */
_Static_assert((STALLD_MAX_WAITERS & (STALLD_MAX_WAITERS - 1)) == 0, "power of two");
#define SLOT(i) ((__u32)(i) & (STALLD_MAX_WAITERS - 1))

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	/* Resized by user space before load to the number of possible CPUs. */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stalld_cpu_queue);
} queues SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* One event per arming, so a page is plenty. */
	__uint(max_entries, 4096);
} wake_events SEC(".maps");

/* 1 while user space sleeps with nothing to wait for; the first new waiter clears it. */
__u32 armed = 0;
/* Never used: makes libbpf-cargo generate the Rust type of the `wake_events` records. */
struct stalld_wake_event _wake_event_type = {};

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

static __always_inline void describe(struct stalld_waiter *w, struct task_struct *p,
				     __u64 since_ns)
{
	w->since_ns = since_ns;
	w->switches = task_switches(p);
	w->exec_start_ns = p->se.exec_start;
	w->tid = p->pid;
	w->prio = p->prio;
	bpf_probe_read_kernel_str(w->comm, sizeof(w->comm), p->comm);
}

/* Index of `tid` in `q`, or -1. Call with q->lock held. */
static __always_inline int find(struct stalld_cpu_queue *q, __u32 tid)
{
	for (int i = 0; i < STALLD_MAX_WAITERS; i++) {
		if (i >= q->nr_waiting)
			break;
		if (q->waiters[i].tid == tid)
			return i;
	}
	return -1;
}

/* Removes entry `i` by moving the last one into its place. Call with q->lock held. */
static __always_inline void remove_at(struct stalld_cpu_queue *q, int i)
{
	__u32 last = q->nr_waiting - 1;

	if (i < 0 || i >= STALLD_MAX_WAITERS || last >= STALLD_MAX_WAITERS)
		return;
	q->waiters[SLOT(i)] = q->waiters[SLOT(last)];
	q->nr_waiting = last;
}

/*
 * Adds `w`. A task already waiting keeps its earlier `since_ns`, unless its entry is stale
 * (the task switched since): then `w` replaces it. Returns true when added. Call with
 * q->lock held.
 */
static __always_inline bool insert(struct stalld_cpu_queue *q, const struct stalld_waiter *w)
{
	__u32 n = q->nr_waiting;
	int i = find(q, w->tid);

	if (i >= 0 && i < STALLD_MAX_WAITERS) {
		if (q->waiters[SLOT(i)].switches != w->switches)
			q->waiters[SLOT(i)] = *w;
		return false;
	}
	if (n >= STALLD_MAX_WAITERS) {
		q->overflows++;
		return false;
	}
	q->waiters[SLOT(n)] = *w;
	q->nr_waiting = n + 1;
	return true;
}

/*
 * Adds `w` to a full table in place of the entry that began waiting last, if `w` has waited
 * longer; either way one waiting task is left out, and counted. Returns true when added. Call
 * with q->lock held, `w` not in `q`.
 */
static __always_inline bool replace_latest(struct stalld_cpu_queue *q,
					   const struct stalld_waiter *w)
{
	__u64 latest_ns = 0;
	int latest = -1;

	q->overflows++;
	for (int i = 0; i < STALLD_MAX_WAITERS; i++) {
		if (i >= q->nr_waiting)
			break;
		if (q->waiters[SLOT(i)].since_ns >= latest_ns) {
			latest_ns = q->waiters[SLOT(i)].since_ns;
			latest = i;
		}
	}
	if (latest < 0 || latest_ns <= w->since_ns)
		return false;
	q->waiters[SLOT(latest)] = *w;
	return true;
}

/*
 * Wakes user space if it sleeps with nothing to wait for: `w` is now the earliest waiter of
 * the monitored CPUs. Every CPU is tracked, monitored or not, so that a task that began
 * waiting elsewhere and migrates to a monitored CPU keeps the true start of its wait.
 */
static __always_inline void wake_if_armed(const struct stalld_cpu_queue *q,
					  const struct stalld_waiter *w, __u32 cpu)
{
	struct stalld_wake_event event;

	if (!q->monitored || !armed || !__sync_lock_test_and_set(&armed, 0))
		return;
	event.since_ns = w->since_ns;
	event.tid = w->tid;
	event.cpu = cpu;
	bpf_ringbuf_output(&wake_events, &event, sizeof(event), 0);
}

static __always_inline void start_waiting(struct task_struct *p, __u32 cpu)
{
	struct stalld_cpu_queue *q;
	struct stalld_waiter w;
	bool added;

	if (!p->pid || task_on_cpu(p))
		return;
	q = bpf_map_lookup_elem(&queues, &cpu);
	if (!q)
		return;
	describe(&w, p, bpf_ktime_get_ns());
	bpf_spin_lock(&q->lock);
	added = insert(q, &w);
	bpf_spin_unlock(&q->lock);
	if (added)
		wake_if_armed(q, &w, cpu);
}

static __always_inline void stop_waiting(__u32 tid, __u32 cpu)
{
	struct stalld_cpu_queue *q = bpf_map_lookup_elem(&queues, &cpu);

	if (!q)
		return;
	bpf_spin_lock(&q->lock);
	remove_at(q, find(q, tid));
	bpf_spin_unlock(&q->lock);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(handle__sched_wakeup, struct task_struct *p)
{
	start_waiting(p, task_cpu(p));
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(handle__sched_wakeup_new, struct task_struct *p)
{
	start_waiting(p, task_cpu(p));
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct stalld_cpu_queue *q;
	struct stalld_waiter w;
	/* A preempted task, or one that called schedule() still TASK_RUNNING, stays queued. */
	bool prev_waits = prev->pid && (preempt || task_state(prev) == TASK_RUNNING);
	bool added = false;

	q = bpf_map_lookup_elem(&queues, &cpu);
	if (!q)
		return 0;
	if (prev_waits)
		describe(&w, prev, bpf_ktime_get_ns());
	bpf_spin_lock(&q->lock);
	if (next->pid)
		remove_at(q, find(q, next->pid));
	if (prev_waits)
		added = insert(q, &w);
	bpf_spin_unlock(&q->lock);
	if (added)
		wake_if_armed(q, &w, cpu);
	return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(handle__sched_migrate_task, struct task_struct *p, int dest_cpu)
{
	__u32 from = task_cpu(p), to = dest_cpu;
	struct stalld_cpu_queue *q;
	struct stalld_waiter w;
	bool moved = false;
	int i;

	if (from == to)
		return 0;
	q = bpf_map_lookup_elem(&queues, &from);
	if (!q)
		return 0;
	bpf_spin_lock(&q->lock);
	i = find(q, p->pid);
	if (i >= 0 && i < STALLD_MAX_WAITERS) {
		w = q->waiters[SLOT(i)];
		remove_at(q, i);
		moved = true;
	}
	bpf_spin_unlock(&q->lock);
	if (!moved)
		return 0;
	q = bpf_map_lookup_elem(&queues, &to);
	if (!q)
		return 0;
	bpf_spin_lock(&q->lock);
	moved = insert(q, &w);
	bpf_spin_unlock(&q->lock);
	if (moved)
		wake_if_armed(q, &w, to);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *p)
{
	stop_waiting(p->pid, task_cpu(p));
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

/*
 * Run after the tracepoints are attached, to add every task already waiting, dated by
 * queued_since(), and again while a table overflows: a full table then trades its latest
 * waiter for an older one (replace_latest). Under the queue's lock it checks again that the
 * task is neither running nor switched since it was read, so a tracepoint that already
 * handled the task cannot be undone by a stale view.
 */
SEC("iter/task")
int snapshot_waiting(struct bpf_iter__task *ctx)
{
	struct task_struct *p = ctx->task;
	struct stalld_cpu_queue *q;
	struct stalld_waiter w;
	__u64 since_ns;
	__u32 cpu;
	bool added = false;

	if (!p || !p->pid)
		return 0;
	cpu = task_cpu(p);
	q = bpf_map_lookup_elem(&queues, &cpu);
	if (!q)
		return 0;
	if (p->on_rq != TASK_ON_RQ_QUEUED || task_on_cpu(p))
		return 0;
	if (bpf_core_field_exists(p->se.sched_delayed) && p->se.sched_delayed)
		return 0; /* asleep; only kept on the queue until its lag is paid */
	since_ns = queued_since(p, bpf_ktime_get_ns());
	describe(&w, p, since_ns);
	bpf_spin_lock(&q->lock);
	if (!task_on_cpu(p) && task_switches(p) == w.switches && task_cpu(p) == cpu) {
		if (q->nr_waiting >= STALLD_MAX_WAITERS && find(q, w.tid) < 0)
			added = replace_latest(q, &w);
		else
			added = insert(q, &w);
	}
	bpf_spin_unlock(&q->lock);
	if (added)
		wake_if_armed(q, &w, cpu);
	return 0;
}
