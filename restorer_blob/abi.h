/*
 * abi.h - the contract between the orchestrator (Python) and the restorer blob (C).
 *
 * The orchestrator writes a struct blob_args, and the arrays it points to, into the
 * bootstrap region of a stopped task, then enters the blob at BLOB_ENTRY_RESTORE_TASK with
 * RDI = address of the args.  pycriu_restore/blob/abi.py mirrors every struct and every
 * #define of this file; tests/test_blob_abi.py compiles this header and compares each size,
 * offset and value with the mirror.  pycriu_restore/blob/bootstrap.py draws the region.
 *
 * Rules for this file:
 *   - fixed-width types only.  An address is a uint64_t in the *task's* address space: the
 *     writer (Python, in another process) never shares pointers with the blob;
 *   - every hole is an explicit _pad field that the writer sets to zero; each struct's size
 *     is a multiple of 8 and is pinned by a _Static_assert at the end;
 *   - arrays are (address, count) pairs, so more data grows an array, not this struct;
 *   - any change of a layout or of a meaning bumps BLOB_ABI_VERSION.  The header (magic,
 *     version, size, flags) and the status record right after it stay at the same offsets
 *     in every version, so that a blob can report "wrong version" and a tracer can read it.
 *
 * Entry: the tracer sets RIP = restore_task, RDI = args, RSP = args->stack_top (any RSP
 * works: once the magic checks out, entry.S switches to args->stack_top itself), orig_rax =
 * -1, and continues the task.  restore_task never returns.  It runs the steps of
 * restorer.c in order and stops at the first that fails.  Then (status protocol):
 *
 *   1. it writes args->status: state OK, or FAILED with the step, a positive errno, the
 *      index of the object in its array and the object's address;
 *   2. it executes int3 (a SIGTRAP stop for the tracer, which reads args->status);
 *   3. on success, the very next system call is rt_sigreturn with RSP = threads[0].sigframe
 *      + 8 (the kernel finds the frame at RSP - 8): the task leaves with the registers of
 *      the frame.  On failure the blob calls exit_group(BLOB_EXIT_STEP_FAILED).
 *
 * Threads (threads[1 .. nr_threads)): step CREATE_THREADS of the leader makes each one, in
 * array order, with clone3(BLOB_THREAD_CLONE_FLAGS, set_tid = {tid}, exit_signal 0, stack =
 * [stack_top - BLOB_THREAD_STACK_BYTES, stack_top)) and fails unless clone3 returns that
 * tid.  A tracer that seized the leader with PTRACE_O_TRACECLONE gets a PTRACE_EVENT_CLONE
 * stop of the leader for each, and the new thread, auto-attached, first reports a
 * PTRACE_EVENT_STOP.  The new thread starts in entry.S on its own stack, with every signal
 * but SIGTRAP blocked (the leader's mask), and runs restore_thread: its own steps
 * THREAD_STATE, PENDING_SIGNALS, SECCOMP, CREDS and LATE_PRCTLS, each thread on its own
 * (credentials and seccomp filters are per thread in Linux).  It follows the same protocol
 * with its OWN record, threads[i].status: (1) write it, (2) int3, (3) rt_sigreturn with
 * RSP = threads[i].sigframe + 8, or exit_group(BLOB_EXIT_STEP_FAILED) after a failure.
 * The leader does not wait for its threads: the tracer waits for the int3 of every thread
 * (leader included), checks every record, then steps each thread through its
 * rt_sigreturn.  threads[0].status is never written: the leader reports in args->status.
 *
 * Fill workers (blob_args.fill_workers): step FILL_PAGES may make up to
 * BLOB_MAX_FILL_THREADS - 1 more threads that read page batches beside the leader.  They are
 * made with BLOB_FILL_CLONE_FLAGS, which include CLONE_UNTRACED: no PTRACE_EVENT_CLONE stop,
 * no auto-attach, so a tracer sees nothing of them.  The leader joins every one (futex on
 * its CLONE_CHILD_CLEARTID word, then until its tid is gone) before the step ends, so no
 * worker exists after FILL_PAGES, in success or failure; a worker's failure is reported
 * in args->status as the leader's own (step FILL_PAGES, errno, batch, address).
 *
 * BLOB_F_EXIT replaces step 2-3 by exit_group(args->exit_code) after success (and by
 * exit_group(BLOB_EXIT_STEP_FAILED) after a failure, without int3): for running the blob
 * in a forked child without a tracer (pycriu_restore/blob/forkrun.py).  With BLOB_F_EXIT a
 * thread that succeeds ends with exit(0) (itself only), and the leader waits until every
 * thread's record says OK or FAILED before its exit_group.  BLOB_F_NO_TRAP drops only the
 * int3s: every thread goes straight to rt_sigreturn (again for tests without a tracer).
 * Arguments that are bad before the status record can be trusted end the task with
 * exit_group(BLOB_EXIT_BAD_MAGIC).
 */
