"""Configuration: endpoint URLs and the TOML file. Errors name the key or argument at fault.

URLs (docs/cli.md): `vcan0` or `can://vcan0` is a SocketCAN interface (channel = its position); a peer
URL's scheme names a protocol of bridge.protocols.registry (tcp, tcp-listen, udp, cannelloni+..., socketcand,
udp-multicast, and third-party ones), which gives its default host and port and the options it takes.
Query options on peer URLs: mtu=BYTES (udp), filter=SPEC (bus -> peer), inbound_filter=SPEC;
access control (bridge/security/access.py): read_only=1, write_allow=SPEC, rate=FRAMES_PER_S, burst=N, and on
servers max_clients=N; TLS and encrypted UDP (bridge/security/options.py): tls_cert, tls_key, tls_ca,
tls_server_name=PATH/NAME, psk=HEX, psk_file=PATH; dead peers, queues and stale frames
(bridge/endpoints/liveness.py): timeout=SECONDS, overflow=drop-oldest|disconnect, max_age=SECONDS, sndbuf=BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from bridge.security import access as access_control
from bridge.security import options as security
from bridge.codec.filters import FilterSet, parse_filters
from bridge.codec.native import DEFAULT_PORT  # noqa: F401 (config.DEFAULT_PORT: the native protocol's port)
from bridge.endpoints import liveness
from bridge.protocols import base as proto
from bridge.protocols import registry
from bridge.errors import ConfigError
from bridge.daemon.ops_config import OpsConfig, ops_from_table
from bridge.hw.linksettings import LINK_KEYS, link_value

DEFAULT_MTU = 1472
MAX_CLIENTS = 64  # default max_clients of a server peer (bridge.endpoints.tcp.TcpServer)
IFNAMSIZ = 16


@dataclass
class InterfaceConfig:
    name: str
    fd: bool | None = None  # None: CAN FD when the link MTU is 72
    error_frames: bool = False
    filter: FilterSet | None = None  # kernel RX filter
    rx_buffer: int | None = None  # SO_RCVBUF bytes; None = bridge.endpoints.socketcan.RX_BUFFER
    max_age: float = liveness.DEFAULT_MAX_AGE_S  # seconds a frame may wait in the TX queue; 0 = no limit
    tx_flush: str = "auto"  # a stuck controller's kernel queue: auto|on|off (bridge/endpoints/txflush.py)
    link: dict[str, int | float] = field(default_factory=dict)  # LINK_KEYS given; the bridge ignores them


@dataclass
class PeerConfig:
    url: str
    scheme: str  # a scheme of bridge.protocols.registry
    host: str
    port: int
    bind: tuple[str, int] | None = None
    mtu: int = DEFAULT_MTU
    filter: FilterSet | None = None  # bus -> peer
    inbound_filter: FilterSet | None = None  # peer -> bus
    extra: dict = field(default_factory=dict)  # the protocol's own options (its extra_options), checked by it
    access: access_control.Access = field(default_factory=access_control.Access)  # read_only, write_allow, rate, burst
    max_clients: int = MAX_CLIENTS  # servers: connections at once; more are accepted and closed at once
    security: security.Security = field(default_factory=security.Security)  # TLS files, UDP psk
    limits: liveness.PeerLimits = liveness.DEFAULT_LIMITS  # timeout, overflow, max_age, sndbuf (liveness.py)

    @property
    def protocol(self):
        """The protocol class of `scheme` (bridge.protocols.registry.get)."""
        return registry.get(self.scheme)


@dataclass
class Config:
    interfaces: list[InterfaceConfig] = field(default_factory=list)
    peers: list[PeerConfig] = field(default_factory=list)
    user: str | None = None  # drop privileges to this user once every socket is open (bridge/daemon/privileges.py)
    ops: OpsConfig = field(default_factory=lambda: OpsConfig())  # [bridge] control/metrics (daemon/operations.py)
    source: str | None = None  # the TOML file it came from (SIGHUP re-reads it)

    def validate(self) -> Config:
        if not self.interfaces:
            raise ConfigError("no CAN interface given (e.g. vcan0)")
        if not self.peers:
            raise ConfigError("no peer given (e.g. tcp-listen://127.0.0.1:29600)")
        names = [i.name for i in self.interfaces]
        if len(set(names)) != len(names):
            raise ConfigError(f"interface listed twice: {names}")
        if len(names) > 255:
            raise ConfigError("at most 255 interfaces (channel index is one byte)")
        for peer in self.peers:
            access_control.check(peer.access, f"peer {peer.url!r}")
        return self


def is_peer_url(text: str) -> bool:
    return "://" in text and text.split("://", 1)[0] not in ("can",)


def parse_interface(text: str, where: str = "interface") -> InterfaceConfig:
    """`vcan0`, `can://vcan0`, or candump style `vcan0,123:7FF` (kernel RX filter)."""
    name = text[len("can://") :] if text.startswith("can://") else text
    name, _, spec = name.partition(",")
    if not name or len(name) >= IFNAMSIZ or "/" in name or " " in name:
        raise ConfigError(f"{where}: {text!r} is not a network interface name (e.g. vcan0, can0)")
    return InterfaceConfig(name=name, filter=_filters(spec, where) if spec else None)


def parse_peer_url(url: str, where: str = "peer", options: dict | None = None) -> PeerConfig:
    """A peer URL -> PeerConfig; `options`: more options (a [[peer]] table's keys), applied after the URL's.
    The scheme's protocol (bridge.protocols.registry) says its default host and port and which options
    it takes. ConfigError naming `where` and the part at fault."""
    parts = urlsplit(url)
    scheme = parts.scheme
    try:
        protocol = registry.get(scheme)
    except LookupError:
        raise ConfigError(f"{where}: unknown scheme in {url!r}; expected one of "
                          f"{', '.join(registry.schemes())}") from None
    except ImportError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," in hosts and getattr(protocol, "host_list", False):  # mqtt://n1:1883,n2/fleet: the protocol reads
        parts = parts._replace(netloc=userinfo + at + hosts.split(",")[0])  # the list; the first is the host
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: bad port in {url!r}: {exc}") from None
    host = parts.hostname or protocol.default_host
    if not host:
        raise ConfigError(f"{where}: {url!r} needs a host, e.g. {scheme}://127.0.0.1:{protocol.default_port}")
    peer = PeerConfig(url=url, scheme=scheme, host=host, port=port or protocol.default_port)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        _apply_option(peer, key, value, f"{where} {url!r}")
    for key, value in (options or {}).items():
        _apply_option(peer, key, value, where)
    protocol.configure(peer, f"{where} {url!r}")
    return peer


def _extra_options(url) -> tuple[str, ...]:
    """The extra options of the protocol of `url` (nothing when the URL is not usable: its own error
    comes from parse_peer_url)."""
    try:
        return registry.get(urlsplit(url).scheme).extra_options if isinstance(url, str) else ()
    except (LookupError, ImportError):
        return ()


# option -> the group (bridge.protocols.base) a protocol lists in `options` to take it
OPTION_GROUPS = {
    "filter": proto.FILTERS, "inbound_filter": proto.FILTERS,
    **dict.fromkeys(access_control.ACCESS_OPTIONS, proto.ACCESS),
    **dict.fromkeys(security.TLS_OPTIONS, proto.TLS), **dict.fromkeys(security.PSK_OPTIONS, proto.PSK),
    **dict.fromkeys(liveness.LIMIT_OPTIONS, proto.LIMITS),
    "mtu": proto.MTU, "bind": proto.BIND, "max_clients": proto.MAX_CLIENTS,
}


def _schemes_taking(key: str) -> str:
    """The schemes whose protocol takes option `key`, for an error message (imports every protocol, so
    only on that path; one whose module cannot be imported, e.g. mqtt without paho, is left out)."""
    takes = []
    for scheme in registry.schemes():
        try:
            p = registry.get(scheme)
        except ImportError:
            continue
        if OPTION_GROUPS.get(key) in p.options or key in p.extra_options:
            takes.append(scheme + "://")
    return ", ".join(takes) or "no scheme"


def _apply_option(peer: PeerConfig, key: str, value, where: str) -> None:
    protocol = peer.protocol
    if key in protocol.extra_options:
        peer.extra[key] = value
        return
    group = OPTION_GROUPS.get(key)
    if group is None:
        if (takes := _schemes_taking(key)) != "no scheme":  # another protocol's own option
            raise ConfigError(f"{where}: {key} is an option of {takes}")
        known = sorted({*OPTION_GROUPS, *protocol.extra_options})
        raise ConfigError(f"{where}: unknown option {key!r}; expected one of {', '.join(known)}")
    if group not in protocol.options:
        why = protocol.option_hints.get(key) or f"{key} is an option of {_schemes_taking(key)}"
        raise ConfigError(f"{where}: {key}: {why}" if key in protocol.option_hints else f"{where}: {why}")
    if key == "bind":
        peer.bind = _parse_hostport(str(value), f"{where}: bind")
    elif key == "mtu":
        try:
            peer.mtu = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: mtu must be an integer number of bytes, got {value!r}") from None
        if not 98 <= peer.mtu <= 65507:
            raise ConfigError(f"{where}: mtu {peer.mtu} out of range 98..65507")
    elif group == proto.FILTERS:
        setattr(peer, key, _filters(str(value), f"{where}: {key}"))
    elif group == proto.ACCESS:
        peer.access = access_control.with_option(peer.access, key, value, where)
    elif group in (proto.TLS, proto.PSK):
        peer.security = security.with_option(peer.security, key, value, where, tls_client=protocol.tls_client)
    elif group == proto.LIMITS:
        peer.limits = liveness.with_option(peer.limits, key, value, where, datagram=protocol.transport == "udp")
    elif key == "max_clients":
        if isinstance(value, bool) or not str(value).isdigit() or not 1 <= int(value) <= 65535:
            raise ConfigError(f"{where}: max_clients: expected a number of connections, 1..65535, got {value!r}")
        peer.max_clients = int(value)


def _parse_hostport(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: expected ADDR:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _filters(spec: str, where: str) -> FilterSet:
    try:
        return parse_filters(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}: bad filter {spec!r}: {exc}") from None


def from_args(interfaces: list[str], peers: list[str]) -> Config:
    return Config(
        interfaces=[parse_interface(i, f"argument {i!r}") for i in interfaces],
        peers=[parse_peer_url(p, f"argument {p!r}") for p in peers],
    ).validate()


_INTERFACE_KEYS = {"name", "fd", "error_frames", "filter", "rx_buffer", "max_age", "tx_flush"}

def load_toml(path: str) -> Config:
    """Read a bridge config file (format: docs/cli.md). Raises ConfigError naming the key."""
    import tomllib  # only for a config file

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    unknown = set(doc) - {"interface", "peer", "bridge"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected [[interface]], [[peer]], "
                          "[bridge]")
    config = Config(source=path)
    if "bridge" in doc:
        table = doc["bridge"]
        if isinstance(table, dict) and "user" in table:  # privilege drop (bridge/daemon/privileges.py); the rest is ops
            config.user = _str(table, "user", f"{path}: bridge")
            table = {k: v for k, v in table.items() if k != "user"}
        config.ops = ops_from_table(table, f"{path}: bridge")
    for n, table in enumerate(_tables(doc, "interface", path)):
        where = f"{path}: interface[{n}]"
        _check_keys(table, _INTERFACE_KEYS | LINK_KEYS.keys(), where)
        iface = parse_interface(_str(table, "name", where), where)
        iface.fd = _opt_bool(table, "fd", where)
        iface.error_frames = bool(_opt_bool(table, "error_frames", where))
        if "filter" in table:
            iface.filter = _filters(_str(table, "filter", where), f"{where}.filter")
        if "rx_buffer" in table:
            value = table["rx_buffer"]
            if not isinstance(value, int) or isinstance(value, bool) or not 4096 <= value <= 1 << 30:
                raise ConfigError(f"{where}.rx_buffer: expected bytes, 4096..1073741824, got {value!r}")
            iface.rx_buffer = value
        if "max_age" in table:
            iface.max_age = liveness.parse_max_age(table["max_age"], f"{where}.max_age")
        if "tx_flush" in table:
            iface.tx_flush = _str(table, "tx_flush", where)
            if iface.tx_flush not in ("auto", "on", "off"):
                raise ConfigError(f"{where}.tx_flush: expected auto, on or off, got {iface.tx_flush!r}")
        iface.link = {k: link_value(k, table[k], f"{where}.{k}") for k in LINK_KEYS if k in table}
        config.interfaces.append(iface)
    for n, table in enumerate(_tables(doc, "peer", path)):
        where = f"{path}: peer[{n}]"
        _check_keys(table, {"url", *OPTION_GROUPS, *_extra_options(table.get("url"))}, where)
        options = {k: v for k, v in table.items() if k != "url"}
        config.peers.append(parse_peer_url(_str(table, "url", where), where, options))
    try:
        return config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _tables(doc: dict, key: str, path: str) -> list[dict]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{path}: {key} must be an array of tables ([[{key}]])")
    return value


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")


def _str(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def _opt_bool(table: dict, key: str, where: str) -> bool | None:
    value = table.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value
