"""etcd in production shape: TLS both ways, etcd users limited to a prefix.

One real etcd serves the module over TLS only, asks every client for a certificate of
its CA (``--client-cert-auth``), and has authentication on: a root user, and user
``ipam`` whose role reaches only the keys under ``pool/``.  The certificates are made
here with the openssl command line.  Every refusal is checked the way the plugin reports
it (the CNI code and a message that says which) and to leave nothing behind in etcd.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest

from certs import NOT_INSTALLED as NO_OPENSSL
from certs import OPENSSL, CertificateAuthority
from ecs_ipam import kv
from ecs_ipam.errors import INVALID_ENVIRONMENT, IO_FAILURE, StoreError
from ecs_ipam.kv.etcd import EtcdStore
from etcd_server import ETCD, NOT_INSTALLED, EtcdServer, ServerTLS

from . import test_etcd_store as plain

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED),
    pytest.mark.skipif(OPENSSL is None, reason=NO_OPENSSL),
]

# Random, so that finding it anywhere it must not be is never a coincidence.
PASSWORD = f"pw-{uuid.uuid4().hex}"
ROOT_PASSWORD = f"root-{uuid.uuid4().hex}"
POOL = "pool"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory / "ca")
    rogue = CertificateAuthority(directory / "rogue", "another CA")
    return SimpleNamespace(
        ca=ca,
        server=ca.issue("server", "/CN=etcd test server", sans=["IP:127.0.0.1"], server=True),
        client=ca.issue("client", "/O=ecs-ipam/OU=client"),
        host_b=ca.issue("host-b", "/O=ecs-ipam/OU=host-b"),
        named_client=ca.issue("named", "/CN=ipam"),
        rogue=rogue,
        rogue_client=rogue.issue("client", "/O=ecs-ipam/OU=client"),
    )


def secure_server(pki, directory: Path) -> EtcdServer:
    tls = ServerTLS(pki.ca.cert, pki.server.cert, pki.server.key, pki.client.cert, pki.client.key)
    server = EtcdServer(directory, tls=tls)
    server.start()
    server.add_user("ipam", PASSWORD, POOL)
    server.add_user("elsewhere", PASSWORD, "other-pool")
    server.enable_auth(ROOT_PASSWORD)
    return server


@pytest.fixture(scope="module")
def secure(pki, tmp_path_factory):
    server = secure_server(pki, tmp_path_factory.mktemp("secure-etcd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def environ(pki):
    """What an operator exports for the plugin."""
    return {
        "IPAM_ETCD_CACERT": str(pki.ca.cert),
        "IPAM_ETCD_CERT": str(pki.client.cert),
        "IPAM_ETCD_KEY": str(pki.client.key),
        "IPAM_ETCD_USER": "ipam",
        "IPAM_ETCD_PASSWORD": PASSWORD,
    }


@pytest.fixture
def pool_prefix():
    return f"{POOL}/test-{uuid.uuid4().hex}"


@pytest.fixture
def url(secure, pool_prefix):
    return f"{secure.url}/{pool_prefix}"


@pytest.fixture
def store(url, environ):
    with EtcdStore(url, "test", environ=environ) as fresh:
        yield fresh


@pytest.fixture
def rival(url, environ):
    with EtcdStore(url, "test", environ=environ) as other:
        yield other


class TestSecureEtcdStore(plain.TestEtcdStore):
    """The whole store contract over etcds://, as user ipam."""


# -- it works, and only under the user's prefix ------------------------------------------------------


def test_pairs_land_under_the_prefix_over_tls_as_the_user(secure, url, pool_prefix, environ):
    with kv.open_store(url, bucket="169.254.172.0/22", environ=environ) as store:
        store.put("lastKnownIP", b"v")

    keys = secure.keys(pool_prefix)
    assert keys[0].startswith(f"{pool_prefix}/c/")  # the commit key
    assert keys[1:] == [f"{pool_prefix}/d/169.254.172.0%2F22/lastKnownIP", f"{pool_prefix}/m/169.254.172.0%2F22"]
    assert kv.list_buckets(
        url, **{name: environ[f"IPAM_ETCD_{name.upper()}"] for name in ("cacert", "cert", "key", "user", "password")}
    ) == ["169.254.172.0/22"]


def test_keyword_arguments_override_the_environment(url, pki, environ):
    wrong = {**environ, "IPAM_ETCD_PASSWORD": "wrong", "IPAM_ETCD_CACERT": "/nonexistent"}
    with kv.open_store(url, environ=wrong, password=PASSWORD, cacert=str(pki.ca.cert)) as store:
        store.put("k", b"v")
        assert store.get("k").value == b"v"


