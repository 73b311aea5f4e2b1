"""Bus health: what a bus's controller and its interface say about the bus, and how busy the bus is.
Shown by `canbridge stats`, the Prometheus exporter, `canbridge top`, `canbridge link list` and the
MQTT status topic (docs/cli.md "Bus health").

Per SocketCanEndpoint, `snapshot()` gives (the kernel's counts are since the interface was created):
- bitrate, dbitrate: bit/s from IFLA_CAN_BITTIMING / IFLA_CAN_DATA_BITTIMING (None on vcan: no bit timing);
- bits_per_s: bits on the wire over the last LOAD_WINDOW_S, counted by the endpoint from the frames it
  reads and writes with canbusload's worst-case stuff-bit estimate (bridge/codec/busload.py); frames an
  rx filter keeps from the bridge are not seen; load_pct: that in percent of the bitrate (None without
  a bitrate; it may exceed 100, as canbusload's);
- txerr, rxerr: the controller's error counters (TEC/REC) from IFLA_CAN_BERR_COUNTER; where the driver
  has none (or on vcan), from the last error frame that carried them (CAN_ERR_CNT); None if neither;
- xstats: the controller's struct can_device_stats (bus_error, error_warning, error_passive, bus_off,
  arbitration_lost, restarts); None where the driver reports none (vcan);
- rx_overruns: the controller's RX FIFO overruns (rtnl_link_stats64 rx_over_errors), rx_dropped: frames
  the interface dropped (rx_dropped), socket_drops: frames the kernel dropped because the bridge's
  socket was full (SO_RXQ_OVFL, also counted as dropped["kernel_rx_overflow"]).
The bus state itself is the endpoint's `bus_state` gauge (bridge/endpoints/busfaults.py).
The netlink query (one RTM_GETLINK, answered within the call) runs when a snapshot is asked for, not
on a timer; the load window is a timer that only subtracts two counters.
"""

from __future__ import annotations

import logging
import select
import time

from bridge.codec import socketcan as sc
from bridge.codec.busload import WireBits, load_percent
from bridge.core.reactor import Reactor, TimerHandle
from bridge.endpoints.busfaults import BusWatch
from bridge.endpoints.socketcan import SocketCanEndpoint, link_mtu
from bridge.hw import linkstate
from bridge.hw.cansock import open_can_raw

log = logging.getLogger(__name__)

LOAD_WINDOW_S = 1.0  # canbusload's window: the load of the last second
MEASURE_READ_MAX = 256  # frames per readable socket per pass of measure_bits(): the other links get their turn


class BusHealth:
    """Health of one bus endpoint; `watch` (its BusWatch) gives the error counters of error frames."""

    def __init__(self, bus: SocketCanEndpoint, watch: BusWatch | None = None, now: float = 0.0) -> None:
        self.bus = bus
        self.watch = watch
        self.bits_per_s: float | None = None  # None until the first window closed
        self.data_bits_per_s: float | None = None
        self._last = (now, bus.wire.bits, bus.wire.data_bits)

    def tick(self, now: float) -> None:
        """Close a load window at `now` (monotonic seconds): the bits counted since the last tick, per
        second of the time that really passed (a busy loop may run the timer late)."""
        then, bits0, data0 = self._last
        if now <= then:
            return
        bits, data = self.bus.wire.bits, self.bus.wire.data_bits
        self.bits_per_s = (bits - bits0) / (now - then)
        self.data_bits_per_s = (data - data0) / (now - then)
        self._last = (now, bits, data)

    def snapshot(self) -> dict:
        """The JSON-ready health of the bus (keys in the module docstring)."""
        try:
            link = linkstate.health(self.bus.name)
        except OSError as exc:  # counted; the snapshot then has what the bridge counts itself
            self.bus.counters.errors["health_query_failed"] += 1
            log.debug("bus %s: RTM_GETLINK failed: %s", self.bus.name, exc)
            link = None
        out = health_of(link, self.bits_per_s, self.data_bits_per_s)
        if out["txerr"] is None and self.watch is not None and self.watch.err_counters is not None:
            out["txerr"], out["rxerr"] = self.watch.err_counters
        out["socket_drops"] = self.bus.counters.dropped.get("kernel_rx_overflow", 0)
        return out


