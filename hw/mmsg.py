"""Batched datagram I/O: recvmmsg(2) and sendmmsg(2) through ctypes (the stdlib has neither).

Why: in the test VM a system call from Python costs 20-30 us, so one call per CAN frame caps a
bridge near 15k frames/s. One recvmmsg returns up to `slots` frames with their SO_TIMESTAMPNS /
SO_RXQ_OVFL control messages; one sendmmsg writes a run of equally sized frames. Works on any
datagram socket (CAN_RAW, UDP), which is how the host tests exercise it without CAN support.

Layout (Linux, LP64 and ILP32 alike, taken from the C structs via ctypes): `struct mmsghdr[]`
pointing into one frame buffer (slot i at i * slot_size) and one control buffer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20  # packet sockets: msg_len is the packet's real length even when truncated
SOL_SOCKET = 1
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _msghdr), ("msg_len", ctypes.c_uint)]


_MMSG = ctypes.sizeof(_mmsghdr)
_OFF_LEN = _mmsghdr.msg_len.offset
_OFF_CTRLLEN = _mmsghdr.msg_hdr.offset + _msghdr.msg_controllen.offset
_OFF_FLAGS = _mmsghdr.msg_hdr.offset + _msghdr.msg_flags.offset
_I32 = struct.Struct("=i")
_SIZE_T = struct.Struct("=Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "=I")
_U32 = struct.Struct("=I")
_CMSG_HDR = struct.Struct("=" + ("Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I") + "ii")
_TIMESPEC = struct.Struct("=qq" if ctypes.sizeof(ctypes.c_long) == 8 else "=ii")
_ALIGN = ctypes.sizeof(ctypes.c_size_t)
# room for SO_TIMESTAMPNS (timespec) + SO_RXQ_OVFL (u32) control messages per datagram
_CTRL = 2 * (_CMSG_HDR.size + 16 + _ALIGN)

available = hasattr(_libc, "recvmmsg") and hasattr(_libc, "sendmmsg")


def _vector(slots: int, slot_size: int, ctrl: int, name_size: int = 0):
    """(mmsghdr array, iovec array, frame buffer, control buffer, name buffer), wired together."""
    frames = ctypes.create_string_buffer(slots * slot_size)
    control = ctypes.create_string_buffer(max(1, slots * ctrl))
    names = ctypes.create_string_buffer(max(1, slots * name_size))
    iov = (_iovec * slots)()
    msgs = (_mmsghdr * slots)()
    base, cbase, nbase = ctypes.addressof(frames), ctypes.addressof(control), ctypes.addressof(names)
    for i in range(slots):
        iov[i].iov_base = base + i * slot_size
        iov[i].iov_len = slot_size
        hdr = msgs[i].msg_hdr
        hdr.msg_iov = ctypes.addressof(iov[i])
        hdr.msg_iovlen = 1
        if ctrl:
            hdr.msg_control = cbase + i * ctrl
            hdr.msg_controllen = ctrl
        if name_size:
            hdr.msg_name = nbase + i * name_size
            hdr.msg_namelen = name_size
    return msgs, iov, frames, control, names


class Receiver:
    """recvmmsg on one socket. `recv(fd)` -> (list of (datagram bytes, ts_ns), ovfl or None);
    an empty list when nothing is waiting. Raises OSError for errors other than EAGAIN/EINTR."""

    def __init__(self, slots: int = 64, slot_size: int = 72, name_size: int = 0) -> None:
        self.slots = slots
        self.slot_size = slot_size
        self.name_size = name_size
        self._msgs, self._iov, self._frames, self._control, self._names = _vector(slots, slot_size, _CTRL, name_size)
        self._pristine = bytes(memoryview(self._msgs).cast("B"))  # kernel rewrites controllen
        self._hdr_view = memoryview(self._msgs).cast("B")
        self._frame_view = memoryview(self._frames).cast("B")
        self._ctrl_view = memoryview(self._control).cast("B")
        self._name_view = memoryview(self._names).cast("B")
        self._used = slots

    def _call(self, fd: int, flags: int) -> int:
        """One recvmmsg; the number of datagrams (0 when none is waiting)."""
        if self._used:
            ctypes.memmove(self._msgs, self._pristine, _MMSG * self._used)
        n = _libc.recvmmsg(fd, self._msgs, self.slots, flags, None)
        if n < 0:
            self._used = 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        self._used = n
        return n

    def recv_detail(self, fd: int) -> list[tuple[bytes, int, int | None, int, int, bytes]]:
        """Like recv, for capture: a list of (captured bytes, ts_ns, SO_RXQ_OVFL count or None,
        msg_flags, original length, msg_name bytes). Packet sockets report the original length of a
        packet longer than slot_size (MSG_TRUNC); other sockets report the captured length."""
        n = self._call(fd, MSG_DONTWAIT | MSG_TRUNC)
        hv, fv, cv, nv = self._hdr_view, self._frame_view, self._ctrl_view, self._name_view
        size, ns = self.slot_size, self.name_size
        out = []
        for i in range(n):
            orig = _U32.unpack_from(hv, i * _MMSG + _OFF_LEN)[0]
            start = i * size
            ts, drops = _parse_control(cv, i * _CTRL, _SIZE_T.unpack_from(hv, i * _MMSG + _OFF_CTRLLEN)[0])
            flags = _I32.unpack_from(hv, i * _MMSG + _OFF_FLAGS)[0]
            data = bytes(fv[start : start + min(orig, size)])
            out.append((data, ts, drops, flags, orig, bytes(nv[i * ns : (i + 1) * ns])))
        return out

    def recv(self, fd: int) -> tuple[list, int | None]:
        n = self._call(fd, MSG_DONTWAIT)
        hv, fv, cv = self._hdr_view, self._frame_view, self._ctrl_view
        size, ctrl_size = self.slot_size, _CTRL
        out = []
        ovfl = None
        for i in range(n):
            length = _U32.unpack_from(hv, i * _MMSG + _OFF_LEN)[0]
            start = i * size
            ts, drops = _parse_control(cv, i * ctrl_size, _SIZE_T.unpack_from(hv, i * _MMSG + _OFF_CTRLLEN)[0])
            if drops is not None:
                ovfl = drops
            out.append((bytes(fv[start : start + length]), ts))
        return out, ovfl


def _parse_control(view, offset: int, length: int) -> tuple[int, int | None]:
    """Walk the cmsghdrs of one datagram: (ts_ns or 0, SO_RXQ_OVFL count or None)."""
    ts, drops = 0, None
    end = offset + length
    while offset + _CMSG_HDR.size <= end:
        cmsg_len, level, kind = _CMSG_HDR.unpack_from(view, offset)
        if cmsg_len < _CMSG_HDR.size:
            break
        data = offset + _CMSG_HDR.size
        if level == SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TIMESPEC.unpack_from(view, data)
            ts = sec * 1_000_000_000 + nsec
        elif level == SOL_SOCKET and kind == SO_RXQ_OVFL:
            drops = _U32.unpack_from(view, data)[0]
        offset += (cmsg_len + _ALIGN - 1) & ~(_ALIGN - 1)
    return ts, drops


class Sender:
    """sendmmsg of up to `slots` datagrams of one size per call (`send(fd, frames)`), frames being
    bytes all of length `slot_size`. Returns how many were sent (0..len); raises OSError with the
    errno when the first one fails (EAGAIN, ENOBUFS, ...)."""

    def __init__(self, slots: int = 64, slot_size: int = 16) -> None:
        self.slots = slots
        self.slot_size = slot_size
        self._msgs, self._iov, self._frames, _, _ = _vector(slots, slot_size, 0)

    def send(self, fd: int, frames: list) -> int:
        n = min(len(frames), self.slots)
        data = b"".join(frames[:n])
        ctypes.memmove(self._frames, data, len(data))
        sent = _libc.sendmmsg(fd, self._msgs, n, MSG_DONTWAIT)
        if sent < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return sent
