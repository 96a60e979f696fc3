"""Parse and validate the INI configuration into frozen dataclasses.

Every error names the file, the section and the key, so that an operator can
fix it without reading code; the daemon exits 78 (EX_CONFIG) on any of them
and systemd does not restart-loop.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shlex
import socket
from dataclasses import dataclass, field

from electiond import keys as keysmod
from electiond.keys import Key
from electiond.protocols.base import Member, Settings

DEFAULT_PATH = "/etc/electiond/electiond.conf"
PROTOCOL_NAMES = ("bully", "ring", "quorum-lease", "etcd")
TRANSPORTS = ("multicast", "unicast")


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """[hooks]: each command is an argv (shlex-split); empty means none."""

    promote: tuple[str, ...] = ()
    demote: tuple[str, ...] = ()
    fault: tuple[str, ...] = ()
    # run every refresh_interval_s while leader (ELECTIOND_EVENT=refresh): re-announce a VIP
    refresh: tuple[str, ...] = ()
    refresh_interval_s: float = 60.0
    # holds promote.d/, demote.d/, fault.d/ run in lexical order (run-parts rules)
    directory: str | None = None
    timeout_s: float = 30.0
    kill_grace_s: float = 5.0
    on_promote_failure: str = "stepdown"  # or "ignore"
    # consecutive failed promotes (each backs off longer) before FAULT; 0: never FAULT
    max_promote_failures: int = 3


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """[health]: what must be healthy for this node to stand for election."""

    track_process: tuple[str, ...] = ()  # process names or regex patterns
    track_script: tuple[str, ...] = ()  # argv of one check command; exit 0 = healthy
    track_interface: tuple[str, ...] = ()  # interface names; link down = unhealthy
    interval_s: float = 2.0
    timeout_s: float = 5.0
    rise: int = 2
    fall: int = 2


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """[etcd]: where the etcd cluster is and how to reach it (protocol = etcd)."""

    endpoints: tuple[str, ...]
    prefix: str  # every key electiond writes lies under it
    lease_ttl_s: int
    lease_guard_s: float
    request_timeout_s: float
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    protocol: str
    settings: Settings
    group: str
    port: int
    interface: str  # an IPv4 address or an interface name (resolved by net.py)
    key_file: str | None
    keys: tuple[Key, ...]  # the first signs, all are accepted; () = unauthenticated
    control_socket: str
    control_socket_mode: int
    state_directory: str
    hooks: HooksConfig
    health: HealthConfig
    log_level: str
    warnings: tuple[str, ...] = ()
    # [control]: bounds that keep idle or hostile clients from using up descriptors
    control_max_connections: int = 64
    control_idle_timeout_s: float = 10.0
    # [control] metrics_listen = host:port: Prometheus text over HTTP (None: off)
    metrics_listen: tuple[str, int] | None = None
    # [control] admin_group: besides root, who may transfer/stepdown/pause/resume
    admin_group: str | None = None
    # [monitor] more leadership changes than this in an hour: a warning, a status flag, a metric
    max_changes_per_hour: int = 2
    etcd: EtcdConfig | None = None  # set when protocol = etcd
    # [cluster] transport: "multicast" (the group) or "unicast" (each member's address)
    transport: str = "multicast"
    # transport = unicast: member name -> (address, port) it sends from and receives on
    member_addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def own_address(self) -> tuple[str, int] | None:
        """transport = unicast: where this node binds; None with multicast."""
        return self.member_addresses.get(self.settings.node_name)


class ConfigError(Exception):
    def __init__(self, path: str, section: str | None, key: str | None, message: str) -> None:
        where = path
        if section:
            where += f": [{section}]"
        if key:
            where += f" {key}"
        super().__init__(f"{where}: {message}")
        self.path, self.section, self.key = path, section, key


# section -> known keys; anything else is a typo and an error
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "cluster": ("name", "protocol", "members", "group", "port", "interface", "key_file", "transport", "witnesses"),
    "node": ("name", "preempt", "preempt_delay", "priority", "log_level", "role"),
    "timing": (
        "heartbeat_interval", "election_timeout", "lease", "lease_max", "lease_guard", "clock_drift", "clock_check",
        "suspicion_threshold", "min_suspicion_timeout", "max_suspicion_timeout",
        "backoff_base", "backoff_max", "backoff_jitter", "answer_timeout",
    ),
    "control": ("socket", "socket_mode", "max_connections", "idle_timeout", "metrics_listen", "admin_group"),
    "state": ("directory",),
    "hooks": ("promote", "demote", "fault", "directory", "timeout", "kill_grace", "on_promote_failure",
              "max_promote_failures", "refresh", "refresh_interval"),
    "monitor": ("max_changes_per_hour",),
    "health": ("track_process", "track_script", "track_interface", "interval", "timeout", "rise", "fall"),
    "etcd": ("endpoints", "prefix", "lease_ttl", "lease_guard", "request_timeout", "ca_file", "cert_file",
             "key_file", "user", "password", "password_file"),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def parse_duration_s(text: str) -> float:
    """'50ms', '1.5s', '2m' -> seconds. A unit is required: '50' is ambiguous."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"bad duration {text.strip()!r} (expected a number with ms, s or m, e.g. 150ms)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


