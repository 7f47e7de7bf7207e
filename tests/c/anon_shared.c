/* Two processes sharing MAP_SHARED|MAP_ANONYMOUS memory, for tests/test_restore_anon_shmem.py.
 *
 * The parent maps 4 pages, fills page 0 with a pattern, then forks. The child unmaps
 * page 0, so its VMA starts one page later with pgoff 4096 (the object is still the
 * parent's 4 pages: CRIU sizes it by the largest pgoff + size). Then, every 20 ms:
 *   parent: counter++ in page 1, and logs "<counter> <echo>" to the file argv[1];
 *   child:  copies page 1's counter to page 2 (the echo), and stamps page 3.
 * The echo follows the counter only while both map ONE object. The parent prints
 * "ready" on stdout once the child's first echo came back.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static void nap(void)
{
	struct timespec ts = {0, 20 * 1000 * 1000};
	while (nanosleep(&ts, &ts) != 0)
		; /* a restore may interrupt the sleep: sleep the rest */
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s LOG\n", argv[0]);
		return 2;
	}
	unsigned char *mem = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 1;
	for (int i = 0; i < PAGE; i++)
		mem[i] = (unsigned char)(i * 7 + 3);
	volatile uint64_t *counter = (uint64_t *)(mem + PAGE);
	volatile uint64_t *echo = (uint64_t *)(mem + 2 * PAGE);
	volatile uint64_t *stamp = (uint64_t *)(mem + 3 * PAGE);

	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		if (munmap(mem, PAGE) != 0)
			return 1;
		for (;;) {
			*echo = *counter;
			*stamp += 1;
			nap();
		}
	}
	FILE *log = fopen(argv[1], "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	int announced = 0;
	for (;;) {
		*counter += 1;
		fprintf(log, "%llu %llu\n", (unsigned long long)*counter, (unsigned long long)*echo);
		if (!announced && *echo > 0) {
			printf("ready\n");
			fflush(stdout);
			announced = 1;
		}
		nap();
	}
}
