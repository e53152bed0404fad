/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The only ABI between bpf/stalld.bpf.c and src/backend/queue_track.rs. The Rust side reads the
 * task iterator's records and sets the monitored CPUs through the types libbpf-cargo generates
 * from this header's BTF (and checks their sizes and offsets at compile time), so a change here
 * is seen on both sides. Every struct is laid out without implicit padding.
 */
#ifndef STALLD_H
#define STALLD_H

enum stalld_limits {
	/* CPUs the `monitored_cpus` bitmap covers; a kernel with more possible CPUs is refused. */
	STALLD_MAX_CPUS = 4096,
	STALLD_COMM_LEN = 16,
};

/* One task that is runnable on a monitored CPU but not running there, as the iterator saw it. */
struct stalld_waiter {
	/* CLOCK_MONOTONIC ns when it stopped running (preempted) or was woken: its wait began. */
	__u64 since_ns;
	/* nvcsw + nivcsw then: the task has not run since while this is unchanged. */
	__u64 switches;
	/*
	 * Times it was switched in (sched_info.pcount) and its CPU time (se.sum_exec_runtime),
	 * read before it was last found waiting: both unchanged later mean it has not run
	 * since, even if it runs now (/proc/<tid>/schedstat tells them without a sample). 0
	 * without CONFIG_SCHED_INFO.
	 */
	__u64 runs;
	__u64 run_time_ns;
	__u32 tid;
	/* Kernel priority: 0..99 real-time, 100..139 fair. */
	__s32 prio;
	/* The CPU whose run queue it waits on. */
	__u32 cpu;
	__u32 unused;
	/* The thread's own name. */
	char comm[STALLD_COMM_LEN];
};

#endif /* STALLD_H */
