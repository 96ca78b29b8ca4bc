"""``ecs-ipamctl``: arguments -> command -> output and exit status.

The only place in the operator tool that reads the environment, opens the database,
writes to stdout/stderr and turns exceptions into messages.  Exit status: 0 done
(also when nothing was to release), 1 the command failed, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import IO, TYPE_CHECKING, NoReturn

from ..addr import parse_address
from ..config import DEFAULT_DB_PATH, DEFAULT_LOG_FILE, DEFAULT_TIMEOUT, parse_cidr, parse_go_duration, parse_ip
from ..errors import ECSIPAMError, OperatorRequestError
from ..log import Log
from . import output
from .leases import (
    Holdings,
    StaleRules,
    by_address,
    by_id,
    by_staleness,
    in_range,
    read_holdings,
    read_live_list,
    release_body,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

PROG = "ecs-ipamctl"
USAGE_ERROR = 2


class _UsageError(Exception):
    """The command line is wrong; argparse has the usage text."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    # argparse would print and exit; main() decides how a mistake ends.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self.format_usage())


def build_parser() -> argparse.ArgumentParser:
    # Global options go before or after the command, as people type them: each parser
    # knows them, and SUPPRESS keeps a command's parser from resetting what came before it.
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH_OR_URL",
        default=argparse.SUPPRESS,
        help=f"an LMDB file or an etcd:// (etcds://) URL (default: $IPAM_DB_PATH, else {DEFAULT_DB_PATH})",
    )
    parser = _Parser(
        prog=PROG,
        description="See the address pools of an ecs-ipam database, find leaked leases, release them, "
        "and export usage.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, parents=[common])

    leases = command("leases", "list every lease")
    leases.add_argument("--subnet", metavar="CIDR", help="only the leases whose address lies in CIDR")
    leases.add_argument("--json", action="store_true", help="a JSON list instead of a table")

    stale = command("stale", "list the leases that look leaked")
    stale.add_argument("--live", metavar="FILE", help="container ids known to run, one per line ('-': stdin)")
    stale.add_argument("--json", action="store_true", help="a JSON list instead of a table")

    release = command("release", "release leases in one transaction")
    what = release.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", help="every lease this owner id holds")
    what.add_argument("--address", metavar="ADDR", help="the lease of this address")
    what.add_argument("--stale", action="store_true", help="every lease that `stale` lists")
    release.add_argument("--live", metavar="FILE", help="with --stale: as for `stale --live`")
    release.add_argument("--dry-run", action="store_true", help="print what would be released; write nothing")

    usage = command("usage", "capacity and use of each pool")
    form = usage.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    form.add_argument("--prometheus", action="store_true", help="the text format of node_exporter's textfile collector")
    return parser


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run one ecs-ipamctl command; return the exit status.

    :param argv: the arguments without the program name (default: ``sys.argv[1:]``).
    :param environ: ``IPAM_DB_PATH``, ``IPAM_DB_CONNECTION_TIMEOUT``, ``ECS_CNI_LOG_FILE``,
        ``ECS_CNI_LOGLEVEL`` and an etcd URL's ``IPAM_ETCD_*`` (default: the process environment).
    :param stdin: where ``--live -`` is read.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        stdout.write(_run(args, environ, stdin, clock))
        stdout.flush()
    except _UsageError as error:
        stderr.write(f"{error.usage}{PROG}: error: {error}\n")
        return USAGE_ERROR
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except ECSIPAMError as error:
        stderr.write(f"{PROG}: error: {error.msg}\n")
        return 1
    except BrokenPipeError:
        # "ecs-ipamctl leases | head": the reader has what it wanted.
        _silence(stdout)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - no traceback ever reaches an operator
        stderr.write(f"{PROG}: internal error: {type(error).__name__}: {error}\n")
        return 1
    return 0


def _silence(stream: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _run(args: argparse.Namespace, environ: Mapping[str, str], stdin: IO[str], clock: Callable[[], float]) -> str:
    db = _database(getattr(args, "db", None), environ)
    if args.command == "leases":
        subnet = parse_cidr(args.subnet, "--subnet").cidr if args.subnet is not None else None
        holdings = _read(db, environ)
        leases = [lease for lease in holdings.leases if subnet is None or parse_address(lease.address) in subnet]
        return output.leases_json(leases) if args.json else output.leases_table(leases, clock())
    if args.command == "stale":
        rules = StaleRules(_live(args.live, stdin))
        holdings = _read(db, environ)
        stale = [(lease, reason) for lease in holdings.leases if (reason := rules.reason(lease))]
        leases = [lease for lease, _ in stale]
        if args.json:
            return output.leases_json(leases)
        return output.leases_table(leases, clock(), [reason for _, reason in stale])
    if args.command == "usage":
        rules = StaleRules()
        holdings = _read(db, environ)
        pools = [(usage, in_range(usage, holdings.leases)) for usage in holdings.pools.values()]
        rows = output.usage_rows(pools, rules.netns_gone)
        if args.prometheus:
            return output.usage_prometheus(rows)
        return output.usage_json(rows) if args.json else output.usage_table(rows)
    return _release(args, db, environ, stdin)


def _database(option: str | None, environ: Mapping[str, str]) -> str:
    if option is not None:
        if not option.strip():
            raise OperatorRequestError("--db is empty")
        return _text(option, "--db")
    value = environ.get("IPAM_DB_PATH") or ""
    return _text(value, "IPAM_DB_PATH") if value.strip() else DEFAULT_DB_PATH


def _text(value: str, what: str) -> str:
    # An undecodable byte on the command line arrives as a lone surrogate, which no
    # store can hold and no terminal can print.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise OperatorRequestError(f"{what} {value!r} is not valid unicode text") from None
    return value


def _live(path: str | None, stdin: IO[str]) -> frozenset[str] | None:
    if path is None:
        return None
    if path == "-":
        return read_live_list(stdin.read())
    try:
        with open(path, encoding="utf-8") as f:
            return read_live_list(f.read())
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OperatorRequestError(f"cannot read --live file {path}: {reason}") from None


def _read(db: str, environ: Mapping[str, str]) -> Holdings:
    """One read-only snapshot: never writes, never creates a file, never waits for a writer
    (only, at most the timeout, for a process inside its first open of the database)."""
    from .. import kv

    with kv.open_store(db, timeout=_timeout(environ), read_only=True, environ=environ) as store:
        return store.transact(read_holdings, write=False)


def _release(args: argparse.Namespace, db: str, environ: Mapping[str, str], stdin: IO[str]) -> str:
    from .. import kv

    if args.live is not None and not args.stale:
        raise OperatorRequestError("--live applies only with --stale")
    if args.id is not None:
        owner = _text(args.id, "--id")
        if not owner:
            raise OperatorRequestError("--id is empty: anonymous leases have no id; release one with --address")
        select, why, asked = by_id(owner), "by id", f"no lease held by id {owner!r}"
    elif args.address is not None:
        address = str(parse_ip(args.address, "--address"))
        select, why, asked = by_address(address), "by address", f"no lease at {address}"
    else:
        rules = StaleRules(_live(args.live, stdin))
        select, why, asked = by_staleness(rules), "stale", "no lease looks stale"
    write = not args.dry_run
    timeout = _timeout(environ)
    with kv.open_store(db, timeout=timeout, read_only=not write, create=False, environ=environ) as store:
        released = store.transact(release_body(select, write), write=write)
    if write:
        audit = _audit_log(environ)
        for lease in released:
            audit.info(
                f"ecs-ipamctl released {lease.address} ({lease.subnet or 'not yet in a pool'}) {why}: "
                f"id={lease.id!r} container={lease.container_id!r} uid={os.getuid()}"
            )
    return output.release_lines(released, args.dry_run, asked)


def _timeout(environ: Mapping[str, str]) -> float:
    raw = environ.get("IPAM_DB_CONNECTION_TIMEOUT") or ""
    return DEFAULT_TIMEOUT if not raw.strip() else parse_go_duration(raw, "IPAM_DB_CONNECTION_TIMEOUT")


def _audit_log(environ: Mapping[str, str]) -> Log:
    # The plugin's own log, so that a release by hand sits beside the ADDs and DELs it
    # undoes.  Written at any level but "off": an audit line is not chatter.
    level = "off" if (environ.get("ECS_CNI_LOGLEVEL") or "").lower() == "off" else "info"
    return Log(environ.get("ECS_CNI_LOG_FILE") or DEFAULT_LOG_FILE, level)
