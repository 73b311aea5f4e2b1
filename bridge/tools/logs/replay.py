"""`canbridge replay LOG IFACE`: write a CAN log onto a CAN interface with its recorded timing (like
can-utils canplayer, plus a speed factor). Every frame goes to IFACE whatever interface the log names.

LOG is any format python-can knows, chosen by its extension (bridge/tools/logs/logfiles.py): .log (candump,
read by our own codec), .asc, .blf, .csv, .db, .mf4, .trc. A file that cannot be read gets one line on
stderr and exit status 2; IFACE that cannot be opened, exit status 1."""

from __future__ import annotations

import argparse
import sys
import time

from bridge.tools.logs.progress import Progress, rate_text

PROGRESS_EVERY = 256  # frames between progress checks when the replay is behind schedule (flat out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="canbridge replay", description=__doc__)
    p.add_argument("log", help="log file: .log (candump -l), .asc, .blf, .csv, .db, .mf4, .trc")
    p.add_argument("iface", help="CAN interface to write to, e.g. vcan0")
    p.add_argument("--speed", type=float, default=1.0, help="speed factor; 0 = as fast as possible")
    p.add_argument("--loop", type=int, default=1, help="play the log this many times")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress on stderr (shown live on a terminal, else a line every 5 s)")
    args = p.parse_args(argv)
    from bridge.tools.logs import probe
    from bridge.tools.logs.logfiles import LogFileError, read_frames

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
    progress = Progress("canbridge replay", quiet=args.quiet)
    start = time.monotonic()
    try:
        for k in range(args.loop):
            play(sock, frames, args.speed, lambda i, k=k: progress.show(
                lambda: rate_text(k * len(frames) + i, len(frames) * args.loop, progress.elapsed())))
    finally:
        progress.close()
    print(f"replayed {len(frames) * args.loop} frames in {time.monotonic() - start:.2f} s", file=sys.stderr)
    return 0


def play(sock, frames: list, speed: float, on_progress) -> None:
    """Send (ts_ns, raw) frames with their recorded spacing divided by speed (0 = flat out), as
    probe.replay does; on_progress(frames_sent) after every PROGRESS_EVERY frames and while waiting."""
    from bridge.tools.logs import probe

    if not frames:
        return
    start, base = time.monotonic(), frames[0][0]
    for i, (ts, raw) in enumerate(frames):
        if speed > 0:
            due = start + (ts - base) / 1e9 / speed
            while (now := time.monotonic()) < due:
                on_progress(i)
                time.sleep(min(due - now, 0.01))
        probe.send(sock, raw)
        if i % PROGRESS_EVERY == 0:
            on_progress(i + 1)
