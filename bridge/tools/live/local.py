"""A local CAN interface as a live source: a CAN_RAW socket with its filters in the kernel, kernel RX
timestamps (SO_TIMESTAMPNS, or the hardware's with candump -H) and kernel drop notices (SO_RXQ_OVFL)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

from bridge.codec import socketcan as sc
from bridge.hw.cansock import SO_RCVBUFFORCE, SO_RXQ_OVFL, SO_TIMESTAMPNS
from bridge.tools.live.source import Drops, InterfaceDown, Rx, SourceClosed, split_spec
from bridge.tools.logs import probe

READ_BATCH = 256  # frames read from one socket per poll round: other sources get their turn
MSG_DONTROUTE = 0x04  # set by CAN_RAW on frames sent from this host (candump -x "TX")
_ANC = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(48)  # TIMESTAMPNS, RXQ_OVFL, TIMESTAMPING
SO_TIMESTAMPING = 37  # linux/net_tstamp.h; also the control message type (SCM_TIMESTAMPING)
_TIMESTAMPING_FLAGS = (1 << 4) | (1 << 3) | (1 << 6)  # SOF_TIMESTAMPING_SOFTWARE | RX_SOFTWARE | RAW_HARDWARE
_TIMESPEC = struct.Struct("=qq")
_U32 = struct.Struct("=I")


class LocalSource:
    """A CAN_RAW socket on IFACE (`any`: every CAN interface) with its filters in the kernel.
    Raises OSError when the interface is missing or AF_CAN is not supported."""

    def __init__(self, spec: str, hw_timestamps: bool = False, down_exits: bool = True) -> None:
        self.name, rx_filter = split_spec(spec)
        self.any = self.name == "any"
        self.sock = probe.open_can("" if self.any else self.name, rx_filter=rx_filter, rxq_ovfl=True)
        self.drops = 0
        self.hw = hw_timestamps
        self.down_exits = down_exits
        if hw_timestamps:  # candump -H: the third timespec of SCM_TIMESTAMPING (0 where there is no hardware clock)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _TIMESTAMPING_FLAGS)

    def set_rcvbuf(self, size: int) -> str | None:
        """candump -r: SO_RCVBUFFORCE, else SO_RCVBUF; -> candump's warning when the kernel capped it."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size * 2:
                return "The socket receive buffer size was adjusted due to /proc/sys/net/core/rmem_max."
        return None

    def fileno(self) -> int:
        return self.sock.fileno()

    @staticmethod
    def waiting() -> bool:
        return False  # the kernel socket is readable while frames wait

    def read(self) -> list:
        """Up to READ_BATCH Rx (and Drops) in arrival order; [] when nothing is waiting."""
        out: list = []
        recvmsg = self.sock.recvmsg
        for _ in range(READ_BATCH):
            try:
                raw, anc, flags, addr = recvmsg(sc.CANFD_MTU, _ANC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENETDOWN:
                    raise SourceClosed(f"{self.name}: {exc.strerror}") from None
                if self.down_exits:  # candump 2023.03: perror("read"), exit 1
                    raise InterfaceDown(f"read: {os.strerror(errno.ENETDOWN)}") from None
                sys.stderr.write(f"{self.name}: interface down\n")  # -D: say so, wait for it to come back
                break
            ts, ovfl = 0, None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and not self.hw:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    ts = sec * 1_000_000_000 + nsec
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and self.hw:
                    sec, nsec = _TIMESPEC.unpack_from(data, 2 * _TIMESPEC.size)  # [2]: raw hardware
                    ts = sec * 1_000_000_000 + nsec
                elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                    ovfl = _U32.unpack_from(data)[0]
            iface = addr[0] if self.any else self.name
            if ovfl is not None and ovfl != self.drops:  # the count rides on the next queued frame
                out.append(Drops(iface, (ovfl - self.drops) & 0xFFFFFFFF, ovfl))
                self.drops = ovfl
            out.append(Rx(iface, raw, ts, bool(flags & MSG_DONTROUTE)))
        return out

    def close(self) -> None:
        self.sock.close()
