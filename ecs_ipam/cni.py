"""The CNI entry point: environment + stdin -> command -> result or error JSON + exit code.

This is the only place where exceptions become CNI error objects; nothing below it
writes to stdout or reads the process environment.
"""

from __future__ import annotations

import os
import sys
import time

from . import __version__
from .config import SUPPORTED_VERSIONS, cni_version_of, log_settings, parse_environment, parse_netconf
from .errors import DecodeError, ECSIPAMError, cut, quoted
from .jsonfast import dumps_compact, loads
from .log import Log

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

    from .config import Environment

CAPABILITIES = {"capabilities": ["awsvpc-network-mode"]}
# The longest configuration read from stdin: far above any real one (a few KiB, a few
# hundred routes), and a bound on the memory a command takes.
MAX_STDIN_BYTES = 4 << 20


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: IO[str] | IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Run one plugin invocation; return the process exit code.

    :param argv: command-line arguments without the program name (``--version``,
        ``--capabilities``); CNI itself passes none.
    :param environ: the CNI environment (default: the process environment).
    :param stdin: where the network configuration is read (text or binary stream).
    :param stdout: where the result or the error object is written.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    if argv:
        return _flags(argv, stdout)

    log = Log(*log_settings(environ))
    reply_version = SUPPORTED_VERSIONS[-1]
    command = environ.get("CNI_COMMAND", "")
    data: object = None
    started = time.monotonic()
    try:
        env = parse_environment(environ)
        data = _decode(_read(stdin), allow_empty=env.command == "VERSION")
        reply_version = cni_version_of(data) if data is not None else reply_version
        result = _run(env, data, log, environ)
        if log.debugging:
            log.debug(f"{env.command} done in {(time.monotonic() - started) * 1000:.1f} ms")
    except ECSIPAMError as error:
        log.error(f"{cut(command)} failed: code={error.code} {error.msg} ({_caller(environ, data)})")
        _write(stdout, _error_object(reply_version, error.code, error.msg, error.details))
        return 1
    except KeyboardInterrupt:
        # SIGINT while waiting (for the writer lock, say): stop without a traceback.  What
        # was committed before it stays; a retried command finds it.
        log.error(f"{cut(command)} interrupted by SIGINT")
        _write(stdout, _error_object(reply_version, 11, "interrupted by SIGINT"))
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that must catch everything
        import traceback

        log.error(f"{cut(command)} failed unexpectedly ({_caller(environ, data)}):\n{traceback.format_exc()}")
        text = cut(str(error), 1024)
        _write(stdout, _error_object(reply_version, 199, f"internal error: {type(error).__name__}: {text}"))
        return 1
    if result is not None:
        _write(stdout, result)
    return 0


def _run(env: Environment, data: object, log: Log, environ: Mapping[str, str]) -> dict[str, Any] | None:
    if env.command == "VERSION":
        version = cni_version_of(data) if data is not None else SUPPORTED_VERSIONS[-1]
        return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
    conf = parse_netconf(data)
    if log.debugging:  # the line is built only when it is written: every call passes here
        log.debug(
            f"{env.command} {_caller(environ, data)} netns={quoted(env.netns)} cniVersion={conf.cni_version} "
            f"pools={[pool.bucket for pool in conf.pools]} db={env.settings.db_path!r}"
        )

    from .ipam import IPAM

    # The attachment is the owner with "owner": "attachment": name it whole.
    owner = f"attachment={env.container_id!r}/{env.ifname!r}" if conf.by_attachment else f"id={conf.owner_id!r}"
    with IPAM(env.settings.db_path, env.settings.timeout, environ=environ, report=log.info) as ipam:
        if env.command == "ADD":
            result = ipam.add(conf, env.container_id, env.ifname)
            addresses = ", ".join(ip["ip" if "ip" in ip else "address"] for ip in _ips(result))
            container = "" if conf.by_attachment else f" container={env.container_id!r}"
            log.info(f"ADD {owner}{container} -> {addresses}")
            return result
        if env.command == "DEL":
            released = ipam.delete(conf, env.container_id, env.ifname)
            log.info(f"DEL {owner} released {released or 'nothing'}")
        elif env.command == "CHECK":
            ipam.check(conf, env.container_id, env.ifname)
            log.debug(f"CHECK {owner}: the reservation matches")
        elif env.command == "GC":
            released = ipam.gc(conf)
            log.info(f"GC released {released or 'nothing'}")
        else:
            ipam.status(conf)
    return None


def _caller(environ: Mapping[str, str], data: object) -> str:
    """Who a command was for, as far as the input tells, also when it is invalid: the
    configuration's id ("anonymous" without one), the container id and the interface."""
    ipam = data.get("ipam") if isinstance(data, dict) else None
    owner = ipam.get("id") if isinstance(ipam, dict) else None
    who = quoted(owner) if owner not in (None, "") else "anonymous"
    if isinstance(ipam, dict) and ipam.get("owner") == "attachment" and owner in (None, ""):
        who = "attachment"  # the container and the interface below
    container, ifname = environ.get("CNI_CONTAINERID", ""), environ.get("CNI_IFNAME", "")
    return f"id={who} container={quoted(container)} ifname={quoted(ifname)}"


def _ips(result: dict[str, Any]) -> list[dict[str, str]]:
    if "ips" in result:
        ips: list[dict[str, str]] = result["ips"]
        return ips
    return [result[family] for family in ("ip4", "ip6") if family in result]


def _read(stdin: IO[str] | IO[bytes] | None) -> bytes:
    stream = sys.stdin.buffer if stdin is None else stdin
    try:
        raw = stream.read(MAX_STDIN_BYTES + 1)
    except (OSError, ValueError) as error:
        raise DecodeError(f"cannot read the network configuration from stdin: {error}") from None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_STDIN_BYTES:
        raise DecodeError(f"the network configuration on stdin is longer than {MAX_STDIN_BYTES} bytes, the limit")
    return raw


def _decode(raw: bytes, allow_empty: bool) -> object:
    if not raw.strip():
        if allow_empty:
            return None
        raise DecodeError("no network configuration on stdin")
    try:
        return loads(raw)
    except (ValueError, RecursionError) as error:
        raise DecodeError(f"network configuration on stdin is not valid JSON: {error}") from None


def _error_object(version: str, code: int, msg: str, details: str = "") -> dict[str, object]:
    error: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        error["details"] = details
    return error


def _write(stdout: IO[str], document: dict[str, Any]) -> None:
    # Compact, as the Go plugin prints: some callers compare --capabilities as text.
    stdout.write(dumps_compact(document) + "\n")
    stdout.flush()


def _flags(argv: list[str], stdout: IO[str]) -> int:
    if argv == ["--version"]:
        from .build_info import git_state

        dirty, short_hash = git_state()
        _write(stdout, {"version": __version__, "dirty": dirty, "gitShortHash": short_hash})
        return 0
    if argv == ["--capabilities"]:
        _write(stdout, CAPABILITIES)
        return 0
    sys.stderr.write("usage: ecs-ipam [--version | --capabilities]  (CNI_COMMAND selects the command)\n")
    return 2