def health_of(link: linkstate.LinkHealth | None, bits_per_s: float | None, data_bits_per_s: float | None) -> dict:
    """The health dict (module docstring; no socket_drops) of what the kernel said about a link and the
    bits per second counted on it (None: not counted yet)."""
    stats = (link.stats if link else None) or {}
    bitrate, dbitrate = (link.bitrate, link.dbitrate) if link else (None, None)
    load = None
    if bitrate and bits_per_s is not None:
        load = round(load_percent(bits_per_s, data_bits_per_s or 0, 1.0, bitrate, dbitrate), 2)
    return {
        "bitrate": bitrate,
        "dbitrate": dbitrate,
        "bits_per_s": None if bits_per_s is None else round(bits_per_s),
        "load_pct": load,
        "txerr": link.txerr if link else None,
        "rxerr": link.rxerr if link else None,
        "xstats": link.xstats if link else None,
        "rx_overruns": stats.get("rx_over_errors"),
        "rx_dropped": stats.get("rx_dropped"),
    }


class BusHealthMonitor:
    """The BusHealth of every bus and the one timer that closes their load windows."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.buses: dict[SocketCanEndpoint, BusHealth] = {}
        self._timer: TimerHandle | None = None

    def add(self, bus: SocketCanEndpoint, watch: BusWatch | None = None) -> BusHealth:
        health = self.buses[bus] = BusHealth(bus, watch, self.reactor.time())
        if self._timer is None:
            self._timer = self.reactor.call_every(LOAD_WINDOW_S, self._tick)
        return health

    def _tick(self) -> None:
        now = self.reactor.time()
        for health in self.buses.values():
            health.tick(now)

    def remove(self, bus: SocketCanEndpoint) -> None:
        """Forget `bus` (closed by a reload); no error if it was not tracked."""
        self.buses.pop(bus, None)

    def snapshot(self, bus: SocketCanEndpoint) -> dict | None:
        health = self.buses.get(bus)
        return health.snapshot() if health is not None else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.buses.clear()


def measure_bits(names: list[str], seconds: float, clock=None) -> dict[str, WireBits]:
    """Count the bits of every frame on each named link for `seconds` (blocking; `canbridge link list
    --load`): one CAN_RAW socket per link, CAN FD frames included, its loopback on so frames other local
    programs send count too (a socket sees every frame on the bus but its own). Raises OSError naming
    a link that cannot be opened."""
    clock = clock or time.monotonic
    socks, wires = {}, {name: WireBits() for name in names}
    try:
        for name in names:
            try:
                socks[name] = open_can_raw(name, fd=link_mtu(name) == sc.CANFD_MTU, timestamps=False)
            except OSError as exc:
                raise OSError(exc.errno, f"{name}: cannot count its frames: {exc.strerror}") from None
        by_fd = {s.fileno(): (s, wires[n]) for n, s in socks.items()}
        end = clock() + seconds
        while (left := end - clock()) > 0:
            for fd in select.select(list(by_fd), [], [], left)[0]:
                sock, wire = by_fd[fd]
                for _ in range(MEASURE_READ_MAX):
                    try:
                        wire.add((sock.recv(sc.CANFD_MTU),))
                    except (BlockingIOError, InterruptedError):
                        break
    finally:
        for sock in socks.values():
            sock.close()
    return wires




def link_health(name: str, wire: WireBits | None = None, seconds: float = 0.0) -> dict:
    """A link's health for `canbridge link list` (no bridge running): health_of() the link now, with the
    bits of `wire` counted over `seconds` (measure_bits) when given. OSError from the netlink query."""
    bits = data = None
    if wire is not None and seconds > 0:
        bits, data = wire.bits / seconds, wire.data_bits / seconds
    return health_of(linkstate.health(name), bits, data)


class HealthReport:
    """The health of a bridge's buses for a status message (the MQTT status topic): per bus its state and
    health_of(), the bits per second over the time since the previous report (the first report: since
    this object was made). Buses come and go with reloads: `buses` is asked at every report."""

    def __init__(self, buses, now: float) -> None:
        self.buses = buses  # callable() -> the SocketCanEndpoints now
        self._last: dict[SocketCanEndpoint, tuple[float, int, int]] = {}
        self._started = now

    def report(self, now: float) -> dict[str, dict]:
        """{interface name: {"state": bus_state, **health}} (JSON-ready)."""
        out, last = {}, {}
        for bus in self.buses():
            then, bits0, data0 = self._last.get(bus, (self._started, 0, 0))
            bits, data = bus.wire.bits, bus.wire.data_bits
            last[bus] = (now, bits, data)
            seconds = now - then
            try:
                link = linkstate.health(bus.name)
            except OSError:
                bus.counters.errors["health_query_failed"] += 1
                link = None
            rate = (bits - bits0) / seconds if seconds > 0 else None
            data_rate = (data - data0) / seconds if seconds > 0 else None
            out[bus.name] = {"state": bus.counters.gauges.get("bus_state"), **health_of(link, rate, data_rate)}
        self._last = last
        return out
