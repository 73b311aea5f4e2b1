"""The outbox's storage contract (bridge.endpoints.mqtt_store) on the in-memory backend: a durable
backend (issue 21) must pass the same checks (parametrize `backend` with it)."""

from __future__ import annotations

import pytest

from bridge.endpoints.mqtt_store import MESSAGE_OVERHEAD_BYTES, MemoryBackend, Message


def message(seq, frames=2, channel=0):
    return Message(seq, channel, f"fleet/gw1/can{channel}/rx", frames, 1000.0 + seq, bytes(24 * frames), (7, seq))


@pytest.fixture(name="backend")
def _backend():
    b = MemoryBackend()
    yield b
    b.close()


def test_append_pending_acknowledge_drop_oldest(backend):
    assert backend.load_state() is None and backend.oldest() is None and backend.drop_oldest() is None
    backend.append([message(0), message(1), message(2, frames=3)], {"session": 7, "published": {}, "dropped": {}})
    assert (backend.messages, backend.frames, backend.bytes) == (3, 7, 24 * 7 + 3 * MESSAGE_OVERHEAD_BYTES)
    assert [m.seq for m in backend.pending()] == [0, 1, 2]
    assert [m.seq for m in backend.pending(after=0)] == [1, 2]
    assert backend.acknowledge(1).seq == 1 and backend.acknowledge(1) is None  # out of turn, once
    assert [m.seq for m in backend.pending()] == [0, 2]
    assert backend.oldest().seq == 0 and backend.drop_oldest().seq == 0
    assert (backend.messages, backend.frames) == (1, 3)
    backend.save_state({"session": 7, "published": {"t": 3}, "dropped": {"t": 2}})
    assert backend.load_state()["dropped"] == {"t": 2}
    backend.append([message(5)], {"session": 7, "published": {"t": 5}, "dropped": {"t": 2}})
    assert [m.seq for m in backend.pending()] == [2, 5] and backend.load_state()["published"] == {"t": 5}
