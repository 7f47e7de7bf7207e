/*
 * syscall.h - raw x86-64 system calls for the blob, which has no libc.
 *
 * The blob cannot call glibc: it runs after (in later versions: while) the task's own
 * mappings, libc included, are unmapped.  Each call is one `syscall` instruction with the
 * kernel's convention (arch/x86/entry/entry_64.S): number in RAX, arguments in RDI, RSI,
 * RDX, R10, R8, R9; result in RAX, -4095..-1 meaning -errno; RCX and R11 are clobbered.
 * Syscall numbers and flags come from the kernel's uapi headers (linux-libc-dev), so
 * none is spelled here.
 */
#ifndef PYCRESTORE_RESTORER_SYSCALL_H
#define PYCRESTORE_RESTORER_SYSCALL_H

#include <stdint.h>
#include <asm/unistd.h>

/* Issue syscall nr with up to six arguments; returns RAX (negative: -errno). */
static inline long blob_syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
	register long r10 __asm__("r10") = a4;
	register long r8 __asm__("r8") = a5;
	register long r9 __asm__("r9") = a6;
	long ret;

	/* "memory": the kernel may read or write any buffer an argument points to. */
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

#define blob_syscall1(nr, a) blob_syscall6((nr), (long)(a), 0, 0, 0, 0, 0)
#define blob_syscall4(nr, a, b, c, d) \
	blob_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

/* exit_group(2): ends every thread of the task with status & 0xff.  Does not return. */
static inline __attribute__((noreturn)) void sys_exit_group(int status)
{
	for (;;)
		blob_syscall1(__NR_exit_group, status);
}

/* rseq(2): register (flags 0) or unregister (RSEQ_FLAG_UNREGISTER) an rseq area. */
static inline long sys_rseq(uint64_t addr, uint32_t len, int flags, uint32_t sig)
{
	return blob_syscall4(__NR_rseq, addr, len, flags, sig);
}

#endif /* PYCRESTORE_RESTORER_SYSCALL_H */
