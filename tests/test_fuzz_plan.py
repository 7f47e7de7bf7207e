"""Fuzz: structured mutations of real checkpoints through the whole plan (issue 11).

Hypothesis draws a few mutations (tests/fuzz_mutations.py: fields of pstree, core, mm,
pagemap, fdinfo, files, ids, fs, pipes-data records; dropped or duplicated records;
deleted, truncated, swapped files; grown or cut pages images) of the criu-4.2 counter and
pipes images and builds the plan. It must either succeed or raise a PycrestoreError (one
line, naming an image): never another exception, and never take more than a few seconds.
The long run, and the sample through real restores, are tools/fuzz_restore.py.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, needs_fixtures
from fuzz_mutations import KINDS, Op, apply, copy_fixture
from pycriu_restore.errors import PycrestoreError
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan

pytestmark = needs_fixtures

N_CASES = int(os.environ.get("PYCRESTORE_FUZZ_CASES", "300"))

ops = st.lists(st.builds(Op, kind=st.sampled_from(KINDS), file=st.integers(0, 1 << 16),
                         record=st.integers(0, 1 << 16), field=st.integers(0, 1 << 16),
                         value=st.integers(0, 1 << 16), raw=st.integers(0, 1 << 32)), min_size=1, max_size=3)


@settings(max_examples=N_CASES, deadline=5000, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
@given(fixture=st.sampled_from(["counter", "pipes"]), mutations=ops)
def test_mutated_checkpoint_plans_or_says_why(tmp_path_factory, fixture: str, mutations: list[Op]) -> None:
    d = copy_fixture(FIXTURES / "images" / fixture, tmp_path_factory.getbasetemp() / f"fuzz-{fixture}")
    done = apply(d, mutations)
    try:
        build_plan(ImageSet.open(d))
    except PycrestoreError as err:
        assert "\n" not in str(err), (done, str(err))
        assert err.exit_code in (2, 3), (done, str(err))
