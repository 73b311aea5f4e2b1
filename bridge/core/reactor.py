"""The single-threaded event loop: epoll, a timer heap on the monotonic clock, signals
through a wakeup fd, and end-of-pass hooks that let endpoints flush one batch per loop pass.

Rules it enforces (see docs/architecture.md):
- one registration per fd; write interest only while a transport has buffered data;
- a callback that raises is logged and counted, never kills the loop;
- `stop()` (or SIGINT/SIGTERM) ends `run()` after the current pass.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import signal
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Callback = Callable[[], None]

EVENT_READ = select.EPOLLIN  # interest bits, as in selectors
EVENT_WRITE = select.EPOLLOUT
# what wakes a reader / a writer (selectors' mapping): an error or hang-up wakes both, so each side
# sees the failure on its next recv() or send()
_READY_READ = ~select.EPOLLOUT
_READY_WRITE = ~select.EPOLLIN


class TimerHandle:
    """Returned by `call_later`; `cancel()` is idempotent."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    """Event loop. Times are seconds of `clock` (default time.monotonic); a test passes its own clock
    (a function returning seconds) to run timers without sleeping: advance it, then run_once(0)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.time = clock  # reactor.time() -> now, in the clock's seconds
        self._epoll = select.epoll()
        self._handlers: dict[int, list] = {}  # fd -> [reader, writer, epoll mask]
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self._end_of_pass: list[Callback] = []
        self._signal_handlers: dict[int, Callback] = {}
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None
        self.stop_requested = False
        self.callback_errors = 0  # callbacks that raised (each one logged with its traceback)
        self.passes = 0

    # --- fds -------------------------------------------------------------------------------
    def _update(self, fd: int, reader: Callback | None, writer: Callback | None) -> None:
        mask = (EVENT_READ if reader else 0) | (EVENT_WRITE if writer else 0)
        entry = self._handlers.get(fd)
        if entry is None:
            if mask:
                self._epoll.register(fd, mask)
                self._handlers[fd] = [reader, writer, mask]
            return
        if not mask:
            del self._handlers[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:  # already closed: the kernel dropped it from the epoll set itself
                pass
            return
        if entry[2] != mask:
            self._epoll.modify(fd, mask)
        entry[:] = reader, writer, mask

    def _callbacks(self, fd: int) -> tuple[Callback | None, Callback | None]:
        entry = self._handlers.get(fd)
        return (entry[0], entry[1]) if entry else (None, None)

    def interest(self, fd: int) -> int:
        """EVENT_READ | EVENT_WRITE bits fd is registered for (0: not registered)."""
        entry = self._handlers.get(fd)
        return entry[2] if entry else 0

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._update(fd, callback, self._callbacks(fd)[1])

    def remove_reader(self, fd: int) -> None:
        self._update(fd, None, self._callbacks(fd)[1])

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._update(fd, self._callbacks(fd)[0], callback)

    def remove_writer(self, fd: int) -> None:
        self._update(fd, self._callbacks(fd)[0], None)

    def forget(self, fd: int) -> None:
        """Unregister fd entirely; call before closing it."""
        self._update(fd, None, None)

    # --- timers and hooks --------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callback) -> TimerHandle:
        handle = TimerHandle(self.time() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def call_every(self, interval: float, callback: Callback, first: float | None = None) -> TimerHandle:
        """Run `callback` every `interval` seconds (the first time after `first`, default `interval`)
        until the returned handle is cancelled. The next run is scheduled before the callback runs,
        so one that raises (logged and counted as any callback) does not end the series: a liveness
        check or a heartbeat must outlive a bug in one of its runs."""
        series = TimerHandle(0.0, callback)  # never in the heap: cancel() ends the series

        def run() -> None:
            if not series.cancelled:
                series.when = self.call_later(interval, run).when
                callback()

        series.when = self.call_later(interval if first is None else first, run).when
        return series

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    def add_end_of_pass(self, callback: Callback) -> None:
        """Run `callback` after every pass's I/O callbacks (used to flush batched writes)."""
        self._end_of_pass.append(callback)

    def remove_end_of_pass(self, callback: Callback) -> None:
        if callback in self._end_of_pass:
            self._end_of_pass.remove(callback)

    # --- signals -----------------------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run `callback` in the loop (not in signal context) when signum arrives."""
        if self._wakeup_r is None:
            self._wakeup_r, self._wakeup_w = socket.socketpair()
            self._wakeup_r.setblocking(False)
            self._wakeup_w.setblocking(False)
            signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
            self.add_reader(self._wakeup_r.fileno(), self._read_signals)
        self._signal_handlers[signum] = callback
        signal.signal(signum, lambda *_: None)  # the wakeup fd carries the signal number

    def _read_signals(self) -> None:
        try:
            data = self._wakeup_r.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler:
                self._safe(handler)

    def stop_on_signals(self, *signums: int) -> None:
        for s in signums or (signal.SIGINT, signal.SIGTERM):
            self.add_signal_handler(s, self.stop)

    # --- running -----------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_requested = True

    def _safe(self, callback: Callback) -> None:
        try:
            callback()
        except Exception:
            self._failed(callback)

    def _failed(self, callback: Callback) -> None:
        """Called from an except block: count and log the exception, the loop carries on."""
        self.callback_errors += 1
        log.exception("callback %r failed; the loop carries on", callback)

    def _timeout(self) -> float | None:
        if self._soon:
            return 0.0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.time())

    def run_once(self, timeout: float | None = None) -> None:
        """One pass: wait for I/O (bounded by the next timer), run ready callbacks, due timers,
        call_soon callbacks, then the end-of-pass hooks. Kept lean: with one frame in flight this
        pass is most of a bridge's latency (docs/benchmarks.md), so epoll is used directly."""
        wait = self._timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        handlers = self._handlers
        for fd, ev in self._epoll.poll(-1 if wait is None else wait):
            entry = handlers.get(fd)
            if entry is None:
                continue
            reader, writer = entry[0], entry[1]
            if reader is not None and ev & _READY_READ:
                try:
                    reader()
                except Exception:
                    self._failed(reader)
            # the reader may have closed the fd or changed its writer: re-check before writing
            if writer is not None and ev & _READY_WRITE and (cur := handlers.get(fd)) is not None \
                    and cur[1] is writer:
                try:
                    writer()
                except Exception:
                    self._failed(writer)
        if self._timers:
            self._run_timers()
        if self._soon:
            soon, self._soon = self._soon, []
            for callback in soon:
                self._safe(callback)
        for callback in tuple(self._end_of_pass):
            self._safe(callback)
        self.passes += 1

    def _run_timers(self) -> None:
        now = self.time()
        timers = self._timers
        while timers and (timers[0][2].cancelled or timers[0][0] <= now):
            _, _, handle = heapq.heappop(timers)
            if not handle.cancelled:
                handle.cancelled = True
                self._safe(handle.callback)

    def run(self) -> None:
        """Run until stop() is called (or a handled signal calls it)."""
        self.stop_requested = False
        while not self.stop_requested:
            self.run_once()

    def close(self) -> None:
        if self._wakeup_r is not None:
            signal.set_wakeup_fd(-1)
            for signum in self._signal_handlers:
                signal.signal(signum, signal.SIG_DFL)
            self.forget(self._wakeup_r.fileno())
            self._wakeup_r.close()
            self._wakeup_w.close()
            self._wakeup_r = self._wakeup_w = None
        self._epoll.close()
