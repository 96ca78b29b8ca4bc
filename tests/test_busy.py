"""A database busy with another writer: writes wait at most IPAM_DB_CONNECTION_TIMEOUT.

Past the timeout a write fails with code 11 ("try again later") and changes nothing; once
the other writer is done it goes through.  Reads never wait for a writer.
"""

from __future__ import annotations

import time

import pytest

from plugin import (
    V4_SUBNET,
    PausedTransaction,
    PluginProcess,
    add_ok,
    check_records,
    files_snapshot,
    finish_all,
    netconf,
    result_ips,
    run_plugin,
    start_together,
)

# Interpreter start-up plus the command itself, on a busy two-core machine.
MARGIN = 1.5


@pytest.mark.parametrize(
    ("command", "timeout_text", "seconds"),
    [("ADD", "1s", 1.0), ("ADD", "700ms", 0.7), ("ADD", "0s", 0.0), ("DEL", "1s", 1.0)],
)
def test_write_gives_up_with_code_11_while_another_process_holds_the_lock(tmp_path, command, timeout_text, seconds):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    conf = netconf("task-1" if command == "DEL" else "task-2")
    with PausedTransaction(db_path, netconf("task-slow")) as writer:
        before = files_snapshot(tmp_path)
        started = time.monotonic()
        code, result, stderr = run_plugin(command, conf, {"IPAM_DB_CONNECTION_TIMEOUT": timeout_text}, db_path)
        elapsed = time.monotonic() - started
        assert code == 1 and stderr == ""
        assert result["code"] == 11
        assert result["msg"] == (f"database {db_path} is locked by another writer; gave up after {seconds:g}s")
        assert seconds <= elapsed < seconds + MARGIN
        assert files_snapshot(tmp_path) == before
        writer.commit()

    code, result, stderr = run_plugin(command, conf, {"IPAM_DB_CONNECTION_TIMEOUT": timeout_text}, db_path)
    assert code == 0, (result, stderr)
    holders = check_records(db_path)[V4_SUBNET]
    if command == "ADD":
        assert set(holders) == {"task-1", "task-slow", "task-2"}
        assert result_ips(result) != writer.claimed
    else:
        assert set(holders) == {"task-slow"}


def test_write_waits_for_a_writer_that_finishes_within_the_timeout(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    with PausedTransaction(db_path, netconf("task-slow")) as writer:
        waiting = PluginProcess("ADD", netconf("task-2"), db_path, {"IPAM_DB_CONNECTION_TIMEOUT": "10s"})
        time.sleep(1.0)
        assert waiting.proc.poll() is None
        writer.commit()
        code, result, stderr = waiting.finish(timeout=10)
    assert code == 0, (result, stderr)
    assert 1.0 <= waiting.ended - waiting.started < 1.0 + MARGIN
    # It saw the other writer's claim: the walk went on past it.
    assert result_ips(result) != writer.claimed
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-1", "task-slow", "task-2"}


def test_reads_do_not_wait_for_a_writer(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    result = add_ok(db_path, "task-1", cni_version="0.4.0")
    with PausedTransaction(db_path, netconf("task-slow")) as writer:
        started = time.monotonic()
        check = {**netconf("task-1", cni_version="0.4.0"), "prevResult": result}
        assert run_plugin("CHECK", check, {"IPAM_DB_CONNECTION_TIMEOUT": "30s"}, db_path) == (0, None, "")
        status = netconf(None, cni_version="1.1.0")
        assert run_plugin("STATUS", status, {"IPAM_DB_CONNECTION_TIMEOUT": "30s"}, db_path) == (0, None, "")
        # A reader sees what is committed, not what the writer is doing.
        code, result, _ = run_plugin("CHECK", netconf("task-slow", cni_version="0.4.0"), db_path=db_path)
        assert (code, result["code"]) == (1, 103)
        assert time.monotonic() - started < 3 * MARGIN
        writer.abort()
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-1"}


@pytest.mark.slow
def test_a_crowd_of_writers_times_out_together_then_drains(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-0")
    owners = [f"task-{n}" for n in range(1, 33)]
    with PausedTransaction(db_path, netconf("task-slow")) as writer:
        impatient = [("ADD", netconf(owner), {"IPAM_DB_CONNECTION_TIMEOUT": "2s"}) for owner in owners]
        plugins = start_together(impatient, db_path)
        for plugin, (code, result, stderr) in zip(plugins, finish_all(plugins, timeout=60)):
            assert (code, result["code"], stderr) == (1, 11, "")
            assert 2.0 <= plugin.ended - plugin.started < 2.0 + 2 * MARGIN
        patient = [("ADD", netconf(owner), {"IPAM_DB_CONNECTION_TIMEOUT": "30s"}) for owner in owners]
        plugins = start_together(patient, db_path)
        time.sleep(2.0)
        assert all(plugin.proc.poll() is None for plugin in plugins)
        writer.commit()
        outcomes = finish_all(plugins, timeout=60)
    assert [code for code, _, _ in outcomes] == [0] * len(owners)
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-0", "task-slow", *owners}
