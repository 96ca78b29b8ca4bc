"""The named-database handles of one LMDB environment, shared by the threads of a process.

LMDB keeps one table of handles per environment, and its rules for it are strict:

* ``mdb_dbi_open`` must not run in two transactions at once, and a transaction that
  opened a handle must end before any other transaction opens one;
* a handle is usable only in transactions begun after the one that opened it ended,
  and only if that was a write transaction that committed (an abort closes them, and
  py-lmdb ends every read transaction without keeping them);
* dropping a bucket closes its handle at once, and the next bucket opened may get the
  same handle number.

Broken, they cost a writer's commit (``MDB_BAD_DBI``) or a reader's answer
(``Invalid argument``) whenever one thread opened a bucket while another thread did.
So: a transaction opens handles only while it holds :attr:`HandleTable.lock`, which it
keeps until it ends; handles are shared once that transaction has committed, stamped
with a generation; and a transaction uses a shared handle only if it is no newer than the
transaction.  A transaction that began before the table changed and needs a handle it
cannot use is *stale* (:class:`StaleHandles`): its owner begins it again, or, for a read
that has already answered, tells its caller to run it again.
"""

from __future__ import annotations

import _thread

from ..errors import StoreTimeoutError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lmdb import _Database as Handle


# How long a transaction waits for another one that opens buckets to end.
OPEN_WAIT = 10.0


class StaleHandles(Exception):
    """The transaction began before the handle table changed: it cannot open a handle
    (LMDB would hand it one that clashes with a newer one) nor use the newer ones."""


class TxnHandles:
    """What one transaction knows of the handle table."""

    __slots__ = ("generation", "holds_lock", "opened")

    def __init__(self, generation: int) -> None:
        # The table's generation when the transaction began (read before LMDB began it,
        # so never newer than what the transaction can see).
        self.generation = generation
        self.holds_lock = False
        # Handles opened by this transaction, shared once it ends well.
        self.opened: dict[str, Handle] = {}


class HandleTable:
    def __init__(self) -> None:
        # Reentrant: a thread may nest a transaction inside one that holds it.
        self.lock = _thread.RLock()
        self.generation = 0
        self._shared: dict[str, tuple[Handle, int]] = {}

    def begin(self) -> TxnHandles:
        return TxnHandles(self.generation)

    def usable(self, name: str, txn: TxnHandles) -> Handle | None:
        """The handle of *name* that *txn* may use without opening one, if any."""
        handle = txn.opened.get(name)
        if handle is not None:
            return handle
        shared = self._shared.get(name)
        if shared is not None and shared[1] <= txn.generation:
            return shared[0]
        return None

    def enter(self, txn: TxnHandles) -> None:
        """Take the right to open handles (or close one) in *txn*, until :meth:`leave`.

        :raises StaleHandles: the table changed since *txn* began.
        """
        if not txn.holds_lock:
            if not self.lock.acquire(timeout=OPEN_WAIT):
                raise StoreTimeoutError(
                    f"other threads kept buckets of this database opening for {OPEN_WAIT:g}s; "
                    "long transactions that open buckets hold up every other one that does"
                )
            txn.holds_lock = True
        if self.generation != txn.generation:
            raise StaleHandles()

    def leave(self, txn: TxnHandles, ended_well: bool) -> None:
        """*txn* ended: share what it opened if it *ended_well* (LMDB kept its handles),
        and let other transactions open handles again."""
        if not txn.holds_lock:
            return
        if ended_well and txn.opened:
            self.generation += 1
            for name, handle in txn.opened.items():
                self._shared[name] = (handle, self.generation)
        txn.opened = {}
        txn.holds_lock = False
        self.lock.release()

    def is_shared(self, name: str) -> bool:
        return name in self._shared

    def closed(self, name: str, txn: TxnHandles) -> None:
        """LMDB closed the handle of *name* in *txn*, which holds the lock (it dropped the
        bucket): nobody may use the handle, and transactions begun before cannot tell
        its number from a new bucket's.  *txn* itself knows the change it made."""
        txn.opened.pop(name, None)
        self._shared.pop(name, None)
        self.generation += 1
        txn.generation = self.generation

    def clear(self) -> None:
        """The environment was closed and opened again: every handle is gone."""
        self._shared.clear()
        self.generation += 1
