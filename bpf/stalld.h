/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The only ABI between bpf/stalld.bpf.c and src/backend/queue_track.rs. The Rust side reads the
 * tables and the ring buffer's records through the types libbpf-cargo generates from this
 * header's BTF (and checks their sizes and offsets at compile time), so a change here is seen
 * on both sides. Every struct is laid out without implicit padding.
 */
#ifndef STALLD_H
#define STALLD_H

enum stalld_limits {
	/* Waiting tasks tracked per CPU; more are counted in `overflows`. */
	STALLD_MAX_WAITERS = 128,
	STALLD_COMM_LEN = 16,
};

/* One task that is runnable on a CPU but not running there. */
struct stalld_waiter {
	/* CLOCK_MONOTONIC ns when it stopped running (preempted) or was woken: its wait began. */
	__u64 since_ns;
	/* nvcsw + nivcsw then: the task has not run since while this is unchanged. */
	__u64 switches;
	/* se.exec_start then, in its CPU's clock_task domain (0: never ran). */
	__u64 exec_start_ns;
	__u32 tid;
	/* Kernel priority: 0..99 real-time, 100..139 fair. */
	__s32 prio;
	/* The thread's own name. */
	char comm[STALLD_COMM_LEN];
};

/*
 * The waiting tasks of one CPU: the slots of `waiters` whose `tid` is not 0, in no particular
 * order. Each task remembers its slot (BPF task storage), so that adding or removing one touches
 * that slot and the free list only, whatever the number waiting. Written by the BPF programs
 * under `lock`; user space copies it whole with BPF_F_LOCK, so it never sees a half-updated
 * table.
 */
struct stalld_cpu_queue {
	struct bpf_spin_lock lock;
	/* Slots in use. */
	__u32 nr_waiting;
	/* Set by user space before attaching: only monitored CPUs keep a table. */
	__u32 monitored;
	/* free_slots[0 .. nr_free) are slots emptied since; slots nr_used .. end were never used. */
	__u16 nr_free;
	__u16 nr_used;
	/*
	 * Waiting tasks left out because the table was full: one each time a task began waiting
	 * then, or the task iterator met one it had no room for (or evicted one for it).
	 */
	__u64 overflows;
	__u8 free_slots[STALLD_MAX_WAITERS];
	struct stalld_waiter waiters[STALLD_MAX_WAITERS];
};

/* Posted to the `wake_events` ring buffer by the first task to start waiting while armed. */
struct stalld_wake_event {
	__u64 since_ns;
	__u32 tid;
	__u32 cpu;
};

#endif /* STALLD_H */
