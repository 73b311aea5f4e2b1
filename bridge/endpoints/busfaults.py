"""Bus faults: link down/up, interface deleted and re-created, BUS-OFF and restart, tracked per bus so
the bridge survives them, reports them and resumes on its own (docs/cli.md "Bus faults").

Per SocketCanEndpoint, a BusWatch keeps these in the endpoint's counters:
- gauge `link_state`: "up", "down", "absent" (from rtnetlink link events, bridge/endpoints/linkwatch.py);
- gauge `bus_state`: "ERROR-ACTIVE", "ERROR-WARNING", "ERROR-PASSIVE", "BUS-OFF" (and "STOPPED" on a
  controller that is down): from IFLA_CAN_STATE on controllers and from error frames (CAN_ERR_CRTL,
  CAN_ERR_BUSOFF, CAN_ERR_RESTARTED), read on a monitor socket of its own, so the forwarding socket's
  filters and its hot path stay as the user asked (error frames are forwarded only with `error_frames`);
- gauges `link_changes`, `bus_state_changes`, `reopens`: transitions seen, sockets re-opened;
- drops `link_down`, `bus_off`: frames for the bus dropped while it cannot send (the endpoint's TX
  queue is emptied into the same counters), instead of queueing into a bus that will not take them;
- error `controller_rx_overrun`: RX FIFO overruns the controller reported (CAN_ERR_CRTL_RX_OVERFLOW: frames
  lost in the controller, before the kernel, when they come faster than the driver reads them; the
  driver's rx_over_errors counts the same events). Not a network loss: nothing was sent for them.
When the interface comes back under a new ifindex (a USB adapter replugged) the endpoint and the
monitor re-open their sockets; a link that goes down and up keeps its sockets (they stay bound).
"""

from __future__ import annotations

import logging
import socket

from bridge.codec import canerr
from bridge.codec import socketcan as sc
from bridge.endpoints.linkwatch import ABSENT, UP, LinkEvent, LinkWatch
from bridge.endpoints.socketcan import SocketCanEndpoint
from bridge.hw.cansock import CAN_RAW_ERR_FILTER, CAN_RAW_FILTER, SOL_CAN_RAW, open_can_raw
from bridge.core.reactor import Reactor

log = logging.getLogger(__name__)

ERR_READ_MAX = 64  # error frames per readable event: bounds the time an error storm takes from the loop


