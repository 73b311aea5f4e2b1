"""What every live source of `canbridge dump`/`top` yields, and how its spec names filters: the interface
that the local (local.py), TCP (remote.py) and MQTT (mqtt_source.py) sources share.

A source has fileno(), waiting() (frames held that its socket no longer signals), read() -> list of Rx
(and Drops) in arrival order, close(), and a name. It raises SourceClosed when it ends.
"""

from __future__ import annotations

import select
from dataclasses import dataclass

from bridge.codec.filters import FilterSet, parse_filters
from bridge.errors import ConfigError

__all__ = ["Drops", "InterfaceDown", "Rx", "SourceClosed", "parse_filters", "split_spec", "waiting"]


@dataclass(slots=True)
class Rx:
    """One received frame: interface name, raw can_frame/canfd_frame, kernel RX time in ns,
    tx = sent from this host (only known for local sockets)."""

    iface: str
    raw: bytes
    ts_ns: int
    tx: bool = False


@dataclass(slots=True)
class Drops:
    """The kernel dropped `dropped` frames for this socket (SO_RXQ_OVFL), `total` since open."""

    iface: str
    dropped: int
    total: int


class SourceClosed(Exception):
    """A remote bridge closed the connection or sent malformed data; a local socket failed."""


class InterfaceDown(SourceClosed):
    """ENETDOWN on a local interface: candump says "read: Network is down" and exits 1 (with -D it says
    "IFACE: interface down" and goes on)."""


def split_spec(spec: str) -> tuple[str, FilterSet]:
    """"vcan0,123:7FF" -> ("vcan0", FilterSet); raises FilterError (a ConfigError)."""
    name, _, filters = spec.partition(",")
    if not name:
        raise ConfigError(f"{spec!r}: expected IFACE[,FILTERS] or tcp://HOST[:PORT][/IFACE][,FILTERS]")
    return name, parse_filters(filters)


def waiting(sources) -> list:
    """poll()-style [(fd, POLLIN)] of the sources holding frames their socket no longer signals."""
    return [(s.fileno(), select.POLLIN) for s in sources if s.waiting()]
