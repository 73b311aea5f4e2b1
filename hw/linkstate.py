"""Link state from rtnetlink without pyroute2: just enough of RTM_NEWLINK/RTM_DELLINK to follow a link
(name, ifindex, IFF_UP, a CAN controller's IFLA_CAN_STATE) and to take it down and up (`set_up()`, the
bridge's flush of a stuck bus), so the bridge's link watch costs no import
of pyroute2 (about 25 MB of RSS and 100 ms of start-up), and a bus's health (`health()`: bitrates,
error counters, the controller's xstats, the interface's RX statistics) for the bridge's bus health
sampling. `canbridge link` (hw/links.py) still uses pyroute2 for everything else.

Sources: linux/netlink.h (struct nlmsghdr, NLMSG_ERROR), linux/rtnetlink.h (struct ifinfomsg, struct
rtattr, RTM_*), linux/if_link.h (IFLA_IFNAME 3, IFLA_LINKINFO 18, IFLA_STATS64 23, IFLA_INFO_KIND 1,
IFLA_INFO_DATA 2, IFLA_INFO_XSTATS 3, struct rtnl_link_stats64), linux/can/netlink.h (IFLA_CAN_BITTIMING 1,
IFLA_CAN_STATE 4, IFLA_CAN_BERR_COUNTER 8, IFLA_CAN_DATA_BITTIMING 9, enum can_state, struct
can_bittiming, struct can_berr_counter, struct can_device_stats).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTMGRP_LINK = 1
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4
IFF_UP = 0x1
IFLA_IFNAME, IFLA_LINKINFO, IFLA_STATS64 = 3, 18, 23
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_XSTATS = 1, 2, 3
IFLA_CAN_BITTIMING, IFLA_CAN_STATE, IFLA_CAN_BERR_COUNTER, IFLA_CAN_DATA_BITTIMING = 1, 4, 8, 9
CAP_NET_ADMIN = 12  # linux/capability.h
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
# enum can_state as candump/`ip -details` print it (the same names as bridge.hw.links.STATES)
CAN_STATES = {0: "ERROR-ACTIVE", 1: "ERROR-WARNING", 2: "ERROR-PASSIVE", 3: "BUS-OFF", 4: "STOPPED", 5: "SLEEPING"}

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # len, type
_U32 = struct.Struct("=I")
_BERR = struct.Struct("=HH")  # struct can_berr_counter: txerr, rxerr
# struct can_device_stats, in order (the controller's xstats, `ip -details -statistics link show`)
XSTATS = ("bus_error", "error_warning", "error_passive", "bus_off", "arbitration_lost", "restarts")
_XSTATS = struct.Struct(f"={len(XSTATS)}I")
# struct rtnl_link_stats64 (u64 each), the fields up to rx_missed_errors, in order
STATS64 = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped",
           "tx_dropped", "multicast", "collisions", "rx_length_errors", "rx_over_errors", "rx_crc_errors",
           "rx_frame_errors", "rx_fifo_errors", "rx_missed_errors")
_STATS64 = struct.Struct(f"={len(STATS64)}Q")


@dataclass(frozen=True)
class LinkState:
    """name; index (ifindex); up: IFF_UP (administratively up); deleted: an RTM_DELLINK;
    can_state: IFLA_CAN_STATE of a CAN controller ("ERROR-ACTIVE", "BUS-OFF", ...), None otherwise."""

    name: str
    index: int
    up: bool
    deleted: bool = False
    can_state: str | None = None


def _attrs(buf: bytes, pos: int, end: int) -> dict[int, bytes]:
    out = {}
    while pos + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(buf, pos)
        if length < _RTATTR.size or pos + length > end:
            break  # malformed: keep what was whole
        out[kind & NLA_TYPE_MASK] = buf[pos + _RTATTR.size : pos + length]
        pos += (length + 3) & ~3
    return out


def _linkinfo(attrs: dict[int, bytes]) -> tuple[str, dict[int, bytes], dict[int, bytes]]:
    """(IFLA_INFO_KIND, its IFLA_INFO_* attributes, the IFLA_INFO_DATA attributes) of a link."""
    info = attrs.get(IFLA_LINKINFO)
    if info is None:
        return "", {}, {}
    nested = _attrs(info, 0, len(info))
    kind = nested.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode(errors="replace")
    data = nested.get(IFLA_INFO_DATA, b"")
    return kind, nested, _attrs(data, 0, len(data))


def _state_of(data: dict[int, bytes]) -> str | None:
    state = data.get(IFLA_CAN_STATE)
    if state is None or len(state) < 4:
        return None
    value = _U32.unpack_from(state)[0]
    return CAN_STATES.get(value, str(value))


def _can_state(attrs: dict[int, bytes]) -> str | None:
    kind, _info, data = _linkinfo(attrs)
    return _state_of(data) if kind == "can" else None


def parse(data: bytes) -> list[LinkState]:
    """The RTM_NEWLINK/RTM_DELLINK messages in one netlink datagram, in order; other messages are
    skipped. A truncated message ends the list (what came before it is kept)."""
    out, pos = [], 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            break
        body = pos + _NLMSGHDR.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFOMSG.size <= pos + length:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
            attrs = _attrs(data, body + _IFINFOMSG.size, pos + length)
            name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
            out.append(LinkState(name, index, bool(flags & IFF_UP), kind == RTM_DELLINK, _can_state(attrs)))
        pos += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class LinkHealth:
    """What the kernel says about a CAN link's health (RTM_GETLINK), for bus health and bus load.

    kind: IFLA_INFO_KIND ("can" for a controller, "vcan", "vxcan"); can_state: as LinkState (None
    off controllers); bitrate, dbitrate: bit/s (None: no bit timing, e.g. vcan, or not set; dbitrate
    only with CAN FD); txerr, rxerr: IFLA_CAN_BERR_COUNTER (None when the driver has no
    do_get_berr_counter, or the link is down); xstats: the controller's struct can_device_stats
    (keys XSTATS; None when absent); stats: struct rtnl_link_stats64's first fields (keys STATS64:
    rx_over_errors is the controller's RX FIFO overruns, rx_dropped what the stack dropped)."""

    name: str
    index: int
    up: bool
    kind: str = ""
    can_state: str | None = None
    bitrate: int | None = None
    dbitrate: int | None = None
    txerr: int | None = None
    rxerr: int | None = None
    xstats: dict[str, int] | None = None
    stats: dict[str, int] | None = None


