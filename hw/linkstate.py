"""Link state from rtnetlink without pyroute2: just enough of RTM_NEWLINK/RTM_DELLINK to follow a link
(name, ifindex, IFF_UP, a CAN controller's IFLA_CAN_STATE), so the bridge's link watch costs no import
of pyroute2 (about 25 MB of RSS and 100 ms of start-up). `canbridge link` (hw/links.py) still uses
pyroute2 for everything else.

Sources: linux/netlink.h (struct nlmsghdr, NLMSG_ERROR), linux/rtnetlink.h (struct ifinfomsg, struct
rtattr, RTM_*), linux/if_link.h (IFLA_IFNAME 3, IFLA_LINKINFO 18, IFLA_INFO_KIND 1, IFLA_INFO_DATA 2),
linux/can/netlink.h (IFLA_CAN_STATE 4, enum can_state).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTMGRP_LINK = 1
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST = 1
IFF_UP = 0x1
IFLA_IFNAME, IFLA_LINKINFO = 3, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_CAN_STATE = 4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
# enum can_state as candump/`ip -details` print it (the same names as bridge.hw.links.STATES)
CAN_STATES = {0: "ERROR-ACTIVE", 1: "ERROR-WARNING", 2: "ERROR-PASSIVE", 3: "BUS-OFF", 4: "STOPPED", 5: "SLEEPING"}

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # len, type
_U32 = struct.Struct("=I")


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


def _can_state(attrs: dict[int, bytes]) -> str | None:
    info = attrs.get(IFLA_LINKINFO)
    if info is None:
        return None
    nested = _attrs(info, 0, len(info))
    if nested.get(IFLA_INFO_KIND, b"").rstrip(b"\0") != b"can" or IFLA_INFO_DATA not in nested:
        return None
    state = _attrs(nested[IFLA_INFO_DATA], 0, len(nested[IFLA_INFO_DATA])).get(IFLA_CAN_STATE)
    if state is None or len(state) < 4:
        return None
    value = _U32.unpack_from(state)[0]
    return CAN_STATES.get(value, str(value))


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


def query(ifname: str) -> LinkState | None:
    """The link's state now (RTM_GETLINK by name on a blocking netlink socket), None if there is no
    such interface. Raises OSError for other netlink errors."""
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
    states = parse(reply)
    return states[0] if states else None
