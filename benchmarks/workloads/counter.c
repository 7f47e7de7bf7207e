/* The "tiny counter" of benchmarks/criu_bench.py: one small process, a few pages of memory.
 * Counts in memory every 100 ms; holds no file but its std fds (the benchmark gives it
 * /dev/null), so CRIU and pycrestore restore exactly the same thing. */
#include <time.h>

int main(void)
{
	static volatile unsigned long ticks;
	const struct timespec period = {0, 100 * 1000 * 1000};

	for (;;) {
		ticks++;
		nanosleep(&period, 0);
	}
}
