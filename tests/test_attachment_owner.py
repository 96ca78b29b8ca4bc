"""``"owner": "attachment"``: the CNI attachment owns the allocation, for runtimes that send
no id (podman, containerd, cnitool).

Through the embedded API on LMDB and a real etcd, then every command as a process.  The
Go-semantics tests elsewhere run without the key and are unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ecs_ipam import IPAM, kv
from ecs_ipam.errors import (
    IdAlreadyAllocatedError,
    InvalidConfigError,
    InvalidEnvironmentError,
    PoolExhaustedError,
    ReservationMismatchError,
)
from ecs_ipam.pool_store import decode
from plugin import run_plugin

V4 = "10.88.0.0/24"
V6 = "fd00:88::/64"


def conf(version: str = "1.1.0", **ipam: object) -> dict:
    fields: dict = {"type": "ecs-ipam", "owner": "attachment"}
    for key, value in ipam.items():
        if value is None:
            fields.pop(key.replace("_", "-"), None)
        else:
            fields[key.replace("_", "-")] = value
    return {"cniVersion": version, "name": "podman", "ipam": fields}


def dual(**ipam: object) -> dict:
    return conf(ipv4_subnet=V4, ipv6_subnet=V6, **ipam)


def addresses(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


@pytest.fixture
def db(lmdb_or_etcd):
    return lmdb_or_etcd


def contents(db: str) -> dict[str, dict[str, object]]:
    """bucket -> {key: decoded value} of the whole database."""
    found = {}
    for name in kv.list_buckets(db):
        with kv.open_store(db, name, read_only=True) as store:
            found[name] = {pair.key: decode(pair.value) for pair in store.list()}
    return found


def leases(db: str) -> dict[str, tuple[str, str]]:
    """address -> (container id, ifname) of every lease an attachment holds."""
    return {
        key: (value["container_id"], value["ifname"])
        for bucket in contents(db).values()
        for key, value in bucket.items()
        if isinstance(value, dict) and value.get("owner") == "attachment"
    }


# --- ADD --------------------------------------------------------------------------------------


def test_add_records_the_attachment_and_a_repeated_add_answers_the_same(db):
    with IPAM(db, clock=lambda: 1000.0) as ipam:
        first = ipam.add(dual(), "c1", "eth0")
        assert addresses(first) == ["10.88.0.2/24", "fd00:88::2/64"]
        assert ipam.add(dual(), "c1", "eth0") == first  # a retry: never a second address
        assert addresses(ipam.add(dual(), "c1", "eth1")) == ["10.88.0.3/24", "fd00:88::3/64"]
        assert addresses(ipam.add(dual(), "c2", "eth0")) == ["10.88.0.4/24", "fd00:88::4/64"]
    bucket = contents(db)[V4]
    assert bucket["10.88.0.2"] == {
        "id": "",
        "container_id": "c1",
        "ifname": "eth0",
        "allocated_at": 1000.0,
        "owner": "attachment",
    }
    assert bucket["at/c1/eth0"] == "10.88.0.2"
    assert bucket["at/c1/eth1"] == "10.88.0.3"
    assert leases(db) == {
        "10.88.0.2": ("c1", "eth0"),
        "10.88.0.3": ("c1", "eth1"),
        "10.88.0.4": ("c2", "eth0"),
        "fd00:88::2": ("c1", "eth0"),
        "fd00:88::3": ("c1", "eth1"),
        "fd00:88::4": ("c2", "eth0"),
    }


def test_a_repeated_add_completes_a_family_added_since(db):
    with IPAM(db) as ipam:
        assert addresses(ipam.add(conf(ipv4_subnet=V4), "c1", "eth0")) == ["10.88.0.2/24"]
        assert addresses(ipam.add(dual(), "c1", "eth0")) == ["10.88.0.2/24", "fd00:88::2/64"]
        assert addresses(ipam.add(dual(), "c1", "eth0")) == ["10.88.0.2/24", "fd00:88::2/64"]


def test_fixed_addresses_are_allowed_and_answered_again(db):
    fixed = {"ipv4_address": "10.88.0.9/32", "ipv6_address": "fd00:88::9/128"}
    with IPAM(db) as ipam:
        result = ipam.add(dual(**fixed), "c1", "eth0")
        assert addresses(result) == ["10.88.0.9/32", "fd00:88::9/128"]
        assert ipam.add(dual(**fixed), "c1", "eth0") == result
        before = contents(db)
        # The attachment holds .9: another fixed address is not given on top of it.
        with pytest.raises(IdAlreadyAllocatedError, match="attachment"):
            ipam.add(dual(ipv4_address="10.88.0.10/24"), "c1", "eth0")
        assert contents(db) == before
        # Another attachment cannot take the address.
        with pytest.raises(Exception, match="already held") as error:
            ipam.add(dual(**fixed), "c2", "eth0")
        assert error.value.code == 100
        assert contents(db) == before


def test_dual_stack_is_all_or_nothing(db):
    with IPAM(db) as ipam:
        small_v6 = "fd00:89::/126"  # room for two tasks
        ipam.add(conf(ipv4_subnet=V4, ipv6_subnet=small_v6), "c1", "eth0")
        ipam.add(conf(ipv4_subnet=V4, ipv6_subnet=small_v6), "c2", "eth0")
        before = contents(db)
        with pytest.raises(PoolExhaustedError):
            ipam.add(conf(ipv4_subnet=V4, ipv6_subnet=small_v6), "c3", "eth0")
        assert contents(db) == before


def test_an_attachment_and_ids_that_spell_it_never_meet(db):
    """Ids are any text: none can name an attachment's index entry, nor the reverse."""
    with IPAM(db) as ipam:
        ipam.add(conf(ipv4_subnet=V4), "c1", "eth0")
        plain = {"cniVersion": "0.3.0", "ipam": {"type": "ecs-ipam", "ipv4-subnet": V4}}
        for n, owner_id in enumerate(["c1/eth0", "at/c1/eth0", "c1"]):
            plain["ipam"]["id"] = owner_id
            assert addresses(ipam.add(plain, "c1", "eth0")) == [f"10.88.0.{3 + n}/24"]
        assert ipam.delete(plain) == ["10.88.0.5"]  # by id "c1"
        plain["ipam"]["id"] = "c1/eth0"
        assert ipam.delete(plain) == ["10.88.0.3"]
        assert leases(db) == {"10.88.0.2": ("c1", "eth0")}
        assert ipam.delete(conf(ipv4_subnet=V4), "c1", "eth0") == ["10.88.0.2"]
        assert contents(db)[V4]["id/at/c1/eth0"] == "10.88.0.4"


