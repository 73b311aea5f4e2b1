"""socketcand ASCII protocol, server side: a sans-IO session state machine (bytes in, events out, as h11).

One ServerSession per TCP client. The caller writes `greeting()` (b"< hi >") first, then feeds what it
reads with receive_data() and drains next_event() until NEED_DATA. Frames from the bus are turned into
client bytes by encode_frames(batch, now_ns); BCM timers (cyclic jobs, throttled subscriptions) and
CONTROL-mode statistics are driven by the caller passing the time in (due_cyclic, due_output,
stats_due, next_deadline_ns). Frames on the forwarding path are raw Linux `struct can_frame` (16 B) /
`struct canfd_frame` (72 B) in host byte order, batches are lists of (raw, ts_ns) - see
bridge.codec.socketcan.

Sources: socketcand doc/protocol.md and src/{socketcand,state_*,statistics}.c (linux-can/socketcand),
python-can 4.6.1 can/interfaces/socketcand, SavvyCAN connections/socketcand.cpp; summarized in the
shared wire-format reference, sections 2b and 2c.

Framing (as socketcand's receive_command): no line terminators; a command is the bytes from the first
`<` to the first `>` after it; bytes outside `< ... >` (newlines, garbage) are discarded. A command of
more than MAX_COMMAND bytes, or a run of more than MAX_COMMAND bytes without any `<`, raises
SocketcandProtocolError("command_too_long") and the caller closes that client. Inside the brackets the
command is split on ASCII whitespace (socketcand wants exactly one space - we are lenient), keywords are
lower case as in socketcand.

States and replies (server -> client, each reply its own `< ... >`, no separators):

    connect                      -> caller sends greeting() = "< hi >"                       [NO_BUS]
    < open BUS >                 -> Open(BUS), "< ok >"                                     [-> BCM]
                                    or "< error could not open bus >" (name not 1..15 printable
                                    chars without '/' ':' or bus_exists(BUS) false); stays NO_BUS and
                                    the connection stays open (socketcand closes it)
    < BUS B ... > / < BUS C ... > -> "< error could not configure bus >" (bus configuration unsupported)
    < rawmode > < bcmmode > < controlmode >
                                 -> ModeChanged(mode), "< ok >" (in any mode but NO_BUS). Re-requesting
                                    the current mode answers "< ok >" without ModeChanged (socketcand
                                    answers "< error unknown command >"). Leaving BCM deletes all cyclic
                                    jobs and subscriptions (socketcand closes its BCM socket); leaving
                                    CONTROL turns statistics off.
    < isotpmode >                -> "< error isotpmode not supported >"
    < echo >                     -> "< echo >" in every mode
    < fdframes on|off >          -> "< ok >" (canbridge extension, RAW/BCM/CONTROL): whether CAN FD frames
                                    are sent to this client; "< error CAN FD not supported >" for "on"
                                    when the bus is classic only (fd_allowed). Real socketcand answers
                                    "< error unknown command >", so a client can probe for it.
    other words                  -> "< error unknown command >" (socketcand); in NO_BUS, known commands
                                    that need a bus -> "< error no bus open >"
    a known command with bad arguments
                                 -> Rejected(command, reason), no reply unless error_replies=True
                                    (then "< error REASON >", reason slug with spaces). socketcand only
                                    logs such commands, and python-can's client cannot take an
                                    unexpected "< error text >" in RAW mode: it parses it as an error
                                    frame, int("unknown", 16) raises and every later recv() fails too.

`< ok >` acknowledging open or a mode change comes as Reply(..., flush_alone=True): python-can's client
(and SavvyCAN's handshake) needs it alone in one recv(), so the caller must send it in its own send()
and keep frames back briefly (a few ms) after it rather than coalescing them into the same segment.

Client -> server frame commands (RAW and BCM mode), all resulting in Send(raw):

    < send ID DLC B0 .. >        classic frame; DLC DECIMAL 0..8 (socketcand %hhu) and exactly DLC data
                                 bytes; DLC 9..64 (a valid CAN FD length) = CAN FD frame without BRS (the
                                 SavvyCAN-V220 / socketcand PR #72 form). python-can sends the DLC in hex
                                 ("C" for 12 bytes) - such commands are rejected like socketcand does
                                 (and "10".."40" never match the byte count, so nothing is misread).
    < sendrtr ID DLC >           RTR frame, DLC 0..8 (protocol.md)
    < fdsend ID FLAGS LEN B.. >  CAN FD frame, FLAGS hex (BRS 1, ESI 2; other bits ignored, FDF always
                                 set), LEN decimal valid FD length (socketcand src/state_raw.c, PR #33)
    < sendfd ID LEN B.. >        CAN FD frame without BRS (Hartkopp's rawmode-canfd branch)

  Fields: ID 1..8 hex digits; EFF if the token has exactly 8 characters (socketcand, python-can), or the
  value is > 0x7FF, or bit 31 is set (SavvyCAN sends EFF ids as `id | 1 << 31`); values above
  0x1FFFFFFF (after removing bit 31) are rejected (bad_id). Data bytes: 1..2 hex digits, any case.
  CAN FD input is rejected (fd_not_supported) when the bus is classic only.

BCM mode commands (kernel CAN_BCM semantics, emulated here; interval SEC USEC decimal, USEC < 10**6,
SEC <= 400 days as the kernel demands):

    < add SEC USEC ID DLC B.. >  cyclic job: sent at once (STARTTIMER implies TX_ANNOUNCE), then every
                                 interval (0 0 = once); re-adding an id replaces the job -> CyclicChanged
    < update ID DLC B.. >        replace a job's data, timers untouched (no_such_job if absent)
    < delete ID >                delete a job -> CyclicChanged (no_such_job if absent)
    < filter SEC USEC ID DLC M.. > subscribe ID with a content filter: a frame goes to the client if
                                 (data & mask) differs from the last one delivered (the first always
                                 goes); SEC.USEC throttles (below)
    < subscribe SEC USEC ID >    subscribe ID, every frame (RX_FILTER_ID), throttled by SEC.USEC
    < unsubscribe ID >           remove the subscription / filter of ID (no_such_subscription if absent)
    < muxfilter ... >            "< error muxfilter not supported >"

  Throttle (RX_SETUP ival2): at most one frame per id per interval; a frame that arrives earlier is kept
  (newer ones overwrite it) and delivered by due_output() when the interval since the last delivery is
  over. Cyclic transmission skips missed periods (hrtimer_forward_now): one frame per job per
  due_cyclic() call, next due time = first multiple of the interval after now.
  The BCM subscriptions only match data frames (RTR and error frames never match, as in the kernel);
  ids are told apart by EFF (0x123 and 0x00000123 are two subscriptions).

CONTROL mode: `< statistics MS >` (decimal, 0 = off) -> StatisticsChanged(MS), no reply. The caller
asks stats_due(now_ns) and then sends encode_stat(rbytes, rpackets, tbytes, tpackets) =
"< stat %u %u %u %u >" (socketcand statistics.c; no bus name, values taken modulo 2**32). The first
statistics message comes one interval after the first poll following the command.

Server -> client frames (encode_frames), timestamps "%d.%06d" from ts_ns with integer math, truncated
to microseconds like SO_TIMESTAMP; ids "%03X" (SFF, id & 0x7FF) / "%08X" (EFF, id & 0x1FFFFFFF):

  RAW mode (socketcand src/state_raw.c):
    data frame    "< frame ID SEC.USEC DATA >", DATA = "%02X" per byte, no spaces; empty data gives two
                  spaces before ">" ("< frame 123 1.000000  >"), which python-can needs (3 fields)
    error frame   "< error CLASS SEC.USEC >", CLASS = "%03X" of can_id & 0x1FFFFFFF (python-can >= 4.6
                  makes an error Message of it); only if error_frames=True
    RTR frame     "< rtr ID SEC.USEC DLC >", DLC decimal (protocol.md; python-can and SavvyCAN skip it)
    CAN FD frame  "< fdframe ID FLAGS SEC.USEC DATA >", FLAGS "%02X" (BRS|ESI|FDF) - only after
                  `< fdframes on >`, otherwise counted in dropped["fd_not_enabled"]
  BCM mode (socketcand src/state_bcm.c): subscribed classic data frames only,
    "< frame ID SEC.USEC B0 B1 .. >" = "%02X " per byte then " >" ("< frame 123 1.000000 11 22  >").
    Subscribed CAN FD frames are dropped (dropped["fd_not_enabled"] or, after `< fdframes on >`,
    dropped["fd_in_bcm"]: socketcand's BCM mode has no FD form).
  NO_BUS and CONTROL mode: no frames (encode_frames returns b"").

Errors: everything peer input can cause is either a reply, a Rejected event or a
SocketcandProtocolError (reason "command_too_long"); nothing else escapes receive_data/next_event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from struct import Struct
from xml.sax.saxutils import escape, quoteattr

from bridge.codec.base import CLOSED, NEED_DATA
from bridge.codec.socketcan import CAN_EFF_FLAG as _EFF
from bridge.codec.socketcan import CAN_EFF_MASK as _EFF_MASK
from bridge.codec.socketcan import CAN_ERR_FLAG as _ERR
from bridge.codec.socketcan import CAN_FRAME as _CAN
from bridge.codec.socketcan import CAN_RTR_FLAG as _RTR
from bridge.codec.socketcan import CAN_SFF_MASK as _SFF_MASK
from bridge.codec.socketcan import CANFD_BRS as _BRS
from bridge.codec.socketcan import CANFD_ESI as _ESI
from bridge.codec.socketcan import CANFD_FDF as _FDF
from bridge.codec.socketcan import CANFD_FRAME as _CANFD
from bridge.codec.socketcan import VALID_FD_LENGTHS as _FD_LENS
from bridge.errors import ProtocolError

MAX_COMMAND = 512  # bytes, "<" to ">" inclusive; also the longest run of bytes outside commands
MAX_BUS_NAME = 15  # IFNAMSIZ - 1
MAX_JOBS = 1024  # cyclic jobs per session
MAX_SUBSCRIPTIONS = 4096  # subscriptions + filters per session
BCM_TIMER_SEC_MAX = 400 * 24 * 60 * 60  # linux/net/can/bcm.c

GREETING = b"< hi >"
OK = b"< ok >"
ECHO = b"< echo >"

_KEY_MASK = _EFF | _RTR | _ERR | _EFF_MASK  # a frame's subscription key (RTR/ERR never match one)
_U32 = 0xFFFFFFFF
_NS = 1_000_000_000

_HDR = Struct("=IBB")  # can_id, len, flags (canfd_frame) / __pad (can_frame)
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class Mode(StrEnum):
    NO_BUS = "no_bus"
    BCM = "bcm"
    RAW = "raw"
    CONTROL = "control"




class SocketcandProtocolError(ProtocolError):
    """Input that ends the client's session. `reason` is "command_too_long" (a command longer than
    MAX_COMMAND bytes, or more than MAX_COMMAND bytes outside any command)."""


# ------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to write to the client. flush_alone: write them in their own send() and do not let
    frames follow in the same segment (the `< ok >` of open and of mode changes)."""

    data: bytes
    flush_alone: bool = False