_MEMBER = re.compile(r"^(?P<name>[^=@\s]*)\s*=\s*(?P<id>[^@]*?)\s*(?:@(?P<where>.*))?$")


def _split_where(name: str, text: str) -> tuple[str, str | None]:
    """'10.0.0.1', '10.0.0.1:7701', '[2001:db8::3]', '[::1]:7703' -> (address, port text or None)."""
    if text.startswith("["):
        address, sep, rest = text.partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"member {name!r}: bad address {text!r} (e.g. [2001:db8::3] or [::1]:7703)")
        return address + "]", rest[1:] if rest else None
    if text.count(":") > 1:
        raise ValueError(f"member {name!r}: {text!r} is not an IP address (IPv6 goes in brackets, "
                         "e.g. n3=3@[2001:db8::3]:7676)")
    address, sep, port = text.partition(":")
    return address, port if sep else None


def _parse_member_address(name: str, text: str) -> str:
    """An IP address as written after '@' (IPv6 in brackets), in canonical form."""
    bracketed = text.startswith("[")
    bare = text[1:-1] if bracketed else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(f"member {name!r}: {text!r} is not an IP address "
                         "(IPv6 goes in brackets, e.g. n3=3@[2001:db8::3])") from None
    if address.version == 6 and not bracketed:
        raise ValueError(f"member {name!r}: write IPv6 addresses in brackets, e.g. @[{bare}]")
    if address.version == 4 and bracketed:
        raise ValueError(f"member {name!r}: brackets are for IPv6 addresses, got {text!r}")
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"member {name!r}: {bare} is not a unicast host address")
    if address.version == 6 and address.is_link_local:
        raise ValueError(f"member {name!r}: link-local {bare} needs a scope; use a global or ULA address")
    return address.compressed


def parse_member_list(text: str) -> tuple[tuple[Member, ...], dict[str, tuple[str, int | None]]]:
    """``name=id[@address[:port]]`` items: the members, and the address
    (with its port, None where the item names none) of those that give one."""
    members: list[Member] = []
    addresses: dict[str, tuple[str, int | None]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        m = _MEMBER.match(item)
        name, ident = (m.group("name"), m.group("id")) if m else ("", "")
        if not m or not _NAME.match(name):
            raise ValueError(f"bad member {item!r} (expected name=id, e.g. n1=1, or name=id@address[:port])")
        if not ident.isdigit() or int(ident) < 1:
            raise ValueError(f"member {name!r} needs a positive integer id, got {ident!r}")
        members.append(Member(name, int(ident)))
        if m.group("where") is not None:
            address_text, port_text = _split_where(name, m.group("where").strip())
            address = _parse_member_address(name, address_text)
            port = None
            if port_text is not None:
                if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                    raise ValueError(f"member {name!r}: bad port {port_text!r} (1-65535)")
                port = int(port_text)
            addresses[name] = (address, port)
    if not members:
        raise ValueError("no members listed")
    names = [m.name for m in members]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"member name {n!r} is listed twice")
    ids = [m.id for m in members]
    for i in ids:
        if ids.count(i) > 1:
            raise ValueError(f"member id {i} is used twice")
    return tuple(members), addresses


