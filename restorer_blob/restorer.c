/*
 * restorer.c - restore_task: the code a restored task runs last, as an ordered list of steps.
 *
 * entry.S jumps here on the blob's own stack with the struct blob_args the orchestrator
 * wrote (abi.h).  The header is checked first; then each step of blob_steps[] runs in
 * order.  The first that fails leaves its step, errno, object index and address in
 * args->status and the blob stops (int3, then exit_group).  When all succeed, the status
 * says OK, int3 hands the task to the tracer, and rt_sigreturn leaves into the
 * checkpointed registers of threads[0]'s signal frame (abi.h, "status protocol").
 *
 * Step CREATE_THREADS makes the task's other threads; each runs restore_thread_main,
 * which sets its own kernel state, queues its own pending signals and leaves the same way
 * through its own status record and signal frame.
 *
 * Preconditions: the task has one thread when it enters; args and every array it points to
 * lie in the bootstrap region [bootstrap_start, bootstrap_start + bootstrap_len), which
 * nothing else overlaps in the checkpointed layout; the service fds named in the args are
 * open; the tids of threads[1..] are free in the task's pid namespace.
 * No libc: system calls go through syscall.h, memcpy and friends come from string.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <linux/errno.h>
#include <linux/rseq.h>
#include <linux/mman.h>
#include <linux/futex.h>
#include <linux/prctl.h>
#include <linux/sched.h>
#include <linux/time.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <asm/prctl.h>
#include <asm/signal.h>

#include "abi.h"
#include "syscall.h"

/* One step of restore_task: returns 0, or -errno after noting the failed object. */
struct blob_step {
	uint32_t id;			/* BLOB_STEP_*, what status.step reports */
	const char *name;		/* for a debugger */
	long (*run)(struct blob_args *args, struct blob_status *status);
};

void restore_task_main(struct blob_args *args) __attribute__((noreturn));
void restore_thread_main(struct blob_thread *thread, uint32_t flags) __attribute__((noreturn));
uint64_t blob_stack_top(const struct blob_args *args);
void blob_finish(uint64_t new_sp, int trap) __attribute__((noreturn));
long blob_clone_thread(const struct clone_args *cl, uint64_t size, struct blob_thread *thread,
		       uint32_t flags);
long blob_clone_worker(const struct clone_args *cl, uint64_t size, void (*fn)(void *), void *arg);

_Static_assert(BLOB_THREAD_CLONE_FLAGS == (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
					   CLONE_THREAD | CLONE_SYSVSEM), "thread clone flags");
_Static_assert(BLOB_FILL_CLONE_FLAGS == (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
					 CLONE_THREAD | CLONE_UNTRACED | CLONE_PARENT_SETTID |
					 CLONE_CHILD_CLEARTID), "fill worker clone flags");

/* Record which object a failing step was working on; returns err for the caller's return. */
static long failed_at(struct blob_status *status, uint32_t index, uint64_t addr, long err)
{
	status->index = index;
	status->addr = addr;
	return err;
}

/* Linux 6.15+ (include/uapi/linux/prctl.h): timer_create() takes the id to create from
 * *created_timer_id while it is on.  linux-libc-dev of this build host may predate it. */
#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS	77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF	0
#define PR_TIMER_CREATE_RESTORE_IDS_ON	1
#endif

_Static_assert(BLOB_CAP_WORDS == _LINUX_CAPABILITY_U32S_3, "capability words");
_Static_assert(BLOB_SECCOMP_STRICT == SECCOMP_MODE_STRICT &&
	       BLOB_SECCOMP_FILTER == SECCOMP_MODE_FILTER, "seccomp modes");

#define PAGE_MASK ((uint64_t)BLOB_PAGE_SIZE - 1)
#define MAX_TID 0x3fffffffu	/* PID_MAX_LIMIT (linux/threads.h): the largest pid there is */

/* True if [start, start + len) lies in the bootstrap region (which must be checked first). */
static int in_region(const struct blob_args *args, uint64_t start, uint64_t len)
{
	uint64_t end = args->bootstrap_start + args->bootstrap_len;

	return start >= args->bootstrap_start && start <= end && len <= end - start;
}

/*
 * A thread descriptor: threads[0] needs only its frame (when it leaves by rt_sigreturn);
 * every other thread a tid, its frame, and a stack inside the region.
 */
static int thread_usable(const struct blob_args *args, const struct blob_thread *t, uint32_t i)
{
	int frame_ok = !(t->sigframe & (BLOB_SIGFRAME_ALIGN - 1)) && in_region(args, t->sigframe, 8);

	if (i == 0)
		return frame_ok || (args->flags & BLOB_F_EXIT);
	return frame_ok && t->tid && t->tid <= MAX_TID && !(t->stack_top & 15) &&
	       t->stack_top >= BLOB_THREAD_STACK_BYTES &&
	       in_region(args, t->stack_top - BLOB_THREAD_STACK_BYTES, BLOB_THREAD_STACK_BYTES);
}

/* A thread's creds: none, or a descriptor and its groups inside the region. */
static int creds_usable(const struct blob_args *args, const struct blob_thread *t)
{
	const struct blob_creds *c = (const void *)t->creds;

	if (!t->creds)
		return 1;
	if (!in_region(args, t->creds, sizeof(*c)))
		return 0;
	return c->nr_groups <= BLOB_MAX_GROUPS &&
	       (!c->nr_groups ||
		in_region(args, c->groups, (uint64_t)c->nr_groups * sizeof(uint32_t)));
}

/* A thread's seccomp state: a known mode; for FILTER, 1.. programs of 1..BPF_MAXINSNS
 * instructions each, all inside the region. */
static int seccomp_usable(const struct blob_args *args, const struct blob_thread *t)
{
	const struct blob_seccomp_filter *f = (const void *)t->seccomp_filters;
	uint32_t i;

	if (t->seccomp_mode > BLOB_SECCOMP_FILTER)
		return 0;
	if (t->seccomp_mode != BLOB_SECCOMP_FILTER)
		return !t->nr_seccomp_filters;
	if (!t->nr_seccomp_filters ||
	    !in_region(args, t->seccomp_filters, (uint64_t)t->nr_seccomp_filters * sizeof(*f)))
		return 0;
	for (i = 0; i < t->nr_seccomp_filters; i++) {
		if (!f[i].nr_insns || f[i].nr_insns > BLOB_MAX_BPF_INSNS ||
		    !in_region(args, f[i].insns, (uint64_t)f[i].nr_insns * BLOB_BPF_INSN_BYTES))
			return 0;
	}
	return 1;
}

