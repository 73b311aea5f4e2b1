"""SocketCanEndpoint's choice of read call on a real vcan (issue 13): a lone frame that waited long in the
socket (a late wake-up, as in a loaded VM) is not a backlog when its predecessor came longer ago than it
waited, so the next read stays the plain recvmsg; a frame that waited longer than that gap means the next
one is already waiting, and the next read is the batched recvmmsg. The endpoint's clock is shifted
(socketcan.time_ns) to make a frame look late; the kernel RX timestamps are real. Sleeps only space the
frames apart (a lower bound), nothing asserts a duration."""

import socket
import time

import pytest

from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.endpoints import socketcan
from bridge.endpoints.socketcan import SocketCanEndpoint

pytestmark = pytest.mark.vcan

SPACING_S = 0.5  # between frames: the gap the late frames are compared with


def test_late_lone_frame_stays_on_recvmsg_a_backlog_switches_to_recvmmsg(vcan0, monkeypatch):
    shift = [0]
    real = time.time_ns
    monkeypatch.setattr(socketcan, "time_ns", lambda: real() + shift[0])
    reactor = Reactor()
    got = []
    ep = SocketCanEndpoint(reactor, vcan0, 0, lambda _ep, _ch, batch: got.extend(batch))
    batches = []
    read_batch = ep._read_batch
    monkeypatch.setattr(ep, "_read_batch", lambda: (batches.append(len(got)), read_batch()))
    tx = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    tx.bind((vcan0,))

    def one(i: int) -> None:
        tx.send(sc.pack_can(0x100 + i, bytes([i])))
        deadline = time.monotonic() + 10
        while len(got) < i + 1 and time.monotonic() < deadline:
            reactor.run_once(0.05)
        assert len(got) == i + 1

    try:
        one(0)
        assert ep._lone
        time.sleep(SPACING_S)
        shift[0] = 5_000_000  # read 5 ms late: over BEHIND_NS, yet far less than the gap since frame 0
        one(1)
        assert ep._lone  # the old rule switched here: the next lone frame paid a recvmmsg (90 us against 15)
        time.sleep(SPACING_S)
        shift[0] = 60_000_000_000  # read a minute late: longer than the gap, at that pace more are waiting
        one(2)
        assert not ep._lone
        shift[0] = 0
        one(3)  # read by recvmmsg, which finds one frame: back to recvmsg
        assert ep._lone and batches == [3]
        assert [raw for raw, _ts in got] == [sc.pack_can(0x100 + i, bytes([i])) for i in range(4)]
        assert ep.counters.rx_frames == 4
    finally:
        tx.close()
        ep.close()
        reactor.close()
