"""The hourly rolling log: finished hours renamed ``<file>.YYYY-MM-DD-HH``, the newest 24 kept,
and plugins that roll at the same moment lose no line and fail no command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pytest

from ecs_ipam import log as log_module
from ecs_ipam.log import KEEP, Log
from tests.plugin import ROOT, finish_all, netconf, start_together

HOUR = 3600


def hour_name(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d-%H", time.gmtime(timestamp))


def age(path, hours: float) -> float:
    """Make *path* look last written *hours* ago; return that time."""
    then = time.time() - hours * HOUR
    os.utime(path, (then, then))
    return then


def read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def rolled(directory, base: str = "plugin.log") -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(base + "."))


def test_lines_of_one_hour_stay_in_the_current_file(tmp_path):
    path = tmp_path / "plugin.log"
    log = Log(str(path))
    log.info("one")
    log.error("two")
    lines = read(path).splitlines()
    assert [line.split("] ", 1)[0].split(" ")[1] for line in lines] == ["[info", "[error"]
    assert lines[0].endswith(f"pid={os.getpid()} one") and lines[1].endswith("two")
    assert rolled(tmp_path) == []


def test_a_line_in_a_later_hour_rolls_the_finished_hour(tmp_path):
    path = tmp_path / "plugin.log"
    Log(str(path)).info("one")
    then = age(path, 3)
    Log(str(path)).info("two")
    assert rolled(tmp_path) == [f"plugin.log.{hour_name(then)}"]
    assert read(tmp_path / f"plugin.log.{hour_name(then)}").endswith("one\n")
    assert read(path).endswith("two\n") and read(path).count("\n") == 1


def test_an_hour_already_rolled_is_never_replaced(tmp_path):
    path = tmp_path / "plugin.log"
    Log(str(path)).info("late")
    then = age(path, 2)
    (tmp_path / f"plugin.log.{hour_name(then)}").write_text("earlier\n")
    Log(str(path)).info("now")
    # The clock went back, say: the current file goes on, to be rolled under a later hour.
    assert read(tmp_path / f"plugin.log.{hour_name(then)}") == "earlier\n"
    lines = read(path).splitlines()
    assert lines[0].endswith("late") and lines[1].endswith("now") and len(lines) == 2


def test_a_file_system_without_hard_links_keeps_every_line_in_the_current_file(tmp_path, monkeypatch):
    # Some file systems (vfat, some network mounts) refuse link(): the file cannot roll,
    # and the lines must still be written.  No such file system can be mounted here, so
    # link() is made to fail as it does there.
    path = tmp_path / "plugin.log"
    Log(str(path)).info("one")
    age(path, 3)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(log_module.os, "link", refuse)
    Log(str(path)).info("two")
    Log(str(path)).error("three")
    assert rolled(tmp_path) == []
    lines = read(path).splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["one", "two", "three"]


def test_the_newest_24_finished_hours_are_kept(tmp_path):
    path = tmp_path / "plugin.log"
    start = time.time() - 40 * HOUR
    for i in range(30):
        (tmp_path / f"plugin.log.{hour_name(start + i * HOUR)}").write_text(f"{i}\n")
    (tmp_path / "plugin.log.bak").write_text("not ours\n")
    (tmp_path / "other.log.2020-01-01-00").write_text("not ours\n")
    Log(str(path)).info("one")
    then = age(path, 1)
    Log(str(path)).info("two")
    kept = rolled(tmp_path)
    assert "plugin.log.bak" in kept
    hours = [name for name in kept if name != "plugin.log.bak"]
    assert len(hours) == KEEP == 24
    assert hours[-1] == f"plugin.log.{hour_name(then)}"
    assert hours[0] == f"plugin.log.{hour_name(start + 7 * HOUR)}"
    assert (tmp_path / "other.log.2020-01-01-00").exists()


def test_deciding_costs_one_stat_per_line(tmp_path, monkeypatch):
    path = tmp_path / "plugin.log"
    Log(str(path)).info("one")
    calls = []
    for name in ("stat", "fstat", "lstat"):
        real = getattr(os, name)
        monkeypatch.setattr(
            log_module.os, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    Log(str(path)).info("two")
    assert calls == ["fstat"]


@pytest.mark.parametrize("where", ["directory", "missing-directory", "device"])
def test_a_log_that_cannot_be_written_is_skipped(tmp_path, where):
    target = {"directory": tmp_path, "missing-directory": tmp_path / "missing" / "x.log", "device": "/dev/full"}[where]
    Log(str(target)).info("lost")  # no exception


# Writes numbered lines through ecs_ipam.log as fast as it can.
_WRITER = """
import sys
from ecs_ipam.log import Log
log = Log(sys.argv[1])
for i in range(int(sys.argv[3])):
    log.info(f"line {sys.argv[2]}-{i}")
"""


def all_lines(directory) -> list[str]:
    lines = []
    for name in os.listdir(directory):
        if name.startswith("plugin.log"):
            lines += read(directory / name).splitlines()
    return lines


def test_concurrent_writers_rolling_again_and_again_lose_no_line(tmp_path):
    path = tmp_path / "plugin.log"
    path.write_text("")
    writers, per_writer = 6, 400
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(n), str(per_writer)], env=env, stderr=subprocess.PIPE
        )
        for n in range(writers)
    ]
    # Keep making the current file look an hour old, over and over, so that the writers
    # keep finding a finished hour at the same moment (and rolling into names that exist).
    hours = 0
    while any(proc.poll() is None for proc in procs):
        with contextlib.suppress(FileNotFoundError):
            age(path, 1 + hours % 5)
        hours += 1
        time.sleep(0.002)
    assert [(proc.wait(), proc.stderr.read()) for proc in procs] == [(0, b"")] * writers
    assert hours > 10
    lines = [line.rsplit(" ", 1)[1] for line in all_lines(tmp_path)]
    expected = [f"{n}-{i}" for n in range(writers) for i in range(per_writer)]
    assert sorted(lines) == sorted(expected)
    assert len(rolled(tmp_path)) >= 2


def test_plugins_that_roll_at_the_same_moment_all_succeed_and_log(tmp_path):
    path = tmp_path / "plugin.log"
    Log(str(path)).info("from the last hour")
    then = age(path, 1)
    db = tmp_path / "ipam.db"
    runs = [
        ("ADD", netconf(f"task-{i}", ipv4_subnet="10.0.0.0/24"), {"ECS_CNI_LOG_FILE": str(path)}) for i in range(16)
    ]
    results = finish_all(start_together(runs, db), timeout=120)
    assert [code for code, _, _ in results] == [0] * 16
    assert rolled(tmp_path) == [f"plugin.log.{hour_name(then)}"]
    assert read(tmp_path / f"plugin.log.{hour_name(then)}").splitlines()[0].endswith("from the last hour")
    added = [line for line in all_lines(tmp_path) if " ADD id='task-" in line]
    assert sorted(line.split("id='")[1].split("'")[0] for line in added) == sorted(f"task-{i}" for i in range(16))