/* The fill workers: at most BLOB_MAX_FILL_THREADS - 1, each stack 16-byte aligned in the region. */
static int fill_workers_usable(const struct blob_args *args)
{
	const struct blob_fill_worker *w = (const void *)args->fill_workers;
	uint32_t i;

	if (args->fill_threads <= 1)
		return 1;
	if (args->fill_threads > BLOB_MAX_FILL_THREADS ||
	    !in_region(args, args->fill_workers, (uint64_t)(args->fill_threads - 1) * sizeof(*w)))
		return 0;
	for (i = 0; i + 1 < args->fill_threads; i++) {
		if (w[i].tid < 0 || (uint32_t)w[i].tid > MAX_TID || (w[i].stack_top & 15) ||
		    w[i].stack_top < BLOB_FILL_STACK_BYTES ||
		    !in_region(args, w[i].stack_top - BLOB_FILL_STACK_BYTES, BLOB_FILL_STACK_BYTES))
			return 0;
	}
	return 1;
}

/* Check the fields the steps trust: flags, the region, threads, read batches, fill workers. */
static long step_check_args(struct blob_args *args, struct blob_status *status)
{
	const struct blob_page_read *reads = (const void *)args->page_reads;
	const struct blob_thread *threads = (const void *)args->threads;
	uint64_t region_end = args->bootstrap_start + args->bootstrap_len;
	uint32_t i;

	if (args->flags & ~(BLOB_F_EXIT | BLOB_F_NO_TRAP | BLOB_F_SET_MM))
		return failed_at(status, 0, args->flags, -EINVAL);	/* a newer orchestrator */
	if ((args->flags & BLOB_F_EXIT) && args->exit_code >= BLOB_EXIT_RESERVED)
		return failed_at(status, 1, args->exit_code, -EINVAL);
	if (!args->bootstrap_len || (args->bootstrap_start & PAGE_MASK) ||
	    (args->bootstrap_len & PAGE_MASK) || region_end > args->task_size ||
	    region_end < args->bootstrap_start)
		return failed_at(status, 2, args->bootstrap_start, -EINVAL);
	/* The sigreturn ending needs the leader's frame; the descriptors must be in the region. */
	if (!(args->flags & BLOB_F_EXIT) && args->nr_threads < 1)
		return failed_at(status, 3, args->nr_threads, -EINVAL);
	if (args->nr_threads &&
	    !in_region(args, args->threads, (uint64_t)args->nr_threads * sizeof(*threads)))
		return failed_at(status, 3, args->threads, -EINVAL);
	for (i = 0; i < args->nr_threads; i++) {
		if (!thread_usable(args, &threads[i], i))
			return failed_at(status, 5, i, -EINVAL);
		if (!creds_usable(args, &threads[i]))
			return failed_at(status, 6, i, -EINVAL);
		if (!seccomp_usable(args, &threads[i]))
			return failed_at(status, 7, i, -EINVAL);
	}
	if (args->nr_posix_timers &&
	    !in_region(args, args->posix_timers,
		       (uint64_t)args->nr_posix_timers * sizeof(struct blob_posix_timer)))
		return failed_at(status, 8, args->posix_timers, -EINVAL);
	for (i = 0; i < args->nr_page_reads; i++) {
		if (!reads[i].nr_iovs || reads[i].nr_iovs > BLOB_MAX_IOVS ||
		    reads[i].first_iov > args->nr_iovs ||
		    reads[i].nr_iovs > args->nr_iovs - reads[i].first_iov)
			return failed_at(status, 4, i, -EINVAL);
	}
	if (!fill_workers_usable(args))
		return failed_at(status, 9, args->fill_threads, -EINVAL);
	return 0;
}

/*
 * Block every signal but SIGTRAP.  First: a handler of the old process must not run once
 * its code is gone, and a signal for the new one must wait for its handlers and mask
 * (rt_sigreturn installs the checkpointed mask).  SIGTRAP stays open because the final
 * int3 raises it with force_sig, which would otherwise reset the SIGTRAP disposition to
 * SIG_DFL (kernel/signal.c: force_sig_info_to_task) after step SIGACTIONS restored it.
 */
static long step_block_signals(struct blob_args *args, struct blob_status *status)
{
	uint64_t mask = ~(1ull << (SIGTRAP - 1));

	(void)args;
	(void)status;
	return sys_rt_sigprocmask(SIG_SETMASK, &mask, NULL);
}

/*
 * Unregister the glibc rseq area of the process the blob runs in (args->self_rseq; addr 0:
 * none).  Before any step that unmaps memory: the kernel writes the area on every return
 * to user space after a preemption, and once it is unmapped that kills the task with
 * SIGSEGV (research/feasibility-spike.md section 2).
 */
static long step_unregister_rseq(struct blob_args *args, struct blob_status *status)
{
	const struct blob_rseq *rseq = &args->self_rseq;
	long ret;

	if (!rseq->addr)
		return 0;
	ret = sys_rseq(rseq->addr, rseq->len, RSEQ_FLAG_UNREGISTER, rseq->sig);
	return ret < 0 ? failed_at(status, 0, rseq->addr, ret) : 0;
}

/* mremap the whole of [from, from + len) to exactly `to`. */
static long move_area(uint64_t from, uint64_t len, uint64_t to)
{
	long ret = sys_mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);

	if (ret < 0)
		return ret;
	return (uint64_t)ret == to ? 0 : -EFAULT;
}

/*
 * Park [vvar], [vvar_vclock] and [vdso] inside the bootstrap region, keeping their order.
 * Before the big unmap, which would otherwise remove them (the kernel cannot give them
 * back while other areas exist); they cannot go to their checkpointed addresses yet,
 * because the old process may still occupy those.
 */
static long step_park_vdso(struct blob_args *args, struct blob_status *status)
{
	const struct blob_vdso_area *areas = (const void *)args->vdso_areas;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_vdso_areas; i++) {
		ret = move_area(areas[i].runtime_start, areas[i].len, areas[i].park_start);
		if (ret < 0)
			return failed_at(status, i, areas[i].runtime_start, ret);
	}
	return 0;
}

/*
 * Unmap everything below task_size except the bootstrap region: the old process's code,
 * heap, stack and libraries.  After rseq is unregistered and the vdso parked; above
 * task_size only [vsyscall] exists, and it is left alone.
 */