#ifndef PYCRESTORE_RESTORER_ABI_H
#define PYCRESTORE_RESTORER_ABI_H

#include <stdint.h>

#define BLOB_ARGS_MAGIC		0x42435950u	/* "PYCB" in memory, little-endian */
#define BLOB_STATUS_MAGIC	0x54535942u	/* "BYST": the blob has started writing status */
#define BLOB_ABI_VERSION	6u	/* 6: fill threads, blob_vma.fill_madv */

#define BLOB_PAGE_SIZE		4096u		/* x86-64 base page (asm/page_types.h) */
#define BLOB_STACK_BYTES	32768u		/* the leader's stack in the bootstrap region */
#define BLOB_THREAD_STACK_BYTES	16384u		/* each other thread's stack there */
#define BLOB_FILL_STACK_BYTES	8192u		/* each fill worker's stack there */
#define BLOB_MAX_FILL_THREADS	16u		/* fill threads per task, the leader included */
#define BLOB_SIGFRAME_ALIGN	64u		/* XSAVE areas are 64-byte aligned (Intel SDM 13.4) */
#define BLOB_SIGINFO_BYTES	128u		/* sizeof(siginfo_t) (asm-generic/siginfo.h) */
#define BLOB_MAX_IOVS		1024u		/* iovecs per preadv batch: UIO_MAXIOV (linux/uio.h) */
#define BLOB_CAP_WORDS		2u		/* u32 words per capability set: _LINUX_CAPABILITY_U32S_3 */
#define BLOB_MAX_GROUPS		65536u		/* supplementary groups: NGROUPS_MAX (linux/limits.h) */
#define BLOB_MAX_BPF_INSNS	4096u		/* instructions per BPF program: BPF_MAXINSNS (linux/bpf_common.h) */
#define BLOB_BPF_INSN_BYTES	8u		/* sizeof(struct sock_filter) (linux/filter.h) */
#define BLOB_SIGEVENT_BYTES	64u		/* sizeof(struct sigevent) (asm-generic/siginfo.h: SIGEV_MAX_SIZE) */

/* Names of the blob's entry points and gadgets (symbols in restorer.elf's .symtab). */
#define BLOB_ENTRY_RESTORE_TASK	"restore_task"
#define BLOB_SYSCALL_GADGET	"blob_syscall_gadget"	/* a lone `syscall` instruction */

/* clone3 flags of a restored thread (linux/sched.h): CLONE_VM | CLONE_FS | CLONE_FILES |
 * CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM, what pthread_create and CRIU use. */
#define BLOB_THREAD_CLONE_FLAGS	0x50f00ull

/* clone3 flags of a fill worker (linux/sched.h): CLONE_VM | CLONE_FS | CLONE_FILES |
 * CLONE_SIGHAND | CLONE_THREAD, plus CLONE_UNTRACED (no PTRACE_EVENT_CLONE stop of the
 * leader, and the worker is not auto-attached: the tracer never sees it), CLONE_PARENT_SETTID
 * and CLONE_CHILD_CLEARTID (the kernel writes its tid before it runs and clears it, with a
 * futex wake, as it exits: the leader's join). */
#define BLOB_FILL_CLONE_FLAGS	0xb10f00ull

