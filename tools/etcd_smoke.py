#!/usr/bin/env python3
"""Check that an etcd serves as an ecs-ipam database, and time what the plugin pays for it.

    python tools/etcd_smoke.py etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX] [--rounds N]

TLS files and the etcd user come from IPAM_ETCD_CACERT, IPAM_ETCD_CERT, IPAM_ETCD_KEY,
IPAM_ETCD_USER and IPAM_ETCD_PASSWORD, as for the plugin.

Works under a scratch prefix of its own below PREFIX (``PREFIX/smoke-<random>``), which
no bucket of the database can reach, and removes every key it wrote there at the end.
Prints, in milliseconds: the import of the kv facade and the etcd backend, the first
open + put + get (connection set-up included, as in a plugin run), then the median of
*N* warm gets, puts, create-only puts and read-modify-write transactions.
Exit code 0 when every step worked, 1 with a message otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ecs_ipam.kv import Tx
    from ecs_ipam.kv.etcd import EtcdStore

if __name__ == "__main__" and not __package__:
    # Run as a script from a checkout: use the package of the same tree, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def median_time(rounds: int, step: Callable[[int], object]) -> float:
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        step(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="etcd_smoke.py", description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("url", help="etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX]")
    parser.add_argument("--rounds", type=int, default=50, help="repetitions of each warm step (default 50)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per operation (default 5)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("etcd://", "etcds://")):
        parser.error("the URL must start with etcd:// or etcds://")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    started = time.perf_counter()
    from ecs_ipam import kv
    from ecs_ipam.kv.etcd import EtcdStore, prefix_end

    imported = time.perf_counter()
    scheme, _, rest = args.url.partition("//")
    base, _, prefix = rest.partition("/")
    scratch = f"{scheme}//{base}/{prefix.strip('/') or 'ecs-ipam'}/smoke-{uuid.uuid4().hex[:12]}"
    try:
        store = kv.open_store(scratch, bucket="smoke", timeout=args.timeout)
        assert isinstance(store, EtcdStore)
    except kv.StoreError as error:
        print(f"etcd_smoke.py: {error}", file=sys.stderr)
        return 1
    try:
        first = time.perf_counter()
        store.put("first", b"1")
        store.get("first")
        done = time.perf_counter()
        print(f"import kv + etcd backend   {milliseconds(imported - started)}")
        print(f"first open + put + get     {milliseconds(done - first)}")

        def increment(tx: Tx) -> None:
            value = int(tx.get("counter").value) + 1
            tx.put("counter", str(value).encode())

        store.put("counter", b"0")
        steps = [
            ("get", lambda n: store.get("first")),
            ("put", lambda n: store.put(f"put/{n}", b"v")),
            ("atomic_put (create)", lambda n: store.atomic_put(f"claim/{n}", b"v", None)),
            ("read-modify-write", lambda n: store.transact(increment)),
        ]
        for name, step in steps:
            print(f"{name:<26} {milliseconds(median_time(args.rounds, step))} (median of {args.rounds})")
        if store.get("counter").value != str(args.rounds).encode():
            print("etcd_smoke.py: the counter lost increments", file=sys.stderr)
            return 1
    except kv.StoreError as error:
        print(f"etcd_smoke.py: {error}", file=sys.stderr)
        return 1
    finally:
        try:
            _remove_scratch(store, prefix_end)
        finally:
            store.close()
    return 0


def _remove_scratch(store: EtcdStore, prefix_end: Callable[[bytes], bytes]) -> None:
    # The scratch prefix also holds bucket markers and commit keys, which no Store
    # method deletes: remove the whole range below it.
    import base64

    client = store._live_client()
    root = client.layout.root
    client.call(
        "/v3/kv/deleterange",
        {"key": base64.b64encode(root).decode(), "range_end": base64.b64encode(prefix_end(root)).decode()},
        time.monotonic() + store.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
