/*
 * xsave_roundtrip.c - the kernel's side of tests/test_xsave_kernel.py.
 *
 *   xsave_roundtrip capture FEATURES   load known values into every vector register this
 *                                      CPU has (FEATURES: bit 2 AVX, 5 AVX-512, 9 PKRU),
 *                                      raise SIGUSR1 with a raw syscall (no libc code in
 *                                      between may touch a register), and write the XSAVE
 *                                      area of the frame the kernel built to stdout.
 *   xsave_roundtrip sigreturn FEATURES print "ready FRAME_ADDR AFTER STACK_TOP", read one
 *                                      rt_sigframe (built by pycrestore for FRAME_ADDR) from
 *                                      stdin, rt_sigreturn through it, and write what the
 *                                      registers hold right after: 32 zmm (64 bytes each,
 *                                      only the ymm/xmm part where the CPU has less), 8 k
 *                                      (8 bytes each), PKRU (4 bytes).
 *
 * The values: qword q of vector register r is value(0x1000 + 8r + q), opmask k_i is
 * value(0x2000 + i), PKRU is 0x55555550 (pkey 1 open): the Python side computes the same.
 * Build: gcc -O1 -static -mavx512f -o xsave_roundtrip xsave_roundtrip.c
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define F_AVX (1u << 2)
#define F_AVX512 (1u << 5)
#define F_PKRU (1u << 9)
#define FRAME_ADDR 0x20000000ul
#define TEST_PKRU 0x55555550u

static uint64_t vec[32][8] __attribute__((aligned(64)));	/* zmm0-31 (or their low parts) */
static uint64_t kreg[8];
static uint32_t pkru;
static unsigned features;
static uint8_t area[16384];
static size_t area_len;
static uint8_t after_stack[65536] __attribute__((aligned(16)));

static uint64_t value(uint64_t seed)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ull;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void fill_values(void)
{
	for (int r = 0; r < 32; r++)
		for (int q = 0; q < 8; q++)
			vec[r][q] = value(0x1000 + 8 * r + q);
	for (int i = 0; i < 8; i++)
		kreg[i] = value(0x2000 + i);
}

static void write_all(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(1, p, len);

		if (n <= 0)
			exit(3);
		p += n;
		len -= (size_t)n;
	}
}

/* SIGUSR1: copy the XSAVE area of the frame, as long as its sw bytes say. */
static void on_signal(int sig, siginfo_t *info, void *ucv)
{
	ucontext_t *uc = ucv;
	const uint8_t *fp = (const uint8_t *)uc->uc_mcontext.fpregs;
	uint32_t xstate_size;

	(void)sig;
	(void)info;
	memcpy(&xstate_size, fp + 464 + 16, 4);	/* struct _fpx_sw_bytes.xstate_size */
	area_len = xstate_size + 4;
	if (area_len > sizeof(area))
		exit(4);
	memcpy(area, fp, area_len);
}

#define LOAD_ZMM(i) "vmovdqu64 " #i "*64(%%rax), %%zmm" #i "\n\t"
#define LOAD_YMM(i) "vmovdqu " #i "*64(%%rax), %%ymm" #i "\n\t"
#define LOAD_K(i) "kmovq " #i "*8(%%rbx), %%k" #i "\n\t"

static int capture(void)
{
	pid_t pid = getpid(), tid = gettid();
	struct sigaction sa = { .sa_sigaction = on_signal, .sa_flags = SA_SIGINFO };

	sigaction(SIGUSR1, &sa, NULL);
	fill_values();
	if (features & F_PKRU)	/* wrpkru: eax = value, ecx = edx = 0 */
		__asm__ volatile("wrpkru" :: "a"(TEST_PKRU), "c"(0), "d"(0));
	/* Load, then tgkill at once: nothing in between may use a vector register. */
	if (features & F_AVX512) {
		__asm__ volatile(
			LOAD_ZMM(0) LOAD_ZMM(1) LOAD_ZMM(2) LOAD_ZMM(3) LOAD_ZMM(4) LOAD_ZMM(5)
			LOAD_ZMM(6) LOAD_ZMM(7) LOAD_ZMM(8) LOAD_ZMM(9) LOAD_ZMM(10) LOAD_ZMM(11)
			LOAD_ZMM(12) LOAD_ZMM(13) LOAD_ZMM(14) LOAD_ZMM(15) LOAD_ZMM(16)
			LOAD_ZMM(17) LOAD_ZMM(18) LOAD_ZMM(19) LOAD_ZMM(20) LOAD_ZMM(21)
			LOAD_ZMM(22) LOAD_ZMM(23) LOAD_ZMM(24) LOAD_ZMM(25) LOAD_ZMM(26)
			LOAD_ZMM(27) LOAD_ZMM(28) LOAD_ZMM(29) LOAD_ZMM(30) LOAD_ZMM(31)
			LOAD_K(0) LOAD_K(1) LOAD_K(2) LOAD_K(3) LOAD_K(4) LOAD_K(5) LOAD_K(6) LOAD_K(7)
			"mov %[nr], %%eax\n\tsyscall"
			:: "a"(vec), "b"(kreg), [nr] "i"(SYS_tgkill), "D"(pid), "S"(tid), "d"(SIGUSR1)
			: "rcx", "r11", "memory");
	} else if (features & F_AVX) {
		__asm__ volatile(
			LOAD_YMM(0) LOAD_YMM(1) LOAD_YMM(2) LOAD_YMM(3) LOAD_YMM(4) LOAD_YMM(5)
			LOAD_YMM(6) LOAD_YMM(7) LOAD_YMM(8) LOAD_YMM(9) LOAD_YMM(10) LOAD_YMM(11)
			LOAD_YMM(12) LOAD_YMM(13) LOAD_YMM(14) LOAD_YMM(15)
			"mov %[nr], %%eax\n\tsyscall"
			:: "a"(vec), [nr] "i"(SYS_tgkill), "D"(pid), "S"(tid), "d"(SIGUSR1)
			: "rcx", "r11", "memory");
	} else {
		return 5;
	}
	write_all(area, area_len);
	return 0;
}

