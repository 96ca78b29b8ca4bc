"""Many plugins at once: each ADD gets its own address, and ADD/DEL churn leaves nothing behind.

A container runtime starts one plugin process per task and starts them concurrently; the
plugins only have the database to agree on who holds what.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from ecs_ipam.config import DEFAULT_TIMEOUT
from plugin import (
    ROOT,
    V4_SUBNET,
    V6_SUBNET,
    PluginProcess,
    check_records,
    finish_all,
    netconf,
    read_buckets,
    result_ips,
    start_together,
)

# Small pools, so that churning workers keep handing each other the same addresses.
CHURN_V4 = "10.77.0.0/28"  # 13 addresses besides the gateway
CHURN_V6 = "fd00:77::/124"  # 14 addresses besides the gateway


def launch_adds(db_path, count: int, timeout: float = DEFAULT_TIMEOUT) -> tuple[dict[str, str], dict[str, str]]:
    """Start *count* dual-stack ADDs at the same moment; check they all succeed in time.

    :param timeout: the plugins' IPAM_DB_CONNECTION_TIMEOUT, in seconds.
    :return: the v4 and v6 address reported to each id.
    """
    ids = [f"task-{n:03d}" for n in range(count)]
    env = {"IPAM_DB_CONNECTION_TIMEOUT": f"{timeout:g}s"}
    runs = [("ADD", netconf(owner, ipv6_subnet=V6_SUBNET), {**env, "CNI_CONTAINERID": f"c-{owner}"}) for owner in ids]
    plugins = start_together(runs, db_path)
    outcomes = finish_all(plugins, timeout=timeout + 60)
    v4, v6 = {}, {}
    for owner, plugin, (code, result, stderr) in zip(ids, plugins, outcomes):
        assert code == 0, (owner, result, stderr)
        assert stderr == ""
        # Each waited for the others' transactions, but never as long as its own timeout.
        assert plugin.ended - plugin.started < timeout, (owner, plugin.ended - plugin.started)
        v4[owner], v6[owner] = result_ips(result)
    return v4, v6


def check_distinct_and_recorded(db_path, v4: dict[str, str], v6: dict[str, str]) -> None:
    assert len(set(v4.values())) == len(v4)
    assert len(set(v6.values())) == len(v6)
    holders = check_records(db_path)
    assert holders == {V4_SUBNET: v4, V6_SUBNET: v6}
    records = read_buckets(db_path)[V4_SUBNET]
    assert {owner: records[address]["container_id"] for owner, address in v4.items()} == {
        owner: f"c-{owner}" for owner in v4
    }


def test_64_plugins_started_at_once_get_64_distinct_addresses(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    v4, v6 = launch_adds(db_path, 64)
    check_distinct_and_recorded(db_path, v4, v6)


@pytest.mark.slow
def test_256_plugins_started_at_once_get_256_distinct_addresses(tmp_path):
    # On two cores the last of 256 simultaneous plugins finishes 5 to 8 s after the
    # first: longer than the default timeout, which would turn the tail into code 11.
    db_path = tmp_path / "eni-ipam.db"
    v4, v6 = launch_adds(db_path, 256, timeout=30)
    check_distinct_and_recorded(db_path, v4, v6)


# --- churn --------------------------------------------------------------------------------------

# One worker process runs many ADD/DEL pairs through the plugin's entry point, each with
# its own environment and its own opening of the database, exactly as separate plugin
# processes would, without paying an interpreter start-up per command.
_CHURN_WORKER = """
import io, json, os, random, sys, time
from ecs_ipam.cni import main

db_path, worker, rounds, conf_template = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def run(command, conf):
    out = io.StringIO()
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c-" + worker, "CNI_NETNS": "/host/proc//ns/net",
           "CNI_IFNAME": "eth0", "IPAM_DB_PATH": db_path, "ECS_CNI_LOG_FILE": os.devnull}
    code = main([], env, io.BytesIO(json.dumps(conf).encode()), out)
    return code, out.getvalue()

