"""bridge.codec.socketcand: server session state machine, exact reply and frame bytes, python-can's own
socketcand converters (both directions) and its real client over localhost TCP, BCM cyclic jobs and
subscriptions with injected times, CONTROL statistics, framing limits, hypothesis fuzzing."""

from __future__ import annotations

import socket
import threading
import time

import can
import pytest
from can.interfaces.socketcand.socketcand import (
    convert_ascii_message_to_can_message,
    convert_can_message_to_ascii_message,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import socketcan as sc
from bridge.codec import socketcand as scd
from bridge.codec.socketcand import (
    CLOSED,
    MAX_COMMAND,
    NEED_DATA,
    CyclicChanged,
    Mode,
    ModeChanged,
    Open,
    Rejected,
    Reply,
    Send,
    ServerSession,
    SocketcandProtocolError,
    StatisticsChanged,
    encode_stat,
)
from bridge.errors import ProtocolError

EFF, RTR, ERR = sc.CAN_EFF_FLAG, sc.CAN_RTR_FLAG, sc.CAN_ERR_FLAG
BRS, ESI, FDF = sc.CANFD_BRS, sc.CANFD_ESI, sc.CANFD_FDF
TS = 1742339088146472123  # -> "1742339088.146472"
TS_TXT = "1742339088.146472"
MS = 1_000_000
SEC = 1_000_000_000


def cc(can_id, data=b"", length=None):
    return sc.pack_can(can_id, data, 0, length)


def fd(can_id, data=b"", flags=0):
    return sc.pack_canfd(can_id, data, flags)


def drain(s: ServerSession) -> list:
    out = []
    while True:
        ev = s.next_event()
        if ev is NEED_DATA or ev is CLOSED:
            return out
        out.append(ev)


def feed(s: ServerSession, data: bytes) -> list:
    s.receive_data(data)
    return drain(s)


def replies(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Reply))


def sends(events) -> list:
    return [e.raw for e in events if isinstance(e, Send)]


def session(mode: Mode = Mode.RAW, **kw) -> ServerSession:
    s = ServerSession(**kw)
    feed(s, b"< open vcan0 >")
    if mode is not Mode.BCM:
        feed(s, {Mode.RAW: b"< rawmode >", Mode.CONTROL: b"< controlmode >"}[mode])
    assert s.mode is mode
    return s


# ---------------------------------------------------------------------------------------- module


def test_error_type():
    assert issubclass(SocketcandProtocolError, ProtocolError)


# ------------------------------------------------------------------------------- handshake, modes


def test_greeting_exact():
    s = ServerSession()
    assert s.greeting() == b"< hi >"
    assert s.mode is Mode.NO_BUS and s.bus is None
    assert s.next_event() is NEED_DATA


def test_python_can_handshake_sequence():
    s = ServerSession()
    assert feed(s, b"< open vcan0 >") == [Open("vcan0"), Reply(b"< ok >", flush_alone=True)]
    assert s.mode is Mode.BCM and s.bus == "vcan0"
    assert feed(s, b"< rawmode >") == [ModeChanged(Mode.RAW), Reply(b"< ok >", flush_alone=True)]
    assert s.mode is Mode.RAW


def test_open_asks_predicate_and_failure_keeps_no_bus():
    asked = []

    def exists(name):
        asked.append(name)
        return name == "can1"

    s = ServerSession(bus_exists=exists)
    assert feed(s, b"< open can0 >") == [Reply(b"< error could not open bus >")]
    assert s.mode is Mode.NO_BUS and s.bus is None
    assert feed(s, b"< open can1 >") == [Open("can1"), Reply(b"< ok >", True)]
    assert asked == ["can0", "can1"]


@pytest.mark.parametrize("cmd", [b"< open >", b"< open a b >", b"< open 0123456789abcdef >",
                                 b"< open a/b >", b"< open a:1 >", b"< open \xff >"])
def test_open_bad_names_never_reach_predicate(cmd):
    s = ServerSession(bus_exists=lambda name: pytest.fail(f"asked for {name!r}"))
    assert replies(feed(s, cmd)) == b"< error could not open bus >"
    assert s.mode is Mode.NO_BUS


def test_open_15_char_name():
    s = ServerSession()
    assert feed(s, b"< open abcdefghijklmno >")[0] == Open("abcdefghijklmno")


def test_no_bus_replies():
    s = ServerSession()
    assert replies(feed(s, b"< echo >")) == b"< echo >"
    assert replies(feed(s, b"< rawmode >")) == b"< error no bus open >"
    assert replies(feed(s, b"< send 123 0 >")) == b"< error no bus open >"
    assert replies(feed(s, b"< hello >")) == b"< error unknown command >"
    assert replies(feed(s, b"< >")) == b"< error unknown command >"
    assert replies(feed(s, b"< can0 B 500000 875 0 0 0 0 0 0 >")) == b"< error could not configure bus >"
    assert replies(feed(s, b"< can0 C 0 1 0 >")) == b"< error could not configure bus >"
    assert s.mode is Mode.NO_BUS


def test_mode_switches():
    s = session(Mode.BCM)
    assert feed(s, b"< controlmode >") == [ModeChanged(Mode.CONTROL), Reply(b"< ok >", True)]
    assert feed(s, b"< bcmmode >") == [ModeChanged(Mode.BCM), Reply(b"< ok >", True)]
    assert feed(s, b"< rawmode >") == [ModeChanged(Mode.RAW), Reply(b"< ok >", True)]
    # re-requesting the current mode: ok, no ModeChanged (socketcand would say unknown command)
    assert feed(s, b"< rawmode >") == [Reply(b"< ok >", True)]
    assert feed(s, b"< isotpmode >") == [Reply(b"< error isotpmode not supported >")]
    assert s.mode is Mode.RAW
    assert feed(s, b"< open vcan1 >") == [Reply(b"< error bus already open >")]
    assert s.bus == "vcan0"


