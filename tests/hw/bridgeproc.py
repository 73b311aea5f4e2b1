"""A canbridge process and a native-protocol TCP peer, for the tests on real controllers: the bridge runs as
users run it (`python -m bridge ...`, its own process, so its CPU time can be read), the test is the
network side (bridge.codec.native over loopback TCP) and watches the buses with CAN_RAW sockets or candump."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bridge.codec import native
from bridge.codec import socketcan as sc

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def numbered(n: int, start: int = 0, can_id: int = 0x100) -> list[bytes]:
    """n classic frames whose first 4 data bytes are their number (start, start+1, ...), IDs cycling over 16."""
    return [sc.pack_can(can_id + (i % 16), i.to_bytes(4, "big")) for i in range(start, start + n)]


def number_of(raw: bytes) -> int:
    return int.from_bytes(sc.unpack(raw)[4][:4], "big")


class Bridge:
    """`python -m bridge ARGS`, output in tmp_path/bridge.log; counters via SIGUSR1."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / "bridge.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bridge", *args], stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def counters(self, until=lambda c: True, timeout: float = 60.0) -> dict:
        """The bridge's counters (one SIGUSR1 each try) until until(counters) holds; the last ones, or
        AssertionError with the log after timeout seconds."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            seen = len(re.findall(r"counters: (\{.*\})\n", self.text()))
            self.proc.send_signal(signal.SIGUSR1)
            while len(found := re.findall(r"counters: (\{.*\})\n", self.text())) <= seen:  # whole lines only
                assert self.proc.poll() is None, f"the bridge died:\n{self.text()}"
                assert time.monotonic() < deadline, f"no counters from the bridge:\n{self.text()}"
                time.sleep(0.05)
            last = json.loads(found[-1])
            if until(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"counters never matched: {json.dumps(last)}\n{self.text()}")
            time.sleep(0.2)

    def cpu_s(self) -> float:
        """User + system CPU seconds the bridge process has used (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


class Peer:
    """A native-protocol TCP client of a bridge's tcp-listen:// (no heartbeat asked, so never timed out)."""

    def __init__(self, port: int, channels: tuple[str, ...] = ("a",), timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:  # the bridge takes a few seconds to start in the VM
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.sendall(native.STREAM_PREAMBLE + native.encode_hello(native.Hello(channels=channels)))
        self.decoder = native.StreamDecoder()
        self.frames: list[tuple[int, bytes]] = []  # (channel, raw) received, in order

    def send(self, channel: int, raws: list[bytes]) -> None:
        self.sock.sendall(native.encode_frames(channel, [(raw, 0) for raw in raws]))

    def receive(self, seconds: float = 0.2) -> list[tuple[int, bytes]]:
        """Read for `seconds` (the bridge's heartbeats keep the socket readable: a total, not an idle time);
        the frames received so far, in order."""
        deadline = time.monotonic() + seconds
        while select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            data = self.sock.recv(1 << 16)
            if not data:
                break
            for event in self.decoder.receive_all(data):
                if isinstance(event, native.Frames):
                    self.frames += [(event.channel, raw) for raw, _ts in event.frames]
        return self.frames

    def wait_frames(self, n: int, timeout: float = 30.0) -> list[tuple[int, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.receive(0.1)) < n and time.monotonic() < deadline:
            pass
        return self.frames

    def close(self) -> None:
        self.sock.close()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Candump:
    """candump -L on one interface into a file (C: keeps up with a burst where a Python reader would not)."""

    def __init__(self, tmp_path: Path, iface: str, count: int | None = None) -> None:
        self.path = tmp_path / f"candump-{iface}-{time.monotonic_ns()}.log"
        argv = ["candump", "-L", "-r", str(32 << 20), iface]
        if count:
            argv[1:1] = ["-n", str(count)]
        with open(self.path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        time.sleep(0.3)  # its socket is bound before the first frame

    def frames(self) -> list[bytes]:
        out = []
        for line in self.path.read_text().splitlines():
            can_id, _, data = line.split()[2].partition("#")
            out.append(sc.pack_can(int(can_id, 16), bytes.fromhex(data)))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bus_stats(name: str) -> dict[str, int]:
    """/sys/class/net/NAME/statistics/* as ints (rx_over_errors, tx_dropped, ...)."""
    stats = Path(f"/sys/class/net/{name}/statistics")
    return {p.name: int(p.read_text()) for p in stats.iterdir()}
