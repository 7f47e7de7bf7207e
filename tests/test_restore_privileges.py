"""restore/privileges.py: what the images ask for must be ours to give; refused before any fork."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, needs_fixtures_more
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
from pycriu_restore.restore.errors import EnvironmentMismatch, MissingPrivilege
from pycriu_restore.restore.privileges import CAP_NAMES, OwnPrivileges, check_privileges

pytestmark = needs_fixtures_more

CAPABILITY_H = Path("/usr/include/linux/capability.h")
CAP_SYS_RESOURCE = 24
# Root on the machines of this project: every capability of 6.18 but CAP_SYS_RESOURCE.
ROOT_HERE = OwnPrivileges(cap_prm=0x1FFFEFFFFFF, cap_eff=0x1FFFEFFFFFF, cap_bnd=0x1FFFEFFFFFF,
                          no_new_privs=False, seccomp_mode=0, cap_last_cap=40)


def _plan(name: str):
    return build_plan(ImageSet.open(FIXTURES_MORE / "images" / name))


def _with_creds(plan, **changes):
    task = plan.root
    thread = dataclasses.replace(task.main_thread, creds=dataclasses.replace(task.main_thread.creds, **changes))
    return dataclasses.replace(plan, tasks=(dataclasses.replace(task, threads=(thread,)),))


def test_cap_names_are_the_kernels():
    defined = dict(re.findall(r"^#define\s+(CAP_[A-Z_]+)\s+(\d+)\s*$", CAPABILITY_H.read_text(), re.M))
    for number, name in enumerate(CAP_NAMES):
        assert int(defined[name]) == number, name


def test_fixtures_ask_for_nothing_we_lack():
    for name in ("creds", "posixtimer"):
        check_privileges(_plan(name), ROOT_HERE)


def test_a_capability_we_lack_is_refused_naming_it():
    plan = _with_creds(_plan("posixtimer"), cap_bnd=0x1FFFFFFFFFF)  # CAP_SYS_RESOURCE too
    with pytest.raises(MissingPrivilege, match=r"core-40400.img: thread_core.creds.cap_bnd 0x1ffffffffff needs "
                                               r"CAP_SYS_RESOURCE, which pycrestore does not have") as err:
        check_privileges(plan, ROOT_HERE)
    assert isinstance(err.value, EnvironmentMismatch) and err.value.exit_code == 4


def test_capability_past_the_kernels_last_is_refused():
    plan = _with_creds(_plan("creds"), cap_prm=1 << 41)
    with pytest.raises(MissingPrivilege, match=r"cap_prm 0x20000000000 has capability 41, past this kernel's last capability 40"):
        check_privileges(plan, ROOT_HERE)


def test_restorer_without_setuid_or_with_nnp_is_refused():
    plan = _plan("posixtimer")
    with pytest.raises(MissingPrivilege, match=r"lacks CAP_SETUID"):
        check_privileges(plan, dataclasses.replace(ROOT_HERE, cap_eff=ROOT_HERE.cap_eff & ~(1 << 7)))
    with pytest.raises(MissingPrivilege, match=r"no_new_privs is 0, but pycrestore runs with no_new_privs"):
        check_privileges(plan, dataclasses.replace(ROOT_HERE, no_new_privs=True))
    with pytest.raises(MissingPrivilege, match=r"runs under seccomp"):
        check_privileges(plan, dataclasses.replace(ROOT_HERE, seccomp_mode=2))


def test_own_privileges_are_read_from_proc():
    own = OwnPrivileges.read()
    assert own.cap_last_cap >= 40 and own.cap_eff & own.cap_bnd == own.cap_eff
