"""The etcd v3 backend, selected by a URL: ``etcd://`` (plain) or ``etcds://`` (TLS)
``HOST:PORT[,HOST:PORT...][/PREFIX]``.

One job per module:

* :mod:`.settings`  the URL, and the TLS files and etcd user (arguments or environment)
* :mod:`.http`      one keep-alive HTTP/1.1 connection on :mod:`socket`
* :mod:`.tls`       the TLS context and connections (imported for ``etcds://`` only)
* :mod:`.client`    the gateway client: endpoints and failover, authentication, watches
* :mod:`.token_cache` the opt-in file that keeps an auth token for the next process
* :mod:`.layout`    where buckets, markers and commit keys live under the prefix
* :mod:`.tx`        optimistic transactions, committed as one etcd txn (and settled
                    by their commit key when the answer is lost)
* :mod:`.store`     :class:`EtcdStore`, the :class:`~ecs_ipam.kv.base.Store` on top
"""

from __future__ import annotations

from .layout import escape_bucket, prefix_end, unescape_bucket
from .settings import is_etcd_url, parse_url
from .store import EtcdStore
from .tx import MAX_TXN_OPS, READ_AHEAD_AFTER

__all__ = [
    "EtcdStore",
    "MAX_TXN_OPS",
    "READ_AHEAD_AFTER",
    "escape_bucket",
    "is_etcd_url",
    "parse_url",
    "prefix_end",
    "unescape_bucket",
]
