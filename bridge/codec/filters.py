"""candump-compatible CAN filters, evaluated with the Linux CAN_RAW semantics.

Syntax (can-utils `candump -h`): a comma-separated list of tokens, e.g. `123:7FF,400~700,#FFFFFFFF,j`

    <can_id>:<can_mask>   matches when  received_can_id & mask == can_id & mask
    <can_id>~<can_mask>   matches when  received_can_id & mask != can_id & mask   (CAN_INV_FILTER)
    #<error_mask>         error-frame class mask (CAN_RAW_ERR_FILTER); the last one given wins
    j or J                join: a frame must match ALL filters instead of ANY (CAN_RAW_JOIN_FILTERS)

Parsing follows candump.c: can_id and can_mask are hexadecimal; when the can_id is written with
exactly 8 characters CAN_EFF_FLAG is OR-ed into it ("12345678:1FFFFFFF"; candump looks only at the
length of the id, not of the mask); CAN_ERR_FLAG is cleared from every can_mask. Ids and masks are
raw `canid_t` values, so flag bits take part in the comparison: `123:7FF` also matches EFF and RTR
frames whose low 11 bits are 0x123, `123:C00007FF` only SFF data frames with id 0x123.

Evaluation follows the kernel (net/can/af_can.c can_rcv_list_find/can_rcv_filter, net/can/raw.c
raw_rcv), so `FilterSet.matches` says whether a CAN_RAW socket configured with `kernel_filters()`,
`err_mask` and `join` would deliver a frame:

* every filter is normalised first: if the mask has CAN_EFF_FLAG but the id has not, the mask is
  reduced to CAN_SFF_MASK|CAN_EFF_FLAG|CAN_RTR_FLAG ("SFF only" filters ignore id bits 11..28);
* no filter at all = the kernel default filter `0:0` (every data/RTR frame);
* error frames (CAN_ERR_FLAG) never match data filters; they pass iff
  `can_id & err_mask & CAN_ERR_MASK` is non-zero -- and, as in raw_rcv, never in join mode with
  two or more filters (the error receiver is a single match, short of the filter count).

Deviations from candump, all stricter (candump's sscanf silently accepts them):
* trailing garbage ("123:7FFxyz"), signs, "0x" prefixes, whitespace inside a token and tokens that
  merely start with j ("junk") are rejected; whitespace around tokens is ignored; "" is no filter;
* an empty token (a stray ",") is rejected, as candump does;
* values above 0xFFFFFFFF are rejected instead of being clipped;
* a can_id with bit 0x20000000 set (the CAN_INV_FILTER bit, which candump would pass through and
  so turn the filter into an inverted one) is rejected: write `~` instead;
* more than CAN_RAW_FILTER_MAX (512) filters are rejected (the kernel answers EINVAL).
An id without CAN_EFF_FLAG whose hex form is 8 digits long is written by `__str__` with a leading
zero (9 digits), which candump also reads without adding CAN_EFF_FLAG, so str() round-trips.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bridge.codec import socketcan as sc
from bridge.errors import ConfigError, ProtocolError

CAN_INV_FILTER = 0x20000000  # linux/can.h: inverted filter flag, set in can_filter.can_id
CAN_RAW_FILTER_MAX = 512  # linux/can/raw.h: max number of filters per socket

_U32 = 0xFFFFFFFF
_EFF_RTR = sc.CAN_EFF_FLAG | sc.CAN_RTR_FLAG
_CAN_FILTER = struct.Struct("=II")  # struct can_filter { canid_t can_id; canid_t can_mask; }
_CAN_ID = struct.Struct("=I")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_CACHE_MAX = 4096  # per-FilterSet memo of can_id -> verdict used by filter_batch
_EXPECTED = "expected <can_id>:<can_mask>, <can_id>~<can_mask>, #<error_mask> or j"


class FilterError(ConfigError, ProtocolError, ValueError):
    """A filter spec or value is invalid. `token` is the offending text (or value); the message
    names it and says what was expected. reason = "bad_filter". It is a ConfigError (filters
    come from URLs / the command line), a ProtocolError (when a peer sends them) and a ValueError.
    """

    def __init__(self, token: str, problem: str):
        self.token = token
        ProtocolError.__init__(self, "bad_filter", f"{token!r}: {problem}")


def _parse_hex(text: str, token: str, what: str) -> int:
    if not text:
        raise FilterError(token, f"{what} is empty ({_EXPECTED})")
    if not _HEXDIGITS.issuperset(text):
        raise FilterError(token, f"{what} {text!r} is not hexadecimal ({_EXPECTED})")
    value = int(text, 16)
    if value > _U32:
        raise FilterError(token, f"{what} {text!r} exceeds 32 bits")
    return value


def _format_id(can_id: int) -> str:
    if can_id & sc.CAN_EFF_FLAG:
        return f"{can_id:08X}"  # 8 characters: candump sets CAN_EFF_FLAG, which is already set
    text = f"{can_id:03X}"
    return "0" + text if len(text) == 8 else text  # 8 characters would add CAN_EFF_FLAG


def _check_u32(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
        raise FilterError(repr(value), f"{what} must be an int in 0..0xFFFFFFFF")


@dataclass(frozen=True, slots=True)
class CanFilter:
    """One `struct can_filter`. can_id / can_mask are raw canid_t values (flag bits included).

    CAN_ERR_FLAG is cleared from can_mask on construction (candump does the same; in the kernel a
    mask with CAN_ERR_FLAG would turn the entry into an error-frame filter). A can_id with the
    CAN_INV_FILTER bit (0x20000000) is refused: say `inverted=True`.
    """

    can_id: int
    can_mask: int
    inverted: bool = False

    def __post_init__(self) -> None:
        _check_u32(self.can_id, "can_id")
        _check_u32(self.can_mask, "can_mask")
        if self.can_id & CAN_INV_FILTER:
            raise FilterError(
                f"{self.can_id:08X}", "can_id bit 0x20000000 is CAN_INV_FILTER: use '~' / inverted=True"
            )
        if self.can_mask & sc.CAN_ERR_FLAG:
            object.__setattr__(self, "can_mask", self.can_mask & ~sc.CAN_ERR_FLAG)
        object.__setattr__(self, "inverted", bool(self.inverted))

    def normalized(self) -> tuple[int, int]:
        """(can_id, can_mask) as the kernel stores them (af_can.c can_rcv_list_find)."""
        mask = self.can_mask
        if (mask & sc.CAN_EFF_FLAG) and not (self.can_id & sc.CAN_EFF_FLAG):
            mask &= sc.CAN_SFF_MASK | _EFF_RTR
        return self.can_id & mask, mask

    def matches(self, can_id: int) -> bool:
        """Whether a non-error frame with this raw canid_t matches this one filter."""
        fid, mask = self.normalized()
        return ((can_id & mask) == fid) != self.inverted

    def __str__(self) -> str:
        return f"{_format_id(self.can_id)}{'~' if self.inverted else ':'}{self.can_mask:03X}"


@dataclass(frozen=True)
class FilterSet:
    """A CAN_RAW filter configuration: filters (CAN_RAW_FILTER), err_mask (CAN_RAW_ERR_FILTER),
    join (CAN_RAW_JOIN_FILTERS). `FilterSet()` is the kernel default: all data frames, no error
    frames. Immutable and hashable; `filters` may be given as any iterable of CanFilter."""

    filters: tuple[CanFilter, ...] = ()
    err_mask: int = 0
    join: bool = False
    _norm: tuple[tuple[int, int, bool], ...] = field(init=False, repr=False, compare=False)
    _err: int = field(init=False, repr=False, compare=False)
    _err_blocked: bool = field(init=False, repr=False, compare=False)
    _cache: dict[int, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        filters = tuple(self.filters)
        for f in filters:
            if not isinstance(f, CanFilter):
                raise FilterError(repr(f), "filters must be CanFilter instances")
        if len(filters) > CAN_RAW_FILTER_MAX:
            raise FilterError(f"{len(filters)} filters", f"at most {CAN_RAW_FILTER_MAX} (CAN_RAW_FILTER_MAX)")
        _check_u32(self.err_mask, "err_mask")
        setattr_ = object.__setattr__
        setattr_(self, "filters", filters)
        setattr_(self, "join", bool(self.join))
        setattr_(self, "_norm", tuple((*f.normalized(), f.inverted) for f in filters))
        setattr_(self, "_err", self.err_mask & sc.CAN_ERR_MASK)
        # raw_rcv: in join mode a frame is delivered after `count` matches; an error frame only
        # ever matches the one error receiver, so with >= 2 filters it is never delivered.
        setattr_(self, "_err_blocked", self.join and len(filters) > 1)
        setattr_(self, "_cache", {})

    # -- evaluation ---------------------------------------------------------------------------

    def matches(self, can_id: int) -> bool:
        """Whether a frame with this raw canid_t (flags included) passes, per kernel semantics."""
        if can_id & sc.CAN_ERR_FLAG:
            return bool(can_id & self._err) and not self._err_blocked
        norm = self._norm
        if not norm:
            return True
        if self.join:
            for fid, mask, inv in norm:
                if ((can_id & mask) == fid) == inv:
                    return False
            return True
        for fid, mask, inv in norm:
            if ((can_id & mask) == fid) != inv:
                return True
        return False

    @property
    def matches_all_data(self) -> bool:
        """True if every non-error frame passes. Exact for the usual cases (no filter, a `0:0`
        filter, an `x:m` + `x~m` pair); may say False for exotic sets that also pass everything."""
        norm = self._norm
        if not norm:
            return True
        if self.join:
            return all(mask == 0 and not inv for _fid, mask, inv in norm)
        if any(mask == 0 and not inv for _fid, mask, inv in norm):
            return True
        plain = {(fid, mask) for fid, mask, inv in norm if not inv}
        return any((fid, mask) in plain for fid, mask, inv in norm if inv)

    @property
    def matches_all(self) -> bool:
        """True if the set passes every frame: all non-error frames (see matches_all_data) and
        every error frame (err_mask covers all of CAN_ERR_MASK, no join block). An error frame
        carrying no error-class bit at all (can_id & CAN_ERR_MASK == 0) is the one exception:
        the kernel, and `matches`, never deliver it, but filter_batch's fast path keeps it."""
        return self.matches_all_data and self._err == sc.CAN_ERR_MASK and not self._err_blocked

    def filter_batch(self, batch: list) -> list:
        """Keep the `(raw, ts_ns)` items whose frame passes. Returns `batch` itself (no copy)
        when `matches_all`; otherwise a new list, in order. Verdicts are memoised per can_id."""
        if self.matches_all:
            return batch
        unpack = _CAN_ID.unpack_from
        cache = self._cache
        matches = self.matches
        out = []
        append = out.append
        for item in batch:
            can_id = unpack(item[0])[0]
            ok = cache.get(can_id)
            if ok is None:
                ok = matches(can_id)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[can_id] = ok
            if ok:
                append(item)
        return out

    # -- kernel / text forms -----------------------------------------------------------------

    def kernel_filters(self) -> bytes:
        """Packed `struct can_filter[]` (host byte order) for setsockopt(SOL_CAN_RAW,
        CAN_RAW_FILTER). Inverted filters carry CAN_INV_FILTER in can_id. With no filter this is
        the kernel default `0:0` (never b"", which would make the socket receive nothing).
        err_mask (CAN_RAW_ERR_FILTER, u32) and join (CAN_RAW_JOIN_FILTERS, int) are set apart."""
        if not self.filters:
            return _CAN_FILTER.pack(0, 0)
        return b"".join(
            _CAN_FILTER.pack(f.can_id | (CAN_INV_FILTER if f.inverted else 0), f.can_mask)
            for f in self.filters
        )

    def __str__(self) -> str:
        """candump syntax; parse_filters(str(fs)) == fs. "" for the default set."""
        tokens = [str(f) for f in self.filters]
        if self.err_mask:
            tokens.append(f"#{self.err_mask:08X}")
        if self.join:
            tokens.append("j")
        return ",".join(tokens)


