"""Name tables that crit uses to print numbers: flag bits and value names.

A schema field names its table with ``[(criu).flags = "mmap.prot"]`` or
``[(criu).dict = "sk"]`` (see ``proto/opts.proto``); :mod:`pycriu_restore.images.crit_json`
looks the table up here. The tables are the ones of crit (CRIU's
``lib/pycriu/images/pb2dict.py``), so that ``pycrestore show`` prints what ``crit show``
prints; the values come from the kernel headers named beside each table. The order of each
table is the order crit prints the names in.
"""

from __future__ import annotations

FlagTable = tuple[tuple[str, int], ...]

# <asm-generic/mman-common.h>: PROT_*.
MMAP_PROT: FlagTable = (
    ("PROT_READ", 0x1),
    ("PROT_WRITE", 0x2),
    ("PROT_EXEC", 0x4),
)

# <asm-generic/mman-common.h>, <linux/mman.h>: the MAP_* bits crit names.
MMAP_FLAGS: FlagTable = (
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_DROPPABLE", 0x08),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x0100),
)

# CRIU's criu/include/image.h: VMA_* status bits of a VmaEntry (the ones crit names).
MMAP_STATUS: FlagTable = (
    ("VMA_AREA_NONE", 0),
    ("VMA_AREA_REGULAR", 1 << 0),
    ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3),
    ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7),
    ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10),
    ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13),
    ("VMA_AREA_MEMFD", 1 << 14),
    ("VMA_AREA_SHSTK", 1 << 15),
    ("VMA_AREA_UPROBES", 1 << 17),
    ("VMA_UNSUPP", 1 << 31),
)

# <asm-generic/fcntl.h>: open() flags (octal, as the header writes them).
RFILE_FLAGS: FlagTable = (
    ("O_WRONLY", 0o00000001),
    ("O_RDWR", 0o00000002),
    ("O_CREAT", 0o00000100),
    ("O_EXCL", 0o00000200),
    ("O_NOCTTY", 0o00000400),
    ("O_TRUNC", 0o00001000),
    ("O_APPEND", 0o00002000),
    ("O_NONBLOCK", 0o00004000),
    ("O_DSYNC", 0o00010000),
    ("FASYNC", 0o00020000),
    ("O_DIRECT", 0o00040000),
    ("O_LARGEFILE", 0o00100000),
    ("O_DIRECTORY", 0o00200000),
    ("O_NOFOLLOW", 0o00400000),
    ("O_NOATIME", 0o01000000),
    ("O_CLOEXEC", 0o02000000),
)

# <linux/fcntl.h>: memfd seals.
SEALS_FLAGS: FlagTable = (
    ("F_SEAL_SEAL", 0x0001),
    ("F_SEAL_SHRINK", 0x0002),
    ("F_SEAL_GROW", 0x0004),
    ("F_SEAL_WRITE", 0x0008),
    ("F_SEAL_FUTURE_WRITE", 0x0010),
)

# CRIU's criu/include/pagemap.h: PE_* bits of a PagemapEntry.
PMAP_FLAGS: FlagTable = (
    ("PE_PARENT", 1 << 0),
    ("PE_LAZY", 1 << 1),
    ("PE_PRESENT", 1 << 2),
)

# Table name (as written in the schemas' (criu).flags option) -> table.
FLAG_TABLES: dict[str, FlagTable] = {
    "mmap.prot": MMAP_PROT,
    "mmap.flags": MMAP_FLAGS,
    "mmap.status": MMAP_STATUS,
    "rfile.flags": RFILE_FLAGS,
    "pmap.flags": PMAP_FLAGS,
    "seals.flags": SEALS_FLAGS,
}

# Value-name tables, per field name, for (criu).dict: "gen" from CRIU's
# criu/include/pstree.h (TASK_*), "sk" from <linux/socket.h>, <linux/net.h>, <netinet/tcp.h>
# and <linux/in.h>.
DICT_TABLES: dict[str, dict[str, dict[int, str]]] = {
    "gen": {
        # crit's names, not the kernel's: CRIU's TASK_STOPPED is 3 and TASK_ZOMBIE 6, but crit
        # (pb2dict.py gen_maps) names 3 "Zombie" and 6 "Stopped", and has no name for
        # TASK_DEAD (2), the state CRIU dumps a zombie in. Printing as crit does keeps
        # `show` equal to crit's JSON, and encode maps each name back to the same number.
        "task_state": {1: "Alive", 3: "Zombie", 6: "Stopped"},
    },
    "sk": {
        "family": {1: "UNIX", 2: "INET", 10: "INET6", 16: "NETLINK", 17: "PACKET"},
        "type": {1: "STREAM", 2: "DGRAM", 3: "RAW", 5: "SEQPACKET", 10: "PACKET"},
        "state": {
            1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
            6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
        },
        "proto": {0: "IP", 6: "TCP", 17: "UDP", 136: "UDPLITE"},
    },
}


def format_flags(value: int, table: FlagTable) -> str:
    """Print ``value`` as crit does: the set names joined by " | ", then any unnamed bits in hex.

    A zero value prints as "" (no name matches, nothing is left over).
    """
    names = [name for name, bit in table if value & bit]
    known = 0
    for _, bit in table:
        known |= bit
    rest = value & ~known
    if rest:
        names.append(f"0x{rest:x}")
    return " | ".join(names)


def parse_flags(text: str, table: FlagTable) -> int:
    """Inverse of :func:`format_flags`: sum the named bits and any numbers ("0x10", "8").

    Raises ``ValueError`` naming the first part that is neither a name nor a number.
    """
    if text.strip() == "":
        return 0
    by_name = dict(table)
    total = 0
    for part in (p.strip() for p in text.split("|")):
        if part in by_name:
            total += by_name[part]
        else:
            try:
                total += int(part, 0)
            except ValueError:
                raise ValueError(f"{part!r} is not a flag name of this field nor a number") from None
    return total
