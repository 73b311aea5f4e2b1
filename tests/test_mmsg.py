"""recvmmsg/sendmmsg batching on UDP sockets (same code path as CAN_RAW; runs without CAN)."""

import socket
import time

import pytest

from bridge.hw import mmsg

pytestmark = pytest.mark.skipif(not mmsg.available, reason="libc without recvmmsg/sendmmsg")


@pytest.fixture
def pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, mmsg.SO_TIMESTAMPNS, 1)
    rx.setsockopt(socket.SOL_SOCKET, mmsg.SO_RXQ_OVFL, 1)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield tx, rx
    tx.close()
    rx.close()


def test_batch_roundtrip_with_timestamps(pair):
    tx, rx = pair
    frames = [bytes([i]) * 16 for i in range(100)]
    before = time.time_ns()
    sender = mmsg.Sender(slots=64, slot_size=16)
    assert sender.send(tx.fileno(), frames) == 64  # one call carries at most `slots`
    assert sender.send(tx.fileno(), frames[64:]) == 36
    receiver = mmsg.Receiver(slots=64, slot_size=72)
    got = []
    for _ in range(4):
        batch, ovfl = receiver.recv(rx.fileno())
        got += batch
        assert ovfl is None
    # the kernel stamps at receive time, or at recvmsg() while its timestamp key is still off
    after = time.time_ns()
    assert [raw for raw, _ in got] == frames
    assert all(before <= ts <= after for _, ts in got)
    assert receiver.recv(rx.fileno()) == ([], None)  # EAGAIN is an empty batch


def test_mixed_lengths_and_slot_reuse(pair):
    tx, rx = pair
    receiver = mmsg.Receiver(slots=4, slot_size=72)
    for rounds in range(3):  # the control lengths the kernel rewrote must be restored each call
        sent = [b"a" * 16, b"b" * 72, b"c" * 16]
        for d in sent:
            tx.send(d)
        batch, _ = receiver.recv(rx.fileno())
        assert [raw for raw, _ in batch] == sent, rounds
        assert all(ts > 0 for _, ts in batch)


def test_drop_counter_is_reported(pair):
    tx, rx = pair
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # minimum: the kernel must drop
    for _ in range(2000):
        tx.send(b"x" * 16)
    receiver = mmsg.Receiver(slots=64, slot_size=72)
    while receiver.recv(rx.fileno())[0]:
        pass
    tx.send(b"y" * 16)  # queued after the drops: carries the count
    batch, ovfl = receiver.recv(rx.fileno())
    assert batch and ovfl is not None and ovfl > 0


def test_send_error_raises_with_errno():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not connected: no destination
    with pytest.raises(OSError) as e:
        mmsg.Sender(slots=2, slot_size=16).send(s.fileno(), [b"z" * 16])
    assert e.value.errno in (89, 107)  # EDESTADDRREQ / ENOTCONN
    s.close()
