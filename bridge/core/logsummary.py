"""Log lines that a flood cannot multiply: the first of each kind in full, the rest counted and told in one
summary line at most every `interval` seconds (a client retrying for hours, a scan, a garbage flood on a
topic). The counters of the endpoint count every event regardless; this only decides what reaches the log.

Subclasses (bridge.endpoints.tcp.RefusalLog, bridge.endpoints.mqtt.BadMessageLog) say what a kind is, what
they count for the summary and how the summary reads."""

from __future__ import annotations

from bridge.core.reactor import Reactor


class SummarisedLog:
    """first(key): True the first time a key is seen (log it in full), while fewer than `max_keys` are
    remembered; else False, and a summary is scheduled `interval` s later. summary() (the timer, or the
    owner at close) calls _summarise(), which logs the summary line if there is anything to tell."""

    def __init__(self, reactor: Reactor, name: str, interval: float, max_keys: int) -> None:
        self.reactor, self.name, self.interval, self.max_keys = reactor, name, interval, max_keys
        self._seen: set = set()  # kinds logged once; at most max_keys (beyond: everything is summarised)
        self._timer = None
        self.lines = 0  # lines logged (for tests and the curious)

    def first(self, key) -> bool:
        if key not in self._seen and len(self._seen) < self.max_keys:
            self._seen.add(key)
            self.lines += 1
            return True
        if self._timer is None:
            self._timer = self.reactor.call_later(self.interval, self.summary)
        return False

    def summary(self) -> None:
        """Log what was counted since the last summary, if anything."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._summarise():
            self.lines += 1

    def _summarise(self) -> bool:  # pragma: no cover - every subclass says it
        raise NotImplementedError
