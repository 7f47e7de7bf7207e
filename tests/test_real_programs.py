"""Real servers from Debian packages: dumped by upstream CRIU 4.2, restored by pycrestore,
then asked questions whose answers prove their state survived (tests/realprogs.py says how).

    redis-server   4 threads, epoll, a listening TCP socket, pipes: a key set before the
                   dump is read back, a counter goes on from its value
    lighttpd       epoll, a listening TCP socket: its request counter (mod_status) goes on
    socat          a listening TCP socket in a select() loop, forking a child per client
    dtach          a pty master and a named listening unix socket; a shell on the slave as
                   its controlling terminal: a line pushed through the socket reaches the
                   shell, which counts on from before the dump
    nginx          master + 2 workers: epoll, eventfd, a listening TCP socket, socketpairs
                   owned (F_SETOWN) by the master, and stub_status's counters in one
                   MAP_SHARED|MAP_ANONYMOUS zone: the requests counter goes on from before

Each needs its Debian package (the README's test command installs them) and upstream CRIU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pycriu_restore.images import dict_to_image, dump_image, image_to_dict, load_image
from realprogs import Dumped, dumped_program, require_program, restored, tree_pids, wait_for

HOST = "127.0.0.1"


def _connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout_s)


def _listening(port: int) -> bool:
    try:
        _connect(port, 0.5).close()
        return True
    except OSError:
        return False


# --- redis ------------------------------------------------------------------------------

REDIS_PORT = 46379


def _redis(*command: str) -> bytes:
    """One RESP command (the protocol redis-cli speaks); the reply's status line, or the
    payload of a bulk string (``$N`` then N bytes)."""
    request = f"*{len(command)}\r\n".encode() + b"".join(
        f"${len(arg)}\r\n{arg}\r\n".encode() for arg in command)
    with _connect(REDIS_PORT) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            reply += sock.recv(65536)
        head, _, rest = reply.partition(b"\r\n")
        if not head.startswith(b"$") or head == b"$-1":
            return head
        size = int(head[1:])
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            assert chunk, f"redis closed the connection after {len(rest)} of {size} bytes"
            rest += chunk
    return rest[:size]


@pytest.fixture(scope="module")
def redis() -> Dumped:
    require_program("/usr/bin/redis-server")

    def prepare(_workdir: Path) -> None:
        assert _redis("SET", "fx:alpha", "value set before the dump") == b"+OK"
        assert _redis("SET", "fx:counter", "41") == b"+OK"

    with dumped_program("redis", 46000, ["/usr/bin/redis-server", "--port", str(REDIS_PORT), "--bind", HOST,
                                         "--save", "", "--appendonly", "no", "--daemonize", "no"],
                        ready=lambda _workdir: _listening(REDIS_PORT) and _redis("PING") == b"+PONG",
                        prepare=prepare) as dumped:
        yield dumped


def test_redis_keeps_its_keys(redis: Dumped) -> None:
    with restored(redis) as result:
        assert result.returncode == 0, result.stderr
        assert _redis("GET", "fx:alpha") == b"value set before the dump"
        assert _redis("INCR", "fx:counter") == b":42"
        info = _redis("INFO", "server").decode()
        assert f"process_id:{redis.pids[0]}" in info
        assert _redis("SET", "fx:new", "x") == b"+OK" and _redis("GET", "fx:new") == b"x"


# --- lighttpd ---------------------------------------------------------------------------

LIGHTTPD_PORT = 46080
PAGES_BEFORE_DUMP = 20
STATS_PERIOD_S = 1.2


def _http_get(port: int, path: str) -> str:
    with _connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def _lighttpd_requests() -> int:
    status = _http_get(LIGHTTPD_PORT, "/server-status?auto")
    match = re.search(r"^Total Accesses: (\d+)$", status, re.M)
    assert match, status
    return int(match.group(1))


@pytest.fixture(scope="module")
def lighttpd() -> Dumped:
    require_program("/usr/sbin/lighttpd")

    def setup(workdir: Path) -> None:
        (workdir / "www").mkdir()
        (workdir / "www" / "index.html").write_text("hello from lighttpd\n")
        (workdir / "lighttpd.conf").write_text(
            f'server.document-root = "{workdir}/www"\n'
            f'server.port = {LIGHTTPD_PORT}\n'
            f'server.bind = "{HOST}"\n'
            f'server.errorlog = "{workdir}/error.log"\n'
            'server.modules = ("mod_status")\n'
            'status.status-url = "/server-status"\n'
            'server.event-handler = "linux-sysepoll"\n'
            'index-file.names = ("index.html")\n')

    def prepare(_workdir: Path) -> None:
        for _ in range(PAGES_BEFORE_DUMP):
            assert "hello from lighttpd" in _http_get(LIGHTTPD_PORT, "/")
        time.sleep(STATS_PERIOD_S)  # mod_status counts once a second: let it see them
        assert _lighttpd_requests() >= PAGES_BEFORE_DUMP

    with dumped_program("lighttpd", 46100, ["/usr/sbin/lighttpd", "-D", "-f", "lighttpd.conf"],
                        ready=lambda _workdir: _listening(LIGHTTPD_PORT), setup=setup, prepare=prepare) as dumped:
        yield dumped


def test_lighttpd_counts_on_from_before_the_dump(lighttpd: Dumped) -> None:
    with restored(lighttpd) as result:
        assert result.returncode == 0, result.stderr
        assert "hello from lighttpd" in _http_get(LIGHTTPD_PORT, "/")
        time.sleep(STATS_PERIOD_S)
        # 20 pages before the dump, 1 since: the counter's memory came back (a fresh
        # lighttpd would say 1 or 2).
        assert _lighttpd_requests() >= PAGES_BEFORE_DUMP + 1


# --- socat ------------------------------------------------------------------------------

SOCAT_PORT = 46200


def _exchange(sock: socket.socket, line: bytes) -> bytes:
    """Send ``line``, close our side, and read the whole answer (socat's SYSTEM child)."""
    with sock:
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _socat_reply(line: bytes) -> bytes:
    return _exchange(_connect(SOCAT_PORT), line)


@pytest.fixture(scope="module")
def socat() -> Dumped:
    require_program("/usr/bin/socat")
    with dumped_program("socat", 46300, ["/usr/bin/socat", f"TCP-LISTEN:{SOCAT_PORT},bind={HOST},reuseaddr,fork",
                                         "SYSTEM:tr a-z A-Z"],
                        ready=lambda _workdir: _listening(SOCAT_PORT)) as dumped:
        yield dumped


def test_socat_serves_after_restore(socat: Dumped) -> None:
    with restored(socat) as result:
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 5
        while True:
            try:
                assert _socat_reply(b"restored socat\n") == b"RESTORED SOCAT\n"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# --- dtach -----------------------------------------------------------------------------

def _got(log: Path) -> list[tuple[int, str]]:
    if not log.exists():                     # the shell writes it at its first line
        return []
    return [(int(n), word) for n, word in re.findall(r"^got (\d+) (\S+)$", log.read_text(), re.M)]


def _push(sock: Path, line: str) -> None:
    """dtach -p: copy stdin through the named socket to dtach, which writes it to the pty."""
    subprocess.run(["/usr/bin/dtach", "-p", str(sock)], input=line.encode(), check=True, timeout=20)


@pytest.fixture(scope="module")
def dtach() -> Dumped:
    """dtach(1) holds a pty master and a named listening unix socket; its child shell is a
    session leader reading its controlling terminal (the pty slave) and counting lines.
    (tmux cannot be dumped by CRIU 4.2, "ctty inheritance detected"; script(1) ends itself
    when the poll() CRIU interrupted returns EINTR, after CRIU's restore as after ours.)"""
    require_program("/usr/bin/dtach")

    def prepare(workdir: Path) -> None:
        _push(workdir / "sock", "before\n")
        wait_for("the shell to count the line", lambda: _got(workdir / "log") == [(1, "before")])

    with dumped_program("dtach", 46400,
                        ["/usr/bin/dtach", "-N", "sock", "-z", "/bin/sh", "-c",
                         'n=0; while read line; do n=$((n+1)); echo "got $n $line" >> log; done'],
                        ready=lambda workdir: (workdir / "sock").exists(), prepare=prepare) as dumped:
        yield dumped


def test_dtach_passes_lines_through_its_socket_and_pty(dtach: Dumped) -> None:
    log, sock = dtach.workdir / "log", dtach.workdir / "sock"
    with restored(dtach) as result:
        assert result.returncode == 0, result.stderr
        assert sock.exists()
        _push(sock, "after\n")   # the listening socket accepts, dtach writes the pty master
        # The shell reads it from its terminal and counts on from its memory: 2, not 1.
        wait_for("the restored shell to count the line", lambda: _got(log) == [(1, "before"), (2, "after")])


# --- socat on a named unix socket -----------------------------------------------------

def _unix_reply(path: Path, line: bytes) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return _exchange(sock, line)


@pytest.fixture(scope="module")
def socat_unix() -> Dumped:
    """socat listening on a named unix socket (relative name, mode 0640), a child per client."""
    require_program("/usr/bin/socat")
    with dumped_program("socat-unix", 46600, ["/usr/bin/socat", "UNIX-LISTEN:sock,fork,mode=640",
                                              "SYSTEM:tr a-z A-Z"],
                        ready=lambda workdir: (workdir / "sock").exists()) as dumped:
        yield dumped


def test_socat_unix_listener_comes_back_at_its_path(socat_unix: Dumped) -> None:
    path = socat_unix.workdir / "sock"
    path.unlink()                      # the restore binds it again, as CRIU does
    with restored(socat_unix) as result:
        assert result.returncode == 0, result.stderr
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o640, oct(mode)
        assert _unix_reply(path, b"restored over unix\n") == b"RESTORED OVER UNIX\n"


# --- nginx ------------------------------------------------------------------------------

NGINX_PID = 46700
NGINX_PORT = 46780


def _nginx_requests() -> int:
    """stub_status's third counter, ``requests`` (this request included)."""
    status = _http_get(NGINX_PORT, "/status")
    match = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", status, re.M)
    assert match, status
    return int(match.group(3))


def _shared_zone_inodes(pids: list[int]) -> set[int]:
    """The inodes of the ``/dev/zero (deleted)`` mappings (anonymous shared memory) of
    ``pids``, through /proc/PID/map_files (one region for all: one inode)."""
    inodes = set()
    for pid in pids:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("/dev/zero (deleted)"):
                    inodes.add(os.stat(f"/proc/{pid}/map_files/{line.split()[0]}").st_ino)
    return inodes


@pytest.fixture(scope="module")
def nginx() -> Dumped:
    """nginx-light: a master and 2 workers (root: CRIU's dump reads rlimits, which needs
    CAP_SYS_RESOURCE for another uid, and root lacks it here), epoll, a listening socket,
    socketpairs the master owns (F_SETOWN), counters in a shared anonymous zone."""
    require_program("/usr/sbin/nginx")
    before: dict[str, int] = {}

    def setup(workdir: Path) -> None:
        (workdir / "tmp").mkdir()
        (workdir / "nginx.conf").write_text(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root root;\n"
            f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\n"
            "events { worker_connections 64; }\n"
            "http {\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {workdir}/tmp/{kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  server {{\n    listen {HOST}:{NGINX_PORT};\n"
            '    location / { return 200 "hello from nginx\\n"; }\n'
            "    location /status { stub_status; }\n  }\n}\n")

    def prepare(_workdir: Path) -> None:
        for _ in range(5):
            assert "hello from nginx" in _http_get(NGINX_PORT, "/")
        before["requests"] = _nginx_requests()

    with dumped_program("nginx", NGINX_PID, ["/usr/sbin/nginx", "-e", "stderr", "-c", "nginx.conf", "-p", "."],
                        ready=lambda _workdir: len(tree_pids(NGINX_PID)) == 3 and _listening(NGINX_PORT),
                        setup=setup, prepare=prepare) as dumped:
        yield dataclasses.replace(dumped, notes=before)


def test_nginx_counts_on_in_its_shared_zone(nginx: Dumped) -> None:
    with restored(nginx) as result:
        assert result.returncode == 0, result.stderr
        assert len(tree_pids(NGINX_PID)) == 3
        for _ in range(6):
            assert "hello from nginx" in _http_get(NGINX_PORT, "/")
        # The counter lives in the shared zone; 6 pages and this status request since.
        assert _nginx_requests() == nginx.notes["requests"] + 7
        assert len(_shared_zone_inodes(tree_pids(NGINX_PID))) == 1


# --- the image layer on these checkpoints -----------------------------------------------

@pytest.mark.parametrize("program", ["redis", "lighttpd", "socat", "dtach", "nginx", "socat_unix"])
def test_every_image_survives_show_and_encode(program: str, request: pytest.FixtureRequest) -> None:
    """``pycrestore show`` then ``encode`` gives back each image file byte for byte (the
    JSON is crit's shape: tests/test_cli.py compares it with crit's on the fixture packs)."""
    dumped: Dumped = request.getfixturevalue(program)
    checked = 0
    for path in sorted(dumped.images.iterdir()):
        if path.name.startswith("pages-") or path.name.endswith(".log"):
            continue                                   # raw page data, and CRIU's own log
        as_json = json.loads(json.dumps(image_to_dict(load_image(path))))
        assert dump_image(dict_to_image(as_json, source=path.name)) == path.read_bytes(), path.name
        checked += 1
    assert checked >= 10, f"only {checked} image files in {dumped.images}"
