/*
 * syscall.h - raw x86-64 system calls for the blob, which has no libc.
 *
 * The blob cannot call glibc: it runs while the task's own mappings, libc included, are
 * unmapped.  Each call is one `syscall` instruction with the kernel's convention
 * (arch/x86/entry/entry_64.S): number in RAX, arguments in RDI, RSI, RDX, R10, R8, R9;
 * result in RAX, -4095..-1 meaning -errno; RCX and R11 are clobbered.  Syscall numbers
 * and flags come from the kernel's uapi headers (linux-libc-dev), so none is spelled here.
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

#define SYSCALL0(nr) blob_syscall6((nr), 0, 0, 0, 0, 0, 0)
#define SYSCALL1(nr, a) blob_syscall6((nr), (long)(a), 0, 0, 0, 0, 0)
#define SYSCALL2(nr, a, b) blob_syscall6((nr), (long)(a), (long)(b), 0, 0, 0, 0)
#define SYSCALL3(nr, a, b, c) blob_syscall6((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define SYSCALL4(nr, a, b, c, d) \
	blob_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define SYSCALL5(nr, a, b, c, d, e) \
	blob_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)
#define SYSCALL6(nr, a, b, c, d, e, f) \
	blob_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

/* exit_group(2): ends every thread of the task with status & 0xff.  Does not return. */
static inline __attribute__((noreturn)) void sys_exit_group(int status)
{
	for (;;)
		SYSCALL1(__NR_exit_group, status);
}

/* exit(2): ends the calling thread only (the leader waits for such threads with BLOB_F_EXIT). */
static inline __attribute__((noreturn)) void sys_exit(int status)
{
	for (;;)
		SYSCALL1(__NR_exit, status);
}

/* futex(2) FUTEX_WAIT/FUTEX_WAKE (linux/futex.h) on a 32-bit word; no timeout. */
static inline long sys_futex(uint32_t *word, int op, uint32_t val)
{
	return SYSCALL6(__NR_futex, word, op, val, 0, 0, 0);
}

/* tgkill(2): with sig 0 only asks whether thread tid of tgid still exists (ESRCH: gone). */
static inline long sys_tgkill(long tgid, long tid, int sig)
{
	return SYSCALL3(__NR_tgkill, tgid, tid, sig);
}

static inline long sys_sched_yield(void)
{
	return SYSCALL0(__NR_sched_yield);
}

/* rseq(2): register (flags 0) or unregister (RSEQ_FLAG_UNREGISTER) an rseq area. */
static inline long sys_rseq(uint64_t addr, uint32_t len, int flags, uint32_t sig)
{
	return SYSCALL4(__NR_rseq, addr, len, flags, sig);
}

static inline long sys_rt_sigprocmask(int how, const uint64_t *set, uint64_t *old)
{
	return SYSCALL4(__NR_rt_sigprocmask, how, set, old, sizeof(*set));
}

static inline long sys_mmap(uint64_t addr, uint64_t len, uint32_t prot, uint32_t flags,
			    int fd, uint64_t off)
{
	return SYSCALL6(__NR_mmap, addr, len, prot, flags, fd, off);
}

static inline long sys_munmap(uint64_t addr, uint64_t len)
{
	return SYSCALL2(__NR_munmap, addr, len);
}

static inline long sys_mremap(uint64_t old, uint64_t old_len, uint64_t new_len, uint32_t flags,
			      uint64_t new_addr)
{
	return SYSCALL5(__NR_mremap, old, old_len, new_len, flags, new_addr);
}

static inline long sys_mprotect(uint64_t addr, uint64_t len, uint32_t prot)
{
	return SYSCALL3(__NR_mprotect, addr, len, prot);
}

static inline long sys_madvise(uint64_t addr, uint64_t len, int advice)
{
	return SYSCALL3(__NR_madvise, addr, len, advice);
}

/* preadv(2) as the kernel takes it: the offset split in pos_l/pos_h; on 64-bit pos_l
 * holds all of it (fs/read_write.c: pos_from_hilo). */