static long step_unmap_old(struct blob_args *args, struct blob_status *status)
{
	uint64_t start = args->bootstrap_start, end = start + args->bootstrap_len;
	long ret;

	ret = sys_munmap(0, start);
	if (ret < 0)
		return failed_at(status, 0, 0, ret);
	if (end < args->task_size) {
		ret = sys_munmap(end, args->task_size - end);
		if (ret < 0)
			return failed_at(status, 1, end, ret);
	}
	return 0;
}

/* madvise(start, end - start, n) for every bit n of `advice`. */
static long apply_advice(const struct blob_vma *vma, uint64_t advice)
{
	uint32_t n;
	long ret;

	for (n = 0; n < 64; n++) {
		if (!(advice & (1ull << n)))
			continue;
		ret = sys_madvise(vma->start, vma->end - vma->start, (int)n);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/*
 * Map every VMA at its checkpointed address, writable if pages are to be read into it,
 * then give it its fill_madv advice: the checkpointed MADV_HUGEPAGE or MADV_NOHUGEPAGE,
 * before the fill, because the page size is chosen as each page is first touched
 * (advice given afterwards leaves the pages as they were filled).
 * After the unmap: the addresses are free now, and MAP_FIXED_NOREPLACE turns any overlap
 * (a bug in the plan or the region) into EEXIST instead of silently replacing memory.
 */
static long step_map_vmas(struct blob_args *args, struct blob_status *status)
{
	const struct blob_vma *vmas = (const void *)args->vmas;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_vmas; i++) {
		const struct blob_vma *vma = &vmas[i];
		uint64_t len = vma->end - vma->start;

		ret = sys_mmap(vma->start, len, vma->map_prot, vma->flags | MAP_FIXED_NOREPLACE,
			       vma->fd, vma->pgoff);
		if (ret >= 0 && (uint64_t)ret != vma->start) {
			/* A kernel that ignores MAP_FIXED_NOREPLACE put it elsewhere. */
			sys_munmap(ret, len);
			ret = -EEXIST;
		}
		if (ret >= 0)
			ret = apply_advice(vma, vma->fill_madv);
		if (ret < 0)
			return failed_at(status, vma->plan_index, vma->start, ret);
	}
	return 0;
}

/*
 * One batch: preadv into its iovecs; a short read advances the iovecs in place and reads
 * on, end of file is ENODATA.  Returns 0, or -errno with *where the destination it was
 * reading into.  The batch belongs to the calling thread alone (fill_loop took it).
 */
static long read_batch(const struct blob_args *args, const struct blob_page_read *read,
		       uint64_t *where)
{
	struct blob_iovec *iov = (struct blob_iovec *)args->iovs + read->first_iov;
	uint32_t left = read->nr_iovs;
	uint64_t off = read->file_off;

	while (left) {
		long got = sys_preadv(args->pages_fd, iov, left, off);

		if (got == -EINTR)
			continue;
		if (got <= 0) {
			*where = iov->base;
			return got < 0 ? got : -ENODATA;
		}
		off += (uint64_t)got;
		while (left && (uint64_t)got >= iov->len) {
			got -= (long)iov->len;
			iov++;
			left--;
		}
		if (left) {
			iov->base += (uint64_t)got;
			iov->len -= (uint64_t)got;
		}
	}
	return 0;
}

/*
 * The loop every fill thread runs: take the next batch (one atomic add on fill.next_read,
 * so each batch is read by exactly one thread), read it, until none is left or a thread
 * failed.  The first failure is kept in args->fill (the compare-and-swap on fill.failed
 * elects the one that writes it).  worker: 1 in a fill worker (for the test-only fault
 * BLOB_FAULT_FILL_WORKER), 0 in the leader.
 */
static void fill_loop(struct blob_args *args, int worker)
{
	const struct blob_page_read *reads = (const void *)args->page_reads;
	struct blob_fill_state *fill = &args->fill;
	uint32_t i, zero;
	uint64_t where;
	long err;

	while (!__atomic_load_n(&fill->failed, __ATOMIC_ACQUIRE)) {
		i = __atomic_fetch_add(&fill->next_read, 1, __ATOMIC_RELAXED);
		if (i >= args->nr_page_reads)
			return;
		where = ((const struct blob_iovec *)args->iovs)[reads[i].first_iov].base;
		if (worker && args->fault_step == BLOB_FAULT_FILL_WORKER)
			err = -EIO;
		else
			err = read_batch(args, &reads[i], &where);
		if (err == 0)
			continue;
		zero = 0;
		if (__atomic_compare_exchange_n(&fill->failed, &zero, 1, 0, __ATOMIC_ACQ_REL,
						__ATOMIC_ACQUIRE)) {
			fill->err = (uint32_t)-err;
			fill->index = i;
			fill->addr = where;
		}
		return;
	}
}

/*
 * A fill worker's whole life (entry.S blob_clone_worker calls it, then exit(0)).  It blocks
 * SIGTRAP too, the one signal the leader lets through: a SIGTRAP sent to the process then
 * goes to the leader, which the tracer sees, and never to a thread the tracer does not know.
 */
static void fill_worker_main(void *args)
{
	uint64_t all = ~0ull;

	sys_rt_sigprocmask(SIG_SETMASK, &all, NULL);
	fill_loop(args, 1);
}

/*
 * Make the fill workers: clone3 each with BLOB_FILL_CLONE_FLAGS (abi.h: CLONE_UNTRACED, so
 * the tracer gets no stop and no new tracee) on its own stack, with the tid the
 * orchestrator picked (one no task of the checkpoint needs, so that step CREATE_THREADS of
 * any task cannot find it taken).  A worker that cannot be made (the tid was taken
 * meanwhile, no memory) is left out: the other fill threads take its batches.  Each
 * starts with the leader's mask (every signal but SIGTRAP blocked) and blocks SIGTRAP too.
 */
static void fill_spawn(struct blob_args *args)
{
	struct blob_fill_worker *w = (void *)args->fill_workers;
	uint32_t i;
	long tid;

	for (i = 0; i + 1 < args->fill_threads; i++) {
		struct clone_args cl = {
			.flags = BLOB_FILL_CLONE_FLAGS,
			.pidfd = 0,
			.child_tid = (uint64_t)&w[i].alive,
			.parent_tid = (uint64_t)&w[i].alive,
			.exit_signal = 0,
			.stack = w[i].stack_top - BLOB_FILL_STACK_BYTES,
			.stack_size = BLOB_FILL_STACK_BYTES,
			/* clone3 refuses a set_tid array of size 0: none at all for "any tid". */
			.set_tid = w[i].tid ? (uint64_t)&w[i].tid : 0,
			.set_tid_size = w[i].tid ? 1 : 0,
		};

		__atomic_store_n(&w[i].alive, 0, __ATOMIC_RELAXED);
		tid = blob_clone_worker(&cl, sizeof(cl), fill_worker_main, args);
		/* Which tid it has, for the join (the kernel wrote it to alive already). */
		w[i].tid = tid > 0 ? (int32_t)tid : 0;
	}
}

/*
 * Wait until every worker has exited and is gone from the thread group: first the futex
 * word the kernel clears and wakes as the worker's mm is released (CLONE_CHILD_CLEARTID; a
 * shared futex, as the kernel wakes it), then until tgkill(.., 0) says its tid no longer
 * exists (release_task comes a little later), so that no fill thread is left in
 * /proc/PID/task or holds a tid once FILL_PAGES ends.
 */
static void fill_join(struct blob_args *args)
{
	struct blob_fill_worker *w = (void *)args->fill_workers;
	long pid = sys_getpid();
	uint32_t i, alive;

	for (i = 0; i + 1 < args->fill_threads; i++) {
		if (!w[i].tid)
			continue;	/* never made */
		while ((alive = __atomic_load_n(&w[i].alive, __ATOMIC_ACQUIRE)) != 0)
			sys_futex(&w[i].alive, FUTEX_WAIT, alive);	/* EAGAIN if it changed */
		while (sys_tgkill(pid, w[i].tid, 0) != -ESRCH)
			sys_sched_yield();
	}
}

/*
 * Read the page contents from the pages image: page_reads[] are taken one by one by the
 * leader and up to fill_threads - 1 workers it makes here and joins before the step ends.
 * The orchestrator cut big batches into pieces (blob/bootstrap.py: fill_batches) so that
 * there is work for every thread.  After the mapping step (the destinations must exist and
 * be writable, with their page-size advice).  A failure in any fill thread is this step's:
 * status.index is the batch, status.addr the destination.
 */
static long step_fill_pages(struct blob_args *args, struct blob_status *status)
{
	struct blob_fill_state *fill = &args->fill;

	fill->next_read = 0;
	fill->failed = 0;
	fill_spawn(args);
	fill_loop(args, 0);
	fill_join(args);
	if (__atomic_load_n(&fill->failed, __ATOMIC_ACQUIRE))
		return failed_at(status, fill->index, fill->addr, -(long)fill->err);
	return 0;
}

/*
 * Drop the write access added for filling, then apply the checkpointed madvise bits.
 * After the pages are in: advice such as MADV_WIPEONFORK or MADV_DONTNEED-like effects
 * must not meet empty memory, and a read-only VMA cannot be filled.
 */
static long step_protect_vmas(struct blob_args *args, struct blob_status *status)
{
	const struct blob_vma *vmas = (const void *)args->vmas;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_vmas; i++) {
		const struct blob_vma *vma = &vmas[i];
		uint64_t len = vma->end - vma->start;

		if (vma->map_prot != vma->prot) {
			ret = sys_mprotect(vma->start, len, vma->prot);
			if (ret < 0)
				return failed_at(status, vma->plan_index, vma->start, ret);
		}
		ret = apply_advice(vma, vma->madv);
		if (ret < 0)
			return failed_at(status, vma->plan_index, vma->start, ret);
	}
	return 0;
}