#define STORE_ZMM(i) "vmovdqu64 %zmm" #i ", vec+" #i "*64(%rip)\n\t"
#define STORE_YMM(i) "vmovdqu %ymm" #i ", vec+" #i "*64(%rip)\n\t"
#define STORE_K(i) "kmovq %k" #i ", kreg+" #i "*8(%rip)\n\t"

void after_sigreturn_c(void) __attribute__((noreturn, used));

/* Where rt_sigreturn lands: store every register before any compiled code can touch one. */
__asm__(".text\n\t.globl after_sigreturn\nafter_sigreturn:\n\t"
	"testl $" "32" ", features(%rip)\n\tjz 1f\n\t"
	STORE_ZMM(0) STORE_ZMM(1) STORE_ZMM(2) STORE_ZMM(3) STORE_ZMM(4) STORE_ZMM(5)
	STORE_ZMM(6) STORE_ZMM(7) STORE_ZMM(8) STORE_ZMM(9) STORE_ZMM(10) STORE_ZMM(11)
	STORE_ZMM(12) STORE_ZMM(13) STORE_ZMM(14) STORE_ZMM(15) STORE_ZMM(16) STORE_ZMM(17)
	STORE_ZMM(18) STORE_ZMM(19) STORE_ZMM(20) STORE_ZMM(21) STORE_ZMM(22) STORE_ZMM(23)
	STORE_ZMM(24) STORE_ZMM(25) STORE_ZMM(26) STORE_ZMM(27) STORE_ZMM(28) STORE_ZMM(29)
	STORE_ZMM(30) STORE_ZMM(31)
	STORE_K(0) STORE_K(1) STORE_K(2) STORE_K(3) STORE_K(4) STORE_K(5) STORE_K(6) STORE_K(7)
	"jmp 2f\n1:\n\t"
	STORE_YMM(0) STORE_YMM(1) STORE_YMM(2) STORE_YMM(3) STORE_YMM(4) STORE_YMM(5)
	STORE_YMM(6) STORE_YMM(7) STORE_YMM(8) STORE_YMM(9) STORE_YMM(10) STORE_YMM(11)
	STORE_YMM(12) STORE_YMM(13) STORE_YMM(14) STORE_YMM(15)
	"2:\n\t"
	"testl $" "512" ", features(%rip)\n\tjz 3f\n\t"
	"xor %ecx, %ecx\n\trdpkru\n\tmov %eax, pkru(%rip)\n"
	"3:\n\tcall after_sigreturn_c\n");

extern char after_sigreturn[];

void after_sigreturn_c(void)
{
	write_all(vec, sizeof(vec));
	write_all(kreg, sizeof(kreg));
	write_all(&pkru, sizeof(pkru));
	exit(0);
}

static int sigreturn_through_stdin_frame(void)
{
	void *frame = mmap((void *)FRAME_ADDR, 65536, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	size_t got = 0;
	ssize_t n;

	if (frame != (void *)FRAME_ADDR)
		return 6;
	memset(vec, 0, sizeof(vec));
	printf("ready %#lx %#lx %#lx\n", FRAME_ADDR, (unsigned long)after_sigreturn,
	       (unsigned long)(after_stack + sizeof(after_stack) - 8));
	fflush(stdout);
	while ((n = read(0, (char *)frame + got, 65536 - got)) > 0)
		got += (size_t)n;
	if (!got)
		return 7;
	/* rt_sigreturn finds the frame at RSP - 8: RSP = frame + 8 (pretcode). */
	__asm__ volatile("mov %0, %%rsp\n\tmov %1, %%eax\n\tsyscall\n\tud2"
			 :: "r"(FRAME_ADDR + 8), "i"(SYS_rt_sigreturn) : "memory");
	__builtin_unreachable();
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	features = (unsigned)strtoul(argv[2], NULL, 0);
	if (!strcmp(argv[1], "capture"))
		return capture();
	if (!strcmp(argv[1], "sigreturn"))
		return sigreturn_through_stdin_frame();
	return 2;
}
