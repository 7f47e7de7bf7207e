"""The pycrestore command line on the real fixture pack: show, encode, info, and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import FIXTURES, FIXTURES_MORE, FIXTURES_MORE_REASON, skip_module_without_fixtures
from pycriu_restore.cli import main

skip_module_without_fixtures(FIXTURES)  # before the pack is read below

DECODED = sorted(FIXTURES.glob("decoded/*/*.json"))
WORKLOADS = sorted(p.name for p in (FIXTURES / "images").iterdir())
# The Intel-dumped pack: epoll, timerfd, signalfd, inotify, TCP streams, ptys, zombies...
DECODED_MORE = sorted(FIXTURES_MORE.glob("decoded/*/*.json"))
WORKLOADS_MORE = sorted(p.name for p in (FIXTURES_MORE / "images").iterdir()) if FIXTURES_MORE.is_dir() else []
PACKS = [
    pytest.param(DECODED, id="criu-4.2"),
    pytest.param(DECODED_MORE, id="criu-4.2-more",
                 marks=pytest.mark.skipif(not FIXTURES_MORE.is_dir(), reason=FIXTURES_MORE_REASON)),
]


def _image_for(json_path):
    name = json_path.stem if json_path.stem == "stats-dump" else json_path.stem + ".img"
    return json_path.parent.parent.parent / "images" / json_path.parent.name / name


def test_fixture_pack_is_complete():
    assert len(DECODED) >= 100 and len(WORKLOADS) == 8


@pytest.mark.skipif(not FIXTURES_MORE.is_dir(), reason=FIXTURES_MORE_REASON)
def test_more_fixture_pack_is_complete():
    assert len(DECODED_MORE) >= 150 and len(WORKLOADS_MORE) == 9
    # The kinds this pack exists for are there to be compared.
    names = {p.name for p in DECODED_MORE}
    assert {"tcp-stream-3612e.json", "tty-info.json", "sk-queues.json"} <= names


@pytest.mark.parametrize("decoded", PACKS)
def test_show_equals_crit_for_every_decoded_file(decoded):
    runner = CliRunner()
    for json_path in decoded:
        result = runner.invoke(main, ["show", str(_image_for(json_path))])
        assert result.exit_code == 0, (json_path, result.output)
        assert json.loads(result.output) == json.loads(json_path.read_text()), json_path
        # crit prints with indent=4: the text is the same too, not only the data.
        assert result.output.rstrip("\n") == json_path.read_text().rstrip("\n"), json_path


@pytest.mark.parametrize("decoded", PACKS)
def test_encode_gives_back_the_image_byte_for_byte(tmp_path, decoded):
    runner = CliRunner()
    for json_path in decoded:
        out = tmp_path / "out.img"
        result = runner.invoke(main, ["encode", "-i", str(json_path), "-o", str(out)])
        assert result.exit_code == 0, (json_path, result.output)
        assert out.read_bytes() == _image_for(json_path).read_bytes(), json_path


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("section", ["ps", "fds", "mems"])
def test_info_sections_equal_crit_x(workload, section):
    result = CliRunner().invoke(main, ["info", str(FIXTURES / "images" / workload), "--section", section])
    assert result.exit_code == 0, result.output
    assert result.output == (FIXTURES / "decoded" / workload / f"crit-x-{section}.txt").read_text()


# crit x fds / mems fail on the zombie workload (a zombie has no mm or ids image): its
# crit-x-*.txt hold crit's traceback, nothing to compare with.
MORE_INFO = [(w, s) for w in WORKLOADS_MORE for s in ("ps", "fds", "mems")
             if not (w == "zombie" and s != "ps")]


@pytest.mark.skipif(not FIXTURES_MORE.is_dir(), reason=FIXTURES_MORE_REASON)
@pytest.mark.parametrize("workload, section", MORE_INFO)
def test_info_sections_equal_crit_x_more(workload, section):
    result = CliRunner().invoke(main, ["info", str(FIXTURES_MORE / "images" / workload), "--section", section])
    assert result.exit_code == 0, result.output
    assert result.output == (FIXTURES_MORE / "decoded" / workload / f"crit-x-{section}.txt").read_text()


def test_info_overview_counts_threads_and_pages():
    result = CliRunner().invoke(main, ["info", str(FIXTURES / "images" / "threads")])
    assert result.exit_code == 0, result.output
    assert "task 31200 (threads): 5 thread(s) [31200, 31201, 31202, 31203, 31204]" in result.output
    assert "Process tree:" in result.output and "Memory:" in result.output


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pycriu_restore", *args], capture_output=True, text=True)


def test_truncated_image_is_one_line_exit_2_no_traceback(tmp_path):
    good = (FIXTURES / "images" / "counter" / "core-31100.img").read_bytes()
    bad = tmp_path / "core-31100.img"
    bad.write_bytes(good[:100])
    result = _run_cli("show", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and "offset" in lines[0]
    assert "Traceback" not in result.stderr
    verbose = _run_cli("-v", "show", str(bad))
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_directory_without_inventory_is_not_a_checkpoint(tmp_path):
    result = _run_cli("info", str(tmp_path))
    assert result.returncode == 2
    assert "inventory.img" in result.stderr and "Traceback" not in result.stderr


def test_encode_rejects_bad_json(tmp_path):
    src = tmp_path / "x.json"
    src.write_text("{not json")
    result = _run_cli("encode", "-i", str(src), "-o", str(tmp_path / "x.img"))
    assert result.returncode == 1 and "not JSON" in result.stderr


def test_every_command_has_help():
    runner = CliRunner()
    for cmd in ([], ["show"], ["encode"], ["info"]):
        result = runner.invoke(main, [*cmd, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
