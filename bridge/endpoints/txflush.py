"""A stuck bus's frames in the kernel, flushed once all of them are stale (docs/cli.md "Bus faults").

The bridge drops what waits in its own TX queue longer than max_age (`stale`). A controller that cannot
send (no ACK: alone on the bus, every other node off, no terminator) also holds what the bridge already
handed over: the frame in its TX buffer and the interface's queue (txqueuelen, 10 by default). Those
leave when the bus comes back, however old (cannelloni #70, #88).

So, on a CAN controller (vcan holds no frame), a watch armed when frames are handed over counts ours the
kernel still holds: handed over minus done with, from the interface's tx_packets + tx_dropped (rtnetlink
IFLA_STATS64), both read before the first write after the kernel held none (exact while the bus completes
nothing). When it holds some, none completed for max_age, the kernel refused a frame since the base
(ENOBUFS: its queue filled up) and the newest frame handed over is older than max_age (by the
time the bridge received it), everything it holds is stale: the link is taken down and up, which empties
the queue and the TX buffer (as cannelloni does on bus-off). Counted: the gauge `tx_flushes`, and
`errors.tx_flushed`, the frames it held (counted in tx_frames, never sent). A stuck bus given fewer
frames than its queue holds (no ENOBUFS) is not flushed. The check costs one RTM_GETLINK per max_age
while frames are in the kernel, nothing on an idle bus or on vcan.

Taking a link down needs CAP_NET_ADMIN. `tx_flush` per interface: "auto" (default) flushes when the
process has it, and otherwise logs once per stuck episode that the kernel's frames will leave stale;
"on" raises ConfigError at start without it; "off" never flushes.
"""

from __future__ import annotations

import logging
from time import monotonic

from bridge.core.reactor import Reactor, TimerHandle
from bridge.core.stats import Counters
from bridge.errors import ConfigError
from bridge.hw import linkstate

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
RESTART_HOLD_S = 2.0  # our own down/up: its link events (read later by the link watch) must not drop the queue


def _link_kind(ifname: str) -> str:
    """IFLA_INFO_KIND: "can" for a controller, "vcan", "vxcan"; "" when there is no such link."""
    health = linkstate.health(ifname)
    return health.kind if health is not None else ""


def _tx_packets(ifname: str) -> int | None:
    """Frames the interface is done with: sent (tx_packets) or dropped by the driver (tx_dropped)."""
    health = linkstate.health(ifname)
    return health.stats["tx_packets"] + health.stats["tx_dropped"] if health is not None and health.stats else None


def _is_controller(ifname: str, kind) -> bool:
    try:
        return kind(ifname) == "can"
    except OSError:
        return False