for n in range(rounds):
    conf = json.loads(conf_template)
    conf["ipam"]["id"] = f"{worker}-{n}"
    add_code, add_out = run("ADD", conf)
    held_from = time.monotonic()
    time.sleep(random.uniform(0, 0.003))
    held_until = time.monotonic()
    del_code, del_out = run("DEL", conf)
    print(json.dumps({"id": conf["ipam"]["id"], "add": [add_code, add_out], "del": [del_code, del_out],
                      "held": [held_from, held_until]}), flush=True)
"""


def check_no_address_held_twice(holdings: list[tuple[str, str, float, float]]) -> None:
    """No two owners held one address at the same moment.

    :param holdings: ``(address, owner, from, until)``: the ADD had committed by *from*
        and the DEL had not started at *until* (``time.monotonic`` is system-wide).
    """
    by_address = defaultdict(list)
    for address, owner, start, end in holdings:
        by_address[address].append((start, end, owner))
    for address, spans in by_address.items():
        spans.sort()
        for (_, end, owner), (next_start, _, next_owner) in zip(spans, spans[1:]):
            assert next_start > end, f"{address} held by {owner} and {next_owner} at once"


def churn_in_workers(db_path, workers: int, rounds: int) -> list[dict]:
    conf = netconf(None, ipv4_subnet=CHURN_V4, ipv6_subnet=CHURN_V6)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHURN_WORKER, str(db_path), f"w{w}", str(rounds), json.dumps(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for w in range(workers)
    ]
    records = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        records.extend(json.loads(line) for line in out.decode().splitlines())
    assert len(records) == workers * rounds
    return records


def test_add_del_churn_from_many_processes_leaves_no_reservation(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    records = churn_in_workers(db_path, workers=8, rounds=25)
    holdings = []
    for record in records:
        add_code, add_out = record["add"]
        assert add_code == 0, record
        assert record["del"] == [0, ""], record
        v4, v6 = result_ips(json.loads(add_out))
        holdings += [(v4, record["id"], *record["held"]), (v6, record["id"], *record["held"])]
    check_no_address_held_twice(holdings)
    # 8 workers in a 13-address pool: addresses were handed from one owner to the next.
    assert len({address for address, *_ in holdings}) < len(holdings) / 4
    assert check_records(db_path) == {CHURN_V4: {}, CHURN_V6: {}}


@pytest.mark.slow
def test_add_del_churn_of_plugin_processes_leaves_no_reservation(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    holdings, failures = [], []

    def worker(w: int) -> None:
        for n in range(12):
            conf = netconf(f"w{w}-{n}", ipv4_subnet=CHURN_V4, ipv6_subnet=CHURN_V6)
            code, result, stderr = PluginProcess("ADD", conf, db_path).finish(60)
            held_from = time.monotonic()
            if code != 0:
                failures.append((conf, result, stderr))
                return
            held_until = time.monotonic()
            del_code, del_result, del_stderr = PluginProcess("DEL", conf, db_path, {"CNI_CONTAINERID": ""}).finish(60)
            if del_code != 0:
                failures.append((conf, del_result, del_stderr))
                return
            holdings.extend((ip, conf["ipam"]["id"], held_from, held_until) for ip in result_ips(result))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(holdings) == 10 * 12 * 2
    check_no_address_held_twice(holdings)
    assert check_records(db_path) == {CHURN_V4: {}, CHURN_V6: {}}


@pytest.mark.slow
def test_long_add_del_churn_from_many_processes_leaves_no_reservation(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    records = churn_in_workers(db_path, workers=12, rounds=400)
    holdings = []
    for record in records:
        assert record["add"][0] == 0 and record["del"] == [0, ""], record
        v4, v6 = result_ips(json.loads(record["add"][1]))
        holdings += [(v4, record["id"], *record["held"]), (v6, record["id"], *record["held"])]
    check_no_address_held_twice(holdings)
    assert check_records(db_path) == {CHURN_V4: {}, CHURN_V6: {}}
