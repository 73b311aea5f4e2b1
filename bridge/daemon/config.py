"""Configuration: endpoint URLs and the TOML file. Errors name the key or argument at fault.

URLs (docs/cli.md):
    vcan0 | can://vcan0                   a SocketCAN interface (channel = its position)
    tcp://host:port                       native protocol, client, reconnects
    tcp-listen://[addr]:port              native protocol, server; addr defaults to 127.0.0.1
    udp://host:port[?bind=addr:port]      native protocol over UDP; bind defaults to *:port
    cannelloni+udp://, cannelloni+tcp://, cannelloni+tcp-listen://   the same, cannelloni's format
    socketcand://[addr]:port[?beacon=BROADCAST]   socketcand server (python-can, SavvyCAN, Kayak
                                          connect); beacon: announce it every 3 s on UDP 42000
    udp-multicast://[GROUP]:PORT[?iface=NAME&hop_limit=N]   member of a python-can udp_multicast group;
                                          udp-multicast:// = python-can's defaults ([ff15:7079:7468:6f6e:
                                          6465:6d6f:6d63:6173]:43113, hop limit 1)
Query options on peer URLs: mtu=BYTES (udp), filter=SPEC (bus -> peer), inbound_filter=SPEC;
access control (bridge/security/access.py): read_only=1, write_allow=SPEC, rate=FRAMES_PER_S, burst=N, and on
servers max_clients=N; TLS and encrypted UDP (bridge/security/options.py): tls_cert, tls_key, tls_ca,
tls_server_name=PATH/NAME, psk=HEX, psk_file=PATH; dead peers, queues and stale frames
(bridge/endpoints/liveness.py): timeout=SECONDS, overflow=drop-oldest|disconnect, max_age=SECONDS, sndbuf=BYTES.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from bridge.security import access as policy
from bridge.security import options as security
from bridge.codec.filters import FilterSet, parse_filters
from bridge.endpoints import liveness
from bridge.errors import ConfigError
from bridge.daemon.ops_config import OpsConfig, ops_from_table
from hw.links import LINK_KEYS, link_value

DEFAULT_PORT = 29600
DEFAULT_MTU = 1472
PEER_SCHEMES = ("tcp", "tcp-listen", "udp", "cannelloni+udp", "cannelloni+tcp", "cannelloni+tcp-listen", "socketcand",
                "udp-multicast")
SERVER_SCHEMES = ("tcp-listen", "cannelloni+tcp-listen", "socketcand")
SOCKETCAND_PORT = 29536
CANNELLONI_PORT = 20000  # cannelloni's own default (-l/-r)
MULTICAST_GROUP = "ff15:7079:7468:6f6e:6465:6d6f:6d63:6173"  # python-can udp_multicast defaults
MULTICAST_PORT = 43113
MULTICAST_OPTIONS = ("iface", "hop_limit", "filter", "inbound_filter", *policy.ACCESS_OPTIONS)
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
    link: dict[str, int | float] = field(default_factory=dict)  # LINK_KEYS given; the bridge ignores them


@dataclass
class PeerConfig:
    url: str
    scheme: str  # one of PEER_SCHEMES
    host: str
    port: int
    bind: tuple[str, int] | None = None
    mtu: int = DEFAULT_MTU
    filter: FilterSet | None = None  # bus -> peer
    inbound_filter: FilterSet | None = None  # peer -> bus
    beacon: str | None = None  # socketcand: broadcast address for the discovery beacon
    iface: str | None = None  # udp-multicast: interface to join and send on (None: the group's route)
    hop_limit: int = 1  # udp-multicast: IPv6 hop limit / IPv4 TTL
    access: policy.Access = field(default_factory=policy.Access)  # read_only, write_allow, rate, burst
    max_clients: int = MAX_CLIENTS  # servers: connections at once; more are accepted and closed at once
    security: security.Security = field(default_factory=security.Security)  # TLS files, UDP psk
    limits: liveness.PeerPolicy = liveness.DEFAULT_POLICY  # timeout, overflow, max_age, sndbuf (liveness.py)


@dataclass
class Config:
    interfaces: list[InterfaceConfig] = field(default_factory=list)
    peers: list[PeerConfig] = field(default_factory=list)
    user: str | None = None  # drop privileges to this user once every socket is open (bridge/daemon/privileges.py)
    ops: OpsConfig = field(default_factory=lambda: OpsConfig())  # [bridge] control/metrics (bridge/daemon/operations.py)
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
            policy.check(peer.access, f"peer {peer.url!r}")
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


def parse_peer_url(url: str, where: str = "peer") -> PeerConfig:
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in PEER_SCHEMES:
        raise ConfigError(f"{where}: unknown scheme in {url!r}; expected one of {', '.join(PEER_SCHEMES)}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: bad port in {url!r}: {exc}") from None
    host = parts.hostname or ""
    if scheme == "udp-multicast":
        return _multicast_peer(url, host or MULTICAST_GROUP, port or MULTICAST_PORT, parts.query, where)
    if not host:
        if scheme not in SERVER_SCHEMES:
            raise ConfigError(f"{where}: {url!r} needs a host, e.g. {scheme}://127.0.0.1:{DEFAULT_PORT}")
        host = "127.0.0.1"  # listen on loopback unless an address is given
    default_port = {"socketcand": SOCKETCAND_PORT}.get(
        scheme, CANNELLONI_PORT if scheme.startswith("cannelloni+") else DEFAULT_PORT
    )
    peer = PeerConfig(url=url, scheme=scheme, host=host, port=port or default_port)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        _apply_option(peer, key, value, f"{where} {url!r}")
    return peer


def _multicast_peer(url: str, group: str, port: int, query: str, where: str) -> PeerConfig:
    try:
        multicast = ipaddress.ip_address(group).is_multicast
    except ValueError:
        multicast = False
    if not multicast:
        raise ConfigError(f"{where}: {group!r} in {url!r} is not a multicast group address "
                          f"(e.g. [{MULTICAST_GROUP}] or 239.74.163.2)")
    peer = PeerConfig(url=url, scheme="udp-multicast", host=group, port=port)
    for key, value in parse_qsl(query, keep_blank_values=True):
        _apply_option(peer, key, value, f"{where} {url!r}")
    return peer


def _apply_option(peer: PeerConfig, key: str, value, where: str) -> None:
    if peer.scheme == "udp-multicast" and key not in MULTICAST_OPTIONS:
        raise ConfigError(f"{where}: unknown option {key!r}; expected {', '.join(MULTICAST_OPTIONS)}")
    if key in ("iface", "hop_limit") and peer.scheme != "udp-multicast":
        raise ConfigError(f"{where}: {key} is a udp-multicast:// option")
    if key == "iface":
        if not isinstance(value, str) or not value or len(value) >= IFNAMSIZ or "/" in value or " " in value:
            raise ConfigError(f"{where}: iface: {value!r} is not a network interface name (e.g. eth0)")
        peer.iface = value
    elif key == "hop_limit":
        try:
            peer.hop_limit = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: hop_limit must be an integer 0..255, got {value!r}") from None
        if isinstance(value, bool) or not 0 <= peer.hop_limit <= 255:
            raise ConfigError(f"{where}: hop_limit must be an integer 0..255, got {value!r}")
    elif key == "bind":
        peer.bind = _parse_hostport(str(value), f"{where}: bind")
    elif key == "mtu":
        try:
            peer.mtu = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: mtu must be an integer number of bytes, got {value!r}") from None
        if not 98 <= peer.mtu <= 65507:
            raise ConfigError(f"{where}: mtu {peer.mtu} out of range 98..65507")
    elif key == "beacon":
        if peer.scheme != "socketcand":
            raise ConfigError(f"{where}: beacon is a socketcand:// option")
        peer.beacon = str(value)
    elif key in ("filter", "inbound_filter"):
        setattr(peer, key, _filters(str(value), f"{where}: {key}"))
    elif key in policy.ACCESS_OPTIONS:
        peer.access = policy.with_option(peer.access, key, value, where)
    elif key in security.SECURITY_OPTIONS:
        peer.security = security.with_option(peer.security, peer.scheme, key, value, where)
    elif key in liveness.POLICY_OPTIONS:
        peer.limits = liveness.with_option(peer.limits, peer.scheme, key, value, where)
    elif key == "max_clients":
        if peer.scheme not in SERVER_SCHEMES:
            raise ConfigError(f"{where}: max_clients is an option of {', '.join(SERVER_SCHEMES)}")
        if isinstance(value, bool) or not str(value).isdigit() or not 1 <= int(value) <= 65535:
            raise ConfigError(f"{where}: max_clients: expected a number of connections, 1..65535, got {value!r}")
        peer.max_clients = int(value)
    else:
        raise ConfigError(f"{where}: unknown option {key!r}; expected bind, mtu, filter, inbound_filter, beacon, "
                          "iface, hop_limit, read_only, write_allow, rate, burst, max_clients, "
                          "tls_cert, tls_key, tls_ca, tls_server_name, psk, psk_file, timeout, overflow, "
                          "max_age or sndbuf")


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


_INTERFACE_KEYS = {"name", "fd", "error_frames", "filter", "rx_buffer", "max_age"}
_PEER_KEYS = {"url", "bind", "mtu", "filter", "inbound_filter", "beacon", "iface", "hop_limit", "max_clients",
              *liveness.POLICY_OPTIONS,
              *policy.ACCESS_OPTIONS, *security.SECURITY_OPTIONS}

def load_toml(path: str) -> Config:
    """Read a bridge config file (format: docs/cli.md). Raises ConfigError naming the key."""
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
        iface.link = {k: link_value(k, table[k], f"{where}.{k}") for k in LINK_KEYS if k in table}
        config.interfaces.append(iface)
    for n, table in enumerate(_tables(doc, "peer", path)):
        where = f"{path}: peer[{n}]"
        _check_keys(table, _PEER_KEYS, where)
        peer = parse_peer_url(_str(table, "url", where), where)
        for key in ("bind", "mtu", "filter", "inbound_filter", "beacon", "iface", "hop_limit", "max_clients",
                    *liveness.POLICY_OPTIONS,
                    *policy.ACCESS_OPTIONS, *security.SECURITY_OPTIONS):
            if key in table:
                _apply_option(peer, key, table[key], where)
        config.peers.append(peer)
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
