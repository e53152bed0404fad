// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * queue_track: which tasks wait on each monitored CPU's run queue, and since when, kept exact by
 * the scheduler's own tracepoints, at a cost per event that does not depend on how many wait.
 *
 * Invariant: a task is in queues[c] (c monitored) exactly while it is runnable on CPU c and not
 * running, with `since_ns` the moment it last stopped running or was woken, and its task
 * storage (`task_waits`) says whether it waits, where and since when, on every CPU, monitored
 * or not, so a task that migrates keeps the true start of its wait. Tracepoints keep it so:
 *   sched_process_fork              the new task gets its storage (never created elsewhere in
 *                                   the scheduler: those tracepoints hold the run queue's lock)
 *   sched_wakeup, sched_wakeup_new  the task starts waiting on task_cpu(p)
 *   sched_switch                    `next` stops waiting; a preempted `prev` starts waiting
 *   sched_migrate_task              a waiting task moves, keeping its `since_ns`
 *   sched_process_exit              whatever is left of the task goes
 * Each touches the task's storage and at most its one slot, under the table's lock for a few
 * stores. The `iter/task` program, run once after they are attached, gives every older task
 * its storage and adds the tasks that were already waiting. A table is full at
 * STALLD_MAX_WAITERS: a task that starts waiting then is only counted in `overflows` (it is the
 * latest waiter, so the table keeps the longest waits), and user space runs the iterator again
 * while a table overflows; the iterator trades a table's latest waiter for an older one, so
 * none is left out for ever. Only tp_btf tracepoints: fentry attach waits for an RCU-tasks
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
_Static_assert(STALLD_MAX_WAITERS <= 256, "free_slots holds bytes");
#define SLOT(i) ((__u32)(i) & (STALLD_MAX_WAITERS - 1))
/* A task storage's `slot` when the task holds none. */
#define NO_SLOT 0xffff

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	/* Resized by user space before load to the number of possible CPUs. */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stalld_cpu_queue);
} queues SEC(".maps");

/* Each task's current wait, on any CPU. Private to this file: user space never reads it. */
struct task_wait {
	/* CLOCK_MONOTONIC ns when the wait began. */
	__u64 since_ns;
	/* nvcsw + nivcsw then: the same wait while unchanged. */
	__u64 switches;
	/* The CPU it waits on. */
	__u32 cpu;
	/*
	 * Its slot in queues[cpu], or NO_SLOT. A hint: the slot is its own only while the slot's
	 * tid is its tid (the iterator may have given the slot to an older waiter).
	 */
	__u16 slot;
	/* 1 from when it is queued until it runs; written under queues[cpu].lock if monitored. */
	__u8 waiting;
	__u8 unused;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_wait);
} task_waits SEC(".maps");

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

/* The task's storage, never created here (see the header). */
static __always_inline struct task_wait *wait_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_waits, p, 0, 0);
}

