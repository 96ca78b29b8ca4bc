"""Network configuration and CNI environment -> validated, immutable values.

All validation lives here, so that everything below works on values it can trust.  Each
error names the offending field and value.
"""

from __future__ import annotations

from .addr import WIDTH, Address, Network, parse_address
from .errors import IncompatibleVersionError, InvalidConfigError, InvalidEnvironmentError, cut, quoted

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# The defaults of every program of the package: paths inside the ECS agent's container,
# where the plugin runs.
DEFAULT_DB_PATH = "/data/eni-ipam.db"
DEFAULT_LOG_FILE = "/log/ecs-cni-ipam-plugin.log"
DEFAULT_TIMEOUT = 5.0
DEFAULT_LOG_LEVEL = "info"
# The host folders the agent mounts at those container folders: an operator's tool run on
# the host finds the same files there.
HOST_FOLDERS = (("/data", "/var/lib/ecs/data"), ("/log", "/var/log/ecs"))
# Linux's PATH_MAX: a longer path cannot be opened (and is not echoed in full).
MAX_DB_PATH = 4096
# The longest id, container id and interface name recorded with a lease, in UTF-8 bytes:
# far above any real one (a MAC address, a netns path, a 64-digit container id), and a
# bound on what a record keeps for good and a log line repeats.
MAX_FIELD_BYTES = 64 << 10

# The original plugin refuses subnets too small to leave room for a host after the
# network, gateway and (IPv4) broadcast addresses.
MAX_PREFIX = {4: 30, 6: 126}
FAMILY_KEYS = {4: "ipv4", 6: "ipv6"}
# The one value of ipam.owner.
ATTACHMENT_OWNER = "attachment"


class Value:
    """A value made of the fields named in ``__slots__``, compared, hashed and shown by them.

    Set once, by the constructor; nothing assigns to a field afterwards.  Plain classes:
    the plugin defines these in every container start, and seven of them cost about
    60 us, as much as hand-written tuple classes, where collections.namedtuple (which
    compiles each constructor from source) costs about 350 us, and dataclasses or
    typing.NamedTuple more (measured in fresh processes, medians of 30).
    """

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)  # for mypy: type(other) is type(self)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Route(Value):
    """A route copied into the result as configured."""

    __slots__ = ("dst", "gw")

    def __init__(self, dst: str, gw: str | None = None) -> None:
        self.dst = dst
        self.gw = gw

    def to_json(self) -> dict[str, str]:
        return {"dst": self.dst} if self.gw is None else {"dst": self.dst, "gw": self.gw}


class Pool(Value):
    """One address family of the configuration: where addresses come from.

    ``subnet`` has its host bits clear, also when the configuration wrote some.
    """

    __slots__ = ("fixed_address", "gateway", "routes", "subnet", "version")

    def __init__(
        self, version: int, subnet: Network, gateway: Address, fixed_address: Network | None, routes: tuple[Route, ...]
    ) -> None:
        self.version = version
        self.subnet = subnet
        self.gateway = gateway
        self.fixed_address = fixed_address
        self.routes = routes

    @property
    def bucket(self) -> str:
        """The store bucket of this pool: the subnet's canonical CIDR."""
        return str(self.subnet)


class Attachment(Value):
    """A CNI attachment."""

    __slots__ = ("container_id", "ifname")

    def __init__(self, container_id: str, ifname: str) -> None:
        self.container_id = container_id
        self.ifname = ifname


class NetConf(Value):
    """The parts of a CNI network configuration this plugin uses.

    ``pools``: IPv4 first.  ``valid_attachments``: None when the configuration has no list.
    ``by_attachment``: ``"owner": "attachment"``, the CNI attachment owns the allocation
    (then ``owner_id`` is None).
    """

    __slots__ = ("by_attachment", "cni_version", "owner_id", "pools", "prev_result", "valid_attachments")

    def __init__(
        self,
        cni_version: str,
        owner_id: str | None,
        pools: tuple[Pool, ...],
        prev_result: Mapping[str, Any] | None = None,
        valid_attachments: tuple[Attachment, ...] | None = None,
        by_attachment: bool = False,
    ) -> None:
        self.cni_version = cni_version
        self.owner_id = owner_id
        self.pools = pools
        self.prev_result = prev_result
        self.valid_attachments = valid_attachments
        self.by_attachment = by_attachment