@pytest.mark.parametrize("mode", [Mode.BCM, Mode.RAW, Mode.CONTROL])
def test_echo_in_every_mode(mode):
    s = session(mode)
    assert feed(s, b"< echo >") == [Reply(b"< echo >")]
    assert replies(feed(s, b"< echo x >")) == b"< error unknown command >"


def test_unknown_commands_per_mode():
    raw = session(Mode.RAW)
    for cmd in (b"< add 1 0 123 0 >", b"< subscribe 0 0 123 >", b"< statistics 100 >", b"< frame 1 >"):
        assert feed(raw, cmd) == [Reply(b"< error unknown command >")], cmd
    ctl = session(Mode.CONTROL)
    for cmd in (b"< send 123 0 >", b"< add 1 0 123 0 >"):
        assert feed(ctl, cmd) == [Reply(b"< error unknown command >")], cmd
    bcm = session(Mode.BCM)
    assert feed(bcm, b"< statistics 100 >") == [Reply(b"< error unknown command >")]
    assert feed(bcm, b"< muxfilter 0 0 123 2 FF 00 00 00 00 00 00 00 33 FF FF FF FF FF FF FF >") == [
        Reply(b"< error muxfilter not supported >")]
    assert bcm.commands == 3  # open included


def test_keywords_case_sensitive_whitespace_lenient():
    s = session(Mode.BCM)
    assert replies(feed(s, b"< RAWMODE >")) == b"< error unknown command >"
    assert feed(s, b"<rawmode>")[0] == ModeChanged(Mode.RAW)
    assert sends(feed(s, b"<  send\t123  1 aa\n>")) == [cc(0x123, b"\xaa")]


# -------------------------------------------------------------------------------- RAW frame output


@pytest.mark.parametrize("raw,ts,text", [
    (cc(0x123, bytes.fromhex("1A220344")), TS, f"< frame 123 {TS_TXT} 1A220344 >"),
    (cc(0x001, b"\x00"), TS, f"< frame 001 {TS_TXT} 00 >"),
    (cc(0x7FF, bytes(range(0xF8, 0x100))), TS, f"< frame 7FF {TS_TXT} F8F9FAFBFCFDFEFF >"),
    (cc(0x123), 1 * SEC, "< frame 123 1.000000  >"),  # empty data: two spaces
    (cc(EFF | 0xABCD, b"\xab\xcd"), TS, f"< frame 0000ABCD {TS_TXT} ABCD >"),
    (cc(EFF | 0x1FFFFFFF), TS, f"< frame 1FFFFFFF {TS_TXT}  >"),
    (cc(EFF | 0x5), 0, "< frame 00000005 0.000000  >"),
    (cc(0x123, b"\x01"), 1_999_999_999, "< frame 123 1.999999 01 >"),  # truncated, never rounded up
    (cc(0x123, b"\x01"), 2_000_000_999, "< frame 123 2.000000 01 >"),
    (cc(0x123, b"\x01"), 10**19 + 1_000, "< frame 123 10000000000.000001 01 >"),  # no float anywhere
    (cc(ERR | 0x004, bytes(8)), TS, f"< error 004 {TS_TXT} >"),
    (cc(ERR | 0x1FFFFFFF, bytes(8)), TS, f"< error 1FFFFFFF {TS_TXT} >"),
    (cc(ERR | EFF | 0x040, bytes(8)), TS, f"< error 040 {TS_TXT} >"),
    (cc(RTR | 0x123, length=4), TS, f"< rtr 123 {TS_TXT} 4 >"),
    (cc(RTR | EFF | 0x123, length=0), TS, f"< rtr 00000123 {TS_TXT} 0 >"),
])
def test_raw_frame_forms(raw, ts, text):
    s = session(Mode.RAW)
    assert s.encode_frames([(raw, ts)]) == text.encode()
    assert s.frames_encoded == 1


def test_raw_batch_is_concatenated_and_empty_batch():
    s = session(Mode.RAW)
    assert s.encode_frames([]) == b""
    out = s.encode_frames([(cc(0x1, b"\x01"), SEC), (cc(EFF | 0x2), 2 * SEC)])
    assert out == b"< frame 001 1.000000 01 >< frame 00000002 2.000000  >"


def test_raw_error_frames_can_be_disabled():
    s = session(Mode.RAW, error_frames=False)
    assert s.encode_frames([(cc(ERR | 4, bytes(8)), TS), (cc(0x5), SEC)]) == b"< frame 005 1.000000  >"
    assert s.frames_encoded == 1


def test_fd_frames_only_after_opt_in():
    s = session(Mode.RAW)
    batch = [(fd(0x123, bytes(range(12)), BRS), TS), (cc(0x1), SEC)]
    assert s.encode_frames(batch) == b"< frame 001 1.000000  >"
    assert s.dropped == {"fd_not_enabled": 1}
    assert feed(s, b"< fdframes on >") == [Reply(b"< ok >")]
    assert s.fd_frames
    assert s.encode_frames(batch) == (f"< fdframe 123 05 {TS_TXT} 000102030405060708090A0B >"
                                      "< frame 001 1.000000  >").encode()
    assert s.encode_frames([(fd(EFF | 0xABC, b"", ESI), SEC)]) == b"< fdframe 00000ABC 06 1.000000  >"
    assert feed(s, b"< fdframes off >") == [Reply(b"< ok >")]
    assert s.encode_frames(batch[:1]) == b""
    assert s.dropped == {"fd_not_enabled": 2}


def test_fdframes_on_refused_on_classic_bus():
    s = session(Mode.RAW, fd_allowed=False)
    assert feed(s, b"< fdframes on >") == [Reply(b"< error CAN FD not supported >")]
    assert not s.fd_frames
    assert feed(s, b"< fdframes off >") == [Reply(b"< ok >")]
    assert replies(feed(s, b"< fdframes maybe >")) == b"< error unknown command >"


