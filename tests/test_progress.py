"""Progress on stderr (bridge/tools/logs/progress.py): `canbridge capture` counts per interface (real AF_PACKET
capture of lo, needs root), plain lines in pipes and under TERM=dumb, a live rich line on a terminal (a real
pseudo-terminal), nothing with -q; the replay loop's progress callbacks over a real socket."""

from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from bridge.codec import socketcan as sc
from bridge.tools.logs.progress import rate_text
from bridge.tools.logs.replay import play

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="capture needs root (AF_PACKET)")


def _traffic(stop: threading.Event) -> None:
    """UDP datagrams to 127.0.0.1:29600 (in the capture's default filter) until stopped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while not stop.is_set():
            s.sendto(b"x", ("127.0.0.1", 29600))
            time.sleep(0.01)


def _capture(tmp_path, *extra, env=None, tty=False) -> str:
    argv = [sys.executable, "-m", "bridge", "capture", "-i", "lo", "-w", str(tmp_path / "lo.pcapng"), "-a", "3",
            *extra]
    env = dict(os.environ, CANBRIDGE_PROGRESS_S="0.5", **(env or {}))
    stop = threading.Event()
    sender = threading.Thread(target=_traffic, args=(stop,))
    sender.start()
    try:
        if not tty:
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stderr
        master, slave = pty.openpty()
        proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        proc.wait(30)
        os.close(master)
        return out.decode(errors="replace")
    finally:
        stop.set()
        sender.join()


@needs_root
def test_capture_plain_lines_in_a_pipe(tmp_path):
    err = _capture(tmp_path)
    counts = [int(n.replace(",", "")) for n in re.findall(r"^canbridge capture: lo: ([\d,]+) packets$", err, re.M)]
    assert len(counts) >= 3, err
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0, err
    assert "\x1b[" not in err


@needs_root
def test_capture_quiet(tmp_path):
    assert _capture(tmp_path, "-q") == ""


@needs_root
def test_capture_live_on_a_terminal_plain_under_term_dumb(tmp_path):
    live = _capture(tmp_path, env={"TERM": "xterm-256color"}, tty=True)
    assert "\x1b[" in live and re.search(r"lo: [\d,]+ packets", live), live  # redrawn in place by rich
    assert not re.search(r"^canbridge capture: lo: [\d,]+ packets", live, re.M), live
    dumb = _capture(tmp_path, env={"TERM": "dumb"}, tty=True)
    assert len(re.findall(r"canbridge capture: lo: [\d,]+ packets", dumb)) >= 3, dumb


def test_replay_loop_reports_progress_over_a_real_socket():
    """play() sends every frame with its schedule and tells how many are done."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    frames = [(i * 2_000_000, sc.pack_can(0x100 + i % 0x100, bytes([i & 0xFF]))) for i in range(600)]
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(b.recv(16) for _ in range(2 * len(frames))))
    reader.start()
    seen: list[int] = []
    start = time.monotonic()
    play(a, frames, 1.0, seen.append)
    took = time.monotonic() - start
    assert 1.19 < took < 3.0  # 599 gaps of 2 ms
    assert seen == sorted(seen) and seen[-1] >= 512 and seen[0] <= 1
    seen.clear()
    play(a, frames, 0, seen.append)  # flat out: every PROGRESS_EVERY frames
    assert seen == [1, 257, 513]
    reader.join(10)
    assert got == [raw for _, raw in frames] * 2
    a.close()
    b.close()


def test_rate_text():
    assert rate_text(12_345, 76_821, 3.0) == "12,345/76,821 frames (16 %), 4,115 frames/s, 3.0 s"
    assert rate_text(5, None, 0, "packets") == "5 packets, 0 packets/s, 0.0 s"


def test_demo_progress_follows_the_replay(monkeypatch):
    """The demo counts the frames rig.run_traffic's replay takes (probe.replay over a real socket here):
    plain lines with frames done and rate, timed from the first frame."""
    import io

    from bridge.tools.logs import probe
    from bridge.tools.rig.demo import _Counted
    from bridge.tools.logs.progress import Progress

    monkeypatch.setenv("CANBRIDGE_PROGRESS_S", "0.3")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    frames = [(i * 1_000_000, sc.pack_can(0x100, b"x")) for i in range(1000)]
    reader = threading.Thread(target=lambda: [b.recv(16) for _ in frames])
    reader.start()
    out = io.StringIO()
    p = Progress("canbridge demo: tcp", stream=out)
    time.sleep(0.5)  # path set-up time must not count
    counted = _Counted(frames, lambda i: p.restart() if i == 0 else p.show(lambda: rate_text(i, len(frames),
                                                                                              p.elapsed())))
    probe.replay(a, counted, 1.0)
    reader.join(10)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2, lines
    done = [int(m.group(1).replace(",", "")) for m in (re.search(r": ([\d,]+)/1,000 frames", x) for x in lines)]
    assert done == sorted(done) and done[0] > 0
    rates = [int(m.group(1).replace(",", "")) for m in (re.search(r"([\d,]+) frames/s", x) for x in lines)]
    assert all(700 < r < 1300 for r in rates), lines  # 1000 frames/s recorded; set-up time not counted
    a.close()
    b.close()