class KernelQueueWatch:
    """The watch of one bus (see the module docstring). ifname; max_age: seconds (0: no watch); counters:
    the bus endpoint's; mode: one of MODES; on_restart(): called after a flush (the endpoint clears the
    ENETDOWN the link's going down left pending on its socket). restart(ifname), tx_packets(ifname) and
    kind(ifname) are the link operations (rtnetlink), replaceable in host tests. ConfigError for mode "on" without
    CAP_NET_ADMIN or a mode not in MODES."""

    def __init__(self, reactor: Reactor, ifname: str, max_age: float, counters: Counters, mode: str = "auto", *,
                 capable=linkstate.has_cap_net_admin, restart=None, tx_packets=_tx_packets, kind=_link_kind,
                 on_restart=lambda: None) -> None:
        if mode not in MODES:
            raise ConfigError(f"bus {ifname}: tx_flush must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "on" and not capable():
            raise ConfigError(f"bus {ifname}: tx_flush=on needs CAP_NET_ADMIN (to take the link down and up): run "
                              "as root or add it to the unit (AmbientCapabilities=CAP_NET_ADMIN), or use tx_flush=auto")
        self.reactor, self.ifname, self.max_age, self.counters = reactor, ifname, max_age, counters
        self.can_flush = mode == "on" or (mode == "auto" and capable())
        self.active = bool(max_age) and mode != "off" and _is_controller(ifname, kind)
        self._restart = restart or self._restart_link
        self._on_restart = on_restart
        self._tx_packets = tx_packets
        self._timer: TimerHandle | None = None
        self._base: tuple[int, int] | None = None  # (counters.tx_frames, tx_packets) when the kernel held none
        self._last_packets: int | None = None
        self._last_change = 0.0  # monotonic time a check last saw tx_packets change
        self._refused_at = -1.0  # monotonic time of the last ENOBUFS
        self._base_at = 0.0  # monotonic time of the base
        self.newest = 0.0  # monotonic time the newest frame handed over was received (queued) by the bridge
        self.hold_until = 0.0  # link events before this are our own restart
        self._warned = False
        counters.gauges["tx_flushes"] = 0

    @property
    def needs_base(self) -> bool:
        """The endpoint calls rebase() before its next write: the kernel holds none of ours now, so the
        count starts exact (read after the write, completions of that write would be missed)."""
        return self.active and self._base is None

    def rebase(self) -> None:
        self._rebase(self.counters.tx_frames)

    def handed_over(self, received_at: float, n: int) -> None:
        """n frames went to the kernel just now (counted in counters.tx_frames already), the newest of them
        queued (received) by the bridge at `received_at` (monotonic s)."""
        if received_at > self.newest:
            self.newest = received_at
        if self._timer is None and self.active:
            if self._base is None:
                self._rebase(self.counters.tx_frames - n)
            self._arm(self.newest + self.max_age)

    def refused(self) -> None:
        """The kernel refused a frame (ENOBUFS): its queue is full."""
        self._refused_at = monotonic()

    def _rebase(self, given: int) -> None:
        """The kernel holds none of our frames now: count from here (our hand-overs, its TX completions)."""
        try:
            packets = self._tx_packets(self.ifname)
        except OSError:
            packets = None
        self._base = None if packets is None else (given, packets)
        self._base_at = monotonic()
        self._last_packets, self._last_change = packets, monotonic()

    def _arm(self, due: float) -> None:
        self._timer = self.reactor.call_later(max(0.0, due - monotonic()) + 0.01, self._check)

    def _check(self) -> None:
        """Ours held = handed over - completed since the base (exact while the bus completes nothing, an
        underestimate while others' frames complete, when it moves anyway). Flush when some are held, none
        completed for max_age, the kernel refused a frame since the base (its queue filled up) and the newest
        is older than max_age: all held are stale."""
        self._timer = None
        try:
            packets = self._tx_packets(self.ifname)
        except OSError:
            packets = None
        if packets is None or self._base is None:
            self._base = None  # the link is gone or unreadable: the link watch deals with it
            return
        now = monotonic()
        given, completed = self._base
        held = (self.counters.tx_frames - given) - (packets - completed)
        if held <= 0:  # all ours went: nothing to watch until the next hand-over
            self._base = None
            self._warned = False
            return
        if packets != self._last_packets:
            self._last_packets, self._last_change = packets, now
            self._warned = False
        due = max(self.newest, self._last_change) + self.max_age
        if now < due:
            self._arm(due)
            return
        if self._refused_at < self._base_at:  # no ENOBUFS since the kernel held none: a few frames, not a full queue
            self._arm(now + self.max_age)
            return
        self._flush(held)

    def _flush(self, held: int) -> None:
        if not self.can_flush:
            if not self._warned:
                self._warned = True
                log.warning("bus %s: it has sent nothing for %.1f s; the %d+ frames the kernel holds will leave "
                            "when it comes back, stale (flushing them needs CAP_NET_ADMIN: docs/cli.md, tx_flush)",
                            self.ifname, self.max_age, held)
            self._arm(monotonic() + self.max_age)
            return
        self.hold_until = monotonic() + RESTART_HOLD_S
        try:
            self._restart(self.ifname)
        except OSError as exc:
            self.counters.errors["tx_flush_failed"] += 1
            log.error("bus %s: cannot flush the stuck TX queue (link down and up): %s", self.ifname, exc)
            return
        self._on_restart()
        self._rebase(self.counters.tx_frames)  # the kernel's queue is empty now
        self.counters.gauges["tx_flushes"] += 1
        self.counters.errors["tx_flushed"] += held
        log.warning("bus %s: sent nothing for %.1f s: link taken down and up, %d+ stale frames flushed from the "
                    "kernel's queue", self.ifname, self.max_age, held)

    @staticmethod
    def _restart_link(ifname: str) -> None:
        linkstate.set_up(ifname, False)
        linkstate.set_up(ifname, True)

    def holding(self) -> bool:
        """Within our own restart: a link-down event is ours, the queue is kept."""
        return monotonic() < self.hold_until

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