def test_a_user_cannot_reach_outside_its_prefix(secure, environ):
    other = f"other-pool/test-{uuid.uuid4().hex}"
    with (
        pytest.raises(StoreError) as caught,
        EtcdStore(f"{secure.url}/{other}", "test", environ=environ, timeout=3) as store,
    ):
        store.put("k", b"v")

    assert caught.value.code == IO_FAILURE
    assert "refused user 'ipam' access to prefix" in str(caught.value)
    assert "permission denied" in str(caught.value)
    assert secure.keys(other) == []


def test_a_token_etcd_no_longer_accepts_is_replaced(store):
    store.put("k", b"1")
    store._client._token = "a.token.etcd.never.issued"

    store.put("k", b"2")

    assert store.get("k").value == b"2"
    assert store._client._token != "a.token.etcd.never.issued"


def test_a_token_revoked_by_a_password_change_is_not_reused(secure, url, pool_prefix, pki):
    user = f"rotating-{uuid.uuid4().hex[:8]}"
    secure.add_user(user, PASSWORD, POOL)
    environ = {
        "IPAM_ETCD_CACERT": str(pki.ca.cert),
        "IPAM_ETCD_CERT": str(pki.client.cert),
        "IPAM_ETCD_KEY": str(pki.client.key),
        "IPAM_ETCD_USER": user,
        "IPAM_ETCD_PASSWORD": PASSWORD,
    }
    with EtcdStore(url, "test", environ=environ, timeout=5) as store:
        store.put("k", b"1")
        secure.request("/v3/auth/user/changepw", {"name": user, "password": "rotated"})

        with pytest.raises(StoreError) as caught:
            store.put("k", b"2")

    assert caught.value.code == IO_FAILURE
    assert f"refused user {user!r} (etcdserver: authentication failed" in str(caught.value)
    with EtcdStore(url, "test", environ={**environ, "IPAM_ETCD_PASSWORD": "rotated"}) as store:
        assert store.get("k").value == b"1"


def test_tokens_lost_in_an_etcd_restart_are_replaced(secure, url, environ):
    with EtcdStore(url, "test", environ=environ, timeout=20) as store:
        store.put("k", b"1")
        token = store._client._token
        secure.stop()
        secure.start()  # etcd's simple tokens live in its memory only

        store.put("k", b"2")

        assert store.get("k").value == b"2"
        assert store._client._token not in (None, token)


# -- refused cleanly -----------------------------------------------------------------------------


def without(environ: dict, *names: str) -> dict:
    return {name: value for name, value in environ.items() if name not in names}