/* blob_args.fault_step values that are not steps (tests only, pycriu_restore/faults.py). */
#define BLOB_FAULT_FILL_WORKER	0x100u	/* every fill worker fails its first batch with EIO */

/* blob_args.flags */
#define BLOB_F_EXIT		(1u << 0)	/* end with exit_group(exit_code), not rt_sigreturn */
#define BLOB_F_NO_TRAP		(1u << 1)	/* no int3 before rt_sigreturn (no tracer) */
#define BLOB_F_SET_MM		(1u << 2)	/* apply args->mm with PR_SET_MM_MAP */

/* Exit statuses of the blob itself (exit_group argument). */
#define BLOB_EXIT_RESERVED	240u	/* args.exit_code must be below this */
#define BLOB_EXIT_BAD_MAGIC	240u	/* RDI does not point at a struct blob_args */
#define BLOB_EXIT_STEP_FAILED	245u	/* see args->status */

/* blob_status.state */
#define BLOB_STATE_RUNNING	1u	/* steps are running: status.step is the current one */
#define BLOB_STATE_OK		2u	/* every step succeeded */
#define BLOB_STATE_FAILED	3u	/* status.step failed with status.err */

/* Steps (restorer.c's blob_steps[] gives the order and explains it).  blob_status.step.
 * A thread other than the leader runs THREAD_STATE, PENDING_SIGNALS, SECCOMP, CREDS and
 * LATE_PRCTLS only.  Steps 18.. were added in ABI 4; the numbers do not give the order. */
#define BLOB_STEP_CHECK_ARGS		1u
#define BLOB_STEP_BLOCK_SIGNALS		2u
#define BLOB_STEP_UNREGISTER_RSEQ	3u
#define BLOB_STEP_PARK_VDSO		4u
#define BLOB_STEP_UNMAP_OLD		5u
#define BLOB_STEP_MAP_VMAS		6u
#define BLOB_STEP_FILL_PAGES		7u
#define BLOB_STEP_PROTECT_VMAS		8u
#define BLOB_STEP_PLACE_VDSO		9u
#define BLOB_STEP_CLOSE_FDS		10u
#define BLOB_STEP_SET_MM		11u
#define BLOB_STEP_SIGACTIONS		12u
#define BLOB_STEP_THREAD_STATE		13u
#define BLOB_STEP_RLIMITS		14u
#define BLOB_STEP_PENDING_SIGNALS	15u
#define BLOB_STEP_ITIMERS		16u
#define BLOB_STEP_CREATE_THREADS	17u	/* runs between THREAD_STATE and RLIMITS */
#define BLOB_STEP_PERSONALITY		18u	/* after PROTECT_VMAS, before CREATE_THREADS */
#define BLOB_STEP_POSIX_TIMERS		19u	/* create (disarmed), after RLIMITS */
#define BLOB_STEP_SECCOMP		20u	/* every thread, after PENDING_SIGNALS */
#define BLOB_STEP_CREDS			21u	/* every thread, after SECCOMP */
#define BLOB_STEP_LATE_PRCTLS		22u	/* every thread, after CREDS */
#define BLOB_STEP_ARM_POSIX_TIMERS	23u	/* last, after ITIMERS */

/* blob_thread.seccomp_mode: SECCOMP_MODE_* (linux/seccomp.h). */
#define BLOB_SECCOMP_DISABLED	0u
#define BLOB_SECCOMP_STRICT	1u
#define BLOB_SECCOMP_FILTER	2u

/* Where the task is and what went wrong; written by the blob only. */
struct blob_status {
	uint32_t magic;		/* BLOB_STATUS_MAGIC once the blob runs; the writer puts 0 */
	uint32_t state;		/* BLOB_STATE_* */
	uint32_t step;		/* BLOB_STEP_* running (RUNNING) or failed (FAILED) */
	uint32_t err;		/* positive errno of the failed step; 0 otherwise */
	uint32_t index;		/* index of the failed object in its array (VMA number ...) */
	uint32_t _pad;
	uint64_t addr;		/* address of the failed object (VMA start ...), or 0 */
};