def parse_members(text: str) -> tuple[Member, ...]:
    return parse_member_list(text)[0]


def _unicast_addresses(cluster: "_Section", members: tuple[Member, ...],
                       given: dict[str, tuple[str, int | None]], port: int) -> dict[str, tuple[str, int]]:
    """transport = unicast: every member has an address; no two share address
    and port; one IP family (a node sends from one socket)."""
    missing = [m.name for m in members if m.name not in given]
    if missing:
        raise cluster.error("members", f"transport = unicast needs an address for every member; "
                            f"{', '.join(missing)} has none (e.g. {missing[0]}=ID@10.0.0.1)")
    resolved = {name: (address, p if p is not None else port) for name, (address, p) in given.items()}
    seen: dict[tuple[str, int], str] = {}
    for m in members:
        where = resolved[m.name]
        if where in seen:
            raise cluster.error("members", f"{seen[where]} and {m.name} share the address "
                                f"{_show_address(where)}; give each its own address or port")
        seen[where] = m.name
    families = {ipaddress.ip_address(a).version for a, _ in resolved.values()}
    if len(families) > 1:
        raise cluster.error("members", "mixes IPv4 and IPv6 member addresses; use one family for all")
    return resolved


def _show_address(where: tuple[str, int]) -> str:
    address, port = where
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def address_is_local(address: str) -> bool:
    """Whether an interface of this host holds address now (127/8 always does)."""
    import psutil

    parsed = ipaddress.ip_address(address)
    if parsed.is_loopback:
        return True
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            try:
                if ipaddress.ip_address(addr.address.split("%")[0]) == parsed:
                    return True
            except ValueError:
                continue
    return False


class _Section:
    """Typed getters that turn every failure into a ConfigError naming the key."""

    def __init__(self, path: str, parser: configparser.ConfigParser, name: str) -> None:
        self.path, self.name = path, name
        self._values = dict(parser[name]) if parser.has_section(name) else {}

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, self.name, key, message)

    def raw(self, key: str, default: str | None = None) -> str | None:
        value = self._values.get(key)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def required(self, key: str) -> str:
        value = self.raw(key)
        if value is None:
            raise self.error(key, "is required")
        return value

    def convert(self, key: str, default, convert):
        value = self.raw(key)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def duration_s(self, key: str, default: float, minimum_s: float = 0.001) -> float:
        value = self.convert(key, default, parse_duration_s)
        if value < minimum_s:
            raise self.error(key, f"must be at least {minimum_s * 1000:g}ms")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        def convert(text: str) -> bool:
            lowered = text.lower()
            if lowered in ("yes", "true", "on", "1"):
                return True
            if lowered in ("no", "false", "off", "0"):
                return False
            raise ValueError(f"expected yes or no, got {text!r}")
        return self.convert(key, default, convert)

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        def convert(text: str) -> int:
            try:
                number = int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
            if not minimum <= number <= maximum:
                raise ValueError(f"must be between {minimum} and {maximum}, got {number}")
            return number
        return self.convert(key, default, convert)

    def number(self, key: str, default: float, minimum: float) -> float:
        def convert(text: str) -> float:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
            if number < minimum:
                raise ValueError(f"must be at least {minimum:g}")
            return number
        return self.convert(key, default, convert)

    def argv(self, key: str) -> tuple[str, ...]:
        return self.convert(key, (), lambda text: tuple(shlex.split(text)))

    def words(self, key: str) -> tuple[str, ...]:
        return self.convert(key, (), lambda text: tuple(w for w in re.split(r"[\s,]+", text) if w))


