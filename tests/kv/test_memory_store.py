"""The store contract, run against the in-memory backend."""

import pytest

from ecs_ipam.kv.memory import MemoryStore

from .contract import StoreContract


@pytest.fixture
def store():
    with MemoryStore("test") as fresh:
        yield fresh


class TestMemoryStore(StoreContract):
    pass
