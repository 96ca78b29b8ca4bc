"""The plugin on a 3-member etcd under faults: frozen members, a killed member, lost answers.

Every scenario runs waves of real plugin ADDs (``python -m ecs_ipam``, a 5 s
``IPAM_DB_CONNECTION_TIMEOUT``) against a real cluster on loopback ports, then checks
the ledger: every ADD that succeeded is recorded once, with its owner; every ADD that
failed left nothing; no address is held twice.  Members are resumed and killed in
``finally`` blocks, whatever happened.  How long the ADDs took is measured and shown
(``-s``), not asserted: ``tools/bench.py --etcd`` reports it.
"""

from __future__ import annotations

import base64
import json
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.errors import TRY_AGAIN_LATER, StoreError
from ecs_ipam.kv.etcd import EtcdStore
from ecs_ipam.kv.etcd.client import UnavailableMaybeApplied
from ecs_ipam.kv.etcd.tx import FENCED
from etcd_proxy import DROP_COMMIT_ANSWERS, FORWARD, SILENT, SILENT_AFTER_COMMIT, FaultyProxy
from etcd_server import ETCD, NOT_INSTALLED, running_cluster

pytestmark = pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED)

ADDS_PER_SCENARIO = 12
WAVE = 4
TIMEOUT = {"IPAM_DB_CONNECTION_TIMEOUT": "5s"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def prefix():
    return f"faults-{uuid.uuid4().hex}"


def healthy(cluster) -> None:
    """Wait until every member serves again (a scenario's member rejoined)."""
    for member in cluster.members:
        member.wait_healthy(60)


def run_adds(url: str, owners: list[str], timeout=TIMEOUT) -> list[tuple[str, int, dict | None, float]]:
    """ADD each owner (container ``c-<owner>``), WAVE plugins at a time: ``(owner, exit
    code, output, seconds from release to exit)`` each."""
    from plugin import finish_all, netconf, start_together

    outcomes = []
    for first in range(0, len(owners), WAVE):
        wave = owners[first : first + WAVE]
        runs = [("ADD", netconf(owner), {**timeout, "CNI_CONTAINERID": f"c-{owner}"}) for owner in wave]
        plugins = start_together(runs, url)
        for n, (code, result, stderr) in enumerate(finish_all(plugins, timeout=60)):
            assert "Traceback" not in stderr, stderr
            outcomes.append((wave[n], code, result, plugins[n].ended - plugins[n].started))
    return outcomes


def recorded(url: str) -> dict[str, str]:
    """address -> owner of every lease in the pool (the gateway left out)."""
    from plugin import V4_SUBNET

    with kv.open_store(url, bucket=V4_SUBNET, read_only=True) as store:
        pairs = store.list()
    leases = {}
    for pair in pairs:
        if pair.key[0].isdigit():
            owner = msgpack.unpackb(pair.value)["id"]
            if owner != "GateWay":
                leases[pair.key] = owner
    return leases


def check_ledger(url: str, outcomes) -> None:
    leases = recorded(url)
    holders = Counter(leases.values())
    assert all(count == 1 for count in holders.values()), holders
    for owner, code, result, _ in outcomes:
        if code == 0:
            address = result["ips"][0]["address"].split("/")[0]
            assert leases.get(address) == owner, (owner, result)
        else:
            assert result["code"] == TRY_AGAIN_LATER, result
            assert owner not in holders, (owner, result)
    assert set(holders) == {owner for owner, code, _, _ in outcomes if code == 0}


def report(name: str, outcomes) -> float:
    seconds = sorted(elapsed for _, code, _, elapsed in outcomes if code == 0)
    median = statistics.median(seconds) if seconds else float("nan")
    slowest = seconds[-1] if seconds else float("nan")
    print(f"\n{name}: {len(seconds)}/{len(outcomes)} ADDs succeeded, median {median:.2f}s, max {slowest:.2f}s")
    return median


@contextmanager
def frozen(cluster, member):
    cluster.freeze(member)
    try:
        yield
    finally:
        cluster.thaw(member)
        healthy(cluster)


@pytest.mark.parametrize("which", ["first in the URL", "leader", "follower"])
def test_adds_go_through_while_one_member_is_frozen(cluster, prefix, which):
    leader = cluster.leader()
    member = {
        "first in the URL": cluster.members[0],
        "leader": leader,
        "follower": next(m for m in reversed(cluster.members) if m is not leader),
    }[which]
    url = f"{cluster.url}/{prefix}"
    owners = [f"task-{n:02d}" for n in range(ADDS_PER_SCENARIO)]
    with frozen(cluster, member):
        outcomes = run_adds(url, owners)
    report(f"frozen {which}", outcomes)
    assert [code for _, code, _, _ in outcomes] == [0] * len(owners), [o for o in outcomes if o[1]]
    check_ledger(url, outcomes)


def test_adds_go_through_while_a_member_is_killed_and_restarted(cluster, prefix):
    member = cluster.members[1]
    url = f"{cluster.url}/{prefix}"
    owners = [f"task-{n:02d}" for n in range(ADDS_PER_SCENARIO)]
    member.stop(signal.SIGKILL)
    try:
        outcomes = run_adds(url, owners[:WAVE])
        member.launch()  # rejoins while the next waves run
        outcomes += run_adds(url, owners[WAVE:])
    finally:
        if member.process is None:
            member.launch()
        healthy(cluster)
    report("killed and restarted", outcomes)
    assert [code for _, code, _, _ in outcomes] == [0] * len(owners), [o for o in outcomes if o[1]]
    check_ledger(url, outcomes)


@pytest.mark.parametrize("mode", [DROP_COMMIT_ANSWERS, SILENT])
def test_a_member_behind_a_faulty_proxy_costs_no_add_and_no_lease(cluster, prefix, mode):
    proxy = FaultyProxy(cluster.members[0].endpoint, mode)
    try:
        others = ",".join(member.endpoint for member in cluster.members[1:])
        url = f"etcd://{proxy.endpoint},{others}/{prefix}"
        owners = [f"task-{n:02d}" for n in range(ADDS_PER_SCENARIO)]
        outcomes = run_adds(url, owners)
        # Each plugin starts at a random endpoint: more waves, until some started at
        # the proxy ((2/3)**12 of the runs would otherwise test nothing).
        while mode == DROP_COMMIT_ANSWERS and not proxy.dropped and len(owners) < 8 * ADDS_PER_SCENARIO:
            wave = [f"task-{n:02d}" for n in range(len(owners), len(owners) + WAVE)]
            owners += wave
            outcomes += run_adds(url, wave)
        # Then again: a retry of an ADD that succeeded is "id already exists"... unless
        # it is the same attachment, which answers its address (etcd only).
        again = run_adds(url, owners[:2])
    finally:
        proxy.close()
    report(mode, outcomes)
    assert [code for _, code, _, _ in outcomes] == [0] * len(owners), [o for o in outcomes if o[1]]
    if mode == DROP_COMMIT_ANSWERS:
        assert proxy.dropped > 0  # some plugins started at the proxy
    check_ledger(f"{cluster.url}/{prefix}", outcomes)
    assert [result["ips"] for _, _, result, _ in again] == [result["ips"] for _, _, result, _ in outcomes[:2]]


def test_followers_silent_during_an_election_leave_time_for_a_second_round(cluster, prefix):
    # The order of a failure seen under a frozen leader: the request goes to a follower
    # that forwards it to the frozen leader and never answers, then to the other
    # follower (the same), then to the frozen leader.  Meanwhile a new leader is
    # elected, and the followers answer new requests.  The second round through the
    # endpoints must still have time left: the frozen member gets one short turn, not
    # whatever a bound doubled at every attempt had grown to.
    from ecs_ipam.kv.etcd.client import REQUEST_TIMEOUT, Client
    from ecs_ipam.kv.etcd.settings import security_of

    target = cluster.members[0].endpoint
    followers = [FaultyProxy(target, SILENT), FaultyProxy(target, SILENT)]
    frozen_leader = FaultyProxy(target, SILENT)
    proxies = [*followers, frozen_leader]
    elected = threading.Timer(1.5 * REQUEST_TIMEOUT, lambda: [setattr(p, "mode", FORWARD) for p in followers])
    try:
        url = f"etcd://{','.join(p.endpoint for p in proxies)}/{prefix}"
        client = Client(url, 5.0, security_of(url, {}, {}))
        client.current = 0
        started = time.monotonic()
        elected.start()
        revision, _ = client.range(b"k", None, None, started + 5.0)
        assert revision > 0
        assert time.monotonic() - started < 4.5
    finally:
        elected.cancel()
        for proxy in proxies:
            proxy.close()


def test_a_lost_answer_that_cannot_be_settled_says_so_and_the_retry_gets_the_address(cluster, prefix):
    from plugin import netconf, run_plugin

    # One endpoint, which relays the commit and then answers nothing: nobody can tell
    # whether the ADD was recorded before the timeout.
    proxy = FaultyProxy(cluster.members[0].endpoint, SILENT_AFTER_COMMIT)
    try:
        url = f"etcd://{proxy.endpoint}/{prefix}"
        short = {"IPAM_DB_CONNECTION_TIMEOUT": "1500ms", "CNI_CONTAINERID": "c-task"}
        code, result, _ = run_plugin("ADD", netconf("task"), short, url)
        assert (code, result["code"]) == (1, TRY_AGAIN_LATER)
        assert "may or may not have been applied" in result["msg"]
        assert "same id and container id" in result["msg"]
        proxy.mode = "forward"  # the member is back

        code, again, _ = run_plugin("ADD", netconf("task"), short, url)
        assert code == 0, again
        assert recorded(f"{cluster.url}/{prefix}") == {again["ips"][0]["address"].split("/")[0]: "task"}

        code, other, _ = run_plugin("ADD", netconf("task"), {**short, "CNI_CONTAINERID": "c-other"}, url)
        assert (code, other["code"]) == (1, 101)
    finally:
        proxy.close()


def test_lost_answers_of_an_add_and_a_del_are_settled_by_the_commit_key(cluster, prefix):
    from plugin import netconf, run_plugin

    # One endpoint, which applies every commit and loses its answer: only the commit key,
    # read back, tells the plugin what happened.
    proxy = FaultyProxy(cluster.members[0].endpoint, DROP_COMMIT_ANSWERS)
    try:
        url = f"etcd://{proxy.endpoint}/{prefix}"
        env = {**TIMEOUT, "CNI_CONTAINERID": "c-task"}
        code, added, _ = run_plugin("ADD", netconf("task"), env, url)
        assert code == 0, added
        address = added["ips"][0]["address"].split("/")[0]
        assert recorded(f"{cluster.url}/{prefix}") == {address: "task"}

        code, deleted, _ = run_plugin("DEL", netconf("task"), {**TIMEOUT, "CNI_CONTAINERID": ""}, url)
        assert code == 0, deleted
        assert recorded(f"{cluster.url}/{prefix}") == {}
        assert proxy.dropped == 2
    finally:
        proxy.close()


# -- the commit key ------------------------------------------------------------------------------


def intercepted_commit(store: EtcdStore) -> list[dict]:
    """Make the next commit of *store* reach no etcd, as if its answer was lost, and
    keep the request, to be delivered late by the test."""
    client = store._client
    call = client.call
    kept: list[dict] = []

    def losing(path, body, deadline):
        if path == "/v3/kv/txn" and not kept:
            kept.append(body)
            raise UnavailableMaybeApplied("etcd at test is unavailable (lost)")
        return call(path, body, deadline)

    client.call = losing
    return kept


def test_a_lost_commit_is_fenced_so_a_late_copy_never_applies(cluster, prefix):
    url = f"{cluster.url}/{prefix}"
    with EtcdStore(url, "test") as store:
        store.put("other", b"1")
        kept = intercepted_commit(store)
        not_applied = r"the commit was not applied \(etcd says so\), nothing was written"
        with pytest.raises(StoreError, match=not_applied):  # noqa: SIM117 - one block each, 3.9
            with store.transaction() as tx:
                tx.put("k", b"v")
        # The copy that was on its way arrives now: the commit key, written by the
        # fence, makes its compare fail.  Without that compare it would apply.
        late = cluster.members[0].request("/v3/kv/txn", kept[0])
        assert not late.get("succeeded")
        assert not store.exists("k")
        (commit_key,) = (
            key
            for key in (base64.b64decode(op["request_put"]["key"]) for op in kept[0]["success"] if "request_put" in op)
            if key.startswith(f"{prefix}/c/".encode())
        )
        fence = cluster.members[0].request("/v3/kv/range", {"key": base64.b64encode(commit_key).decode()})
        assert base64.b64decode(fence["kvs"][0]["value"]) == FENCED


def test_a_commit_settled_as_not_applied_is_run_again_while_time_remains(cluster, prefix):
    with EtcdStore(f"{cluster.url}/{prefix}", "test") as store:
        kept = intercepted_commit(store)
        runs = []
        store.transact(lambda tx: (runs.append(tx.reruns), tx.put("k", b"v")))
        assert kept and runs == [0, 1]
        assert store.get("k").value == b"v"


def test_a_blind_write_sent_twice_never_undoes_a_later_write(cluster, prefix):
    # The commit key is what makes a second copy of a commit harmless when its other
    # compares would pass again: a blind put, re-delivered after someone else wrote.
    url = f"{cluster.url}/{prefix}"
    with EtcdStore(url, "test") as store, EtcdStore(url, "test") as rival:
        sent: list[dict] = []
        call = store._client.call

        def keeping(path, body, deadline):
            if path == "/v3/kv/txn":
                sent.append(json.loads(json.dumps(body)))
            return call(path, body, deadline)

        store._client.call = keeping
        store.transact(lambda tx: tx.put("k", b"mine"))
        rival.put("k", b"theirs")
        again = cluster.members[1].request("/v3/kv/txn", sent[0])
        assert not again.get("succeeded")
        assert store.get("k").value == b"theirs"


def test_old_commit_keys_are_swept_by_later_commits(cluster, prefix):
    from ecs_ipam.kv.etcd.layout import COMMIT_KEY_LIFETIME

    member = cluster.members[0]
    old = f"{prefix}/c/{0:012d}-old".encode()
    member.request("/v3/kv/put", {"key": base64.b64encode(old).decode(), "value": ""})
    with EtcdStore(f"{cluster.url}/{prefix}", "test") as store:
        store.put("k", b"v")
        store.put("k", b"w")
    keys = [key for key in member.keys(prefix) if key.startswith(f"{prefix}/c/")]
    assert f"{prefix}/c/{0:012d}-old" not in keys
    assert len(keys) == 2  # the two commits' own, younger than COMMIT_KEY_LIFETIME
    assert COMMIT_KEY_LIFETIME <= 3600