def test_fd_allowed_callable_asked_at_open():
    s = ServerSession(fd_allowed=lambda bus: bus == "can1")
    feed(s, b"< open can0 >")
    assert not s.fd_allowed
    s2 = ServerSession(fd_allowed=lambda bus: bus == "can1")
    feed(s2, b"< open can1 >")
    assert s2.fd_allowed


@pytest.mark.parametrize("mode", [Mode.NO_BUS, Mode.CONTROL])
def test_no_frames_outside_raw_and_bcm(mode):
    s = ServerSession() if mode is Mode.NO_BUS else session(mode)
    assert s.encode_frames([(cc(0x123, b"\x01"), TS)]) == b""


# ------------------------------------------------------------------------------- python-can interop


def _pc_parse(data: bytes) -> can.Message:
    return convert_ascii_message_to_can_message(data.decode("ascii"))


@pytest.mark.parametrize("raw,ext,arb,data", [
    (cc(0x123, b"\x11\x22\x33"), False, 0x123, b"\x11\x22\x33"),
    (cc(0x001), False, 0x001, b""),
    (cc(EFF | 0x12), True, 0x12, b""),
    (cc(EFF | 0x1ABCDEF0, bytes(range(8))), True, 0x1ABCDEF0, bytes(range(8))),
])
def test_python_can_parses_our_frames(raw, ext, arb, data):
    msg = _pc_parse(session(Mode.RAW).encode_frames([(raw, TS)]))
    assert (msg.arbitration_id, msg.is_extended_id, bytes(msg.data), msg.dlc) == (arb, ext, data, len(data))
    assert msg.timestamp == float(TS_TXT)
    assert not msg.is_error_frame


def test_python_can_parses_our_error_frames():
    msg = _pc_parse(session(Mode.RAW).encode_frames([(cc(ERR | 0x004, bytes(8)), TS)]))
    assert msg.is_error_frame and msg.arbitration_id == 0x004 and msg.timestamp == float(TS_TXT)


def test_python_can_crashes_on_error_text_so_we_do_not_send_it():
    """Why Rejected commands get no reply by default: python-can reads "< error text >" as an error frame."""
    with pytest.raises(ValueError):
        convert_ascii_message_to_can_message("< error bad dlc >")
    s = session(Mode.RAW)
    ev = feed(s, convert_can_message_to_ascii_message(
        can.Message(arbitration_id=0x100, data=bytes(12), is_fd=True)).encode())
    assert ev == [Rejected(b"< send 00000100 C 0 0 0 0 0 0 0 0 0 0 0 0 >", "bad_dlc")]
    assert s.rejected == {"bad_dlc": 1}


@settings(max_examples=300, deadline=None)
@given(ext=st.booleans(), can_id=st.integers(0, 0x1FFFFFFF), data=st.binary(max_size=8),
       ts=st.integers(0, 2**63 - 1))
def test_python_can_parser_round_trip(ext, can_id, data, ts):
    cid = (EFF | can_id) if ext else (can_id & 0x7FF)
    s = session(Mode.RAW)
    text = s.encode_frames([(cc(cid, data), ts)])
    msg = _pc_parse(text)
    assert msg.arbitration_id == cid & 0x1FFFFFFF
    assert msg.is_extended_id == ext
    assert bytes(msg.data) == data
    assert msg.timestamp == float(f"{ts // SEC}.{ts % SEC // 1000:06d}")


@settings(max_examples=300, deadline=None)
@given(ext=st.booleans(), can_id=st.integers(0, 0x1FFFFFFF), data=st.binary(max_size=8),
       mode=st.sampled_from([Mode.RAW, Mode.BCM]))
def test_python_can_send_accepted(ext, can_id, data, mode):
    arb = can_id if ext else can_id & 0x7FF
    line = convert_can_message_to_ascii_message(can.Message(arbitration_id=arb, is_extended_id=ext, data=data))
    s = session(mode)
    assert feed(s, line.encode()) == [Send(cc((EFF | arb) if ext else arb, data))]


def test_python_can_examples_from_reference():
    s = session(Mode.RAW)
    assert sends(feed(s, b"< send 123 2 1 f1 >")) == [cc(0x123, b"\x01\xf1")]
    assert sends(feed(s, b"< send 1AAAAAAA 0  >")) == [cc(EFF | 0x1AAAAAAA)]
    # python-can's RTR form carries no data bytes: dropped as socketcand does
    assert feed(s, b"< send 7FF 8  >") == [Rejected(b"< send 7FF 8  >", "bad_count")]


# ----------------------------------------------------------------------------- frame input parsing


@pytest.mark.parametrize("cmd,raw", [
    (b"< send 123 0 >", cc(0x123)),
    (b"< send 0123 1 5 >", cc(0x123, b"\x05")),  # 4 digits, value <= 7FF: SFF
    (b"< send FFF 0 >", cc(EFF | 0xFFF)),  # > 7FF: EFF even with 3 digits
    (b"< send 00000000 0 >", cc(EFF | 0)),
    (b"< send 1fffffff 8 0 1 2 3 4 5 6 7 >", cc(EFF | 0x1FFFFFFF, bytes(range(8)))),
    (b"< send 80000123 2 a B >", cc(EFF | 0x123, b"\x0a\x0b")),  # SavvyCAN: EFF as id | 1 << 31
    (b"< send 80000012 0 >", cc(EFF | 0x12)),
    (b"< send 123 08 1 2 3 4 5 6 7 8 >", cc(0x123, bytes(range(1, 9)))),  # %hhu takes leading zeros
    (b"< sendrtr 123 4 >", cc(RTR | 0x123, length=4)),
    (b"< sendrtr 1AAAAAAA 0 >", cc(RTR | EFF | 0x1AAAAAAA, length=0)),
    (b"< fdsend 123 1 12 " + b"aa " * 12 + b">", fd(0x123, b"\xaa" * 12, BRS)),
    (b"< fdsend 00000123 03 0 >", fd(EFF | 0x123, b"", BRS | ESI)),
    (b"< fdsend 123 FC 1 7 >", fd(0x123, b"\x07", 0)),  # bits other than BRS/ESI ignored
    (b"< fdsend 123 0 64 " + b"1 " * 64 + b">", fd(0x123, b"\x01" * 64)),
    (b"< sendfd 123 16 " + b"ff " * 16 + b">", fd(0x123, b"\xff" * 16)),
    (b"< send 123 12 " + b"0 " * 12 + b">", fd(0x123, bytes(12))),  # PR #72 form: >8 bytes = FD
])
@pytest.mark.parametrize("mode", [Mode.RAW, Mode.BCM])
def test_frame_commands(cmd, raw, mode):
    s = session(mode)
    assert feed(s, cmd) == [Send(raw)]


