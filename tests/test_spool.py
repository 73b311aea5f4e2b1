"""bridge.endpoints.spool alone: a real directory, real files, a real SIGKILLed writer (issue 21)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bridge.core.stats import Counters
from bridge.endpoints import spool as sp
from bridge.endpoints.outbox_spool import SpoolBackend
from bridge.endpoints.spool import Spool, SpoolError, parse_sync


def payload(i: int, size: int = 40) -> bytes:
    return (b"%08d" % i) * (size // 8)


def segments(d) -> list:
    return sorted(n for n in os.listdir(d) if n.startswith("seg-"))


def test_unacknowledged_messages_come_back_in_order_acknowledged_ones_do_not(tmp_path):
    s = Spool(str(tmp_path))
    rids = [s.append(i % 2, 3, payload(i), created=1000.0 + i) for i in range(10)]
    s.flush(now=1000.0)
    for rid in rids[:4] + [rids[6]]:
        s.acknowledge(rid)
    s.close()

    again = Spool(str(tmp_path))
    got = list(again.replay(now=1010.0))
    assert [r.rid for r in got] == [rids[i] for i in (4, 5, 7, 8, 9)]
    assert [r.payload for r in got] == [payload(i) for i in (4, 5, 7, 8, 9)]
    assert [(r.channel, r.frames, r.created) for r in got[:2]] == [(0, 3, 1004.0), (1, 3, 1005.0)]
    assert got[0].age == pytest.approx(6.0)
    assert again.append(0, 1, b"x") > rids[-1]  # rids never repeat across restarts
    assert again.counters.errors == {}


def test_a_rid_used_again_after_a_restart_is_a_new_message(tmp_path):
    """An ACK acknowledges only what was appended before it: an outbox numbering from 0 again after a
    restart (nothing left to send) must not see its new messages taken by the old ACK records."""
    s = Spool(str(tmp_path))
    for rid in range(5):
        s.append(0, 1, b"old", rid=rid)
        s.flush()
        s.acknowledge(rid)
    s.close()
    s = Spool(str(tmp_path), segment_bytes=1 << 20)
    s.append(0, 1, b"new", rid=0)
    with pytest.raises(ValueError):
        s.append(0, 1, b"twice", rid=0)
    s.close()
    assert [(r.rid, r.payload) for r in Spool(str(tmp_path)).replay()] == [(0, b"new")]


def test_replay_drops_what_is_older_than_max_age_counted_stale(tmp_path):
    s = Spool(str(tmp_path))
    for i in range(6):
        s.append(0, 10, payload(i), created=100.0 + i * 10)  # ages at 160: 60, 50, 40, 30, 20, 10
    s.close()
    again = Spool(str(tmp_path))
    got = list(again.replay(max_age=35.0, now=160.0))
    assert [r.age for r in got] == [30.0, 20.0, 10.0]
    assert again.counters.dropped == {"stale": 30}
    again.close()
    assert len(list(Spool(str(tmp_path)).replay(now=160.0))) == 3  # the stale ones were removed for good


def test_a_clock_set_back_counts_as_fresh(tmp_path):
    s = Spool(str(tmp_path))
    s.append(0, 1, b"x", created=5000.0)
    s.close()
    (r,) = Spool(str(tmp_path)).replay(max_age=60, now=10.0)  # a gateway without RTC booted in 1970
    assert r.age == 0.0


def test_session_state_persists_and_survives_segment_deletion(tmp_path):
    s = Spool(str(tmp_path), max_bytes=sp.MIN_MAX_BYTES, segment_bytes=4096)
    s.set_state(session=0xABCD, counts={"can0": 0})
    for i in range(200):
        rid = s.append(0, 5, payload(i, 200))
        s.set_state(counts={"can0": (i + 1) * 5})
        s.flush()
        s.acknowledge(rid)
    s.flush()
    assert len(segments(tmp_path)) <= 2  # acknowledged segments are deleted
    os.kill(os.getpid(), 0)
    del s  # no close: as a killed process leaves it (what flush wrote is in the files)
    again = Spool(str(tmp_path))
    assert again.state == {"session": 0xABCD, "counts": {"can0": 1000}}
    assert list(again.replay()) == []


def test_full_spool_drops_the_oldest_counted_spool_full_and_stays_bounded(tmp_path):
    evicted = []
    s = Spool(str(tmp_path), max_bytes=sp.MIN_MAX_BYTES, on_evict=lambda gone: evicted.extend(r for r, _ in gone))
    rids = []
    for i in range(2000):  # ~500 KB appended into a 64 KB spool
        rids.append(s.append(0, 4, payload(i, 200)))
        s.flush()
        assert s.size <= sp.MIN_MAX_BYTES + s.segment_bytes
    dropped = s.counters.dropped["spool_full"]
    assert dropped > 0 and dropped == 4 * len(evicted)
    assert evicted == rids[: len(evicted)]  # the oldest go first
    s.close()
    kept = [r.rid for r in Spool(str(tmp_path)).replay()]
    assert kept == rids[len(evicted):]
    assert sum(os.path.getsize(tmp_path / n) for n in segments(tmp_path)) <= sp.MIN_MAX_BYTES + s.segment_bytes


def _spool_with(tmp_path, n=20):
    s = Spool(str(tmp_path))
    rids = [s.append(0, 2, payload(i), created=50.0) for i in range(n)]
    s.close()
    (name,) = segments(tmp_path)
    return rids, tmp_path / name


def test_a_torn_last_record_is_skipped_and_counted_at_every_cut(tmp_path):
    rids, path = _spool_with(tmp_path, 4)
    data = path.read_bytes()
    rec = len(data) // 4  # equal-sized records (the STATE-free segment holds only the 4 DATA records)
    assert rec * 4 == len(data)
    for cut in range(3 * rec + 1, len(data)):  # every length inside the last record
        path.write_bytes(data[:cut])
        c = Counters()
        got = list(Spool(str(tmp_path), c).replay(now=60.0))
        assert [r.rid for r in got] == rids[:3], cut
        assert c.errors["spool_corrupt"] == 1, cut
        for extra in segments(tmp_path):
            if tmp_path / extra != path:
                os.unlink(tmp_path / extra)


def test_a_corrupt_record_in_the_middle_is_skipped_the_rest_is_read(tmp_path):
    rids, path = _spool_with(tmp_path, 20)
    data = bytearray(path.read_bytes())
    rec = len(data) // 20
    data[5 * rec + 30] ^= 0x40  # a flipped bit in record 5's payload (CRC)
    data[9 * rec + 5] ^= 0xFF  # record 9's length field: reading resyncs at the next magic
    path.write_bytes(bytes(data))
    c = Counters()
    got = [r.rid for r in Spool(str(tmp_path), c).replay()]
    assert got == [rid for i, rid in enumerate(rids) if i not in (5, 9)]
    assert c.errors["spool_corrupt"] == 2


def test_garbage_files_never_crash(tmp_path):
    (tmp_path / f"seg-{1:020d}.log").write_bytes(os.urandom(5000) + sp._MAGIC_BYTES + b"\xff" * 20)
    (tmp_path / "seg-notanumber.log").write_bytes(b"x")
    c = Counters()
    s = Spool(str(tmp_path), c)
    assert list(s.replay()) == []
    assert c.errors["spool_corrupt"] >= 1
    s.append(0, 1, b"ok")
    s.close()
    assert [r.payload for r in Spool(str(tmp_path)).replay()] == [b"ok"]


def test_fsync_once_per_window_of_time_or_frames(tmp_path):
    s = Spool(str(tmp_path), sync_interval=0.1, sync_frames=100)
    base = s.fsyncs
    t = 1000.0
    s.flush(now=t)
    for i in range(9):  # 9 passes of 10 frames in 90 ms: written each pass, not fsynced
        s.append(0, 10, payload(i))
        due = s.flush(now=t + 0.01 * i)
    assert s.fsyncs == base  # the window starts at the last flush that found everything synced
    assert due == pytest.approx(0.1 - 0.08)
    s.append(0, 10, payload(9))
    assert s.flush(now=t + 0.09) is None  # 100 frames since the last fsync
    assert s.fsyncs == base + 1
    s.append(0, 1, payload(10))
    assert s.flush(now=t + 0.15) is not None
    assert s.flush(now=t + 0.2) is None  # the timer's flush: 100 ms after the last fsync
    assert s.fsyncs == base + 2


def test_what_a_pass_flushed_survives_sigkill(tmp_path):
    """A writer process killed with SIGKILL (no close, no fsync): everything flush() wrote comes back."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from bridge.endpoints.spool import Spool
        s = Spool({str(tmp_path)!r}, sync_interval=3600, sync_frames=10**9)
        for i in range(300):
            s.append(0, 7, b"%08d" % i, created=1.0)
            if i % 10 == 9:
                s.flush()
        s.set_state(count=300 * 7)
        s.flush()
        s.append(0, 7, b"never flushed")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == -signal.SIGKILL
    s = Spool(str(tmp_path))
    got = list(s.replay())
    assert [r.payload for r in got] == [b"%08d" % i for i in range(300)]
    assert s.state == {"count": 2100}
    assert s.counters.errors == {}


