/*
 * entry.S - the blob's entry points: from "RIP set by a tracer" to a C function.
 *
 * The orchestrator enters the blob through ptrace with RIP = restore_task, RDI = args and
 * RSP = the top of a stack in the bootstrap region (abi.h, "Entry").  Nothing was called, so
 * RSP has no return address and no guaranteed alignment, while compiled C expects
 * RSP + 8 to be 16-byte aligned at its first instruction (x86-64 psABI 3.2.2).  The stub
 * aligns RSP, clears RBP (ends the frame chain for a debugger) and calls the C code, which
 * never returns.  RDI passes through untouched.
 */
	.text
	.globl	restore_task
	.hidden	restore_task
	.type	restore_task, @function
restore_task:
	xorl	%ebp, %ebp
	andq	$-16, %rsp
	call	restore_task_main	/* pushes 8 bytes: the C ABI's entry alignment */
	ud2				/* restore_task_main does not return */
	.size	restore_task, . - restore_task

	.section .note.GNU-stack, "", @progbits	/* no executable stack wanted */
