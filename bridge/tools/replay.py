"""`canbridge replay LOG IFACE`: write a candump log onto a CAN interface with its recorded
timing (like can-utils canplayer, plus a speed factor). Every frame goes to IFACE whatever
interface the log names."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="canbridge replay", description=__doc__)
    p.add_argument("log", help="candump -l log file")
    p.add_argument("iface", help="CAN interface to write to, e.g. vcan0")
    p.add_argument("--speed", type=float, default=1.0, help="speed factor; 0 = as fast as possible")
    p.add_argument("--loop", type=int, default=1, help="play the log this many times")
    args = p.parse_args(argv)
    from bridge.tools import probe
    from bridge.codec.candump import CandumpError, read_log

    try:
        frames = [(ts, raw) for ts, _iface, raw in read_log(args.log)]
    except (OSError, CandumpError) as exc:
        print(f"canbridge replay: {args.log}: {exc}", file=sys.stderr)
        return 2
    try:
        sock = probe.open_can(args.iface)
    except OSError as exc:
        print(f"canbridge replay: cannot open {args.iface}: {exc.strerror}", file=sys.stderr)
        return 1
    total = 0.0
    for _ in range(args.loop):
        total += probe.replay(sock, frames, args.speed)
    print(f"replayed {len(frames) * args.loop} frames in {total:.2f} s", file=sys.stderr)
    return 0
