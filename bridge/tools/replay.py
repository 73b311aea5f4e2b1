"""`canbridge replay LOG IFACE`: write a CAN log onto a CAN interface with its recorded timing (like
can-utils canplayer, plus a speed factor). Every frame goes to IFACE whatever interface the log names.

LOG is any format python-can knows, chosen by its extension (bridge/tools/logfiles.py): .log (candump,
read by our own codec), .asc, .blf, .csv, .db, .mf4, .trc. A file that cannot be read gets one line on
stderr and exit status 2; IFACE that cannot be opened, exit status 1."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="canbridge replay", description=__doc__)
    p.add_argument("log", help="log file: .log (candump -l), .asc, .blf, .csv, .db, .mf4, .trc")
    p.add_argument("iface", help="CAN interface to write to, e.g. vcan0")
    p.add_argument("--speed", type=float, default=1.0, help="speed factor; 0 = as fast as possible")
    p.add_argument("--loop", type=int, default=1, help="play the log this many times")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    from bridge.tools import probe
    from bridge.tools.logfiles import LogFileError, read_frames

    try:
        frames = [(ts, raw) for ts, _iface, raw in read_frames(args.log)]
    except LogFileError as exc:
        print(f"canbridge replay: {exc}", file=sys.stderr)
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