static inline long sys_preadv(int fd, const void *iov, uint32_t nr_iovs, uint64_t off)
{
	return SYSCALL5(__NR_preadv, fd, iov, nr_iovs, off, 0);
}

static inline long sys_close(int fd)
{
	return SYSCALL1(__NR_close, fd);
}

static inline long sys_prctl(int option, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
	return SYSCALL5(__NR_prctl, option, a2, a3, a4, a5);
}

static inline long sys_rt_sigaction(int sig, const void *act, void *old)
{
	return SYSCALL4(__NR_rt_sigaction, sig, act, old, sizeof(uint64_t));
}

static inline long sys_set_tid_address(uint64_t tidptr)
{
	return SYSCALL1(__NR_set_tid_address, tidptr);
}

static inline long sys_set_robust_list(uint64_t head, uint64_t len)
{
	return SYSCALL2(__NR_set_robust_list, head, len);
}

static inline long sys_arch_prctl(int code, uint64_t addr)
{
	return SYSCALL2(__NR_arch_prctl, code, addr);
}

static inline long sys_prlimit64(int pid, uint32_t resource, const void *new_limit, void *old)
{
	return SYSCALL4(__NR_prlimit64, pid, resource, new_limit, old);
}

static inline long sys_getpid(void)
{
	return SYSCALL0(__NR_getpid);
}

static inline long sys_gettid(void)
{
	return SYSCALL0(__NR_gettid);
}

static inline long sys_rt_sigqueueinfo(long pid, int sig, const void *info)
{
	return SYSCALL3(__NR_rt_sigqueueinfo, pid, sig, info);
}

static inline long sys_rt_tgsigqueueinfo(long tgid, long tid, int sig, const void *info)
{
	return SYSCALL4(__NR_rt_tgsigqueueinfo, tgid, tid, sig, info);
}

static inline long sys_setitimer(int which, const void *value, void *old)
{
	return SYSCALL3(__NR_setitimer, which, value, old);
}

/* Credentials: each call changes the calling thread only (the kernel's creds are per
 * thread; glibc's broadcast to all threads is a libc feature the blob does not have). */
static inline long sys_setgroups(uint32_t n, const uint32_t *groups)
{
	return SYSCALL2(__NR_setgroups, n, groups);
}

static inline long sys_setresuid(uint32_t r, uint32_t e, uint32_t s)
{
	return SYSCALL3(__NR_setresuid, r, e, s);
}

static inline long sys_setresgid(uint32_t r, uint32_t e, uint32_t s)
{
	return SYSCALL3(__NR_setresgid, r, e, s);
}

/* setfsuid/setfsgid never fail: they return the previous id; (uint32_t)-1 only queries. */
static inline long sys_setfsuid(uint32_t id)
{
	return SYSCALL1(__NR_setfsuid, id);
}

static inline long sys_setfsgid(uint32_t id)
{
	return SYSCALL1(__NR_setfsgid, id);
}

/* capset(2): hdr is struct __user_cap_header_struct, data __user_cap_data_struct[2]. */
static inline long sys_capset(const void *hdr, const void *data)
{
	return SYSCALL2(__NR_capset, hdr, data);
}

static inline long sys_seccomp(uint32_t op, uint32_t flags, const void *args)
{
	return SYSCALL3(__NR_seccomp, op, flags, args);
}

static inline long sys_timer_create(uint32_t clock_id, const void *sigevent, int32_t *timer_id)
{
	return SYSCALL3(__NR_timer_create, clock_id, sigevent, timer_id);
}

static inline long sys_timer_settime(int32_t timer_id, int flags, const void *value, void *old)
{
	return SYSCALL4(__NR_timer_settime, timer_id, flags, value, old);
}

/* personality(2): returns the previous persona; 0xffffffff only queries. */
static inline long sys_personality(uint32_t persona)
{
	return SYSCALL1(__NR_personality, persona);
}

#endif /* PYCRESTORE_RESTORER_SYSCALL_H */
