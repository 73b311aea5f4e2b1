"""The protocol registry: URL scheme -> protocol class (bridge.protocols.base.PeerProtocol), imported
only when a URL uses it, so a plain `tcp://` bridge never imports cannelloni, socketcand or MQTT code.

Third-party protocols register through the entry point group `canbridge.protocols`, name = scheme,
value = "module:Class", e.g. in their pyproject.toml:
    [project.entry-points."canbridge.protocols"]
    "toy+udp" = "canbridge_toy:ToyUdp"
Entry points are read only for a scheme that is not built in (importlib.metadata costs start-up time).
"""

from __future__ import annotations

import importlib

ENTRY_POINT_GROUP = "canbridge.protocols"

# scheme -> "module:Class". Adding a protocol is one line here (plus its own modules).
BUILTIN: dict[str, str] = {
    "tcp": "bridge.protocols.native:NativeTcp",
    "tcp-listen": "bridge.protocols.native:NativeTcpListen",
    "udp": "bridge.protocols.native:NativeUdp",
    "cannelloni+tcp": "bridge.protocols.cannelloni:CannelloniTcp",
    "cannelloni+tcp-listen": "bridge.protocols.cannelloni:CannelloniTcpListen",
    "cannelloni+udp": "bridge.protocols.cannelloni:CannelloniUdp",
    "socketcand": "bridge.protocols.socketcand:SocketcandServer",
    "udp-multicast": "bridge.protocols.udp_multicast:UdpMulticast",
    "mqtt": "bridge.protocols.mqtt:Mqtt",
    "mqtts": "bridge.protocols.mqtt:Mqtts",
}

_added: dict[str, str | type] = {}  # register() at run time (tests, embedding programs)
_loaded: dict[str, type] = {}


def register(scheme: str, target: str | type) -> None:
    """Make `scheme` known: target is a protocol class or "module:Class" (imported on first use)."""
    _added[scheme] = target
    _loaded.pop(scheme, None)


def unregister(scheme: str) -> None:
    _added.pop(scheme, None)
    _loaded.pop(scheme, None)


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _table(with_entry_points: bool) -> dict[str, str | type]:
    table: dict[str, str | type] = dict(_entry_points()) if with_entry_points else {}
    table.update(BUILTIN)
    table.update(_added)
    return table


def schemes() -> list[str]:
    """Every known scheme: built in, registered, and from entry points."""
    return list(_table(True))


def get(scheme: str) -> type:
    """The protocol class of `scheme`. Raises LookupError for an unknown scheme, ImportError (with the
    scheme named) when its module cannot be imported, e.g. a missing optional dependency."""
    if scheme in _loaded:
        return _loaded[scheme]
    target = _table(False).get(scheme) or _table(True).get(scheme)
    if target is None:
        raise LookupError(scheme)
    if isinstance(target, str):
        module, _, name = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ImportError(f"{scheme}://: cannot import {module}: {exc}") from exc
    _loaded[scheme] = target
    return target


def families() -> dict[str, int]:
    """{protocol family ("native", "cannelloni", ...): default port} of every built-in protocol, for
    dissectors and capture filters (imports every protocol module)."""
    out: dict[str, int] = {}
    for scheme in BUILTIN:
        proto = get(scheme)
        out.setdefault(proto.family, proto.default_port)
    return out
