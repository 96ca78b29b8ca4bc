"""The public API embedders rely on: the names of ``__all__``, and the errors they raise."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import ecs_ipam
from ecs_ipam import errors, kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_MODULES = {"ecs_ipam": ecs_ipam, "ecs_ipam.kv": kv, "ecs_ipam.errors": errors}


def python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_exists_once(name):
    module = PUBLIC_MODULES[name]
    assert len(module.__all__) == len(set(module.__all__))
    missing = [attr for attr in module.__all__ if not hasattr(module, attr)]
    assert missing == []


def test_star_import_gives_the_public_names_and_loads_the_lazy_ones():
    done = python("-c", "from ecs_ipam import *; print(IPAM.__name__, kv.__name__, __version__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["IPAM", "ecs_ipam.kv", ecs_ipam.__version__]


def test_unknown_attribute_of_the_package_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'ecs_ipam' has no attribute 'IPMA'"):
        ecs_ipam.IPMA  # noqa: B018


def test_errors_exports_every_exception_class_it_defines():
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert set(errors.__all__) == defined


def test_kv_exports_every_store_error():
    store_errors = {name for name in errors.__all__ if issubclass(getattr(errors, name), errors.StoreError)}
    assert store_errors <= set(kv.__all__)
    assert all(getattr(kv, name) is getattr(errors, name) for name in store_errors)


def test_every_public_error_carries_its_code_and_a_message_of_its_own():
    for name in errors.__all__:
        error = getattr(errors, name)()
        assert isinstance(error.code, int), name
        assert error.msg and error.msg == str(error) and "\n" not in error.msg, name


def test_a_subclass_without_a_docstring_gets_its_parents_message():
    class QuotaError(errors.PoolExhaustedError):
        pass

    assert QuotaError.__doc__ is None
    error = QuotaError()
    assert (error.msg, error.code) == ("No free address is left in the subnet.", errors.POOL_EXHAUSTED)


def test_errors_without_a_message_work_when_docstrings_are_stripped():
    # python -OO (or PYTHONOPTIMIZE=2 in the environment) drops every docstring: the
    # default message then falls back to the class name, never to a crash nor to the
    # docstring of a builtin base such as Exception.
    script = textwrap.dedent(
        """
        import json
        from ecs_ipam import errors

        class QuotaError(errors.PoolExhaustedError):
            pass

        print(json.dumps([errors.KeyNotFoundError().msg, errors.ECSIPAMError().msg, QuotaError().msg,
                          errors.InvalidConfigError("ipam.id is missing").msg]))
        """
    )
    done = python("-OO", "-c", script)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["KeyNotFoundError", "ECSIPAMError", "QuotaError", "ipam.id is missing"]


def test_the_public_modules_do_not_import_typing():
    # Annotations are free at run time: the plugin imports these on every start.
    # -S: no site start-up, whose own imports differ by version and install (an editable
    # install's finder loads typing on 3.9); the dependencies' folders are added by hand.
    modules = "ecs_ipam, ecs_ipam.errors, ecs_ipam.kv, ecs_ipam.kv.base, ecs_ipam.kv.codec"
    libs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    done = python("-S", "-c", f"import sys; sys.path[1:1] = {libs!r}; import {modules}; print('typing' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_kvpair_is_the_named_tuple_it_is_typed_as():
    pair = kv.KVPair("k", b"v", 3)
    assert pair == ("k", b"v", 3)
    assert (pair.key, pair.value, pair.last_index) == ("k", b"v", 3)
    assert pair._replace(last_index=4) == kv.KVPair(key="k", value=b"v", last_index=4)
    assert kv.KVPair._fields == ("key", "value", "last_index")
    assert "compare-and-swap" in (kv.KVPair.__doc__ or "")


EMBEDDER = """
from ecs_ipam import IPAM, kv
from ecs_ipam.errors import PoolExhaustedError


def last_index(path: str) -> int:
    with kv.open_store(path, bucket="agent") as store:
        pair = store.atomic_put("k", b"v", None)
        return pair.last_index


def code(error: PoolExhaustedError) -> int:
    return error.code


def show(ipam: IPAM, store: kv.Store) -> None:
    reveal_type(ipam)
    reveal_type(store.get("k"))
    reveal_type(kv.open_store)
"""


def test_an_embedder_type_checks_against_the_shipped_annotations(tmp_path):
    # What an embedder's type checker sees: the real types, never Any.
    pytest.importorskip("mypy", reason="mypy comes with the lint extra")
    (tmp_path / "embedder.py").write_text(EMBEDDER)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            "--config-file=",
            "embedder.py",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=dict(os.environ, MYPYPATH=ROOT),
    )
    revealed = [line.partition("Revealed type is ")[2] for line in done.stdout.splitlines() if "Revealed" in line]
    assert len(revealed) == 3, done.stdout
    assert revealed[0] == '"ecs_ipam.ipam.IPAM"', done.stdout
    assert "fallback=ecs_ipam.kv.base.KVPair" in revealed[1], done.stdout
    assert revealed[2].endswith('-> ecs_ipam.kv.base.Store"'), done.stdout
    assert not any("Any" in line for line in revealed), done.stdout
    assert " error: " not in done.stdout, done.stdout