/*
 * Move the parked vdso areas to their checkpointed addresses.  After the VMAs are mapped,
 * so that any overlap shows up as a failed mapping rather than a clobbered vdso; the
 * Python side already checked that the sizes match the image.
 */
static long step_place_vdso(struct blob_args *args, struct blob_status *status)
{
	const struct blob_vdso_area *areas = (const void *)args->vdso_areas;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_vdso_areas; i++) {
		if (!areas[i].target_start)
			continue;	/* no such area in the image: unmapped with the region */
		ret = move_area(areas[i].park_start, areas[i].len, areas[i].target_start);
		if (ret < 0)
			return failed_at(status, i, areas[i].target_start, ret);
	}
	return 0;
}

/* Close the pages image and the mapped files.  After the last read and the last mmap that
 * uses them; the exe fd stays open for PR_SET_MM_MAP. */
static long step_close_fds(struct blob_args *args, struct blob_status *status)
{
	const int32_t *fds = (const void *)args->close_fds;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_close_fds; i++) {
		ret = sys_close(fds[i]);
		if (ret < 0)
			return failed_at(status, i, (uint64_t)(uint32_t)fds[i], ret);
	}
	return 0;
}

/*
 * mm bounds, auxv and exe link in one PR_SET_MM_MAP, then the exe fd is closed; then
 * PR_SET_THP_DISABLE and PR_SET_DUMPABLE.  After every VMA is in place: the kernel checks
 * the bounds against the mappings, and refuses a new exe while the old one is mapped.
 * status.index: 0 PR_SET_MM_MAP, 1 close exe fd, 2 THP, 3 dumpable.
 */
static long step_set_mm(struct blob_args *args, struct blob_status *status)
{
	long ret;

	if (args->flags & BLOB_F_SET_MM) {
		ret = sys_prctl(PR_SET_MM, PR_SET_MM_MAP, (uint64_t)&args->mm, sizeof(args->mm), 0);
		if (ret < 0)
			return failed_at(status, 0, args->mm.start_code, ret);
		if (args->mm.exe_fd != (uint32_t)-1) {
			ret = sys_close((int)args->mm.exe_fd);
			if (ret < 0)
				return failed_at(status, 1, args->mm.exe_fd, ret);
		}
	}
	if (args->thp_disabled >= 0) {
		ret = sys_prctl(PR_SET_THP_DISABLE, (uint64_t)args->thp_disabled, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 2, 0, ret);
	}
	if (args->dumpable >= 0) {
		ret = sys_prctl(PR_SET_DUMPABLE, (uint64_t)args->dumpable, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 3, 0, ret);
	}
	return 0;
}

/* The checkpointed signal dispositions.  After the memory: handlers and restorers point
 * into it (the kernel does not check, but nothing may be delivered before anyway). */
static long step_sigactions(struct blob_args *args, struct blob_status *status)
{
	const struct blob_sigaction *acts = (const void *)args->sigactions;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_sigactions; i++) {
		ret = sys_rt_sigaction((int)acts[i].signo, &acts[i].handler, NULL);
		if (ret < 0)
			return failed_at(status, acts[i].signo, acts[i].handler, ret);
	}
	return 0;
}

/*
 * The calling thread's kernel state: clear_child_tid, robust list, fs/gs base, rseq,
 * comm.  After the memory, because rseq registration writes into its area at once.  Run by
 * the leader for threads[0] (step THREAD_STATE) and by every other thread for itself.
 * status.index: 0 robust list, 1 fs base, 2 gs base, 3 rseq, 4 comm.
 */
