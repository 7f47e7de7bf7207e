"""images -> plan for credentials, seccomp, POSIX timers, personality and the late prctls.

Runs on the criu-4.2-more fixtures (creds: dropped privileges; posixtimer: a timer and a
seccomp filter) and on tampered copies of them; no root needed.
"""

from __future__ import annotations

import shutil

import pytest

from conftest import FIXTURES_MORE, needs_fixtures_more
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.plan.model import Creds

pytestmark = needs_fixtures_more

IMAGES = FIXTURES_MORE / "images"
CREDS_PID, TIMER_PID = 40200, 40400
CAP_NET_BIND_SERVICE = 1 << 10


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(IMAGES / name, dst)
    return dst


def _edit(path, change):
    image = load_image(path)
    change(image.entries)
    path.write_bytes(dump_image(image))


def test_creds_are_read_from_thread_core():
    task = build_plan(ImageSet.open(IMAGES / "creds")).root
    assert task.main_thread.creds == Creds(
        uid=0, euid=0, suid=0, fsuid=1000, gid=0, egid=0, sgid=0, fsgid=1000, groups=(100, 1000),
        cap_inh=0, cap_prm=CAP_NET_BIND_SERVICE, cap_eff=CAP_NET_BIND_SERVICE,
        cap_bnd=CAP_NET_BIND_SERVICE, cap_amb=0, secbits=0xF, no_new_privs=True)
    assert task.main_thread.seccomp_mode == 0 and task.main_thread.seccomp_filters == ()
    assert (task.personality, task.child_subreaper, task.posix_timers) == (0, False, ())


def test_posix_timer_and_seccomp_chain():
    task = build_plan(ImageSet.open(IMAGES / "posixtimer")).root
    (timer,) = task.posix_timers
    assert (timer.timer_id, timer.clock_id, timer.signo, timer.notify, timer.sival) == (0, 1, 34, 0, 0x7157)
    assert (timer.interval_sec, timer.interval_nsec) == (0, 20_000_000)
    assert timer.value_nsec == 12333149 and timer.overrun == 0
    thread = task.main_thread
    assert thread.seccomp_mode == 2
    (prog,) = thread.seccomp_filters
    assert (prog.index, prog.nr_insns, prog.flags) == (0, 7, 1)  # TSYNC, added by CRIU's dump
    # Root, every capability but CAP_SYS_RESOURCE (24): the dump machine's root.
    assert thread.creds.cap_bnd == 0x1FFFEFFFFFF and not thread.creds.no_new_privs


def test_seccomp_chain_is_followed_from_the_root_and_loops_are_refused(tmp_path):
    d = _copy(tmp_path, "posixtimer")

    def three(entries):
        (entry,) = entries
        first = entry.seccomp_filters[0]
        # Written as CRIU does: the thread's index names the first filter installed; each
        # one's prev names the next.
        second, third = entry.seccomp_filters.add(), entry.seccomp_filters.add()
        second.CopyFrom(first)
        third.CopyFrom(first)
        first.prev, second.prev = 2, 2
        third.prev = 1
    _edit(d / "seccomp.img", three)
    _edit(d / f"core-{TIMER_PID}.img", lambda e: setattr(e[0].thread_core, "seccomp_filter", 0))
    # 0 -> 2 -> 1 -> 2: a loop.
    with pytest.raises(InconsistentImages, match=r"seccomp.img: .*loops back to filter 2"):
        build_plan(ImageSet.open(d))

    def unloop(entries):
        entries[0].seccomp_filters[1].ClearField("prev")
    _edit(d / "seccomp.img", unloop)
    chain = build_plan(ImageSet.open(d)).root.main_thread.seccomp_filters
    assert [f.index for f in chain] == [0, 2, 1]


def test_missing_seccomp_image_is_named(tmp_path):
    d = _copy(tmp_path, "posixtimer")
    (d / "seccomp.img").unlink()
    with pytest.raises(InconsistentImages, match=r"seccomp.img: missing, but core-40400.img has thread_core.seccomp_mode filter"):
        build_plan(ImageSet.open(d))