@pytest.mark.parametrize("cmd,reason", [
    (b"< send >", "bad_count"),
    (b"< send 123 >", "bad_count"),
    (b"< send 123 1 >", "bad_count"),
    (b"< send 123 1 1 2 >", "bad_count"),
    (b"< send 123 9 1 2 3 4 5 6 7 8 9 >", "bad_dlc"),  # 9 bytes is no CAN FD length
    (b"< send 123 65 >", "bad_dlc"),
    (b"< send 123 A 1 2 3 4 5 6 7 8 9 10 >", "bad_dlc"),  # hex DLC (python-can): socketcand drops it
    (b"< send 123 10 " + b"0 " * 16 + b">", "bad_count"),  # python-can's hex "10" for 16 bytes
    (b"< send 123 -1 >", "bad_dlc"),
    (b"< send 123 +1 5 >", "bad_dlc"),
    (b"< send 123456789 0 >", "bad_id"),
    (b"< send 20000000 0 >", "bad_id"),
    (b"< send 0x12 0 >", "bad_id"),
    (b"< send 12g 0 >", "bad_id"),
    (b"< send 1_2 0 >", "bad_id"),
    (b"< send 123 1 100 >", "bad_data"),
    (b"< send 123 1 0x1 >", "bad_data"),
    (b"< send 123 1 g >", "bad_data"),
    (b"< sendrtr 123 9 >", "bad_dlc"),
    (b"< sendrtr 123 1 0 >", "bad_count"),
    (b"< fdsend 123 1 >", "bad_count"),
    (b"< fdsend 123 100 0 >", "bad_flags"),
    (b"< fdsend 123 1 13 " + b"0 " * 13 + b">", "bad_len"),
    (b"< fdsend 123 1 65 >", "bad_len"),
    (b"< fdsend 123 1 2 1 >", "bad_count"),
    (b"< sendfd 123 9 " + b"0 " * 9 + b">", "bad_len"),
])
def test_bad_frame_commands_are_rejected_silently(cmd, reason):
    s = session(Mode.RAW)
    assert feed(s, cmd) == [Rejected(cmd, reason)]
    assert s.rejected == {reason: 1}
    assert feed(s, b"< send 1 0 >") == [Send(cc(1))]  # keeps going


def test_error_replies_option():
    s = session(Mode.RAW, error_replies=True)
    assert feed(s, b"< send 123 9 >") == [Rejected(b"< send 123 9 >", "bad_count"), Reply(b"< error bad count >")]
    assert replies(feed(s, b"< send 123 x >")) == b"< error bad dlc >"


def test_fd_input_refused_on_classic_bus():
    s = session(Mode.RAW, fd_allowed=False)
    for cmd in (b"< fdsend 123 1 1 1 >", b"< sendfd 123 0 >", b"< send 123 12 " + b"0 " * 12 + b">"):
        assert feed(s, cmd) == [Rejected(cmd, "fd_not_supported")]
    assert feed(s, b"< send 123 8 " + b"0 " * 8 + b">") == [Send(cc(0x123, bytes(8)))]


# ------------------------------------------------------------------------------- BCM: cyclic jobs


def test_add_sends_at_once_then_every_interval():
    s = session(Mode.BCM)
    assert s.next_deadline_ns() is None
    assert feed(s, b"< add 1 500000 123 2 11 22 >") == [CyclicChanged()]
    assert s.next_deadline_ns() == 0
    frame = cc(0x123, b"\x11\x22")
    t0 = 1000 * SEC
    assert s.due_cyclic(t0) == [frame]
    assert s.next_deadline_ns() == t0 + 1500 * MS
    assert s.due_cyclic(t0 + 1499 * MS) == []
    assert s.due_cyclic(t0 + 1500 * MS) == [frame]
    assert s.next_deadline_ns() == t0 + 3000 * MS
    # late by more than two periods: one frame, the missed periods are skipped, the phase is kept
    assert s.due_cyclic(t0 + 7000 * MS) == [frame]
    assert s.next_deadline_ns() == t0 + 7500 * MS


def test_update_keeps_timer_delete_removes():
    s = session(Mode.BCM)
    feed(s, b"< add 0 20000 123 4 42 42 42 42 >")
    assert s.due_cyclic(0) == [cc(0x123, b"\x42" * 4)]  # first poll at t=0 works too
    assert s.next_deadline_ns() == 20 * MS
    assert feed(s, b"< update 123 3 11 22 33 >") == []
    assert s.next_deadline_ns() == 20 * MS
    assert s.due_cyclic(20 * MS) == [cc(0x123, b"\x11\x22\x33")]
    assert feed(s, b"< delete 123 >") == [CyclicChanged()]
    assert s.next_deadline_ns() is None and s.jobs == {}
    assert feed(s, b"< delete 123 >") == [Rejected(b"< delete 123 >", "no_such_job")]
    assert feed(s, b"< update 123 0 >") == [Rejected(b"< update 123 0 >", "no_such_job")]