static long set_thread_state(const struct blob_thread *t, struct blob_status *status)
{
	long ret;

	sys_set_tid_address(t->clear_child_tid);	/* returns the tid; cannot fail */
	if (t->robust_list_len) {
		ret = sys_set_robust_list(t->robust_list, t->robust_list_len);
		if (ret < 0)
			return failed_at(status, 0, t->robust_list, ret);
	}
	/* From here on %fs is the application's TLS: the blob has no TLS of its own. */
	ret = sys_arch_prctl(ARCH_SET_FS, t->fs_base);
	if (ret < 0)
		return failed_at(status, 1, t->fs_base, ret);
	/* Even 0: a new thread starts with the leader's gs base. */
	ret = sys_arch_prctl(ARCH_SET_GS, t->gs_base);
	if (ret < 0)
		return failed_at(status, 2, t->gs_base, ret);
	/* A thread made with CLONE_VM starts with no rseq area (kernel/rseq.c: rseq_fork). */
	if (t->rseq.addr) {
		ret = sys_rseq(t->rseq.addr, t->rseq.len, 0, t->rseq.sig);
		if (ret < 0)
			return failed_at(status, 3, t->rseq.addr, ret);
	}
	ret = sys_prctl(PR_SET_NAME, (uint64_t)t->comm, 0, 0, 0);
	if (ret < 0)
		return failed_at(status, 4, 0, ret);
	return 0;
}

static long step_thread_state(struct blob_args *args, struct blob_status *status)
{
	if (!args->nr_threads)
		return 0;	/* BLOB_F_EXIT runs without a thread */
	return set_thread_state((const void *)args->threads, status);
}

/*
 * Create threads[1..] with their checkpointed tids (clone3 set_tid), in array order.
 * After the leader's THREAD_STATE, so that everything a thread touches is in place
 * (memory, sigactions, which all threads share); before RLIMITS, because the image's
 * RLIMIT_NPROC is checked against the restoring user's processes, not the image's (CRIU
 * orders it so too).  Each thread inherits the leader's mask: every signal but SIGTRAP
 * blocked.  The leader does not wait for them (abi.h, "Threads").
 * status.index: the thread's index; status.addr: the tid wanted.  A clone3 that gives
 * another tid fails with ESRCH (the kernel gives the tid asked for, or fails: EEXIST).
 */
static long step_create_threads(struct blob_args *args, struct blob_status *status)
{
	struct blob_thread *threads = (void *)args->threads;
	uint32_t i;
	long tid;

	for (i = 1; i < args->nr_threads; i++) {
		struct blob_thread *t = &threads[i];
		int32_t want = (int32_t)t->tid;		/* clone3 reads set_tid as pid_t[] */
		struct clone_args cl = {
			.flags = BLOB_THREAD_CLONE_FLAGS,
			.exit_signal = 0,		/* a thread: nothing to notify */
			.stack = t->stack_top - BLOB_THREAD_STACK_BYTES,
			.stack_size = BLOB_THREAD_STACK_BYTES,
			.set_tid = (uint64_t)&want,
			.set_tid_size = 1,
		};

		tid = blob_clone_thread(&cl, sizeof(cl), t, args->flags);
		if (tid < 0)
			return failed_at(status, i, t->tid, tid);
		if (tid != want)
			return failed_at(status, i, t->tid, -ESRCH);
	}
	return 0;
}

/* Resource limits.  After PR_SET_MM_MAP: the kernel checks the mm bounds against
 * RLIMIT_DATA, and the checkpointed limit fits the checkpointed mm. status.index: resource. */
static long step_rlimits(struct blob_args *args, struct blob_status *status)
{
	const struct blob_rlimit *lims = (const void *)args->rlimits;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_rlimits; i++) {
		ret = sys_prlimit64(0, lims[i].resource, &lims[i].cur, NULL);
		if (ret < 0)
			return failed_at(status, lims[i].resource, 0, ret);
	}
	return 0;
}

/* Queue the calling thread's own pending signals (rt_tgsigqueueinfo to itself, which the
 * kernel allows for any si_code).  status.index: first_index + the signal's index. */
static long queue_thread_signals(const struct blob_thread *t, struct blob_status *status,
				 uint32_t first_index)
{
	const struct blob_siginfo *own = (const void *)t->siginfos;
	long pid = sys_getpid(), tid = sys_gettid(), ret;
	uint32_t i;
	int sig;

	for (i = 0; i < t->nr_siginfos; i++) {
		sig = *(const int32_t *)own[i].bytes;
		ret = sys_rt_tgsigqueueinfo(pid, tid, sig, own[i].bytes);
		if (ret < 0)
			return failed_at(status, first_index + i, (uint64_t)sig, ret);
	}
	return 0;
}

/*
 * Queue the checkpointed pending signals again: the task-shared ones, then the leader's
 * own (every other thread queues its own).  Late, with every signal blocked in every
 * thread: nothing is delivered until rt_sigreturn installs the checkpointed masks.
 * status.index counts the shared signals first, then the leader's; status.addr is the
 * signal number.
 */
static long step_pending_signals(struct blob_args *args, struct blob_status *status)
{
	const struct blob_siginfo *shared = (const void *)args->siginfos;
	long pid = sys_getpid(), ret;
	uint32_t i;
	int sig;

	for (i = 0; i < args->nr_siginfos; i++) {
		sig = *(const int32_t *)shared[i].bytes;
		ret = sys_rt_sigqueueinfo(pid, sig, shared[i].bytes);
		if (ret < 0)
			return failed_at(status, i, (uint64_t)sig, ret);
	}
	if (!args->nr_threads)
		return 0;
	return queue_thread_signals((const void *)args->threads, status, args->nr_siginfos);
}

/*
 * personality(2) of the task (tc.personality).  After the last mmap and mprotect of the
 * blob: READ_IMPLIES_EXEC would add PROT_EXEC to them, while the checkpointed VMAs must
 * keep their own protections; before CREATE_THREADS, because a thread inherits the
 * persona of the thread that clones it (task_struct.personality is per thread).  CRIU 4.2
 * dumps the field but does not restore it.  status.addr: the persona.
 */
static long step_personality(struct blob_args *args, struct blob_status *status)
{
	if (args->personality == 0xffffffffu)
		return 0;
	sys_personality(args->personality);		/* returns the old persona */
	if ((uint32_t)sys_personality(0xffffffffu) != args->personality)
		return failed_at(status, 0, args->personality, -EINVAL);
	return 0;
}

