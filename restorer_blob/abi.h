/*
 * abi.h - the contract between the orchestrator (Python) and the restorer blob (C).
 *
 * The orchestrator writes a struct blob_args, and the arrays it points to, into the
 * bootstrap region of a stopped task, then enters the blob at BLOB_ENTRY_RESTORE_TASK with
 * RDI = address of the args (see "Entry" below).  pycriu_restore/blob/abi.py mirrors every
 * struct and every #define of this file; tests/test_blob_abi.py compiles this header and
 * compares each size, offset and value with the mirror.
 *
 * Rules for this file:
 *   - fixed-width types only.  An address is a uint64_t in the *task's* address space: the
 *     writer (Python, in another process) never shares pointers with the blob;
 *   - every hole is an explicit _pad field that the writer sets to zero; each struct's size
 *     is a multiple of 8 and is pinned by a _Static_assert at the end;
 *   - arrays are (address, count) pairs, so more data grows an array, not this struct;
 *   - any change of a layout or of a meaning bumps BLOB_ABI_VERSION.  The blob refuses args
 *     of another version or size (BLOB_EXIT_BAD_VERSION, BLOB_EXIT_BAD_SIZE).
 *
 * The bootstrap region (one contiguous mapping, free in both the old and the target layout;
 * research/criu-restore-internals.md section 2.2), from low to high addresses:
 *
 *     bootstrap_start
 *     +------------------------------+
 *     | blob image (restorer.elf)    |  relocated for this address, RWX
 *     +------------------------------+
 *     | struct blob_args             |  RW; the blob writes progress/error back here
 *     | arrays: blob_vma[], ...      |
 *     +------------------------------+
 *     | per thread: stack, sigframe  |  BLOB_STACK_BYTES each, sigframe 64-byte aligned
 *     +------------------------------+
 *     bootstrap_start + bootstrap_len
 *
 * Entry: the tracer sets RIP = base + offset of BLOB_ENTRY_RESTORE_TASK, RDI = address of the
 * args, RSP = any writable address with BLOB_STACK_BYTES below it (the entry aligns it).
 * restore_task never returns: it ends in exit_group (BLOB_F_EXIT) or, in a later version,
 * in rt_sigreturn into the checkpointed registers.
 *
 * Exit statuses: the blob's own are BLOB_EXIT_RESERVED..255; a caller asking for
 * exit_group(exit_code) must use a code below BLOB_EXIT_RESERVED.
 */
#ifndef PYCRESTORE_RESTORER_ABI_H
#define PYCRESTORE_RESTORER_ABI_H

#include <stdint.h>

#define BLOB_ARGS_MAGIC		0x42435950u	/* "PYCB" in memory, little-endian */
#define BLOB_ABI_VERSION	1u

#define BLOB_PAGE_SIZE		4096u		/* x86-64 base page (asm/page_types.h) */
#define BLOB_STACK_BYTES	32768u		/* per-thread stack the orchestrator reserves */

/* Names of the blob's entry points (symbols in restorer.elf's .symtab). */
#define BLOB_ENTRY_RESTORE_TASK	"restore_task"

/* blob_args.flags */
#define BLOB_F_EXIT		(1u << 0)	/* end with exit_group(exit_code) after the steps;
						 * the only ending this version implements */

/* Exit statuses of the blob itself (exit_group argument). */
#define BLOB_EXIT_RESERVED	240u	/* args.exit_code must be below this */
#define BLOB_EXIT_BAD_MAGIC	240u	/* RDI does not point at a struct blob_args */
#define BLOB_EXIT_BAD_VERSION	241u	/* args written for another BLOB_ABI_VERSION */
#define BLOB_EXIT_BAD_SIZE	242u	/* args.args_size != sizeof(struct blob_args) */
#define BLOB_EXIT_BAD_ARGS	243u	/* a field is out of range: see args.progress/error */
#define BLOB_EXIT_UNSUPPORTED	244u	/* args ask for work this blob version cannot do */
#define BLOB_EXIT_STEP_FAILED	245u	/* a step's syscall failed: see args.progress/error */

/* blob_vma.blob_flags */
#define BLOB_VMA_NO_PROT_WRITE	(1u << 0)	/* no pages to read: do not add PROT_WRITE */
#define BLOB_VMA_CLOSE_FD	(1u << 1)	/* close fd after mapping: last VMA of the file */

/* An rseq area (rseq(2)): the glibc one to drop, or a checkpointed one to register. */
struct blob_rseq {
	uint64_t addr;		/* struct rseq address; 0: none */
	uint32_t len;		/* bytes registered (32 for glibc 2.36) */
	uint32_t sig;		/* signature given at registration (x86: 0x53053053) */
};

/* One VMA to map at its checkpointed address (from mm-N.img's VmaEntry). */
struct blob_vma {
	uint64_t start;		/* page-aligned */
	uint64_t end;		/* exclusive, page-aligned */
	uint64_t pgoff;		/* file offset in bytes, for file mappings */
	uint64_t madv;		/* bit n set: madvise(start, end - start, n) after filling */
	uint32_t prot;		/* PROT_* as checkpointed */
	uint32_t flags;		/* MAP_* (MAP_FIXED is added by the blob) */
	uint32_t blob_flags;	/* BLOB_VMA_* */
	int32_t fd;		/* fd open in the task for a file mapping; -1: anonymous */
};

