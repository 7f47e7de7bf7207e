/*
 * blob_payload.S - the "checkpointed program" of tests/test_blob_e2e.py.
 *
 * The test writes these bytes into a pages file; the restorer blob maps them at CODE_ADDR,
 * fills a data VMA, restores signal state and rt_sigreturns here with the registers of a
 * hand-made plan.  The code checks what the blob should have restored and exits with the
 * number of the first check that failed (10..21), or 42 when all hold.  It runs after the
 * blob unmapped everything else: no libc, raw syscalls only.  The expected values come
 * from the test as -D macros: R12_VALUE, DATA_ADDR, DATA_WORD, XMM1_LO, YMM1_HI_LO,
 * YMM1_HI_HI, FS_BASE, VDSO_ADDR, COMM_WORD, PENDING_BIT, SIGMASK, CORE_LIMIT.
 */
#include <asm/unistd.h>

#define ARCH_GET_FS	0x1003		/* asm/prctl.h */
#define PR_GET_NAME	16		/* linux/prctl.h */
#define RLIMIT_CORE	4		/* asm-generic/resource.h */
#define SIGUSR2		12
#define ELF_MAGIC	0x464c457f	/* "\177ELF" */

	.text
	.globl	_start
_start:
	movabs	$R12_VALUE, %rax		/* 10: a general register from the frame */
	cmp	%rax, %r12
	mov	$10, %edi
	jne	out

	movabs	$DATA_ADDR, %rbx		/* 11: a page read from the pages image */
	movabs	$DATA_WORD, %rax
	cmp	%rax, (%rbx)
	mov	$11, %edi
	jne	out

	vextractf128 $1, %ymm1, %xmm0		/* 12: ymm1's upper half, from the XSAVE area */
	vmovq	%xmm0, %rax
	movabs	$YMM1_HI_LO, %rcx
	cmp	%rcx, %rax
	mov	$12, %edi
	jne	out
	vpextrq	$1, %xmm0, %rax
	movabs	$YMM1_HI_HI, %rcx
	cmp	%rcx, %rax
	jne	out

	vmovq	%xmm1, %rax			/* 13: xmm1, from the legacy region */
	movabs	$XMM1_LO, %rcx
	cmp	%rcx, %rax
	mov	$13, %edi
	jne	out

	sub	$64, %rsp			/* scratch for the queries below */

	mov	$__NR_rt_sigprocmask, %eax	/* 14: the blocked mask is the frame's */
	xor	%edi, %edi
	xor	%esi, %esi
	mov	%rsp, %rdx
	mov	$8, %r10d
	syscall
	movabs	$SIGMASK, %rax
	cmp	%rax, (%rsp)
	mov	$14, %edi
	jne	out

	mov	$__NR_rt_sigpending, %eax	/* 15: the queued signal is pending */
	mov	%rsp, %rdi
	mov	$8, %esi
	syscall
	movabs	$PENDING_BIT, %rax
	test	%rax, (%rsp)
	mov	$15, %edi
	jz	out

	mov	$__NR_arch_prctl, %eax		/* 16: fs base */
	mov	$ARCH_GET_FS, %edi
	mov	%rsp, %rsi
	syscall
	movabs	$FS_BASE, %rax
	cmp	%rax, (%rsp)
	mov	$16, %edi
	jne	out

	movabs	$VDSO_ADDR, %rax		/* 17: the vdso moved to its image address */
	cmpl	$ELF_MAGIC, (%rax)
	mov	$17, %edi
	jne	out

	mov	$__NR_rt_sigaction, %eax	/* 18: SIGUSR2 is ignored (handler 1) */
	mov	$SIGUSR2, %edi
	xor	%esi, %esi
	mov	%rsp, %rdx
	mov	$8, %r10d
	syscall
	cmpq	$1, (%rsp)
	mov	$18, %edi
	jne	out

	mov	$__NR_prlimit64, %eax		/* 19: RLIMIT_CORE soft limit CORE_LIMIT */
	xor	%edi, %edi
	mov	$RLIMIT_CORE, %esi
	xor	%edx, %edx
	mov	%rsp, %r10
	syscall
	cmpq	$CORE_LIMIT, (%rsp)
	mov	$19, %edi
	jne	out

	mov	$__NR_getitimer, %eax		/* 20: ITIMER_REAL armed (it_value.tv_sec > 0) */
	xor	%edi, %edi
	mov	%rsp, %rsi
	syscall
	cmpq	$0, 16(%rsp)
	mov	$20, %edi
	je	out

	mov	$__NR_prctl, %eax		/* 21: comm */
	mov	$PR_GET_NAME, %edi
	mov	%rsp, %rsi
	syscall
	movabs	$COMM_WORD, %rax
	cmp	%rax, (%rsp)
	mov	$21, %edi
	jne	out

	mov	$42, %edi
out:
	mov	$__NR_exit_group, %eax
	syscall
	ud2

	.section .note.GNU-stack, "", @progbits