@dataclass(frozen=True, slots=True)
class Open:
    """The client opened `bus` (bus_exists said yes); the session is in BCM mode now."""

    bus: str


@dataclass(frozen=True, slots=True)
class Send:
    """A frame to write to the bus: raw struct can_frame (16 B) or canfd_frame (72 B)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class ModeChanged:
    mode: Mode


@dataclass(frozen=True, slots=True)
class CyclicChanged:
    """The set of cyclic BCM jobs changed: next_deadline_ns() may be earlier now (0 = poll at once)."""


@dataclass(frozen=True, slots=True)
class StatisticsChanged:
    """`< statistics MS >` in CONTROL mode (0 = off); re-read next_deadline_ns()."""

    interval_ms: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A known command was dropped for bad arguments or an impossible request (socketcand only logs
    these). command: the raw `< ... >` bytes; reason: slug such as bad_id, bad_dlc, bad_data, bad_count,
    bad_interval, bad_len, bad_flags, fd_not_supported, no_such_job, no_such_subscription,
    too_many_jobs, too_many_subscriptions."""

    command: bytes
    reason: str


# ---------------------------------------------------------------------------------------- BCM state


class CyclicJob:
    """A cyclic transmission job. next_ns: 0 = due at the next due_cyclic() call, None = no timer."""

    __slots__ = ("interval_ns", "raw", "next_ns")

    def __init__(self, interval_ns: int, raw: bytes):
        self.interval_ns = interval_ns
        self.raw = raw
        self.next_ns: int | None = 0


