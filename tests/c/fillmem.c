/*
 * fillmem.c - a program with large patterned anonymous memory, for the multi-threaded page
 * fill of the restorer blob (tests/test_restore_fill.py, benchmarks/restore_bench.py).
 *
 *   fillmem DIR MIB [TASKS]
 *
 * Maps four anonymous areas and writes a pattern that differs at every 8-byte word
 * (word = f(address)), so a page read into the wrong place or not read at all shows:
 *   hg     MIB/2 MiB, MADV_HUGEPAGE          (VmFlags hg: huge pages in the THP "madvise" mode)
 *   nh     MIB/4 MiB, MADV_NOHUGEPAGE        (nh)
 *   plain  MIB/4 MiB, no advice, every 16th page left untouched (a hole: zero after restore)
 *   small  64 KiB, MADV_HUGEPAGE, one page touched
 * One extra thread sleeps, so the checkpoint has two threads.  With TASKS = 2 it then forks
 * a child that does the same (its own copy of the areas, its own thread): a tree whose
 * tasks all fill at once.  When ready the first writes DIR/ready ("<pid> <hg> <nh> <plain>
 * <small>": each area's start address in hex; the child's pid follows as a last line once
 * it is ready too).  On SIGUSR1 each checks every word of every area and writes
 * DIR/check-<pid>: "ok <words>" or "bad <address>".  It never exits by itself.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096ul
#define HOLE_EVERY 16	/* in "plain", page n is untouched when n % HOLE_EVERY == 7 */

struct area {
	const char *name;
	uint8_t *start;
	size_t len;
	int advice;		/* -1: none */
	int holes;		/* 1: leave every HOLE_EVERY-th page untouched */
	size_t touched;		/* bytes written from the start (the rest stays zero) */
};

static struct area areas[4];
static volatile sig_atomic_t check_wanted;
static const char *dir;

static uint64_t pattern(uint64_t addr)
{
	uint64_t x = addr * 0x9E3779B97F4A7C15ull;

	return x ^ (x >> 29) ^ 0x5a5a5a5a5a5a5a5aull;
}

static int is_hole(const struct area *a, size_t off)
{
	return off >= a->touched || (a->holes && (off / PAGE) % HOLE_EVERY == 7);
}

static void fill(struct area *a)
{
	size_t off;

	for (off = 0; off < a->len; off += 8) {
		if (!is_hole(a, off))
			*(uint64_t *)(a->start + off) = pattern((uint64_t)(a->start + off));
	}
}

/* 0 if every word is what it should be; else the address of the first that is not. */
static uint64_t check(const struct area *a, uint64_t *words)
{
	size_t off;

	for (off = 0; off < a->len; off += 8) {
		uint64_t want = is_hole(a, off) ? 0 : pattern((uint64_t)(a->start + off));

		if (*(uint64_t *)(a->start + off) != want)
			return (uint64_t)(a->start + off);
		(*words)++;
	}
	return 0;
}

static void write_file(const char *name, const char *text)
{
	char path[4096], tmp[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	f = fopen(tmp, "w");
	if (!f)
		return;
	fputs(text, f);
	fclose(f);
	rename(tmp, path);	/* the reader never sees half a file */
}

static void on_usr1(int sig)
{
	(void)sig;
	check_wanted = 1;
}

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib, i;
	char text[256], name[64];
	pthread_t thread;
	sigset_t usr1, old;

	if (argc != 3 && argc != 4)
		return 2;
	dir = argv[1];
	mib = strtoul(argv[2], NULL, 10);
	areas[0] = (struct area){ "hg", NULL, mib / 2 << 20, MADV_HUGEPAGE, 0, 0 };
	areas[1] = (struct area){ "nh", NULL, mib / 4 << 20, MADV_NOHUGEPAGE, 0, 0 };
	areas[2] = (struct area){ "plain", NULL, mib / 4 << 20, -1, 1, 0 };
	areas[3] = (struct area){ "small", NULL, 64 << 10, MADV_HUGEPAGE, 0, PAGE };
	/* The thread first, so that its tid follows the pid (the test picks the pid). SIGUSR1
	 * stays blocked in it: the main thread takes it. */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, &old);
	if (pthread_create(&thread, NULL, sleeper, NULL))
		return 5;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	for (i = 0; i < 4; i++) {
		struct area *a = &areas[i];

		a->start = mmap(NULL, a->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (a->start == MAP_FAILED)
			return 3;
		if (a->advice >= 0 && madvise(a->start, a->len, a->advice))
			return 4;
		if (!a->touched)
			a->touched = a->len;
		fill(a);
	}
	signal(SIGUSR1, on_usr1);
	snprintf(text, sizeof(text), "%d %lx %lx %lx %lx\n", getpid(), (unsigned long)areas[0].start,
		 (unsigned long)areas[1].start, (unsigned long)areas[2].start,
		 (unsigned long)areas[3].start);
	if (argc == 4 && atoi(argv[3]) == 2) {
		int ready[2];
		pid_t child;
		char byte;

		if (pipe(ready))
			return 6;
		child = fork();
		if (child < 0)
			return 7;
		if (child == 0) {
			/* Its own pages (written again: not shared copy-on-write with the
			 * parent) and its own sleeping thread. */
			close(ready[0]);
			for (i = 0; i < 4; i++)
				fill(&areas[i]);
			pthread_sigmask(SIG_BLOCK, &usr1, &old);
			if (pthread_create(&thread, NULL, sleeper, NULL))
				_exit(5);
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			if (write(ready[1], "r", 1) != 1)
				_exit(8);
			close(ready[1]);
		} else {
			close(ready[1]);
			if (read(ready[0], &byte, 1) != 1)
				return 8;
			close(ready[0]);
			snprintf(text + strlen(text), sizeof(text) - strlen(text), "%d\n", child);
		}
		if (child == 0)
			goto loop;
	}
	write_file("ready", text);
loop:
	for (;;) {
		uint64_t words = 0, bad = 0;

		while (!check_wanted)
			pause();
		check_wanted = 0;
		for (i = 0; i < 4 && !bad; i++)
			bad = check(&areas[i], &words);
		if (bad)
			snprintf(text, sizeof(text), "bad %lx\n", (unsigned long)bad);
		else
			snprintf(text, sizeof(text), "ok %lu\n", (unsigned long)words);
		snprintf(name, sizeof(name), "check-%d", getpid());
		write_file(name, text);
	}
}