REFUSALS = {
    "wrong-password": (
        lambda env, pki: {**env, "IPAM_ETCD_PASSWORD": "not-the-password"},
        None,
        IO_FAILURE,
        "refused user 'ipam' (etcdserver: authentication failed, invalid user ID or password); "
        "check IPAM_ETCD_USER and IPAM_ETCD_PASSWORD",
    ),
    "no-user": (
        lambda env, pki: without(env, "IPAM_ETCD_USER", "IPAM_ETCD_PASSWORD"),
        None,
        IO_FAILURE,
        "requires a user (etcdserver: permission denied): set IPAM_ETCD_USER and IPAM_ETCD_PASSWORD",
    ),
    "no-client-certificate": (
        lambda env, pki: without(env, "IPAM_ETCD_CERT", "IPAM_ETCD_KEY"),
        None,
        IO_FAILURE,
        "requires a client certificate: set IPAM_ETCD_CERT and IPAM_ETCD_KEY",
    ),
    "certificate-of-another-ca": (
        lambda env, pki: {
            **env,
            "IPAM_ETCD_CERT": str(pki.rogue_client.cert),
            "IPAM_ETCD_KEY": str(pki.rogue_client.key),
        },
        None,
        IO_FAILURE,
        "rejected the client certificate (sslv3 alert bad certificate); "
        "check IPAM_ETCD_CERT against the CA etcd trusts",
    ),
    "certificate-with-a-common-name": (
        lambda env, pki: {
            **env,
            "IPAM_ETCD_CERT": str(pki.named_client.cert),
            "IPAM_ETCD_KEY": str(pki.named_client.key),
        },
        None,
        IO_FAILURE,
        "refused the client certificate: with authentication on, its JSON gateway refuses certificates "
        "that have a Common Name; issue IPAM_ETCD_CERT without one (a subject such as /O=ecs-ipam)",
    ),
    "untrusted-server": (
        lambda env, pki: {**env, "IPAM_ETCD_CACERT": str(pki.rogue.cert)},
        None,
        IO_FAILURE,
        "is not trusted: its certificate failed verification (unable to get local issuer certificate); "
        "check IPAM_ETCD_CACERT and the host name in the URL",
    ),
    "system-trust-store": (
        lambda env, pki: without(env, "IPAM_ETCD_CACERT"),
        None,
        IO_FAILURE,
        "is not trusted: its certificate failed verification (unable to get local issuer certificate)",
    ),
    "host-name-not-in-certificate": (
        lambda env, pki: env,
        lambda url: url.replace("127.0.0.1", "localhost"),
        IO_FAILURE,
        "is not trusted: its certificate failed verification (Hostname mismatch, certificate is not "
        "valid for 'localhost'.)",
    ),
    "ca-file-missing": (
        lambda env, pki: {**env, "IPAM_ETCD_CACERT": "/nonexistent/ca.pem"},
        None,
        INVALID_ENVIRONMENT,
        "IPAM_ETCD_CACERT '/nonexistent/ca.pem' cannot be read: No such file or directory",
    ),
    "plain-url-on-the-tls-port": (
        lambda env, pki: without(env, "IPAM_ETCD_CACERT", "IPAM_ETCD_CERT", "IPAM_ETCD_KEY"),
        lambda url: url.replace("etcds://", "etcd://"),
        IO_FAILURE,
        "serves TLS: use etcds://",
    ),
    "certificates-for-a-plain-url": (
        lambda env, pki: env,
        lambda url: url.replace("etcds://", "etcd://"),
        INVALID_ENVIRONMENT,
        "IPAM_ETCD_CACERT, IPAM_ETCD_CERT, IPAM_ETCD_KEY set for a plain etcd:// URL; use etcds:// for TLS",
    ),
    "key-without-certificate": (
        lambda env, pki: without(env, "IPAM_ETCD_CERT"),
        None,
        INVALID_ENVIRONMENT,
        "IPAM_ETCD_KEY is set but IPAM_ETCD_CERT is not",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_the_plugin_is_refused_cleanly(secure, pki, environ, url, pool_prefix, case):
    from plugin import netconf, run_plugin

    change_environ, change_url, code, message = REFUSALS[case]
    env = change_environ(environ, pki)
    target = change_url(url) if change_url else url
    unset = {name: None for name in environ if name not in env}
    log = Path(secure.directory) / f"plugin-{uuid.uuid4().hex}.log"

    returncode, result, stderr = run_plugin(
        "ADD",
        netconf("task-1"),
        {**env, **unset, "IPAM_DB_CONNECTION_TIMEOUT": "5s", "ECS_CNI_LOG_FILE": str(log), "ECS_CNI_LOGLEVEL": "debug"},
        target,
    )

    assert (returncode, result["code"], stderr) == (1, code, ""), result
    assert message in result["msg"]
    assert secure.keys(pool_prefix) == []
    assert PASSWORD not in result["msg"] and PASSWORD not in log.read_text()


def test_the_password_is_in_no_message_and_no_repr(url, environ):
    wrong = {**environ, "IPAM_ETCD_PASSWORD": PASSWORD + "x"}
    with pytest.raises(StoreError) as caught, EtcdStore(url, "test", environ=wrong, timeout=3) as store:
        store.put("k", b"v")
    with EtcdStore(url, "test", environ=environ) as store:
        shown = [repr(store._client.__dict__), repr(vars(store))]

    assert PASSWORD not in str(caught.value)
    assert all(PASSWORD not in text for text in shown)


def test_tools_take_the_settings_from_the_environment_not_arguments(secure, url, pool_prefix, environ):
    with kv.open_store(url, bucket="b", environ=environ) as store:
        store.put("k", b"v")

    listing = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "dump_db.py"), "--db", url],
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    refused = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "dump_db.py"), "--db", url],
        env={**os.environ, **environ, "IPAM_ETCD_PASSWORD": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout.split() == ["b", "1", "entry"]
    assert refused.returncode == 1
    assert "refused user 'ipam'" in refused.stderr and "wrong" not in refused.stderr


# -- the plugin on two hosts ---------------------------------------------------------------------


def test_plugins_on_two_hosts_share_the_tls_pool(secure, pki, url, pool_prefix, environ):
    from plugin import V4_SUBNET, finish_all, netconf, result_ips, start_together

    # Two hosts, each with a client certificate of its own: half the plugins on each.
    hosts = [environ, {**environ, "IPAM_ETCD_CERT": str(pki.host_b.cert), "IPAM_ETCD_KEY": str(pki.host_b.key)}]
    owners = [f"task-{n:02d}" for n in range(8)]
    runs = [
        ("ADD", netconf(owner), {**hosts[n % 2], "CNI_CONTAINERID": f"c-{owner}"}) for n, owner in enumerate(owners)
    ]
    outcomes = finish_all(start_together(runs, url), timeout=90)

    addresses = {}
    for owner, (code, result, stderr) in zip(owners, outcomes):
        assert (code, stderr) == (0, ""), (owner, result, stderr)
        addresses[owner] = result_ips(result)[0]
    assert len(set(addresses.values())) == len(owners)
    with kv.open_store(url, bucket=V4_SUBNET, read_only=True, environ=environ) as pool:
        for owner, address in addresses.items():
            assert msgpack.unpackb(pool.get(address).value)["id"] == owner

    runs = [("DEL", netconf(owner), {**hosts[n % 2], "CNI_CONTAINERID": ""}) for n, owner in enumerate(owners)]
    assert [code for code, _, _ in finish_all(start_together(runs, url), timeout=90)] == [0] * len(owners)
    with kv.open_store(url, bucket=V4_SUBNET, read_only=True, environ=environ) as pool:
        assert [pair.key for pair in pool.list()] == ["169.254.172.1", "lastKnownIP"]


# -- imports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme, imports_ssl", [("etcd", False), ("etcds", True)])
def test_ssl_is_imported_for_etcds_only(pki, scheme, imports_ssl):
    code = (
        "import sys\n"
        "from ecs_ipam import kv\n"
        f"kv.open_store('{scheme}://127.0.0.1:1/p', environ={{'IPAM_ETCD_CACERT': {str(pki.ca.cert)!r}}}"
        f" if {imports_ssl} else {{}}).close()\n"
        "print('ssl' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(imports_ssl)


# -- the token cache (IPAM_ETCD_TOKEN_CACHE) ---------------------------------------------------------


def authentications(monkeypatch) -> list[str]:
    """Count the /v3/auth/authenticate requests of every client from now on."""
    from ecs_ipam.kv.etcd.client import Client

    done: list[str] = []
    authenticate = Client._authenticate

    def counted(self, deadline):
        done.append(self.user)
        return authenticate(self, deadline)

    monkeypatch.setattr(Client, "_authenticate", counted)
    return done


def put_once(url, environ, value: bytes = b"v") -> None:
    with EtcdStore(url, "test", environ=environ) as store:
        store.put("k", value)


def test_a_kept_token_spares_the_next_process_its_authentication(url, environ, tmp_path, monkeypatch):
    cache = tmp_path / "token"
    cached = {**environ, "IPAM_ETCD_TOKEN_CACHE": str(cache)}
    done = authentications(monkeypatch)

    put_once(url, cached)
    assert len(done) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    kept = json.loads(cache.read_text())
    assert kept["user"] == "ipam" and kept["token"]
    assert PASSWORD not in cache.read_text()

    put_once(url, cached, b"w")
    put_once(url, cached, b"x")
    assert len(done) == 1  # both reused the token
    assert os.listdir(tmp_path) == ["token"]  # no temporary file left behind


def test_a_kept_token_etcd_refuses_is_replaced(url, environ, tmp_path, monkeypatch):
    cache = tmp_path / "token"
    cached = {**environ, "IPAM_ETCD_TOKEN_CACHE": str(cache)}
    put_once(url, cached)
    kept = json.loads(cache.read_text())
    cache.write_text(json.dumps({**kept, "token": "a.token.etcd.never.issued"}))
    done = authentications(monkeypatch)

    put_once(url, cached, b"w")

    assert len(done) == 1
    assert json.loads(cache.read_text())["token"] not in ("a.token.etcd.never.issued", "")


@pytest.mark.parametrize("mistake", ["others can read it", "another user's token", "a link", "a shared folder"])
def test_a_token_file_that_cannot_be_trusted_is_not_used(url, environ, tmp_path, monkeypatch, mistake):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    cache = folder / "token"
    cached = {**environ, "IPAM_ETCD_TOKEN_CACHE": str(cache)}
    put_once(url, cached)
    if mistake == "others can read it":
        cache.chmod(0o644)
    elif mistake == "another user's token":
        cache.write_text(json.dumps({**json.loads(cache.read_text()), "user": "elsewhere"}))
        cache.chmod(0o600)
    elif mistake == "a link":
        (folder / "real").write_bytes(cache.read_bytes())
        (folder / "real").chmod(0o600)
        cache.unlink()
        cache.symlink_to(folder / "real")
    else:
        folder.chmod(0o777)
    done = authentications(monkeypatch)

    put_once(url, cached, b"w")

    assert len(done) == 1
    if mistake == "a shared folder":
        folder.chmod(0o700)  # nothing was written there: the old file is unchanged
        assert not [name for name in os.listdir(folder) if name != "token"]