class Subscription:
    """A BCM subscription (mask None) or content filter (mask = int.from_bytes(8 mask bytes, "little"),
    compared with the frame's 8 data bytes read the same way). throttle_ns: 0 = no throttle.
    last: masked data of the last frame that passed (None before the first); last_sent_ns: time of
    the last delivery; pending: (raw, ts_ns) held back by the throttle."""

    __slots__ = ("throttle_ns", "mask", "last", "last_sent_ns", "pending")

    def __init__(self, throttle_ns: int, mask: int | None):
        self.throttle_ns = throttle_ns
        self.mask = mask
        self.last: int | None = None
        self.last_sent_ns: int | None = None
        self.pending: tuple | None = None


class _Bad(Exception):
    """Internal: a command's arguments are invalid; args[0] is the Rejected reason."""


# ------------------------------------------------------------------------------------ field parsing


def _parse_id(tok: bytes) -> int:
    """ID token -> can_id with CAN_EFF_FLAG for extended ids (rules in the module docstring)."""
    if not 1 <= len(tok) <= 8 or tok.translate(None, _HEX_DIGITS):
        raise _Bad("bad_id")
    v = int(tok, 16)
    eff = len(tok) == 8 or v > _SFF_MASK or bool(v & _EFF)
    v &= ~_EFF
    if v > _EFF_MASK:
        raise _Bad("bad_id")
    return v | _EFF if eff else v