def test_add_zero_interval_sends_once_and_readd_restarts():
    s = session(Mode.BCM)
    feed(s, b"< add 0 0 00000123 0 >")
    assert s.due_cyclic(5) == [cc(EFF | 0x123)]
    assert s.next_deadline_ns() is None and EFF | 0x123 in s.jobs
    assert s.due_cyclic(10 * SEC) == []
    feed(s, b"< add 1 0 00000123 1 ff >")  # replaces the job, sends at once again
    assert s.next_deadline_ns() == 0
    assert s.due_cyclic(20 * SEC) == [cc(EFF | 0x123, b"\xff")]
    assert s.next_deadline_ns() == 21 * SEC


def test_several_jobs_and_earliest_deadline():
    s = session(Mode.BCM)
    feed(s, b"< add 0 100000 1 0 >< add 0 30000 2 0 >< add 0 30000 00000001 0 >")
    assert len(s.jobs) == 3
    assert s.due_cyclic(0) == [cc(1), cc(2), cc(EFF | 1)]
    assert s.next_deadline_ns() == 30 * MS
    assert s.due_cyclic(30 * MS) == [cc(2), cc(EFF | 1)]
    assert s.due_cyclic(60 * MS) == [cc(2), cc(EFF | 1)]
    assert s.due_cyclic(100 * MS) == [cc(1), cc(2), cc(EFF | 1)]


def test_min_interval():
    s = session(Mode.BCM, min_interval_ns=MS)
    feed(s, b"< add 0 10 123 0 >")
    s.due_cyclic(0)
    assert s.next_deadline_ns() == MS


@pytest.mark.parametrize("cmd,reason", [
    (b"< add 0 1000000 123 0 >", "bad_interval"),
    (b"< add 34560001 0 123 0 >", "bad_interval"),
    (b"< add -1 0 123 0 >", "bad_interval"),
    (b"< add 1 0 123 9 1 2 3 4 5 6 7 8 9 >", "bad_dlc"),
    (b"< add 1 0 123 2 1 >", "bad_count"),
    (b"< add 1 0 123 >", "bad_count"),
    (b"< add 1 0 xyz 0 >", "bad_id"),
    (b"< update 123 >", "bad_count"),
    (b"< delete >", "bad_count"),
    (b"< delete 1 2 >", "bad_count"),
    (b"< filter 0 0 123 2 ff >", "bad_count"),
    (b"< filter 0 0 123 >", "bad_count"),
    (b"< subscribe 0 0 >", "bad_count"),
    (b"< subscribe 0 1000000 123 >", "bad_interval"),
    (b"< unsubscribe 123 >", "no_such_subscription"),
    (b"< unsubscribe >", "bad_count"),
])
def test_bad_bcm_commands(cmd, reason):
    s = session(Mode.BCM)
    assert feed(s, cmd) == [Rejected(cmd, reason)]
    assert s.jobs == {} and s.subscriptions == {}


def test_job_limit(monkeypatch):
    monkeypatch.setattr(scd, "MAX_JOBS", 2)
    s = session(Mode.BCM)
    feed(s, b"< add 1 0 1 0 >< add 1 0 2 0 >")
    assert feed(s, b"< add 1 0 3 0 >") == [Rejected(b"< add 1 0 3 0 >", "too_many_jobs")]
    assert feed(s, b"< add 2 0 2 0 >") == [CyclicChanged()]  # replacing is fine


def test_leaving_bcm_deletes_jobs_and_subscriptions():
    s = session(Mode.BCM)
    feed(s, b"< add 1 0 1 0 >< subscribe 0 0 2 >")
    assert feed(s, b"< rawmode >") == [CyclicChanged(), ModeChanged(Mode.RAW), Reply(b"< ok >", True)]
    assert s.jobs == {} and s.subscriptions == {} and s.next_deadline_ns() is None
    assert s.due_cyclic(10**12) == []
    feed(s, b"< bcmmode >")
    assert s.encode_frames([(cc(2), TS)]) == b""


# ----------------------------------------------------------------------------- BCM: subscriptions


def test_bcm_frame_form_and_only_subscribed_ids():
    s = session(Mode.BCM)
    assert s.encode_frames([(cc(0x123, b"\x11\x22"), SEC)]) == b""  # nothing subscribed
    assert feed(s, b"< subscribe 0 0 123 >< subscribe 0 0 00000ABC >") == []
    batch = [(cc(0x123, b"\x11\x22"), SEC), (cc(0x124, b"\x01"), SEC), (cc(EFF | 0x123), SEC),
             (cc(EFF | 0xABC), 2 * SEC), (cc(0xABC & 0x7FF), SEC), (cc(0x123), TS)]
    assert s.encode_frames(batch, now_ns=0) == (
        b"< frame 123 1.000000 11 22  >< frame 00000ABC 2.000000  >"
        + f"< frame 123 {TS_TXT}  >".encode())
    assert s.frames_encoded == 3


def test_bcm_rtr_error_and_fd_frames_never_delivered():
    s = session(Mode.BCM)
    feed(s, b"< subscribe 0 0 123 >")
    batch = [(cc(RTR | 0x123, length=2), SEC), (cc(ERR | 0x123, bytes(8)), SEC), (fd(0x123, b"\x01"), SEC)]
    assert s.encode_frames(batch, 0) == b""
    assert s.dropped == {"fd_not_enabled": 1}
    feed(s, b"< fdframes on >")
    assert s.encode_frames(batch, 0) == b""
    assert s.dropped == {"fd_not_enabled": 1, "fd_in_bcm": 1}


