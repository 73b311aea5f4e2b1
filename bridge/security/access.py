"""Access control on the peer -> bus path: what a network peer may write to the CAN buses.

Per configured peer (docs/cli.md, "Access control"):
    read_only=1          nothing from this peer reaches a bus (dropped, counted `read_only`)
    write_allow=SPEC     only frames whose can_id passes this candump-style FilterSet
                         (bridge/codec/filters.py) reach a bus; others counted `not_allowed`
    rate=F, burst=N      token bucket on frames written to the buses: at most N + F*t frames in any
                         window of t seconds; the excess is counted `rate_limited`

The router applies `WriteGate.admit` once per batch, after the peer's inbound_filter. One gate
serves a whole configured peer: all connections of a server share its bucket, so max_clients does
not multiply the budget a flood can spend on the bus. Pure: times are passed in (the reactor's
monotonic seconds), nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bridge.codec import socketcan as sc
from bridge.codec.filters import FilterSet, parse_filters
from bridge.errors import ConfigError

ACCESS_OPTIONS = ("read_only", "write_allow", "rate", "burst")  # peer URL query options and [[peer]] keys
RATE_MAX = 1e7  # frames/s; far above any bus (1 Mbit/s carries ~21k empty classic frames/s at most)


class TokenBucket:
    """rate: tokens (frames) per second, > 0; burst: bucket size, >= 1. Starts full at `now`.
    `take(n, now)` grants up to n tokens and returns how many. Over any window [t0, t1] it grants
    at most burst + rate * (t1 - t0) tokens (tokens never exceed burst; refills only with time)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got rate={rate!r}, burst={burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, n: int, now: float) -> int:
        if now > self.stamp:  # a clock that stands still (or a stale `now`) refills nothing
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        return granted


@dataclass(frozen=True)
class Access:
    """The access options of one configured peer (config.PeerConfig.access). rate: frames/s or None
    (unlimited); burst: None = max(1, rate / 10), a tenth of a second of frames."""

    read_only: bool = False
    write_allow: FilterSet | None = None
    rate: float | None = None
    burst: int | None = None

    @property
    def restricts(self) -> bool:
        return self.read_only or self.rate is not None or (
            self.write_allow is not None and not self.write_allow.matches_all)

    def gate(self, now: float) -> WriteGate | None:
        """The runtime gate for this peer, or None when it lets everything through."""
        return WriteGate(self, now) if self.restricts else None


def default_burst(rate: float) -> int:
    return max(1, int(rate / 10))


class WriteGate:
    """Runtime state of an Access (the token bucket). admit() returns the frames of `batch` that
    may be written to a bus and counts the others in `counters` (bridge.core.stats.Counters)."""

    __slots__ = ("read_only", "allow", "bucket")

    def __init__(self, access: Access, now: float) -> None:
        self.read_only = access.read_only
        allow = access.write_allow
        self.allow = allow if allow is not None and not allow.matches_all else None
        self.bucket = None
        if access.rate is not None:
            burst = access.burst if access.burst is not None else default_burst(access.rate)
            self.bucket = TokenBucket(access.rate, burst, now)

    def admit(self, batch: list, now: float, counters) -> list:
        """batch: [(raw, ts_ns)]; returns the admitted frames, in order (batch itself when all pass). Frames beyond
        the bucket's tokens are the newest of the batch: those are dropped."""
        if self.read_only:
            counters.drop("read_only", len(batch))
            return []
        if self.allow is not None:
            allowed = self.allow.filter_batch(batch)
            counters.drop("not_allowed", len(batch) - len(allowed))
            batch = allowed
        if self.bucket is not None and batch:
            granted = self.bucket.take(len(batch), now)
            if granted < len(batch):
                counters.drop("rate_limited", len(batch) - granted)
                batch = batch[:granted]
        return batch


def with_option(access: Access, key: str, value, where: str) -> Access:
    """A copy of `access` with one ACCESS_OPTIONS option set from a URL string or a TOML value.
    Raises ConfigError naming `where` and the key."""
    if key == "read_only":
        return replace(access, read_only=_bool(value, f"{where}: read_only"))
    if key == "write_allow":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: write_allow: expected a filter string (e.g. 100:700,7DF), got {value!r}")
        try:
            return replace(access, write_allow=parse_allowlist(value))
        except ValueError as exc:
            raise ConfigError(f"{where}: write_allow: bad filter {value!r}: {exc}") from None
    if key == "rate":
        rate = _number(value, float, f"{where}: rate", "frames per second")
        if not (0 < rate <= RATE_MAX and math.isfinite(rate)):
            raise ConfigError(f"{where}: rate: expected frames per second, > 0 and <= {RATE_MAX:.0f}, got {value!r}")
        return replace(access, rate=rate)
    if key == "burst":
        burst = _number(value, int, f"{where}: burst", "a number of frames")
        if not 1 <= burst <= 1 << 24:
            raise ConfigError(f"{where}: burst: expected a number of frames, 1..{1 << 24}, got {value!r}")
        return replace(access, burst=burst)
    raise KeyError(key)


def parse_allowlist(spec: str) -> FilterSet:
    """candump filter syntax (bridge/codec/filters.py) plus bare CAN IDs: `7DF` means exactly SFF id
    0x7DF (`7DF:800007FF`), `18DAF110` (8 digits) exactly that EFF id (`18DAF110:9FFFFFFF`); RTR frames
    of an allowed id pass too. E.g. `100:700,7DF`. Raises FilterError (a ValueError)."""
    tokens = []
    for token in spec.split(","):
        bare = token.strip()
        if bare and all(c in "0123456789abcdefABCDEF" for c in bare):  # anything else: parse_filters judges
            mask = (sc.CAN_EFF_FLAG | sc.CAN_EFF_MASK) if len(bare) == 8 else (sc.CAN_EFF_FLAG | sc.CAN_SFF_MASK)
            token = f"{bare}:{mask:08X}"
        tokens.append(token)
    return parse_filters(",".join(tokens))


def check(access: Access, where: str) -> None:
    """Cross-option checks, once all options are in. Raises ConfigError."""
    if access.burst is not None and access.rate is None:
        raise ConfigError(f"{where}: burst needs rate (frames per second)")


def _bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected 1/0 or true/false, got {value!r}")


def _number(value, kind, where: str, what: str):
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {what}, got {value!r}") from None
