"""The behaviour every kv backend owes its callers, written once and run unchanged.

A backend's test module subclasses :class:`StoreContract` and provides one fixture,
``store``: a fresh :class:`ecs_ipam.kv.Store` bound to bucket ``"test"`` of an empty
database.  Nothing here knows which backend it runs against.

Every error is asserted twice: as the specific class the API documents, and as a
:class:`ecs_ipam.errors.StoreError`, which is what the plugin's entry point turns into a
CNI error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ecs_ipam.errors import (
    CallNotSupportedError,
    InvalidArgumentError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    StoreError,
)
from ecs_ipam.kv import KVPair

# Keys in the order every backend must list them: by code point, which for UTF-8 is
# also byte order (LMDB compares bytes).
SORTED_KEYS = ["a", "b/1", "b/10", "b/2", "ba", "z", "\u00e9t\u00e9", "\u9375", "\U0001f600"]

INVALID_KEYS = [
    pytest.param("", id="empty"),
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param(b"key", id="bytes"),
    pytest.param("k" * 512, id="512-ascii-bytes"),
    pytest.param("\u00e9" * 256, id="512-utf8-bytes"),
    pytest.param("\ud800", id="lone-surrogate"),
]

INVALID_VALUES = [
    pytest.param("text", id="str"),
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param([1, 2], id="list"),
]


@contextmanager
def raises_store_error(kind: type[Exception]) -> Iterator[pytest.ExceptionInfo]:
    """Like ``pytest.raises(kind)``, and also insist the error is a StoreError."""
    with pytest.raises(kind) as caught:
        yield caught
    assert isinstance(caught.value, StoreError), f"{caught.value!r} is not a StoreError"


class Abort(Exception):
    """Raised inside a transaction block to make it roll back."""


class StoreContract:
    """Tests run against every backend; see the module docstring for the fixture."""

    # A backend that implements watches (etcd) sets these and tests them itself.
    supports_watch = False
    supports_locks = False

    # -- put / get / exists ---------------------------------------------------------------

    def test_get_returns_what_put_stored(self, store):
        store.put("greeting", b"hello")

        pair = store.get("greeting")

        assert isinstance(pair, KVPair)
        assert (pair.key, pair.value) == ("greeting", b"hello")
        assert isinstance(pair.last_index, int) and pair.last_index > 0

    def test_exists_tells_present_from_absent(self, store):
        store.put("present", b"1")

        assert store.exists("present") is True
        assert store.exists("absent") is False

    def test_find_in_a_transaction_returns_the_pair_or_none(self, store):
        store.put("k", b"v")
        expected = store.get("k")

        with store.transaction(write=False) as tx:
            assert tx.find("k") == expected
            assert tx.find("absent") is None
            with raises_store_error(InvalidArgumentError):
                tx.find("")

    def test_get_of_missing_key_raises_key_not_found(self, store):
        with raises_store_error(KeyNotFoundError) as caught:
            store.get("absent")

        assert isinstance(caught.value, LookupError)
        assert str(caught.value) == "key not found: absent"

    def test_overwrite_replaces_value_and_increases_last_index(self, store):
        store.put("k", b"first")
        first = store.get("k")

        store.put("k", b"second")
        second = store.get("k")

        assert second.value == b"second"
        assert second.last_index > first.last_index

    def test_last_index_increases_on_every_write_of_a_key(self, store):
        indexes = []
        for value in (b"1", b"2", b"3", b"4"):
            store.put("k", value)
            indexes.append(store.get("k").last_index)

        assert indexes == sorted(set(indexes))

    def test_empty_value_is_a_value(self, store):
        store.put("empty", b"")

        assert store.get("empty").value == b""
        assert store.exists("empty")

    def test_bytearray_and_memoryview_are_stored_as_bytes(self, store):
        store.put("ba", bytearray(b"\x01\x02"))
        store.put("mv", memoryview(b"\x03\x04"))

        assert store.get("ba").value == b"\x01\x02"
        assert type(store.get("ba").value) is bytes
        assert store.get("mv").value == b"\x03\x04"

    def test_non_ascii_keys_and_binary_values_round_trip(self, store):
        pairs = {
            "\u043a\u043b\u044e\u0447": bytes(range(256)),
            "\u952e/\U0001f600": b"\x00" * 1000,
            "nul\x00inside": b"\xff\xfe\x00",
            "large": bytes(range(256)) * 400,
        }
        for key, value in pairs.items():
            store.put(key, value)

        assert {key: store.get(key).value for key in pairs} == pairs
        assert {pair.key: pair.value for pair in store.list()} == pairs

    def test_longest_key_is_accepted(self, store):
        ascii_key = "k" * 511
        utf8_key = "\u00e9" * 255 + "k"  # 511 bytes in UTF-8

        store.put(ascii_key, b"a")
        store.put(utf8_key, b"u")

        assert store.get(ascii_key).value == b"a"
        assert store.get(utf8_key).value == b"u"

    # -- list -----------------------------------------------------------------------------

    def test_list_is_sorted_by_key(self, store):
        for key in reversed(SORTED_KEYS):
            store.put(key, key.encode("utf-8"))

        listed = store.list()

        assert [pair.key for pair in listed] == SORTED_KEYS
        assert [pair.value for pair in listed] == [key.encode("utf-8") for key in SORTED_KEYS]

    def test_list_keeps_only_keys_with_the_prefix(self, store):
        for key in SORTED_KEYS:
            store.put(key, b"v")

        assert [pair.key for pair in store.list("b/")] == ["b/1", "b/10", "b/2"]
        assert [pair.key for pair in store.list("b")] == ["b/1", "b/10", "b/2", "ba"]
        assert [pair.key for pair in store.list("b/1")] == ["b/1", "b/10"]

    def test_list_returns_the_same_pairs_as_get(self, store):
        store.put("a", b"1")
        store.put("b", b"2")
        store.put("a", b"3")

        assert store.list() == [store.get("a"), store.get("b")]

    def test_list_without_match_is_empty(self, store):
        assert store.list() == []
        assert store.list("x") == []

        store.put("a/1", b"v")

        assert store.list("b") == []
        assert store.list("a/1/") == []
        assert store.list("a/10") == []

    def test_list_of_empty_prefix_is_everything(self, store):
        for key in SORTED_KEYS:
            store.put(key, b"v")

        assert [pair.key for pair in store.list("")] == SORTED_KEYS
        assert store.list("") == store.list()

    # -- delete ---------------------------------------------------------------------------

    def test_delete_removes_the_key(self, store):
        store.put("doomed", b"1")
        store.put("kept", b"2")

        store.delete("doomed")

        assert not store.exists("doomed")
        with raises_store_error(KeyNotFoundError):
            store.get("doomed")
        assert [pair.key for pair in store.list()] == ["kept"]

    def test_delete_of_missing_key_is_not_an_error(self, store):
        store.put("other", b"1")

        store.delete("absent")

        assert [pair.key for pair in store.list()] == ["other"]

    def test_delete_tree_removes_only_the_prefix(self, store):
        for key in ("a/1", "a/2", "a/2/x", "ab", "b/1", "a"):
            store.put(key, b"v")

        store.delete_tree("a/")

        assert [pair.key for pair in store.list()] == ["a", "ab", "b/1"]

    def test_delete_tree_of_empty_prefix_empties_the_bucket(self, store):
        for key in SORTED_KEYS:
            store.put(key, b"v")

        store.delete_tree("")

        assert store.list() == []

    def test_delete_tree_without_match_changes_nothing(self, store):
        store.put("a", b"1")
        before = store.list()

        store.delete_tree("zzz")

        assert store.list() == before

    # -- atomic_put -----------------------------------------------------------------------

    def test_atomic_put_without_previous_creates(self, store):
        created = store.atomic_put("claim", b"mine", None)

        assert (created.key, created.value) == ("claim", b"mine")
        assert store.get("claim") == created

    def test_atomic_put_without_previous_refuses_an_existing_key(self, store):
        store.put("claim", b"theirs")
        before = store.get("claim")

        with raises_store_error(KeyExistsError) as caught:
            store.atomic_put("claim", b"mine", None)

        assert str(caught.value) == "key already exists: claim"
        assert store.get("claim") == before

    def test_compare_and_swap_with_current_pair_succeeds(self, store):
        store.put("k", b"old")
        current = store.get("k")

        swapped = store.atomic_put("k", b"new", current)

        assert (swapped.key, swapped.value) == ("k", b"new")
        assert swapped.last_index > current.last_index
        assert store.get("k") == swapped

    def test_compare_and_swap_chains_on_the_returned_pair(self, store):
        pair = store.atomic_put("counter", b"0", None)
        for n in range(1, 6):
            pair = store.atomic_put("counter", str(n).encode(), pair)

        assert store.get("counter").value == b"5"

    def test_compare_and_swap_with_stale_pair_raises_key_modified(self, store):
        store.put("k", b"old")
        stale = store.get("k")
        store.put("k", b"someone else's")
        current = store.get("k")

        with raises_store_error(KeyModifiedError) as caught:
            store.atomic_put("k", b"mine", stale)

        assert str(caught.value) == "key was modified: k"
        assert store.get("k") == current

    def test_compare_and_swap_after_delete_and_recreate_raises_key_modified(self, store):
        # A pair read before a delete must not match the key created again afterwards.
        store.put("k", b"v")
        stale = store.get("k")
        store.delete("k")
        store.put("k", b"v")

        with raises_store_error(KeyModifiedError):
            store.atomic_put("k", b"mine", stale)

        assert store.get("k").value == b"v"

    def test_compare_and_swap_on_deleted_key_raises_key_not_found(self, store):
        store.put("k", b"v")
        pair = store.get("k")
        store.delete("k")

        with raises_store_error(KeyNotFoundError):
            store.atomic_put("k", b"mine", pair)

        assert not store.exists("k")

    # -- atomic_delete --------------------------------------------------------------------

    def test_atomic_delete_with_current_pair_deletes(self, store):
        store.put("k", b"v")

        store.atomic_delete("k", store.get("k"))

        assert not store.exists("k")

    def test_atomic_delete_with_stale_pair_raises_key_modified(self, store):
        store.put("k", b"v1")
        stale = store.get("k")
        store.put("k", b"v2")

        with raises_store_error(KeyModifiedError):
            store.atomic_delete("k", stale)

        assert store.get("k").value == b"v2"

    def test_atomic_delete_of_missing_key_raises_key_not_found(self, store):
        store.put("k", b"v")
        pair = store.get("k")
        store.delete("k")

        with raises_store_error(KeyNotFoundError):
            store.atomic_delete("k", pair)

    def test_atomic_delete_needs_a_pair(self, store):
        store.put("k", b"v")

        with raises_store_error(InvalidArgumentError):
            store.atomic_delete("k", None)

        assert store.exists("k")

    # -- buckets --------------------------------------------------------------------------

    def test_same_key_in_another_bucket_is_another_pair(self, store):
        with store.bucket("other") as other:
            store.put("k", b"in test")
            other.put("k", b"in other")
            other.put("only-other", b"x")

            assert store.get("k").value == b"in test"
            assert other.get("k").value == b"in other"
            assert [pair.key for pair in store.list()] == ["k"]
            assert not store.exists("only-other")
            assert other.bucket_name == "other"

    def test_delete_tree_in_one_bucket_leaves_the_other(self, store):
        with store.bucket("other") as other:
            for bucket in (store, other):
                bucket.put("a/1", b"v")
                bucket.put("a/2", b"v")

            store.delete_tree("a/")
            other.delete("a/2")

            assert store.list() == []
            assert [pair.key for pair in other.list()] == ["a/1"]

    def test_bucket_of_a_bucket_reaches_the_same_data(self, store):
        with store.bucket("other") as other, other.bucket("test") as back:
            store.put("k", b"v")

            assert back.get("k") == store.get("k")

    def test_buckets_lists_the_buckets_written(self, store):
        assert store.buckets() == []

        store.put("k", b"v")
        with store.bucket("zeta") as zeta, store.bucket("169.254.172.0/22") as subnet:
            zeta.put("k", b"v")
            subnet.put("lastKnownIP", b"v")

            expected = ["169.254.172.0/22", "test", "zeta"]
            assert store.buckets() == expected
            assert zeta.buckets() == expected

    def test_a_transaction_lists_the_buckets_it_sees_and_creates(self, store):
        store.put("k", b"v")
        with store.transaction() as tx:
            assert tx.buckets() == ["test"]
            tx.bucket("10.0.0.0/24").put("10.0.0.2", b"v")
            tx.bucket("never").find("k")
            assert tx.buckets() == ["10.0.0.0/24", "test"]
            assert tx.bucket("zeta").buckets() == ["10.0.0.0/24", "test"]
        with store.transaction(write=False) as tx:
            assert tx.buckets() == ["10.0.0.0/24", "test"] == store.buckets()

    def test_an_aborted_transaction_leaves_no_bucket_listed(self, store):
        store.put("k", b"v")
        with pytest.raises(Abort), store.transaction() as tx:
            tx.bucket("new").put("k", b"v")
            assert tx.buckets() == ["new", "test"]
            raise Abort

        with store.transaction(write=False) as tx:
            assert tx.buckets() == ["test"]

    def test_reading_or_deleting_in_an_unwritten_bucket_does_not_create_it(self, store):
        store.put("k", b"v")
        with store.bucket("never") as never:
            assert never.list() == []
            assert not never.exists("k")
            never.delete("k")
            never.delete_tree("")

        assert store.buckets() == ["test"]

    def test_bucket_names_are_checked_like_keys(self, store):
        for name in ("", None, "b" * 512):
            with raises_store_error(InvalidArgumentError):
                store.bucket(name)
            with raises_store_error(InvalidArgumentError), store.transaction() as tx:
                tx.bucket(name)

    def test_bucket_name_with_nul_is_refused(self, store):
        # Some backends keep bucket names as C strings: "a\0b" would silently be "a".
        with raises_store_error(InvalidArgumentError) as caught:
            store.bucket("a\x00b")
        assert str(caught.value) == "bucket name must not contain NUL"
        with raises_store_error(InvalidArgumentError), store.transaction() as tx:
            tx.bucket("a\x00b").put("k", b"v")

        assert store.buckets() == []

    # -- dropping a bucket -----------------------------------------------------------------

    def test_drop_bucket_removes_the_bucket_and_its_pairs(self, store):
        store.put("k", b"v")
        with store.bucket("gone") as gone:
            gone.put("a", b"1")
            gone.put("b", b"2")

            assert store.drop_bucket("gone") is True

            assert store.buckets() == ["test"]
            assert gone.list() == []
            assert not gone.exists("a")
        assert store.get("k").value == b"v"

    def test_drop_bucket_of_an_emptied_bucket_removes_it(self, store):
        with store.bucket("gone") as gone:
            gone.put("a", b"1")
            gone.delete("a")
            assert "gone" in store.buckets()

            assert store.drop_bucket("gone") is True

        assert store.buckets() == []

    def test_drop_of_a_missing_bucket_changes_nothing(self, store):
        store.put("k", b"v")

        assert store.drop_bucket("never") is False
        assert store.drop_bucket("never") is False

        assert store.buckets() == ["test"]
        assert store.get("k").value == b"v"

    def test_a_dropped_bucket_can_be_created_again(self, store):
        with store.bucket("again") as again:
            again.put("old", b"1")
            store.drop_bucket("again")

            again.put("new", b"2")

            assert [pair.key for pair in again.list()] == ["new"]
        assert store.buckets() == ["again"]

    def test_a_transaction_sees_its_own_drop_and_can_write_the_bucket_again(self, store):
        with store.bucket("b") as b:
            b.put("old", b"1")
            with store.transaction() as tx:
                tx.bucket("b").put("mine", b"2")
                assert tx.drop_bucket("b") is True
                assert tx.buckets() == []
                assert tx.bucket("b").list() == []
                assert tx.bucket("b").find("old") is None
                tx.bucket("b").put("new", b"3")
                assert tx.buckets() == ["b"]

            assert [pair.key for pair in b.list()] == ["new"]

    def test_drop_commits_with_the_rest_of_the_transaction(self, store):
        with store.bucket("b") as b:
            b.put("last", b"1")
            with store.transaction() as tx:
                tx.bucket("b").delete("last")
                tx.put("moved", b"1")
                tx.drop_bucket("b")

            assert store.buckets() == ["test"]
            assert store.get("moved").value == b"1"

    def test_an_aborted_drop_keeps_the_bucket(self, store):
        store.put("k", b"v")
        with store.bucket("kept") as kept:
            kept.put("a", b"1")
            before = kept.list()

            with pytest.raises(Abort), store.transaction() as tx:
                tx.drop_bucket("kept")
                tx.drop_bucket("test")
                raise Abort

            assert store.buckets() == ["kept", "test"]
            assert kept.list() == before
            assert store.get("k").value == b"v"
            kept.put("b", b"2")
            assert [pair.key for pair in kept.list()] == ["a", "b"]

    def test_read_transaction_refuses_drop(self, store):
        store.put("k", b"v")
        with raises_store_error(StoreError), store.transaction(write=False) as tx:
            tx.drop_bucket("test")

        assert store.get("k").value == b"v"

    def test_drop_bucket_checks_the_name(self, store):
        with raises_store_error(InvalidArgumentError), store.transaction() as tx:
            tx.drop_bucket("")

    # -- transactions ---------------------------------------------------------------------

    def test_transaction_commits_every_bucket_together(self, store):
        with store.transaction() as tx:
            tx.put("k", b"1")
            tx.bucket("other").put("k", b"2")

        with store.bucket("other") as other:
            assert store.get("k").value == b"1"
            assert other.get("k").value == b"2"

    def test_exception_in_transaction_rolls_back_every_bucket(self, store):
        store.put("kept", b"old")
        store.put("deleted", b"old")
        with store.bucket("other") as other:
            other.put("kept", b"old")
        before = store.list()

        with pytest.raises(Abort), store.transaction() as tx:
            tx.put("kept", b"new")
            tx.put("created", b"new")
            tx.delete("deleted")
            tx.bucket("other").put("kept", b"new")
            tx.bucket("other").put("created", b"new")
            tx.bucket("fresh").put("created", b"new")
            raise Abort()

        with store.bucket("other") as other:
            assert store.list() == before
            assert [(p.key, p.value) for p in other.list()] == [("kept", b"old")]
        assert store.buckets() == ["other", "test"]

    def test_error_raised_by_an_operation_rolls_back_the_transaction(self, store):
        store.put("claimed", b"theirs")

        with raises_store_error(KeyExistsError), store.transaction() as tx:
            tx.put("first", b"1")
            tx.atomic_put("claimed", b"mine", None)

        assert not store.exists("first")
        assert store.get("claimed").value == b"theirs"

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

        assert store.get("k") == written

    def test_transaction_sees_a_write_of_the_same_key_as_a_new_index(self, store):
        with store.transaction() as tx:
            first = tx.put("k", b"1")
            second = tx.atomic_put("k", b"2", first)

            with raises_store_error(KeyModifiedError):
                tx.atomic_put("k", b"3", first)

        assert second.last_index > first.last_index
        assert store.get("k") == second

    def test_transact_returns_the_value_of_its_body(self, store):
        store.put("a", b"1")

        def claim(tx):
            tx.put("b", b"2")
            return [pair.key for pair in tx.list()]

        assert store.transact(claim) == ["a", "b"]
        assert store.transact(lambda tx: tx.get("b").value, write=False) == b"2"

    def test_transact_rolls_back_when_its_body_raises(self, store):
        def fail(tx):
            tx.put("k", b"v")
            raise Abort()

        with pytest.raises(Abort):
            store.transact(fail)

        assert not store.exists("k")

    @pytest.mark.parametrize(
        "write",
        [
            pytest.param(lambda tx: tx.put("new", b"v"), id="put"),
            pytest.param(lambda tx: tx.delete("k"), id="delete"),
            pytest.param(lambda tx: tx.delete_tree(""), id="delete_tree"),
            pytest.param(lambda tx: tx.atomic_put("new", b"v", None), id="atomic_put"),
            pytest.param(lambda tx: tx.atomic_delete("k", tx.get("k")), id="atomic_delete"),
            pytest.param(lambda tx: tx.bucket("other").put("new", b"v"), id="other-bucket"),
        ],
    )
    def test_read_transaction_refuses_writes(self, store, write):
        store.put("k", b"v")
        before = store.list()

        with raises_store_error(StoreError) as caught, store.transaction(write=False) as tx:
            write(tx)

        assert str(caught.value) == "write in a read-only transaction"
        assert store.list() == before
        assert store.buckets() == ["test"]

    def test_read_transaction_reads(self, store):
        store.put("k", b"v")

        with store.transaction(write=False) as tx:
            assert tx.get("k").value == b"v"
            assert [pair.key for pair in tx.list()] == ["k"]
            assert tx.bucket("other").list() == []

    # -- argument checking ----------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS)
    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda store, key: store.put(key, b"v"), id="put"),
            pytest.param(lambda store, key: store.get(key), id="get"),
            pytest.param(lambda store, key: store.exists(key), id="exists"),
            pytest.param(lambda store, key: store.delete(key), id="delete"),
            pytest.param(lambda store, key: store.atomic_put(key, b"v", None), id="atomic_put"),
        ],
    )
    def test_invalid_key_is_refused(self, store, call, key):
        with raises_store_error(InvalidArgumentError) as caught:
            call(store, key)

        assert isinstance(caught.value, ValueError)
        assert store.buckets() == []

    def test_invalid_key_is_refused_by_atomic_delete(self, store):
        pair = store.atomic_put("k", b"v", None)

        with raises_store_error(InvalidArgumentError):
            store.atomic_delete("", pair)

    @pytest.mark.parametrize("prefix", [None, 42, b"a", "\ud800"])
    def test_invalid_prefix_is_refused(self, store, prefix):
        store.put("a", b"v")

        with raises_store_error(InvalidArgumentError):
            store.list(prefix)
        with raises_store_error(InvalidArgumentError):
            store.delete_tree(prefix)

        assert store.exists("a")

    @pytest.mark.parametrize("value", INVALID_VALUES)
    def test_non_bytes_value_is_refused(self, store, value):
        with raises_store_error(InvalidArgumentError) as caught:
            store.put("k", value)
        assert isinstance(caught.value, ValueError)
        with raises_store_error(InvalidArgumentError):
            store.atomic_put("k", value, None)

        assert not store.exists("k")

    def test_key_error_messages_name_the_problem(self, store):
        with raises_store_error(InvalidArgumentError) as caught:
            store.put("k" * 600, b"v")
        assert str(caught.value) == "key is 600 bytes long; the limit is 511"

        with raises_store_error(InvalidArgumentError) as caught:
            store.put(7, b"v")
        assert str(caught.value) == "key must be str, not int"

        with raises_store_error(InvalidArgumentError) as caught:
            store.put("k", "v")
        assert str(caught.value) == "value must be bytes, not str"

    # -- unsupported calls and closing ----------------------------------------------------

    def test_watch_is_not_supported(self, store):
        if self.supports_watch:
            pytest.skip("this backend implements watch")
        with raises_store_error(CallNotSupportedError) as caught:
            store.watch("k")
        assert isinstance(caught.value, NotImplementedError)
        with raises_store_error(CallNotSupportedError):
            store.watch_tree("prefix/")

    def test_new_lock_is_not_supported(self, store):
        if self.supports_locks:
            pytest.skip("this backend implements locks")
        with raises_store_error(CallNotSupportedError) as caught:
            store.new_lock("k", ttl=5)
        assert isinstance(caught.value, NotImplementedError)

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda store: store.get("k"), id="get"),
            pytest.param(lambda store: store.put("k", b"v"), id="put"),
            pytest.param(lambda store: store.list(), id="list"),
            pytest.param(lambda store: store.buckets(), id="buckets"),
            pytest.param(lambda store: store.bucket("other"), id="bucket"),
        ],
    )
    def test_closed_store_refuses_calls(self, store, call):
        store.put("k", b"v")
        store.close()

        with raises_store_error(StoreError):
            call(store)

    def test_closing_one_bucket_leaves_the_others_open(self, store):
        other = store.bucket("other")
        other.put("k", b"v")
        other.close()
        other.close()  # closing twice is harmless

        with store.bucket("other") as again:
            assert again.get("k").value == b"v"
        store.put("k", b"v")
        assert store.get("k").value == b"v"