/* The task's storage, created if it has none: not waiting, no slot. */
static __always_inline struct task_wait *new_wait_of(struct task_struct *p)
{
	struct task_wait none = { .slot = NO_SLOT };

	return bpf_task_storage_get(&task_waits, p, &none, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

/* queues[cpu] if that CPU is monitored, else NULL. */
static __always_inline struct stalld_cpu_queue *monitored_queue(__u32 cpu)
{
	struct stalld_cpu_queue *q = bpf_map_lookup_elem(&queues, &cpu);

	return q && q->monitored ? q : NULL;
}

static __always_inline void describe(struct stalld_waiter *w, struct task_struct *p,
				     __u64 since_ns, __u64 switches)
{
	w->since_ns = since_ns;
	w->switches = switches;
	w->exec_start_ns = p->se.exec_start;
	w->tid = p->pid;
	w->prio = p->prio;
	/* Two loads instead of a helper call; the kernel keeps comm NUL-terminated. */
	_Static_assert(sizeof(w->comm) == 2 * sizeof(__u64), "comm is two words");
	((__u64 *)w->comm)[0] = *(__u64 *)&p->comm[0];
	((__u64 *)w->comm)[1] = *(__u64 *)&p->comm[8];
}

/* A free slot of `q`, or NO_SLOT. Call with q->lock held. */
static __always_inline __u32 take_slot(struct stalld_cpu_queue *q)
{
	if (q->nr_free > 0) {
		q->nr_free--;
		return q->free_slots[SLOT(q->nr_free)];
	}
	if (q->nr_used < STALLD_MAX_WAITERS)
		return q->nr_used++;
	return NO_SLOT;
}

/*
 * Puts `w` in `q`, in the slot its task holds if it still does, else in a free one, else only
 * counts it. Returns true when it took a new slot. Call with q->lock held.
 */
static __always_inline bool place(struct stalld_cpu_queue *q, struct task_wait *s,
				  const struct stalld_waiter *w)
{
	__u32 slot = s->slot;
	bool taken = false;

	if (slot >= STALLD_MAX_WAITERS || q->waiters[SLOT(slot)].tid != w->tid) {
		slot = take_slot(q);
		if (slot >= STALLD_MAX_WAITERS) {
			q->overflows++;
			s->slot = NO_SLOT;
			return false;
		}
		q->nr_waiting++;
		taken = true;
	}
	q->waiters[SLOT(slot)] = *w;
	s->slot = slot;
	return taken;
}

/* Empties the slot the task of `s` holds in `q`, if it still holds it. Call with q->lock held. */
static __always_inline void release(struct stalld_cpu_queue *q, struct task_wait *s, __u32 tid)
{
	__u32 slot = s->slot;

	s->slot = NO_SLOT;
	if (slot >= STALLD_MAX_WAITERS || q->waiters[SLOT(slot)].tid != tid)
		return;
	q->waiters[SLOT(slot)].tid = 0;
	if (q->nr_free < STALLD_MAX_WAITERS) {
		q->free_slots[SLOT(q->nr_free)] = slot;
		q->nr_free++;
	}
	q->nr_waiting--;
}

/* The task of `s` no longer waits: out of its CPU's table. */
static __always_inline void stop_waiting(struct task_wait *s, __u32 tid)
{
	struct stalld_cpu_queue *q = monitored_queue(s->cpu);

	if (!q) {
		s->waiting = 0;
		s->slot = NO_SLOT;
		return;
	}
	bpf_spin_lock(&q->lock);
	s->waiting = 0;
	release(q, s, tid);
	bpf_spin_unlock(&q->lock);
}

/*
 * Wakes user space if it sleeps with nothing to wait for: `w` is now the earliest waiter of
 * the monitored CPUs.
 */
static __always_inline void wake_if_armed(const struct stalld_waiter *w, __u32 cpu)
{
	struct stalld_wake_event event;

	if (!armed || !__sync_lock_test_and_set(&armed, 0))
		return;
	event.since_ns = w->since_ns;
	event.tid = w->tid;
	event.cpu = cpu;
	bpf_ringbuf_output(&wake_events, &event, sizeof(event), 0);
}

/* A waiting task the programs cannot follow (it has no storage): the iterator will. */
static __always_inline void count_untracked(__u32 cpu)
{
	struct stalld_cpu_queue *q = monitored_queue(cpu);

	if (q)
		__sync_fetch_and_add(&q->overflows, 1);
}

/*
 * `p` (storage `s`, not waiting) starts waiting on `cpu` at `since_ns`: recorded in its
 * storage, and in the CPU's table if that CPU is monitored.
 */
static __always_inline void start_waiting(struct task_struct *p, struct task_wait *s, __u32 cpu,
					  __u64 since_ns)
{
	struct stalld_cpu_queue *q = monitored_queue(cpu);
	__u64 switches = task_switches(p);
	struct stalld_waiter w;
	bool added;

	s->since_ns = since_ns;
	s->switches = switches;
	s->cpu = cpu;
	if (!q) {
		s->waiting = 1;
		s->slot = NO_SLOT;
		return;
	}
	describe(&w, p, since_ns, switches);
	bpf_spin_lock(&q->lock);
	s->waiting = 1;
	added = place(q, s, &w);
	bpf_spin_unlock(&q->lock);
	if (added)
		wake_if_armed(&w, cpu);
}

/* Whether `s` records the wait `p` is in now on `cpu`: it has not been switched out since. */
static __always_inline bool same_wait(struct task_wait *s, struct task_struct *p, __u32 cpu)
{
	return s->waiting && s->cpu == cpu && s->switches == task_switches(p);
}

/* `p` is queued on `cpu` and does not run: a new wait, unless it already waits there. */
static __always_inline void queued(struct task_struct *p, __u32 cpu)
{
	struct task_wait *s;

	if (!p->pid || task_on_cpu(p))
		return;
	s = wait_of(p);
	if (!s) {
		count_untracked(cpu);
		return;
	}
	if (same_wait(s, p, cpu))
		return;
	if (s->waiting || s->slot != NO_SLOT)
		stop_waiting(s, p->pid);
	start_waiting(p, s, cpu, bpf_ktime_get_ns());
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle__sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	new_wait_of(child);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(handle__sched_wakeup, struct task_struct *p)
{
	queued(p, task_cpu(p));
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(handle__sched_wakeup_new, struct task_struct *p)
{
	queued(p, task_cpu(p));
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	struct task_wait *s;

	if (next->pid) {
		s = wait_of(next);
		if (s && (s->waiting || s->slot != NO_SLOT))
			stop_waiting(s, next->pid);
	}
	/* A preempted task, or one that called schedule() still TASK_RUNNING, stays queued. */
	if (prev->pid && (preempt || task_state(prev) == TASK_RUNNING)) {
		__u32 cpu = bpf_get_smp_processor_id();

		s = wait_of(prev);
		if (!s) {
			count_untracked(cpu);
			return 0;
		}
		if (s->waiting || s->slot != NO_SLOT)
			stop_waiting(s, prev->pid);
		start_waiting(prev, s, cpu, bpf_ktime_get_ns());
	}
	return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(handle__sched_migrate_task, struct task_struct *p, int dest_cpu)
{
	struct task_wait *s;
	__u64 since_ns;

	s = wait_of(p);
	if (!s || !s->waiting || s->cpu == (__u32)dest_cpu)
		return 0;
	if (s->switches != task_switches(p)) {
		/* Ran since: a stale record (a switch its program could not follow). */
		stop_waiting(s, p->pid);
		return 0;
	}
	since_ns = s->since_ns;
	stop_waiting(s, p->pid);
	start_waiting(p, s, dest_cpu, since_ns);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *p)
{
	struct task_wait *s = wait_of(p);

	if (s && (s->waiting || s->slot != NO_SLOT))
		stop_waiting(s, p->pid);
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

/* The table's latest waiter, found by the iterator without the lock, checked under it. */
struct latest_waiter {
	struct stalld_cpu_queue *q;
	__u64 since_ns;
	__u32 tid;
	__u32 slot;
};

static long latest_in_slot(__u32 i, struct latest_waiter *latest)
{
	struct stalld_waiter *w = &latest->q->waiters[SLOT(i)];

	if (w->tid && w->since_ns >= latest->since_ns) {
		latest->since_ns = w->since_ns;
		latest->tid = w->tid;
		latest->slot = SLOT(i);
	}
	return 0;
}

/*
 * Run after the tracepoints are attached: gives every task its storage and adds every task
 * already waiting, dated by queued_since(). Run again while a table overflows: a waiting task
 * without a slot then takes the slot of the table's latest waiter if it has waited longer
 * (its storage keeps its true start), and a table entry whose task is asleep (a switch a
 * program could not follow) is cleared. Under the queue's lock it checks again that the task
 * still waits the same wait, so a tracepoint that already handled the task cannot be undone
 * by a stale view.
 */
SEC("iter/task")
int snapshot_waiting(struct bpf_iter__task *ctx)
{
	struct task_struct *p = ctx->task;
	struct latest_waiter latest = {};
	struct stalld_cpu_queue *q;
	struct stalld_waiter w;
	struct task_wait *s;
	__u64 switches, since_ns;
	bool added = false;
	__u32 cpu;

	if (!p || !p->pid)
		return 0;
	s = new_wait_of(p);
	if (!s)
		return 0;
	cpu = task_cpu(p);
	switches = task_switches(p);
	q = monitored_queue(cpu);
	if (!is_waiting(p)) {
		if (q && s->slot != NO_SLOT && s->cpu == cpu) {
			bpf_spin_lock(&q->lock);
			if (!p->on_rq || s->switches != task_switches(p)) {
				s->waiting = 0;
				release(q, s, p->pid);
			}
			bpf_spin_unlock(&q->lock);
		}
		return 0;
	}
	if (same_wait(s, p, cpu)) {
		since_ns = s->since_ns;
	} else {
		if (s->waiting || s->slot != NO_SLOT)
			stop_waiting(s, p->pid);
		since_ns = queued_since(p, bpf_ktime_get_ns());
	}
	if (!q) {
		s->since_ns = since_ns;
		s->switches = switches;
		s->cpu = cpu;
		s->waiting = 1;
		return 0;
	}
	describe(&w, p, since_ns, switches);
	latest.q = q;
	if (!q->nr_free && q->nr_used >= STALLD_MAX_WAITERS)
		bpf_loop(STALLD_MAX_WAITERS, latest_in_slot, &latest, 0);
	bpf_spin_lock(&q->lock);
	if (is_waiting(p) && task_switches(p) == switches && task_cpu(p) == cpu &&
	    (!s->waiting || s->switches == switches)) {
		s->since_ns = since_ns;
		s->switches = switches;
		s->cpu = cpu;
		s->waiting = 1;
		added = place(q, s, &w);
		if (!added && s->slot == NO_SLOT && latest.tid &&
		    q->waiters[SLOT(latest.slot)].tid == latest.tid &&
		    q->waiters[SLOT(latest.slot)].since_ns > since_ns) {
			q->waiters[SLOT(latest.slot)] = w;
			s->slot = latest.slot;
			added = true;
		}
	}
	bpf_spin_unlock(&q->lock);
	if (added)
		wake_if_armed(&w, cpu);
	return 0;
}
