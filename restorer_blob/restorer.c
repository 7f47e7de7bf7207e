/*
 * restorer.c - restore_task: the code a restored task runs last, as an ordered list of steps.
 *
 * entry.S jumps here with RDI = the struct blob_args the orchestrator wrote (abi.h).  The
 * header is checked first; then each step of blob_steps[] runs in order, and the first one
 * that fails ends the task with its own exit status, leaving args->progress (which step) and
 * args->error (-errno) for a tracer to read.  This version restores nothing yet: it checks
 * its arguments, drops the calling process's glibc rseq and ends with
 * exit_group(args->exit_code).  Later versions add steps (unmap the old process, map every
 * VMA, preadv the pages, mm, sigactions, threads) and end in rt_sigreturn.
 *
 * Preconditions: args is readable and writable; the stack below RSP holds BLOB_STACK_BYTES.
 * No libc: system calls go through syscall.h, memcpy and friends come from string.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <linux/errno.h>
#include <linux/rseq.h>

#include "abi.h"
#include "syscall.h"

/* One step of restore_task: returns 0, or -errno and then the task exits with fail_status. */
struct blob_step {
	const char *name;		/* for a debugger: blob_steps[args->progress - 1].name */
	long (*run)(struct blob_args *args);
	uint32_t fail_status;		/* BLOB_EXIT_* */
};

void restore_task_main(struct blob_args *args) __attribute__((noreturn));

/* True if the n bytes at p are all zero. */
static int all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (; n; n--, b++)
		if (*b)
			return 0;
	return 1;
}

/* Check the fields this version reads beyond the header.  Changes nothing. */
static long step_check_args(struct blob_args *args)
{
	if (args->flags & ~BLOB_F_EXIT)
		return -EINVAL;		/* a flag from a newer orchestrator */
	if (args->exit_code >= BLOB_EXIT_RESERVED)
		return -EINVAL;		/* would be mistaken for one of the blob's own statuses */
	return 0;
}

/* Refuse work this version cannot do, rather than exit as if it had been done. */
static long step_check_supported(struct blob_args *args)
{
	if (!(args->flags & BLOB_F_EXIT))
		return -EOPNOTSUPP;	/* the rt_sigreturn ending comes with the memory steps */
	if (args->nr_vmas || args->nr_page_reads || args->nr_iovs || args->nr_remaps ||
	    args->nr_sigactions || args->nr_threads)
		return -EOPNOTSUPP;
	if (!all_zero(&args->mm, sizeof(args->mm)))
		return -EOPNOTSUPP;
	return 0;
}

/*
 * Unregister the glibc rseq area of the process the blob runs in (args->self_rseq; addr 0:
 * none).  Must come before any step that unmaps memory: the kernel writes the area on every
 * return to user space after a preemption, and once it is unmapped that kills the task with
 * SIGSEGV (research/feasibility-spike.md section 2).
 */
static long step_unregister_rseq(struct blob_args *args)
{
	const struct blob_rseq *rseq = &args->self_rseq;
	long ret;

	if (!rseq->addr)
		return 0;
	ret = sys_rseq(rseq->addr, rseq->len, RSEQ_FLAG_UNREGISTER, rseq->sig);
	if (ret < 0)
		args->error_addr = rseq->addr;
	return ret;
}

/*
 * The steps, in the order they must run.  Deliberately a writable global: the compiler must
 * read it at run time rather than fold it into direct calls, so its absolute addresses need
 * R_X86_64_RELATIVE relocations, and every run of the blob proves the loader applied them.
 */
struct blob_step blob_steps[] = {
	{ "check_args", step_check_args, BLOB_EXIT_BAD_ARGS },
	{ "check_supported", step_check_supported, BLOB_EXIT_UNSUPPORTED },
	{ "unregister_rseq", step_unregister_rseq, BLOB_EXIT_STEP_FAILED },
};

#define NR_STEPS (sizeof(blob_steps) / sizeof(blob_steps[0]))

/* Called by entry.S on an aligned stack.  Ends the task; never returns. */
void restore_task_main(struct blob_args *args)
{
	uint32_t i;
	long err;

	/* The header first: until it checks out, args may point at anything. */
	if (!args || ((uintptr_t)args & 7) || args->magic != BLOB_ARGS_MAGIC)
		sys_exit_group(BLOB_EXIT_BAD_MAGIC);
	if (args->abi_version != BLOB_ABI_VERSION)
		sys_exit_group(BLOB_EXIT_BAD_VERSION);
	if (args->args_size != sizeof(*args))
		sys_exit_group(BLOB_EXIT_BAD_SIZE);

	args->error = 0;
	args->error_addr = 0;
	for (i = 0; i < NR_STEPS; i++) {
		args->progress = i + 1;
		err = blob_steps[i].run(args);
		if (err < 0) {
			args->error = err;
			sys_exit_group(blob_steps[i].fail_status);
		}
	}

	/* step_check_supported made sure that BLOB_F_EXIT is set: the only ending so far. */
	sys_exit_group(args->exit_code);
}