/* One preadv(2) batch from the pages image: iovs[first_iov .. first_iov + nr_iovs). */
struct blob_page_read {
	uint64_t file_off;	/* byte offset in pages-N.img */
	uint64_t first_iov;	/* index into blob_args.iovs */
	uint32_t nr_iovs;	/* at most IOV_MAX (1024) */
	uint32_t _pad;
};

/* struct iovec with fixed-width fields. */
struct blob_iovec {
	uint64_t base;		/* destination address, inside some blob_vma */
	uint64_t len;		/* bytes */
};

/* An mremap(2) of a mapping the kernel made ([vvar], [vvar_vclock], [vdso]) to its
 * checkpointed address; 6.18 has three such areas (research/feasibility-spike.md section 3). */
struct blob_remap {
	uint64_t old_start;	/* where the kernel put it in this process */
	uint64_t new_start;	/* checkpointed start */
	uint64_t len;		/* bytes; equal in both layouts */
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
	uint32_t exe_fd;	/* fd of the checkpointed executable, open in the task */
};

/* Per-thread state the blob sets from inside each thread (thread 0 enters restore_task). */
struct blob_thread {
	uint32_t tid;		/* checkpointed TID: clone3 set_tid, checked with gettid */
	uint32_t _pad;
	uint64_t stack_top;	/* top of its BLOB_STACK_BYTES stack in the bootstrap region */
	uint64_t sigframe;	/* its rt_sigframe: RSP for the final rt_sigreturn */
	uint64_t fs_base;	/* arch_prctl(ARCH_SET_FS) */
	uint64_t gs_base;	/* arch_prctl(ARCH_SET_GS) */
	uint64_t clear_child_tid;	/* set_tid_address(2) */
	uint64_t robust_list;	/* set_robust_list(2) head */
	uint64_t robust_list_len;
	struct blob_rseq rseq;	/* the checkpointed rseq area to register */
	uint8_t comm[16];	/* prctl(PR_SET_NAME), NUL-padded (TASK_COMM_LEN) */
};

/* Everything restore_task needs; written by the orchestrator, updated by the blob. */
struct blob_args {
	/* Header: checked before anything else is read. */
	uint32_t magic;		/* BLOB_ARGS_MAGIC */
	uint32_t abi_version;	/* BLOB_ABI_VERSION */
	uint32_t args_size;	/* sizeof(struct blob_args) as the writer laid it out */
	uint32_t flags;		/* BLOB_F_* */

	/* Outcome. */
	uint32_t exit_code;	/* in: exit_group status with BLOB_F_EXIT, < BLOB_EXIT_RESERVED */
	uint32_t progress;	/* out: 1 + index of the step being run; 0 before the first */
	int64_t error;		/* out: -errno of the failed step; 0 while all is well */
	uint64_t error_addr;	/* out: address the failed step worked on, or 0 */

	/* Bootstrap region: blob, args, arrays, stacks, sigframes.  Never unmapped by the blob. */
	uint64_t bootstrap_start;	/* page-aligned */
	uint64_t bootstrap_len;		/* bytes, page-rounded */
	uint64_t task_size;	/* end of user space: the blob unmaps below it only ([vsyscall]) */

	/* glibc's rseq area of the process the blob runs in, unregistered before anything is
	 * unmapped: 6.18 kills the task otherwise (research/feasibility-spike.md section 2). */
	struct blob_rseq self_rseq;

	/* Memory. */
	uint64_t vmas;		/* struct blob_vma[nr_vmas], sorted by start, disjoint */
	uint32_t nr_vmas;
	int32_t pages_fd;	/* pages-N.img open in the task; -1: nothing to read */
	uint64_t page_reads;	/* struct blob_page_read[nr_page_reads], in file order */
	uint32_t nr_page_reads;
	uint32_t _pad0;
	uint64_t iovs;		/* struct blob_iovec[nr_iovs], indexed by page_reads */
	uint32_t nr_iovs;
	uint32_t _pad1;
	uint64_t remaps;	/* struct blob_remap[nr_remaps]: vdso/vvar moves */
	uint32_t nr_remaps;
	uint32_t _pad2;

	/* mm bounds, auxv and exe link, applied after every VMA is in place. */
	struct blob_mm mm;

	/* Signal actions, set before any thread is created. */
	uint64_t sigactions;	/* struct blob_sigaction[nr_sigactions] */
	uint32_t nr_sigactions;
	uint32_t _pad3;

	/* Threads: threads[0] is the one that enters restore_task. */
	uint64_t threads;	/* struct blob_thread[nr_threads] */
	uint32_t nr_threads;
	uint32_t _pad4;
};

_Static_assert(sizeof(struct blob_rseq) == 16, "blob_rseq layout");
_Static_assert(sizeof(struct blob_vma) == 48, "blob_vma layout");
_Static_assert(sizeof(struct blob_page_read) == 24, "blob_page_read layout");
_Static_assert(sizeof(struct blob_iovec) == 16, "blob_iovec layout");
_Static_assert(sizeof(struct blob_remap) == 24, "blob_remap layout");
_Static_assert(sizeof(struct blob_sigaction) == 40, "blob_sigaction layout");
_Static_assert(sizeof(struct blob_mm) == 104, "blob_mm layout (struct prctl_mm_map)");
_Static_assert(sizeof(struct blob_thread) == 96, "blob_thread layout");
_Static_assert(sizeof(struct blob_args) == 280, "blob_args layout");

#endif /* PYCRESTORE_RESTORER_ABI_H */
