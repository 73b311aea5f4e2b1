"""A two-host test rig inside one kernel: network namespaces "gateway" and "remote" joined by a
veth pair (10.200.0.1 <-> 10.200.0.2), each with its own vcan0 (MTU 72), and a canbridge
process on each side. Needs root and a kernel with vcan, veth and netns (the test VM has them).

Used by `canbridge demo`, the end-to-end tests and benchmarks/throughput.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bridge.codec import native
from bridge.tools.logs import probe
from bridge.hw import netns

GW_ADDR = "10.200.0.1"
REMOTE_ADDR = "10.200.0.2"
TCP_PORT = native.DEFAULT_PORT
UDP_PORT = 29601
MQTT_PORT = 1883  # Mosquitto in the gateway's namespace (bridge/tools/rig/broker.py)
MQTT_PREFIX = "demo"


TRANSPORTS = ("tcp", "udp", "cannelloni+tcp", "cannelloni+udp", "mqtt")


def bridge_args(transport: str, side: str) -> list[str]:
    """canbridge arguments for one side of the rig; transport one of TRANSPORTS. TCP: the
    gateway listens, the remote connects."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport == "mqtt":  # gateway -> broker -> remote (source=gateway/vcan0 mirrors it onto its vcan0)
        peer = f"mqtt://{GW_ADDR}:{MQTT_PORT}/{MQTT_PREFIX}?gateway={side}"
        return ["vcan0", peer if side == "gateway" else f"{peer}&source=gateway/vcan0&read_only=0"]
    protocol, plus, kind = transport.rpartition("+")  # "cannelloni", "+", "tcp" or "", "", "udp"
    if kind == "tcp":
        scheme = f"{protocol}{plus}tcp-listen" if side == "gateway" else transport
        peer = f"{scheme}://{GW_ADDR}:{TCP_PORT}"
    else:
        me, other = (GW_ADDR, REMOTE_ADDR) if side == "gateway" else (REMOTE_ADDR, GW_ADDR)
        peer = f"{transport}://{other}:{UDP_PORT}?bind={me}:{UDP_PORT}"
    return ["vcan0", peer]


