"""PendingFrames: bounded in frames and bytes, drop-oldest or disconnect, stale frames dropped,
every drop counted; AgeStamps (the SocketCAN TX queue's ages); liveness arithmetic and options."""

import socket

import pytest

from bridge.codec import socketcan as sc
from bridge.core.stats import Counters
from bridge.endpoints import liveness
from bridge.endpoints.pending import AgeStamps, PendingFrames
from bridge.errors import ConfigError


def classic(*ids):
    return [(sc.pack_can(i, b"\x01\x02"), 0) for i in ids]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_bound_drops_oldest_batches_and_counts_them():
    c = Counters()
    q = PendingFrames(c, limit=5)
    q.append(0, classic(1, 2))
    q.append(1, classic(3, 4))
    q.append(0, classic(5, 6))  # 6 > 5: the oldest batch goes
    assert q.frames == 4 and q.bytes == 64 and c.dropped["queue_full"] == 2
    assert q.take() == [(1, classic(3, 4)), (0, classic(5, 6))]
    assert not q and q.frames == 0 and q.bytes == 0


def test_byte_bound_counts_raw_struct_bytes():
    c = Counters()
    q = PendingFrames(c, limit=1000, max_bytes=200)
    fd = [(sc.pack_canfd(0x1, bytes(64)), 0)]  # 72 bytes each
    for _ in range(3):
        q.append(0, fd)
    assert q.frames == 2 and q.bytes == 144 and c.dropped == {"queue_full": 1}


def test_disconnect_policy_reports_overflow_and_keeps_the_batch():
    c = Counters()
    q = PendingFrames(c, limit=3, overflow="disconnect")
    assert q.append(0, classic(1, 2, 3))
    assert not q.append(0, classic(4))  # the caller closes the slow consumer
    assert q.frames == 4 and not c.dropped
    q.discard("slow_consumer_disconnected")
    assert c.dropped == {"slow_consumer_disconnected": 4} and not q


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="overflow"):
        PendingFrames(Counters(), overflow="block")


def test_discard_counts_under_its_reason():
    c = Counters()
    q = PendingFrames(c)
    q.append(0, classic(1, 2, 3))
    q.discard("connection_closed")
    assert c.dropped == {"connection_closed": 3} and not q


def test_stale_batches_are_dropped_by_local_enqueue_time_not_frame_timestamp():
    clock, c = Clock(), Counters()
    q = PendingFrames(c, max_age=2.0, clock=clock)
    old = [(sc.pack_can(0x100), 1)]  # ts_ns is the sender's clock (here: 1970): irrelevant
    q.append(0, old)
    clock.t += 1.5
    q.append(1, classic(2, 3))
    clock.t += 1.0  # first batch waited 2.5 s, second 1.0 s
    assert q.take() == [(1, classic(2, 3))]
    assert c.dropped == {"stale": 1}


def test_max_age_zero_keeps_everything():
    clock, c = Clock(), Counters()
    q = PendingFrames(c, max_age=0, clock=clock)
    q.append(0, classic(1))
    clock.t += 1e6
    assert q.take() == [(0, classic(1))] and not c.dropped


def test_move_to_keeps_stamps_and_counts():
    clock, a, b = Clock(), Counters(), Counters()
    backlog = PendingFrames(a, max_age=1.0, clock=clock, full_reason="not_connected")
    backlog.append(0, classic(1))
    clock.t += 0.8
    backlog.append(0, classic(2))
    conn = PendingFrames(b, max_age=1.0, clock=clock)
    backlog.move_to(conn)
    assert not backlog and backlog.frames == 0 and conn.frames == 2 and conn.bytes == 32
    clock.t += 0.5  # the first is 1.3 s old now, the second 0.5 s
    assert conn.take() == [(0, classic(2))] and b.dropped == {"stale": 1}


def test_full_reason_is_configurable():
    c = Counters()
    q = PendingFrames(c, limit=1, full_reason="not_connected")
    q.append(0, classic(1))
    q.append(0, classic(2))
    assert c.dropped == {"not_connected": 1}


def test_age_stamps_follow_a_fifo_by_runs():
    clock = Clock()
    s = AgeStamps(clock)
    s.push(3)
    clock.t += 1
    s.push(2)
    clock.t += 1
    s.push(0)  # nothing
    assert s.expired(0.5) == 5 and s.expired(1.5) == 3 and s.expired(5) == 0 and s.expired(0) == 0
    s.pop(2)  # two of the first run left the head
    assert s.expired(1.5) == 1
    s.pop(2)  # the last of run one and one of run two
    assert s.expired(0.5) == 1 and s.expired(1.5) == 0
    s.pop(10)
    assert s.expired(0.1) == 0


