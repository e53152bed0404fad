/*
 * The scale bench's guest workload (tests/bench/scale.rs builds it with `musl-gcc -static`;
 * tests/bench/scale_init.sh runs it). Every mode bounds itself in time, except a starved
 * victim, which cannot run to notice its deadline: the guest kills it by PID.
 *
 *   scale_load threads N FIRST_CPU LAST_CPU SECONDS
 *       N threads: one waiting (SCHED_OTHER, spinning) on each CPU FIRST_CPU..LAST_CPU (behind
 *       that CPU's hog), N/20 churning (sleep 100 ms, wake, sleep again), the rest sleeping.
 *       Prints `ready sleeping=.. churning=.. waiting=..` once all run, exits after SECONDS.
 *   scale_load hog CPU SECONDS
 *       SCHED_FIFO 50 busy loop on CPU, for SECONDS.
 *   scale_load victim CPU
 *       SCHED_FIFO 1: writes `stalld_scale: victim pid=P waits on cpu CPU` to /dev/kmsg (the
 *       kernel stamps it), then moves itself onto CPU, where the hog keeps it waiting; exits as
 *       soon as it runs there (once stalld boosts it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CHURN_EVERY 20
#define CHURN_SLEEP_NS 100000000L
#define STACK_BYTES (64 * 1024)

static struct timespec deadline;

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static int past_deadline(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > deadline.tv_sec ||
	       (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

static void set_deadline(const char *seconds)
{
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += atol(seconds);
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
}

/* musl's sched_setscheduler() is a stub (ENOSYS): the system call itself. */
static void fifo(int priority)
{
	struct sched_param param = { .sched_priority = priority };

	if (syscall(SYS_sched_setscheduler, 0, SCHED_FIFO, &param))
		die("sched_setscheduler");
}

static void *sleeping(void *unused)
{
	(void)unused;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL))
		;
	return NULL;
}

static void *churning(void *unused)
{
	struct timespec nap = { 0, CHURN_SLEEP_NS };

	(void)unused;
	while (!past_deadline())
		nanosleep(&nap, NULL);
	return NULL;
}

static void *waiting(void *cpu)
{
	unsigned long spins = 0;

	pin((int)(long)cpu);
	while ((++spins & 0xfffff) || !past_deadline())
		;
	return NULL;
}

static void start(pthread_attr_t *attr, void *(*body)(void *), long arg)
{
	pthread_t thread;
	int err = pthread_create(&thread, attr, body, (void *)arg);

	if (err) {
		fprintf(stderr, "pthread_create: %s\n", strerror(err));
		exit(2);
	}
}

static int threads(long n, int first_cpu, int last_cpu)
{
	long waiters = last_cpu - first_cpu + 1, churners = n / CHURN_EVERY, i;
	pthread_attr_t attr;

	if (waiters > n)
		waiters = n;
	if (churners > n - waiters)
		churners = n - waiters;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, STACK_BYTES);
	for (i = 0; i < waiters; i++)
		start(&attr, waiting, first_cpu + i);
	for (i = 0; i < churners; i++)
		start(&attr, churning, 0);
	for (i = waiters + churners; i < n; i++)
		start(&attr, sleeping, 0);
	printf("ready sleeping=%ld churning=%ld waiting=%ld\n", n - waiters - churners,
	       churners, waiters);
	fflush(stdout);
	sleeping(NULL);
	return 0;
}

static int hog(int cpu)
{
	unsigned long spins = 0;

	fifo(50);
	pin(cpu);
	while ((++spins & 0xfffff) || !past_deadline())
		;
	return 0;
}

static int victim(int cpu)
{
	char line[80];
	int kmsg = open("/dev/kmsg", O_WRONLY);

	if (kmsg < 0)
		die("/dev/kmsg");
	fifo(1);
	snprintf(line, sizeof(line), "stalld_scale: victim pid=%d waits on cpu %d\n", getpid(),
		 cpu);
	if (write(kmsg, line, strlen(line)) < 0)
		die("write /dev/kmsg");
	pin(cpu);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "threads")) {
		set_deadline(argv[5]);
		return threads(atol(argv[2]), atoi(argv[3]), atoi(argv[4]));
	}
	if (argc == 4 && !strcmp(argv[1], "hog")) {
		set_deadline(argv[3]);
		return hog(atoi(argv[2]));
	}
	if (argc == 3 && !strcmp(argv[1], "victim"))
		return victim(atoi(argv[2]));
	fprintf(stderr, "usage: scale_load threads N FIRST_CPU LAST_CPU SECONDS\n"
			"       scale_load hog CPU SECONDS\n"
			"       scale_load victim CPU\n");
	return 2;
}