def test_unusual_attachments_get_hashed_index_keys(db):
    odd = ["a/b", "c" * 600, "tab\there"]
    with IPAM(db) as ipam:
        got = [addresses(ipam.add(conf(ipv4_subnet=V4), container, "eth0"))[0] for container in odd]
        assert got == ["10.88.0.2/24", "10.88.0.3/24", "10.88.0.4/24"]
        # "a/b" + "eth0" must not be the attachment ("a", "b/eth0").
        assert addresses(ipam.add(conf(ipv4_subnet=V4), "a", "b/eth0")) == ["10.88.0.5/24"]
        keys = [key for key in contents(db)[V4] if key.startswith("at")]
        assert sorted(key[:3] for key in keys) == ["at#", "at#", "at#", "at/"]
        for container in odd:
            assert len(ipam.delete(conf(ipv4_subnet=V4), container, "eth0")) == 1
    assert leases(db) == {"10.88.0.5": ("a", "b/eth0")}


# --- DEL, CHECK, GC, STATUS ---------------------------------------------------------------------


def test_del_releases_the_attachment_in_every_pool_and_is_idempotent(db):
    with IPAM(db) as ipam:
        ipam.add(dual(), "c1", "eth0")
        ipam.add(conf(ipv4_subnet="10.99.0.0/24"), "c1", "eth0")
        ipam.add(dual(), "c2", "eth0")
        # No id, no address, and a configuration naming one pool only.
        released = ipam.delete(conf(ipv4_subnet=V4), "c1", "eth0")
        assert sorted(released) == ["10.88.0.2", "10.99.0.2", "fd00:88::2"]
        assert ipam.delete(conf(ipv4_subnet=V4), "c1", "eth0") == []
        assert ipam.delete(conf(ipv4_subnet="10.77.0.0/24"), "c9", "eth0") == []
        assert set(leases(db)) == {"10.88.0.3", "fd00:88::3"}
        # The walk continues after the released addresses, as after any DEL.
        assert addresses(ipam.add(dual(), "c3", "eth0")) == ["10.88.0.4/24", "fd00:88::4/64"]


