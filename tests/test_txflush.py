"""The flush of a stuck controller's kernel queue (bridge/endpoints/txflush.py), on the host: the decision
(when every frame the kernel holds is stale and the bus completed nothing), the modes and the counters,
with the link operations replaced by recorders. On a real driver (the restart, what leaves the wire
after recovery): tests/hw/test_txqueue.py."""

from __future__ import annotations

import logging
import time

import pytest

from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.endpoints.txflush import KernelQueueWatch
from bridge.errors import ConfigError

MAX_AGE = 0.5


class Link:
    """A CAN controller as the watch sees it: tx_packets (TX completions) and restarts."""

    def __init__(self, kind: str = "can") -> None:
        self.kind, self.tx_packets, self.restarts = kind, 100, 0

    def watch(self, reactor, counters, mode="auto", capable=True) -> KernelQueueWatch:
        return KernelQueueWatch(reactor, "can0", MAX_AGE, counters, mode, capable=lambda: capable,
                                restart=lambda _name: setattr(self, "restarts", self.restarts + 1),
                                tx_packets=lambda _name: self.tx_packets, kind=lambda _name: self.kind)


def give(watch: KernelQueueWatch, counters: Counters, n: int, full: bool = True) -> None:
    """n frames written, as the endpoint does it; full: the kernel then refused the next (ENOBUFS)."""
    if watch.needs_base:
        watch.rebase()
    counters.tx_frames += n
    watch.handed_over(time.monotonic(), n)
    if full:
        watch.refused()


def spin(reactor: Reactor, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reactor.run_once(0.01)


@pytest.fixture
def reactor():
    r = Reactor()
    yield r
    r.close()


def test_a_stuck_bus_is_flushed_once_all_it_holds_is_stale(reactor):
    link, counters = Link(), Counters()
    watch = link.watch(reactor, counters)
    give(watch, counters, 11)
    spin(reactor, MAX_AGE / 2)
    give(watch, counters, 1)  # a later hand-over: the newest frame sets the time
    spin(reactor, MAX_AGE * 0.8)
    assert link.restarts == 0  # the first frames are stale, the newest not yet: nothing flushed
    spin(reactor, MAX_AGE)
    assert link.restarts == 1 and watch.holding()
    assert counters.gauges["tx_flushes"] == 1 and counters.errors["tx_flushed"] == 12
    spin(reactor, MAX_AGE * 2)
    assert link.restarts == 1  # nothing handed over since: no watch, no second flush
    watch.close()


def test_a_bus_that_sends_is_never_flushed(reactor):
    link, counters = Link(), Counters()
    watch = link.watch(reactor, counters)
    for _ in range(8):  # frames keep coming and the bus completes them, however slowly
        give(watch, counters, 11)
        spin(reactor, MAX_AGE / 2)
        link.tx_packets += 11
    spin(reactor, MAX_AGE * 2)  # then an idle bus: the kernel holds none of ours, nothing to flush
    assert link.restarts == 0 and not counters.errors.get("tx_flushed")
    give(watch, counters, 3, full=False)  # held, nothing completes, but the queue never refused: not proven
    spin(reactor, MAX_AGE * 2.5)  # stuck (a few frames into an idle, stuck bus are left alone: documented)
    assert link.restarts == 0
    link.tx_packets += 3
    spin(reactor, MAX_AGE * 1.5)
    give(watch, counters, 5)  # a slow bus: one completion per window, none of ours stale for long
    for _ in range(5):
        spin(reactor, MAX_AGE * 0.6)
        link.tx_packets += 1
        give(watch, counters, 1)
    assert link.restarts == 0
    spin(reactor, MAX_AGE * 2.5)  # ... then it completes nothing any more: what it holds is stale
    assert link.restarts == 1 and counters.errors["tx_flushed"] == 5
    watch.close()


def test_modes_vcan_and_no_capability(reactor, caplog):
    counters = Counters()
    vcan = Link("vcan")
    assert not vcan.watch(reactor, counters).active  # vcan holds no frame: no watch, no timer
    off = Link()
    assert not off.watch(reactor, counters, mode="off").active
    with pytest.raises(ConfigError, match="tx_flush=on needs CAP_NET_ADMIN"):
        Link().watch(reactor, counters, mode="on", capable=False)
    with pytest.raises(ConfigError, match="tx_flush must be one of auto, on, off"):
        Link().watch(reactor, counters, mode="yes")
    link, counters = Link(), Counters()
    watch = link.watch(reactor, counters, capable=False)  # auto without CAP_NET_ADMIN: says so, once
    with caplog.at_level(logging.WARNING, logger="bridge.endpoints.txflush"):
        give(watch, counters, 11)
        spin(reactor, MAX_AGE * 3.5)
    assert link.restarts == 0 and counters.gauges["tx_flushes"] == 0
    lines = [r.getMessage() for r in caplog.records if "will leave when it comes back, stale" in r.getMessage()]
    assert len(lines) == 1 and "11+ frames" in lines[0] and "CAP_NET_ADMIN" in lines[0]
    watch.close()