def test_subscribe_throttle_delivers_latest_at_interval_end():
    s = session(Mode.BCM)
    feed(s, b"< subscribe 0 100000 123 >")  # at most one frame per 100 ms
    f = [cc(0x123, bytes([i])) for i in range(5)]
    assert s.encode_frames([(f[0], 1 * SEC)], now_ns=0) == b"< frame 123 1.000000 00  >"
    assert s.next_deadline_ns() is None
    assert s.encode_frames([(f[1], 2 * SEC)], now_ns=10 * MS) == b""
    assert s.next_deadline_ns() == 100 * MS
    assert s.encode_frames([(f[2], 3 * SEC), (f[3], 4 * SEC)], now_ns=50 * MS) == b""
    assert s.due_output(99 * MS) == b""
    assert s.due_output(100 * MS) == b"< frame 123 4.000000 03  >"  # the latest, with its own timestamp
    assert s.next_deadline_ns() is None and s.due_output(10**12) == b""
    # next one within 100 ms of that delivery is held again
    assert s.encode_frames([(f[4], 5 * SEC)], now_ns=150 * MS) == b""
    assert s.next_deadline_ns() == 200 * MS
    assert s.due_output(250 * MS) == b"< frame 123 5.000000 04  >"
    assert s.encode_frames([(f[0], 6 * SEC)], now_ns=400 * MS) == b"< frame 123 6.000000 00  >"
    assert s.frames_encoded == 4


def test_throttle_uses_frame_time_without_now():
    s = session(Mode.BCM)
    feed(s, b"< subscribe 1 0 7FF >")
    a, b = cc(0x7FF, b"\x01"), cc(0x7FF, b"\x02")
    assert s.encode_frames([(a, 10 * SEC), (b, 10 * SEC + 5)]) == b"< frame 7FF 10.000000 01  >"
    assert s.next_deadline_ns() == 11 * SEC
    assert s.due_output(11 * SEC) == b"< frame 7FF 10.000000 02  >"


def test_unsubscribe_drops_pending_and_resubscribe_resets():
    s = session(Mode.BCM)
    feed(s, b"< subscribe 1 0 123 >")
    s.encode_frames([(cc(0x123), 0), (cc(0x123, b"\x01"), 0)], now_ns=0)
    assert s.next_deadline_ns() == SEC
    assert feed(s, b"< unsubscribe 123 >") == []
    assert s.next_deadline_ns() is None and s.due_output(5 * SEC) == b""
    feed(s, b"< subscribe 1 0 123 >")
    s.encode_frames([(cc(0x123), 0), (cc(0x123, b"\x01"), 0)], now_ns=0)
    feed(s, b"< subscribe 0 0 123 >")  # RX_SETUP again replaces it (and its pending frame)
    assert s.next_deadline_ns() is None
    assert s.encode_frames([(cc(0x123, b"\x02"), SEC)], 0) == b"< frame 123 1.000000 02  >"


def test_content_filter_sends_on_masked_change_only():
    s = session(Mode.BCM)
    feed(s, b"< filter 0 0 123 8 FF 00 F8 00 00 00 00 00 >")
    t = [SEC * i for i in range(10)]
    batch = [
        (cc(0x123, bytes.fromhex("1100000000000000")), t[1]),  # first: always
        (cc(0x123, bytes.fromhex("11FF07FFFFFFFFFF")), t[2]),  # only unmasked bits changed
        (cc(0x123, bytes.fromhex("1200000000000000")), t[3]),  # byte 0 changed
        (cc(0x123, bytes.fromhex("1200080000000000")), t[4]),  # byte 2 bit 3 changed
        (cc(0x123, bytes.fromhex("12000F0000")), t[5]),  # shorter frame, same masked content
        (cc(0x124, bytes.fromhex("99")), t[6]),
    ]
    assert s.encode_frames(batch, 0) == (
        b"< frame 123 1.000000 11 00 00 00 00 00 00 00  >"
        b"< frame 123 3.000000 12 00 00 00 00 00 00 00  >"
        b"< frame 123 4.000000 12 00 08 00 00 00 00 00  >")


def test_filter_short_mask_and_zero_mask():
    s = session(Mode.BCM)
    feed(s, b"< filter 0 0 123 1 FF >< filter 0 0 00000456 0 >")
    out = s.encode_frames([(cc(0x123, b"\x01\x02"), 1 * SEC), (cc(0x123, b"\x01\x03"), 2 * SEC),
                           (cc(0x123, b"\x02"), 3 * SEC), (cc(EFF | 0x456, b"\x01"), 4 * SEC),
                           (cc(EFF | 0x456, b"\x02"), 5 * SEC)], 0)
    assert out == (b"< frame 123 1.000000 01 02  >< frame 123 3.000000 02  >"
                   b"< frame 00000456 4.000000 01  >")


def test_filter_with_throttle():
    s = session(Mode.BCM)
    feed(s, b"< filter 1 500000 123 1 FF >")
    assert s.encode_frames([(cc(0x123, b"\x01"), 1)], now_ns=0) == b"< frame 123 0.000000 01  >"
    assert s.encode_frames([(cc(0x123, b"\x02"), 2), (cc(0x123, b"\x02"), 3)], now_ns=SEC) == b""
    assert s.next_deadline_ns() == 1500 * MS
    assert s.due_output(1500 * MS) == b"< frame 123 0.000000 02  >"


def test_subscription_limit(monkeypatch):
    monkeypatch.setattr(scd, "MAX_SUBSCRIPTIONS", 1)
    s = session(Mode.BCM)
    feed(s, b"< subscribe 0 0 1 >")
    assert feed(s, b"< filter 0 0 2 0 >") == [Rejected(b"< filter 0 0 2 0 >", "too_many_subscriptions")]
    assert feed(s, b"< filter 0 0 1 0 >") == []


# ---------------------------------------------------------------------------------- CONTROL mode


