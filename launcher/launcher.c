/*
 * pycrestore: the command's launcher.  Holds the stop signals while Python starts.
 *
 * A Python program cannot catch a signal before its own first line runs: CPython installs
 * its SIGINT handler early in start-up, and a Ctrl-C in the ~50 ms before pycrestore's
 * handlers are in place (interpreter start, site, the package's imports) ends in a
 * KeyboardInterrupt traceback.  So the `pycrestore` command is this small program: it
 * blocks SIGINT, SIGTERM and SIGHUP, writes which ones it blocked into the environment,
 * and execs Python on pycriu_restore.__main__.  The signal mask survives execve(2), and a
 * blocked signal stays pending; interruption.py installs its handlers first thing and
 * then unblocks exactly those signals, so one that arrived during start-up is handled
 * like any other: one line, exit 128 + signo.
 *
 * A signal ignored or already blocked by the caller is left as the caller set it.
 *
 * Built by launcher/build.py with the interpreter's path compiled in (PYCRESTORE_PYTHON),
 * as a console script's #! line names it.  Python's -P keeps the current directory off
 * sys.path, as for an installed script.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef PYCRESTORE_PYTHON
#error "build with -DPYCRESTORE_PYTHON=\"/path/to/python3\" (launcher/build.py does)"
#endif

/* The variable interruption.py reads (and removes): the signal numbers held, "2,15,1". */
#define HELD_ENV "PYCRESTORE_HELD_SIGNALS"

static const int stop_signals[] = { SIGINT, SIGTERM, SIGHUP };

int main(int argc, char **argv)
{
	sigset_t old, hold;
	char held[32] = "";
	size_t i, used = 0;
	char **args;

	sigemptyset(&hold);
	if (sigprocmask(SIG_SETMASK, NULL, &old) != 0)
		return 127;
	for (i = 0; i < sizeof(stop_signals) / sizeof(stop_signals[0]); i++) {
		int signo = stop_signals[i];
		struct sigaction act;

		if (sigismember(&old, signo) == 1)
			continue; /* the caller blocked it: theirs to unblock */
		if (sigaction(signo, NULL, &act) == 0 && act.sa_handler == SIG_IGN)
			continue; /* nohup, a background job: stays ignored */
		sigaddset(&hold, signo);
		used += (size_t)snprintf(held + used, sizeof(held) - used, "%s%d", used ? "," : "", signo);
	}
	if (sigprocmask(SIG_BLOCK, &hold, NULL) != 0)
		return 127;
	if (setenv(HELD_ENV, held, 1) != 0)
		return 127;

	/* python -P -m pycriu_restore ARGS... (argv[0] is kept for the usage line). */
	args = calloc((size_t)argc + 4, sizeof(*args));
	if (!args)
		return 127;
	args[0] = PYCRESTORE_PYTHON;
	args[1] = "-P";
	args[2] = "-m";
	args[3] = "pycriu_restore";
	for (i = 1; i < (size_t)argc; i++)
		args[i + 3] = argv[i];
	execv(PYCRESTORE_PYTHON, args);
	fprintf(stderr, "pycrestore: cannot run %s: %s (reinstall pycrestore for this Python)\n",
		PYCRESTORE_PYTHON, strerror(errno));
	return 127;
}