/*
 * Create the POSIX timers, disarmed, with their checkpointed ids: with
 * PR_TIMER_CREATE_RESTORE_IDS on, timer_create() reads the id to use from
 * *created_timer_id (Linux 6.15+), as CRIU's create_posix_timers() does.  After
 * CREATE_THREADS (a SIGEV_THREAD_ID timer names one of the threads) and RLIMITS (each
 * timer is charged to RLIMIT_SIGPENDING); armed only in ARM_POSIX_TIMERS, last.
 * status.index: the timer's index, or 0xffffffff / 0xfffffffe for turning the prctl
 * on / off; status.addr: the timer id.
 */
static long step_posix_timers(struct blob_args *args, struct blob_status *status)
{
	const struct blob_posix_timer *timers = (const void *)args->posix_timers;
	uint8_t sev[BLOB_SIGEVENT_BYTES];
	uint32_t i;
	int32_t id;
	long ret;

	if (!args->nr_posix_timers)
		return 0;
	ret = sys_prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0);
	if (ret < 0)
		return failed_at(status, 0xffffffffu, 0, ret);
	for (i = 0; i < args->nr_posix_timers; i++) {
		const struct blob_posix_timer *t = &timers[i];

		/* struct sigevent (asm-generic/siginfo.h): sigev_value, sigev_signo,
		 * sigev_notify, then the union whose first int is the thread id. */
		__builtin_memset(sev, 0, sizeof(sev));
		__builtin_memcpy(sev, &t->sival, 8);
		__builtin_memcpy(sev + 8, &t->sigev_signo, 4);
		__builtin_memcpy(sev + 12, &t->sigev_notify, 4);
		__builtin_memcpy(sev + 16, &t->notify_tid, 4);
		id = (int32_t)t->timer_id;
		ret = sys_timer_create(t->clock_id, sev, &id);
		if (ret >= 0 && (uint32_t)id != t->timer_id)
			ret = -ESRCH;	/* a kernel that ignored the wanted id */
		if (ret < 0) {
			sys_prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0);
			return failed_at(status, i, t->timer_id, ret);
		}
	}
	ret = sys_prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0);
	if (ret < 0)
		return failed_at(status, 0xfffffffeu, 0, ret);
	return 0;
}

/*
 * The calling thread's seccomp mode and filters (CRIU: restore_seccomp).  Before CREDS, as
 * CRIU does: installing a filter needs CAP_SYS_ADMIN unless no_new_privs is set, and the
 * creds may drop both.  A filter may forbid what the blob and the tracer still do after it
 * (creds, timers, rt_sigreturn, munmap): the tracer seized this task with
 * PTRACE_O_SUSPEND_SECCOMP (restore/tree.py), which the threads inherit, so nothing is
 * filtered until it detaches.  Filters go in in array order: the chain's root first.
 * status.index: the filter's index; status.addr: its instructions.
 */
static long set_thread_seccomp(const struct blob_thread *t, struct blob_status *status)
{
	const struct blob_seccomp_filter *f = (const void *)t->seccomp_filters;
	struct {
		uint16_t len;
		uint16_t _pad[3];
		uint64_t filter;
	} prog;		/* struct sock_fprog (linux/filter.h) */
	uint32_t i;
	long ret;

	if (t->seccomp_mode == BLOB_SECCOMP_STRICT) {
		ret = sys_prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0);
		return ret < 0 ? failed_at(status, 0, 0, ret) : 0;
	}
	if (t->seccomp_mode != BLOB_SECCOMP_FILTER)
		return 0;
	for (i = 0; i < t->nr_seccomp_filters; i++) {
		prog.len = (uint16_t)f[i].nr_insns;
		prog._pad[0] = prog._pad[1] = prog._pad[2] = 0;
		prog.filter = f[i].insns;
		ret = sys_seccomp(SECCOMP_SET_MODE_FILTER, f[i].flags, &prog);
		if (ret < 0)
			return failed_at(status, i, f[i].insns, ret);
	}
	return 0;
}

static long step_seccomp(struct blob_args *args, struct blob_status *status)
{
	if (!args->nr_threads)
		return 0;
	return set_thread_seccomp((const void *)args->threads, status);
}

/* True if capability `cap` is in the BLOB_CAP_WORDS-word set `set`. */
static int has_cap(const uint32_t *set, uint32_t cap)
{
	return cap / 32 < BLOB_CAP_WORDS && (set[cap / 32] >> (cap % 32)) & 1;
}

/*
 * The calling thread's credentials, in the order of CRIU's restore_creds():
 *   0 setgroups; 1 securebits = SECBIT_NO_SETUID_FIXUP, so that leaving uid 0 keeps the
 *   capabilities the next calls need; 2 setresuid; 3 setfsuid (after setresuid, which
 *   would set fsuid to euid); 4 setresgid; 5 setfsgid; 6 the checkpointed securebits;
 *   7 drop every capability not in the bounding set (PR_CAPBSET_DROP needs CAP_SETPCAP,
 *   so before capset); 8 capset; 9 ambient set: clear, then raise each (needs the cap in
 *   permitted and inheritable, so after capset); 10 PR_SET_NO_NEW_PRIVS (last: it cannot
 *   be undone, and nothing after it execs).
 * After every privileged step of the task (threads, rlimits, timers, seccomp) and before
 * rt_sigreturn; each thread runs it for itself, since creds are per thread.
 * status.index: the call above; status.addr: the id or capability concerned.
 */