def test_statistics():
    s = session(Mode.CONTROL)
    assert not s.stats_due(0) and s.next_deadline_ns() is None
    assert feed(s, b"< statistics 1000 >") == [StatisticsChanged(1000)]
    assert s.statistics_ms == 1000 and s.next_deadline_ns() == 0
    assert not s.stats_due(5 * SEC)  # starts the interval
    assert s.next_deadline_ns() == 6 * SEC
    assert not s.stats_due(6 * SEC - 1)
    assert s.stats_due(6 * SEC)
    assert s.next_deadline_ns() == 7 * SEC
    assert s.stats_due(9 * SEC + 1)  # late: one message, schedule from now
    assert s.next_deadline_ns() == 10 * SEC + 1
    assert feed(s, b"< statistics 0 >") == [StatisticsChanged(0)]
    assert not s.stats_due(100 * SEC) and s.next_deadline_ns() is None


def test_statistics_off_when_leaving_control_and_bad_values():
    s = session(Mode.CONTROL)
    feed(s, b"< statistics 10 >")
    assert feed(s, b"< rawmode >") == [StatisticsChanged(0), ModeChanged(Mode.RAW), Reply(b"< ok >", True)]
    assert s.statistics_ms == 0
    feed(s, b"< controlmode >")
    for cmd, reason in ((b"< statistics x >", "bad_interval"), (b"< statistics 4294967296 >", "bad_interval"),
                        (b"< statistics 1 2 >", "bad_count")):
        assert feed(s, cmd) == [Rejected(cmd, reason)]


def test_encode_stat():
    assert encode_stat(1, 2, 3, 4) == b"< stat 1 2 3 4 >"
    assert ServerSession.encode_stat(2**32 + 5, 0, 2**32 - 1, 7) == b"< stat 5 0 4294967295 7 >"


# --------------------------------------------------------------------------------------- framing


def test_commands_split_at_every_byte_and_merged():
    stream = b"< open vcan0 >< rawmode >\n< send 123 2 1 f1 >  junk < echo ><send 1 0 >"
    s1 = ServerSession()
    merged = feed(s1, stream)
    s2 = ServerSession()
    split = []
    for i in range(len(stream)):
        split += feed(s2, stream[i:i + 1])
    assert merged == split == [
        Open("vcan0"), Reply(b"< ok >", True), ModeChanged(Mode.RAW), Reply(b"< ok >", True),
        Send(cc(0x123, b"\x01\xf1")), Reply(b"< echo >"), Send(cc(1))]
    assert s1.commands == s2.commands == 5


def test_lt_inside_command_belongs_to_it():
    s = session(Mode.RAW)  # as socketcand: from the first "<" to the first ">"
    assert feed(s, b"< send < echo >") == [Rejected(b"< send < echo >", "bad_id")]


def test_eof():
    s = session(Mode.RAW)
    s.receive_data(b"< echo >< send 1")
    s.receive_data(b"")
    assert s.next_event() == Reply(b"< echo >")
    assert s.next_event() is CLOSED
    s.receive_data(b" 0 >")  # ignored after EOF
    assert s.next_event() is CLOSED


def test_command_length_limit():
    s = session(Mode.RAW)
    ok = b"< send 1 0" + b" " * (MAX_COMMAND - 12) + b" >"
    assert len(ok) == MAX_COMMAND
    assert feed(s, ok) == [Send(cc(1))]
    s.receive_data(b"< echo >" + b"<" + b" " * (MAX_COMMAND - 1))
    assert s.next_event() == Reply(b"< echo >")
    with pytest.raises(SocketcandProtocolError) as ei:
        s.next_event()
    assert ei.value.reason == "command_too_long"
    with pytest.raises(SocketcandProtocolError):  # sticky
        s.next_event()


def test_command_too_long_detected_across_chunks():
    s = session(Mode.RAW)
    s.receive_data(b"<" + b"x" * 300)
    assert s.next_event() is NEED_DATA
    s.receive_data(b"x" * 300 + b">")
    with pytest.raises(SocketcandProtocolError):
        s.next_event()


def test_garbage_limit():
    s = session(Mode.RAW)
    for _ in range(10):  # garbage between commands is fine while each run stays short
        assert feed(s, b"\r\n" * 100 + b"< echo >") == [Reply(b"< echo >")]
    s.receive_data(b"x" * MAX_COMMAND)
    assert s.next_event() is NEED_DATA
    s.receive_data(b"y")
    with pytest.raises(SocketcandProtocolError) as ei:
        s.next_event()
    assert ei.value.reason == "command_too_long"
    s2 = session(Mode.RAW)
    s2.receive_data(b"z" * (MAX_COMMAND + 1) + b"< echo >")
    with pytest.raises(SocketcandProtocolError):
        s2.next_event()


# ------------------------------------------------------------------------------------ fuzzing


_WORDS = [b"open", b"send", b"sendrtr", b"fdsend", b"sendfd", b"add", b"update", b"delete", b"filter",
          b"subscribe", b"unsubscribe", b"muxfilter", b"rawmode", b"bcmmode", b"controlmode", b"isotpmode",
          b"echo", b"statistics", b"fdframes", b"vcan0", b"on", b"off"]
_token = st.one_of(st.sampled_from(_WORDS), st.integers(0, 0xFFFFFFFFF).map(lambda v: b"%x" % v),
                   st.integers(0, 0xFFFFFFFF).map(lambda v: b"%08X" % v), st.integers(0, 70).map(b"%d".__mod__),
                   st.binary(min_size=1, max_size=4))
_random_command = st.lists(_token, max_size=14).map(lambda ts: b"< " + b" ".join(ts) + b" >")


