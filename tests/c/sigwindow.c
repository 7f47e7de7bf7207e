/*
 * sigwindow.c - a workload whose signals are always in flight, to restore many times over.
 *
 * What it keeps busy (tests/test_signal_window.py checkpoints it once and restores it 50
 * times; every restore must survive the signals that arrive while pycrestore still steps
 * the task through its last syscalls):
 *
 *  - ITIMER_REAL every 1 ms.  The SIGALRM handler (SA_SIGINFO|SA_ONSTACK|SA_RESTART) runs
 *    on a 64 KiB alternate stack and counts `alarms`.  It counts `bad` when it does not run
 *    on that stack, or when the code it interrupted is not the program's own text: a signal
 *    delivered while the restorer's code still ran (too early) shows there.
 *  - Blocked and pending in the main thread, queued once at start: SIGUSR2 twice (a
 *    standard signal: one stays pending, value 0x5eed), SIGRTMIN+1 three times to the
 *    process (shared queue, values 1 2 3), SIGRTMIN+2 twice to the main thread (private
 *    queue, values 11 12).
 *  - A second thread that blocks every signal, has SIGRTMIN+3 pending in its own queue
 *    (value 21), and counts `ticks` every 2 ms.
 *
 * The main thread sleeps in pause() and every 50 alarms appends
 *     "S alarms=<n> bad=<n> ticks=<n> pend=<sigpending mask, hex>"
 * to LOG (O_APPEND).  On SIGHUP it drains its blocked pending signals with sigtimedwait
 * ("D sig=<n> val=<n>" each), asks the thread to drain its own ("W n=<count> val=<sum>"),
 * then writes "E".  Nothing here uses vector registers (-mgeneral-regs-only, no stdio or
 * string functions): the process does not depend on the XSAVE state a restore rebuilds.
 *
 * usage: sigwindow LOG
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define RT_SHARED (SIGRTMIN + 1)
#define RT_PRIVATE (SIGRTMIN + 2)
#define RT_WORKER (SIGRTMIN + 3)
#define LOG_EVERY 50

extern char __executable_start[], etext[];

static int logfd;
static char altstack[64 * 1024] __attribute__((aligned(64)));
static volatile sig_atomic_t alarms, bad, hup;
static volatile unsigned long ticks;
static volatile int drain_asked, drain_done, drained_n, drained_sum;

/* Append one line built by the caller; a failed write ends the program (the test sees it). */
static void put(const char *buf, int len)
{
	if (write(logfd, buf, len) != len)
		_exit(3);
}

static int fmt_num(char *out, unsigned long n, int base)
{
	char tmp[24];
	int k = 0, len = 0;

	do
		tmp[k++] = "0123456789abcdef"[n % base];
	while ((n /= base));
	while (k)
		out[len++] = tmp[--k];
	return len;
}

static int fmt_str(char *out, const char *s)
{
	int len = 0;

	while (s[len]) {
		out[len] = s[len];
		len++;
	}
	return len;
}

static void on_alrm(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	char here;
	uintptr_t rip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
	int on_alt = &here >= altstack && &here < altstack + sizeof(altstack);
	int in_text = rip >= (uintptr_t)__executable_start && rip < (uintptr_t)etext;

	(void)sig;
	(void)si;
	alarms++;
	if (!on_alt || !in_text)
		bad++;
}

static void on_hup(int sig)
{
	(void)sig;
	hup = 1;
}

static void *worker(void *arg)
{
	struct timespec two_ms = { 0, 2000000 }, zero = { 0, 0 };
	sigset_t own;
	siginfo_t si;

	(void)arg;
	if (pthread_sigqueue(pthread_self(), RT_WORKER, (union sigval){ .sival_int = 21 }))
		_exit(4);
	sigemptyset(&own);
	sigaddset(&own, RT_WORKER);
	for (;;) {
		nanosleep(&two_ms, NULL);
		ticks++;
		if (drain_asked && !drain_done) {
			while (sigtimedwait(&own, &si, &zero) == RT_WORKER) {
				drained_n++;
				drained_sum += si.si_value.sival_int;
			}
			drain_done = 1;
		}
	}
	return NULL;
}

