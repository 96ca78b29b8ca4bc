"""The store contract, run against a real etcd, and what only the etcd backend does.

One etcd (Debian's ``etcd-server``) serves the module on loopback ports; each test works
under a prefix of its own.  Tests that restart etcd start one of their own.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.errors import (
    TRY_AGAIN_LATER,
    InvalidArgumentError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from ecs_ipam.kv.etcd import (
    MAX_TXN_OPS,
    READ_AHEAD_AFTER,
    EtcdStore,
    escape_bucket,
    parse_url,
    prefix_end,
    unescape_bucket,
)
from etcd_proxy import CLOSE_AFTER_NEXT_COMMIT, CLOSE_BEFORE_NEXT_COMMIT, FaultyProxy
from etcd_server import ETCD, NOT_INSTALLED, EtcdServer, free_port, running_etcd

from .contract import StoreContract, raises_store_error

ROOT = Path(__file__).resolve().parents[2]

requires_etcd = pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED)


@pytest.fixture(scope="module")
def restartable(tmp_path_factory):
    """An etcd of its own for the tests that stop and start it (each on a fresh prefix)."""
    with running_etcd(tmp_path_factory.mktemp("restartable")) as server:
        yield server


@pytest.fixture
def url(etcd):
    """A database of its own for each test: a fresh prefix."""
    return f"{etcd.url}/test-{uuid.uuid4().hex}"


@pytest.fixture
def store(url):
    with EtcdStore(url, "test") as fresh:
        yield fresh


@pytest.fixture
def rival(url):
    """A second client of the same database, on a connection of its own."""
    with EtcdStore(url, "test") as other:
        yield other


def counting_requests(store: EtcdStore) -> list[str]:
    """Record the path of every request *store*'s connection sends from now on."""
    client = store._client
    sent: list[str] = []
    call = client.call

    def counted(path, body, deadline):
        sent.append(path)
        return call(path, body, deadline)

    client.call = counted
    return sent


@requires_etcd
class TestEtcdStore(StoreContract):
    supports_watch = True  # tested below

    # etcd numbers a write (its mod_revision) when the transaction commits, after the
    # transaction handed out the pair, and KVPair is immutable: a pair returned inside a
    # transaction keeps a provisional index.  These two contract tests compare such a
    # pair with what get() returns after the commit; here they compare keys and values,
    # and test_pairs_written_inside_a_transaction_are_provisional pins the index.

    def test_transaction_reads_its_own_writes(self, store):
        store.put("gone", b"1")

        with store.transaction() as tx:
            written = tx.put("k", b"v")
            tx.delete("gone")
            tx.bucket("other").put("o", b"w")

            assert tx.get("k") == written
            assert tx.exists("k")
            assert not tx.exists("gone")
            assert [pair.key for pair in tx.list()] == ["k"]
            assert tx.bucket("other").get("o").value == b"w"
            assert tx.bucket("other").bucket("test").get("k") == written

        assert store.get("k")[:2] == written[:2]
        assert not store.exists("gone")

    def test_transaction_sees_a_write_of_the_same_key_as_a_new_index(self, store):
        with store.transaction() as tx:
            first = tx.put("k", b"1")
            second = tx.atomic_put("k", b"2", first)

            with raises_store_error(KeyModifiedError):
                tx.atomic_put("k", b"3", first)

        assert second.last_index > first.last_index
        assert store.get("k")[:2] == second[:2]


# -- URLs and the key layout -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, endpoints, prefix",
    [
        ("etcd://127.0.0.1:2379", [("127.0.0.1", 2379)], "ecs-ipam"),
        ("etcd://localhost", [("localhost", 2379)], "ecs-ipam"),
        ("etcd://a:1,b:2/ipam", [("a", 1), ("b", 2)], "ipam"),
        ("etcd://a:1, b:2/", [("a", 1), ("b", 2)], "ecs-ipam"),
        ("etcd://[::1]:2380/x/y/", [("::1", 2380)], "x/y"),
        ("etcd://[fd00::1]/p", [("fd00::1", 2379)], "p"),
    ],
)
def test_url_names_endpoints_and_prefix(url, endpoints, prefix):
    assert parse_url(url) == (endpoints, prefix)