static long set_thread_creds(const struct blob_thread *t, struct blob_status *status)
{
	const struct blob_creds *c = (const void *)t->creds;
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct data[BLOB_CAP_WORDS];
	uint32_t cap, i;
	long ret;

	if (!c)
		return 0;
	ret = sys_setgroups(c->nr_groups, (const uint32_t *)c->groups);
	if (ret < 0)
		return failed_at(status, 0, c->nr_groups, ret);
	ret = sys_prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0);
	if (ret < 0)
		return failed_at(status, 1, SECBIT_NO_SETUID_FIXUP, ret);
	ret = sys_setresuid(c->uid, c->euid, c->suid);
	if (ret < 0)
		return failed_at(status, 2, c->uid, ret);
	sys_setfsuid(c->fsuid);
	if ((uint32_t)sys_setfsuid(0xffffffffu) != c->fsuid)
		return failed_at(status, 3, c->fsuid, -EPERM);
	ret = sys_setresgid(c->gid, c->egid, c->sgid);
	if (ret < 0)
		return failed_at(status, 4, c->gid, ret);
	sys_setfsgid(c->fsgid);
	if ((uint32_t)sys_setfsgid(0xffffffffu) != c->fsgid)
		return failed_at(status, 5, c->fsgid, -EPERM);
	ret = sys_prctl(PR_SET_SECUREBITS, c->secbits, 0, 0, 0);
	if (ret < 0)
		return failed_at(status, 6, c->secbits, ret);
	/* PR_CAPBSET_READ fails with EINVAL past the kernel's last capability. */
	for (cap = 0; sys_prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
		if (has_cap(c->cap_bnd, cap))
			continue;
		ret = sys_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 7, cap, ret);
	}
	for (i = 0; i < BLOB_CAP_WORDS; i++) {
		data[i].effective = c->cap_eff[i];
		data[i].permitted = c->cap_prm[i];
		data[i].inheritable = c->cap_inh[i];
	}
	ret = sys_capset(&hdr, data);
	if (ret < 0)
		return failed_at(status, 8, 0, ret);
	ret = sys_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	if (ret < 0)
		return failed_at(status, 9, 0, ret);
	for (cap = 0; cap < 32 * BLOB_CAP_WORDS; cap++) {
		if (!has_cap(c->cap_amb, cap))
			continue;
		ret = sys_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
		if (ret < 0)
			return failed_at(status, 9, cap, ret);
	}
	if (c->no_new_privs) {
		ret = sys_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 10, 1, ret);
	}
	return 0;
}

static long step_creds(struct blob_args *args, struct blob_status *status)
{
	if (!args->nr_threads)
		return 0;
	return set_thread_creds((const void *)args->threads, status);
}

/*
 * What a change of credentials resets (kernel/cred.c: commit_creds clears pdeath_signal
 * and sets dumpable to fs.suid_dumpable when euid, fsuid, egid or fsgid change), set after
 * the creds as CRIU does: 0 PR_SET_DUMPABLE again (per mm: every thread sets it after its
 * own creds, so the last word is right), 1 PR_SET_PDEATHSIG (per thread).
 */
static long set_late_prctls(const struct blob_thread *t, struct blob_status *status)
{
	long ret;

	if (t->dumpable >= 0) {
		ret = sys_prctl(PR_SET_DUMPABLE, (uint64_t)t->dumpable, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 0, (uint64_t)t->dumpable, ret);
	}
	if (t->pdeath_sig) {
		ret = sys_prctl(PR_SET_PDEATHSIG, t->pdeath_sig, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 1, t->pdeath_sig, ret);
	}
	return 0;
}

/* The leader's late prctls, then the task-wide 2 PR_SET_CHILD_SUBREAPER (signal_struct). */
static long step_late_prctls(struct blob_args *args, struct blob_status *status)
{
	long ret;

	if (args->nr_threads) {
		ret = set_late_prctls((const void *)args->threads, status);
		if (ret < 0)
			return ret;
	}
	if (args->child_subreaper) {
		ret = sys_prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
		if (ret < 0)
			return failed_at(status, 2, 1, ret);
	}
	return 0;
}

/* ITIMER_REAL, VIRTUAL, PROF.  Late, so that the clocks start as late as possible (after
 * the creds, as CRIU: nothing after this may fail for long).  status.index: which timer. */
static long step_itimers(struct blob_args *args, struct blob_status *status)
{
	uint32_t which;
	long ret;

	for (which = 0; which < 3; which++) {
		ret = sys_setitimer((int)which, &args->itimers[which], NULL);
		if (ret < 0)
			return failed_at(status, which, 0, ret);
	}
	return 0;
}

/* Arm the POSIX timers created in POSIX_TIMERS (timer_settime, relative).  Last, with the
 * itimers, so that they start counting as late as possible, as CRIU's
 * restore_posix_timers().  status.index: the timer's index; status.addr: its id. */
static long step_arm_posix_timers(struct blob_args *args, struct blob_status *status)
{
	const struct blob_posix_timer *timers = (const void *)args->posix_timers;
	uint32_t i;
	long ret;

	for (i = 0; i < args->nr_posix_timers; i++) {
		/* interval_sec .. value_nsec are a struct itimerspec, in its order. */
		ret = sys_timer_settime((int32_t)timers[i].timer_id, 0, &timers[i].interval_sec, NULL);
		if (ret < 0)
			return failed_at(status, i, timers[i].timer_id, ret);
	}
	return 0;
}

/*
 * The steps, in the order they must run (each function says why it comes where it is).
 * Deliberately a writable global: the compiler must read it at run time rather than fold
 * it into direct calls, so its absolute addresses need R_X86_64_RELATIVE relocations, and
 * every run of the blob proves the loader applied them.
 */
struct blob_step blob_steps[] = {
	{ BLOB_STEP_CHECK_ARGS, "check_args", step_check_args },
	{ BLOB_STEP_BLOCK_SIGNALS, "block_signals", step_block_signals },
	{ BLOB_STEP_UNREGISTER_RSEQ, "unregister_rseq", step_unregister_rseq },
	{ BLOB_STEP_PARK_VDSO, "park_vdso", step_park_vdso },
	{ BLOB_STEP_UNMAP_OLD, "unmap_old", step_unmap_old },
	{ BLOB_STEP_MAP_VMAS, "map_vmas", step_map_vmas },
	{ BLOB_STEP_FILL_PAGES, "fill_pages", step_fill_pages },
	{ BLOB_STEP_PROTECT_VMAS, "protect_vmas", step_protect_vmas },
	{ BLOB_STEP_PLACE_VDSO, "place_vdso", step_place_vdso },
	{ BLOB_STEP_CLOSE_FDS, "close_fds", step_close_fds },
	{ BLOB_STEP_SET_MM, "set_mm", step_set_mm },
	{ BLOB_STEP_SIGACTIONS, "sigactions", step_sigactions },
	/* After every mmap/mprotect (READ_IMPLIES_EXEC), before the threads (inherited). */
	{ BLOB_STEP_PERSONALITY, "personality", step_personality },
	{ BLOB_STEP_THREAD_STATE, "thread_state", step_thread_state },
	{ BLOB_STEP_CREATE_THREADS, "create_threads", step_create_threads },
	{ BLOB_STEP_RLIMITS, "rlimits", step_rlimits },
	/* After the threads (SIGEV_THREAD_ID targets) and rlimits (RLIMIT_SIGPENDING). */
	{ BLOB_STEP_POSIX_TIMERS, "posix_timers", step_posix_timers },
	{ BLOB_STEP_PENDING_SIGNALS, "pending_signals", step_pending_signals },
	/* CRIU's order from here: seccomp while still privileged, then the creds, then what
	 * a change of creds resets; every privileged step of the leader is done by now. */
	{ BLOB_STEP_SECCOMP, "seccomp", step_seccomp },
	{ BLOB_STEP_CREDS, "creds", step_creds },
	{ BLOB_STEP_LATE_PRCTLS, "late_prctls", step_late_prctls },
	{ BLOB_STEP_ITIMERS, "itimers", step_itimers },
	{ BLOB_STEP_ARM_POSIX_TIMERS, "arm_posix_timers", step_arm_posix_timers },
};