/* Drain the main thread's blocked pending signals, then the worker's; log what came. */
static void drain(void)
{
	struct timespec zero = { 0, 0 };
	sigset_t w;
	siginfo_t si;
	char buf[128];
	int s, len;

	sigemptyset(&w);
	sigaddset(&w, SIGUSR2);
	sigaddset(&w, RT_SHARED);
	sigaddset(&w, RT_PRIVATE);
	while ((s = sigtimedwait(&w, &si, &zero)) > 0) {
		len = fmt_str(buf, "D sig=");
		len += fmt_num(buf + len, s, 10);
		len += fmt_str(buf + len, " val=");
		len += fmt_num(buf + len, si.si_value.sival_int, 10);
		buf[len++] = '\n';
		put(buf, len);
	}
	drain_asked = 1;
	while (!drain_done)
		pause();	/* the next SIGALRM (1 ms) wakes us */
	len = fmt_str(buf, "W n=");
	len += fmt_num(buf + len, drained_n, 10);
	len += fmt_str(buf + len, " val=");
	len += fmt_num(buf + len, drained_sum, 10);
	len += fmt_str(buf + len, "\nE\n");
	put(buf, len);
}

static void status_line(void)
{
	char buf[160];
	sigset_t p;
	unsigned long mask = 0;
	int s, len;

	sigpending(&p);
	for (s = 1; s <= 64; s++)
		if (sigismember(&p, s) == 1)
			mask |= 1ul << (s - 1);
	len = fmt_str(buf, "S alarms=");
	len += fmt_num(buf + len, (unsigned long)alarms, 10);
	len += fmt_str(buf + len, " bad=");
	len += fmt_num(buf + len, (unsigned long)bad, 10);
	len += fmt_str(buf + len, " ticks=");
	len += fmt_num(buf + len, ticks, 10);
	len += fmt_str(buf + len, " pend=");
	len += fmt_num(buf + len, mask, 16);
	buf[len++] = '\n';
	put(buf, len);
}

int main(int argc, char **argv)
{
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
	struct itimerval every_ms = { { 0, 1000 }, { 0, 1000 } };
	struct sigaction sa = { 0 };
	sigset_t all, blk;
	pthread_t thread;
	long logged = 0;

	if (argc != 2)
		return 2;
	logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0 || sigaltstack(&ss, NULL))
		return 3;

	sa.sa_sigaction = on_alrm;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL))
		return 3;
	sa.sa_handler = on_hup;
	sa.sa_flags = 0;
	if (sigaction(SIGHUP, &sa, NULL))
		return 3;

	/* The worker inherits "everything blocked"; the main thread then keeps only its own. */
	sigfillset(&all);
	sigemptyset(&blk);
	sigaddset(&blk, SIGUSR2);
	sigaddset(&blk, RT_SHARED);
	sigaddset(&blk, RT_PRIVATE);
	if (pthread_sigmask(SIG_SETMASK, &all, NULL) ||
	    pthread_create(&thread, NULL, worker, NULL) ||
	    pthread_sigmask(SIG_SETMASK, &blk, NULL))
		return 3;

	if (sigqueue(getpid(), SIGUSR2, (union sigval){ .sival_int = 0x5eed }) ||
	    sigqueue(getpid(), SIGUSR2, (union sigval){ .sival_int = 0x5eed }) ||
	    sigqueue(getpid(), RT_SHARED, (union sigval){ .sival_int = 1 }) ||
	    sigqueue(getpid(), RT_SHARED, (union sigval){ .sival_int = 2 }) ||
	    sigqueue(getpid(), RT_SHARED, (union sigval){ .sival_int = 3 }) ||
	    pthread_sigqueue(pthread_self(), RT_PRIVATE, (union sigval){ .sival_int = 11 }) ||
	    pthread_sigqueue(pthread_self(), RT_PRIVATE, (union sigval){ .sival_int = 12 }))
		return 3;
	if (setitimer(ITIMER_REAL, &every_ms, NULL))
		return 3;

	for (;;) {
		pause();
		if (hup) {
			hup = 0;
			drain();
		}
		if (alarms / LOG_EVERY != logged) {
			logged = alarms / LOG_EVERY;
			status_line();
		}
	}
}
