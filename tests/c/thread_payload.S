/*
 * thread_payload.S - the multi-threaded "checkpointed program" of tests/test_blob_e2e.py.
 *
 * The restorer blob maps this code at CODE_ADDR, creates the task's other threads and
 * rt_sigreturns every thread into it with the registers of a hand-made plan.  No libc, raw
 * syscalls only: everything else was unmapped.  The registers carry what each thread must
 * find (the test puts them in the plan's gpregs):
 *
 *   leader, _start (CODE_ADDR):
 *     r12  number of other threads            r13  address of their result slots (u64)
 *     Waits (1 ms naps, at most WAIT_ROUNDS) until every slot is set, then exits with 42
 *     if all say 42, else with the first other value; 99 if a slot stays 0.
 *
 *   other threads, thread_start (CODE_ADDR + THREAD_ENTRY_OFFSET):
 *     r12  its fs base (the word at %fs:0 holds it too, like glibc's TCB self pointer)
 *     r13  its result slot                     r14  the first 8 bytes of its comm
 *     r15  its blocked mask                    rbx  its tid
 *     rbp  signal bits that must be pending for it
 *     Writes the number of the first check that fails (1..6), or 42, into its slot, then
 *     sleeps in pause() until the leader's exit_group ends it.
 */
#include <asm/unistd.h>

#define ARCH_GET_FS		0x1003		/* asm/prctl.h */
#define PR_GET_NAME		16		/* linux/prctl.h */
#define WAIT_ROUNDS		5000
#define NAP_NSEC		1000000
#define THREAD_ENTRY_OFFSET	0x400		/* the test reads the same number */

	.text
	.globl	_start
_start:
	mov	$WAIT_ROUNDS, %r14d
	sub	$32, %rsp			/* struct timespec {0, NAP_NSEC} */
	movq	$0, (%rsp)
	movq	$NAP_NSEC, 8(%rsp)
rescan:
	xor	%ecx, %ecx
scan:						/* every slot set? */
	cmp	%r12, %rcx
	je	all_set
	cmpq	$0, (%r13,%rcx,8)
	je	nap
	inc	%rcx
	jmp	scan
nap:
	dec	%r14d
	jz	timeout
	mov	$__NR_nanosleep, %eax		/* clobbers rcx: rescan from slot 0 */
	mov	%rsp, %rdi
	xor	%esi, %esi
	syscall
	jmp	rescan
all_set:
	xor	%ecx, %ecx
verdict:
	cmp	%r12, %rcx
	je	success
	mov	(%r13,%rcx,8), %rdi
	cmp	$42, %rdi
	jne	leave
	inc	%rcx
	jmp	verdict
success:
	mov	$42, %edi
	jmp	leave
timeout:
	mov	$99, %edi
leave:
	mov	$__NR_exit_group, %eax
	syscall
	ud2

	.org	THREAD_ENTRY_OFFSET, 0xcc
	.globl	thread_start
thread_start:
	sub	$64, %rsp			/* scratch for the queries */

	mov	$__NR_arch_prctl, %eax		/* 1: fs base */
	mov	$ARCH_GET_FS, %edi
	mov	%rsp, %rsi
	syscall
	cmp	%r12, (%rsp)
	mov	$1, %edi
	jne	report

	mov	%fs:0, %rax			/* 2: TLS reads go through %fs */
	cmp	%r12, %rax
	mov	$2, %edi
	jne	report

	mov	$__NR_prctl, %eax		/* 3: comm */
	mov	$PR_GET_NAME, %edi
	mov	%rsp, %rsi
	syscall
	cmp	%r14, (%rsp)
	mov	$3, %edi
	jne	report

	mov	$__NR_rt_sigprocmask, %eax	/* 4: blocked mask, from its own frame */
	xor	%edi, %edi
	xor	%esi, %esi
	mov	%rsp, %rdx
	mov	$8, %r10d
	syscall
	cmp	%r15, (%rsp)
	mov	$4, %edi
	jne	report

	mov	$__NR_gettid, %eax		/* 5: the tid clone3 was asked for */
	syscall
	cmp	%rbx, %rax
	mov	$5, %edi
	jne	report

	mov	$__NR_rt_sigpending, %eax	/* 6: its own pending signals */
	mov	%rsp, %rdi
	mov	$8, %esi
	syscall
	mov	(%rsp), %rax
	and	%rbp, %rax
	cmp	%rbp, %rax
	mov	$6, %edi
	jne	report

	mov	$42, %edi
report:
	mov	%rdi, (%r13)
sleep:
	mov	$__NR_pause, %eax
	syscall
	jmp	sleep

	.section .note.GNU-stack, "", @progbits