class BusWatch:
    """Fault tracking for one bus endpoint (see the module docstring). Raises OSError if the monitor
    socket cannot be opened."""

    def __init__(self, reactor: Reactor, links: LinkWatch, bus: SocketCanEndpoint) -> None:
        self.reactor = reactor
        self.links = links
        self.bus = bus
        self.gauges = bus.counters.gauges
        self.monitor = self._open_monitor()
        self.err_counters: tuple[int, int] | None = None  # (txerr, rxerr) of the last error frame with them
        reactor.add_reader(self.monitor.fileno(), self._on_error_frames)
        now = links.watch(bus.name, self._on_link)
        self.index = now.index
        self.gauges.update(link_state=now.state, bus_state=now.can_state or canerr.ERROR_ACTIVE,
                           link_changes=0, bus_state_changes=0, reopens=0)
        self._gate()

    def _open_monitor(self) -> socket.socket:
        def only_state_errors(sock: socket.socket) -> None:
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, b"")  # no data frames
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, canerr.STATE_CLASSES)

        return open_can_raw(self.bus.name, fd=False, timestamps=False, setup=only_state_errors)

    # --- link events -------------------------------------------------------------------------
    def _on_link(self, ev: LinkEvent) -> None:
        was = self.gauges["link_state"]
        if ev.state != ABSENT and ev.index != self.index:
            self._reopen(ev)
        if ev.state != was:
            self.gauges["link_changes"] += 1
            log.warning("bus %s: link %s -> %s", self.bus.name, was, ev.state)
            self.gauges["link_state"] = ev.state
        if ev.can_state:
            self._set_bus_state(ev.can_state, "netlink")
        elif ev.state == UP and was != UP:  # vcan: no controller state; coming up is a fresh start
            self._set_bus_state(canerr.ERROR_ACTIVE, "link up")
        self._gate()

    def _reopen(self, ev: LinkEvent) -> None:
        try:
            self.bus.reopen()
            monitor = self._open_monitor()
        except OSError as exc:  # gone again already: the next event retries
            self.bus.counters.errors["reopen_failed"] += 1
            log.error("bus %s: cannot re-open on ifindex %d: %s", self.bus.name, ev.index, exc)
            return
        self.reactor.forget(self.monitor.fileno())
        self.monitor.close()
        self.monitor = monitor
        self.reactor.add_reader(monitor.fileno(), self._on_error_frames)
        self.index = ev.index
        self.gauges["reopens"] += 1
        log.warning("bus %s: interface is back (ifindex %d): sockets re-opened", self.bus.name, ev.index)

    # --- error frames ------------------------------------------------------------------------
    def _on_error_frames(self) -> None:
        for _ in range(ERR_READ_MAX):
            try:
                raw = self.monitor.recv(16)
            except BlockingIOError:
                break
            except OSError:  # ENETDOWN/ENODEV: the link event says the same, and says it better
                break
            if _rx_overrun(raw):
                self.bus.counters.errors["controller_rx_overrun"] += 1
            state = canerr.bus_state(raw)
            self.err_counters = canerr.error_counters(raw) or self.err_counters
            if state:
                self._set_bus_state(state, f"error frame {sc.format_can_id(sc.can_id_of(raw))}")
        self._gate()

    def _set_bus_state(self, state: str, source: str) -> None:
        was = self.gauges["bus_state"]
        if state != was:
            self.gauges["bus_state_changes"] += 1
            self.gauges["bus_state"] = state
            log.warning("bus %s: %s -> %s (%s)", self.bus.name, was, state, source)

    def _gate(self) -> None:
        if self.gauges["link_state"] != UP:
            reason = "link_down"
        elif self.gauges["bus_state"] == canerr.BUS_OFF:
            reason = "bus_off"
        else:
            reason = None
        if reason != self.bus.tx_blocked:
            self.bus.block_tx(reason)

    def close(self) -> None:
        """Stop watching: no link event or error frame reaches this bus (nor reopens it) any more."""
        self.links.unwatch(self.bus.name, self._on_link)
        self.reactor.forget(self.monitor.fileno())
        self.monitor.close()


def _rx_overrun(raw: bytes) -> bool:
    """An error frame of class CAN_ERR_CRTL whose status byte (data[1]) says the RX FIFO overflowed."""
    return bool(sc.can_id_of(raw) & canerr.CAN_ERR_CRTL and len(raw) > 9 and raw[9] & canerr.CAN_ERR_CRTL_RX_OVERFLOW)


class BusFaults:
    """The BusWatch of every bus, sharing one LinkWatch (opened with the first bus)."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.links: LinkWatch | None = None
        self.watches: list[BusWatch] = []

    def add(self, bus: SocketCanEndpoint) -> BusWatch:
        if self.links is None:
            self.links = LinkWatch(self.reactor)
        watch = BusWatch(self.reactor, self.links, bus)
        self.watches.append(watch)
        return watch

    def remove(self, bus: SocketCanEndpoint) -> None:
        """Stop tracking `bus` (a bus closed by a reload): its link watch and monitor socket are closed, so
        a later link event cannot reopen the closed endpoint. No error if it was not tracked."""
        for watch in [w for w in self.watches if w.bus is bus]:
            watch.close()
            self.watches.remove(watch)

    def close(self) -> None:
        for watch in self.watches:
            watch.close()
        self.watches.clear()
        if self.links is not None:
            self.links.close()
            self.links = None
