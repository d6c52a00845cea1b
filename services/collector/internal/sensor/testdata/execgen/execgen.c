/*
 * execgen: the sensor benchmark's exec load without a language runtime.
 *
 *   execgen RATE SECONDS WORKERS PATH
 *
 * WORKERS processes each vfork and execve PATH (argv "/bin/true W-I", what
 * the benchmark counts) and wait for it, paced so that together they aim at
 * RATE execs a second for SECONDS. Prints "MADE SECONDS_TAKEN" like loadgen.
 * The Go loadgen spends about 0.8 ms of CPU per exec around ForkExec and
 * Wait4; on two cores that capped it below 2,000 a second beside the
 * sensor's reader. Built static (gcc -O2 -static) to run in a FROM-scratch
 * container.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	struct timespec ts = {(time_t)t, (long)((t - (time_t)t) * 1e9)};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0)
		;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: execgen RATE SECONDS WORKERS PATH\n");
		return 2;
	}
	int rate = atoi(argv[1]), secs = atoi(argv[2]), workers = atoi(argv[3]);
	const char *path = argv[4];
	if (rate <= 0 || secs <= 0 || workers <= 0 || workers > 256) {
		fprintf(stderr, "execgen: RATE and SECONDS > 0, WORKERS 1..256\n");
		return 2;
	}
	/* Each worker's count, shared with the parent. */
	long *made = mmap(NULL, sizeof(long) * workers, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (made == MAP_FAILED) {
		perror("execgen: mmap");
		return 1;
	}
	double interval = (double)workers / rate;
	double start = now(), end = start + secs;
	for (int w = 0; w < workers; w++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("execgen: fork");
			return 1;
		}
		if (pid > 0)
			continue;
		char *envp[] = {NULL};
		char arg[32];
		double next = start + w * interval / workers;
		for (long i = 0;; i++) {
			double t = now();
			if (t >= end)
				_exit(0);
			if (next > t)
				sleep_until(next);
			next += interval;
			snprintf(arg, sizeof arg, "%d-%ld", w, i);
			char *args[] = {"/bin/true", arg, NULL};
			pid_t child = vfork();
			if (child == 0) {
				execve(path, args, envp);
				_exit(127);
			}
			int status;
			if (child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0)
				made[w]++;
		}
	}
	long total = 0;
	for (int w = 0; w < workers; w++) {
		int status;
		wait(&status);
	}
	for (int w = 0; w < workers; w++)
		total += made[w];
	printf("%ld %f\n", total, now() - start);
	return 0;
}
