"""Raw sockets for capture: CAN_RAW on CAN interfaces, AF_PACKET (+ in-kernel BPF) on network links.

Each source owns one non-blocking socket with its own large receive buffer, so capturing never
slows the bridge (the kernel clones each frame to every socket; a slow capture only fills its own
buffer, and what it loses is counted: SO_RXQ_OVFL for CAN sockets, PACKET_STATISTICS for AF_PACKET).
Reads use recvmmsg (hw/mmsg.py), kernel timestamps come from SO_TIMESTAMPNS.
An interface may be named `IFACE@NETNS`: the socket is opened inside that network namespace
(a socket stays in the namespace it was created in), so one capture can cover both sides of a rig.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bridge.hw import mmsg
from bridge.hw.cansock import CAN_RAW_ERR_FILTER, SO_RCVBUFFORCE, SO_TIMESTAMPNS, SOL_CAN_RAW, open_can_raw, set_buffer
from bridge.hw.errors import ConfigError

CAN_ERR_MASK = 0x1FFFFFFF  # every error class: capture error frames too
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of a packet this host sent
MSG_DONTROUTE = 0x04  # CAN_RAW: the frame was sent by a program on this host
ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE, ARPHRD_CAN = 1, 772, 0xFFFE, 280
SO_RCVBUF = 8
# 64 MiB per source: the kernel charges ~768 B per queued CAN frame and ~2-4 KB per packet, so this
# absorbs ~80k frames (2-3 s at the bridge's highest zero-loss rate) while the writer catches up.
CAPTURE_BUFFER = 64 << 20
CAN_SLOTS = 256  # frames per recvmmsg
PACKET_SLOTS = 32  # packets per recvmmsg
SNAPLEN = 65535  # loopback and veth carry GSO packets of up to 64 KiB
_SOCKADDR_LL = 20
_STATS = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops (reset by each read)


# A captured frame/packet is a plain tuple (cheap: one per CAN frame): (bytes as the kernel gave them:
# struct can_frame/canfd_frame on CAN, the link-layer packet elsewhere; kernel RX time in ns since the
# epoch; original length; outgoing: True for what this host sent).
CAN, ETHERNET, RAW = "can", "ethernet", "raw"  # Source.kind: CAN frames, Ethernet/loopback, tun (no link header)


@dataclass
class Source:
    """A capture socket on one interface. `read()` -> list of record tuples (data, ts_ns, orig_len,
    outgoing), empty when none is waiting; kind: CAN, ETHERNET or RAW;
    `received`/`dropped`: packets seen / lost by the kernel since opening (for pcapng ISBs)."""

    name: str  # as given: IFACE or IFACE@NETNS
    kind: str
    sock: socket.socket
    receiver: mmsg.Receiver
    bpf_filter: str = ""
    loopback: bool = False  # lo shows every packet twice (outgoing and incoming): keep one, as libpcap
    received: int = 0
    dropped: int = 0
    _ovfl: int = field(default=0, repr=False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[tuple]:
        return self._read_can() if self.kind == CAN else self._read_packets()

    def _read_can(self) -> list[tuple]:
        batch = self.receiver.recv_detail(self.sock.fileno())
        for _, _, ovfl, _, _, _ in batch:
            if ovfl is not None:
                self._ovfl = ovfl  # cumulative count, delivered with the next frame
        # frames written by a program on this host carry MSG_DONTROUTE (outbound on the bus)
        out = [(data, ts, 8 + data[4], bool(flags & MSG_DONTROUTE)) for data, ts, _, flags, _, _ in batch]
        self.received += len(out)
        self.dropped = self._ovfl
        return out

    def _read_packets(self) -> list[tuple]:
        out = []
        for data, ts, _, _, orig, name in self.receiver.recv_detail(self.sock.fileno()):
            outgoing = name[10] == PACKET_OUTGOING
            if outgoing and self.loopback:
                continue
            out.append((data, ts, orig, outgoing))
        self.received += len(out)
        return out

    def update_stats(self) -> None:
        """Fold the kernel's PACKET_STATISTICS (reset on each read) into received/dropped."""
        if self.kind != CAN:
            _, drops = _STATS.unpack(self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))
            self.dropped += drops

    def close(self) -> None:
        self.sock.close()


