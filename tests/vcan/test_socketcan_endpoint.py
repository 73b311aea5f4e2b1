"""SocketCanEndpoint on real vcan interfaces, with python-can as the independent sender/receiver."""

import socket
import subprocess
import time

import can
import pytest

from bridge.codec import socketcan as sc
from bridge.codec.filters import parse_filters
from bridge.core.reactor import Reactor
from bridge.endpoints.socketcan import SocketCanEndpoint
from bridge.frame import CanFrame
from bridge.hw.cansock import SO_RCVBUFFORCE

pytestmark = pytest.mark.vcan

FRAMES = [
    can.Message(arbitration_id=0x123, data=b"\x11\x22\x33\x44", is_extended_id=False),
    can.Message(arbitration_id=0x001, data=b"", is_extended_id=False),
    can.Message(arbitration_id=0x0ABCDEF, data=bytes(range(8)), is_extended_id=True),
    can.Message(arbitration_id=0x7FF, is_remote_frame=True, dlc=5, is_extended_id=False),
    can.Message(arbitration_id=0x1FFFFFFF, data=bytes(range(64)), is_fd=True, bitrate_switch=True,
                error_state_indicator=True, is_extended_id=True),
    can.Message(arbitration_id=0x456, data=bytes(12), is_fd=True, is_extended_id=False),
]


class Collector:
    def __init__(self):
        self.batches = []

    def __call__(self, endpoint, channel, batch):
        self.batches.append((channel, batch))

    @property
    def frames(self):
        return [f for _, b in self.batches for f in b]


