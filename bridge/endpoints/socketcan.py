"""SocketCAN endpoint: one CAN_RAW socket per interface, used for both RX and TX.

RX drains the socket with recvmmsg (64 frames and their SO_TIMESTAMPNS kernel RX timestamps per
system call) until EAGAIN, at most RX_BATCH_MAX frames per readable event, and hands the batch to
the router as raw structs. TX writes runs of frames with sendmmsg.
Frames this socket writes are not read back (CAN_RAW_RECV_OWN_MSGS stays 0), which is the bus
half of echo suppression.
TX writes frames straight away; on EAGAIN (socket send buffer full) it queues and waits for
EVENT_WRITE; on ENOBUFS (the interface's TX queue is full, poll() would report writable at
once) it queues and retries on a timer: 1 ms while the bus takes frames, doubling up to 20 ms
while it takes none (a bus that never drains costs ~50 wake-ups a second, not a spin). The
queue is bounded; overflow drops the oldest; frames older than max_age are dropped as stale.
How often and how long the bus pushed back is in the gauges tx_pushbacks, tx_pushback_ms and
tx_pushback_max_ms. What a stuck controller holds in the kernel is flushed once stale
(bridge/endpoints/txflush.py, `tx_flush`). At start the interface's root qdisc is checked: one that
drops frames silently (fq_codel and friends) is logged as a warning with the fix.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections import deque
from itertools import islice
from pathlib import Path
from time import monotonic, time_ns

from bridge.codec import socketcan as sc
from bridge.codec.busload import WireBits
from bridge.hw import mmsg, qdisc
from bridge.hw.cansock import (
    CAN_RAW_ERR_FILTER,
    CAN_RAW_FILTER,
    CAN_RAW_JOIN_FILTERS,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    SOL_CAN_RAW,
    open_can_raw,
)
from bridge.endpoints.pending import DEFAULT_MAX_AGE_S, AgeStamps
from bridge.endpoints.txflush import KernelQueueWatch
from bridge.core.reactor import Reactor, TimerHandle
from bridge.core.stats import Counters

log = logging.getLogger(__name__)


RX_BATCH_MAX = 512  # frames per readable event: bounds the time other fds wait for the loop
RX_SLOTS = 64  # frames per recvmmsg call
# Frames are read one per readable event with a plain recvmsg (15 us from Python in the test VM) as long
# as the bus is not bursting: the ctypes recvmmsg costs 90 us for one frame there and pays off only for a
# run of frames. A frame arriving within BURST_GAP_NS (kernel RX time) of the previous one (a burst: a
# busy 1 Mbit/s bus spaces classic frames >= ~110 us), or one that waited BEHIND_NS in the socket and
# longer than that gap (the loop is behind: at that pace the next frame is already waiting), switches to
# recvmmsg, until a read finds fewer than BATCH_MIN frames again. A steady
# normal bus (2.5k frames/s: 400 us apart) thus stays on the cheap path, one frame per wake-up.
BURST_GAP_NS = 100_000
BEHIND_NS = 1_000_000
BATCH_MIN = 4
_ANC_SPACE = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)  # SO_TIMESTAMPNS timespec + SO_RXQ_OVFL u32
_TIMESPEC = struct.Struct("=qq")
_U32 = struct.Struct("=I")
TX_SLOTS = 64  # frames per sendmmsg call
TX_SMALL_RUN = 3  # runs up to this long go out as plain send()s: 15 us each against 43 us for a one-frame
# ctypes sendmmsg in the test VM
# SO_RCVBUF(FORCE): the kernel doubles it and charges 768 B per queued frame, so 64 MiB holds ~175k
# frames: a 200k-frame flat-out vcan burst (cangen -g 0, ~30k frames/s offered while the bridge gets
# half the CPU: 32 MiB lost 11-17 % of it in the test VM, 64 MiB nothing), 20 s of a saturated
# 1 Mbit/s bus. Kernel memory is used only while frames actually wait; a gateway short of RAM sets
# `rx_buffer` per interface in the config file.
RX_BUFFER = 64 << 20
# frames waiting for the interface: what a full 1 Mbit/s bus (~8k frames/s) sends in DEFAULT_MAX_AGE_S (2 s),
# so a burst the bus can send before it goes stale is not cut short by the bound (20,000 frames from a TCP
# peer into a txqueuelen-10 controller: tests/hw/test_txqueue.py); more would be dropped as stale anyway.
# ~1.5 MB at most (classic frames).
TX_QUEUE_MAX = 16384
# Back-pressure: at TX_BACKLOG_HIGH frames waiting the bus says `backlogged` and a TCP peer feeding it stops
# reading (bridge/endpoints/tcp.py: TCP flow control then holds the sender back) until the queue is down to
# TX_BACKLOG_LOW; lossy peers (UDP, MQTT) are not paused. The rest of the 64 KiB read that crossed HIGH (up
# to ~2,300 frames) still comes, so at most ~3,300 wait: 0.8 s of a busy 500 kbit/s bus, well inside max_age.
TX_BACKLOG_HIGH = 1024
TX_BACKLOG_LOW = 256
TX_DRAIN_CHUNK = 256  # frames per write attempt from the queue: a blocked bus costs no copy of the whole queue
ENOBUFS_RETRY_S = 0.001  # retry delay when the interface TX queue (qdisc) is full and the bus drains it
# ... doubled after each retry that sent nothing beyond the first ENOBUFS_PATIENCE (a loaded host may take a
# few ms to complete TX), up to this: a bus that takes no frame (no ACK: a node alone on the bus, every peer
# off) costs ~50 failed sends a second instead of 1,000, and a bus that comes back waits at most this long
ENOBUFS_RETRY_MAX_S = 0.02
ENOBUFS_PATIENCE = 3



def link_mtu(ifname: str) -> int:
    """Interface MTU from sysfs: 16 = classic CAN only, 72 = CAN FD capable."""
    try:
        return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())
    except (OSError, ValueError):
        return sc.CAN_MTU


class SocketCanEndpoint:
    """A SocketCAN interface as a router endpoint.

    ifname: "can0", "vcan0"...; channel: index used on the wire for this interface.
    rx_filter: a bridge.codec.filters.FilterSet applied in the kernel (CAN_RAW_FILTER).
    error_frames: also receive and forward error frames (CAN_RAW_ERR_FILTER = all classes).
    fd: enable CAN FD (None = when the link MTU is 72). max_age: seconds a frame may wait for the bus.
    tx_flush: "auto", "on" or "off", the flush of a stuck controller's kernel queue (txflush.py).
    Raises OSError if the interface is missing or CAN_RAW is not supported, ValueError if fd=True on
    a classic-only link, ConfigError for tx_flush="on" without CAP_NET_ADMIN.
    """

    def __init__(
        self,
        reactor: Reactor,
        ifname: str,
        channel: int,
        on_frames,
        *,
        rx_filter=None,
        error_frames: bool = False,
        fd: bool | None = None,
        rcvbuf: int = RX_BUFFER,
        max_age: float = DEFAULT_MAX_AGE_S,
        tx_flush: str = "auto",
    ) -> None:
        self.reactor = reactor
        self.name = ifname
        self.channel = channel
        self.on_frames = on_frames  # callable(endpoint, channel, batch)
        self.counters = Counters()
        mtu = link_mtu(ifname)
        self.fd_enabled = (mtu == sc.CANFD_MTU) if fd is None else fd
        if self.fd_enabled and mtu != sc.CANFD_MTU:
            raise ValueError(f"{ifname}: fd requested but link MTU is {mtu} (needs 72)")
        self._kernel = KernelQueueWatch(reactor, ifname, max_age, self.counters, tx_flush,
                                        on_restart=self._clear_socket_error)
        self.sock = self._open(ifname, rx_filter, error_frames, rcvbuf)
        self.kernel_drops = 0  # SO_RXQ_OVFL: frames the kernel dropped because our queue was full
        self.wire = WireBits()  # bits of the frames read and written: the bus load (bridge/endpoints/bushealth.py)
        self._txq: deque[bytes] = deque()
        self.max_age = max_age  # seconds a frame may wait in _txq (0 = no limit); older ones: "stale"
        self._stamps = AgeStamps()  # enqueue times of _txq, one per appended run
        self._receiver = mmsg.Receiver(RX_SLOTS, sc.CANFD_MTU)
        self._lone = True  # next read: a plain recvmsg of one frame (see LONE_GAP_NS)
        self._last_rx_ns = 0
        self._senders = {n: mmsg.Sender(TX_SLOTS, n) for n in (sc.CAN_MTU, sc.CANFD_MTU)}
        self._retry: TimerHandle | bool | None = None  # timer (ENOBUFS), True (EVENT_WRITE), None
        self._blocked_on = "eagain"
        self._retry_s = ENOBUFS_RETRY_S
        self._idle_retries = 0  # ENOBUFS retries in a row that sent nothing
        self._pushed_back_at: float | None = None  # monotonic time the bus last began to push back
        self.backlogged = False  # TX queue above TX_BACKLOG_HIGH (until down to TX_BACKLOG_LOW)
        self._on_drained: list = []  # callbacks for when it is not backlogged any more
        self.counters.gauges.update(tx_pushbacks=0, tx_pushback_ms=0, tx_pushback_max_ms=0)
        self._closed = False
        self._open_args = (rx_filter, error_frames, rcvbuf)  # for reopen()
        self.tx_blocked: str | None = None  # drop reason while the bus cannot send (bridge/endpoints/busfaults.py)
        reactor.add_reader(self.sock.fileno(), self._on_readable)
        warn_dropping_qdisc(ifname)

    def _clear_socket_error(self) -> None:
        """Our own link down and up (txflush) left ENETDOWN pending on the socket (af_can raw_notify): the
        next send or recv would fail with it once. Read it here, where it is expected."""
        self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def _open(self, ifname, rx_filter, error_frames, rcvbuf) -> socket.socket:
        return open_can_raw(ifname, fd=self.fd_enabled, rxq_ovfl=True, rcvbuf=rcvbuf,
                            setup=lambda sock: set_rx_filter(sock, rx_filter, error_frames))

    # --- RX --------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._lone:
            self._read_one()
        else:
            self._read_batch()

    def _read_one(self) -> None:
        try:
            raw, anc, _flags, _addr = self.sock.recvmsg(sc.CANFD_MTU, _ANC_SPACE)
        except BlockingIOError:
            return
        except OSError as exc:  # ENETDOWN while the link is down: keep the socket
            self.counters.errors[errno.errorcode.get(exc.errno, "oserror")] += 1
            return
        ts, ovfl = 0, None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET:
                if kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    ts = sec * 1_000_000_000 + nsec
                elif kind == SO_RXQ_OVFL:
                    ovfl = _U32.unpack_from(data)[0]
        gap = ts - self._last_rx_ns
        # behind: this frame waited over BEHIND_NS, and longer than the gap since its predecessor, so at
        # that pace the next one is already waiting. A lone frame that waited long because the VM woke us
        # late (one in flight: the next frame is sent only after this one arrives, so the gap is always the
        # longer) stays on recvmsg: a recvmmsg that finds one frame costs 90 us instead of 15.
        if gap < BURST_GAP_NS or (waited := time_ns() - ts) > BEHIND_NS and waited > gap:
            self._lone = False
        self._last_rx_ns = ts
        self._deliver([(raw, ts)], ovfl)

    def _read_batch(self) -> None:
        batch: list = []
        ovfl = None
        recv = self._receiver.recv
        fd = self.sock.fileno()
        while len(batch) < RX_BATCH_MAX:
            try:
                got, drops = recv(fd)
            except OSError as exc:  # ENETDOWN while the link is down: keep the socket
                self.counters.errors[errno.errorcode.get(exc.errno, "oserror")] += 1
                break
            if drops is not None:  # SO_RXQ_OVFL: the socket's drop count when the frame was queued
                ovfl = drops  # (absent while 0, so a drop shows with the next frame)
            batch += got
            if len(got) < RX_SLOTS:  # drained
                break
        if len(batch) < BATCH_MIN:
            self._lone = True
            if batch:
                self._last_rx_ns = batch[-1][1]
        self._deliver(batch, ovfl)

    def _deliver(self, batch: list, ovfl: int | None) -> None:
        if ovfl is not None and ovfl != self.kernel_drops:
            self.counters.drop("kernel_rx_overflow", (ovfl - self.kernel_drops) & 0xFFFFFFFF)
            self.kernel_drops = ovfl
        if batch:
            self.counters.rx_frames += len(batch)
            self.wire.add_batch(batch, self.fd_enabled)
            self.on_frames(self, self.channel, batch)

    # --- TX --------------------------------------------------------------------------------
    def send_frames(self, channel: int, frames) -> int:
        """Write raw frames to the bus in order; returns how many were accepted (sent or
        queued). FD frames on a classic-only link are dropped ("fd_on_classic_bus"); while
        tx_blocked is set (link down, BUS-OFF) every frame is dropped under that reason (queued while the
        link is down for our own flush of the kernel's queue)."""
        if self.tx_blocked and not self._kernel.holding():
            self.counters.drop(self.tx_blocked, len(frames))
            return 0
        if self.fd_enabled:
            raws = [raw for raw, _ts in frames]
        else:
            raws = [raw for raw, _ts in frames if len(raw) == sc.CAN_MTU]
            self.counters.drop("fd_on_classic_bus", len(frames) - len(raws))
        accepted = len(raws)
        if not self._txq and not self._closed and not self.tx_blocked:
            raws = raws[self._hand_over(raws, queued=False) :]
        if raws:
            self._enqueue(raws)
        return accepted

    def _enqueue(self, raws: list) -> None:
        txq = self._txq
        if not txq:
            self._stamps.clear()
            self._pushback_begins()
        txq.extend(raws)
        self._stamps.push(len(raws))
        if len(txq) >= TX_BACKLOG_HIGH:
            self.backlogged = True
        overflow = len(txq) - TX_QUEUE_MAX
        if overflow > 0:  # drop the oldest: a stale frame is worth less than a fresh one
            self.counters.drop("tx_queue_full", overflow)
            self._stamps.pop(overflow)
            for _ in range(overflow):
                txq.popleft()
        if self._retry is None and not self.tx_blocked:
            self._wait_writable()

    def _hand_over(self, raws: list, queued: bool) -> int:
        """_write(raws), telling the kernel-queue watch (txflush.py) what went: its count's base before the
        write, the frames and when the newest was received after (queued: they come from the head of
        _txq, else they arrived just now). Only _write on vcan and with tx_flush off."""
        kernel = self._kernel
        if not kernel.active:
            return self._write(raws)
        if kernel.needs_base:
            kernel.rebase()
        n = self._write(raws)
        if n:
            kernel.handed_over(self._stamps.stamp_of(n - 1) if queued else monotonic(), n)
        return n

    def _write(self, raws: list) -> int:
        """sendmmsg runs of equally sized frames until the kernel pushes back. Returns how many
        frames are done with (sent, or failed with a counted error); the rest must wait."""
        i, n = 0, len(raws)
        fd = self.sock.fileno()
        while i < n:
            size = len(raws[i])
            j = i + 1
            while j < n and j - i < TX_SLOTS and len(raws[j]) == size:
                j += 1
            try:
                if j - i <= TX_SMALL_RUN:  # a short run: plain send()s are cheaper than the ctypes sendmmsg
                    k = 0
                    try:
                        for k in range(j - i):
                            self.sock.send(raws[i + k])
                    except OSError:
                        if not k:
                            raise
                        # frames before the one that failed are sent; it is retried as the run's first
                    else:
                        k = j - i
                else:
                    k = self._senders[size].send(fd, raws[i:j])
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                    self._blocked_on = "enobufs" if exc.errno == errno.ENOBUFS else "eagain"
                    self.counters.errors["tx_" + self._blocked_on] += 1  # pushed back: queued, retried
                    if exc.errno == errno.ENOBUFS and self._kernel.active:
                        self._kernel.refused()
                    return i
                self.counters.drop("tx_" + errno.errorcode.get(exc.errno, "error").lower())
                k = 1  # ENETDOWN, EINVAL...: that frame is lost, counted; go on with the next
            else:
                self.counters.tx_frames += k
                self.wire.add(raws[i : i + k])
            i += k
        return i

    def when_drained(self, callback) -> None:
        """Call callback() once, when the TX queue is down to TX_BACKLOG_LOW (at once if not backlogged)."""
        if not self.backlogged:
            callback()
        elif callback not in self._on_drained:
            self._on_drained.append(callback)

    def _check_drained(self) -> None:
        if self.backlogged and len(self._txq) <= TX_BACKLOG_LOW:
            self.backlogged = False
            callbacks, self._on_drained = self._on_drained, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # one peer's resume must not keep the others paused
                    log.exception("%s: resuming a peer", self.name)

    def _pushback_begins(self) -> None:
        self._pushed_back_at = monotonic()
        self.counters.gauges["tx_pushbacks"] += 1

    def _pushback_ends(self) -> None:
        """The TX queue is empty again (all sent, dropped or the bus blocked): add the episode's length."""
        if self._pushed_back_at is not None:
            ms = round((monotonic() - self._pushed_back_at) * 1000)
            gauges = self.counters.gauges
            gauges["tx_pushback_ms"] += ms
            gauges["tx_pushback_max_ms"] = max(gauges["tx_pushback_max_ms"], ms)
            self._pushed_back_at = None
        self._retry_s = ENOBUFS_RETRY_S
        self._idle_retries = 0

    def _wait_writable(self) -> None:
        if self._blocked_on == "enobufs":  # TX queue full: poll() would say writable at once
            self._retry = self.reactor.call_later(self._retry_s, self._drain)
        else:
            self._retry = True
            self.reactor.add_writer(self.sock.fileno(), self._drain)

    def _drain(self) -> None:
        if self._retry is True and not self._closed:
            self.reactor.remove_writer(self.sock.fileno())
        self._retry = None
        if self._closed or not self._txq or self.tx_blocked:  # blocked: only our own flush keeps a queue
            return
        self._drop_stale()
        txq = self._txq
        sent = 0
        size = 1 if self._idle_retries else TX_DRAIN_CHUNK  # a bus that took nothing: probe with one frame
        while txq:
            chunk = list(islice(txq, size))
            size = TX_DRAIN_CHUNK
            n = self._hand_over(chunk, queued=True)
            self._stamps.pop(n)
            for _ in range(n):
                txq.popleft()
            sent += n
            if n < len(chunk):
                break
        if txq:
            # the bus took nothing: wait longer next time; it took some: it drains, come back soon
            self._idle_retries = 0 if sent else self._idle_retries + 1
            self._retry_s = min(ENOBUFS_RETRY_S * 2 ** max(0, self._idle_retries - ENOBUFS_PATIENCE),
                                ENOBUFS_RETRY_MAX_S)
            self._wait_writable()
        else:
            self._pushback_ends()
        self._check_drained()

    def _drop_stale(self) -> None:
        """Frames that waited in the TX queue longer than max_age are dropped, counted "stale"."""
        stale = min(self._stamps.expired(self.max_age), len(self._txq))
        if stale:
            self.counters.drop("stale", stale)
            self._stamps.pop(stale)
            for _ in range(stale):
                self._txq.popleft()

    def block_tx(self, reason: str | None) -> None:
        """Drop frames for the bus from now on, counted under `reason` ("link_down", "bus_off"), together
        with what the TX queue holds; None writes again. Called on link and bus-state changes. The link
        going down for our own flush of the kernel's queue keeps the queue (it holds frames younger than
        max_age) and writes it when the link is up."""
        if reason == "link_down" and self._kernel.holding():
            self.tx_blocked = reason
            self._cancel_wait()
            return
        self.tx_blocked = reason
        if not reason:
            if self._txq and self._retry is None and not self._closed:
                self._drain()
        else:
            self.counters.drop(reason, len(self._txq))
            self._txq.clear()
            self._cancel_wait()
            self._pushback_ends()
            self._check_drained()

    def _cancel_wait(self) -> None:
        if self._retry is not None and not self._closed:
            if self._retry is True:
                self.reactor.remove_writer(self.sock.fileno())
            else:
                self._retry.cancel()
        self._retry = None

    def reopen(self) -> None:
        """A new socket for the interface with this name (it was deleted and created again, e.g. a USB
        adapter replugged: the old socket is bound to a gone ifindex). Same options; the TX queue is kept.
        Raises OSError, keeping the old socket, if the interface cannot be opened."""
        sock = self._open(self.name, *self._open_args)
        self._cancel_wait()  # a wait on the old fd
        self.reactor.forget(self.sock.fileno())
        self.sock.close()
        self.sock = sock
        self.kernel_drops = 0
        self.reactor.add_reader(sock.fileno(), self._on_readable)
        if self._txq:
            self._drain()

    def flush(self) -> None:
        """Nothing to batch: frames go to the kernel as they arrive."""

    @property
    def tx_queued(self) -> int:
        return len(self._txq)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kernel.close()
        self._txq.clear()
        self._check_drained()  # paused peers read again (and meet a closed bus: counted there)
        if isinstance(self._retry, TimerHandle):
            self._retry.cancel()
        self.reactor.forget(self.sock.fileno())
        self.sock.close()


# Queue disciplines that drop a frame that waits too long or at random, without an error to the sender:
# the CoDel family (fq_codel is systemd's default through net.core.default_qdisc), PIE, CAKE and RED.
DROPPING_QDISCS = frozenset({"fq_codel", "codel", "fq_pie", "pie", "cake", "red", "gred", "choke", "sfb"})


def warn_dropping_qdisc(ifname: str) -> str | None:
    """Log a warning naming the fix if ifname's root qdisc drops frames silently; returns the qdisc's kind
    (None if it cannot be read: no warning then)."""
    try:
        kind = qdisc.root_qdisc(ifname)
    except OSError as exc:
        log.debug("%s: cannot read its qdisc: %s", ifname, exc)
        return None
    if kind in DROPPING_QDISCS:
        log.warning("bus %s: its qdisc %s drops CAN frames that wait, silently (no error reaches the bridge); use "
                    "pfifo_fast: `tc qdisc replace dev %s root pfifo_fast` (udev/80-canbridge.rules does it for "
                    "every CAN link)", ifname, kind, ifname)
    return kind


def set_rx_filter(sock: socket.socket, rx_filter=None, error_frames: bool = False) -> None:
    """Apply a bridge.codec.filters.FilterSet to a CAN_RAW socket in the kernel (CAN_RAW_FILTER,
    CAN_RAW_JOIN_FILTERS, CAN_RAW_ERR_FILTER); error_frames: all error classes when the set has
    no `#mask` of its own. None = the kernel default (all data frames, no error frames)."""
    if rx_filter is not None and not rx_filter.matches_all:
        sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, rx_filter.kernel_filters())
        if rx_filter.join:
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_JOIN_FILTERS, 1)
    err_mask = (rx_filter.err_mask if rx_filter is not None else 0) or (sc.CAN_ERR_MASK if error_frames else 0)
    err_mask &= sc.CAN_ERR_MASK  # what the kernel keeps anyway; #FFFFFFFF would overflow setsockopt's C int
    if err_mask:
        sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, err_mask)