def _parse_dec(tok: bytes, maximum: int, reason: str) -> int:
    if not tok.isdigit() or len(tok) > 10:
        raise _Bad(reason)
    v = int(tok)
    if v > maximum:
        raise _Bad(reason)
    return v


def _parse_bytes(toks: list, n: int) -> bytes:
    """Exactly n data-byte tokens (1..2 hex digits each) -> bytes."""
    if len(toks) != n:
        raise _Bad("bad_count")
    out = bytearray(n)
    for i, t in enumerate(toks):
        if not 1 <= len(t) <= 2 or t.translate(None, _HEX_DIGITS):
            raise _Bad("bad_data")
        out[i] = int(t, 16)
    return bytes(out)


def _parse_interval(sec: bytes, usec: bytes) -> int:
    """SEC USEC (decimal, as BCM's struct bcm_timeval) -> ns."""
    s = _parse_dec(sec, BCM_TIMER_SEC_MAX, "bad_interval")
    us = _parse_dec(usec, 999_999, "bad_interval")
    return s * _NS + us * 1000


def _classic(can_id: int, data: bytes) -> bytes:
    return _CAN.pack(can_id, len(data), 0, 0, 0, data)


def _fd(can_id: int, data: bytes, flags: int) -> bytes:
    if len(data) not in _FD_LENS:
        raise _Bad("bad_len")
    return _CANFD.pack(can_id, len(data), (flags & (_BRS | _ESI)) | _FDF, 0, 0, data)


def _fmt_id(can_id: int) -> str:
    return f"{can_id & _EFF_MASK:08X}" if can_id & _EFF else f"{can_id & _SFF_MASK:03X}"


def _valid_bus_name(name: bytes) -> bool:
    return (1 <= len(name) <= MAX_BUS_NAME and name.isascii() and all(0x21 <= c <= 0x7E for c in name)
            and b"/" not in name and b":" not in name)


def encode_stat(rbytes: int, rpackets: int, tbytes: int, tpackets: int) -> bytes:
    """CONTROL-mode statistics message "< stat RBYTES RPACKETS TBYTES TPACKETS >" (socketcand's
    "%u" of /proc/net/dev counters: values are taken modulo 2**32)."""
    return (f"< stat {rbytes & _U32} {rpackets & _U32} {tbytes & _U32} {tpackets & _U32} >").encode()


# ------------------------------------------------------------------------------------------ session


_DATA_MODES = (Mode.BCM, Mode.RAW, Mode.CONTROL)
_MODE_WORDS = {b"rawmode": Mode.RAW, b"bcmmode": Mode.BCM, b"controlmode": Mode.CONTROL}
_FRAME_WORDS = frozenset((b"send", b"sendrtr", b"fdsend", b"sendfd"))
_BCM_WORDS = frozenset((b"add", b"update", b"delete", b"filter", b"subscribe", b"unsubscribe", b"muxfilter"))
_NEED_BUS = _FRAME_WORDS | _BCM_WORDS | frozenset(_MODE_WORDS) | {b"isotpmode", b"statistics", b"fdframes"}


