"""The hourly rolling log: finished hours renamed ``<file>.YYYY-MM-DD-HH``, the newest 24 kept,
and plugins that roll at the same moment lose no line and fail no command."""

from __future__ import annotations

import errno
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


def test_an_empty_file_of_a_finished_hour_is_not_rolled(tmp_path):
    # An empty file holds no hour: rolling it would only leave an empty finished hour.
    path = tmp_path / "plugin.log"
    path.write_text("")
    age(path, 3)
    Log(str(path)).info("first")
    assert rolled(tmp_path) == []
    assert read(path).endswith("first\n") and read(path).count("\n") == 1


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0)
    os.umask(before)
    yield set_umask
    os.umask(before)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077], ids=["umask-000", "umask-022", "umask-077"])
def test_the_log_is_created_readable_by_all_and_written_by_its_owner(tmp_path, umask, mask):
    # 0644 less the umask, as the Go plugin's log; also the new current file after a roll.
    umask(mask)
    path = tmp_path / "plugin.log"
    Log(str(path)).info("one")
    assert os.stat(path).st_mode & 0o7777 == 0o644 & ~mask
    age(path, 2)
    Log(str(path)).info("two")
    assert len(rolled(tmp_path)) == 1 and read(path).endswith("two\n")
    assert os.stat(path).st_mode & 0o7777 == 0o644 & ~mask


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


@pytest.mark.parametrize(
    "where, calls",
    [
        ("directory", [("open", errno.EISDIR)]),
        ("missing-directory", [("open", errno.ENOENT)]),
        # Opened, then refused by its fstat before any write: a device is no log file.
        ("device", [("open", None)]),
    ],
)
def test_a_log_that_cannot_be_written_is_skipped(tmp_path, monkeypatch, where, calls):
    target = {"directory": tmp_path, "missing-directory": tmp_path / "missing" / "x.log", "device": "/dev/full"}[where]
    seen = []
    for name in ("open", "write"):
        real = getattr(os, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            try:
                answer = _real(*args, **kwargs)
            except OSError as error:
                seen.append((_name, error.errno))
                raise
            seen.append((_name, None))
            return answer

        monkeypatch.setattr(log_module.os, name, recording)
    before = sorted(os.listdir(tmp_path))
    assert Log(str(target)).info("lost") is None  # the log was tried, and its failure swallowed
    assert seen == calls
    assert sorted(os.listdir(tmp_path)) == before


# Writes numbered lines through ecs_ipam.log, one batch per round read on stdin, as fast
# as it can; says on stdout when a round's batch is written.
_WRITER = """
import sys
from ecs_ipam.log import Log
log = Log(sys.argv[1])
writer, per_round = sys.argv[2], int(sys.argv[3])
for round_ in iter(sys.stdin.readline, ""):
    round_ = round_.strip()
    for i in range(per_round):
        log.info(f"line {writer}-{round_}-{i}")
    print(round_, flush=True)
"""


def all_lines(directory) -> list[str]:
    lines = []
    for name in os.listdir(directory):
        if name.startswith("plugin.log"):
            lines += read(directory / name).splitlines()
    return lines


def write_in_rounds(directory, writers: int, per_round: int, days: list[int]) -> dict[str, list[str]]:
    """Run *writers* writer processes in rounds, the log made *days* old before each round
    after the first; return what each file should hold, as ``writer-round-line`` numbers."""
    path = directory / "plugin.log"
    path.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(n), str(per_round)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    expected: dict[str, list[str]] = {}
    pending: list[str] = []
    aged: dict[int, float] = {}
    try:
        for round_, day in enumerate([0, *days]):
            if day:
                # A day seen before gets the same time back, so its name is the same.
                then = aged.setdefault(day, time.time() - 24 * day * HOUR)
                os.utime(path, (then, then))
                name = f"plugin.log.{hour_name(then)}"
                if name not in expected:
                    expected[name], pending = pending, []
            for proc in procs:
                proc.stdin.write(f"{round_}\n")
                proc.stdin.flush()
            assert [proc.stdout.readline().strip() for proc in procs] == [str(round_)] * writers
            pending += [f"{n}-{round_}-{i}" for n in range(writers) for i in range(per_round)]
    finally:
        for proc in procs:
            proc.stdin.close()
    assert [(proc.wait(timeout=60), proc.stderr.read()) for proc in procs] == [(0, "")] * writers
    return {**expected, "plugin.log": pending}


def test_concurrent_writers_rolling_again_and_again_lose_no_line(tmp_path):
    # Rounds: between two rounds the writers are idle and the current file is made to look
    # days old, so every writer's first line of the next round finds a finished hour, at
    # about the same moment as the others. Which writer rolls, and when the others write,
    # is up to the scheduler; what the files hold is not: each finished hour holds exactly
    # the lines written before its roll, the current file the lines after the last one.
    # One round re-uses a day that was rolled already, so that roll is refused (link never
    # replaces a name) and the file carries on, to be rolled by the next round.
    days = [1, 2, 3, 4, 2, 5, 6, 7, 8, 9]  # fewer names than KEEP: nothing is pruned
    for attempt in ("first", "second"):
        directory = tmp_path / attempt
        directory.mkdir()
        started = hour_name(time.time())
        expected = write_in_rounds(directory, writers=6, per_round=40, days=days)
        # The real clock passing an hour mid-run rolls the current file once more, as it
        # should; a run takes seconds, so the second one cannot meet another hour.
        if hour_name(time.time()) == started:
            break
    assert len(expected) == len(set(days)) + 1 < KEEP + 1
    assert sorted(os.listdir(directory)) == sorted(expected)
    for name, lines in expected.items():
        assert sorted(line.rsplit(" ", 1)[1] for line in read(directory / name).splitlines()) == sorted(lines), name


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
