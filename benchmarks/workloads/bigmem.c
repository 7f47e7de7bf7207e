/* The "anonymous memory" workload of benchmarks/criu_bench.py: MIB MiB of private anonymous
 * memory, every page written with a pseudo-random pattern, so the dump holds all of them.
 *
 *     bigmem MIB        writes expected-PID.txt (the checksum of the filled memory), then
 *                       ready-PID, and sleeps; on SIGUSR1 it computes the checksum again
 *                       and writes it to sum-PID.txt (a restored copy proves its bytes).
 *
 * Files are opened, written and closed at once: the process holds no file at dump time. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

/* A multiply-xor hash over 64-bit words: any changed, moved or missing word changes it. */
static uint64_t checksum(const uint64_t *words, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ words[i]) * 0x100000001b3ull;
	return h;
}

static void write_file(const char *prefix, uint64_t value)
{
	char name[64], tmp[80];
	FILE *f;

	snprintf(name, sizeof(name), "%s-%d.txt", prefix, (int)getpid());
	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	f = fopen(tmp, "w");
	if (!f)
		exit(2);
	fprintf(f, "%016llx\n", (unsigned long long)value);
	fclose(f);
	rename(tmp, name); /* the reader never sees half a line */
}

int main(int argc, char **argv)
{
	size_t bytes = (size_t)atol(argc > 1 ? argv[1] : "64") << 20;
	size_t n = bytes / sizeof(uint64_t);
	const struct timespec period = {0, 20 * 1000 * 1000};
	uint64_t *words, x = 0x9e3779b97f4a7c15ull;
	char ready[64];
	FILE *f;

	words = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (words == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < n; i++) { /* xorshift64: every page differs, none is zero */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		words[i] = x;
	}
	signal(SIGUSR1, on_usr1);
	write_file("expected", checksum(words, n));
	snprintf(ready, sizeof(ready), "ready-%d", (int)getpid());
	f = fopen(ready, "w");
	if (!f)
		return 2;
	fclose(f);
	for (;;) {
		if (asked) {
			asked = 0;
			write_file("sum", checksum(words, n));
		}
		nanosleep(&period, 0);
	}
}
