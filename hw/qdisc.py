"""An interface's root queue discipline (what `tc qdisc show dev can0` prints first), read over rtnetlink
without pyroute2 (the bridge checks it at start; pyroute2 would cost ~25 MB of RSS).

Sources: linux/rtnetlink.h (RTM_GETQDISC 38, struct tcmsg, TCA_KIND 1), linux/pkt_sched.h (TC_H_ROOT),
linux/netlink.h (NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR).
"""

from __future__ import annotations

import os
import socket
import struct

RTM_NEWQDISC, RTM_GETQDISC = 36, 38
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCA_KIND = 1
TC_H_ROOT = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_RTATTR = struct.Struct("=HH")


def parse_root_qdiscs(data: bytes) -> tuple[dict[int, str], bool]:
    """({ifindex: kind} of the root qdiscs in one netlink datagram of an RTM_GETQDISC dump, done): done is
    True once NLMSG_DONE is seen. Raises OSError for an NLMSG_ERROR."""
    out, pos, done = {}, 0, False
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            break
        body = pos + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, body)[0]
            if code:
                raise OSError(code, f"RTM_GETQDISC: {os.strerror(code)}")
        elif kind == RTM_NEWQDISC and body + _TCMSG.size <= pos + length:
            _family, ifindex, _handle, parent, _info = _TCMSG.unpack_from(data, body)
            apos = body + _TCMSG.size
            while parent == TC_H_ROOT and apos + _RTATTR.size <= pos + length:
                alen, atype = _RTATTR.unpack_from(data, apos)
                if alen < _RTATTR.size:
                    break
                if atype == TCA_KIND:
                    out[ifindex] = data[apos + _RTATTR.size : apos + alen].rstrip(b"\0").decode(errors="replace")
                    break
                apos += (alen + 3) & ~3
        pos += (length + 3) & ~3
    return out, done


def root_qdisc(ifname: str) -> str | None:
    """The kind of ifname's root qdisc ("pfifo_fast", "fq_codel", "noqueue", ...); None if the interface
    has none listed. Raises OSError if the interface does not exist or netlink fails."""
    ifindex = socket.if_nametoindex(ifname)
    request = _NLMSGHDR.pack(_NLMSGHDR.size + _TCMSG.size, RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    request += _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    found: dict[int, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.send(request)
        done = False
        while not done:
            part, done = parse_root_qdiscs(sock.recv(65536))
            found.update(part)
    return found.get(ifindex)