/* An rseq area (rseq(2)): the glibc one to drop, or a checkpointed one to register. */
struct blob_rseq {
	uint64_t addr;		/* struct rseq address; 0: none */
	uint32_t len;		/* bytes registered (32 for glibc 2.36) */
	uint32_t sig;		/* signature given at registration (x86: 0x53053053) */
};

/* One VMA to map at its checkpointed address (mm-N.img's VmaEntry). */
struct blob_vma {
	uint64_t start;		/* page-aligned */
	uint64_t end;		/* exclusive, page-aligned */
	uint64_t pgoff;		/* file offset in bytes, for file mappings */
	uint64_t madv;		/* bit n set: madvise(start, end - start, n) after filling */
	uint64_t fill_madv;	/* bit n set: madvise(.., n) right after mapping, before filling
				 * (MADV_HUGEPAGE / MADV_NOHUGEPAGE: the page size of the fill) */
	uint32_t prot;		/* PROT_* as checkpointed */
	uint32_t map_prot;	/* PROT_* to map with: prot | PROT_WRITE while pages are read */
	uint32_t flags;		/* MAP_* as checkpointed (the blob adds MAP_FIXED_NOREPLACE) */
	int32_t fd;		/* fd open in the task for a file mapping; -1: anonymous */
	uint32_t plan_index;	/* the VMA's number in the plan, for status.index */
	uint32_t _pad;
};

/* One preadv(2) batch from the pages image: iovs[first_iov .. first_iov + nr_iovs),
 * filled from consecutive bytes of the file starting at file_off. */
struct blob_page_read {
	uint64_t file_off;	/* byte offset in pages-N.img */
	uint32_t first_iov;	/* index into blob_args.iovs */
	uint32_t nr_iovs;	/* 1 .. BLOB_MAX_IOVS */
};

/* struct iovec with fixed-width fields; the blob advances it in place on short reads. */
struct blob_iovec {
	uint64_t base;		/* destination address, inside some blob_vma */
	uint64_t len;		/* bytes */
};

/* One fill worker (step FILL_PAGES): a thread of the task that exists only during the fill. */
struct blob_fill_worker {
	int32_t tid;		/* the tid clone3 should give it (set_tid); 0: any.  If that
				 * fails, the other fill threads do its share: not an error */
	uint32_t alive;		/* out: its tid while it runs, 0 once it has exited (the
				 * kernel's CLONE_PARENT_SETTID / CLONE_CHILD_CLEARTID word) */
	uint64_t stack_top;	/* top of its BLOB_FILL_STACK_BYTES stack in the region, 16-aligned */
};

/* What the fill threads share: the next batch to take, and the first failure. */
struct blob_fill_state {
	uint32_t next_read;	/* index of the next page_reads[] batch to take; writer puts 0 */
	uint32_t failed;	/* 1 once a fill thread failed: the others stop taking batches */
	uint32_t err;		/* the first failure: positive errno ... */
	uint32_t index;		/* ... its batch ... */
	uint64_t addr;		/* ... and the destination it was reading into */
};

/* One area the kernel maps itself ([vvar], [vvar_vclock], [vdso]; 6.18 has three:
 * research/feasibility-spike.md section 3).  It is parked inside the bootstrap region
 * before the old memory goes, then moved to its checkpointed address. */
struct blob_vdso_area {
	uint64_t runtime_start;	/* where the kernel put it in this process */
	uint64_t park_start;	/* in the bootstrap region's park area */
	uint64_t target_start;	/* checkpointed address; 0: leave it parked */
	uint64_t len;		/* bytes; the same in all three places */
};

/* One rt_sigaction(2) call; handler..mask are the kernel's struct sigaction for x86-64
 * (arch/x86/include/uapi/asm/signal.h), passed to the syscall as is. */
struct blob_sigaction {
	uint32_t signo;
	uint32_t _pad;
	uint64_t handler;	/* sa_handler / sa_sigaction */
	uint64_t flags;		/* SA_*; SA_RESTORER is set for glibc handlers */
	uint64_t restorer;	/* sa_restorer */
	uint64_t mask;		/* sa_mask, 64 signals */
};