@pytest.mark.parametrize(
    "url, message",
    [
        (
            "http://127.0.0.1:2379",
            "not an etcd URL: 'http://127.0.0.1:2379' (expected etcd:// or etcds:// then HOST:PORT[/PREFIX])",
        ),
        ("etcd://", "endpoint without a host in etcd://"),
        ("etcd://a:1,,b:2", "endpoint without a host in etcd://a:1,,b:2"),
        ("etcd://a:x", "bad port 'x' in etcd://a:x"),
        ("etcd://a:70000", "bad port '70000' in etcd://a:70000"),
        (
            "etcd://::1:2379",
            "bad endpoint '::1:2379' in etcd://::1:2379: write an IPv6 host as [ADDRESS]:PORT",
        ),
        ("etcd://[::1", "bad endpoint '[::1' in etcd://[::1"),
    ],
)
def test_bad_url_is_refused_with_a_reason(url, message):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_url(url)
    assert str(caught.value) == message


@pytest.mark.parametrize("name", ["a", "a/k", "%", "%2F", "/", "%252F/", "169.254.172.0/22", "\u00e9/%"])
def test_bucket_escaping_round_trips_without_slashes(name):
    escaped = escape_bucket(name)
    assert "/" not in escaped
    assert unescape_bucket(escaped) == name


def test_prefix_end_is_just_above_the_prefix():
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


@requires_etcd
def test_a_bucket_cannot_reach_into_another(store):
    names = ["a", "a/k", "a%2Fk", "a%", "a/"]
    for name in names:
        with store.bucket(name) as bucket:
            bucket.put("k/x", name.encode())
            bucket.put("k", name.encode())

    for name in names:
        with store.bucket(name) as bucket:
            assert [(p.key, p.value) for p in bucket.list()] == [("k", name.encode()), ("k/x", name.encode())]
            assert bucket.list("k/x/") == []
    assert store.buckets() == sorted(names)
    with store.bucket("a") as a:
        a.delete_tree("")
    with store.bucket("a/k") as ak:
        assert len(ak.list()) == 2


@requires_etcd
def test_open_store_and_list_buckets_take_an_etcd_url(url):
    # A prefix nothing was written under yet is an empty pool, not a missing database.
    assert kv.list_buckets(url) == []
    with kv.open_store(url, create=False) as empty:
        assert empty.list() == []

    with kv.open_store(url, bucket="169.254.172.0/22") as store:
        assert isinstance(store, EtcdStore)
        store.put("lastKnownIP", b"v")

    assert kv.list_buckets(url) == ["169.254.172.0/22"]
    with kv.open_store(url, bucket="169.254.172.0/22", read_only=True) as reader:
        assert reader.get("lastKnownIP").value == b"v"
        with pytest.raises(StoreError, match="open read-only"):
            reader.put("k", b"v")


