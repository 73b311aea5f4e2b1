"""Progress of long work on stderr (`capture`, `replay`, `demo`).

On a terminal: one line redrawn in place by rich (rich.live.Live), at most LIVE_HZ times a second.
Elsewhere (a pipe, a file, TERM=dumb, CI logs), where a live display would print only its last frame or
fill the log with escape codes: a plain line every PLAIN_PERIOD_S seconds (environment variable
CANBRIDGE_PROGRESS_S overrides it). `quiet` shows nothing.

    p = Progress("canbridge replay")
    for i, frame in enumerate(frames):
        ...
        p.show(lambda: rate_text(i + 1, len(frames), p.elapsed()))   # cheap when not due
    p.close()
"""

from __future__ import annotations

import os
import sys
import time

LIVE_HZ = 4
PLAIN_PERIOD_S = 5.0


def plain_period() -> float:
    """Seconds between plain lines: CANBRIDGE_PROGRESS_S if set to a number > 0, else PLAIN_PERIOD_S."""
    try:
        value = float(os.environ.get("CANBRIDGE_PROGRESS_S", ""))
    except ValueError:
        return PLAIN_PERIOD_S
    return value if value > 0 else PLAIN_PERIOD_S


def rate_text(done: int, total: int | None, elapsed_s: float, unit: str = "frames") -> str:
    """"12,345/76,821 frames (16 %), 4,102 frames/s, 3.0 s" (no total: "12,345 frames, ...")."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    head = f"{done:,}/{total:,} {unit} ({100 * done // total} %)" if total else f"{done:,} {unit}"
    return f"{head}, {rate:,.0f} {unit}/s, {elapsed_s:.1f} s"


class Progress:
    """label: the line's prefix in plain mode (e.g. "canbridge capture"); stream: stderr by default."""

    def __init__(self, label: str, stream=None, quiet: bool = False) -> None:
        from rich.console import Console

        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, highlight=False)
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.interval = 1 / LIVE_HZ if self.live else plain_period()
        self.started = time.monotonic()
        self._next = self.started + self.interval
        self._live = None
        self._last = ""

    def restart(self) -> None:
        """The work starts now (elapsed time and rate count from here; e.g. after a connection is set up)."""
        self.started = time.monotonic()
        self._next = self.started + self.interval

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def due(self) -> bool:
        return not self.quiet and time.monotonic() >= self._next

    def show(self, text, force: bool = False) -> None:
        """text: a str, or a function returning one (only called when a line is due)."""
        if self.quiet or not (force or self.due()):
            return
        self._next = time.monotonic() + self.interval
        self._last = text() if callable(text) else text
        if not self.live:
            print(f"{self.label}: {self._last}", file=self.stream, flush=True)
            return
        from rich.live import Live
        from rich.text import Text

        if self._live is None:
            self._live = Live(Text(self._last), console=self.console, auto_refresh=False, transient=True)
            self._live.start()
        self._live.update(Text(self._last), refresh=True)

    def close(self) -> None:
        """Remove the live line (the caller prints its own summary); nothing to do in plain mode."""
        if self._live is not None:
            self._live.stop()
            self._live = None
