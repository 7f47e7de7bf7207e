/*
 * entry.S - the blob's ways in and out, where C cannot be trusted with the stack pointer.
 *
 * restore_task: the tracer enters here with RIP = restore_task and RDI = args (abi.h,
 * "Entry").  Nothing was called, so RSP has no return address and no guaranteed alignment,
 * while compiled C expects RSP + 8 to be 16-byte aligned at its first instruction (x86-64
 * psABI 3.2.2).  The stub aligns RSP, asks blob_stack_top (restorer.c) for the blob's own
 * stack in the bootstrap region and moves there: the step that unmaps the old memory must
 * not pull the stack from under the blob (a caller in a forked child enters on Python's
 * stack).  RBP is cleared to end the frame chain for a debugger.
 *
 * blob_finish(new_sp, trap): the last instructions of a successful restore.  int3 (if trap)
 * stops the task for the tracer, which reads the status; then RSP = new_sp (the thread's
 * rt_sigframe + 8) and rt_sigreturn, with no other system call in between: the tracer
 * steps to the rt_sigreturn entry and exit stops (abi.h, status protocol).
 *
 * blob_clone_thread(clone_args, size, thread, flags): clone3 one thread of the task and
 * return clone3's result (the new tid, or -errno) in the calling leader.  The new thread
 * starts right after the `syscall` with RAX = 0 on the stack clone_args gave it, which is
 * empty: compiled C would go on using the leader's stack frame (saved registers, locals,
 * the return address) from there, so the child's side is asm that calls
 * restore_thread_main(thread, flags) (restorer.c) at once.  thread and flags cross the
 * syscall in R8 and R9: the kernel neither reads them for clone3 nor changes them, and the
 * child gets the leader's registers as they are.
 *
 * blob_clone_worker(clone_args, size, fn, arg): clone3 a fill worker and return clone3's
 * result in the caller.  The worker starts on its own empty stack, calls fn(arg) and ends
 * with exit(0) (itself only) when fn returns: the same hand-over as blob_clone_thread, with
 * fn and arg in R8 and R9.
 *
 * blob_syscall_gadget: one `syscall` instruction.  After the rt_sigreturn stop the tracer
 * points RIP here with RAX = __NR_munmap to remove the bootstrap region, and takes the
 * task at the syscall-exit stop: the instruction after it is never run.
 */
#include <asm/unistd.h>

	.text
	.globl	restore_task
	.hidden	restore_task
	.type	restore_task, @function
restore_task:
	xorl	%ebp, %ebp
	andq	$-16, %rsp
	movq	%rdi, %rbx		/* callee-saved across the call */
	call	blob_stack_top		/* 0: the args are not ours, stay where we are */
	testq	%rax, %rax
	jz	1f
	movq	%rax, %rsp
1:	movq	%rbx, %rdi
	call	restore_task_main	/* pushes 8 bytes: the C ABI's entry alignment */
	ud2				/* restore_task_main does not return */
	.size	restore_task, . - restore_task

	.globl	blob_finish
	.hidden	blob_finish
	.type	blob_finish, @function
blob_finish:
	testl	%esi, %esi
	jz	1f
	int3
1:	movq	%rdi, %rsp
	movl	$__NR_rt_sigreturn, %eax
	syscall
	ud2				/* rt_sigreturn does not come back here */
	.size	blob_finish, . - blob_finish

	.globl	blob_clone_thread
	.hidden	blob_clone_thread
	.type	blob_clone_thread, @function
blob_clone_thread:
	movq	%rdx, %r8		/* thread: RDX is free for the kernel's use */
	movq	%rcx, %r9		/* flags: the syscall instruction clobbers RCX */
	movl	$__NR_clone3, %eax
	syscall
	testq	%rax, %rax
	jz	1f
	ret				/* the leader: tid or -errno */
1:	xorl	%ebp, %ebp		/* the new thread: no frame to chain to */
	andq	$-16, %rsp		/* stack_top is 16-byte aligned already; be sure */
	movq	%r8, %rdi
	movl	%r9d, %esi
	call	restore_thread_main	/* does not return */
	ud2
	.size	blob_clone_thread, . - blob_clone_thread

	.globl	blob_clone_worker
	.hidden	blob_clone_worker
	.type	blob_clone_worker, @function
blob_clone_worker:
	movq	%rdx, %r8		/* fn */
	movq	%rcx, %r9		/* arg: the syscall instruction clobbers RCX */
	movl	$__NR_clone3, %eax
	syscall
	testq	%rax, %rax
	jz	1f
	ret				/* the caller: tid or -errno */
1:	xorl	%ebp, %ebp		/* the worker: no frame to chain to */
	andq	$-16, %rsp
	movq	%r9, %rdi
	call	*%r8
	xorl	%edi, %edi
	movl	$__NR_exit, %eax	/* this thread only; CLONE_CHILD_CLEARTID wakes the joiner */
	syscall
	ud2
	.size	blob_clone_worker, . - blob_clone_worker

	.globl	blob_syscall_gadget
	.hidden	blob_syscall_gadget
	.type	blob_syscall_gadget, @function
blob_syscall_gadget:
	syscall
	ud2
	.size	blob_syscall_gadget, . - blob_syscall_gadget

	.section .note.GNU-stack, "", @progbits	/* no executable stack wanted */