def test_del_of_a_fixed_address_releases_it_only_for_its_attachment(db):
    fixed = {"ipv4_subnet": V4, "ipv4_address": "10.88.0.9/24"}
    with IPAM(db) as ipam:
        ipam.add(conf(**fixed), "c1", "eth0")
        assert ipam.delete(conf(**fixed), "c2", "eth0") == []
        assert ipam.delete(conf(**fixed), "c1", "eth0") == ["10.88.0.9"]


def test_check_against_prev_result(db):
    with IPAM(db) as ipam:
        result = ipam.add(dual(), "c1", "eth0")
        ipam.check(dual(prevResult=None) | {"prevResult": result}, "c1", "eth0")
        ipam.check(dual(), "c1", "eth0")  # without prevResult: holds something in each pool
        with pytest.raises(ReservationMismatchError, match="attachment 'c1'/'eth1' holds no address"):
            ipam.check(dual() | {"prevResult": result}, "c1", "eth1")
        other = ipam.add(dual(), "c2", "eth0")
        with pytest.raises(ReservationMismatchError, match=r"prevResult says 10\.88\.0\.3"):
            ipam.check(dual() | {"prevResult": other}, "c1", "eth0")
        ipam.delete(dual(), "c1", "eth0")
        with pytest.raises(ReservationMismatchError):
            ipam.check(dual() | {"prevResult": result}, "c1", "eth0")


def test_check_without_the_key_does_not_take_an_attachments_lease_for_anonymous(db):
    with IPAM(db) as ipam:
        result = ipam.add(conf(ipv4_subnet=V4), "c1", "eth0")
        anonymous = {"cniVersion": "1.1.0", "ipam": {"type": "ecs-ipam", "ipv4-subnet": V4}, "prevResult": result}
        with pytest.raises(ReservationMismatchError, match="not held anonymously"):
            ipam.check(anonymous, "c1", "eth0")


