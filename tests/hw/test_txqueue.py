"""A full TX queue on a real driver (the emulated SJA1000, txqueuelen 10), the most common trap of real buses.

- A 20,000-frame burst from the network into can0 leaves the controller complete, in order, none twice:
  counted by the TX echo (IFF_ECHO: the driver loops a frame back when the controller reports it sent)
  that another socket on can0 (candump) sees. The bus pushed back (ENOBUFS) and the counters say how
  often and how long.
- A TX queue that never drains (`loopback on`: QEMU then never completes TX, as for a node alone on the
  bus): frames older than max_age are dropped as stale, the backlog stays bounded, the other bus, the
  other peer and the opposite direction keep flowing, the bridge waits without spinning (its CPU while
  blocked is printed: a figure for docs/benchmarks.md, not an assertion), and after recovery no old
  frame leaves.
- A controller whose TX stalls and then comes back without a link restart (its interrupt held off: the
  driver never hears that a frame left, so the kernel's queue stays full, as on a bus with no ACK):
  once everything the kernel holds is stale the bridge takes the link down and up (tx_flush), so when
  the bus comes back only fresh frames leave. With tx_flush=off the stale ones leave first: the case the
  flush is for, and the proof that the test can fail.
- A dropping qdisc (fq_codel) on a CAN interface is warned about at start, naming the fix.
Figures are printed as `FIGURE name: value` (pytest -s shows them)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import pytest

from bridge.core.reactor import Reactor
from bridge.endpoints.socketcan import TX_BACKLOG_HIGH, TX_QUEUE_MAX, SocketCanEndpoint
from bridge.hw.cansock import open_can_raw
from tests.hw.bridgeproc import Bridge, Candump, Peer, bus_stats, free_tcp_port, number_of, numbered
from tests.hw.conftest import ip
from tests.hw.pci import interrupt_held_off

pytestmark = pytest.mark.hw
BURST = 20_000


def figure(name: str, value) -> None:
    print(f"FIGURE {name}: {value}")


def test_burst_into_txqueuelen_10_leaves_complete_in_order(bus_a, tmp_path):
    port = free_tcp_port()
    bridge = Bridge(tmp_path, "can0", f"tcp-listen://127.0.0.1:{port}")
    echo = Candump(tmp_path, "can0")  # the TX echo: what left the controller
    other = Candump(tmp_path, "can1")  # the other node (its 64-byte RX FIFO overruns at full speed)
    try:
        peer = Peer(port)
        stats0 = bus_stats("can1")
        t0 = time.monotonic()
        peer.send(0, numbered(BURST))
        c = bridge.counters(until=lambda c: c["can0"]["tx_frames"] + sum(c["can0"]["dropped"].values()) >= BURST,
                            timeout=240)["can0"]
        seconds = time.monotonic() - t0
        time.sleep(1.0)
        echo.stop()
        sent = [number_of(raw) for raw in echo.frames()]
        print(f"burst counters: {c}")
        assert sent == list(range(BURST))  # complete, in order, none twice
        assert c["dropped"] == {}, c
        assert c["errors"].get("tx_enobufs", 0) >= 1 and c["tx_pushbacks"] >= 1, c  # the bus pushed back
        assert c["tx_queued"] == 0
        time.sleep(2.5)  # past max_age with the bus idle: a bus that sent everything is never flushed
        assert bridge.counters()["can0"]["tx_flushes"] == 0
        pauses = sum(v.get("read_pauses", 0) for v in bridge.counters().values() if isinstance(v, dict))
        assert pauses >= 1  # the bus backed up: the bridge stopped reading the peer, TCP held the sender back
        time.sleep(0.5)
        other.stop()
        received = len(other.frames())
        figure("burst frames", BURST)
        figure("burst seconds (first send to last echo)", f"{seconds:.2f}")
        figure("burst ENOBUFS push-backs / times the bridge stopped reading the peer", f"{c['errors']['tx_enobufs']} / "
               f"{pauses}")
        figure("burst pushback episodes / total ms / longest ms",
               f"{c['tx_pushbacks']} / {c['tx_pushback_ms']} / {c['tx_pushback_max_ms']}")
        over = bus_stats("can1")["rx_over_errors"] - stats0["rx_over_errors"]
        figure("burst received by the other node (can1)", f"{received} ({received / BURST:.1%}; FIFO overruns {over})")
        peer.close()
    finally:
        echo.stop()
        other.stop()
        assert bridge.stop() == 0, bridge.text()


def _stuck(name: str) -> None:
    """The controller's TX never completes from now on (QEMU ignores loopback mode's self-reception)."""
    ip("link", "set", name, "down")
    ip("link", "set", name, "type", "can", "loopback", "on")
    ip("link", "set", name, "up")


def test_stuck_tx_queue_drops_stale_keeps_the_rest_flowing(bus_a, bus_b, tmp_path):
    port = free_tcp_port()
    config = tmp_path / "bridge.toml"
    max_age = 5.0
    config.write_text(f'[[interface]]\nname = "can0"\nmax_age = {max_age}\n[[interface]]\nname = "can2"\n'
                      f'[[peer]]\nurl = "tcp-listen://127.0.0.1:{port}"\n')
    _stuck("can0")
    bridge = Bridge(tmp_path, "run", "-c", str(config))
    try:
        peer, other_peer = Peer(port, ("a", "b")), Peer(port, ("a", "b"))
        offered = 5000
        peer.sock.settimeout(None)  # its sender blocks once the bridge stops reading it (back-pressure)
        sender = threading.Thread(target=peer.send, args=(0, numbered(offered)))  # into the stuck can0
        sender.start()
        c = bridge.counters(until=lambda c: c["can0"]["tx_queued"] >= TX_BACKLOG_HIGH)["can0"]
        assert c["tx_queued"] <= TX_QUEUE_MAX and c["tx_frames"] <= 12, c  # the kernel took txqueuelen 10 (+1, +1)
        # waiting on the stuck bus without spinning: CPU of the bridge while only the backlog waits
        time.sleep(0.5)
        cpu0, t0, retries0 = bridge.cpu_s(), time.monotonic(), c["errors"].get("tx_enobufs", 0)
        time.sleep(1.5)
        cpu, wall = bridge.cpu_s() - cpu0, time.monotonic() - t0
        waiting = bridge.counters()["can0"]
        figure("CPU while blocked (bridge process, % of one vCPU)", f"{cpu / wall:.1%} over {wall:.1f} s, "
               f"{(waiting['errors'].get('tx_enobufs', 0) - retries0) / wall:.0f} ENOBUFS retries/s")
        # the rest keeps flowing: the other bus (from the other peer), the opposite direction, both peers
        can2 = Candump(tmp_path, "can2")  # the other bus: its TX echo, what left the controller
        other_peer.send(1, numbered(50, start=100_000))
        node3 = open_can_raw("can3", fd=False, timestamps=False)
        for raw in numbered(20, start=200_000, can_id=0x300):
            node3.send(raw)
            time.sleep(0.005)
        node3.close()
        for p in (peer, other_peer):
            got = [number_of(raw) for ch, raw in p.wait_frames(20) if ch == 1]
            assert got == list(range(200_000, 200_020)), got
        time.sleep(0.5)
        can2.stop()
        assert [n for n in map(number_of, can2.frames()) if n < 200_000] == list(range(100_000, 100_050))
        # after max_age every waiting frame is dropped as stale, none left
        sender.join(timeout=120)
        assert not sender.is_alive()
        c = bridge.counters(until=lambda c: c["can0"]["tx_queued"] == 0 and c["can0"]["tx_frames"] + sum(
            c["can0"]["dropped"].values()) == offered, timeout=3 * max_age + 30)["can0"]
        dropped = c["dropped"]
        assert dropped.get("stale", 0) > 0
        assert c["tx_frames"] + dropped.get("stale", 0) + dropped.get("tx_queue_full", 0) == offered, c
        figure("stuck bus: offered / kernel took / stale / queue full",
               f"{offered} / {c['tx_frames']} / {dropped.get('stale', 0)} / {dropped.get('tx_queue_full', 0)}")
        # recovery (the link goes down and up, which flushes the kernel's queue): only fresh frames leave can0
        # (its TX echo: the other node's FIFO would overrun on 20 frames at once)
        ip("link", "set", "can0", "down")
        ip("link", "set", "can0", "type", "can", "loopback", "off")
        ip("link", "set", "can0", "up")
        left = Candump(tmp_path, "can0")  # (started after: candump ends when its link goes down)
        time.sleep(1.0)  # the bridge has seen the link come back
        peer.send(0, numbered(20, start=300_000))
        deadline = time.monotonic() + 30
        while len(left.frames()) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        left.stop()
        assert [number_of(raw) for raw in left.frames()] == list(range(300_000, 300_020))  # no stale frame
        peer.close()
        other_peer.close()
    finally:
        assert bridge.stop() == 0, bridge.text()


@pytest.mark.parametrize("tx_flush", ["on", "off"])
def test_stuck_controller_comes_back_with_no_stale_frame(tx_flush, bus_a, tmp_path):
    port = free_tcp_port()
    config = tmp_path / "bridge.toml"
    max_age = 1.0
    config.write_text(f'[[interface]]\nname = "can0"\nmax_age = {max_age}\ntx_flush = "{tx_flush}"\n'
                      f'[[peer]]\nurl = "tcp-listen://127.0.0.1:{port}"\n')
    bridge = Bridge(tmp_path, "run", "-c", str(config))
    try:
        peer = Peer(port)
        bridge.counters()
        with interrupt_held_off("can0"):  # TX stalls: the first frame leaves, the driver never hears it did
            peer.send(0, numbered(30))
            c = bridge.counters(until=lambda c: c["can0"]["tx_frames"] + c["can0"]["dropped"].get("stale", 0) == 30
                                and (tx_flush == "off" or c["can0"]["tx_flushes"] >= 1), timeout=30)["can0"]
            figure(f"stalled controller, tx_flush={tx_flush}: handed to the kernel / stale / flushes / flushed",
                   f"{c['tx_frames']} / {c['dropped'].get('stale', 0)} / {c['tx_flushes']} / "
                   f"{c['errors'].get('tx_flushed', 0)}")
            assert 2 <= c["tx_frames"] <= 12, c  # the controller's one, then txqueuelen 10 (+1 in flight)
            if tx_flush == "on":
                assert c["tx_flushes"] == 1 and c["errors"]["tx_flushed"] >= c["tx_frames"] - 1, c
            else:
                assert c["tx_flushes"] == 0, c
            other = Candump(tmp_path, "can1")  # what leaves the wire from now on
        peer.send(0, numbered(5, start=1000))  # the bus is back: fresh frames
        deadline = time.monotonic() + 30
        while sum(number_of(raw) >= 1000 for raw in other.frames()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        other.stop()
        left = [number_of(raw) for raw in other.frames()]
        if tx_flush == "on":
            assert left == list(range(1000, 1005)), left  # no stale frame left the controller
        else:
            assert left[-5:] == list(range(1000, 1005)) and len(left) >= 10, left
            assert all(n < 30 for n in left[:-5]), left  # the kernel's stale frames went first
        peer.close()
    finally:
        assert bridge.stop() == 0, bridge.text()


def test_dropping_qdisc_is_warned_about(bus_a, caplog):
    subprocess.run(["tc", "qdisc", "replace", "dev", "can1", "root", "fq_codel"], check=True)
    reactor = Reactor()
    try:
        with caplog.at_level(logging.WARNING):
            for name in ("can0", "can1", "vcan0"):
                SocketCanEndpoint(reactor, name, 0, lambda *a: None).close()
    finally:
        reactor.close()
    warnings = [r.getMessage() for r in caplog.records if "qdisc" in r.getMessage()]
    assert len(warnings) == 1, warnings  # can0 (pfifo_fast) and vcan0 (noqueue) are fine
    assert "can1" in warnings[0] and "fq_codel" in warnings[0]
    assert "tc qdisc replace dev can1 root pfifo_fast" in warnings[0]