@st.composite
def _plausible_command(draw):
    """A frame / BCM command with mostly valid fields and a byte count near the DLC."""
    word = draw(st.sampled_from([b"send", b"sendrtr", b"fdsend", b"sendfd", b"add", b"update", b"delete",
                                 b"filter", b"subscribe", b"unsubscribe"]))
    n = draw(st.sampled_from([0, 1, 2, 8, 9, 12, 64]))
    count = max(0, n + draw(st.integers(-1, 1)))
    ival = [b"%d" % draw(st.integers(0, 3)), b"%d" % draw(st.integers(0, 1_000_000))]
    can_id = draw(st.sampled_from([b"123", b"7FF", b"00000123", b"80000001", b"1FFFFFFF", b"20000000"]))
    data = [b"%x" % draw(st.integers(0, 255)) for _ in range(count)]
    args = {b"send": [can_id, b"%d" % n, *data], b"sendrtr": [can_id, b"%d" % n],
            b"fdsend": [can_id, b"%x" % draw(st.integers(0, 255)), b"%d" % n, *data],
            b"sendfd": [can_id, b"%d" % n, *data], b"add": [*ival, can_id, b"%d" % n, *data],
            b"update": [can_id, b"%d" % n, *data], b"delete": [can_id], b"filter": [*ival, can_id, b"%d" % n, *data],
            b"subscribe": [*ival, can_id], b"unsubscribe": [can_id]}[word]
    return b"< " + b" ".join([word, *args]) + b" >"


_command = st.one_of(_random_command, _plausible_command())


def _exercise(s: ServerSession, chunks) -> list:
    events = []
    for i, chunk in enumerate(chunks):
        s.receive_data(chunk)
        try:
            events += drain(s)
        except SocketcandProtocolError:
            return events
        batch = [(cc(0x123, b"\x01"), i), (cc(EFF | 0x123), i), (fd(0x123, bytes(12)), i), (cc(ERR | 4, bytes(8)), i),
                 (cc(RTR | 0x7FF, length=3), i)]
        assert isinstance(s.encode_frames(batch, i * MS), bytes)
        for raw in s.due_cyclic(i * MS):
            assert len(raw) in (16, 72)
        assert isinstance(s.due_output(i * MS), bytes)
        s.stats_due(i * MS)
        d = s.next_deadline_ns()
        assert d is None or d >= 0
    return events


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=12))
def test_fuzz_random_bytes(chunks):
    s = ServerSession()
    _exercise(s, chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(_command, max_size=12), st.sampled_from([Mode.NO_BUS, Mode.BCM, Mode.RAW, Mode.CONTROL]),
       st.booleans())
def test_fuzz_commands(commands, mode, fd_allowed):
    s = ServerSession(fd_allowed=fd_allowed, error_replies=True) if mode is Mode.NO_BUS else \
        session(mode, fd_allowed=fd_allowed, error_replies=True)
    for ev in _exercise(s, commands):
        if isinstance(ev, Send):
            assert len(ev.raw) in (16, 72)
            if len(ev.raw) == 72:
                assert fd_allowed
        elif isinstance(ev, Reply):
            assert ev.data.startswith(b"< ") and ev.data.endswith(b" >")


@settings(max_examples=200, deadline=None)
@given(st.lists(_command, max_size=8), st.data())
def test_chunking_does_not_change_events(commands, data):
    stream = b"< open vcan0 >" + b"\n".join(commands)
    whole = ServerSession()
    expected = feed(whole, stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    s = ServerSession()
    got = []
    prev = 0
    for c in [*cuts, len(stream)]:
        if c > prev:  # b"" would mean EOF
            got += feed(s, stream[prev:c])
        prev = c
    assert got == expected


# ---------------------------------------------------------------- python-can's real client over TCP


def _serve_one(listener: socket.socket, frames: list, received: list, errors: list) -> None:
    """A minimal endpoint: session events -> socket, `< ok >` alone, frames a little after rawmode."""
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            s = ServerSession(bus_exists=lambda name: name == "vcan0")
            conn.sendall(s.greeting())
            sent_frames = False
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                s.receive_data(data)
                for ev in drain(s):
                    if isinstance(ev, Reply):
                        conn.sendall(ev.data)
                        if ev.flush_alone:
                            time.sleep(0.05)
                    elif isinstance(ev, Send):
                        received.append(ev.raw)
                if s.mode is Mode.RAW and not sent_frames:
                    conn.sendall(s.encode_frames(frames))
                    sent_frames = True
    except Exception as e:  # reported by the test
        errors.append(e)


def test_python_can_client_end_to_end():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    frames = [(cc(0x123, b"\x11\x22"), TS), (cc(EFF | 0xABCD), TS + 1000), (cc(ERR | 0x004, bytes(8)), TS),
              (fd(0x100, bytes(12)), TS), (cc(0x001), TS)]
    received: list = []
    errors: list = []
    t = threading.Thread(target=_serve_one, args=(listener, frames, received, errors), daemon=True)
    t.start()
    try:
        bus = can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel="vcan0")
        try:
            got = []
            deadline = time.monotonic() + 5
            while len(got) < 4 and time.monotonic() < deadline:
                m = bus.recv(0.5)
                if m is not None:
                    got.append(m)
            assert [(m.arbitration_id, m.is_extended_id, bytes(m.data), m.is_error_frame) for m in got] == [
                (0x123, False, b"\x11\x22", False), (0xABCD, True, b"", False), (0x004, True, b"\x00", True),
                (0x001, False, b"", False)]
            assert got[0].timestamp == float(TS_TXT)
            bus.send(can.Message(arbitration_id=0x7E0, is_extended_id=False, data=b"\x02\x01\x00"))
            bus.send(can.Message(arbitration_id=0x18DAF110, data=b""))
            deadline = time.monotonic() + 5
            while len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            bus.shutdown()
        t.join(5)
    finally:
        listener.close()
    assert not errors
    assert received == [cc(0x7E0, b"\x02\x01\x00"), cc(EFF | 0x18DAF110)]