def pump(reactor, until, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        reactor.run_once(timeout=0.05)


def same(msg: can.Message, frame: CanFrame):
    assert frame.can_id == msg.arbitration_id
    assert frame.is_extended == msg.is_extended_id
    assert frame.is_remote == msg.is_remote_frame
    assert frame.is_fd == msg.is_fd
    assert frame.brs == msg.bitrate_switch and frame.esi == msg.error_state_indicator
    if msg.is_remote_frame:
        assert frame.length == msg.dlc
    else:
        assert frame.data == bytes(msg.data)


def test_rx_from_python_can_with_kernel_timestamps(vcan0):
    r = Reactor()
    got = Collector()
    ep = SocketCanEndpoint(r, vcan0, 3, got)
    assert ep.fd_enabled  # vcan MTU 72
    before = time.time_ns()
    with can.Bus(interface="socketcan", channel=vcan0, fd=True) as bus:
        for m in FRAMES:
            bus.send(m)
        pump(r, lambda: len(got.frames) >= len(FRAMES))
    after = time.time_ns()
    assert len(got.frames) == len(FRAMES)
    assert all(ch == 3 for ch, _ in got.batches)
    for msg, (raw, ts) in zip(FRAMES, got.frames):
        assert before <= ts <= after
        same(msg, CanFrame.from_raw(raw, ts))
    assert ep.counters.rx_frames == len(FRAMES)
    ep.close()
    r.close()


def test_tx_to_python_can_and_own_frames_not_read_back(vcan0):
    r = Reactor()
    got = Collector()
    ep = SocketCanEndpoint(r, vcan0, 0, got)
    with can.Bus(interface="socketcan", channel=vcan0, fd=True) as bus:
        accepted = ep.send_frames(0, [(CanFrame.from_message(m).to_raw(), 0) for m in FRAMES])
        assert accepted == len(FRAMES)
        received = [bus.recv(5) for _ in FRAMES]
        pump(r, lambda: False, timeout=0.3)
    for msg, rx in zip(FRAMES, received):
        assert rx is not None
        same(msg, CanFrame.from_message(rx))
    assert got.frames == []  # echo suppression on the bus side: our own writes are not forwarded
    assert ep.counters.tx_frames == len(FRAMES)
    ep.close()
    r.close()


def test_kernel_filter(vcan0):
    r = Reactor()
    got = Collector()
    ep = SocketCanEndpoint(r, vcan0, 0, got, rx_filter=parse_filters("123:7FF,400~700"))
    with can.Bus(interface="socketcan", channel=vcan0) as bus:
        for can_id in (0x123, 0x124, 0x400, 0x500):
            bus.send(can.Message(arbitration_id=can_id, data=b"\x01", is_extended_id=False))
        pump(r, lambda: len(got.frames) >= 3, timeout=3)
        pump(r, lambda: False, timeout=0.3)
    ids = [sc.can_id_of(raw) for raw, _ in got.frames]
    # 0x123 by 123:7FF; 0x124 and 0x500 by the inverted 400~700 (id & 0x700 != 0x400); 0x400 by none
    assert ids == [0x123, 0x124, 0x500]
    ep.close()
    r.close()


@pytest.mark.parametrize("error_frames", [False, True])
def test_error_frames_only_when_asked(vcan0, error_frames):
    r = Reactor()
    got = Collector()
    ep = SocketCanEndpoint(r, vcan0, 0, got, error_frames=error_frames)
    with can.Bus(interface="socketcan", channel=vcan0) as bus:
        bus.send(can.Message(arbitration_id=0x004, is_error_frame=True, data=bytes(8)))  # CAN_ERR_CRTL
        bus.send(can.Message(arbitration_id=0x100, data=b"\x00", is_extended_id=False))
        pump(r, lambda: any(sc.can_id_of(raw) == 0x100 for raw, _ in got.frames), timeout=3)
        pump(r, lambda: False, timeout=0.2)
    err = [raw for raw, _ in got.frames if sc.can_id_of(raw) & sc.CAN_ERR_FLAG]
    assert len(err) == (1 if error_frames else 0)
    ep.close()
    r.close()


def test_kernel_drop_counter_reported(vcan0):
    r = Reactor()
    got = Collector()
    ep = SocketCanEndpoint(r, vcan0, 0, got, rcvbuf=4096)  # tiny queue: the kernel must drop
    subprocess.run(["cangen", vcan0, "-n", "2000", "-g", "0", "-L", "8"], check=True)
    pump(r, lambda: False, timeout=0.5)
    # the kernel stamps its drop count on frames queued after the drop: one more frame carries it
    subprocess.run(["cangen", vcan0, "-n", "1", "-L", "8"], check=True)
    pump(r, lambda: False, timeout=0.5)
    dropped = ep.counters.dropped["kernel_rx_overflow"]
    assert dropped > 0
    assert dropped + len(got.frames) == 2001
    assert ep.kernel_drops == dropped
    ep.close()
    r.close()


def test_enobufs_is_queued_and_retried_not_dropped(vcan2):
    # A tbf qdisc with a tiny queue makes the kernel answer ENOBUFS, like a real can0 whose
    # txqueuelen is exhausted. Every frame must still reach the bus, in order.
    subprocess.run(["tc", "qdisc", "add", "dev", vcan2, "root", "tbf", "rate", "400kbit", "burst", "2000",
                    "limit", "2000"], check=True)
    try:
        r = Reactor()
        ep = SocketCanEndpoint(r, vcan2, 0, Collector(), fd=False)
        n = 1000
        frames = [(sc.pack_can(0x100 + (i % 0x600), i.to_bytes(4, "big")), 0) for i in range(n)]
        with can.Bus(interface="socketcan", channel=vcan2, receive_own_messages=False) as bus:
            # python-can's default receive buffer holds ~277 frames; this test is about TX
            bus.socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            assert ep.send_frames(0, frames) == n
            assert ep.tx_queued > 0  # the qdisc pushed back at least once
            got = []
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                r.run_once(timeout=0.01)
                while (m := bus.recv(0)) is not None:
                    got.append(int.from_bytes(m.data, "big"))
        assert got == list(range(n))
        assert ep.counters.tx_frames == n and not ep.counters.dropped
        ep.close()
        r.close()
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", vcan2, "root"], check=False)


def test_fd_frame_to_classic_link_is_counted(vcan3):
    subprocess.run(["ip", "link", "set", vcan3, "down"], check=True)
    subprocess.run(["ip", "link", "set", vcan3, "mtu", "16", "up"], check=True)
    try:
        r = Reactor()
        ep = SocketCanEndpoint(r, vcan3, 0, Collector())
        assert not ep.fd_enabled
        assert ep.send_frames(0, [(sc.pack_canfd(0x1, b"x" * 12), 0), (sc.pack_can(0x2, b"y"), 0)]) == 1
        assert ep.counters.dropped["fd_on_classic_bus"] == 1 and ep.counters.tx_frames == 1
        with pytest.raises(ValueError, match="needs 72"):
            SocketCanEndpoint(r, vcan3, 0, Collector(), fd=True)
        ep.close()
        r.close()
    finally:
        subprocess.run(["ip", "link", "set", vcan3, "down"], check=True)
        subprocess.run(["ip", "link", "set", vcan3, "mtu", "72", "up"], check=True)
