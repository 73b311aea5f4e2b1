"""`canbridge top`: a live table of the CAN IDs on a bus, like can-utils cansniffer.

    canbridge top SOURCE... [--once] [--duration S] [--window S]
    SOURCE: IFACE[,FILTERS], tcp://HOST[:PORT][/IFACE][,FILTERS] or mqtt[s]://BROKER/PREFIX/GATEWAY/IFACE,
            as for `canbridge dump` (an MQTT source's rows are named GATEWAY/IFACE)

One row per (interface, CAN ID), sorted by interface then ID: count, rate (frames/s in the last
`--window` seconds), period mean and jitter of the inter-arrival times, len, and the last data
with the bytes that changed since the previous frame of that ID highlighted. Times are kernel RX
timestamps (SO_TIMESTAMPNS, or the gateway's for a remote bridge), so the figures show the bus
and not this program's scheduling. Jitter is the population standard deviation of the last
PERIOD_SAMPLES inter-arrival times. Refreshed REFRESH_HZ times a second; `q` or Ctrl-C quits.
`--once` collects for `--duration` seconds (default 1) and prints one table; `--duration` alone
runs the live view for that long.

The header has a line per interface with its bus health: the bits of the frames seen in the last
whole second (canbusload's worst-case estimate, bridge/codec/busload.py) and, for a local interface
of a controller, its bus state, TEC/REC, the load in percent of its bitrate, RX FIFO overruns and
bus-off count (bridge/endpoints/bushealth.py; read once a second over rtnetlink). A remote source's
interfaces are on another host: bits per second only.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from bridge.codec import socketcan as sc
from bridge.codec.busload import raw_bits
from bridge.endpoints.bushealth import health_of
from bridge.hw import linkstate
from bridge.tools.live.local import LocalSource
from bridge.tools.live.opener import open_sources
from bridge.tools.live.stats_client import fmt_bus
from bridge.tools.live.source import Rx, SourceClosed, waiting

REFRESH_HZ = 4
PERIOD_SAMPLES = 64  # inter-arrival times kept per ID for mean and jitter: ~0.6 s of a 100 Hz ID
RATE_WINDOW_S = 2.0  # default sliding window of the rate
RATE_SAMPLES_MAX = 20_000  # timestamps kept per ID for the rate: 2 s of a saturated 1 Mbit/s bus
MAX_IDS = 8192  # rows kept; beyond this new IDs are counted in `ids_dropped`, not shown
BITS_SECONDS = 2  # whole seconds of bus bits kept per interface before the current one (the header shows the last)
HEALTH_REFRESH_S = 1.0  # how often the header re-reads a local interface's health over rtnetlink
_NS = 1_000_000_000


@dataclass(slots=True)
class IdStats:
    """Statistics of one CAN ID. data: last payload; changed: indices of the bytes that differ
    from the previous frame's (a byte that did not exist before counts as changed; none on the
    first frame); flags: "FD", "BRS", "ESI", "RTR", "ERR" as applicable to the last frame."""

    can_id: int  # canid_t with EFF/ERR flags, RTR cleared (a request shares its data frame's row)
    count: int = 0
    length: int = 0
    data: bytes = b""
    changed: frozenset = frozenset()
    flags: tuple = ()
    first_ns: int = 0
    last_ns: int = 0
    intervals: deque = field(default_factory=lambda: deque(maxlen=PERIOD_SAMPLES))
    recent: deque = field(default_factory=lambda: deque(maxlen=RATE_SAMPLES_MAX))

    @property
    def period_ms(self) -> float | None:
        """Mean inter-arrival time in ms over the last PERIOD_SAMPLES intervals (None before 2 frames)."""
        return statistics.fmean(self.intervals) / 1e6 if self.intervals else None

    @property
    def jitter_ms(self) -> float | None:
        """Population standard deviation of those intervals in ms (None before 3 frames)."""
        return statistics.pstdev(self.intervals) / 1e6 if len(self.intervals) >= 2 else None

    def rate(self, now_ns: int, window_s: float) -> float:
        """Frames per second in the last window_s seconds before now_ns; while the ID is younger
        than the window, over its lifetime (so a new 100 Hz ID reads 100, not 100 * age / window)."""
        horizon = now_ns - int(window_s * _NS)
        recent = self.recent
        while recent and recent[0] <= horizon:
            recent.popleft()
        span = min(window_s, (now_ns - self.first_ns) / _NS)
        return len(recent) / span if span > 0 and len(recent) > 1 else len(recent) / window_s


class TopStats:
    """Per-ID statistics of a stream of frames; pure (times are the frames' own timestamps and
    the `now_ns` passed to rows()). add(iface, raw, ts_ns) per frame; rows(now_ns) for display."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be > 0 s, got {window_s}")
        self.window_s = window_s
        self.ids: dict[tuple[str, int], IdStats] = {}
        self.frames = 0
        self.ids_dropped = 0  # frames of new IDs not tracked because MAX_IDS rows exist
        self.bus_bits: dict[str, dict[int, list[int]]] = {}  # iface -> {second: [bits, data-phase bits]}
        self.local_ifaces: set[str] = set()  # interfaces of this host (a local source's), for their health

    def add(self, iface: str, raw: bytes, ts_ns: int) -> None:
        self._add_bits(iface, raw, ts_ns)
        can_id, length, fd_flags, _len8, data = sc.unpack(raw)
        key = (iface, can_id & ~sc.CAN_RTR_FLAG)
        st = self.ids.get(key)
        if st is None:
            if len(self.ids) >= MAX_IDS:
                self.ids_dropped += 1
                return
            st = self.ids[key] = IdStats(key[1], first_ns=ts_ns)
        self.frames += 1
        if st.count:
            st.intervals.append(max(0, ts_ns - st.last_ns))
            old = st.data
            st.changed = frozenset(i for i, b in enumerate(data) if i >= len(old) or old[i] != b)
        st.count += 1
        st.last_ns = ts_ns
        st.recent.append(ts_ns)
        st.length = length
        st.data = data
        st.flags = _flags(can_id, fd_flags, len(raw) == sc.CANFD_MTU)

    def _add_bits(self, iface: str, raw: bytes, ts_ns: int) -> None:
        seconds = self.bus_bits.get(iface) or self.bus_bits.setdefault(iface, {})
        second = ts_ns // _NS
        cell = seconds.get(second)
        if cell is None:
            for old in [k for k in seconds if k < second - BITS_SECONDS]:
                del seconds[old]
            cell = seconds[second] = [0, 0]
        bits, data = raw_bits(raw)
        cell[0] += bits
        cell[1] += data

    def bits_last_second(self, iface: str, now_ns: int) -> tuple[int, int]:
        """(bits, data-phase bits) of the frames of `iface` stamped in the last whole second before now_ns."""
        return tuple(self.bus_bits.get(iface, {}).get(now_ns // _NS - 1, (0, 0)))

    def rows(self, now_ns: int) -> list[tuple[str, IdStats, float]]:
        """[(iface, stats, rate)] sorted by interface, then SFF before EFF, then ID."""
        keys = sorted(self.ids, key=lambda k: (k[0], bool(k[1] & (sc.CAN_EFF_FLAG | sc.CAN_ERR_FLAG)), k[1]))
        return [(k[0], self.ids[k], self.ids[k].rate(now_ns, self.window_s)) for k in keys]


def _flags(can_id: int, fd_flags: int, is_fd: bool) -> tuple:
    out = []
    if is_fd:
        out.append("FD")
        if fd_flags & sc.CANFD_BRS:
            out.append("BRS")
        if fd_flags & sc.CANFD_ESI:
            out.append("ESI")
    if can_id & sc.CAN_RTR_FLAG:
        out.append("RTR")
    if can_id & sc.CAN_ERR_FLAG:
        out.append("ERR")
    return tuple(out)


# -- rendering ---------------------------------------------------------------------------------

def render(stats: TopStats, now_ns: int, title: str = ""):
    """-> rich Table of the current rows; changed bytes in bold reverse."""
    from rich.table import Table
    from rich.text import Text

    multi = len({iface for iface, _ in stats.ids}) > 1
    table = Table(title=title or None, title_justify="left", box=None, header_style="bold", pad_edge=False)
    if multi:
        table.add_column("iface")
    for name in ("CAN ID", "count", "rate/s", "period ms", "jitter ms", "len"):
        table.add_column(name, justify="right")
    table.add_column("data")
    table.add_column("flags")
    for iface, st, rate in stats.rows(now_ns):
        data = Text()
        for i, b in enumerate(st.data):
            if i:
                data.append(" ")
            data.append(f"{b:02X}", style="bold reverse" if i in st.changed else "")
        cells = [sc.format_can_id(st.can_id), str(st.count), f"{rate:.1f}", _ms(st.period_ms), _ms(st.jitter_ms),
                 str(st.length), data, " ".join(st.flags)]
        table.add_row(*([iface] if multi else []), *cells)
    return table


def bus_header(stats: TopStats, now_ns: int, links: dict) -> str:
    """One line per interface seen: `bus can0: ERROR-ACTIVE  tec 0 rec 0  load 1.2 % of 500 kbit/s  rx_overruns 0
    bus_off 0`; links: {iface: bridge.hw.linkstate.LinkHealth or None} of the local interfaces."""
    lines = []
    for iface in sorted(stats.bus_bits):
        bits, data = stats.bits_last_second(iface, now_ns)
        link = links.get(iface)
        health = health_of(link, bits, data)
        line = fmt_bus({"bus_state": link.can_state if link and link.can_state else "", "health": health}).strip()
        if health["xstats"]:
            line += f"  rx_overruns {health['rx_overruns']}  bus_off {health['xstats']['bus_off']}"
        lines.append(f"bus {iface}: {line}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _caption(stats: TopStats) -> str:
    text = f"{len(stats.ids)} IDs, {stats.frames} frames"
    if stats.ids_dropped:
        text += f", {stats.ids_dropped} frames of untracked IDs (limit {MAX_IDS})"
    return text


class _Stop(Exception):
    pass


def _on_signal(_signum, _frame) -> None:
    raise _Stop


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge top", description="Live per-CAN-ID table (like cansniffer).")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="IFACE[,FILTERS] (any = all CAN interfaces), tcp://HOST[:PORT][/IFACE][,FILTERS] "
                        "or mqtt[s]://BROKER[:PORT]/PREFIX/GATEWAY/IFACE[,FILTERS]")
    p.add_argument("--once", action="store_true", help="collect for --duration seconds (default 1), print one table")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--window", type=float, default=RATE_WINDOW_S, help="rate window in seconds (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.window <= 0 or (args.duration is not None and args.duration < 0):
        print("canbridge top: --window must be > 0 and --duration >= 0", file=sys.stderr)
        return 2
    duration = args.duration if args.duration is not None else (1.0 if args.once else None)
    sources, status = open_sources(args.sources, "top")
    if status:
        return status
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(sources, TopStats(args.window), duration, args.once, " ".join(args.sources))
    except _Stop:
        return 0
    except SourceClosed as exc:
        print(f"canbridge top: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for s in sources:
            s.close()


def _run(sources, stats: TopStats, duration: float | None, once: bool, title: str) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if not console.is_terminal:  # a script reads it: don't wrap the rows at 80 columns
        console.width = max(console.width, 160)
    end = None if duration is None else time.monotonic() + duration
    keys = None if once else _Keys.open()
    links = _LocalLinks()
    try:
        if once:
            _collect(sources, stats, end, None)
            console.print(_view(stats, title, links))
            console.print(_caption(stats))
            return 0
        with Live(_view(stats, title, links), console=console, auto_refresh=False) as live:
            def refresh():
                live.update(_view(stats, f"{title}  ({_caption(stats)}; q quits)", links), refresh=True)
            _collect(sources, stats, end, keys, refresh)
        return 0
    finally:
        if keys:
            keys.close()


def _view(stats: TopStats, title: str, links: _LocalLinks):
    """The title and the bus header (lines cropped, never wrapped into the table's width), then the table."""
    from rich.console import Group
    from rich.text import Text

    now_ns = time.time_ns()
    head = "\n".join(filter(None, (title, bus_header(stats, now_ns, links.get(stats)))))
    return Group(Text(head, no_wrap=True, overflow="crop"), render(stats, now_ns))


def _collect(sources, stats: TopStats, end: float | None, keys, refresh=None) -> None:
    """Read frames into stats until `end` (monotonic) or `q`; refresh() every 1/REFRESH_HZ s."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in sources}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    if keys:
        poller.register(keys.fd, select.POLLIN)
    next_refresh = time.monotonic()
    while True:
        now = time.monotonic()
        if refresh and now >= next_refresh:
            refresh()
            next_refresh = now + 1 / REFRESH_HZ
        if end is not None and now >= end:
            return
        deadlines = [t for t in (next_refresh if refresh else None, end) if t is not None]
        timeout_ms = max(0.0, (min(deadlines) - now) * 1000) if deadlines else None
        for fd, _ in waiting(sources) or poller.poll(timeout_ms):
            if keys and fd == keys.fd:
                if keys.quit_pressed():
                    return
                continue
            source = by_fd[fd]
            for rx in source.read():
                if isinstance(rx, Rx):  # Drops notices are not shown here
                    stats.add(rx.iface, rx.raw, rx.ts_ns)
                    if isinstance(source, LocalSource):
                        stats.local_ifaces.add(rx.iface)


class _LocalLinks:
    """The health of the local interfaces top has seen frames on, re-read at most every HEALTH_REFRESH_S."""

    def __init__(self) -> None:
        self.links: dict = {}
        self.when = -HEALTH_REFRESH_S

    def get(self, stats: TopStats) -> dict:
        now = time.monotonic()
        if now - self.when >= HEALTH_REFRESH_S or set(self.links) != stats.local_ifaces:
            self.when = now
            self.links = {}
            for iface in stats.local_ifaces:
                try:
                    self.links[iface] = linkstate.health(iface)
                except OSError:  # the header then shows bits only
                    self.links[iface] = None
        return self.links


class _Keys:
    """stdin in cbreak mode while the live view runs, so that `q` quits without Enter."""

    def __init__(self, fd: int, saved) -> None:
        self.fd = fd
        self._saved = saved

    @classmethod
    def open(cls):
        if not sys.stdin.isatty():
            return None
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        return cls(fd, saved)

    def quit_pressed(self) -> bool:
        return "q" in os.read(self.fd, 64).decode(errors="replace").lower()

    def close(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


if __name__ == "__main__":
    sys.exit(main())
