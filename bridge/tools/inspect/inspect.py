"""`canbridge inspect FILE.pcapng...`: per-hop latency, loss and duplicates from a capture of both
sides of a bridge (`canbridge capture -i vcan0@gw -i veth0@gw -i vcan0@remote -w rig.pcapng`).

Each CAN frame on the source bus is paired with the bridge-protocol packet that carried it (the
first wire interface in the capture, or --wire) and with the frame on the destination bus. Frames
are identified by their content (can_id, len, FD flags, data), paired first-in first-out per
content, so a periodic frame that repeats the same data is paired with its own next occurrence.
A source frame with no partner within --window seconds is lost; a destination frame with no
source frame is a duplicate (or a frame that came from elsewhere). Latencies are differences of
capture timestamps, meaningful when one kernel stamped both sides (one capture, or one host).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict, deque
from dataclasses import dataclass, field

from bridge.codec import socketcan as sc
from bridge.tools.logs.probe import percentile

DEFAULT_WINDOW_S = 2.0  # a frame not delivered within this is lost (a bridge drops older frames too)
HOPS = ("bus_to_bus", "bus_to_wire", "wire_to_bus")


def frame_key(raw: bytes) -> tuple:
    """What identifies a frame across hops: (can_id, len, FD, BRS|ESI, data[:len]); padding,
    len8_dlc and reserved bytes are not carried by every protocol."""
    can_id, length, flags, _, data = sc.unpack(raw)
    fd = len(raw) == sc.CANFD_MTU
    return can_id, length, fd, flags & 0x03 if fd else 0, bytes(data[:length])


@dataclass
class Pairing:
    """Result of pairing one direction. latencies[hop]: list of (source time ns, latency ns)."""

    source: str
    dest: str
    wire: str | None
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    on_wire: int = 0
    latencies: dict = field(default_factory=lambda: {h: [] for h in HOPS})
    per_id: dict = field(default_factory=lambda: defaultdict(lambda: {"sent": 0, "lost": 0, "dup": 0, "lat": []}))


def _match(src_times: dict, later: list, window_ns: int):
    """FIFO pairing of `later` (time_ns, key) against per-key deques of source times.
    Yields (key, source time or None, later time); sources older than the window are skipped
    (and stay unpaired)."""
    queues = {k: deque(v) for k, v in src_times.items()}
    for t, key in later:
        q = queues.get(key)
        while q and q[0] < t - window_ns:
            q.popleft()
        if q and q[0] <= t:
            yield key, q.popleft(), t
        else:
            yield key, None, t


def pair(bus: dict, wire: list, source: str, dest: str, wire_name: str | None, window_s: float) -> Pairing:
    """bus: iface -> [(time_ns, raw)]; wire: [(time_ns, raw)] of the chosen wire interface."""
    window = int(window_s * 1e9)
    result = Pairing(source, dest, wire_name)
    src_times: dict = defaultdict(list)
    for t, raw in bus[source]:
        key = frame_key(raw)
        src_times[key].append(t)
        result.per_id[key[0]]["sent"] += 1
    result.sent = len(bus[source])
    wire_at: dict = {}
    for key, s, t in _match(src_times, [(t, frame_key(raw)) for t, raw in wire], window):
        if s is not None:
            wire_at[(key, s)] = t
            result.on_wire += 1
            result.latencies["bus_to_wire"].append((s, t - s))
    delivered = set()
    for key, s, t in _match(src_times, [(t, frame_key(raw)) for t, raw in bus[dest]], window):
        stats = result.per_id[key[0]]
        if s is None:
            result.duplicates += 1
            stats["dup"] += 1
            continue
        delivered.add((key, s))
        result.latencies["bus_to_bus"].append((s, t - s))
        stats["lat"].append(t - s)
        w = wire_at.get((key, s))
        if w is not None:
            result.latencies["wire_to_bus"].append((s, t - w))
    result.delivered = len(delivered)
    for key, times in src_times.items():
        lost = sum(1 for s in times if (key, s) not in delivered)
        result.lost += lost
        result.per_id[key[0]]["lost"] += lost
    return result


def _summary(values_ns: list) -> dict:
    v = sorted(values_ns)
    ms = lambda x: None if x is None else round(x / 1e6, 3)  # noqa: E731
    return {"n": len(v), "p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99)),
            "max_ms": ms(v[-1] if v else None)}


def report_dict(p: Pairing) -> dict:
    return {
        "source": p.source, "dest": p.dest, "wire": p.wire,
        "sent": p.sent, "delivered": p.delivered, "lost": p.lost, "duplicates": p.duplicates, "on_wire": p.on_wire,
        "latency": {h: _summary([lat for _, lat in p.latencies[h]]) for h in HOPS},
        "per_id": {sc.format_can_id(i): {"sent": s["sent"], "lost": s["lost"], "duplicates": s["dup"],
                                          **_summary(s["lat"])} for i, s in sorted(p.per_id.items())},
    }


def load(paths: list[str], ports: dict) -> tuple[dict, dict, dict]:
    """(bus iface -> [(t, raw)], wire iface -> [(t, raw)], undecodable counts) from capture files."""
    from bridge.tools.inspect import dissect

    if any(ports.values()):
        dissect.bind_ports(**ports)
    bus: dict = defaultdict(list)
    wire: dict = defaultdict(list)
    stats: dict = {}
    for path in paths:
        can_frames, packets = dissect.split_capture(path)
        for f in [*can_frames, *dissect.bus_frames(packets)]:  # the latter: Linux cooked (SLL) CAN
            bus[f.iface or path].append((f.time_ns, f.raw))
        for f in dissect.wire_frames(packets, stats):
            wire[f.iface or path].append((f.time_ns, f.raw))
    for frames in (*bus.values(), *wire.values()):
        frames.sort(key=lambda x: x[0])
    return bus, wire, stats


def guess_direction(bus: dict) -> tuple[str, str]:
    """With exactly two bus interfaces: the source is the one where most frame contents appear
    first. Raises ValueError otherwise."""
    names = list(bus)
    if len(names) != 2:
        raise ValueError(f"need --source and --dest: the capture has {len(names)} CAN interfaces ({', '.join(names)})")
    first: list[dict] = []
    for name in names:
        seen: dict = {}
        for t, raw in bus[name]:
            seen.setdefault(frame_key(raw), t)
        first.append(seen)
    a_first = sum(1 for k, t in first[0].items() if k in first[1] and t <= first[1][k])
    b_first = sum(1 for k, t in first[1].items() if k in first[0] and t < first[0][k])
    return (names[0], names[1]) if a_first >= b_first else (names[1], names[0])


def print_report(rep: dict, stats: dict, per_id_rows: int, out=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, width=110)
    console.print(f"[bold]{rep['source']} -> {rep['wire'] or '(no wire capture)'} -> {rep['dest']}[/]: "
                  f"sent {rep['sent']}, delivered {rep['delivered']}, lost {rep['lost']}, "
                  f"duplicates {rep['duplicates']}, seen on the wire {rep['on_wire']}")
    hops = Table(title="latency per hop (ms)")
    for col in ("hop", "frames", "p50", "p99", "max"):
        hops.add_column(col, justify="left" if col == "hop" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for h in HOPS:
        s = rep["latency"][h]
        hops.add_row(h.replace("_to_", " -> "), str(s["n"]), fmt(s["p50_ms"]),
                     fmt(s["p99_ms"]), fmt(s["max_ms"]))
    console.print(hops)
    rows = sorted(rep["per_id"].items(), key=lambda kv: -(kv[1]["p99_ms"] or 0))
    table = Table(title=f"per CAN ID, bus -> bus (worst {min(per_id_rows, len(rows))} of {len(rows)} by p99)")
    for col in ("can_id", "sent", "lost", "dup", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "can_id" else "right")
    for can_id, s in rows[:per_id_rows]:
        table.add_row(can_id, str(s["sent"]), str(s["lost"]), str(s["duplicates"]), fmt(s["p50_ms"]),
                      fmt(s["p99_ms"]), fmt(s["max_ms"]))
    console.print(table)
    if stats:
        console.print("undecodable wire data: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))


def plot(p: Pairing, path: str) -> None:
    """PNG with a latency histogram (bus -> bus, log count) and latency over time (every hop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, series) = plt.subplots(2, 1, figsize=(9, 7))
    b2b = [lat / 1e6 for _, lat in p.latencies["bus_to_bus"]]
    hist.hist(b2b, bins=100, color="tab:blue")
    hist.set_yscale("log")
    hist.set_xlabel("latency bus -> bus (ms)")
    hist.set_ylabel("frames")
    hist.set_title(f"{p.source} -> {p.dest}: {p.delivered} delivered, {p.lost} lost")
    t0 = min((s for s, _ in p.latencies["bus_to_bus"]), default=0)
    for hop, color in zip(HOPS, ("tab:blue", "tab:orange", "tab:green")):
        pts = p.latencies[hop]
        series.scatter([(s - t0) / 1e9 for s, _ in pts], [lat / 1e6 for _, lat in pts], s=1, color=color,
                       label=hop.replace("_", " "))
    series.set_xlabel("time since first frame (s)")
    series.set_ylabel("latency (ms)")
    series.legend(markerscale=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge inspect", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  canbridge inspect rig.pcapng --plot latency.png")
    p.add_argument("files", nargs="+", metavar="FILE", help="pcapng/pcap files (one kernel's clock)")
    p.add_argument("--source", metavar="IFACE", help="source CAN interface name as captured (e.g. vcan0@gw)")
    p.add_argument("--dest", metavar="IFACE", help="destination CAN interface")
    p.add_argument("--wire", metavar="IFACE", help="network interface whose packets carry the frames")
    p.add_argument("--port", action="append", default=[], metavar="PROTO:PORT",
                   help="extra port to decode, e.g. native:29601, cannelloni:udp:20001 (repeatable)")
    p.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, metavar="S",
                   help=f"a frame not delivered within S seconds is lost (default {DEFAULT_WINDOW_S})")
    p.add_argument("--ids", type=int, default=15, metavar="N", help="rows in the per-ID table (worst p99 first)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' = stdout, no table)")
    p.add_argument("--plot", metavar="PNG", help="latency histogram and latency-over-time chart")
    return p