class Settings(Value):
    """The plugin's own variables, as every program of the package reads them.

    ``db_path`` (str: a file or an etcd URL), ``timeout`` (seconds to wait for another
    writer), ``log_file`` (str), ``log_level`` (str, lower case).
    """

    __slots__ = ("db_path", "log_file", "log_level", "timeout")

    def __init__(self, db_path: str, timeout: float, log_file: str, log_level: str) -> None:
        self.db_path = db_path
        self.timeout = timeout
        self.log_file = log_file
        self.log_level = log_level

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read ``IPAM_DB_PATH``, ``IPAM_DB_CONNECTION_TIMEOUT``, ``ECS_CNI_LOG_FILE`` and
        ``ECS_CNI_LOGLEVEL``; a variable that is unset or blank means its default.

        :raises InvalidEnvironmentError: the path or the timeout is invalid.
        """
        log_file, log_level = log_settings(environ)
        return cls(_db_path(environ), _timeout(environ), log_file, log_level)


class Environment(Value):
    """One invocation: the CNI variables it acts on and the plugin's :class:`Settings`."""

    __slots__ = ("command", "container_id", "ifname", "netns", "settings")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, settings: Settings) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.settings = settings


# --- network configuration ----------------------------------------------------------------


def cni_version_of(data: object) -> str:
    """The cniVersion a configuration asks for (0.1.0 when absent, as libcni assumes)."""
    if not isinstance(data, dict):
        return SUPPORTED_VERSIONS[-1]
    # libcni decodes into a Go string, so null and "" both mean absent.
    version = data.get("cniVersion")
    if version is None or version == "":
        version = "0.1.0"
    if not isinstance(version, str):
        raise InvalidConfigError(f"cniVersion must be a string, got {_show(version)}")
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersionError(
            f"incompatible CNI version {cut(version)}; supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    return version


def parse_netconf(data: object) -> NetConf:
    """Validate the network configuration read from stdin.

    :param data: the decoded JSON object.
    :raises IncompatibleVersionError: cniVersion is not supported.
    :raises InvalidConfigError: anything else is wrong; the message names the field.
    """
    if not isinstance(data, dict):
        raise InvalidConfigError(f"network configuration must be a JSON object, got {_show(data)}")
    version = cni_version_of(data)
    ipam = data.get("ipam")
    if not isinstance(ipam, dict):
        raise InvalidConfigError(f"ipam must be an object, got {_show(ipam)}")
    owner_id = ipam.get("id")
    if owner_id is not None and not isinstance(owner_id, str):
        raise InvalidConfigError(f"ipam.id must be a string, got {_show(owner_id)}")
    if owner_id is not None and not _is_text(owner_id):
        raise InvalidConfigError(f"ipam.id {_show(owner_id)} is not valid unicode text")
    if owner_id is not None and _too_long(owner_id):
        raise InvalidConfigError(f"ipam.id {_show(owner_id)} is longer than {MAX_FIELD_BYTES} bytes, the limit")
    by_attachment = "owner" in ipam
    if by_attachment:
        # Opt-in, for runtimes that send no id (podman, containerd, cnitool): without the
        # key the Go plugin's semantics stay exactly as they are.
        if ipam["owner"] != ATTACHMENT_OWNER:
            raise InvalidConfigError(f'ipam.owner must be "{ATTACHMENT_OWNER}", got {_show(ipam["owner"])}')
        if owner_id:
            raise InvalidConfigError(
                f'ipam.owner "{ATTACHMENT_OWNER}" and ipam.id {_show(owner_id)} cannot be used together: '
                "the attachment owns the allocation"
            )
    pools = tuple(pool for pool in (_parse_pool(ipam, 4), _parse_pool(ipam, 6)) if pool is not None)
    if not pools:
        raise InvalidConfigError("ipam.ipv4-subnet or ipam.ipv6-subnet is required")
    prev_result = data.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise InvalidConfigError(f"prevResult must be an object, got {_show(prev_result)}")
    return NetConf(
        cni_version=version,
        owner_id=owner_id or None,
        pools=pools,
        prev_result=prev_result,
        valid_attachments=_parse_attachments(data),
        by_attachment=by_attachment,
    )


def _parse_pool(ipam: dict[str, Any], version: int) -> Pool | None:
    family = FAMILY_KEYS[version]
    subnet_field = f"{family}-subnet"
    if ipam.get(subnet_field) is None:
        # As the original: a blanked address is an error, never "no fixed address", so
        # that it cannot silently become a different address; a blank gateway is the default.
        if ipam.get(f"{family}-address") == "":
            parse_cidr("", f"ipam.{family}-address", version)
        for field in ("address", "gateway", "routes"):
            if ipam.get(f"{family}-{field}") not in (None, "", []):
                raise InvalidConfigError(f"ipam.{family}-{field} is set but ipam.{subnet_field} is missing")
        return None
    written = parse_cidr(ipam[subnet_field], f"ipam.{subnet_field}", version)
    subnet = written.cidr
    if subnet.prefixlen > MAX_PREFIX[version]:
        raise InvalidConfigError(
            f"ipam.{subnet_field} {subnet}: no available ip in the subnet (prefix longer than /{MAX_PREFIX[version]})"
        )

    gateway_field = f"ipam.{family}-gateway"
    raw_gateway = ipam.get(f"{family}-gateway")
    if raw_gateway in (None, ""):
        gateway = _default_gateway(written, f"ipam.{subnet_field}", gateway_field)
    else:
        gateway = parse_ip(raw_gateway, gateway_field, version)
        _check_host_address(gateway, subnet, gateway_field)

    fixed = None
    address_field = f"ipam.{family}-address"
    raw_address = ipam.get(f"{family}-address")
    if raw_address is not None:
        fixed = parse_cidr(raw_address, address_field, version)
        _check_host_address(fixed.ip, subnet, address_field)
        if fixed.ip == gateway:
            raise InvalidConfigError(f"{address_field} {raw_address} is the gateway address")

    routes = _parse_routes(ipam.get(f"{family}-routes"), f"ipam.{family}-routes", version)
    return Pool(version, subnet, gateway, fixed, routes)


def _default_gateway(written: Network, field: str, gateway_field: str) -> Address:
    """The Go plugin's default gateway: the address written in the subnet, + 1.

    That is the network address + 1 for a subnet written as such, but ``10.0.0.5/29``
    gives ``10.0.0.6``: a bridge the Go plugin configured so keeps its gateway.  Where
    the Go plugin would answer a gateway no task can use (the IPv4 broadcast address, an
    address past the subnet), the configuration is refused instead.
    """
    subnet = written.cidr
    value = written.value + 1
    if value <= subnet.last and not (subnet.version == 4 and value == subnet.last):
        return Address(value, subnet.version)
    where = "the broadcast address of" if value == subnet.last else "outside"
    raise InvalidConfigError(
        f"{field} {written}: the default gateway, the written address + 1, is {where} {subnet}; "
        f"write the subnet as {subnet} or set {gateway_field}"
    )


def _check_host_address(ip: Address, subnet: Network, field: str) -> None:
    if ip not in subnet:
        raise InvalidConfigError(f"{field} {ip} is not in subnet {subnet}")
    if ip.value == subnet.first:
        raise InvalidConfigError(f"{field} {ip} is the network address of {subnet}")
    if subnet.version == 4 and ip.value == subnet.last:
        raise InvalidConfigError(f"{field} {ip} is the broadcast address of {subnet}")


def _parse_routes(raw: object, field: str, version: int) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidConfigError(f"{field} must be a list, got {_show(raw)}")
    routes = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InvalidConfigError(f"{where} must be an object, got {_show(item)}")
        dst = item.get("dst")
        parse_cidr(dst, f"{where}.dst", version)
        assert isinstance(dst, str)  # parse_cidr refused anything else
        gw = item.get("gw")
        if gw in (None, ""):
            gw = None
        else:
            parse_ip(gw, f"{where}.gw", version)
        routes.append(Route(dst, gw))
    return tuple(routes)


def _parse_attachments(data: dict[Any, Any]) -> tuple[Attachment, ...] | None:
    # libcni before 1.2 sent the list under the older name.
    for field in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if field in data:
            break
    else:
        return None
    raw = data[field]
    if not isinstance(raw, list):
        raise InvalidConfigError(f"{field} must be a list, got {_show(raw)}")
    attachments = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidConfigError(f"{field}[{i}] must be an object, got {_show(item)}")
        container_id, ifname = item.get("containerID"), item.get("ifname")
        if not isinstance(container_id, str) or not isinstance(ifname, str):
            raise InvalidConfigError(f"{field}[{i}] needs string containerID and ifname, got {_show(item)}")
        attachments.append(Attachment(container_id, ifname))
    return tuple(attachments)


# --- addresses ----------------------------------------------------------------------------


def parse_ip(raw: object, field: str, version: int | None = None) -> Address:
    """Parse a plain address strictly (no shorthand forms such as ``10.1``)."""
    if not isinstance(raw, str):
        raise InvalidConfigError(f"{field} must be a string, got {_show(raw)}")
    # The fast path reads what netaddr reads (tests/test_addr.py); what it refuses,
    # netaddr judges, so that netaddr stays the library of record.
    ip = parse_address(raw)
    if ip is None:
        ip = _parse_ip_with_netaddr(raw, field)
    _check_version(ip.version, version, field, raw)
    return ip


def _parse_ip_with_netaddr(raw: str, field: str) -> Address:
    import netaddr

    try:
        ip = netaddr.IPAddress(raw, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidConfigError(f"{field} {_show(raw)} is not a valid IP address") from None
    return Address(int(ip), ip.version)


def parse_cidr(raw: object, field: str, version: int | None = None) -> Network:
    """Parse ``address/prefix`` strictly; the prefix is required."""
    if not isinstance(raw, str):
        raise InvalidConfigError(f"{field} must be a string in CIDR notation, got {_show(raw)}")
    address, slash, prefix = raw.partition("/")
    if not slash or not (0 < len(prefix) <= 3 and prefix.isascii() and prefix.isdigit()):
        raise InvalidConfigError(f"{field} {_show(raw)} is not in CIDR notation (address/prefix)")
    ip = parse_ip(address, field, version)
    if int(prefix) > WIDTH[ip.version]:
        raise InvalidConfigError(f"{field} {_show(raw)} has an invalid prefix length")
    return Network(ip, int(prefix))


def _check_version(actual: int, expected: int | None, field: str, raw: str) -> None:
    if expected is not None and actual != expected:
        raise InvalidConfigError(f"{field} {_show(raw)} is not an IPv{expected} address")


def _is_text(value: str) -> bool:
    # JSON escapes and os.environ (undecodable bytes) can both yield lone surrogates,
    # which no store can record as text.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_long(text: str) -> bool:
    # A character is at most 4 bytes: most values are decided without encoding them.
    return len(text) > MAX_FIELD_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_FIELD_BYTES


def _show(value: object, limit: int = 64) -> str:
    """A short, JSON-safe rendering of a bad value for an error message."""
    return quoted(value, limit)


# --- environment --------------------------------------------------------------------------

# Two-letter units first: "ms" is milliseconds, not minutes followed by "s".
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DIGITS = "0123456789"


# Go's longest duration is 2^63-1 ns; the longest wait a lock of this process accepts
# (_thread.TIMEOUT_MAX) is that, in whole seconds.  Longer is code 4, not an OverflowError.
MAX_DURATION = 9223372036.0


def parse_go_duration(text: str, name: str) -> float:
    """Seconds in a Go duration string such as ``5s``, ``250ms`` or ``1m30s``."""
    if text == "0":
        return 0.0
    # Scanned by hand rather than with a regular expression: `re` costs a warm call
    # milliseconds of imports, and every configured timeout is parsed.  Each part is
    # digits, an optional fraction and a unit; one pass, so a long value fails in linear time.
    position, total = 0, 0.0
    while position < len(text):
        start = position
        while position < len(text) and text[position] in _DIGITS:
            position += 1
        if position < len(text) and text[position] == ".":
            position += 1
            while position < len(text) and text[position] in _DIGITS:
                position += 1
        number = text[start:position]
        unit = next((unit for unit in _DURATION_UNITS if text.startswith(unit, position)), None)
        if number in ("", ".") or unit is None:
            raise InvalidEnvironmentError(f"{name} {_show(text)} is not a duration such as 5s, 500ms or 1m30s")
        total += float(number) * _DURATION_UNITS[unit]
        position += len(unit)
    if not text:
        raise InvalidEnvironmentError(f"{name} is empty; use a duration such as 5s")
    if total > MAX_DURATION:
        raise InvalidEnvironmentError(
            f"{name} {_show(text)} is longer than the longest duration, {MAX_DURATION:.0f}s (about 292 years)"
        )
    return total


# CNI says these must be set for the commands that act on a container; DEL is best
# effort (the ECS agent releases with CNI_CONTAINERID="") and so needs none of them.
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_IFNAME"),
}


def attachment_of(command: str, container_id: str | None, ifname: str | None) -> Attachment:
    """The attachment that owns the allocation of a ``"owner": "attachment"`` command.

    :raises InvalidEnvironmentError: CNI_CONTAINERID or CNI_IFNAME is missing or not text.
    """
    for name, value in (("CNI_CONTAINERID", container_id), ("CNI_IFNAME", ifname)):
        if not value:
            raise InvalidEnvironmentError(f'{name} is required for {command} with ipam.owner "{ATTACHMENT_OWNER}"')
        if not _is_text(value):
            raise InvalidEnvironmentError(f"{name} {_show(value)} is not valid unicode text")
    assert container_id and ifname  # checked above, for mypy
    return Attachment(container_id, ifname)


def parse_environment(environ: Mapping[str, str]) -> Environment:
    """Read the CNI and plugin variables.

    :raises InvalidEnvironmentError: a required variable is missing or a value is invalid.
    """
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise InvalidEnvironmentError("CNI_COMMAND is not set")
    # Checked before stdin is read, so that an unknown command is reported as such
    # rather than as whatever is wrong with its (often empty) stdin.
    if command not in COMMANDS:
        raise InvalidEnvironmentError(f"CNI_COMMAND {_show(command)} is not one of {', '.join(COMMANDS)}")
    for name in _REQUIRED.get(command, ()):
        if not environ.get(name):
            raise InvalidEnvironmentError(f"{name} is required for {command}")
    if command == "ADD":
        # ADD records these two with the address (GC matches on them).
        for name in ("CNI_CONTAINERID", "CNI_IFNAME"):
            if not _is_text(environ[name]):
                raise InvalidEnvironmentError(f"{name} {_show(environ[name])} is not valid unicode text")
            if _too_long(environ[name]):
                raise InvalidEnvironmentError(
                    f"{name} {_show(environ[name])} is longer than {MAX_FIELD_BYTES} bytes, the limit"
                )
    return Environment(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        settings=Settings.from_environ(environ),
    )


# --- settings -----------------------------------------------------------------------------
# As the original plugin: a setting that is blank (not just empty) means the default.


def log_settings(environ: Mapping[str, str]) -> tuple[str, str]:
    """``(log_file, log_level)``; never fails, so that the plugin can log any other mistake."""
    log_file = environ.get("ECS_CNI_LOG_FILE") or ""
    log_level = environ.get("ECS_CNI_LOGLEVEL") or ""
    return (
        log_file if log_file.strip() else DEFAULT_LOG_FILE,
        log_level.lower() if log_level.strip() else DEFAULT_LOG_LEVEL,
    )


def _db_path(environ: Mapping[str, str]) -> str:
    db_path = environ.get("IPAM_DB_PATH") or ""
    if len(db_path) > MAX_DB_PATH:
        raise InvalidEnvironmentError(
            f"IPAM_DB_PATH {_show(db_path)} is {len(db_path)} characters long; the limit is {MAX_DB_PATH}"
        )
    if not _is_text(db_path):
        # LMDB takes its path as UTF-8 text; such a path cannot even be opened.
        raise InvalidEnvironmentError(f"IPAM_DB_PATH {_show(db_path)} is not valid unicode text")
    return db_path if db_path.strip() else DEFAULT_DB_PATH


def _timeout(environ: Mapping[str, str]) -> float:
    raw = environ.get("IPAM_DB_CONNECTION_TIMEOUT") or ""
    return DEFAULT_TIMEOUT if not raw.strip() else parse_go_duration(raw, "IPAM_DB_CONNECTION_TIMEOUT")


def operator_settings(
    environ: Mapping[str, str], exists: Callable[[str], bool], db_option: str | None = None
) -> tuple[Settings, dict[str, str]]:
    """The settings of a tool an operator runs, on the host or in the agent's container.

    The defaults are paths inside the ECS agent's container, which mounts host folders
    there (:data:`HOST_FOLDERS`).  For a default that neither the command line nor the
    environment replaces, the container path is used when it exists, else the host path
    when that exists: the database file itself, and the log file's folder.  The plugin
    never falls back: inside the container the host path means nothing.

    :param exists: ``os.path.exists``, or a stand-in in tests.
    :param db_option: the database named on the command line, which wins over the rest.
    :return: the settings, and notes for the tool to show: ``"database"`` or ``"log"``
        when a host path is used, ``"no database"`` when the default database is at
        neither path (the message for a tool that needs one).
    """
    settings = Settings.from_environ(environ)
    notes = {}
    db_path, log_file = settings.db_path if db_option is None else db_option, settings.log_file
    if db_option is None and not (environ.get("IPAM_DB_PATH") or "").strip():
        host = host_path(DEFAULT_DB_PATH)
        if not exists(DEFAULT_DB_PATH) and exists(host):
            db_path = host
            notes["database"] = f"using {host} (no {DEFAULT_DB_PATH} here)"
        elif not exists(DEFAULT_DB_PATH):
            notes["no database"] = f"no database at {DEFAULT_DB_PATH}, nor at {host} (its host side)"
    if not (environ.get("ECS_CNI_LOG_FILE") or "").strip():
        host = host_path(DEFAULT_LOG_FILE)
        if not exists(_folder(DEFAULT_LOG_FILE)) and exists(_folder(host)):
            log_file = host
            notes["log"] = f"logging to {host} (no {_folder(DEFAULT_LOG_FILE)} here)"
    return Settings(db_path, settings.timeout, log_file, settings.log_level), notes


def host_path(container_path: str) -> str:
    """Where the host keeps a file of the agent's container (the path itself if not mounted)."""
    for inside, outside in HOST_FOLDERS:
        if container_path.startswith(inside + "/"):
            return outside + container_path[len(inside) :]
    return container_path


def _folder(path: str) -> str:
    return path.rpartition("/")[0] or "/"