def split_name(name: str) -> tuple[str, str | None]:
    """"vcan0@gw" -> ("vcan0", "gw"); "eth0" -> ("eth0", None)."""
    iface, _, netns = name.partition("@")
    return iface, netns or None


def _arphrd(iface: str) -> int:
    """ARPHRD_* type of `iface` in the current network namespace (netlink: /sys shows the mount's)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            return ipr.link("get", ifname=iface)[0]["ifi_type"]
        except NetlinkError as exc:
            raise ConfigError(f"-i {iface}: no such interface") from exc


def open_source(name: str, bpf_filter: str, buffer: int = CAPTURE_BUFFER) -> Source:
    """Open a capture socket on `name` (IFACE or IFACE@NETNS). CAN interfaces get CAN_RAW with FD and
    error frames; other links AF_PACKET with `bpf_filter` (libpcap syntax, compiled by libpcap via
    scapy) attached in the kernel. Raises ConfigError (unknown interface or namespace, bad filter)
    or OSError (no permission: capturing needs CAP_NET_RAW)."""
    iface, netns = split_name(name)
    if netns is None:
        return _open(name, iface, bpf_filter, buffer)
    from bridge.hw.netns import inside

    if not Path("/run/netns", netns).exists():  # pyroute2 would create a missing one
        raise ConfigError(f"-i {name}: no network namespace {netns!r} (see `ip netns list`)")
    try:
        with inside(netns):
            return _open(name, iface, bpf_filter, buffer)
    except (FileNotFoundError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"-i {name}: cannot enter network namespace {netns!r}: {exc}") from exc


def _open(name: str, iface: str, bpf_filter: str, buffer: int) -> Source:
    hw_type = _arphrd(iface)
    if hw_type == ARPHRD_CAN:
        return _open_can(name, iface, buffer)
    kind = RAW if hw_type == ARPHRD_NONE else ETHERNET
    if hw_type not in (ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE):
        raise ConfigError(f"-i {name}: unsupported link type (ARPHRD {hw_type}); Ethernet, loopback, tun and CAN are")
    # protocol 0: the socket receives nothing until bind() names the interface and ETH_P_ALL, so no
    # packet of another interface, nor one the filter would reject, is queued in between
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if bpf_filter:
            attach_filter(sock, bpf_filter, kind)
        set_buffer(sock, SO_RCVBUF, SO_RCVBUFFORCE, buffer)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((iface, ETH_P_ALL))
        sock.setblocking(False)
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)  # zero the kernel's counters
    except BaseException:
        sock.close()
        raise
    receiver = mmsg.Receiver(PACKET_SLOTS, SNAPLEN, name_size=_SOCKADDR_LL)
    return Source(name, kind, sock, receiver, bpf_filter, loopback=hw_type == ARPHRD_LOOPBACK)


def _open_can(name: str, iface: str, buffer: int) -> Source:
    sock = open_can_raw(iface, rxq_ovfl=True, rcvbuf=buffer,
                        setup=lambda s: s.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, CAN_ERR_MASK))
    return Source(name, CAN, sock, mmsg.Receiver(CAN_SLOTS, 72))


def attach_filter(sock: socket.socket, expression: str, kind: str) -> None:
    """Compile `expression` (tcpdump/libpcap syntax) with libpcap for links of `kind` and attach it to
    `sock` (SO_ATTACH_FILTER), so unwanted packets never reach user space. Raises ConfigError when
    libpcap rejects the expression or is missing."""
    from scapy.arch.common import compile_filter, free_filter
    from scapy.data import DLT_EN10MB, DLT_RAW, SO_ATTACH_FILTER
    from scapy.error import Scapy_Exception
    from scapy.libs.structures import sock_fprog

    try:
        prog = compile_filter(expression, linktype=DLT_RAW if kind == RAW else DLT_EN10MB)
    except (Scapy_Exception, ImportError, OSError) as exc:
        raise ConfigError(f"capture filter {expression!r}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(sock_fprog(prog.bf_len, prog.bf_insns)))
    finally:
        free_filter(prog)