def test_oversized_bpf_program_is_refused(tmp_path):
    d = _copy(tmp_path, "posixtimer")

    def grow(entries):
        prog = entries[0].seccomp_filters[0]
        prog.filter = bytes(prog.filter) + bytes(8 * 4096)  # 4103 instructions
    _edit(d / "seccomp.img", grow)
    with pytest.raises(InconsistentImages, match=r"seccomp.img: filter 0: 32824 bytes, expected 1 to 4096"):
        build_plan(ImageSet.open(d))


def test_unknown_seccomp_flag_is_unsupported(tmp_path):
    d = _copy(tmp_path, "posixtimer")
    _edit(d / "seccomp.img", lambda e: setattr(e[0].seccomp_filters[0], "flags", 8))  # NEW_LISTENER
    with pytest.raises(UnsupportedFeature, match=r"seccomp.img: unsupported: filter 0: flags 0x8"):
        build_plan(ImageSet.open(d))


def test_too_many_groups_are_inconsistent(tmp_path):
    d = _copy(tmp_path, "creds")
    _edit(d / f"core-{CREDS_PID}.img", lambda e: e[0].thread_core.creds.groups.extend(range(65536)))
    with pytest.raises(InconsistentImages, match=r"core-40200.img: thread_core.creds.groups has 65538 groups"):
        build_plan(ImageSet.open(d))


@pytest.mark.parametrize("field", ["lsm_profile", "lsm_sockcreate"])
def test_lsm_labels_are_refused_naming_the_field(tmp_path, field):
    d = _copy(tmp_path, "creds")
    _edit(d / f"core-{CREDS_PID}.img", lambda e: setattr(e[0].thread_core.creds, field, "unconfined_t"))
    with pytest.raises(UnsupportedFeature, match=rf"core-40200.img: unsupported: thread_core.creds.{field}"):
        build_plan(ImageSet.open(d))
    assert UnsupportedFeature.exit_code == 3


def test_legacy_creds_image_is_refused(tmp_path):
    d = _copy(tmp_path, "creds")
    _edit(d / f"core-{CREDS_PID}.img", lambda e: e[0].thread_core.ClearField("creds"))
    with pytest.raises(InconsistentImages, match=r"core-40200.img: thread_core.creds is missing"):
        build_plan(ImageSet.open(d))
    (d / f"creds-{CREDS_PID}.img").write_bytes(b"")
    with pytest.raises(UnsupportedFeature, match=r"creds-40200.img: unsupported: credentials in a separate"):
        build_plan(ImageSet.open(d))


def test_ambient_caps_with_a_raise_lock_are_refused(tmp_path):
    d = _copy(tmp_path, "creds")

    def amb(entries):
        creds = entries[0].thread_core.creds
        creds.cap_amb[:] = [CAP_NET_BIND_SERVICE, 0]
        creds.secbits |= 1 << 6  # SECBIT_NO_CAP_AMBIENT_RAISE
    _edit(d / f"core-{CREDS_PID}.img", amb)
    with pytest.raises(UnsupportedFeature, match=r"SECBIT_NO_CAP_AMBIENT_RAISE"):
        build_plan(ImageSet.open(d))


def test_bad_posix_timers_are_named(tmp_path):
    d = _copy(tmp_path, "posixtimer")
    core = d / f"core-{TIMER_PID}.img"

    def duplicate(entries):
        timers = entries[0].tc.timers.posix
        timers.add().CopyFrom(timers[0])
    _edit(core, duplicate)
    with pytest.raises(InconsistentImages, match=r"tc.timers.posix\[1\] \(timer id 0\): a second timer"):
        build_plan(ImageSet.open(d))

    def many(entries):
        timers = entries[0].tc.timers.posix
        for i in range(65536):
            timers.add().CopyFrom(timers[0])
    _edit(core, many)
    with pytest.raises(InconsistentImages, match=r"core-40400.img: tc.timers.posix has 65538 timers"):
        build_plan(ImageSet.open(d))

    def thread_id(entries):
        timers = entries[0].tc.timers.posix
        del timers[1:]
        timers[0].it_sigev_notify, timers[0].notify_thread_id = 4, 12345  # SIGEV_THREAD_ID
    _edit(core, thread_id)
    with pytest.raises(InconsistentImages, match=r"notifies thread 12345, which is not one of \[40400\]"):
        build_plan(ImageSet.open(d))


