/*
 * demo.c - the program `pycrestore demo` checkpoints and restores.
 *
 * A tick counter with two witnesses that a restore must bring back exactly:
 *
 *   memory    one page (.bss, page aligned) filled at start with a pattern computed from
 *             the page offset; every tick recomputes it and compares.
 *   register  xmm15 holds a 128-bit constant loaded at start; every tick stores it to
 *             memory and compares.  Nothing else touches xmm15: the C code is built with
 *             -mgeneral-regs-only (no SSE from the compiler) and syscalls preserve it.
 *             xmm (SSE) is part of every x86-64 CPU and of the legacy FXSAVE region, so
 *             the check needs no CPUID test.
 *
 * Every TICK_NS it writes one line to stdout:   demo pid=<pid> tick=<n> ok
 * A changed witness prints "... BAD memory" or "... BAD register" and exits 1 or 2.
 *
 * argv[1] (optional): after printing this tick, wait HOLD_S seconds instead of TICK_NS
 * before the next one, so a checkpoint taken any time in that window is taken at exactly
 * that tick whatever the load of the machine (the dumper would otherwise race the next
 * tick).  The wait is an ordinary clock_nanosleep, so the task is checkpointed as CRIU
 * checkpoints a sleeping program.  argv[2] (optional): exit 0 after this many ticks, a
 * safety net so that a demo killed without cleanup does not leave it running forever.
 *
 * No libc: raw syscalls (the restorer blob's syscall.h), a static non-PIE ELF, so the
 * checkpoint holds the program's own mappings, its stack, the vdso and nothing else.
 */
#include <stdint.h>
#include <asm/unistd.h>
#include <linux/time.h>

#include "syscall.h"

#define TICK_NS 150000000L        /* 150 ms between lines */
#define HOLD_S 60                  /* the checkpoint window after the stop tick */
#define DEFAULT_LAST_TICK 2000     /* about 5 minutes */
#define PAGE_BYTES 4096
#define PATTERN_WORDS (PAGE_BYTES / sizeof(uint64_t))
#define XMM_LO 0x0123456789abcdefULL
#define XMM_HI 0xfeedfacecafebeefULL

/* The memory witness: a whole page of its own, so the pagemap shows it as one page. */
static uint64_t pattern[PATTERN_WORDS] __attribute__((aligned(PAGE_BYTES)));

/* Word i of the pattern: a multiplicative hash of i, so a page shifted, zeroed or taken
 * from another run fails the check. */
static uint64_t pattern_word(uint64_t i)
{
	return (i + 1) * 0x9e3779b97f4a7c15ULL ^ 0x5eed5eed5eed5eedULL;
}

static void fill_pattern(void)
{
	for (uint64_t i = 0; i < PATTERN_WORDS; i++)
		pattern[i] = pattern_word(i);
}

static int pattern_ok(void)
{
	for (uint64_t i = 0; i < PATTERN_WORDS; i++)
		if (pattern[i] != pattern_word(i))
			return 0;
	return 1;
}

/* Load the register witness.  Called once: from here on xmm15 belongs to the check. */
static void load_xmm15(void)
{
	static const uint64_t value[2] __attribute__((aligned(16))) = {XMM_LO, XMM_HI};

	__asm__ volatile("movdqa %0, %%xmm15" : : "m"(value));
}

static int xmm15_ok(void)
{
	uint64_t seen[2] __attribute__((aligned(16)));

	__asm__ volatile("movdqa %%xmm15, %0" : "=m"(seen));
	return seen[0] == XMM_LO && seen[1] == XMM_HI;
}

/* Decimal text of v at out; returns the number of characters written. */
static int put_decimal(char *out, uint64_t v)
{
	char digits[20];
	int n = 0, len = 0;

	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		out[len++] = digits[--n];
	return len;
}

static int put_text(char *out, const char *text)
{
	int len = 0;

	while (text[len]) {
		out[len] = text[len];
		len++;
	}
	return len;
}

/* One line, written with one write(2) so a reader never sees half of it. */
static void report(long pid, uint64_t tick, const char *verdict)
{
	char line[96];
	int len = 0;

	len += put_text(line + len, "demo pid=");
	len += put_decimal(line + len, (uint64_t)pid);
	len += put_text(line + len, " tick=");
	len += put_decimal(line + len, tick);
	len += put_text(line + len, " ");
	len += put_text(line + len, verdict);
	line[len++] = '\n';
	SYSCALL3(__NR_write, 1, line, len);
}

static uint64_t parse_decimal(const char *text, uint64_t fallback)
{
	uint64_t v = 0;

	if (!text || !*text)
		return fallback;
	for (; *text; text++) {
		if (*text < '0' || *text > '9')
			return fallback;
		v = v * 10 + (uint64_t)(*text - '0');
	}
	return v;
}

/* Entered from _start with the initial stack: argc, then argv[0..argc-1], NULL. */
__attribute__((noreturn, used)) void demo_main(long *initial_sp)
{
	long argc = initial_sp[0];
	char **argv = (char **)(initial_sp + 1);
	uint64_t stop_tick = argc > 1 ? parse_decimal(argv[1], 0) : 0;
	uint64_t last_tick = argc > 2 ? parse_decimal(argv[2], DEFAULT_LAST_TICK) : DEFAULT_LAST_TICK;
	struct timespec period = {.tv_sec = 0, .tv_nsec = TICK_NS};
	struct timespec hold = {.tv_sec = HOLD_S, .tv_nsec = 0};

	fill_pattern();
	load_xmm15();
	for (uint64_t tick = 1; tick <= last_tick; tick++) {
		/* getpid each time: the line shows the pid the task has now (the same after a
		 * restore, which is the point). */
		long pid = SYSCALL0(__NR_getpid);

		if (!pattern_ok()) {
			report(pid, tick, "BAD memory");
			sys_exit_group(1);
		}
		if (!xmm15_ok()) {
			report(pid, tick, "BAD register");
			sys_exit_group(2);
		}
		report(pid, tick, "ok");
		/* Relative sleep; an interrupted one (-EINTR after a checkpoint, which is how
		 * CRIU resumes an interrupted clock_nanosleep) only makes this tick short. */
		SYSCALL4(__NR_clock_nanosleep, CLOCK_MONOTONIC, 0, tick == stop_tick ? &hold : &period, 0);
	}
	sys_exit_group(0);
}

/* The ELF entry point: the kernel leaves argc at (%rsp), 16-byte aligned; hand that
 * pointer to demo_main (a call pushes the return address, as the ABI expects). */
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %rsp, %rdi\n"
	"	call demo_main\n"
	"	hlt\n");
