"""Dead-peer detection: one bound, `timeout` seconds (peer option, default 5), within which a silent
peer ("pulled cable") is noticed by every mechanism we have:

- TCP keepalive (TCP_KEEPIDLE + TCP_KEEPINTVL * TCP_KEEPCNT <= timeout): an idle connection whose
  peer vanished (cannelloni sends nothing while its bus is idle, so keepalive is all it has);
- TCP_USER_TIMEOUT (user_timeout_ms: timeout minus HEARTBEAT_S, since we send something at least
  every HEARTBEAT_S, the first unacknowledged byte after the cable is pulled leaves within that):
  data unacknowledged that long kills the connection (ETIMEDOUT) instead of the kernel retrying for
  ~15 minutes;
- the native protocol's heartbeats: a peer that sent nothing, heartbeats included, for the bound is
  closed (TCP) or marked down (UDP). We check every `check_interval(timeout)` seconds and fire at
  `silence_limit(timeout)` of silence, so detection happens at most `timeout` after the last byte.

Our own heartbeats leave at most HEARTBEAT_S apart, so the bound must be longer than that with room
for a slow loop pass: MIN_TIMEOUT_S.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, replace

from bridge.endpoints.pending import DEFAULT_MAX_AGE_S, DISCONNECT, DROP_OLDEST, OVERFLOW_POLICIES
from bridge.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # the default bound for noticing a pulled cable
HEARTBEAT_S = 1.0  # longest gap between two things we send to a heartbeating peer
MIN_TIMEOUT_S = 2.0  # > HEARTBEAT_S plus a loop pass plus a check interval
MAX_TIMEOUT_S = 3600.0
KEEPALIVE_MAX_CNT = 3  # probes before the kernel gives up (fewer when the bound is short)


def keepalive_params(timeout: float) -> tuple[int, int, int]:
    """(TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) in whole seconds, the kernel's unit, such that
    idle + intvl * cnt <= timeout (for timeout >= 2): a silent idle peer is dropped within it."""
    whole = max(2, int(timeout))
    cnt = max(1, min(KEEPALIVE_MAX_CNT, whole - 1))
    intvl = max(1, whole // 5)
    idle = max(1, whole - intvl * cnt)
    return idle, intvl, cnt


def user_timeout_ms(timeout: float) -> int:
    """TCP_USER_TIMEOUT for the bound: see the module docstring."""
    return int(max(1.0, timeout - HEARTBEAT_S) * 1000)


def set_dead_peer_timeout(sock: socket.socket, timeout: float) -> None:
    """SO_KEEPALIVE with keepalive_params(timeout) and TCP_USER_TIMEOUT = user_timeout_ms(timeout) on a TCP socket.
    Raises OSError if the kernel refuses one (the user asked for the bound: never silently ignored)."""
    idle, intvl, cnt = keepalive_params(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms(timeout))


def check_interval(timeout: float) -> float:
    """Seconds between liveness checks (and heartbeats): HEARTBEAT_S, shorter for a short bound."""
    return min(HEARTBEAT_S, timeout / 4)


def silence_limit(timeout: float) -> float:
    """Silence after which a check declares the peer dead: one check interval early, so that the
    check that fires comes at most `timeout` after the peer's last byte."""
    return timeout - check_interval(timeout)


def heartbeat_due(now: float, last_tx: float, timeout: float) -> bool:
    """Send a heartbeat at this check so that our gaps never exceed HEARTBEAT_S."""
    return now - last_tx >= HEARTBEAT_S - check_interval(timeout)


class PeerState:
    """Up/down state of a datagram peer, driven by the datagrams it sends (its heartbeats included).

    Starts down; `heard(now)` marks it up, `check(now)` marks it down after silence_limit(timeout).
    Every change is logged and shown in `counters.gauges`: peer_up (bool), peer_state ("up" or
    "down"), peer_transitions (changes so far)."""

    def __init__(self, name: str, counters, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.counters = counters
        self.timeout = timeout
        self.up = False
        self.transitions = 0
        self.last_rx = 0.0
        self._publish()

    def heard(self, now: float) -> None:
        self.last_rx = now
        if not self.up:
            self._change(True, "peer up")

    def silent(self, now: float) -> bool:
        """Up, and nothing heard for silence_limit(timeout): check() at `now` would mark it down."""
        return self.up and now - self.last_rx > silence_limit(self.timeout)

    def check(self, now: float) -> None:
        if self.silent(now):
            self._change(False, f"peer down (nothing for {now - self.last_rx:.1f} s, timeout {self.timeout:g} s)")

    def _change(self, up: bool, why: str) -> None:
        self.up = up
        self.transitions += 1
        (log.info if up else log.warning)("%s: %s", self.name, why)
        self._publish()

    def _publish(self) -> None:
        self.counters.gauges.update(peer_up=self.up, peer_state="up" if self.up else "down",
                                    peer_transitions=self.transitions)


@dataclass(frozen=True)
class PeerLimits:
    """Per-peer options of docs/cli.md "Dead peers, queues and stale frames".

    timeout: dead-peer bound, seconds; overflow: "drop-oldest" or "disconnect" (slow TCP consumer);
    max_age: seconds a frame may wait in our queues, 0 = no limit; sndbuf: SO_SNDBUF bytes, None =
    the endpoint's default (a big kernel buffer absorbs bursts but also holds old frames)."""

    timeout: float = DEFAULT_TIMEOUT_S
    overflow: str = DROP_OLDEST
    max_age: float = DEFAULT_MAX_AGE_S
    sndbuf: int | None = None


DEFAULT_LIMITS = PeerLimits()


LIMIT_OPTIONS = ("timeout", "overflow", "max_age", "sndbuf")


def with_option(policy: PeerLimits, key: str, value, where: str, datagram: bool = False) -> PeerLimits:
    """`policy` with one URL query / TOML option applied (strings from URLs, numbers from TOML);
    datagram: a UDP peer (it never queues, so overflow=disconnect does not apply).
    Raises ConfigError naming `where` and the key."""
    if key == "overflow":
        if value not in OVERFLOW_POLICIES:
            raise ConfigError(f"{where}: overflow: expected {' or '.join(OVERFLOW_POLICIES)}, got {value!r}")
        if value == DISCONNECT and datagram:
            raise ConfigError(f"{where}: overflow=disconnect needs a TCP peer (UDP never queues)")
        return replace(policy, overflow=value)
    if key == "sndbuf":
        n = _number(value, int, 4096, 1 << 30, f"{where}: sndbuf", "bytes")
        return replace(policy, sndbuf=n)
    if key == "timeout":
        timeout = _number(value, float, MIN_TIMEOUT_S, MAX_TIMEOUT_S, f"{where}: timeout", "seconds")
        return replace(policy, timeout=timeout)
    if key == "max_age":
        return replace(policy, max_age=parse_max_age(value, f"{where}: max_age"))
    raise ConfigError(f"{where}: unknown option {key!r}; expected {', '.join(LIMIT_OPTIONS)}")


def parse_max_age(value, where: str) -> float:
    """max_age in seconds, 0 (no limit) .. MAX_TIMEOUT_S."""
    return _number(value, float, 0.0, MAX_TIMEOUT_S, where, "seconds, 0 = no limit")


def _number(value, kind, low, high, where: str, unit: str):
    try:
        if isinstance(value, bool):
            raise ValueError
        n = kind(value)
    except (TypeError, ValueError):
        n = None
    if n is None or n != n or not low <= n <= high:  # n != n: NaN
        raise ConfigError(f"{where}: expected {unit}, {low:g}..{high:g}, got {value!r}")
    return n