def test_lmdb_path_never_imports_the_etcd_backend(tmp_path):
    code = (
        "import sys\n"
        "from ecs_ipam import kv\n"
        f"kv.open_store({str(tmp_path / 'kv.db')!r}).close()\n"
        "print([m for m in sys.modules if m.startswith('ecs_ipam.kv.etcd')])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_backend_imports_no_http_or_tls_stack():
    code = (
        "import sys\n"
        "import ecs_ipam.kv.etcd\n"
        "print([m for m in ('http.client', 'ssl', 'email.parser', 'urllib.request') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- optimistic transactions -------------------------------------------------------------------


@requires_etcd
def test_losing_body_is_rerun_and_both_increments_land(store, rival):
    store.put("counter", b"0")
    runs = []

    def increment(tx):
        value = int(tx.get("counter").value)
        runs.append(value)
        if len(runs) == 1:
            # Another client commits between this body's read and its commit.
            rival.transact(lambda rtx: rtx.put("counter", str(int(rtx.get("counter").value) + 1).encode()))
        tx.put("counter", str(value + 1).encode())
        return value + 1

    assert store.transact(increment) == 2
    assert runs == [0, 1]
    assert store.get("counter").value == b"2"


@requires_etcd
def test_conflicting_transaction_block_raises_key_modified_and_writes_nothing(store, rival):
    store.put("k", b"old")

    with pytest.raises(KeyModifiedError), store.transaction() as tx:
        tx.get("k")
        tx.put("written", b"x")
        rival.put("k", b"theirs")

    assert store.get("k").value == b"theirs"
    assert not store.exists("written")


@pytest.mark.parametrize(
    "interfere",
    [
        pytest.param(lambda rival: rival.put("a/new", b"v"), id="key-appears-in-range"),
        pytest.param(lambda rival: rival.put("a/1", b"changed"), id="key-in-range-changes"),
        pytest.param(lambda rival: rival.delete("a/2"), id="key-leaves-range"),
    ],
)
@requires_etcd
def test_a_scan_conflicts_with_any_change_in_its_range(store, rival, interfere):
    store.put("a/1", b"v")
    store.put("a/2", b"v")
    store.put("b", b"v")

    with pytest.raises(KeyModifiedError), store.transaction() as tx:
        count = len(tx.list("a/"))
        interfere(rival)
        tx.put("count", str(count).encode())

    assert not store.exists("count")


@requires_etcd
def test_a_change_outside_the_scanned_range_does_not_conflict(store, rival):
    store.put("a/1", b"v")

    with store.transaction() as tx:
        count = len(tx.list("a/"))
        rival.put("b", b"v")
        rival.put("a", b"v")
        tx.put("count", str(count).encode())

    assert store.get("count").value == b"1"


@requires_etcd
def test_a_key_read_as_absent_conflicts_when_it_appears(store, rival):
    with pytest.raises(KeyModifiedError), store.transaction() as tx:
        assert tx.find("claim") is None
        rival.atomic_put("claim", b"theirs", None)
        tx.put("claim", b"mine")

    assert store.get("claim").value == b"theirs"
    with pytest.raises(KeyExistsError):
        store.atomic_put("claim", b"mine", None)


@requires_etcd
def test_bucket_names_read_conflict_with_a_bucket_created_meanwhile(store, rival):
    # The allocator reads the bucket names to find overlapping pools: a pool created
    # between that read and the commit must re-run the body.
    store.put("k", b"v")

    with pytest.raises(KeyModifiedError), store.transaction() as tx:
        names = tx.buckets()
        rival.bucket("10.0.0.0/24").put("10.0.0.2", b"theirs")
        tx.put("names", ",".join(names).encode())

    assert not store.exists("names")


@requires_etcd
def test_bucket_names_read_do_not_conflict_with_writes_to_existing_buckets(store, rival):
    store.put("k", b"v")
    with store.bucket("other") as other:
        other.put("k", b"v")

    with store.transaction() as tx:
        names = tx.buckets()
        rival.bucket("other").put("k2", b"v")
        rival.put("k3", b"v")
        tx.put("names", ",".join(names).encode())

    assert store.get("names").value == b"other,test"


@requires_etcd
def test_reads_of_one_transaction_see_one_snapshot(store, rival):
    store.put("a", b"1")
    store.put("b", b"1")

    with store.transaction(write=False) as tx:
        assert tx.get("a").value == b"1"
        rival.put("b", b"2")
        assert tx.get("b").value == b"1"
        assert [p.value for p in tx.list()] == [b"1", b"1"]


@requires_etcd
def test_endless_conflicts_end_in_a_timeout_that_wrote_nothing(url, rival):
    with EtcdStore(url, "test", timeout=0.3) as store:
        store.put("k", b"0")

        def always_overtaken(tx):
            value = tx.get("k").value
            rival.put("k", value + b"+")
            tx.put("mine", b"x")

        started = time.monotonic()
        with pytest.raises(StoreTimeoutError) as caught:
            store.transact(always_overtaken)

        assert caught.value.code == TRY_AGAIN_LATER
        assert time.monotonic() - started < 1.5
        assert not store.exists("mine")


@requires_etcd
def test_a_compacted_snapshot_reruns_the_body(store, rival):
    store.put("a", b"1")
    store.put("b", b"1")
    runs = []

    def read_both(tx):
        runs.append(tx.get("a").value)
        if len(runs) == 1:
            rival.put("b", b"2")
            client, deadline = rival._client, time.monotonic() + 5
            revision = client.range(b"\x00", None, None, deadline)[0]
            client.call("/v3/kv/compaction", {"revision": str(revision), "physical": True}, deadline)
        return tx.get("b").value

    assert store.transact(read_both, write=False) == b"2"
    assert len(runs) == 2


@requires_etcd
def test_many_reads_check_the_bucket_marker_instead_of_every_key(store, rival):
    for start in range(0, MAX_TXN_OPS + 20, 100):
        with store.transaction() as tx:
            for n in range(start, min(start + 100, MAX_TXN_OPS + 20)):
                tx.put(f"k{n:03}", b"v")

    # More keys read than etcd takes compares: the commit still goes through...
    with store.transaction() as tx:
        total = len(tx.list())
        tx.put("total", str(total).encode())
    assert store.get("total").value == str(MAX_TXN_OPS + 20).encode()

    # ...and still sees a concurrent write to the bucket.
    with pytest.raises(KeyModifiedError), store.transaction() as tx:
        tx.list()
        rival.delete("k000")
        tx.put("total", b"stale")
    assert store.get("total").value == str(MAX_TXN_OPS + 20).encode()


@requires_etcd
def test_a_walk_over_many_keys_reads_the_bucket_in_one_range(store):
    with store.transaction() as tx:
        for n in range(100):
            tx.put(f"10.0.0.{n}", b"held")
    sent = counting_requests(store)

    def first_free(tx):
        n = 0
        while tx.find(f"10.0.0.{n}") is not None:
            n += 1
        return n

    assert store.transact(first_free, write=False) == 100
    assert sent == ["/v3/kv/range"] * (READ_AHEAD_AFTER + 1)


@requires_etcd
def test_delete_tree_of_more_keys_than_a_transaction_holds(store):
    with store.bucket("other") as other:
        other.put("a/1", b"kept")
        for start in range(0, 300, 100):
            with store.transaction() as tx:
                for n in range(start, start + 100):
                    tx.put(f"a/{n:03}", b"v")
        sent = counting_requests(store)

        store.delete_tree("a/")

        # The scan, the bucket markers (300 keys read: too many compares), the commit.
        assert sent == ["/v3/kv/range", "/v3/kv/range", "/v3/kv/txn"]
        assert store.list() == []
        assert other.list()[0].value == b"kept"


@requires_etcd
def test_delete_tree_then_put_in_the_same_range(store):
    for key in ("a/1", "a/2", "b"):
        store.put(key, b"old")

    with store.transaction() as tx:
        tx.delete_tree("a/")
        tx.put("a/2", b"new")

    assert [(p.key, p.value) for p in store.list()] == [("a/2", b"new"), ("b", b"old")]


@requires_etcd
def test_pairs_written_inside_a_transaction_are_provisional(store):
    store.put("x", b"0")
    before = store.get("x")

    with store.transaction() as tx:
        first = tx.put("x", b"1")
        second = tx.put("y", b"2")
    stored = store.get("x")

    assert before.last_index < stored.last_index < first.last_index < second.last_index
    assert store.get("y").last_index == stored.last_index
    with pytest.raises(KeyModifiedError):
        store.atomic_put("x", b"3", first)  # never a stored pair: fails safely
    assert store.atomic_put("x", b"3", stored) == store.get("x")


# -- watches -----------------------------------------------------------------------------------


def next_within(watch, seconds: float = 10.0):
    """next(watch), failing the test instead of hanging when no change arrives."""
    outcome: list = []

    def step() -> None:
        try:
            outcome.append(("value", next(watch)))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            outcome.append(("error", error))

    waiter = threading.Thread(target=step, daemon=True)
    waiter.start()
    waiter.join(seconds)
    assert outcome, f"no change arrived within {seconds:g}s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


@requires_etcd
def test_watch_yields_the_pair_then_each_change_until_deleted(store):
    store.put("k", b"1")
    watch = store.watch("k")

    assert next_within(watch) == store.get("k")
    store.put("k", b"2")
    assert next_within(watch) == store.get("k")
    with store.bucket("other") as other:
        other.put("k", b"elsewhere")
    store.put("k2", b"next door")
    store.put("k", b"3")
    assert next_within(watch) == store.get("k")
    store.delete("k")
    with pytest.raises(StopIteration):
        next_within(watch)


@requires_etcd
def test_watch_of_a_missing_key_raises_key_not_found(store):
    with pytest.raises(KeyNotFoundError):
        store.watch("absent")


@requires_etcd
def test_watch_tree_yields_the_whole_list_after_each_change(store):
    store.put("a/1", b"1")
    watch = store.watch_tree("a/")

    assert next_within(watch) == store.list("a/")
    with store.transaction() as tx:
        tx.put("a/2", b"2")
        tx.put("b", b"outside")
        tx.bucket("other").put("a/3", b"other bucket")
    assert next_within(watch) == store.list("a/")
    store.delete("a/1")
    assert [pair.key for pair in next_within(watch)] == ["a/2"]
    store.delete_tree("a/")
    assert next_within(watch) == []
    watch.close()


@requires_etcd
def test_watch_tree_of_an_empty_prefix_starts_empty(store):
    watch = store.watch_tree("x/")
    assert next_within(watch) == []
    store.put("x/1", b"v")
    assert [pair.key for pair in next_within(watch)] == ["x/1"]
    watch.close()


@requires_etcd
def test_a_watch_behind_compacted_history_reads_everything_again(store, rival):
    store.put("a/1", b"1")
    watch = store.watch_tree("a/")
    assert [pair.value for pair in next_within(watch)] == [b"1"]
    rival.put("a/1", b"2")
    rival.put("a/2", b"2")
    client, deadline = rival._client, time.monotonic() + 5
    revision = client.range(b"\x00", None, None, deadline)[0]
    client.call("/v3/kv/compaction", {"revision": str(revision), "physical": True}, deadline)

    assert next_within(watch) == store.list("a/")
    watch.close()


@requires_etcd
def test_a_watch_rides_out_an_etcd_restart(restartable):
    with EtcdStore(f"{restartable.url}/w-{uuid.uuid4().hex}", "test", timeout=20) as store:
        store.put("k", b"1")
        watch = store.watch("k")
        assert next_within(watch).value == b"1"
        store.put("k", b"2")
        restartable.stop()
        restartable.start()
        store.put("k", b"3")

        assert [next_within(watch).value for _ in range(2)] == [b"2", b"3"]
        watch.close()


# -- the plugin on etcd --------------------------------------------------------------------------


@requires_etcd
def test_plugins_on_etcd_keep_one_address_space_across_overlapping_pools(url):
    # The second pool's bucket appears while the first pool's plugins run: a transaction
    # that read the bucket names before it appeared must re-run, or it would miss it.
    from plugin import finish_all, netconf, result_ips, start_together

    owners = [f"task-{n:02d}" for n in range(10)]
    subnets = ("10.0.0.0/25", "10.0.0.0/24")
    runs = [
        ("ADD", netconf(owner, ipv4_subnet=subnets[n % 2]), {"CNI_CONTAINERID": f"c-{owner}"})
        for n, owner in enumerate(owners)
    ]
    outcomes = finish_all(start_together(runs, url), timeout=90)

    assigned = {}
    for owner, (code, result, stderr) in zip(owners, outcomes):
        assert (code, stderr) == (0, ""), (owner, result, stderr)
        assigned[owner] = result_ips(result)[0]
    assert len(set(assigned.values())) == len(owners)
    with kv.open_store(url, bucket=subnets[0], read_only=True) as narrow, narrow.bucket(subnets[1]) as wide:
        recorded = {}
        for store in (narrow, wide):
            for pair in store.list():
                if pair.key.startswith("10."):
                    owner = msgpack.unpackb(pair.value)["id"]
                    if owner != "GateWay":
                        assert pair.key not in recorded
                        recorded[pair.key] = owner
    assert recorded == {address: owner for owner, address in assigned.items()}


@requires_etcd
def test_concurrent_plugins_on_etcd_get_distinct_addresses_and_release_them(url):
    from plugin import V4_SUBNET, V6_SUBNET, finish_all, netconf, result_ips, start_together

    owners = [f"task-{n:02d}" for n in range(8)]
    runs = [("ADD", netconf(owner, ipv6_subnet=V6_SUBNET), {"CNI_CONTAINERID": f"c-{owner}"}) for owner in owners]
    outcomes = finish_all(start_together(runs, url), timeout=60)

    assigned = {}
    for owner, (code, result, stderr) in zip(owners, outcomes):
        assert (code, stderr) == (0, ""), (owner, result, stderr)
        assigned[owner] = result_ips(result)
    assert len({v4 for v4, _ in assigned.values()}) == len({v6 for _, v6 in assigned.values()}) == len(owners)
    with kv.open_store(url, bucket=V4_SUBNET, read_only=True) as v4_store, v4_store.bucket(V6_SUBNET) as v6_store:
        for owner, (v4, v6) in assigned.items():
            assert msgpack.unpackb(v4_store.get(v4).value)["id"] == owner
            assert msgpack.unpackb(v6_store.get(v6).value)["id"] == owner

    runs = [("DEL", netconf(owner, ipv6_subnet=V6_SUBNET), {"CNI_CONTAINERID": ""}) for owner in owners]
    assert [code for code, _, _ in finish_all(start_together(runs, url), timeout=60)] == [0] * len(owners)
    with kv.open_store(url, bucket=V4_SUBNET, read_only=True) as v4_store:
        assert [pair.key for pair in v4_store.list()] == ["169.254.172.1", "lastKnownIP"]


def test_plugin_with_unreachable_etcd_answers_code_11():
    from plugin import netconf, run_plugin

    url = f"etcd://127.0.0.1:{free_port()}/p"
    code, result, _ = run_plugin("ADD", netconf("task-1"), {"IPAM_DB_CONNECTION_TIMEOUT": "300ms"}, url)

    assert code == 1
    assert result["code"] == TRY_AGAIN_LATER
    assert "is unavailable" in result["msg"]


# -- failures ----------------------------------------------------------------------------------


def test_unreachable_etcd_is_code_11_within_the_timeout():
    port = free_port()
    url = f"etcd://127.0.0.1:{port}/p"
    started = time.monotonic()
    with EtcdStore(url, "test", timeout=0.3) as store, pytest.raises(StoreUnavailableError) as caught:
        store.put("k", b"v")
    elapsed = time.monotonic() - started

    assert caught.value.code == TRY_AGAIN_LATER
    assert 0.25 < elapsed < 1.3
    where = f"127.0.0.1:{port}"
    assert str(caught.value) == f"etcd at {where} is unavailable ({where}: Connection refused)"


def test_unreachable_etcd_fails_open_for_readers_too():
    with pytest.raises(StoreUnavailableError):
        kv.open_store(f"etcd://127.0.0.1:{free_port()}", timeout=0.3, read_only=True)


@pytest.mark.parametrize(
    "operation, outcome",
    [
        pytest.param(lambda store: store.get("k"), "", id="read"),
        pytest.param(
            lambda store: store.put("k", b"v"),
            "; the commit may or may not have been applied, and no endpoint could tell within the timeout "
            "(an ADD sent again for the same id and container id answers the address it recorded)",
            id="commit",
        ),
    ],
)
def test_an_etcd_that_never_answers_is_a_timeout(operation, outcome):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with EtcdStore(f"etcd://{endpoint}", "test", timeout=0.3) as store, pytest.raises(StoreTimeoutError) as caught:
            operation(store)

    assert caught.value.code == TRY_AGAIN_LATER
    assert 0.25 < time.monotonic() - started < 1.3
    expected = f"etcd at {endpoint} did not answer within 0.3s ({endpoint}: timed out){outcome}"
    assert str(caught.value) == expected


@requires_etcd
def test_next_endpoint_is_used_when_one_is_down(etcd):
    url = f"etcd://127.0.0.1:{free_port()},{etcd.endpoint}/test-{uuid.uuid4().hex}"
    with EtcdStore(url, "test", timeout=3) as store:
        store.put("k", b"v")
        assert store.get("k").value == b"v"


@pytest.mark.parametrize("lose", [CLOSE_BEFORE_NEXT_COMMIT, CLOSE_AFTER_NEXT_COMMIT])
@requires_etcd
def test_a_commit_whose_connection_broke_is_applied_exactly_once(etcd, lose):
    proxy = FaultyProxy(etcd.endpoint)
    prefix = f"test-{uuid.uuid4().hex}"
    try:
        with EtcdStore(f"etcd://{proxy.endpoint}/{prefix}", "test") as store:
            store.put("counter", b"0")
            proxy.mode = lose

            def increment(tx):
                value = int(tx.get("counter").value) + 1
                tx.put("counter", str(value).encode())
                return tx.put(f"log/{value}", b"")

            logged = store.transact(increment)
            assert proxy.closed_on == 1
            assert store.get("counter").value == b"1"
            assert [p.key for p in store.list("log/")] == ["log/1"]
            assert store.get("log/1")[:2] == logged[:2]
    finally:
        proxy.close()


def storm_with_restarts(server: EtcdServer, sig: int, workers: int, per_worker: int, restarts: int) -> None:
    """Run increments from *workers* threads, each retried until acknowledged (as a
    container runtime retries code 11), while etcd is stopped and started *restarts*
    times; then check that every acknowledged increment is there exactly once."""
    url = f"{server.url}/storm-{uuid.uuid4().hex}"
    total = workers * per_worker
    with EtcdStore(url, "test") as store:
        store.put("counter", b"0")
    crashes: list[BaseException] = []
    finished = threading.Event()
    outages_mid_storm = []

    def worker(name: str) -> None:
        try:
            with EtcdStore(url, "test", timeout=20) as store:
                for n in range(per_worker):
                    operation = f"{name}-{n}"

                    def increment(tx, operation=operation):
                        value = int(tx.get("counter").value) + 1
                        tx.put("counter", str(value).encode())
                        tx.put(f"log/{operation}", str(value).encode())

                    while True:
                        try:
                            store.transact(increment)
                            break
                        except (StoreUnavailableError, StoreTimeoutError):
                            continue
        except BaseException as crash:  # noqa: BLE001 - the assertion below shows it
            crashes.append(crash)

    def restarter() -> None:
        with EtcdStore(url, "test", timeout=20) as watcher:
            for round_ in range(1, restarts + 1):
                while int(watcher.get("counter").value) < total * round_ // (restarts + 2):
                    time.sleep(0.01)
                outages_mid_storm.append(not finished.is_set())
                server.stop(sig)
                time.sleep(0.1)
                server.start()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(workers)]
    restarting = threading.Thread(target=restarter)
    for thread in [restarting, *threads]:
        thread.start()
    for thread in threads:
        thread.join()
    finished.set()
    restarting.join()

    assert crashes == []
    assert outages_mid_storm == [True] * restarts
    with EtcdStore(url, "test") as store:
        log = store.list("log/")
        assert store.get("counter").value == str(total).encode()
        assert sorted(pair.key for pair in log) == sorted(
            f"log/w{i}-{n}" for i in range(workers) for n in range(per_worker)
        )
        assert sorted(int(pair.value) for pair in log) == list(range(1, total + 1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
@requires_etcd
def test_etcd_restart_in_a_storm_of_writes_loses_and_duplicates_nothing(restartable, sig):
    storm_with_restarts(restartable, sig, workers=4, per_worker=40, restarts=1)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
@requires_etcd
def test_etcd_restarts_in_a_long_storm_of_writes(restartable, sig):
    storm_with_restarts(restartable, sig, workers=12, per_worker=150, restarts=4)


# -- GC of any size --------------------------------------------------------------------------------


@requires_etcd
def test_gc_of_500_stale_reservations_passes_etcds_transaction_limit(url):
    from ecs_ipam.allocator import Owner, PoolAllocator
    from ecs_ipam.config import parse_netconf
    from ecs_ipam.ipam import IPAM

    subnet = "10.80.0.0/22"
    pool = parse_netconf({"cniVersion": "1.1.0", "name": "n", "ipam": {"ipv4-subnet": subnet}}).pools[0]

    def claim(owners):
        def body(tx):
            allocator = PoolAllocator(pool, tx.bucket(subnet))
            allocator.reserve_gateway()
            for owner in owners:
                allocator.allocate(Owner(owner, f"c-{owner}", "eth0"), 0.0)

        return body

    owners = [f"task-{n:03d}" for n in range(502)]
    with EtcdStore(url, "test", timeout=30) as store:
        for start in range(0, len(owners), 30):
            store.transact(claim(owners[start : start + 30]))
        stale = [pair.key for pair in store.bucket(subnet).list() if pair.key.startswith("10.")]
        # What GC did before batching: one transaction for everything, refused by etcd.
        with pytest.raises(StoreError, match="too many operations"):
            store.bucket(subnet).transact(lambda tx: [tx.delete(key) for key in stale])

    valid = [{"containerID": "c-task-000", "ifname": "eth0"}, {"containerID": "c-task-501", "ifname": "eth0"}]
    conf = {"cniVersion": "1.1.0", "name": "n", "ipam": {"ipv4-subnet": subnet}, "cni.dev/valid-attachments": valid}
    with IPAM(url, timeout=30) as ipam:
        released = ipam.gc(conf)

    assert len(released) == len(set(released)) == 500
    with EtcdStore(url, subnet) as pool_store:
        assert [pair.key for pair in pool_store.list("id/")] == ["id/task-000", "id/task-501"]
        assert len(pool_store.list()) == 2 * 2 + 2  # two leases with their index entries, gateway, lastKnownIP


@pytest.mark.parametrize(
    "interfere",
    [
        pytest.param(lambda rival: rival.bucket("b").put("new", b"v"), id="key-appears"),
        pytest.param(lambda rival: rival.bucket("b").put("k", b"changed"), id="key-changes"),
        pytest.param(lambda rival: rival.bucket("b").delete("k"), id="key-leaves"),
    ],
)
@requires_etcd
def test_a_drop_conflicts_with_any_change_to_the_dropped_bucket(store, rival, interfere):
    with store.bucket("b") as b:
        b.put("k", b"v")

        with pytest.raises(KeyModifiedError), store.transaction() as tx:
            tx.drop_bucket("b")
            interfere(rival)
            tx.put("dropped", b"yes")

        assert not store.exists("dropped")
        assert "b" in store.buckets()


@requires_etcd
def test_a_drop_of_a_missing_bucket_conflicts_when_it_is_created(store, rival):
    with pytest.raises(KeyModifiedError), store.transaction() as tx:
        assert tx.drop_bucket("b") is False
        rival.bucket("b").put("k", b"theirs")
        tx.put("dropped", b"no")

    assert rival.bucket("b").get("k").value == b"theirs"


@requires_etcd
def test_a_drop_deletes_the_bucket_range_in_one_operation(store, rival):
    with store.bucket("b") as b:
        for batch in range(4):
            with b.transaction() as tx:
                for i in range(50):
                    tx.put(f"k{batch}{i:02}", b"v")
        assert store.drop_bucket("b") is True
        assert b.list() == []
    assert store.buckets() == []