/* One prlimit64(2) call on the task itself. */
struct blob_rlimit {
	uint32_t resource;	/* RLIMIT_* */
	uint32_t _pad;
	uint64_t cur;		/* RLIM64_INFINITY is 2**64 - 1 */
	uint64_t max;
};

/* A pending signal to queue again: the raw siginfo_t; its first int is the signal. */
struct blob_siginfo {
	uint8_t bytes[BLOB_SIGINFO_BYTES];
};

/* struct itimerval (linux/time.h) with fixed-width fields, for setitimer(2). */
struct blob_itimer {
	uint64_t interval_sec;
	uint64_t interval_usec;
	uint64_t value_sec;
	uint64_t value_usec;
};

/* The mm bounds for prctl(PR_SET_MM, PR_SET_MM_MAP): the layout of struct prctl_mm_map
 * (linux/prctl.h), so the blob passes it to the kernel as is. */
struct blob_mm {
	uint64_t start_code;
	uint64_t end_code;
	uint64_t start_data;
	uint64_t end_data;
	uint64_t start_brk;
	uint64_t brk;
	uint64_t start_stack;
	uint64_t arg_start;
	uint64_t arg_end;
	uint64_t env_start;
	uint64_t env_end;
	uint64_t auxv;		/* address of the saved auxv (uint64_t pairs) */
	uint32_t auxv_size;	/* bytes */
	uint32_t exe_fd;	/* fd of the checkpointed executable; (uint32_t)-1: keep */
};

/*
 * One thread's credentials (CRIU's thread_core.creds), applied by the thread itself in
 * step CREDS in the order of CRIU's restore_creds (criu/pie/restorer.c).  Capability sets
 * are BLOB_CAP_WORDS u32 words, low word first, as capset(2) and the image hold them.
 */
struct blob_creds {
	uint32_t uid, euid, suid, fsuid;
	uint32_t gid, egid, sgid, fsgid;
	uint32_t cap_inh[BLOB_CAP_WORDS];
	uint32_t cap_prm[BLOB_CAP_WORDS];
	uint32_t cap_eff[BLOB_CAP_WORDS];
	uint32_t cap_bnd[BLOB_CAP_WORDS];	/* every capability not in it is dropped */
	uint32_t cap_amb[BLOB_CAP_WORDS];
	uint32_t secbits;	/* PR_SET_SECUREBITS value (linux/securebits.h) */
	uint32_t no_new_privs;	/* 1: PR_SET_NO_NEW_PRIVS at the end */
	uint32_t nr_groups;	/* <= BLOB_MAX_GROUPS */
	uint32_t _pad;
	uint64_t groups;	/* uint32_t[nr_groups]: setgroups(2) */
};

/* One seccomp filter program: seccomp(SECCOMP_SET_MODE_FILTER, flags, {nr_insns, insns}). */
struct blob_seccomp_filter {
	uint64_t insns;		/* struct sock_filter[nr_insns] (BLOB_BPF_INSN_BYTES each) */
	uint32_t nr_insns;	/* 1 .. BLOB_MAX_BPF_INSNS */
	uint32_t flags;		/* SECCOMP_FILTER_FLAG_* as dumped (TSYNC, LOG, SPEC_ALLOW) */
};

/* One POSIX timer (timer_create(2), then timer_settime(2)), task-wide. */
struct blob_posix_timer {
	uint32_t timer_id;	/* the id it must get (PR_TIMER_CREATE_RESTORE_IDS) */
	uint32_t clock_id;	/* CLOCK_* */
	int32_t sigev_notify;	/* SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID (| SIGEV_SIGNAL) */
	int32_t sigev_signo;
	uint64_t sival;		/* sigev_value.sival_ptr */
	int32_t notify_tid;	/* sigev_notify_thread_id for SIGEV_THREAD_ID */
	uint32_t _pad;
	uint64_t interval_sec;	/* struct itimerspec: it_interval */
	uint64_t interval_nsec;
	uint64_t value_sec;	/* it_value: time left; never both 0 for an armed timer */
	uint64_t value_nsec;
};

/* Per-thread state the blob sets from inside each thread (threads[0] runs restore_task,
 * threads[1..] are created by it and run restore_thread). */