@pytest.mark.parametrize("timeout", [2, 2.5, 3, 4, 5, 7, 10, 60, 3600])
def test_keepalive_fires_within_the_bound(timeout):
    idle, intvl, cnt = liveness.keepalive_params(timeout)
    assert idle >= 1 and intvl >= 1 and cnt >= 1
    assert idle + intvl * cnt <= timeout


@pytest.mark.parametrize("timeout", [2, 5, 30])
def test_silence_check_fires_within_the_bound_and_after_our_heartbeat_gap(timeout):
    tick, limit = liveness.check_interval(timeout), liveness.silence_limit(timeout)
    assert limit + tick <= timeout  # worst case: the check after the limit
    assert limit > liveness.HEARTBEAT_S  # a live peer heartbeating every HEARTBEAT_S is never cut
    # our heartbeats: due at the check when HEARTBEAT_S minus one check has passed -> gaps <= HEARTBEAT_S
    assert liveness.heartbeat_due(10.0 + liveness.HEARTBEAT_S - tick, 10.0, timeout)


def test_dead_peer_timeout_is_applied_to_a_real_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        liveness.set_dead_peer_timeout(s, 5)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4000  # 5 s minus one heartbeat gap
        got = tuple(s.getsockopt(socket.IPPROTO_TCP, o)
                    for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT))
        assert got == liveness.keepalive_params(5)
    finally:
        s.close()


def test_peer_state_transitions_are_counted_and_published():
    c = Counters()
    st = liveness.PeerState("udp://x:1", c, timeout=2)
    assert c.gauges == {"peer_up": False, "peer_state": "down", "peer_transitions": 0}
    st.heard(100.0)
    st.check(101.0)
    assert st.up and c.gauges["peer_state"] == "up"
    st.check(100.0 + 2.0)  # past silence_limit(2) = 1.5 s
    assert not st.up and c.gauges == {"peer_up": False, "peer_state": "down", "peer_transitions": 2}
    st.heard(103.0)
    assert c.gauges["peer_transitions"] == 3 and c.gauges["peer_up"] is True


def test_options_parse_and_errors_name_the_key():
    from bridge.daemon.config import parse_peer_url

    p = parse_peer_url("tcp://h:1?timeout=3&overflow=disconnect&max_age=0.5&sndbuf=65536").limits
    assert (p.timeout, p.overflow, p.max_age, p.sndbuf) == (3.0, "disconnect", 0.5, 65536)
    d = parse_peer_url("udp://h:1").limits
    assert (d.timeout, d.overflow, d.max_age, d.sndbuf) == (5.0, "drop-oldest", 2.0, None)
    for url, words in [("tcp://h:1?timeout=1", "timeout"), ("tcp://h:1?timeout=x", "timeout"),
                       ("tcp://h:1?max_age=-1", "max_age"), ("tcp://h:1?overflow=block", "overflow"),
                       ("udp://h:1?overflow=disconnect", "overflow=disconnect"), ("tcp://h:1?sndbuf=1", "sndbuf"),
                       ("socketcand://:1?timeout=3", "timeout")]:
        with pytest.raises(ConfigError, match=words):
            parse_peer_url(url)


def test_toml_keys(tmp_path):
    from bridge.daemon.config import load_toml

    path = tmp_path / "b.toml"
    path.write_text('[[interface]]\nname = "vcan0"\nmax_age = 0\n'
                    '[[peer]]\nurl = "tcp-listen://:29600"\ntimeout = 4\noverflow = "disconnect"\nmax_age = 1.5\n')
    cfg = load_toml(str(path))
    assert cfg.interfaces[0].max_age == 0
    assert (cfg.peers[0].limits.timeout, cfg.peers[0].limits.overflow, cfg.peers[0].limits.max_age) == \
        (4, "disconnect", 1.5)
    path.write_text('[[interface]]\nname = "vcan0"\nmax_age = "soon"\n[[peer]]\nurl = "tcp://h:1"\n')
    with pytest.raises(ConfigError, match=r"interface\[0\]\.max_age"):
        load_toml(str(path))
