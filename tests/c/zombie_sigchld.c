/* A parent with a SIGCHLD handler and a child killed by SIGUSR1, never reaped (a zombie).
 * Every 50 ms the parent appends "tick N code=C status=S" to stdout, from
 * waitid(P_PID, child, WEXITED|WNOHANG|WNOWAIT) (which leaves the zombie alone), and the
 * handler appends "SIGCHLD" each time it runs. Before the dump it runs once (the child's
 * death); a restore that leaves the zombie's new exit signal pending would run it again.
 * tests/test_restore_zombie.py dumps this with upstream CRIU and restores it. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_sigchld(int sig)
{
	static const char line[] = "SIGCHLD\n";
	(void)sig;
	write(1, line, sizeof(line) - 1);
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigchld;
	sigaction(SIGCHLD, &sa, NULL);
	pid_t child = fork();
	if (child == 0) {
		raise(SIGUSR1);
		_exit(99);
	}
	struct timespec pause = { 0, 50 * 1000 * 1000 };
	for (unsigned long n = 1;; n++) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		waitid(P_PID, child, &si, WEXITED | WNOHANG | WNOWAIT);
		printf("tick %lu code=%d status=%d\n", n, si.si_code, si.si_status);
		fflush(stdout);
		nanosleep(&pause, NULL);
	}
}