struct blob_thread {
	struct blob_status status;	/* out: this thread's record (threads[1..] only; the
					 * leader reports in blob_args.status); writer puts 0 */
	uint32_t tid;		/* the TID clone3 must give it (threads[0]: not checked) */
	uint32_t _pad;
	uint64_t stack_top;	/* top of its stack in the bootstrap region, 16-byte aligned;
				 * threads[1..]: BLOB_THREAD_STACK_BYTES below it are its own */
	uint64_t sigframe;	/* its struct rt_sigframe (pretcode), 64-byte aligned; RSP = sigframe + 8 */
	uint64_t fs_base;	/* arch_prctl(ARCH_SET_FS) */
	uint64_t gs_base;	/* arch_prctl(ARCH_SET_GS), 0 included (a thread inherits the leader's) */
	uint64_t clear_child_tid;	/* set_tid_address(2) */
	uint64_t robust_list;	/* set_robust_list(2) head; skipped if robust_list_len is 0 */
	uint64_t robust_list_len;
	struct blob_rseq rseq;	/* the checkpointed rseq area to register; addr 0: none */
	uint8_t comm[16];	/* prctl(PR_SET_NAME), NUL-padded (TASK_COMM_LEN) */
	uint64_t siginfos;	/* struct blob_siginfo[nr_siginfos]: pending for this thread */
	uint32_t nr_siginfos;
	uint32_t _pad1;
	uint64_t creds;		/* struct blob_creds *; 0: keep the creds it has (tests only) */
	uint64_t seccomp_filters;	/* struct blob_seccomp_filter[nr_seccomp_filters],
					 * in install order: the chain's root first */
	uint32_t nr_seccomp_filters;
	uint32_t seccomp_mode;	/* BLOB_SECCOMP_*; FILTER needs nr_seccomp_filters >= 1 */
	uint32_t pdeath_sig;	/* PR_SET_PDEATHSIG after the creds; 0: none */
	int32_t dumpable;	/* blob_args.dumpable again: set again after this thread's creds,
				 * which reset it (kernel/cred.c: commit_creds); -1: leave */
};

/* Everything restore_task needs; written by the orchestrator, status updated by the blob. */
struct blob_args {
	/* Header: the same offsets in every ABI version. */
	uint32_t magic;		/* BLOB_ARGS_MAGIC */
	uint32_t abi_version;	/* BLOB_ABI_VERSION */
	uint32_t args_size;	/* sizeof(struct blob_args) as the writer laid it out */
	uint32_t flags;		/* BLOB_F_* */
	struct blob_status status;	/* out: read by the tracer at the int3 stop */

	/* Bootstrap region: blob, args, arrays, park area, sigframes, stack. */
	uint64_t bootstrap_start;	/* page-aligned */
	uint64_t bootstrap_len;		/* bytes, page-rounded */
	uint64_t task_size;	/* end of user space: the blob unmaps below it only ([vsyscall]) */
	uint64_t stack_top;	/* entry.S moves RSP here (16-byte aligned) */
	uint32_t exit_code;	/* with BLOB_F_EXIT: exit_group status, < BLOB_EXIT_RESERVED */
	uint32_t fault_step;	/* tests only (pycriu_restore/faults.py): BLOB_STEP_* to fail with EIO; 0: none */

	/* glibc's rseq area of the process the blob runs in, unregistered before anything is
	 * unmapped: 6.18 kills the task otherwise (research/feasibility-spike.md section 2). */
	struct blob_rseq self_rseq;

	/* Memory. */
	uint64_t vmas;		/* struct blob_vma[nr_vmas], sorted by start, disjoint */
	uint32_t nr_vmas;
	int32_t pages_fd;	/* pages-N.img open in the task; -1: nothing to read */
	uint64_t page_reads;	/* struct blob_page_read[nr_page_reads], in file order */
	uint32_t nr_page_reads;
	uint32_t nr_iovs;
	uint64_t iovs;		/* struct blob_iovec[nr_iovs], indexed by page_reads */
	uint64_t vdso_areas;	/* struct blob_vdso_area[nr_vdso_areas] */
	uint32_t nr_vdso_areas;