def parse_filters(spec: str) -> FilterSet:
    """Parse a candump filter list (without the leading interface name), e.g.
    "123:7FF,400~700,#FFFFFFFF,j". "" (or only whitespace) gives FilterSet(). Raises FilterError
    naming the offending token and what was expected."""
    if not isinstance(spec, str):
        raise FilterError(repr(spec), "filter spec must be a str")
    if not spec.strip():
        return FilterSet()
    filters: list[CanFilter] = []
    err_mask = 0
    join = False
    for raw_token in spec.split(","):
        token = raw_token.strip()
        if not token:
            raise FilterError(raw_token, f"empty filter (stray ','); {_EXPECTED}")
        if token in ("j", "J"):
            join = True
            continue
        if token[0] == "#":
            err_mask = _parse_hex(token[1:], token, "error mask")
            continue
        colon, tilde = token.find(":"), token.find("~")
        if colon < 0 and tilde < 0:
            raise FilterError(token, _EXPECTED)
        pos = colon if tilde < 0 or (0 <= colon < tilde) else tilde
        id_text, mask_text = token[:pos], token[pos + 1 :]
        can_id = _parse_hex(id_text, token, "can_id")
        can_mask = _parse_hex(mask_text, token, "can_mask")
        if len(id_text) == 8:
            can_id |= sc.CAN_EFF_FLAG
        if can_id & CAN_INV_FILTER:
            raise FilterError(
                token, "can_id bit 0x20000000 is CAN_INV_FILTER: use '~' for an inverted filter"
            )
        filters.append(CanFilter(can_id, can_mask, inverted=token[pos] == "~"))
        if len(filters) > CAN_RAW_FILTER_MAX:
            raise FilterError(token, f"more than {CAN_RAW_FILTER_MAX} filters (CAN_RAW_FILTER_MAX)")
    return FilterSet(tuple(filters), err_mask, join)