class ServerSession:
    """Server side of one socketcand client connection (see the module docstring for the protocol).

    bus_exists(name) -> bool decides `< open name >`; fd_allowed (bool, or callable(bus) -> bool asked
    at open) says whether the bus carries CAN FD; error_frames: send CAN error frames in RAW mode;
    error_replies: answer rejected commands with "< error REASON >" (off by default: it breaks
    python-can's client); min_interval_ns: lower bound applied to cyclic job intervals (protects a
    single-threaded reactor from a client asking for a 10 us job; 0 = as asked).

    Attributes: mode (Mode), bus (str | None), fd_frames (client asked for FD frames), statistics_ms,
    jobs {key: CyclicJob}, subscriptions {key: Subscription} (key = can_id incl. CAN_EFF_FLAG), counters:
    commands (complete commands parsed), frames_encoded (frames written into client bytes),
    rejected {reason: n}, dropped {reason: n} (frames not sent to the client: fd_not_enabled,
    fd_in_bcm).
    """

    def __init__(self, bus_exists: Callable[[str], bool] = lambda name: True,
                 fd_allowed: bool | Callable[[str], bool] = True, *, error_frames: bool = True,
                 error_replies: bool = False, min_interval_ns: int = 0):
        self._bus_exists = bus_exists
        self._fd_allowed_arg = fd_allowed
        self.error_frames = error_frames
        self.error_replies = error_replies
        self.min_interval_ns = min_interval_ns
        self.mode = Mode.NO_BUS
        self.bus: str | None = None
        self.fd_allowed = False  # known once a bus is open
        self.fd_frames = False
        self.statistics_ms = 0
        self._stat_next: int | None = None  # None: not started (the first poll starts the interval)
        self.jobs: dict[int, CyclicJob] = {}
        self.subscriptions: dict[int, Subscription] = {}
        self._pending_ids: set[int] = set()  # subscriptions holding a throttled frame
        self._buf = bytearray()
        self._garbage = 0  # bytes discarded since the last "<"
        self._events: deque = deque()
        self._eof = False
        self._error: SocketcandProtocolError | None = None
        self.commands = 0
        self.frames_encoded = 0
        self.rejected: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    # ------------------------------------------------------------------------------------ input

    @staticmethod
    def greeting() -> bytes:
        """The first bytes to send to a new client: exactly b"< hi >" (no newline)."""
        return GREETING

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the client; b"" means EOF (next_event then ends with CLOSED)."""
        if not data:
            self._eof = True
        elif not self._eof:
            self._buf += data

    def next_event(self):
        """-> Reply | Open | Send | ModeChanged | CyclicChanged | StatisticsChanged | Rejected |
        NEED_DATA | CLOSED. Raises SocketcandProtocolError("command_too_long") (and again on every
        later call); events of the commands before the bad one come first."""
        while not self._events:
            if self._error is not None:
                raise self._error
            cmd = self._next_command()
            if cmd is None:
                if self._error is not None:
                    raise self._error
                return CLOSED if self._eof else NEED_DATA
            self.commands += 1
            self._dispatch(cmd)
        return self._events.popleft()

    def _next_command(self) -> bytes | None:
        buf = self._buf
        start = buf.find(b"<")
        if start < 0:
            self._garbage += len(buf)
            buf.clear()
            if self._garbage > MAX_COMMAND:
                self._fail(f"{self._garbage} bytes outside any command")
            return None
        if start:
            self._garbage += start
            if self._garbage > MAX_COMMAND:
                self._fail(f"{self._garbage} bytes outside any command")
            del buf[:start]
        self._garbage = 0
        end = buf.find(b">", 1, MAX_COMMAND)
        if end < 0:
            if len(buf) >= MAX_COMMAND:
                self._fail(f"no '>' within {MAX_COMMAND} bytes")
            return None
        cmd = bytes(buf[: end + 1])
        del buf[: end + 1]
        return cmd

    def _fail(self, detail: str) -> None:
        self._buf.clear()
        self._error = SocketcandProtocolError("command_too_long", detail)

    # --------------------------------------------------------------------------------- dispatch

    def _reply(self, data: bytes, flush_alone: bool = False) -> None:
        self._events.append(Reply(data, flush_alone))

    def _error_reply(self, text: str) -> None:
        self._events.append(Reply(f"< error {text} >".encode()))

    def _dispatch(self, cmd: bytes) -> None:
        toks = cmd[1:-1].split()
        word = toks[0] if toks else b""
        mode = self.mode
        if word == b"echo" and len(toks) == 1:
            self._reply(ECHO)
            return
        try:
            if mode is Mode.NO_BUS:
                self._cmd_no_bus(word, toks)
            elif word in _MODE_WORDS and len(toks) == 1:
                self._switch_mode(_MODE_WORDS[word])
            elif word == b"isotpmode" and len(toks) == 1:
                self._error_reply("isotpmode not supported")
            elif word == b"fdframes" and len(toks) == 2 and toks[1] in (b"on", b"off"):
                if toks[1] == b"on" and not self.fd_allowed:
                    self._error_reply("CAN FD not supported")
                else:
                    self.fd_frames = toks[1] == b"on"
                    self._reply(OK)
            elif word == b"open" and len(toks) == 2:
                self._error_reply("bus already open")
            elif mode is Mode.CONTROL:
                if word == b"statistics" and len(toks) >= 2:
                    self._cmd_statistics(toks)
                else:
                    self._error_reply("unknown command")
            elif word in _FRAME_WORDS:
                self._events.append(Send(self._parse_frame_cmd(word, toks)))
            elif mode is Mode.BCM and word in _BCM_WORDS:
                self._cmd_bcm(word, toks)
            else:
                self._error_reply("unknown command")
        except _Bad as e:
            reason = e.args[0]
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self._events.append(Rejected(cmd, reason))
            if self.error_replies:
                self._error_reply(reason.replace("_", " "))

    def _cmd_no_bus(self, word: bytes, toks: list) -> None:
        if word == b"open":
            name = toks[1] if len(toks) == 2 else b""
            if not _valid_bus_name(name) or not self._bus_exists(name.decode("ascii")):
                self._error_reply("could not open bus")
                return
            bus = name.decode("ascii")
            fd = self._fd_allowed_arg
            self.fd_allowed = bool(fd(bus) if callable(fd) else fd)
            self.bus = bus
            self.mode = Mode.BCM
            self._events.append(Open(bus))
            self._reply(OK, flush_alone=True)
        elif len(toks) >= 2 and toks[1] in (b"B", b"C") and word not in _NEED_BUS:
            self._error_reply("could not configure bus")
        elif word in _NEED_BUS:
            self._error_reply("no bus open")
        else:
            self._error_reply("unknown command")

    def _switch_mode(self, new: Mode) -> None:
        old = self.mode
        if new is not old:
            if old is Mode.BCM:
                had_jobs = bool(self.jobs)
                self.jobs.clear()
                self.subscriptions.clear()
                self._pending_ids.clear()
                if had_jobs:
                    self._events.append(CyclicChanged())
            elif old is Mode.CONTROL and self.statistics_ms:
                self.statistics_ms = 0
                self._stat_next = None
                self._events.append(StatisticsChanged(0))
            self.mode = new
            self._events.append(ModeChanged(new))
        self._reply(OK, flush_alone=True)

    def _cmd_statistics(self, toks: list) -> None:
        if len(toks) != 2:
            raise _Bad("bad_count")
        ms = _parse_dec(toks[1], _U32, "bad_interval")
        self.statistics_ms = ms
        self._stat_next = None
        self._events.append(StatisticsChanged(ms))

    def _parse_frame_cmd(self, word: bytes, toks: list) -> bytes:
        """send / sendrtr / fdsend / sendfd -> raw frame."""
        args = toks[1:]
        if len(args) < 2:
            raise _Bad("bad_count")
        can_id = _parse_id(args[0])
        if word == b"send":
            n = _parse_dec(args[1], 64, "bad_dlc")
            data = _parse_bytes(args[2:], n)
            if n <= 8:
                return _classic(can_id, data)
            if n not in _FD_LENS:
                raise _Bad("bad_dlc")
            return self._fd_frame(can_id, data, 0)
        if word == b"sendrtr":
            if len(args) != 2:
                raise _Bad("bad_count")
            n = _parse_dec(args[1], 8, "bad_dlc")
            return _CAN.pack(can_id | _RTR, n, 0, 0, 0, b"")
        if word == b"fdsend":
            if len(args) < 3:
                raise _Bad("bad_count")
            f = args[1]
            if not 1 <= len(f) <= 2 or f.translate(None, _HEX_DIGITS):
                raise _Bad("bad_flags")
            n = _parse_dec(args[2], 64, "bad_len")
            return self._fd_frame(can_id, _parse_bytes(args[3:], n), int(f, 16))
        # sendfd ID LEN B..
        n = _parse_dec(args[1], 64, "bad_len")
        return self._fd_frame(can_id, _parse_bytes(args[2:], n), 0)

    def _fd_frame(self, can_id: int, data: bytes, flags: int) -> bytes:
        if not self.fd_allowed:
            raise _Bad("fd_not_supported")
        return _fd(can_id, data, flags)

    # ------------------------------------------------------------------------------------- BCM

    def _cmd_bcm(self, word: bytes, toks: list) -> None:
        args = toks[1:]
        if word == b"add":
            if len(args) < 4:
                raise _Bad("bad_count")
            ival = _parse_interval(args[0], args[1])
            can_id = _parse_id(args[2])
            n = _parse_dec(args[3], 8, "bad_dlc")
            data = _parse_bytes(args[4:], n)
            if can_id not in self.jobs and len(self.jobs) >= MAX_JOBS:
                raise _Bad("too_many_jobs")
            self.jobs[can_id] = CyclicJob(max(ival, self.min_interval_ns) if ival else 0, _classic(can_id, data))
            self._events.append(CyclicChanged())
        elif word == b"update":
            if len(args) < 2:
                raise _Bad("bad_count")
            can_id = _parse_id(args[0])
            n = _parse_dec(args[1], 8, "bad_dlc")
            data = _parse_bytes(args[2:], n)
            job = self.jobs.get(can_id)
            if job is None:
                raise _Bad("no_such_job")
            job.raw = _classic(can_id, data)
        elif word == b"delete":
            if len(args) != 1:
                raise _Bad("bad_count")
            can_id = _parse_id(args[0])
            if self.jobs.pop(can_id, None) is None:
                raise _Bad("no_such_job")
            self._events.append(CyclicChanged())
        elif word == b"filter":
            if len(args) < 4:
                raise _Bad("bad_count")
            ival = _parse_interval(args[0], args[1])
            can_id = _parse_id(args[2])
            n = _parse_dec(args[3], 8, "bad_dlc")
            mask = int.from_bytes(_parse_bytes(args[4:], n).ljust(8, b"\0"), "little")
            self._subscribe(can_id, Subscription(ival, mask))
        elif word == b"subscribe":
            if len(args) != 3:
                raise _Bad("bad_count")
            ival = _parse_interval(args[0], args[1])
            self._subscribe(_parse_id(args[2]), Subscription(ival, None))
        elif word == b"unsubscribe":
            if len(args) != 1:
                raise _Bad("bad_count")
            can_id = _parse_id(args[0])
            if self.subscriptions.pop(can_id, None) is None:
                raise _Bad("no_such_subscription")
            self._pending_ids.discard(can_id)
        else:  # muxfilter
            self._error_reply("muxfilter not supported")

    def _subscribe(self, can_id: int, sub: Subscription) -> None:
        if can_id not in self.subscriptions and len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise _Bad("too_many_subscriptions")
        self.subscriptions[can_id] = sub  # RX_SETUP on an existing id replaces it
        self._pending_ids.discard(can_id)

    # ---------------------------------------------------------------------------------- timers

    def next_deadline_ns(self) -> int | None:
        """Earliest time (in the caller's clock) at which due_cyclic / due_output / stats_due have
        work; 0 = at once (a new job or statistics interval starts at the next poll); None = none.
        May change after next_event(), encode_frames() and the due_* calls."""
        best = None
        for job in self.jobs.values():
            t = job.next_ns
            if t is not None and (best is None or t < best):
                best = t
        for key in self._pending_ids:
            sub = self.subscriptions[key]
            t = sub.last_sent_ns + sub.throttle_ns
            if best is None or t < best:
                best = t
        if self.statistics_ms and self.mode is Mode.CONTROL:
            t = 0 if self._stat_next is None else self._stat_next
            if best is None or t < best:
                best = t
        return best

    def due_cyclic(self, now_ns: int) -> list[bytes]:
        """Raw frames of the cyclic jobs due at now_ns (at most one per job; missed periods are
        skipped), to be written to the bus. New jobs are due at once."""
        out = []
        for job in self.jobs.values():
            t = job.next_ns
            if t is None or t > now_ns:
                continue
            out.append(job.raw)
            ival = job.interval_ns
            if not ival:
                job.next_ns = None
            elif t == 0:
                job.next_ns = now_ns + ival
            else:
                job.next_ns = t + ((now_ns - t) // ival + 1) * ival
        return out

    def due_output(self, now_ns: int) -> bytes:
        """Client bytes for throttled BCM frames whose interval is over at now_ns (b"" if none)."""
        if not self._pending_ids:
            return b""
        out = []
        done = []
        for key in sorted(self._pending_ids):
            sub = self.subscriptions[key]
            if sub.last_sent_ns + sub.throttle_ns <= now_ns:
                raw, ts = sub.pending
                sub.pending = None
                sub.last_sent_ns = now_ns
                out.append(_bcm_frame(raw, ts))
                done.append(key)
        self._pending_ids.difference_update(done)
        self.frames_encoded += len(out)
        return "".join(out).encode("ascii")

    def stats_due(self, now_ns: int) -> bool:
        """True when a statistics message is due at now_ns (CONTROL mode, statistics on); the caller
        then sends encode_stat(...). The first poll after `< statistics MS >` starts the interval."""
        if not self.statistics_ms or self.mode is not Mode.CONTROL:
            return False
        ival = self.statistics_ms * 1_000_000
        if self._stat_next is None:
            self._stat_next = now_ns + ival
            return False
        if now_ns < self._stat_next:
            return False
        nxt = self._stat_next + ival
        self._stat_next = nxt if nxt > now_ns else now_ns + ival  # late: no burst, restart from now
        return True

    encode_stat = staticmethod(encode_stat)

    # ---------------------------------------------------------------------------------- output

    def encode_frames(self, batch, now_ns: int | None = None) -> bytes:
        """Bus batch [(raw, ts_ns), ...] -> bytes for the client in the session's mode (b"" when
        nothing is to be sent). now_ns: the caller's clock for BCM throttling (the clock of the due_*
        calls); None uses each frame's ts_ns (then pass epoch ns to the due_* calls too)."""
        mode = self.mode
        if mode is Mode.RAW:
            return self._encode_raw(batch)
        if mode is Mode.BCM and self.subscriptions:
            return self._encode_bcm(batch, now_ns)
        return b""

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _encode_raw(self, batch) -> bytes:
        out = []
        ap = out.append
        hdr = _HDR.unpack_from
        fd_on = self.fd_frames
        err_on = self.error_frames
        fd_dropped = 0
        for raw, ts in batch:
            cid, n, flags = hdr(raw)
            sec, ns = divmod(ts, _NS)
            if len(raw) == 16:
                if not cid & (_RTR | _ERR):
                    if cid & _EFF:
                        ap(f"< frame {cid & _EFF_MASK:08X} {sec}.{ns // 1000:06d} {raw[8:8 + n].hex().upper()} >")
                    else:
                        ap(f"< frame {cid & _SFF_MASK:03X} {sec}.{ns // 1000:06d} {raw[8:8 + n].hex().upper()} >")
                elif cid & _ERR:
                    if err_on:
                        ap(f"< error {cid & _EFF_MASK:03X} {sec}.{ns // 1000:06d} >")
                else:
                    ap(f"< rtr {_fmt_id(cid)} {sec}.{ns // 1000:06d} {n} >")
            elif fd_on:
                ap(f"< fdframe {_fmt_id(cid)} {flags & 7:02X} {sec}.{ns // 1000:06d} "
                   f"{raw[8:8 + n].hex().upper()} >")
            else:
                fd_dropped += 1
        if fd_dropped:
            self._drop("fd_not_enabled", fd_dropped)
        self.frames_encoded += len(out)
        return "".join(out).encode("ascii")

    def _encode_bcm(self, batch, now_ns: int | None) -> bytes:
        out = []
        subs = self.subscriptions
        for raw, ts in batch:
            cid = _HDR.unpack_from(raw)[0]
            sub = subs.get(cid & _KEY_MASK)
            if sub is None:
                continue
            if len(raw) != 16:
                self._drop("fd_in_bcm" if self.fd_frames else "fd_not_enabled")
                continue
            if sub.mask is not None:
                masked = int.from_bytes(raw[8:16], "little") & sub.mask
                if masked == sub.last:
                    continue
                sub.last = masked
            t = ts if now_ns is None else now_ns
            if sub.throttle_ns:
                if sub.pending is not None:
                    sub.pending = (raw, ts)
                    continue
                if sub.last_sent_ns is not None and t - sub.last_sent_ns < sub.throttle_ns:
                    sub.pending = (raw, ts)
                    self._pending_ids.add(cid & _KEY_MASK)
                    continue
                sub.last_sent_ns = t
            out.append(_bcm_frame(raw, ts))
        self.frames_encoded += len(out)
        return "".join(out).encode("ascii")


