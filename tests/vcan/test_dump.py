"""`canbridge dump` against the real candump (can-utils) on vcan0: the same frames, the same bytes.

Both tools read the same frames with the same kernel RX timestamps (one skb, one stamp for every
socket), so every output format, timestamps included, must match byte for byte."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest

from bridge.codec.candump import read_log

pytestmark = pytest.mark.vcan

DUMP = [sys.executable, "-m", "bridge", "dump"]
PORT = 29600
START_TIMEOUT_S = 60  # a Python start in the test VM takes seconds

# classic, EFF, RTR, CAN FD with BRS/ESI, error frames (received only with a #ERRMASK filter)
ZOO = [
    "123#11223344", "123#", "7FF#0102030405060708", "12345678#AA", "00000001#BB", "123#R", "123#R3",
    "123##0", "123##1112233", "123##2AABBCC", "123##3000102030405060708090A0B",
    "1ABCDEF0##1" + "11223344556677889900AABBCCDDEEFF" * 3,
    "456#48656C6C6F2021", "20000080#0000000000000000", "20000006#0102030405060708",
    "20000008#0000030A00000000", "20000200#0000000000000000", "20000400#0000000000000000", "456#DEAD",
]
N_ERRORS = 5
CANGEN = 40  # + random frames of every kind (cangen -m)


def _receivers(iface: str) -> int:
    """CAN_RAW receivers registered on iface (a socket bound there has its filters listed)."""
    return sum(line.split()[:1] == [iface]
               for p in Path("/proc/net/can").glob("rcvlist_*") for line in p.read_text().splitlines())


def _start(argv: list[str], out: Path, iface: str = "vcan0", env=None) -> subprocess.Popen:
    """Start a reader and wait until its CAN socket is bound to iface."""
    before = _receivers(iface)
    proc = subprocess.Popen(argv, stdout=open(out, "wb"), stderr=open(f"{out}.err", "wb"), env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _receivers(iface) <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{argv} did not start: {Path(f'{out}.err').read_text()}")
        time.sleep(0.05)
    return proc


def _send(frames, iface="vcan0") -> None:
    for f in frames:
        subprocess.run(["cansend", iface, f], check=True)


def _finish(procs, timeout=120) -> None:
    for p in procs:
        assert p.wait(timeout) == 0, p.args


def test_every_format_matches_candump(tmp_path):
    """Screen format (SFF indentation after the first EFF frame, FD, RTR, ERRORFRAME), -t a/d/z/A,
    -L, -x, -a, -e and -n, all with an error filter, against candump on the same traffic."""
    n = len(ZOO) + CANGEN
    modes = [[], ["-L"], ["-t", "a"], ["-t", "d"], ["-t", "z", "-x"], ["-t", "A", "-a", "-e"], ["-L", "-x"]]
    procs = []
    for i, mode in enumerate(modes):
        args = [*mode, "-n", str(n), "vcan0,#FFFFFFFF"]
        procs.append(_start(["candump", *args], tmp_path / f"candump{i}"))
        procs.append(_start([*DUMP, *args], tmp_path / f"dump{i}"))
    _send(ZOO)
    subprocess.run(["cangen", "vcan0", "-m", "-n", str(CANGEN), "-g", "1"], check=True)
    _finish(procs)
    for i, mode in enumerate(modes):
        expected = (tmp_path / f"candump{i}").read_bytes()
        got = (tmp_path / f"dump{i}").read_bytes()
        assert got == expected, f"mode {mode}:\n{got.decode()}\n---- candump:\n{expected.decode()}"
        assert expected.count(b"\n") >= n
    assert b"remote request" in (tmp_path / "dump0").read_bytes()
    assert b"protocol-violation{{single-bit-error,frame-format-error}{data-field}}" in (tmp_path / "dump5").read_bytes()
    # the invalid error class: candump and we both complain on stderr
    assert b"Error class 0x400 is invalid" in (tmp_path / "dump5.err").read_bytes()


def test_filters_and_multiple_interfaces(tmp_path, vcan1):
    specs = [["vcan0,123:7FF"], ["vcan0,123~7FF"], ["vcan0,100:700,12345678:1FFFFFFF", "vcan1,321:7FF"]]
    counts = [8, len(ZOO) - N_ERRORS - 8, 8 + 1 + 1]
    procs = []
    for i, (spec, n) in enumerate(zip(specs, counts)):
        args = ["-L", "-n", str(n), *spec]
        procs.append(_start(["candump", *args], tmp_path / f"candump{i}"))
        procs.append(_start([*DUMP, *args], tmp_path / f"dump{i}"))
    _send(ZOO)
    _send(["320#01", "321#02"], vcan1)
    _finish(procs)
    for i in range(len(specs)):
        got, expected = (tmp_path / f"dump{i}").read_text(), (tmp_path / f"candump{i}").read_text()
        assert got == expected, specs[i]
    assert all(" 123#" in line or " 123##" in line for line in (tmp_path / "dump0").read_text().splitlines())
    assert "vcan1 321#02" in (tmp_path / "dump2").read_text()


def test_log_output_is_read_by_python_can_and_replayed_by_canplayer(tmp_path, vcan1):
    """-L output: bridge's own reader, python-can's LogReader and canplayer (onto vcan1) read it."""
    frames = [f for f in ZOO if not f.startswith("2000")] + ["1ABCDEF0##2" + "AB" * 64]
    log = tmp_path / "dump.log"
    dump = _start([*DUMP, "-L", "-n", str(len(frames)), "vcan0"], log)
    _send(frames)
    _finish([dump])
    ours = [raw for _ts, _iface, raw in read_log(log)]
    assert len(ours) == len(frames)
    msgs = list(can.LogReader(log))
    assert [m.arbitration_id for m in msgs] == [int(f.split("#")[0], 16) for f in frames]
    assert [m.is_fd for m in msgs] == ["##" in f for f in frames]
    assert msgs[-1].error_state_indicator and not msgs[-1].bitrate_switch and bytes(msgs[-1].data) == b"\xab" * 64

    replay = tmp_path / "replay.log"
    rec = _start(["candump", "-L", "-n", str(len(frames)), vcan1], replay, iface=vcan1)
    subprocess.run(["canplayer", "-t", "-I", str(log), f"{vcan1}=vcan0"], check=True, timeout=60)
    _finish([rec])
    assert [raw for _ts, _iface, raw in read_log(replay)] == ours


def test_remote_dump_matches_candump(tmp_path):
    """`canbridge dump -L tcp://.../vcan0` shows the gateway's kernel RX timestamps: the lines
    equal candump's on the gateway's interface."""
    bridge = subprocess.Popen([sys.executable, "-m", "bridge", "vcan0", f"tcp-listen://127.0.0.1:{PORT}"],
                              stdout=open(tmp_path / "bridge.log", "wb"), stderr=subprocess.STDOUT)
    out = tmp_path / "remote"
    frames = [f for f in ZOO if not f.startswith("2000")]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the bridge must be listening before the dump connects
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                assert bridge.poll() is None and time.monotonic() < deadline, (tmp_path / "bridge.log").read_text()
                time.sleep(0.2)
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # to see the warm-up frame arrive
        dump = subprocess.Popen([*DUMP, "-L", f"tcp://127.0.0.1:{PORT}/vcan0"], env=env,
                                stdout=open(out, "wb"), stderr=open(f"{out}.err", "wb"))
        while "7FE#" not in out.read_text():  # warm-up: frames flow end to end
            assert dump.poll() is None and time.monotonic() < deadline, Path(f"{out}.err").read_text()
            _send(["7FE#"])
            time.sleep(0.3)
        candump = _start(["candump", "-L", "-n", str(len(frames)), "vcan0"], tmp_path / "candump")
        _send(frames)
        _finish([candump])
        expected = (tmp_path / "candump").read_text().splitlines()
        while len([x for x in out.read_text().splitlines() if "7FE#" not in x]) < len(frames):
            assert time.monotonic() < deadline + 60, out.read_text()
            time.sleep(0.2)
        dump.send_signal(signal.SIGINT)
        assert dump.wait(30) == 0
        got = [x for x in out.read_text().splitlines() if "7FE#" not in x]
        assert got == expected
    finally:
        bridge.terminate()
        bridge.wait(30)


def test_remote_filter_and_bad_interface(tmp_path):
    r = subprocess.run([*DUMP, "tcp://127.0.0.1:1/vcan0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Connection refused" in r.stderr
    r = subprocess.run([*DUMP, "vcan9"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "vcan9" in r.stderr
    r = subprocess.run([*DUMP, "vcan0,12G:7FF"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "12G" in r.stderr


def test_sigint_and_broken_pipe_exit_cleanly(tmp_path):
    dump = _start([*DUMP, "vcan0"], tmp_path / "out")
    dump.send_signal(signal.SIGINT)
    assert dump.wait(30) == 0
    assert (tmp_path / "out.err").read_bytes() == b""
    # | head -n 1: the reader goes away while frames keep coming
    before = _receivers("vcan0")
    pipe = subprocess.Popen(["bash", "-c", f"{' '.join(DUMP)} vcan0 | head -n 1; exit ${{PIPESTATUS[0]}}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _receivers("vcan0") <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["cangen", "vcan0", "-n", "20000", "-g", "0", "-p", "10"], check=True, timeout=120)
    stdout, stderr = pipe.communicate(timeout=60)
    assert stdout.count(b"\n") == 1 and stderr == b"", stderr.decode()
    assert pipe.returncode == 0


# ------------------------------------------------------------------ candump -l, -s, -H, -r, -D (issue 14)

def _start_in(argv: list[str], cwd: Path, iface: str = "vcan0") -> subprocess.Popen:
    """_start with a working directory of its own (candump -l writes candump-DATE.log there)."""
    cwd.mkdir(exist_ok=True)
    before = _receivers(iface)
    proc = subprocess.Popen(argv, cwd=cwd, stdout=open(cwd / "stdout", "wb"), stderr=open(cwd / "stderr", "wb"))
    deadline = time.monotonic() + START_TIMEOUT_S
    while _receivers(iface) <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{argv} did not start: {(cwd / 'stderr').read_text()}")
        time.sleep(0.05)
    return proc


def _logfile(cwd: Path) -> Path:
    [log] = list(cwd.glob("candump-*.log"))
    return log


def test_logfile_silent_modes_hw_timestamps_and_rcvbuf_match_candump(tmp_path):
    """-l (the log file, its name pattern and the stderr notices), -l -x, -l -s 0 (screen output too),
    -s 1 (animation), -s 2, -H -L (hardware timestamps: none on vcan), -r: byte for byte as candump."""
    n = len(ZOO) + CANGEN
    modes = [["-l"], ["-l", "-x"], ["-l", "-s", "0", "-t", "a"], ["-s", "1"], ["-s", "2", "-L"], ["-H", "-L"],
             ["-H", "-t", "a"], ["-r", "300000", "-L"]]
    procs = []
    for i, mode in enumerate(modes):
        args = [*mode, "-n", str(n), "vcan0,#FFFFFFFF"]
        procs.append(_start_in(["candump", *args], tmp_path / f"candump{i}"))
        procs.append(_start_in([*DUMP, *args], tmp_path / f"dump{i}"))
    _send(ZOO)
    subprocess.run(["cangen", "vcan0", "-m", "-n", str(CANGEN), "-g", "1"], check=True)
    _finish(procs)
    for i, mode in enumerate(modes):
        theirs, ours = tmp_path / f"candump{i}", tmp_path / f"dump{i}"
        assert (ours / "stdout").read_bytes() == (theirs / "stdout").read_bytes(), mode
        if "-l" in mode:
            log_theirs, log_ours = _logfile(theirs), _logfile(ours)
            assert log_ours.read_bytes() == log_theirs.read_bytes(), mode
            assert log_theirs.read_text().count("\n") == n
            err = (ours / "stderr").read_text().replace(log_ours.name, log_theirs.name)
            assert err == (theirs / "stderr").read_text(), mode
        else:
            assert (ours / "stderr").read_bytes() == (theirs / "stderr").read_bytes(), mode
    assert b"(0000000000.000000)" in (tmp_path / "dump5" / "stdout").read_bytes()  # -H on vcan: no hardware clock


def test_interface_down_exits_unless_D(tmp_path, vcan1):
    """candump 2023.03 exits 1 with "read: Network is down" when the interface goes down; with -D it
    says "IFACE: interface down", waits and prints what comes after the interface is up again. We do the same."""
    procs = {}
    for name, argv in {"candump": ["candump", "-L"], "dump": DUMP + ["-L"]}.items():
        procs[name] = _start_in([*argv, vcan1], tmp_path / name, vcan1)
        procs[f"{name}-D"] = _start_in([*argv, "-D", "-n", "1", vcan1], tmp_path / f"{name}-D", vcan1)
    try:
        subprocess.run(["ip", "link", "set", vcan1, "down"], check=True)
        for name in ("candump", "dump"):
            assert procs[name].wait(60) == 1, name
        assert (tmp_path / "dump" / "stderr").read_text() == (tmp_path / "candump" / "stderr").read_text()
        assert (tmp_path / "dump" / "stderr").read_text() == "read: Network is down\n"
        time.sleep(1)
        assert procs["candump-D"].poll() is None and procs["dump-D"].poll() is None
        assert (tmp_path / "dump-D" / "stderr").read_text() == (tmp_path / "candump-D" / "stderr").read_text()
    finally:
        subprocess.run(["ip", "link", "set", vcan1, "up"], check=True)
    _send(["321#0102"], vcan1)
    _finish([procs["candump-D"], procs["dump-D"]])
    assert (tmp_path / "dump-D" / "stdout").read_bytes() == (tmp_path / "candump-D" / "stdout").read_bytes()
    assert b"321#0102" in (tmp_path / "dump-D" / "stdout").read_bytes()


def test_dump_f_blf_and_replay_of_blf(tmp_path, vcan1):
    """`dump -f trace.blf` records vcan0 through python-can's BLF writer; `canbridge replay trace.blf vcan1`
    plays it: candump on vcan1 sees the same frames."""
    frames = [f for f in ZOO if not f.startswith("2000")]
    blf = tmp_path / "trace.blf"
    dump = _start([*DUMP, "-f", str(blf), "-n", str(len(frames)), "vcan0"], tmp_path / "dump")
    _send(frames)
    _finish([dump])
    assert len(list(can.LogReader(blf))) == len(frames)
    seen = _start(["candump", "-L", "-n", str(len(frames)), vcan1], tmp_path / "seen", iface=vcan1)
    r = subprocess.run([sys.executable, "-m", "bridge", "replay", str(blf), vcan1, "--speed", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _finish([seen])
    sent = [candump_frame for candump_frame in frames]
    got = [line.split()[2] for line in (tmp_path / "seen").read_text().splitlines()]
    assert [g.split("#")[0] for g in got] == [s.split("#")[0] for s in sent]
