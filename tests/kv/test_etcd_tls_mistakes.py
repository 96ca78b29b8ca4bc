"""Two TLS mistakes that retrying never cures are code 5 at once, with the fix in the
message: an ``etcds://`` URL naming a plain-HTTP port, and a server certificate without
the ``clientAuth`` use (etcd's JSON gateway presents it to etcd itself)."""

from __future__ import annotations

import time

import pytest

from certs import OPENSSL, CertificateAuthority
from ecs_ipam.errors import IO_FAILURE, StoreError
from ecs_ipam.kv.etcd import EtcdStore
from etcd_server import ETCD, NOT_INSTALLED, EtcdServer, ServerTLS

pytestmark = [
    pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED),
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed"),
]


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


def refused_at_once(url: str, **options: str) -> StoreError:
    # A long timeout, so that "at once" means far below it even on a loaded machine: a
    # mistake that were only found out by waiting would take all 60 s.
    started = time.monotonic()
    with pytest.raises(StoreError) as caught, EtcdStore(url, "test", timeout=60, **options) as store:
        store.put("k", b"v")
    assert caught.value.code == IO_FAILURE
    assert time.monotonic() - started < 30  # not the whole timeout
    return caught.value


def test_etcds_on_a_plain_port_says_use_etcd(etcd, ca):
    error = refused_at_once(f"etcds://{etcd.endpoint}/p", cacert=str(ca.cert))
    assert str(error) == f"etcd at {etcd.endpoint} serves plain HTTP: use etcd://"


def test_a_server_certificate_without_client_auth_is_named(ca, tmp_path):
    server_cert = ca.issue("server-only", "/CN=etcd server", sans=["IP:127.0.0.1"], usage="serverAuth")
    client = ca.issue("client", "/O=ecs-ipam/OU=client")
    server = EtcdServer(tmp_path / "etcd", tls=ServerTLS(ca.cert, server_cert.cert, server_cert.key, *client))
    server.launch()
    try:
        deadline = time.monotonic() + 30
        while not server.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)  # /health answers even though the gateway cannot work
        error = refused_at_once(server.url, cacert=str(ca.cert), cert=str(client.cert), key=str(client.key))
    finally:
        server.stop()
    assert "lacks the clientAuth extended key usage" in str(error)
    assert "extendedKeyUsage=serverAuth,clientAuth" in str(error)