def _bcm_frame(raw: bytes, ts: int) -> str:
    """A classic frame in socketcand's BCM form: "< frame ID SEC.USEC B0 B1 ..  >"."""
    cid, n, _ = _HDR.unpack_from(raw)
    sec, ns = divmod(ts, _NS)
    data = "".join(f"{b:02X} " for b in raw[8:8 + n])
    return f"< frame {_fmt_id(cid)} {sec}.{ns // 1000:06d} {data} >"


DEFAULT_PORT = 29536  # socketcand's default listening port (socketcand -p)
BEACON_PORT = 42000  # socketcand's discovery port (beacon.c); python-can's detect_beacon() listens here
BEACON_INTERVAL_S = 3.0  # socketcand's period; detect_beacon() waits 3.1 s by default
MAX_BEACON = 1024  # python-can reads the beacon with one recv(1024)


def encode_beacon(hostname: str, host: str, port: int, buses) -> bytes:
    """The socketcand discovery beacon (beacon.c), exact form:
    `<CANBeacon name="HOST" type="SocketCAN" description="socketcand">\n<URL>can://IP:PORT</URL>
    <Bus name="vcan0"/>...</CANBeacon>`. Raises ValueError when it exceeds MAX_BEACON bytes."""
    text = (
        f'<CANBeacon name={quoteattr(hostname)} type="SocketCAN" description="socketcand">\n'
        f"<URL>{escape(f'can://{host}:{port}')}</URL>"
        + "".join(f"<Bus name={quoteattr(bus)}/>" for bus in buses)
        + "</CANBeacon>"
    )
    data = text.encode()
    if len(data) > MAX_BEACON:
        raise ValueError(f"beacon of {len(data)} bytes exceeds {MAX_BEACON} (too many buses)")
    return data
