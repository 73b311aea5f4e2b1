"""Log files in every python-can format (bridge/tools/logs/logfiles.py), `canbridge replay` on bad files and
`canbridge dump -f/-l` into each format (from a fake bridge over loopback: no CAN needed on the host)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import can
import pytest

from bridge.frame import CanFrame
from bridge.tools.logs.logfiles import LogFileError, LogWriter, formats, read_frames
from tests.fakebridge import FakeBridge

TS0 = 1_700_000_000_000_000_000
FRAMES = [
    CanFrame(0x123, b"\x11\x22"),
    CanFrame(0x1ABCDEF0, b"\xaa" * 8, is_extended=True),
    CanFrame(0x7FF, b"", is_remote=True, length=3),
    CanFrame(0x000, b""),
    CanFrame(0x456, bytes(range(12)), is_fd=True, brs=True),
    CanFrame(0x18DAF110, bytes(range(64)), is_extended=True, is_fd=True, esi=True),
]
# what each python-can format keeps: csv/db store no FD flags (BRS/ESI lost; FD inferred from the length);
# python-can's .trc writer takes no RTR and no FD frames (counted as dropped)
KEEPS_FLAGS = {".csv": False, ".db": False}
REFUSES = {".trc": lambda f: f.is_fd or f.is_remote}
HAS_ASAMMDF = importlib.util.find_spec("asammdf") is not None
WRITE_FORMATS = [f for f in formats("write") if f != ".mf4"] + [
    pytest.param(".mf4", marks=pytest.mark.skipif(not HAS_ASAMMDF, reason="asammdf not installed (python-can[mf4])"))]


def _expected(ext: str) -> list[CanFrame]:
    out = [f for f in FRAMES if not REFUSES.get(ext, lambda f: False)(f)]
    if not KEEPS_FLAGS.get(ext, True):
        out = [CanFrame(f.can_id, f.data, f.is_extended, f.is_remote, f.is_error, f.is_fd, length=f.length)
               for f in out]
    return out


def _write_ours(path: Path) -> LogWriter:
    w = LogWriter(path)
    for i, f in enumerate(FRAMES):
        w.write(TS0 + i * 1_234_567, "vcan0", f.to_raw())
    w.close()
    return w


def _same(got: list[tuple[int, str, bytes]], want: list[CanFrame], ext: str) -> None:
    """Same frames, same spacing (to 2 us: float seconds in python-can's formats)."""
    assert [CanFrame.from_raw(raw) for _, _, raw in got] == want
    base = got[0][0]
    deltas = [ts - base for ts, _, _ in got]
    kept = [i for i, f in enumerate(FRAMES) if not REFUSES.get(ext, lambda f: False)(f)]
    want_deltas = [(i - kept[0]) * 1_234_567 for i in kept]
    assert all(abs(a - b) < 2_000 for a, b in zip(deltas, want_deltas)), (deltas, want_deltas)


@pytest.mark.parametrize("ext", WRITE_FORMATS)
def test_round_trip_ours(tmp_path, ext):
    """Written by LogWriter, read back by read_frames: every frame the format can hold, in order."""
    path = tmp_path / f"t{ext}"
    w = _write_ours(path)
    assert w.dropped == len(FRAMES) - len(_expected(ext))
    _same(read_frames(path), _expected(ext), ext)


@pytest.mark.parametrize("ext", WRITE_FORMATS)
def test_against_python_can(tmp_path, ext):
    """Ours written -> python-can's LogReader reads the same frames; python-can's Logger written -> ours reads them."""
    ours = tmp_path / f"ours{ext}"
    _write_ours(ours)
    theirs_read = [CanFrame.from_message(m) for m in can.LogReader(ours)]
    assert [(f.can_id, f.data, f.is_extended, f.is_remote) for f in theirs_read] == \
        [(f.can_id, f.data, f.is_extended, f.is_remote) for f in _expected(ext)]

    theirs = tmp_path / f"theirs{ext}"
    with can.Logger(theirs) as logger:
        for i, f in enumerate(_expected(ext)):
            logger.on_message_received(CanFrame(**{**_fields(f), "timestamp_ns": TS0 + i * 1000}).to_message("can0"))
    got = [CanFrame.from_raw(raw) for _, _, raw in read_frames(theirs)]
    want = _expected(ext)
    if ext == ".log":  # python-can's candump writer drops an RTR frame's length ("7FF#R")
        want = [CanFrame(f.can_id, is_remote=True, length=0) if f.is_remote else f for f in want]
    assert got == want


def _fields(f: CanFrame) -> dict:
    return {k: getattr(f, k) for k in f.__dataclass_fields__}


def test_candump_log_uses_our_codec_and_keeps_len8_dlc(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("(1700000000.000001) can0 123#1122334455667788_C\n(1700000000.000002) vcan1 456##311\n")
    got = read_frames(path)
    assert [(ts, iface) for ts, iface, _ in got] == [(1700000000000001000, "can0"), (1700000000000002000, "vcan1")]
    assert CanFrame.from_raw(got[0][2]).len8_dlc == 0xC


BAD = {
    "garbage.blf": os.urandom(300),
    "garbage.asc": b"\xff\xfe not text \x00\x81",
    "garbage.trc": b"\xc3\x28\xa0\xa1",
    "garbage.csv": b"timestamp,arbitration_id\n1,2\n",
    "garbage.db": b"SQLite format 2\x00" + bytes(100),
    "garbage.log": b"(1700000000.000001) can0 123#1\n",
    "binary.log": b"\x9e\xff\x00",
    "garbage.mf4": b"not an MDF file",
    "trace.xyz": b"",
    "missing.blf": None,
}


def _truncated(tmp_path: Path, ext: str) -> Path:
    full = tmp_path / f"full{ext}"
    w = LogWriter(full)
    for i in range(2000):
        w.write(TS0 + i * 1_000_000, "vcan0", CanFrame(i & 0x7FF, bytes([i & 0xFF] * 8)).to_raw())
    w.close()
    data = full.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2 + 3])
    return cut


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_is_one_line_and_exit_2(tmp_path, name):
    path = tmp_path / name
    if BAD[name] is not None:
        path.write_bytes(BAD[name])
    with pytest.raises(LogFileError, match=str(path)):
        read_frames(path)
    _replay_refuses(path)