	/* Service fds (pages image, mapped files) closed once memory is in place. */
	uint32_t nr_close_fds;
	uint64_t close_fds;	/* int32_t[nr_close_fds] */

	/* mm bounds, auxv and exe link (with BLOB_F_SET_MM), then the task-wide prctls. */
	struct blob_mm mm;
	int32_t dumpable;	/* PR_SET_DUMPABLE value; -1: leave as is */
	int32_t thp_disabled;	/* PR_SET_THP_DISABLE value; -1: leave as is */

	/* Signal actions. */
	uint64_t sigactions;	/* struct blob_sigaction[nr_sigactions] */
	uint32_t nr_sigactions;
	uint32_t nr_rlimits;
	uint64_t rlimits;	/* struct blob_rlimit[nr_rlimits] */

	/* Pending signals shared by the whole task (rt_sigqueueinfo). */
	uint64_t siginfos;	/* struct blob_siginfo[nr_siginfos] */
	uint32_t nr_siginfos;

	/* Threads: threads[0] is the leader, which enters restore_task; it creates the others. */
	uint32_t nr_threads;
	uint64_t threads;	/* struct blob_thread[nr_threads] */

	/* ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF: armed last. */
	struct blob_itimer itimers[3];

	/* POSIX timers: created after RLIMITS, armed after the itimers. */
	uint64_t posix_timers;	/* struct blob_posix_timer[nr_posix_timers] */
	uint32_t nr_posix_timers;
	uint32_t personality;	/* personality(2) value; 0xffffffff: leave (it only queries) */
	uint32_t child_subreaper;	/* 1: PR_SET_CHILD_SUBREAPER after the creds */

	/* Page fill: page_reads[] are taken one at a time by fill_threads threads, the leader
	 * and fill_threads - 1 workers it makes and joins inside step FILL_PAGES. */
	uint32_t fill_threads;	/* 0 or 1: the leader alone; <= BLOB_MAX_FILL_THREADS */
	uint64_t fill_workers;	/* struct blob_fill_worker[fill_threads - 1] */
	struct blob_fill_state fill;	/* writer puts 0 */
};

_Static_assert(sizeof(struct blob_status) == 32, "blob_status layout");
_Static_assert(sizeof(struct blob_rseq) == 16, "blob_rseq layout");
_Static_assert(sizeof(struct blob_vma) == 64, "blob_vma layout");
_Static_assert(sizeof(struct blob_fill_worker) == 16, "blob_fill_worker layout");
_Static_assert(sizeof(struct blob_fill_state) == 24, "blob_fill_state layout");
_Static_assert(sizeof(struct blob_page_read) == 16, "blob_page_read layout");
_Static_assert(sizeof(struct blob_iovec) == 16, "blob_iovec layout");
_Static_assert(sizeof(struct blob_vdso_area) == 32, "blob_vdso_area layout");
_Static_assert(sizeof(struct blob_sigaction) == 40, "blob_sigaction layout");
_Static_assert(sizeof(struct blob_rlimit) == 24, "blob_rlimit layout");
_Static_assert(sizeof(struct blob_siginfo) == 128, "blob_siginfo layout");
_Static_assert(sizeof(struct blob_itimer) == 32, "blob_itimer layout");
_Static_assert(sizeof(struct blob_mm) == 104, "blob_mm layout (struct prctl_mm_map)");
_Static_assert(sizeof(struct blob_creds) == 96, "blob_creds layout");
_Static_assert(sizeof(struct blob_seccomp_filter) == 16, "blob_seccomp_filter layout");
_Static_assert(sizeof(struct blob_posix_timer) == 64, "blob_posix_timer layout");
_Static_assert(sizeof(struct blob_thread) == 176, "blob_thread layout");
_Static_assert(__builtin_offsetof(struct blob_thread, status) == 0, "thread status first");
_Static_assert(sizeof(struct blob_args) == 480, "blob_args layout");
_Static_assert(__builtin_offsetof(struct blob_args, status) == 16, "status offset is fixed");

#endif /* PYCRESTORE_RESTORER_ABI_H */