def _bitrate(data: dict[int, bytes], kind: int) -> int | None:
    timing = data.get(kind)  # struct can_bittiming: bitrate is its first u32
    return (_U32.unpack_from(timing)[0] or None) if timing is not None and len(timing) >= 4 else None


def parse_health(data: bytes) -> list[LinkHealth]:
    """The RTM_NEWLINK messages of one netlink datagram as LinkHealth, in order; others are skipped
    (as parse()). Attributes that are missing or too short for their struct read as None."""
    out, pos = [], 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            break
        body = pos + _NLMSGHDR.size
        if kind == RTM_NEWLINK and body + _IFINFOMSG.size <= pos + length:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
            attrs = _attrs(data, body + _IFINFOMSG.size, pos + length)
            out.append(_health(attrs, index, bool(flags & IFF_UP)))
        pos += (length + 3) & ~3
    return out


def _health(attrs: dict[int, bytes], index: int, up: bool) -> LinkHealth:
    name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
    kind, info, can = _linkinfo(attrs)
    raw = attrs.get(IFLA_STATS64, b"")
    stats = dict(zip(STATS64, _STATS64.unpack_from(raw))) if len(raw) >= _STATS64.size else None
    if kind != "can":
        return LinkHealth(name, index, up, kind, stats=stats)
    berr = can.get(IFLA_CAN_BERR_COUNTER, b"")
    txerr, rxerr = _BERR.unpack_from(berr) if len(berr) >= _BERR.size else (None, None)
    xraw = info.get(IFLA_INFO_XSTATS, b"")
    xstats = dict(zip(XSTATS, _XSTATS.unpack_from(xraw))) if len(xraw) >= _XSTATS.size else None
    return LinkHealth(name, index, up, kind, _state_of(can), _bitrate(can, IFLA_CAN_BITTIMING),
                      _bitrate(can, IFLA_CAN_DATA_BITTIMING), txerr, rxerr, xstats, stats)


def health(ifname: str) -> LinkHealth | None:
    """The link's health now (one RTM_GETLINK, blocking: the kernel answers within the call), None if
    there is no such interface. Raises OSError for other netlink errors."""
    return _first(ifname, parse_health)


def query(ifname: str) -> LinkState | None:
    """The link's state now (RTM_GETLINK by name on a blocking netlink socket), None if there is no
    such interface. Raises OSError for other netlink errors."""
    return _first(ifname, parse)


def _first(ifname: str, parser):
    """parser(RTM_GETLINK reply for ifname)[0]; None when there is no such interface or nothing parsed."""
    reply = _getlink(ifname)
    found = parser(reply) if reply is not None else []
    return found[0] if found else None


def _getlink(ifname: str) -> bytes | None:
    """The RTM_GETLINK reply for ifname; None for ENODEV/ENOENT (no such interface)."""
    name = ifname.encode() + b"\0"
    attr = _RTATTR.pack(_RTATTR.size + len(name), IFLA_IFNAME) + name
    attr += b"\0" * (-len(attr) % 4)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    request = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.send(request)
        reply = sock.recv(65536)
    _length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0]
        if code in (errno.ENODEV, errno.ENOENT):
            return None
        raise OSError(code, f"RTM_GETLINK {ifname}: {os.strerror(code)}")
    return reply



def set_up(ifname: str, up: bool) -> None:
    """Take the link up or down (RTM_NEWLINK, ifi_change IFF_UP; what `ip link set NAME up|down` sends) and
    wait for the kernel's answer. Raises OSError: EPERM without CAP_NET_ADMIN, ENODEV for no such link."""
    name = ifname.encode() + b"\0"
    attr = _RTATTR.pack(_RTATTR.size + len(name), IFLA_IFNAME) + name
    attr += b"\0" * (-len(attr) % 4)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP if up else 0, IFF_UP) + attr
    request = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.send(request)
        reply = sock.recv(65536)
    _length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
    code = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0] if kind == NLMSG_ERROR else 0
    if code:
        raise OSError(code, f"link {ifname} {'up' if up else 'down'}: {os.strerror(code)}")


def has_cap_net_admin() -> bool:
    """CAP_NET_ADMIN in this process's effective set (/proc/self/status CapEff); True if unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return True