#define NR_STEPS (sizeof(blob_steps) / sizeof(blob_steps[0]))

/* True if args is ours and of this version: then its stack_top and status can be used. */
static int args_usable(const struct blob_args *args)
{
	return args && !((uintptr_t)args & 7) && args->magic == BLOB_ARGS_MAGIC;
}

/* Called by entry.S on the entry stack: the blob's own stack, or 0 to stay put. */
uint64_t blob_stack_top(const struct blob_args *args)
{
	if (!args_usable(args) || args->abi_version != BLOB_ABI_VERSION ||
	    args->args_size != sizeof(*args) || (args->stack_top & 15))
		return 0;
	return args->stack_top;
}

/* Start a status record: the blob runs, at step `step`. */
static void status_begin(struct blob_status *status, uint32_t step)
{
	status->step = step;
	status->err = 0;
	status->index = 0;
	status->addr = 0;
	status->magic = BLOB_STATUS_MAGIC;
	__atomic_store_n(&status->state, BLOB_STATE_RUNNING, __ATOMIC_RELEASE);
}

/* Publish a final state (OK or FAILED); a leader waiting with BLOB_F_EXIT wakes up. */
static void status_end(struct blob_status *status, uint32_t state)
{
	__atomic_store_n(&status->state, state, __ATOMIC_RELEASE);
	sys_futex(&status->state, FUTEX_WAKE_PRIVATE, 1);
}

/* A failure is recorded in status: stop for the tracer (unless none), then end the task. */
static void __attribute__((noreturn)) fail(struct blob_status *status, uint32_t flags,
					   uint32_t err)
{
	status->err = err;
	status_end(status, BLOB_STATE_FAILED);
	if (!(flags & (BLOB_F_EXIT | BLOB_F_NO_TRAP)))
		__asm__ volatile("int3" ::: "memory");
	sys_exit_group(BLOB_EXIT_STEP_FAILED);
}

/*
 * BLOB_F_EXIT only: wait until every thread of threads[1..] has published OK or FAILED,
 * so that the leader's exit_group does not cut a thread short.  Returns 1 if one failed
 * (it then ends the task itself; this is for the race where it has not yet).
 */
static int wait_for_threads(struct blob_args *args)
{
	struct blob_thread *threads = (void *)args->threads;
	uint32_t i, state;
	int failed = 0;

	for (i = 1; i < args->nr_threads; i++) {
		uint32_t *word = &threads[i].status.state;

		while ((state = __atomic_load_n(word, __ATOMIC_ACQUIRE)) != BLOB_STATE_OK &&
		       state != BLOB_STATE_FAILED)
			sys_futex(word, FUTEX_WAIT_PRIVATE, state);	/* EAGAIN if it changed */
		failed |= state == BLOB_STATE_FAILED;
	}
	return failed;
}

/* Called by entry.S on the blob's stack.  Never returns. */
void restore_task_main(struct blob_args *args)
{
	struct blob_status *status;
	const struct blob_thread *thread;
	uint32_t i;
	long err;

	/* Until the magic checks out, args may point at anything: write nothing. */
	if (!args_usable(args))
		sys_exit_group(BLOB_EXIT_BAD_MAGIC);
	status = &args->status;
	status_begin(status, BLOB_STEP_CHECK_ARGS);
	/* The header and status have the same offsets in every version: safe to report. */
	if (args->abi_version != BLOB_ABI_VERSION)
		fail(status, args->flags, EPROTO);
	if (args->args_size != sizeof(*args))
		fail(status, args->flags, EBADMSG);

	for (i = 0; i < NR_STEPS; i++) {
		status->step = blob_steps[i].id;
		err = blob_steps[i].id == args->fault_step ? -EIO : blob_steps[i].run(args, status);
		if (err < 0)
			fail(status, args->flags, (uint32_t)-err);
	}
	status_end(status, BLOB_STATE_OK);

	if (args->flags & BLOB_F_EXIT) {
		if (wait_for_threads(args))
			sys_exit_group(BLOB_EXIT_STEP_FAILED);
		sys_exit_group((int)args->exit_code);
	}
	thread = (const void *)args->threads;
	blob_finish(thread->sigframe + 8, !(args->flags & BLOB_F_NO_TRAP));
}

/*
 * Called by entry.S (blob_clone_thread) in a new thread, on its own stack, with every
 * signal but SIGTRAP blocked.  Sets the thread's own state, pending signals, seccomp
 * filters and credentials, writes its record and leaves like the leader: int3, then
 * rt_sigreturn through its own frame.
 * flags: the leader's blob_args.flags.  Never returns.
 */
void restore_thread_main(struct blob_thread *thread, uint32_t flags)
{
	struct blob_status *status = &thread->status;
	long err;

	status_begin(status, BLOB_STEP_THREAD_STATE);
	err = set_thread_state(thread, status);
	if (err < 0)
		fail(status, flags, (uint32_t)-err);
	status->step = BLOB_STEP_PENDING_SIGNALS;
	err = queue_thread_signals(thread, status, 0);
	if (err < 0)
		fail(status, flags, (uint32_t)-err);
	/* The leader's order (blob_steps[]): seccomp, creds, what the creds reset. */
	status->step = BLOB_STEP_SECCOMP;
	err = set_thread_seccomp(thread, status);
	if (err < 0)
		fail(status, flags, (uint32_t)-err);
	status->step = BLOB_STEP_CREDS;
	err = set_thread_creds(thread, status);
	if (err < 0)
		fail(status, flags, (uint32_t)-err);
	status->step = BLOB_STEP_LATE_PRCTLS;
	err = set_late_prctls(thread, status);
	if (err < 0)
		fail(status, flags, (uint32_t)-err);
	status_end(status, BLOB_STATE_OK);

	if (flags & BLOB_F_EXIT)
		sys_exit(0);	/* this thread only: the leader ends the task */
	blob_finish(thread->sigframe + 8, !(flags & BLOB_F_NO_TRAP));
}