class Rig:
    """Context manager: creates the namespaces on enter, deletes them on exit."""

    def __init__(self, netem: str | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.gw = f"cbgw{tag}"
        self.remote = f"cbrm{tag}"
        self.netem = netem  # e.g. "delay 5ms loss 1%": applied on the gateway's veth
        self.logdir = Path(tempfile.mkdtemp(prefix="canbridge-rig-"))
        self.procs: list[subprocess.Popen] = []
        self.broker = None  # RigBroker of transport mqtt

    def __enter__(self) -> Rig:
        for ns in (self.gw, self.remote):
            netns.ip("netns", "add", ns)
        try:
            netns.ip("link", "add", "veth0", "netns", self.gw, "type", "veth", "peer", "veth0", "netns", self.remote)
            for ns, addr in ((self.gw, GW_ADDR), (self.remote, REMOTE_ADDR)):
                netns.ip("addr", "add", f"{addr}/24", "dev", "veth0", netns=ns)
                netns.ip("link", "set", "lo", "up", netns=ns)
                netns.ip("link", "set", "veth0", "up", netns=ns)
                netns.ip("link", "add", "vcan0", "type", "vcan", netns=ns)
                netns.ip("link", "set", "vcan0", "mtu", "72", "up", netns=ns)
            if self.netem:
                subprocess.run(
                    ["ip", "netns", "exec", self.gw, "tc", "qdisc", "add", "dev", "veth0", "root", "netem",
                     *self.netem.split()],
                    check=True, capture_output=True,
                )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_bridges()
        for ns in (self.gw, self.remote):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # --- bridges ---------------------------------------------------------------------------
    def start_bridge(self, side: str, args: list[str]) -> subprocess.Popen:
        ns = self.gw if side == "gateway" else self.remote
        log = open(self.logdir / f"{side}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = netns.exec_argv(ns, [sys.executable, "-m", "bridge", *args])
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.procs.append(proc)
        return proc

    def start_pair(self, transport: str) -> None:
        if transport == "mqtt" and self.broker is None:
            from bridge.tools.rig.broker import RigBroker

            self.broker = RigBroker(self.logdir, GW_ADDR, MQTT_PORT)
            self.broker.start(wrap=lambda argv: netns.exec_argv(self.gw, argv))
        self.start_bridge("gateway", bridge_args(transport, "gateway"))
        self.start_bridge("remote", bridge_args(transport, "remote"))

    def stop_bridges(self, timeout: float = 20.0) -> list[int | None]:
        """SIGTERM every bridge (then the broker of transport mqtt); returns the bridges' exit codes (None if
        one had to be killed)."""
        codes = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        self.procs.clear()
        if self.broker is not None:  # after the bridges: they publish their offline status on the way out
            self.broker.stop()
            self.broker = None
        return codes

    def log_text(self, side: str) -> str:
        path = self.logdir / f"{side}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- traffic ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def sockets(self):
        """(tx on the gateway's vcan0, rx on the remote's vcan0), both kernel-timestamped."""
        with netns.inside(self.gw):
            tx = probe.open_can("vcan0", recv_own=True)
        with netns.inside(self.remote):
            rx = probe.open_can("vcan0")
        try:
            yield tx, rx
        finally:
            tx.close()
            rx.close()

    def wait_path_up(self, tx, rx, timeout: float = 60.0) -> None:
        """Send a marker frame every 100 ms until it crosses; then discard everything seen."""
        from bridge.codec.socketcan import CAN_EFF_FLAG, pack_can

        marker = pack_can(CAN_EFF_FLAG | 0x1FFFFFFF, b"canbrdg!")
        deadline = time.monotonic() + timeout
        seen: list = []
        while time.monotonic() < deadline:
            probe.send(tx, marker)
            time.sleep(0.1)
            probe.drain(rx, seen)
            if any(raw == marker for _, raw in seen):
                time.sleep(0.3)  # let the stragglers of the marker land, then forget them
                probe.drain(rx, [])
                probe.drain(tx, [])
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a bridge exited with {proc.returncode}:\n{self.all_logs()}")
        raise TimeoutError(f"no frame crossed the bridges in {timeout:.0f} s:\n{self.all_logs()}")

    def run_traffic(self, frames: list, speed: float, settle_s: float = 2.0, on_path_up=None) -> probe.Report:
        """Replay (ts_ns, raw) frames into the gateway's vcan0; record the remote's vcan0.
        on_path_up(): called once a frame has crossed, before the replay (e.g. to start a capture)."""
        with self.sockets() as (tx, rx):
            self.wait_path_up(tx, rx)
            if on_path_up:
                on_path_up()
            sent: list = []
            received: list = []

            def pump():
                probe.drain(tx, sent, own_only=True)
                probe.drain(rx, received)

            probe.replay(tx, frames, speed, on_wait=pump)
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < settle_s:
                before = len(received)
                pump()
                if len(received) != before:
                    quiet_since = time.monotonic()
                if len(received) >= len(frames) and len(sent) >= len(frames):
                    break
                time.sleep(0.01)
            pump()
        return probe.compare(sent, received)

    def capture_args(self, transport: str) -> list[str]:
        """`canbridge capture` interface and filter arguments covering both buses and the link."""
        port = TCP_PORT if transport.endswith("tcp") else UDP_PORT
        return ["-i", f"vcan0@{self.gw}", "-i", f"veth0@{self.gw}", "-i", f"vcan0@{self.remote}",
                "-f", f"{transport.rpartition('+')[2]} port {port}"]

    def inspect_args(self, transport: str) -> list[str]:
        """`canbridge inspect` arguments matching capture_args (protocol on the rig's port, direction)."""
        protocol, _, kind = transport.rpartition("+")
        port = TCP_PORT if kind == "tcp" else UDP_PORT
        return ["--port", f"{protocol or 'native'}:{kind}:{port}", "--source", f"vcan0@{self.gw}",
                "--dest", f"vcan0@{self.remote}", "--wire", f"veth0@{self.gw}"]

    def all_logs(self) -> str:
        return "\n".join(f"--- {s} ---\n{self.log_text(s)[-3000:]}" for s in ("gateway", "remote", "mosquitto"))
