"""A peer on a python-can `udp_multicast` group (`udp-multicast://[GROUP]:PORT?iface=NAME&hop_limit=N`):
canbridge joins the group as one more bus member, one frame per datagram (bridge.codec.pycan_multicast).

Two sockets, because every member receives its own datagrams (python-can binds ("", port) with
SO_REUSEADDR/SO_REUSEPORT and needs multicast loopback on to hear other programs on the same host):
- rx: bound to the group port with SO_REUSEADDR/SO_REUSEPORT like python-can, joined to the group
  (on `iface`, or where the group's route points), IP(V6)_MULTICAST_ALL off so it hears only this group;
- tx: connected to (group, port) from an ephemeral port, so the kernel fixes its source address.
  Echo suppression: a datagram whose source is the tx socket's own (address, port) is our own echo and
  is dropped (counted in gauge `echoes`). python-can members send from the group port, so nothing
  else can carry that source. Exact and stateless: no recent-payload window that could overflow.
A frame received from the group goes to the bus only; the router never sends peer frames to peers,
so nothing goes back to the group it came from.

The group is one CAN bus: only channel 0 (the first interface) is carried; frames of other channels
are counted as dropped ("channel_not_carried"). Sent messages carry the interface name as
Message.channel; received ones go to channel 0 whatever their channel field says.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct

from bridge.codec import pycan_multicast
from bridge.hw.cansock import SO_RCVBUFFORCE, SO_SNDBUFFORCE, set_buffer
from bridge.endpoints.udp import RX_BATCH_MAX, SOCKET_BUFFER
from bridge.errors import ProtocolError
from bridge.core.reactor import Reactor
from bridge.core.stats import Counters

log = logging.getLogger(__name__)

# linux/in.h, linux/in6.h (the socket module lacks them): deliver only groups this socket joined
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
RECV_MAX = 65535  # read whole datagrams; the codec rejects those over python-can's 4096


def _name(group: str, port: int) -> str:
    host = f"[{group}]" if ":" in group else group
    return f"udp-multicast://{host}:{port}"


class MulticastPeer:
    """group: IPv4 or IPv6 multicast address (the family follows it); iface: interface name to join
    and send on (None: where the group's route points); hop_limit: IPv6 hop limit / IPv4 TTL;
    channel_name: Message.channel of sent frames. Raises OSError when the group cannot be joined
    (no such interface, no multicast route) and ValueError when group is not a multicast address."""

    def __init__(self, reactor: Reactor, router, group: str, port: int, *, iface: str | None = None,
                 hop_limit: int = pycan_multicast.DEFAULT_HOP_LIMIT, channel_name: str | None = None,
                 routing=(None, None, None)) -> None:
        if not ipaddress.ip_address(group).is_multicast:
            raise ValueError(f"{group} is not a multicast address")
        self.reactor = reactor
        self.router = router
        self.name = _name(group, port)
        self.counters = Counters()
        self.channel_name = channel_name
        self._pending: list = []
        self._echoes = 0
        try:
            ifindex = socket.if_nametoindex(iface) if iface else 0
        except OSError:  # raised without errno/strerror, which the caller's message needs
            raise OSError(errno.ENODEV, f"no interface {iface!r}") from None
        v6 = ":" in group
        self.rx = _rx_socket(v6, group, port, ifindex)
        try:
            self.tx = _tx_socket(v6, group, port, ifindex, hop_limit)
        except OSError:
            self.rx.close()
            raise
        self.own = self.tx.getsockname()[:2]
        reactor.add_reader(self.rx.fileno(), self._on_readable)
        router.add_peer(self, *routing)
        log.info("%s: joined%s, sending from %s", self.name, f" on {iface}" if iface else "", self.own)

    # --- bus -> group ---------------------------------------------------------------------
    def send_frames(self, channel: int, frames: list) -> int:
        if channel != 0:
            self.counters.drop("channel_not_carried", len(frames))
            return 0
        self._pending.extend(frames)
        return len(frames)

    def flush(self) -> None:
        frames, self._pending = self._pending, []
        for dgram in pycan_multicast.encode_frames(frames, self.channel_name):
            try:
                self.tx.send(dgram)
            except (BlockingIOError, InterruptedError):  # socket buffer full: UDP is lossy by contract
                self.counters.drop("sndbuf_full")
                continue
            except OSError as exc:  # ENETUNREACH when the route went away...
                self.counters.errors["send_" + errno.errorcode.get(exc.errno, "oserror").lower()] += 1
                self.counters.drop("send_error")
                continue
            self.counters.tx_frames += 1
            self.counters.tx_bytes += len(dgram)

    # --- group -> bus -----------------------------------------------------------------------
    def _on_readable(self) -> None:
        frames = []
        recvfrom = self.rx.recvfrom
        for _ in range(RX_BATCH_MAX):
            try:
                data, addr = recvfrom(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.counters.errors["recv_" + errno.errorcode.get(exc.errno, "oserror").lower()] += 1
                continue
            if addr[:2] == self.own:
                self._echoes += 1
                continue
            self.counters.rx_bytes += len(data)
            try:
                frames.append(pycan_multicast.decode_datagram(data))
            except ProtocolError as exc:
                self.counters.errors[exc.reason] += 1
                log.warning("%s: dropped malformed datagram from %s (%d bytes): %s", self.name, addr[0], len(data), exc)
        self.counters.gauges["echoes"] = self._echoes
        if frames:
            self.counters.rx_frames += len(frames)
            self.router.from_peer(self, 0, frames)

    def close(self) -> None:
        self.router.remove_peer(self)
        self.reactor.forget(self.rx.fileno())
        self.rx.close()
        self.tx.close()


def _rx_socket(v6: bool, group: str, port: int, ifindex: int) -> socket.socket:
    family = socket.AF_INET6 if v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        group_bin = socket.inet_pton(family, group)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            sock.bind(("::", port))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group_bin + struct.pack("@I", ifindex))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.bind(("0.0.0.0", port))
            mreqn = group_bin + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)  # struct ip_mreqn
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _tx_socket(v6: bool, group: str, port: int, ifindex: int, hop_limit: int) -> socket.socket:
    family = socket.AF_INET6 if v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, SOCKET_BUFFER)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hop_limit)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)  # python-can on this host hears us
            if ifindex:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.connect((group, port, 0, ifindex))
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, hop_limit)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if ifindex:
                mreqn = socket.inet_aton("0.0.0.0") * 2 + struct.pack("@i", ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.connect((group, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