def _parse_drift_ppm(text: str) -> float:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*ppm\s*$", text)
    if not m:
        raise ValueError(f"bad clock drift {text!r} (expected e.g. 1000ppm)")
    ppm = float(m.group(1))
    if ppm >= 100_000:
        raise ValueError("must be below 100000ppm")
    return ppm


def _parse_timeout_range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    low_s = parse_duration_s(low)
    high_s = parse_duration_s(high) if sep else low_s
    if high_s < low_s:
        raise ValueError(f"range {text!r} ends before it starts")
    return low_s, high_s


def _parse_interface(text: str) -> str:
    try:
        ipaddress.IPv4Address(text)
        return text
    except ValueError:
        pass
    if not _IFNAME.match(text):
        raise ValueError(f"{text!r} is neither an IPv4 address nor an interface name")
    return text


def _is_ipv6_address(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _is_interface_name(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return False
    except ValueError:
        return bool(_IFNAME.match(text))


def _parse_group(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if not address.is_multicast:
        raise ValueError(f"{text} is not a multicast address (224.0.0.0/4 or ff00::/8)")
    if address.version == 6 and (int(address) >> 112) & 0xF not in (2, 5):
        # node- and interface-local scopes never leave the host; wider ones may be routed
        raise ValueError(f"{text}: use a link-local (ff02::/16) or site-local (ff05::/16) group")
    return address.compressed


def _parse_process_patterns(text: str) -> tuple[str, ...]:
    """Names or regexes, split like a shell would so a regex may hold spaces if quoted."""
    patterns = tuple(shlex.split(text))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad process pattern {pattern!r}: {exc}") from None
    return patterns


def _parse_mode(text: str) -> int:
    if not re.match(r"^0?[0-7]{3}$", text):
        raise ValueError(f"expected an octal mode like 0660, got {text!r}")
    return int(text, 8)


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected address:port, e.g. 127.0.0.1:9798, got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (e.g. 127.0.0.1:9798)") from None
    return host, int(port)


def _parse_group_name(text: str) -> str:
    import grp

    try:
        grp.getgrnam(text)
    except KeyError:
        raise ValueError(f"no such group {text!r}") from None
    return text


def hook_problems(cfg: "Config") -> list[str]:
    """Hook commands that cannot run: for --check-config (exit 78). Checked
    there, not at start, so a hook installed after the daemon still works."""
    import shutil

    problems = []
    for event in ("promote", "demote", "fault", "refresh"):
        argv = getattr(cfg.hooks, event)
        if not argv:
            continue
        program = argv[0]
        if "/" in program:
            if not os.path.exists(program):
                problems.append(f"[hooks] {event}: {program} does not exist")
            elif not os.path.isfile(program) or not os.access(program, os.X_OK):
                problems.append(f"[hooks] {event}: {program} is not an executable file")
        elif shutil.which(program) is None:
            problems.append(f"[hooks] {event}: {program!r} is not found on PATH")
    return problems
def _parse_endpoint(text: str) -> str:
    m = re.match(r"^(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?$", text)
    if not m or not 1 <= int(m.group(3)) <= 65535:
        raise ValueError(f"bad endpoint {text!r} (expected http://host:port or https://host:port)")
    return f"{m.group(1)}://{m.group(2)}:{m.group(3)}"


def _readable_file(section: _Section, key: str) -> str | None:
    path = section.raw(key)
    if path is None:
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise section.error(key, f"cannot read {path}: {exc.strerror}") from None
    return path


def _etcd_section(sec: _Section, cluster_name: str, drift_ppm: float) -> tuple[EtcdConfig, str | None]:
    """The [etcd] section; also returns a warning, if any."""
    endpoints = sec.convert("endpoints", (), lambda t: tuple(
        _parse_endpoint(w) for w in re.split(r"[\s,]+", t) if w))
    if not endpoints:
        raise sec.error("endpoints", "is required with protocol = etcd (e.g. http://10.0.0.1:2379, ...)")
    prefix = sec.raw("prefix", f"/electiond/{cluster_name}/")
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise sec.error("prefix", f"{prefix!r} must start and end with '/'")
    ttl_s = sec.duration_s("lease_ttl", 5.0, minimum_s=2.0)
    if ttl_s != int(ttl_s):
        raise sec.error("lease_ttl", "etcd leases are whole seconds (e.g. 5s)")
    guard_s = sec.duration_s("lease_guard", 0.5, minimum_s=0.0)
    rho = drift_ppm / 1e6
    if ttl_s * (1 - rho) / (1 + rho) - guard_s < ttl_s / 2:
        raise sec.error("lease_guard", f"leaves less than half of the {ttl_s:g}s lease_ttl: keep-alives "
                        "sent every third of the TTL could not keep it")
    request_timeout_s = sec.duration_s("request_timeout", min(1.0, ttl_s / 4), minimum_s=0.05)
    if request_timeout_s > ttl_s / 2:
        raise sec.error("request_timeout", "must be at most half of lease_ttl")
    tls_files = {key: _readable_file(sec, key) for key in ("ca_file", "cert_file", "key_file")}
    if bool(tls_files["cert_file"]) != bool(tls_files["key_file"]):
        raise sec.error("cert_file" if tls_files["key_file"] else "key_file",
                        "cert_file and key_file go together (client certificate authentication)")
    if any(tls_files.values()) and not all(e.startswith("https://") for e in endpoints):
        raise sec.error("endpoints", "TLS files are set but some endpoints are http://")
    user = sec.raw("user")
    password = sec.raw("password")
    password_file = _readable_file(sec, "password_file")
    if password and password_file:
        raise sec.error("password_file", "set password or password_file, not both")
    if password_file:
        with open(password_file, encoding="utf-8") as f:
            password = f.read().strip()
    if (password is not None) != (user is not None):
        raise sec.error("user" if password is not None else "password", "user and password go together")
    warning = None
    if user and any(e.startswith("http://") for e in endpoints):
        warning = "[etcd] user: the password travels in clear text over http:// endpoints"
    return EtcdConfig(endpoints, prefix, int(ttl_s), guard_s, request_timeout_s, tls_files["ca_file"],
                      tls_files["cert_file"], tls_files["key_file"], user, password), warning


TWO_MEMBERS_FIX = ("a two-member quorum-lease cluster needs both members for a majority, so it survives no "
                   "failure; add a third member as a witness (it votes but never leads and needs no hooks): "
                   "members = a=1, b=2, w=3 and witnesses = w, with [node] role = witness on w")


def _witnesses(cluster: _Section, members: tuple[Member, ...], protocol: str) -> tuple[str, ...]:
    """[cluster] witnesses: the members that vote but never stand (quorum-lease only)."""
    witnesses = cluster.words("witnesses")
    names = [m.name for m in members]
    for w in witnesses:
        if w not in names:
            raise cluster.error("witnesses", f"{w!r} is not in members")
        if witnesses.count(w) > 1:
            raise cluster.error("witnesses", f"{w!r} is listed twice")
    if witnesses and protocol != "quorum-lease":
        raise cluster.error("witnesses", f"a witness only votes in quorum-lease; {protocol} has no quorum "
                            "to vote in (remove the key, or use protocol = quorum-lease)")
    if witnesses and len(witnesses) == len(members):
        raise cluster.error("witnesses", "every member is a witness: nobody could lead")
    if protocol == "quorum-lease" and len(members) == 2:
        raise cluster.error("members", TWO_MEMBERS_FIX)
    return witnesses


def _check_role(node: _Section, name: str, witnesses: tuple[str, ...]) -> None:
    """[node] role must agree with [cluster] witnesses: every node's config lists
    the witnesses, and a node that disagrees about itself would stand while its
    peers count it as a witness, or the reverse."""
    role = node.raw("role", "voter")
    if role not in ("voter", "witness"):
        raise node.error("role", f"expected voter or witness, got {role!r}")
    if role == "witness" and name not in witnesses:
        raise node.error("role", f"is witness but [cluster] witnesses does not list {name!r}: "
                         "every node's config must list the same witnesses")
    if role == "voter" and name in witnesses:
        raise node.error("role", f"[cluster] witnesses lists {name!r}: set role = witness in its [node] "
                         "section (or remove it from witnesses)")


def _read_keys(path: str, section: _Section) -> tuple[Key, ...]:
    try:
        return keysmod.load(path)
    except keysmod.KeyFileError as exc:
        raise section.error("key_file", str(exc)) from None


def load(path: str = DEFAULT_PATH, node_name: str | None = None) -> Config:
    """Read and validate a config file; raises ConfigError."""
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";",),
        comment_prefixes=("#", ";"),
        empty_lines_in_values=False,
        strict=True,
    )
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror}") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(path, exc.section, exc.option, "is set twice") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(path, exc.section, None, "section appears twice") from None
    except configparser.Error as exc:
        raise ConfigError(path, None, None, f"not a valid INI file: {exc.message}") from None
    return _validate(path, parser, node_name)