@pytest.mark.parametrize("ext", [".blf", ".asc", ".trc", ".csv", ".db", ".log"])
def test_truncated_file_is_refused(tmp_path, ext):
    path = _truncated(tmp_path, ext)
    with pytest.raises(LogFileError, match="cut"):
        read_frames(path)
    _replay_refuses(path)


def _replay_refuses(path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bridge", "replay", str(path), "vcan0"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("canbridge replay: ") and "Traceback" not in out.stderr


def test_replay_reads_a_blf_before_opening_the_interface(tmp_path):
    """A valid .blf is read (on a host without CAN the interface then fails to open: exit 1, not 2)."""
    path = tmp_path / "ok.blf"
    _write_ours(path)
    out = subprocess.run([sys.executable, "-m", "bridge", "replay", str(path), "vcan0"], capture_output=True,
                         text=True, timeout=60)
    if out.returncode == 0:  # a host with vcan0
        assert "replayed 6 frames" in out.stderr
    else:
        assert out.returncode == 1 and "cannot open vcan0" in out.stderr, out.stderr


@pytest.fixture
def bridge():
    b = FakeBridge(first=[(f.to_raw(), TS0 + i * 1_234_567) for i, f in enumerate(FRAMES)])
    yield b
    b.close()


@pytest.mark.parametrize("ext", [f for f in formats("write") if f != ".mf4"])
def test_dump_f_writes_every_format(bridge, tmp_path, ext):
    """`canbridge dump -f FILE` from a (fake) remote bridge: python-can reads the file back."""
    path = tmp_path / f"dump{ext}"
    out = subprocess.run([sys.executable, "-m", "bridge", "dump", "-f", str(path), "-n", str(len(FRAMES)), "-T", "5000",
                          bridge.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # -f implies -s 2
    assert out.stderr.startswith(f"Disabled standard output while logging.\nEnabling Logfile '{path}'\n")
    want = _expected(ext)
    assert [CanFrame.from_raw(raw) for _, _, raw in read_frames(path)] == want
    if len(want) < len(FRAMES):
        assert f"{len(FRAMES) - len(want)} frames not written" in out.stderr


def test_dump_l_names_the_file_like_candump(bridge, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bridge", "dump", "-l", "-s", "0", "-n", str(len(FRAMES)), "-T", "5000",
                          bridge.url], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [log] = list(tmp_path.glob("candump-*.log"))
    assert out.stderr == f"Warning: Console output active while logging!\nEnabling Logfile '{log.name}'\n"
    assert len(out.stdout.splitlines()) == len(FRAMES)
    assert [CanFrame.from_raw(raw) for _, _, raw in read_frames(log)] == FRAMES
    assert log.read_text().splitlines()[0] == "(1700000000.000000) vcan0 123#1122"


def test_dump_f_unknown_format_is_exit_2(bridge, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bridge", "dump", "-f", str(tmp_path / "x.pcap"), bridge.url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown log format '.pcap'" in out.stderr and "Traceback" not in out.stderr
