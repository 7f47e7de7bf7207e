"""linux/tcp_repair.py and linux/sockopt.py against the C headers (gcc), as test_linux_abi.py.

<linux/tcp.h> and <netinet/tcp.h> define clashing structs, as do <linux/in.h> and
<netinet/in.h>, hence two programs: the kernel's uapi headers, and glibc's.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path
from types import ModuleType

from pycriu_restore.linux import sockopt, tcp_repair

KERNEL_PRELUDE = """
#include <stddef.h>
#include <stdio.h>
#include <linux/tcp.h>
#include <linux/sockios.h>
#include <asm/ioctls.h>
#include <asm/socket.h>
#include <linux/in.h>
#include <linux/in6.h>
"""

GLIBC_PRELUDE = """
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
static int wscale_byte(void)
{
    struct tcp_info ti;
    memset(&ti, 0, sizeof(ti));
    ti.tcpi_snd_wscale = 3;
    ti.tcpi_rcv_wscale = 5;
    return ((unsigned char *)&ti)[offsetof(struct tcp_info, tcpi_options) + 1];
}
"""

KERNEL_CONSTANTS: dict[tuple[ModuleType, str], str] = {
    (tcp_repair, "SIOCINQ"): "SIOCINQ",
    (tcp_repair, "SIOCOUTQ"): "SIOCOUTQ",
    (tcp_repair, "SIOCOUTQNSD"): "SIOCOUTQNSD",
    (sockopt, "SO_NO_CHECK"): "SO_NO_CHECK",
    (sockopt, "SO_SNDBUFFORCE"): "SO_SNDBUFFORCE",
    (sockopt, "SO_RCVBUFFORCE"): "SO_RCVBUFFORCE",
    (sockopt, "SO_BUF_LOCK"): "SO_BUF_LOCK",
    (sockopt, "IP_PKTINFO"): "IP_PKTINFO",
    (sockopt, "IP_FREEBIND"): "IP_FREEBIND",
    (sockopt, "IPV6_FREEBIND"): "IPV6_FREEBIND",
}
for _name in ("TCP_MAXSEG", "TCP_INFO", "TCP_REPAIR", "TCP_REPAIR_QUEUE", "TCP_QUEUE_SEQ",
              "TCP_REPAIR_OPTIONS", "TCP_TIMESTAMP", "TCP_REPAIR_WINDOW", "TCP_REPAIR_ON",
              "TCP_REPAIR_OFF", "TCP_REPAIR_OFF_NO_WP", "TCP_NO_QUEUE", "TCP_RECV_QUEUE",
              "TCP_SEND_QUEUE", "TCPI_OPT_TIMESTAMPS", "TCPI_OPT_SACK", "TCPI_OPT_WSCALE"):
    KERNEL_CONSTANTS[(tcp_repair, _name)] = _name

GLIBC_CONSTANTS: dict[tuple[ModuleType, str], str] = {
    (tcp_repair, "SOL_TCP"): "SOL_TCP",
    (tcp_repair, "TCPOPT_MAXSEG"): "TCPOPT_MAXSEG",
    (tcp_repair, "TCPOPT_WINDOW"): "TCPOPT_WINDOW",
    (tcp_repair, "TCPOPT_SACK_PERMITTED"): "TCPOPT_SACK_PERMITTED",
    (tcp_repair, "TCPOPT_TIMESTAMP"): "TCPOPT_TIMESTAMP",
}
for _value, _name in tcp_repair.STATE_NAMES.items():
    GLIBC_CONSTANTS[(tcp_repair, "TCP_" + _name)] = "TCP_" + _name

NOT_IN_UAPI: set[tuple[ModuleType, str]] = set()


def _struct_checks(struct: type, c_type: str) -> list[tuple[str, int, str]]:
    checks = [(f"sizeof {struct.__name__}", ctypes.sizeof(struct), f"sizeof({c_type})")]
    for name, *_ in struct._fields_:
        checks.append((f"{struct.__name__}.{name}", getattr(struct, name).offset, f"offsetof({c_type}, {name})"))
    return checks


def _run_c(tmp_path: Path, stem: str, prelude: str, exprs: list[str]) -> list[int]:
    body = "\n".join(f'    printf("%lld\\n", (long long)({e}));' for e in exprs)
    source = tmp_path / f"{stem}.c"
    source.write_text(f"{prelude}\nint main(void)\n{{\n{body}\n    return 0;\n}}\n")
    exe = tmp_path / stem
    build = subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(exe), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, f"gcc failed on {source}:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    values = [int(line) for line in run.stdout.split()]
    assert len(values) == len(exprs)
    return values


def _check(tmp_path: Path, stem: str, prelude: str, rows: list[tuple[str, int, str]]) -> None:
    c_values = _run_c(tmp_path, stem, prelude, [expr for _, _, expr in rows])
    wrong = [f"{label}: python {py:#x}, C {expr} = {c:#x}" for (label, py, expr), c in zip(rows, c_values) if py != c]
    assert not wrong, "mismatches with the C headers:\n" + "\n".join(wrong)


def test_kernel_side_matches_uapi_headers(tmp_path: Path) -> None:
    rows = [(f"{m.__name__}.{n}", getattr(m, n), e) for (m, n), e in KERNEL_CONSTANTS.items()]
    rows += _struct_checks(tcp_repair.TcpRepairOpt, "struct tcp_repair_opt")
    rows += _struct_checks(tcp_repair.TcpRepairWindow, "struct tcp_repair_window")
    _check(tmp_path, "kernel_side", KERNEL_PRELUDE, rows)


def test_glibc_side_matches_headers(tmp_path: Path) -> None:
    rows = [(f"{m.__name__}.{n}", getattr(m, n), e) for (m, n), e in GLIBC_CONSTANTS.items()]
    rows += _struct_checks(sockopt.Timeval, "struct timeval")
    rows += _struct_checks(sockopt.Linger, "struct linger")
    head = tcp_repair.TcpInfoHead
    for name in ("tcpi_state", "tcpi_ca_state", "tcpi_retransmits", "tcpi_probes", "tcpi_backoff", "tcpi_options"):
        rows.append((f"TcpInfoHead.{name}", getattr(head, name).offset, f"offsetof(struct tcp_info, {name})"))
    # The two 4-bit window scales share the byte after tcpi_options: compare the packing.
    packed = head(tcpi_snd_wscale=3, tcpi_rcv_wscale=5)
    rows.append(("TcpInfoHead wscale byte", bytes(packed)[head.tcpi_options.offset + 1], "wscale_byte()"))
    _check(tmp_path, "glibc_side", GLIBC_PRELUDE, rows)


def test_every_constant_is_checked() -> None:
    """A new integer constant in these modules must be added to a table above."""
    checked = set(KERNEL_CONSTANTS) | set(GLIBC_CONSTANTS) | NOT_IN_UAPI
    missing = [f"{m.__name__}.{n}" for m in (tcp_repair, sockopt) for n, v in vars(m).items()
               if n.isupper() and not n.startswith("_") and isinstance(v, int) and not isinstance(v, bool)
               and (m, n) not in checked]
    assert not missing, f"constants not compared with a header: {missing}"