def _validate(path: str, parser: configparser.ConfigParser, node_override: str | None) -> Config:
    for section_name in parser.sections():
        if section_name not in KNOWN_KEYS:
            raise ConfigError(path, section_name, None, f"unknown section (known: {', '.join(KNOWN_KEYS)})")
        for key in parser[section_name]:
            if key not in KNOWN_KEYS[section_name]:
                raise ConfigError(path, section_name, key, "unknown key")
    warnings: list[str] = []
    sec = {name: _Section(path, parser, name) for name in KNOWN_KEYS}

    cluster = sec["cluster"]
    cluster_name = cluster.required("name")
    if not _NAME.match(cluster_name):
        raise cluster.error("name", f"{cluster_name!r}: use letters, digits, '.', '_' or '-'")
    protocol = cluster.raw("protocol", "quorum-lease")
    if protocol not in PROTOCOL_NAMES:
        raise cluster.error("protocol", f"unknown protocol {protocol!r} (choose {', '.join(PROTOCOL_NAMES)})")
    transport = cluster.raw("transport", "multicast")
    if transport not in TRANSPORTS:
        raise cluster.error("transport", f"expected multicast or unicast, got {transport!r}")
    parsed_members = cluster.convert("members", None, parse_member_list)
    members, given_addresses = parsed_members if parsed_members else (None, {})
    if members is None:
        raise cluster.error("members", "is required (e.g. members = n1=1, n2=2, n3=3); the packaged config "
                            "leaves it, and the key file, for the admin to write (README.Debian)")
    witnesses = _witnesses(cluster, members, protocol)
    if len(members) % 2 == 0 and not (protocol == "quorum-lease" and len(members) == 2):
        warnings.append(
            f"{path}: [cluster] members: {len(members)} members is an even count; "
            f"it tolerates no more failures than {len(members) - 1}"
        )
    group = cluster.convert("group", "239.255.76.1", _parse_group)
    port = cluster.integer("port", 7676, 1, 65535)
    interface = cluster.convert("interface", "127.0.0.1", _parse_interface)
    member_addresses: dict[str, tuple[str, int]] = {}
    if transport == "unicast":
        # never a silent fallback: what would only matter to multicast is an error here
        for key in ("group", "interface"):
            if cluster.raw(key) is not None:
                raise cluster.error(key, "is for transport = multicast; with unicast each member's "
                                    "address in members says where it is")
        member_addresses = _unicast_addresses(cluster, members, given_addresses, port)
    elif given_addresses:
        raise cluster.error("members", f"gives addresses ({', '.join(given_addresses)}) but transport is "
                            "multicast; set [cluster] transport = unicast, or drop the @addresses")
    elif ipaddress.ip_address(group).version == 6 and not _is_interface_name(interface):
        raise cluster.error("interface", "an IPv6 group needs the interface name of its link (e.g. eth0)")
    elif ipaddress.ip_address(group).version == 4 and _is_ipv6_address(interface):
        raise cluster.error("interface", "an IPv4 group needs an IPv4 address or an interface name")
    key_file = cluster.raw("key_file")
    keys = _read_keys(key_file, cluster) if key_file else ()

    node = sec["node"]
    name = node_override or node.raw("name") or socket.gethostname().split(".")[0]
    if name not in {m.name for m in members}:
        key_name = None if node_override else "name"
        raise ConfigError(path, "node", key_name, f"node {name!r} is not in [cluster] members")
    if transport == "unicast" and not address_is_local(member_addresses[name][0]):
        warnings.append(f"{path}: [cluster] members: {name}'s address {member_addresses[name][0]} is not "
                        "configured on this host (yet); the daemon waits for it")
    _check_role(node, name, witnesses)
    log_level = node.raw("log_level", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise node.error("log_level", f"expected debug, info, warning or error, got {log_level!r}")

    timing = sec["timing"]
    heartbeat_s = timing.duration_s("heartbeat_interval", 0.05)
    election_min_s, election_max_s = timing.convert("election_timeout", (0.15, 0.30), _parse_timeout_range)
    if election_min_s <= heartbeat_s:
        raise timing.error("election_timeout", "must be longer than heartbeat_interval")
    lease_s = timing.duration_s("lease", 0.15)
    lease_guard_s = timing.duration_s("lease_guard", min(0.02, lease_s / 5), minimum_s=0.0)
    if protocol == "quorum-lease" and lease_s - lease_guard_s < 2 * heartbeat_s:
        raise timing.error(
            "lease",
            f"{lease_s * 1000:g}ms leaves room for fewer than two renewals at heartbeat_interval "
            f"{heartbeat_s * 1000:g}ms after the {lease_guard_s * 1000:g}ms guard; "
            "lengthen the lease or shorten the heartbeat",
        )
    # adaptive lease ceiling: 10 heartbeats (500 ms at the defaults), never below the lease
    lease_max_s = timing.duration_s("lease_max", max(lease_s, 10 * heartbeat_s))
    if lease_max_s < lease_s:
        raise timing.error("lease_max", f"must not be below lease ({lease_s * 1000:g}ms); "
                           "set it equal to turn the adaptive lease off")
    min_suspicion_s = timing.duration_s("min_suspicion_timeout", max(2 * heartbeat_s, 0.02))
    max_suspicion_s = timing.duration_s("max_suspicion_timeout", max(1.0, 2 * election_max_s))
    if max_suspicion_s < min_suspicion_s:
        raise timing.error("max_suspicion_timeout", "must not be below min_suspicion_timeout")
    backoff_base_s = timing.duration_s("backoff_base", heartbeat_s)
    backoff_max_s = timing.duration_s("backoff_max", 2.0)
    if backoff_max_s < backoff_base_s:
        raise timing.error("backoff_max", "must not be below backoff_base")

    etcd = None
    drift_ppm = timing.convert("clock_drift", 1000.0, _parse_drift_ppm)
    if protocol == "etcd":
        etcd, etcd_warning = _etcd_section(sec["etcd"], cluster_name, drift_ppm)
        if etcd_warning:
            warnings.append(f"{path}: {etcd_warning}")
        lease_guard_s = etcd.lease_guard_s
    elif parser.has_section("etcd"):
        warnings.append(f"{path}: [etcd] is ignored: [cluster] protocol is {protocol}, not etcd")

    settings = Settings(
        cluster=cluster_name,
        node_name=name,
        members=members,
        heartbeat_interval_s=heartbeat_s,
        election_timeout_min_s=election_min_s,
        election_timeout_max_s=election_max_s,
        preempt=node.boolean("preempt", True),
        preempt_delay_s=node.duration_s("preempt_delay", 5.0, minimum_s=0.0),
        priority=node.integer("priority", 100, 0, 255),
        lease_s=lease_s,
        lease_max_s=lease_max_s,
        clock_drift_ppm=drift_ppm,
        etcd_lease_ttl_s=etcd.lease_ttl_s if etcd else 5,
        clock_check_s=timing.duration_s("clock_check", 2.0, minimum_s=0.0),
        lease_guard_s=lease_guard_s,
        suspicion_threshold=timing.number("suspicion_threshold", 8.0, 0.5),
        min_suspicion_timeout_s=min_suspicion_s,
        max_suspicion_timeout_s=max_suspicion_s,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        backoff_jitter_s=timing.duration_s("backoff_jitter", heartbeat_s, minimum_s=0.0),
        answer_timeout_s=timing.duration_s("answer_timeout", 2 * heartbeat_s),
        witnesses=witnesses,
    )

    control = sec["control"]
    state = sec["state"]
    hooks_sec = sec["hooks"]
    on_failure = hooks_sec.raw("on_promote_failure", "stepdown")
    if on_failure not in ("stepdown", "ignore"):
        raise hooks_sec.error("on_promote_failure", f"expected stepdown or ignore, got {on_failure!r}")
    hooks = HooksConfig(
        promote=hooks_sec.argv("promote"),
        demote=hooks_sec.argv("demote"),
        fault=hooks_sec.argv("fault"),
        refresh=hooks_sec.argv("refresh"),
        refresh_interval_s=hooks_sec.duration_s("refresh_interval", 60.0, minimum_s=0.1),
        directory=hooks_sec.raw("directory"),
        timeout_s=hooks_sec.duration_s("timeout", 30.0),
        kill_grace_s=hooks_sec.duration_s("kill_grace", 5.0),
        on_promote_failure=on_failure,
        max_promote_failures=hooks_sec.integer("max_promote_failures", 3, 0, 1000),
    )
    if name in witnesses and (hooks.promote or hooks.refresh):
        warnings.append(f"{path}: [hooks] promote and refresh never run on a witness ({name} never leads)")
    health_sec = sec["health"]
    health = HealthConfig(
        track_process=health_sec.convert("track_process", (), _parse_process_patterns),
        track_script=health_sec.argv("track_script"),
        track_interface=health_sec.words("track_interface"),
        interval_s=health_sec.duration_s("interval", 2.0),
        timeout_s=health_sec.duration_s("timeout", 5.0),
        rise=health_sec.integer("rise", 2, 1, 100),
        fall=health_sec.integer("fall", 2, 1, 100),
    )
    return Config(
        path=path,
        protocol=protocol,
        settings=settings,
        group=group,
        port=port,
        interface=interface,
        key_file=key_file,
        keys=keys,
        control_socket=control.raw("socket", "/run/electiond/control.sock"),
        control_socket_mode=control.convert("socket_mode", 0o660, _parse_mode),
        state_directory=state.raw("directory", "/var/lib/electiond"),
        hooks=hooks,
        health=health,
        log_level=log_level,
        warnings=tuple(warnings),
        control_max_connections=control.integer("max_connections", 64, 1, 4096),
        control_idle_timeout_s=control.duration_s("idle_timeout", 10.0, minimum_s=0.1),
        metrics_listen=control.convert("metrics_listen", None, _parse_listen),
        admin_group=control.convert("admin_group", None, _parse_group_name),
        max_changes_per_hour=sec["monitor"].integer("max_changes_per_hour", 2, 0, 100000),
        etcd=etcd,
        transport=transport,
        member_addresses=member_addresses,
    )