def _ports(specs: list[str]) -> dict:
    ports: dict = {"native": [], "cannelloni": [], "socketcand": []}
    for spec in specs:
        proto, _, port = spec.partition(":")
        if proto not in ports or not port:
            raise ValueError(f"--port {spec!r}: expected native|cannelloni|socketcand:[tcp:|udp:]PORT")
        ports[proto].append(int(port) if port.isdigit() else port)
    return ports


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        bus, wire, stats = load(args.files, _ports(args.port))
        source, dest = (args.source, args.dest) if args.source and args.dest else guess_direction(bus)
        for name in (source, dest):
            if name not in bus:
                raise ValueError(f"no CAN frames captured on {name!r} (interfaces: {', '.join(bus) or 'none'})")
        wire_name = args.wire or next(iter(wire), None)
        if wire_name is not None and wire_name not in wire:
            raise ValueError(f"no bridge packets captured on {wire_name!r} (interfaces: {', '.join(wire) or 'none'})")
    except (OSError, ValueError) as exc:
        print(f"canbridge inspect: error: {exc}", file=sys.stderr)
        return 2
    result = pair(bus, wire.get(wire_name, []), source, dest, wire_name, args.window)
    rep = report_dict(result)
    if args.json:
        text = json.dumps({**rep, "undecodable": stats}, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text + "\n")
    if args.json != "-":
        print_report(rep, stats, args.ids)
    if args.plot:
        plot(result, args.plot)
    return 0