def test_zero_time_left_becomes_the_interval(tmp_path):
    """CRIU's prepare_posix_timers(): a timer about to fire is armed with its interval."""
    d = _copy(tmp_path, "posixtimer")

    def zero(entries):
        timer = entries[0].tc.timers.posix[0]
        timer.vsec = timer.vnsec = 0
    _edit(d / f"core-{TIMER_PID}.img", zero)
    (timer,) = build_plan(ImageSet.open(d)).root.posix_timers
    assert (timer.value_sec, timer.value_nsec) == (0, 20_000_000)


def test_pdeath_sig_personality_and_subreaper_are_read(tmp_path):
    d = _copy(tmp_path, "creds")

    def prctls(entries):
        entries[0].thread_core.pdeath_sig = 10
        entries[0].tc.personality = 0x0040000  # ADDR_NO_RANDOMIZE
        entries[0].tc.child_subreaper = True
    _edit(d / f"core-{CREDS_PID}.img", prctls)
    task = build_plan(ImageSet.open(d)).root
    assert (task.main_thread.pdeath_sig, task.personality, task.child_subreaper) == (10, 0x40000, True)
    _edit(d / f"core-{CREDS_PID}.img", lambda e: setattr(e[0].tc, "personality", 0xFFFFFFFF))
    with pytest.raises(InconsistentImages, match=r"tc.personality 0xffffffff cannot be set"):
        build_plan(ImageSet.open(d))


def test_constants_are_the_kernel_headers(tmp_path):
    """plan/build.py's bounds and values, and abi.h's, against the uapi headers."""
    import subprocess

    from pycriu_restore.blob import abi
    from pycriu_restore.plan import build

    facts = {
        "NGROUPS_MAX": build.NGROUPS_MAX, "BPF_MAXINSNS": build.BPF_MAXINSNS,
        "sizeof(struct sock_filter)": build.SOCK_FILTER_BYTES,
        "_LINUX_CAPABILITY_U32S_3": build.CAP_WORDS,
        "SECBIT_NO_CAP_AMBIENT_RAISE": build.SECBIT_NO_CAP_AMBIENT_RAISE,
        "SECCOMP_MODE_STRICT": build.SECCOMP_MODE_STRICT, "SECCOMP_MODE_FILTER": build.SECCOMP_MODE_FILTER,
        "SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW":
            build.SECCOMP_RESTORABLE_FLAGS,
        "SIGEV_SIGNAL": build.SIGEV_SIGNAL, "SIGEV_NONE": build.SIGEV_NONE,
        "SIGEV_THREAD_ID": build.SIGEV_THREAD_ID, "__SIGRTMAX": build.SIGRTMAX,
        "sizeof(struct sigevent)": abi.BLOB_SIGEVENT_BYTES,
    }
    src = tmp_path / "facts.c"
    src.write_text("#include <stdio.h>\n#include <linux/limits.h>\n#include <linux/filter.h>\n"
                   "#include <linux/capability.h>\n#include <linux/securebits.h>\n#include <linux/seccomp.h>\n"
                   "#include <signal.h>\n"
                   "int main(void) {\n"
                   + "".join(f'    printf("%lld\\n", (long long)({expr}));\n' for expr in facts)
                   + "    return 0;\n}\n")
    exe = tmp_path / "facts"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True, text=True)
    values = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    assert dict(zip(facts, values)) == facts
    assert (abi.BLOB_MAX_GROUPS, abi.BLOB_MAX_BPF_INSNS, abi.BLOB_BPF_INSN_BYTES, abi.BLOB_CAP_WORDS) == (
        build.NGROUPS_MAX, build.BPF_MAXINSNS, build.SOCK_FILTER_BYTES, build.CAP_WORDS)
