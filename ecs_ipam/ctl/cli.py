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
from ..config import DEFAULT_DB_PATH, Settings, host_path, operator_settings, parse_cidr, parse_ip
from ..errors import DatabaseNotFoundError, ECSIPAMError, OperatorRequestError
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
# The commands that append to the plugin's log.
_WRITES_LOG = ("release", "migrate")
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


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    # Global options go before or after the command, as people type them: each parser
    # knows them, and SUPPRESS keeps a command's parser from resetting what came before it.
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH_OR_URL",
        default=argparse.SUPPRESS,
        help=f"an LMDB file or an etcd:// (etcds://) URL (default: $IPAM_DB_PATH, else {DEFAULT_DB_PATH}, "
        f"else {host_path(DEFAULT_DB_PATH)} on the host); for migrate, the destination",
    )
    parser = _Parser(
        prog=prog,
        description="See the address pools of an ecs-ipam database, find leaked leases, release them, "
        "export usage, list the raw buckets, and migrate a bolt database of the Go plugin.",
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
    usage.add_argument(
        "--output",
        metavar="FILE",
        help="write to FILE instead of stdout, atomically: a reader sees the old file or the new one, "
        "and a failed run leaves the old one and no temporary file",
    )

    dump = command("dump", "list the buckets, or the pairs of one bucket (read-only)")
    dump.add_argument("--bucket", help="list the pairs of this bucket, e.g. 169.254.172.0/22")
    dump.add_argument("--json", action="store_true", help="one JSON document")

    migrate = command("migrate", "move a bolt database of the Go plugin into LMDB")
    migrate.add_argument(
        "src", metavar="SRC", nargs="?", help="the bolt file (default: the database, migrated in place)"
    )
    migrate.add_argument("--dry-run", action="store_true", help="print what would be moved, write nothing")
    migrate.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait for a running Go plugin to release SRC (default: $IPAM_DB_CONNECTION_TIMEOUT, else 5)",
    )
    return parser


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    clock: Callable[[], float] = time.time,
    prog: str = PROG,
) -> int:
    """Run one ecs-ipamctl command; return the exit status.

    :param argv: the arguments without the program name (default: ``sys.argv[1:]``).
    :param environ: ``IPAM_DB_PATH``, ``IPAM_DB_CONNECTION_TIMEOUT``, ``ECS_CNI_LOG_FILE``,
        ``ECS_CNI_LOGLEVEL`` and an etcd URL's ``IPAM_ETCD_*`` (default: the process environment).
    :param stdin: where ``--live -`` is read.
    :param prog: the name in messages (``tools/dump_db.py`` and ``tools/migrate_boltdb.py``
        run the ``dump`` and ``migrate`` commands under their own names).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser(prog)
    notes: dict[str, str] = {}
    try:
        args = parser.parse_args(argv)
        settings, notes = _settings(getattr(args, "db", None), environ)
        writes_log = args.command in _WRITES_LOG and not getattr(args, "dry_run", False)
        for what in ("database", "log") if writes_log else ("database",):
            if what in notes:
                stderr.write(f"{prog}: {notes[what]}\n")
        text = _run(args, settings, environ, stdin, clock)
        if getattr(args, "output", None) is not None:
            _write_atomically(args.output, text)
        else:
            stdout.write(text)
            stdout.flush()
    except _UsageError as error:
        stderr.write(f"{error.usage}{prog}: error: {error}\n")
        return USAGE_ERROR
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except ECSIPAMError as error:
        stderr.write(f"{prog}: error: {_message(error, notes)}\n")
        return 1
    except BrokenPipeError:
        # "ecs-ipamctl leases | head": the reader has what it wanted.
        _silence(stdout)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - no traceback ever reaches an operator
        stderr.write(f"{prog}: internal error: {type(error).__name__}: {error}\n")
        return 1
    return 0


def _write_atomically(path: str, text: str) -> None:
    """Replace *path* by a file holding *text*, mode 0644 (node_exporter runs as its own user)."""
    import tempfile

    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OperatorRequestError(f"cannot write --output {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(e, OSError):
            raise OperatorRequestError(f"cannot write --output {path}: {e.strerror or e}") from None
        raise


def _silence(stream: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _run(
    args: argparse.Namespace, settings: Settings, environ: Mapping[str, str], stdin: IO[str], clock: Callable[[], float]
) -> str:
    if args.command == "leases":
        subnet = parse_cidr(args.subnet, "--subnet").cidr if args.subnet is not None else None
        holdings = _read(settings, environ)
        leases = [lease for lease in holdings.leases if subnet is None or parse_address(lease.address) in subnet]
        return output.leases_json(leases) if args.json else output.leases_table(leases, clock())
    if args.command == "stale":
        rules = StaleRules(_live(args.live, stdin))
        holdings = _read(settings, environ)
        stale = [(lease, reason) for lease in holdings.leases if (reason := rules.reason(lease))]
        leases, reasons = [lease for lease, _ in stale], [reason for _, reason in stale]
        return output.leases_json(leases, reasons) if args.json else output.leases_table(leases, clock(), reasons)
    if args.command == "usage":
        rules = StaleRules()
        holdings = _read(settings, environ)
        pools = [(usage, in_range(usage, holdings.leases)) for usage in holdings.pools.values()]
        unplaced = [lease for lease in holdings.leases if lease.subnet is None]
        rows = output.usage_rows(pools, unplaced, rules.netns_gone)
        if args.prometheus:
            return output.usage_prometheus(rows)
        return output.usage_json(rows) if args.json else output.usage_table(rows)
    if args.command == "dump":
        return _dump(args, settings, environ)
    if args.command == "migrate":
        return _migrate(args, settings)
    return _release(args, settings, environ, stdin)


def _dump(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> str:
    from . import dump

    if args.bucket is None:
        return dump.buckets_text(dump.bucket_counts(settings.db_path, environ), args.json)
    return dump.pairs_text(args.bucket, dump.bucket_pairs(settings.db_path, args.bucket, environ), args.json)


def _migrate(args: argparse.Namespace, settings: Settings) -> str:
    from .migration import migrate

    # As the tool always did: the database named by --db is the destination, and the
    # source defaults to it (in place); a source alone is migrated in place.
    src = settings.db_path if args.src is None else _text(args.src, "SRC")
    dest = src if getattr(args, "db", None) is None else settings.db_path
    timeout = settings.timeout if args.timeout is None else args.timeout
    log = _audit_log(settings)
    return migrate(src, dest, timeout, args.dry_run, lambda line: log.info(f"ecs-ipamctl {line}"))


def _settings(option: str | None, environ: Mapping[str, str]) -> tuple[Settings, dict[str, str]]:
    """The plugin's settings, with the host's paths where only they exist (and a note saying so)."""
    if option is not None:
        if not option.strip():
            raise OperatorRequestError("--db is empty")
        _text(option, "--db")
    return operator_settings(environ, os.path.exists, option)


def _message(error: ECSIPAMError, notes: dict[str, str]) -> str:
    if isinstance(error, DatabaseNotFoundError) and "no database" in notes:
        return f"{notes['no database']}; name the database with --db or IPAM_DB_PATH"
    return error.msg


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


def _read(settings: Settings, environ: Mapping[str, str]) -> Holdings:
    """One read-only snapshot: never writes, never creates a file, never waits for a writer
    (only, at most the timeout, for a process inside its first open of the database)."""
    from .. import kv

    with kv.open_store(settings.db_path, timeout=settings.timeout, read_only=True, environ=environ) as store:
        return store.transact(read_holdings, write=False)


def _release(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str], stdin: IO[str]) -> str:
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
    with kv.open_store(
        settings.db_path, timeout=settings.timeout, read_only=not write, create=False, environ=environ
    ) as store:
        released = store.transact(release_body(select, write), write=write)
    if write:
        audit = _audit_log(settings)
        for lease in released:
            audit.info(
                f"ecs-ipamctl released {lease.address} ({lease.subnet or 'not yet in a pool'}) {why}: "
                f"id={lease.id!r} container={output.container_text(lease)} uid={os.getuid()}"
            )
    return output.release_lines(released, args.dry_run, asked)


def _audit_log(settings: Settings) -> Log:
    # The plugin's own log, so that a release by hand sits beside the ADDs and DELs it
    # undoes.  Written at any level but "off": an audit line is not chatter.
    return Log(settings.log_file, "off" if settings.log_level == "off" else "info")