def test_bad_directory_and_options_are_clear_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError, match="spool"):
        Spool(str(tmp_path / "file" / "sub"))
    with pytest.raises(SpoolError, match="spool_max"):
        Spool(str(tmp_path), max_bytes=1000)
    assert parse_sync("0.1,1000") == (0.1, 1000)
    assert parse_sync("0.5") == (0.5, sp.DEFAULT_SYNC_FRAMES)
    for bad in ("", "0", "x", "0.1,0", "1,2,3", "120"):
        with pytest.raises(ValueError):
            parse_sync(bad)


# ---------------------------------------------------------------- the outbox's backend on the spool
def test_spool_backend_meets_the_outbox_contract(tmp_path):
    from tests import test_mqtt_store as contract

    b = SpoolBackend(str(tmp_path / "spool"))
    contract.test_append_pending_acknowledge_drop_oldest(b)
    b.close()


def test_spool_backend_keeps_messages_and_state_across_a_restart(tmp_path):
    from tests.test_mqtt_store import message

    timers = []
    b = SpoolBackend(str(tmp_path), call_later=lambda delay, fn: timers.append((delay, fn)) or _Timer())
    b.append([message(i, frames=3) for i in range(5)], {"session": 9, "published": {"t": 15}, "dropped": {}})
    assert timers and 0 < timers[0][0] <= sp.DEFAULT_SYNC_INTERVAL_S  # the window's fsync is armed
    b.acknowledge(1)
    b.drop_oldest()
    timers[0][1]()
    del b  # as SIGKILL leaves it: no close
    again = SpoolBackend(str(tmp_path))
    assert [m.seq for m in again.pending()] == [2, 3, 4]
    assert (again.messages, again.frames) == (3, 9)
    m = again.oldest()
    assert (m.topic, m.count, m.records, m.created) == ("fleet/gw1/can0/rx", (7, 2), bytes(72), 1002.0)
    assert again.load_state() == {"session": 9, "published": {"t": 15}, "dropped": {}}


class _Timer:
    def cancel(self):
        pass
