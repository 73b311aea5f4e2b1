"""What many host tests share: our HELLO, a bounded reactor driver, a free port."""

from __future__ import annotations

import socket
import time

from bridge.codec import native

# The HELLO of a one-bus bridge with CAN FD that sends a heartbeat every second.
HELLO = native.Hello(version=native.VERSION, capabilities=native.CAP_FD, heartbeat_ms=1000, channels=("vcan0",))


def run_until(reactor, cond, timeout: float = 15.0, step: float = 0.02, also=None) -> bool:
    """Drive the reactor (run_once(step)) until cond() or `timeout` seconds; returns cond(). The bound is
    for lost wakeups, not a timing assertion: callers assert the result. also(): run after each pass
    (e.g. a raw client reading its socket)."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        reactor.run_once(step)
        if also:
            also()
    return bool(cond())


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A loopback port that was free a moment ago (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(decoder) -> list:
    """A stream decoder's events up to NEED_DATA or CLOSED (that sentinel included), bridge.codec.base."""
    from bridge.codec.base import CLOSED, NEED_DATA

    out = []
    while True:
        event = decoder.next_event()
        out.append(event)
        if event is NEED_DATA or event is CLOSED:
            return out
