"""`canbridge stats`: ask a running bridge for its counters over the control socket (bridge/daemon/control.py)
and print them as a table per endpoint, or as raw JSON.

Exit status: 0, 1 when no bridge answers, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bridge.daemon import control
from bridge.core.stats import quantile_us

COUNTER_KEYS = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "dropped", "errors", "latency_us")


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


def render(answer: dict):
    """A rich Table of one `stats` answer: one row per endpoint, gauges shown generically."""
    from rich.table import Table

    title = (f"canbridge {answer.get('version', '?')}  pid {answer.get('pid', '?')}  "
             f"up {answer.get('uptime_s', 0):.0f} s  {answer.get('config') or ''}")
    table = Table(title=title, title_justify="left")
    for col in ("endpoint", "rx frames", "rx bytes", "tx frames", "tx bytes", "dropped", "errors",
                "bus->peer latency", "state"):
        table.add_column(col, justify="right" if col.startswith(("rx", "tx")) else "left", overflow="fold")
    for name, values in answer.get("stats", {}).items():
        gauges = {k: v for k, v in values.items() if k not in COUNTER_KEYS}
        table.add_row(
            name,
            *(str(values.get(k, "")) for k in ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes")),
            _fmt_reasons(values.get("dropped", {})),
            _fmt_reasons(values.get("errors", {})),
            _fmt_latency(values.get("latency_us")),
            " ".join(f"{k}={v}" for k, v in gauges.items()),
        )
    return table


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
    from rich.console import Console

    console = Console()
    if args.watch is None:
        console.print(render(client.request("stats")))
        return 0
    from rich.live import Live

    with Live(render(client.request("stats")), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.watch)
            live.update(render(client.request("stats")), refresh=True)
