"""`canbridge stats`: ask a running bridge for its counters over the control socket (bridge/daemon/control.py)
and print them: a table with one row per endpoint on a terminal wide enough for it, else (a narrower
terminal, a pipe, a log file) one block of lines per endpoint, each line at most 80 columns
(BLOCK_WIDTH); `--json` prints the raw answer for scripts.

Exit status: 0, 1 when no bridge answers, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

from bridge.daemon import control
from bridge.core.stats import quantile_us

COUNTER_KEYS = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "dropped", "errors", "latency_us", "health")
BLOCK_WIDTH = 80  # columns of the block output: a terminal's default, and what a pipe into a log keeps readable


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge stats", description="Counters of a running bridge (control socket).")
    p.add_argument("--control", metavar="PATH", help="control socket (default: the bridge's default path for NAME)")
    p.add_argument("-n", "--name", default=None,
                   help="bridge name = config file stem (default: the only socket in /run/canbridge, else canbridge)")
    p.add_argument("--json", action="store_true", help="print the raw answer (one JSON object per line)")
    p.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds until Ctrl-C")
    return p


def find_socket(name: str | None) -> str:
    """The control socket to use when --control is not given: the first existing candidate path."""
    if name is None:
        try:
            socks = sorted(f for f in os.listdir(control.RUN_DIR) if f.endswith(".sock"))
        except OSError:
            socks = []
        if len(socks) == 1:
            return os.path.join(control.RUN_DIR, socks[0])
        name = "canbridge"
    paths = control.candidate_paths(name)
    return next((p for p in paths if os.path.exists(p)), paths[0])


def _fmt_reasons(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) or "-"


def _fmt_latency(hist: dict | None) -> str:
    if not hist:
        return "-"
    p50, p99 = quantile_us(hist, 0.5), quantile_us(hist, 0.99)
    fmt = lambda us: "slow" if us is None else f"<{us / 1000:.3g} ms" if us >= 1000 else f"<{us} us"  # noqa: E731
    return f"p50 {fmt(p50)}, p99 {fmt(p99)} (n={hist['count']})"


def fmt_bus(values: dict) -> str | None:
    """One line of a bus's health (bridge/endpoints/bushealth.py), None for an endpoint that is no bus:
    `ERROR-PASSIVE  tec 130 rec 7  load 12.3 % of 500 kbit/s`; pieces the kernel does not report are left out."""
    health = values.get("health")
    if health is None:
        return None
    parts = [str(values.get("bus_state", "?"))]
    if health.get("txerr") is not None:
        parts.append(f"tec {health['txerr']} rec {health['rxerr']}")
    if health.get("load_pct") is not None:
        rate = health["bitrate"]
        rate_text = f"{rate / 1000:g} kbit/s" if rate % 1000 == 0 else f"{rate} bit/s"
        parts.append(f"load {health['load_pct']:.1f} % of {rate_text}")
    elif health.get("bits_per_s") is not None:
        parts.append(f"{health['bits_per_s']} bit/s")
    return "  ".join(parts)


def _fmt_controller(health: dict) -> str:
    """The controller's xstats and the RX-side losses of a bus, `-` where nothing is reported."""
    parts = [", ".join(f"{k}={v}" for k, v in health["xstats"].items())] if health.get("xstats") else []
    for key in ("rx_overruns", "rx_dropped", "socket_drops"):
        if health.get(key) is not None:
            parts.append(f"{key}={health[key]}")
    return ", ".join(parts) or "-"


def _title(answer: dict) -> str:
    return (f"canbridge {answer.get('version', '?')}  pid {answer.get('pid', '?')}  "
            f"up {answer.get('uptime_s', 0):.0f} s  {answer.get('config') or ''}").rstrip()


def _gauges(values: dict, skip: tuple = ()) -> dict:
    return {k: v for k, v in values.items() if k not in COUNTER_KEYS and k not in skip}


def render(answer: dict):
    """A rich Table of one `stats` answer: one row per endpoint, gauges shown generically."""
    from rich.table import Table

    table = Table(title=_title(answer), title_justify="left")
    for col in ("endpoint", "rx frames", "rx bytes", "tx frames", "tx bytes", "dropped", "errors",
                "bus->peer latency", "bus", "state"):
        table.add_column(col, justify="right" if col.startswith(("rx", "tx")) else "left", overflow="fold")
    for name, values in answer.get("stats", {}).items():
        bus = fmt_bus(values)
        table.add_row(
            name,
            *(str(values.get(k, "")) for k in ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes")),
            _fmt_reasons(values.get("dropped", {})),
            _fmt_reasons(values.get("errors", {})),
            _fmt_latency(values.get("latency_us")),
            bus or "-",
            " ".join(f"{k}={v}" for k, v in _gauges(values, ("bus_state",) if bus else ()).items()),
        )
    return table


def render_text(answer: dict, width: int = BLOCK_WIDTH) -> str:
    """One `stats` answer as plain text: the title, then a block per endpoint (its name, then indented
    `label  value` lines wrapped at `width` columns, continuation lines indented deeper)."""
    out = [_title(answer)]
    for name, values in answer.get("stats", {}).items():
        rows = [(d, f"{values[d + '_frames']} frames" + (f", {values[d + '_bytes']} bytes" if values.get(d + "_bytes")
                                                          else "")) for d in ("rx", "tx") if d + "_frames" in values]
        rows += [(key, _fmt_reasons(values[key])) for key in ("dropped", "errors") if key in values]
        if values.get("latency_us"):
            rows.append(("latency", "bus->peer " + _fmt_latency(values["latency_us"])))
        bus = fmt_bus(values)
        if bus is not None:
            rows += [("bus", bus), ("controller", _fmt_controller(values["health"]))]
        gauges = _gauges(values, ("bus_state",) if bus else ())
        if gauges:
            rows.append(("state", " ".join(f"{k}={v}" for k, v in gauges.items())))
        out += ["", name]
        for label, text in rows:
            out += textwrap.wrap(text, width, initial_indent=f"  {label:<11}", subsequent_indent=" " * 15,
                                 break_long_words=False, break_on_hyphens=False) or [f"  {label}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.watch is not None and args.watch <= 0:
        print("canbridge stats: error: --watch needs a positive number of seconds", file=sys.stderr)
        return 2
    path = args.control or find_socket(args.name)
    try:
        client = control.ControlClient(path)
    except OSError as exc:
        print(f"canbridge stats: no bridge answers on {path}: {exc.strerror or exc} "
              "(is it running? --control PATH / -n NAME)", file=sys.stderr)
        return 1
    try:
        return _loop(client, args)
    except (OSError, ValueError) as exc:
        print(f"canbridge stats: {path}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def _loop(client: control.ControlClient, args) -> int:
    if args.json:
        while True:
            print(json.dumps(client.request("stats"), sort_keys=True), flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    if not sys.stdout.isatty():  # a pipe or a file: blocks of plain lines, a separator between refreshes
        while True:
            print(render_text(client.request("stats")), flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
            print(flush=True)
    from rich.console import Console

    console = Console()
    if args.watch is None:
        console.print(_fitting(console, client.request("stats")))
        return 0
    from rich.live import Live

    with Live(_fitting(console, client.request("stats")), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.watch)
            live.update(_fitting(console, client.request("stats")), refresh=True)


def _fitting(console, answer: dict):
    """The table when it fits the terminal without folding a cell, else the blocks."""
    from rich.measure import Measurement
    from rich.text import Text

    table = render(answer)
    if Measurement.get(console, console.options.update_width(1 << 20), table).maximum <= console.width:
        return table
    return Text(render_text(answer, min(console.width, BLOCK_WIDTH)))
