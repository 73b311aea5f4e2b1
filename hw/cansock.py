"""CAN_RAW sockets and the socket options canbridge sets on them: the one place a CAN_RAW socket is
opened (the bridge's bus endpoint, its bus-state monitor, capture, dump, the probe).

Constants: linux/can/raw.h (SOL_CAN_RAW, CAN_RAW_*) and asm-generic/socket.h (SO_*).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

SOL_CAN_RAW = 101
CAN_RAW_FILTER = 1
CAN_RAW_ERR_FILTER = 2
CAN_RAW_LOOPBACK = 3
CAN_RAW_RECV_OWN_MSGS = 4
CAN_RAW_FD_FRAMES = 5
CAN_RAW_JOIN_FILTERS = 6
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40


def set_buffer(sock: socket.socket, opt: int, force_opt: int, size: int) -> None:
    """Set SO_RCVBUF/SO_SNDBUF (opt) to `size` bytes; as root (CAP_NET_ADMIN) the FORCE variant
    (force_opt) passes net.core.*mem_max, which would otherwise cap the buffer at ~208 KB (a few
    thousand frames)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def open_can_raw(ifname: str, *, fd: bool = True, timestamps: bool = True, rxq_ovfl: bool = False,
                 recv_own: bool = False, rcvbuf: int | None = None,
                 setup: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A bound, non-blocking CAN_RAW socket on `ifname` ("" = every CAN interface, candump's `any`).

    fd: CAN_RAW_FD_FRAMES (canfd_frame of 72 bytes for FD frames); timestamps: SO_TIMESTAMPNS (kernel
    RX time as a control message); rxq_ovfl: SO_RXQ_OVFL (the kernel's drop count as a control
    message); recv_own: CAN_RAW_RECV_OWN_MSGS; rcvbuf: SO_RCVBUF(FORCE) bytes; setup(sock): further
    options (filters) before bind. Raises OSError (errno 97 where the kernel has no CAN, 19 for an
    unknown interface); the socket is closed on any error."""
    sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    try:
        if fd:
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1)
        if recv_own:
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_RECV_OWN_MSGS, 1)
        if setup is not None:
            setup(sock)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if rxq_ovfl:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        if rcvbuf:
            set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf)
        sock.bind((ifname,))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