def test_gc_keeps_exactly_the_valid_attachments(db):
    with IPAM(db) as ipam:
        for container in ("c1", "c2", "c3"):
            ipam.add(dual(), container, "eth0")
        gc = dual() | {"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}
        assert sorted(ipam.gc(gc)) == ["10.88.0.2", "10.88.0.4", "fd00:88::2", "fd00:88::4"]
        assert leases(db) == {"10.88.0.3": ("c2", "eth0"), "fd00:88::3": ("c2", "eth0")}
        # The index entries went with the leases: c1 allocates afresh, c2 keeps its own.
        assert [key for key in contents(db)[V4] if key.startswith("at/")] == ["at/c2/eth0"]
        assert addresses(ipam.add(dual(), "c2", "eth0")) == ["10.88.0.3/24", "fd00:88::3/64"]


def test_status(db):
    with IPAM(db) as ipam:
        ipam.status(conf(ipv4_subnet="10.88.1.0/30"))
        ipam.add(conf(ipv4_subnet="10.88.1.0/30"), "c1", "eth0")
        with pytest.raises(Exception, match="no free address") as error:
            ipam.status(conf(ipv4_subnet="10.88.1.0/30"))
        assert error.value.code == 50


# --- bad input --------------------------------------------------------------------------------


def with_owner(value: object, **ipam: object) -> dict:
    """A configuration whose ipam.owner is *value*, null included."""
    document = conf(**ipam)
    document["ipam"]["owner"] = value
    return document


@pytest.mark.parametrize("value", ["container", "", "Attachment", None, 1, True, ["attachment"], {"a": 1}])
def test_owner_takes_one_value(tmp_path, value):
    db = str(tmp_path / "ipam.db")
    with IPAM(db) as ipam, pytest.raises(InvalidConfigError, match=r'ipam\.owner must be "attachment", got'):
        ipam.add(with_owner(value, ipv4_subnet=V4), "c1", "eth0")
    assert not Path(db).exists()


def test_owner_with_an_id_is_refused(tmp_path):
    db = str(tmp_path / "ipam.db")
    with IPAM(db) as ipam:
        for command in (ipam.add, ipam.delete):
            with pytest.raises(InvalidConfigError, match=r"ipam\.owner \"attachment\" and ipam\.id 'task'"):
                command(conf(id="task", ipv4_subnet=V4), "c1", "eth0")
        assert not Path(db).exists()
        # An empty id is no id.
        assert addresses(ipam.add(conf(id="", ipv4_subnet=V4), "c1", "eth0")) == ["10.88.0.2/24"]


@pytest.mark.parametrize("container_id, ifname, missing", [("", "eth0", "CNI_CONTAINERID"), ("c1", "", "CNI_IFNAME")])
def test_the_attachment_is_required(tmp_path, container_id, ifname, missing):
    db = str(tmp_path / "ipam.db")
    with IPAM(db) as ipam:
        ipam.add(conf(ipv4_subnet=V4), "c1", "eth0")
        before = contents(db)
        for command in (ipam.add, ipam.delete, ipam.check):
            with pytest.raises(InvalidEnvironmentError, match=f"{missing} is required"):
                command(conf(ipv4_subnet=V4), container_id, ifname)
        assert contents(db) == before


# --- as processes -----------------------------------------------------------------------------


def env(container_id: str | None, ifname: str | None = "eth0") -> dict:
    return {"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname, "CNI_NETNS": f"/var/run/netns/{container_id}"}


def test_every_command_as_a_process(tmp_path):
    db = tmp_path / "ipam.db"
    log = tmp_path / "ipam.log"

    def run(command, stdin, environ):
        return run_plugin(command, stdin, {**environ, "ECS_CNI_LOG_FILE": str(log)}, db_path=db)

    code, first, _ = run("ADD", dual(), env("c1"))
    assert code == 0 and addresses(first) == ["10.88.0.2/24", "fd00:88::2/64"]
    assert run("ADD", dual(), env("c1")) == (0, first, "")
    assert addresses(run("ADD", dual(), env("c2"))[1]) == ["10.88.0.3/24", "fd00:88::3/64"]
    assert run("CHECK", dual() | {"prevResult": first}, env("c1")) == (0, None, "")
    code, error, _ = run("CHECK", dual() | {"prevResult": first}, env("c2"))
    assert (code, error["code"]) == (1, 103)
    assert run("STATUS", dual(), env(None, None)) == (0, None, "")

    # The runtime's DEL carries only the attachment, and may name one pool only.
    before = db.read_bytes()
    code, error, _ = run("DEL", dual(), env("c1", None))
    assert (code, error) == (1, {"cniVersion": "1.1.0", "code": 4, "msg": error["msg"]})
    assert error["msg"] == 'CNI_IFNAME is required for DEL with ipam.owner "attachment"'
    code, error, _ = run("DEL", dual(), env(None))
    assert error["code"] == 4 and error["msg"].startswith("CNI_CONTAINERID is required")
    assert db.read_bytes() == before
    assert run("DEL", conf(ipv4_subnet=V4), env("c1")) == (0, None, "")
    assert run("DEL", conf(ipv4_subnet=V4), env("c1")) == (0, None, "")
    assert set(leases(str(db))) == {"10.88.0.3", "fd00:88::3"}

    run("ADD", dual(), env("c3"))
    gc = dual() | {"cni.dev/valid-attachments": [{"containerID": "c3", "ifname": "eth0"}]}
    assert run("GC", gc, env(None, None)) == (0, None, "")
    assert leases(str(db)) == {"10.88.0.4": ("c3", "eth0"), "fd00:88::4": ("c3", "eth0")}
    lines = log.read_text().splitlines()
    assert "ADD attachment='c1'/'eth0' -> 10.88.0.2/24, fd00:88::2/64" in lines[0]
    assert any("DEL attachment='c1'/'eth0' released ['10.88.0.2', 'fd00:88::2']" in line for line in lines)
    # A failed command's line says whose call it was.
    failed = [line for line in lines if "DEL failed: code=4" in line]
    assert failed[0].endswith("(id=attachment container='c1' ifname='')")


@pytest.mark.parametrize("value, shown", [("container", "'container'"), (None, "None"), (7, "7")])
def test_bad_owner_as_a_process(tmp_path, value, shown):
    db = tmp_path / "ipam.db"
    for command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        code, error, stderr = run_plugin(command, with_owner(value, ipv4_subnet=V4), env("c1"), db_path=db)
        assert (code, error["code"], stderr) == (1, 7, ""), command
        assert error["msg"] == f'ipam.owner must be "attachment", got {shown}'
    assert not db.exists()


def test_without_the_key_a_runtime_del_is_refused_as_before(tmp_path):
    db = tmp_path / "ipam.db"
    plain = dual(owner=None)
    assert addresses(run_plugin("ADD", plain, env("c1"), db_path=db)[1]) == ["10.88.0.2/24", "fd00:88::2/64"]
    assert addresses(run_plugin("ADD", plain, env("c1"), db_path=db)[1]) == ["10.88.0.3/24", "fd00:88::3/64"]
    code, error, _ = run_plugin("DEL", plain, env("c1"), db_path=db)
    assert (code, error["code"]) == (1, 7)


def test_the_operator_tools_show_the_attachment(tmp_path, etcd):
    """ecs-ipamctl and tools/dump_db.py, as processes, on LMDB and etcd."""
    root = Path(__file__).resolve().parent.parent
    for db in (str(tmp_path / "ipam.db"), f"{etcd.url}/tools-{uuid.uuid4().hex}"):
        with IPAM(db) as ipam:
            ipam.add(conf(ipv4_subnet=V4), "c1", "eth0")
            ipam.add({"cniVersion": "0.3.0", "ipam": {"id": "task", "ipv4-subnet": V4}}, "c2", "eth0")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(root), "ECS_CNI_LOG_FILE": os.devnull}

        def tool(*args: str, env=env) -> str:
            done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60)
            assert (done.returncode, done.stderr) == (0, ""), done
            return done.stdout

        table = tool("-m", "ecs_ipam.ctl", "--db", db, "leases").splitlines()
        assert table[1].split()[:5] == ["10.88.0.2", V4, "(attachment)", "c1", "eth0"]
        assert table[2].split()[:5] == ["10.88.0.3", V4, "task", "c2", "eth0"]
        listed = json.loads(tool("-m", "ecs_ipam.ctl", "--db", db, "leases", "--json"))
        assert [(lease["id"], lease["owner"], lease["container_id"]) for lease in listed] == [
            ("", "attachment", "c1"),
            ("task", "id", "c2"),
        ]
        released = tool("-m", "ecs_ipam.ctl", "--db", db, "release", "--address", "10.88.0.2", "--dry-run")
        assert released == f"would release 10.88.0.2 ({V4}) attachment=c1/eth0\n"
        dumped = tool(str(root / "tools/dump_db.py"), "--db", db, "--bucket", V4).splitlines()
        assert "key=10.88.0.2 - value=attachment=c1/eth0" in dumped
        assert "key=at/c1/eth0 - value=10.88.0.2" in dumped
