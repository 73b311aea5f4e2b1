"""Throughput, loss, latency, CPU and memory of canbridge, measured as DESIGN.md section 6 says.

Runs INSIDE the test VM (root, vcan0 + vcan1, can-utils):

    hw/testvm/canvm.sh .venv/bin/python benchmarks/throughput.py [--quick] [--json FILE]
    python -m bridge.hw.testvm -- .venv/bin/python benchmarks/throughput.py [--quick] [--json FILE]
    python -m bridge.hw.testvm --vcan 2 --can sja1000:2 --can sja1000:2 -- \
        .venv/bin/python benchmarks/throughput.py --bus vcan,sja1000 [--quick]

Started on a host without the interfaces it re-runs itself through hw/testvm/canvm.sh (with
CANVM_TIMEOUT=1200 and CANVM_MEM=2G unless those are set; with --bus sja1000 also CANVM_CAN="2 2").
A --json path should be on the shared file system (anything under the repository is).

--bus sja1000 runs everything below on QEMU's emulated SJA1000 controllers (kvaser_pci) instead:
cangen on can1 -> emulated bus A -> can0 -> system -> can2 -> emulated bus B -> can3, where the
latency probes and the counter are; --bus vcan,sja1000 does both in one boot, each system against
itself in a "sja1000 / vcan" block. Only can1 (the generator's node) gets txqueuelen 1000 for the run;
the systems' can0 and can2 keep the driver's 10. On the real controllers candump also listens on can0
(what the system's input controller received) and on can2 (the TX echo: what left its output
controller), so a run's "lost" is the system's own (can0 - can2), and the emulated RX FIFOs' overruns
(can1 -> can0 and can2 -> can3; QEMU's 64-byte FIFO, no bit timing) are reported apart, with the
driver's rx_over_errors. The docs (docs/benchmarks.md) list what else the emulation does not model.

Systems, each carrying vcan0 -> vcan1 (SRC -> DST) in the VM's root namespace:
  cangw          the kernel's gateway, `cangw -A -s vcan0 -d vcan1 -e` (upper bound; -e is needed
                 on vcan, without it the routed frame is never delivered to vcan1's sockets)
  python-loop    a plain blocking AF_CAN recv/send loop (python_loop() below, as a subprocess)
  python-pair    the latency floor of any two-process Python bridge: two blocking processes joined
                 by TCP on 127.0.0.1 (vcan0 recv -> TCP send | TCP recv -> vcan1 send), no loop,
                 no batching, no framing beyond the 16-byte can_frame (python_pair() below)
  canbridge-tcp  vcan0 -> bridge A -> TCP 127.0.0.1:29600 -> bridge B -> vcan1
  canbridge-udp  the same over UDP 127.0.0.1:29601 <-> 29602
  cannelloni-tcp real cannelloni (--cannelloni PATH, built from its public source; see
                 docs/benchmarks.md): `-C s` on vcan0, `-C c` on vcan1, TCP 127.0.0.1:29622
  cannelloni-udp the same over UDP 127.0.0.1:29620 <-> 29621 with `-t 1000` (1 ms flush timer,
                 its lowest-latency setting; its default is 100 ms)

Load is made and counted outside the systems, in C: `cangen vcan0 -L 8 -I i` makes it and
`candump vcan1` (32 MB receive buffer, -d to report its own drops) counts it. cangen's sleep
overshoots by ~0.5 ms in TCG, so -g alone cannot go past ~2k frames/s: each nominal rate is
made as bursts of -c frames every -g 1 ms, the burst size chosen from one calibration of
cangen's cycle time on the idle bus (RatePlan), so every system is offered the same load. The
rate reported is always the ACTUAL one, frames / cangen wall time, and it is lower than the
nominal one when the system under test takes CPU from cangen. Figures per system:
  zero-loss rate   highest actual rate of a run with no frame lost: the ladder of nominal rates
                   (fixed-size runs, stopping at the first loss or once cangen runs flat out),
                   or the flat-out burst if that lost nothing. ">=" when nothing was ever lost
                   (then it is cangen's limit, not the system's). On real controllers: frames that
                   reached can0 per second of cangen's run (the rest overran bus A's RX FIFO)
  burst            loss of `cangen -g 0` flat out
  latency          kernel RX timestamp on vcan1 minus own-echo timestamp on vcan0 (bridge.tools.logs.probe),
                   one frame in flight, and for a replay at 2,500 frames/s (sent by this process, recorded
                   by one candump on both buses; --replayer python: recorded by this process too)
  CPU              (utime + stime) of each process across the best zero-loss ladder run, per
                   1,000 frames (and for every run in the CPU section: it falls as the rate rises,
                   since each wakeup's cost is shared by more frames); also across the 2,500
                   frames/s replay (the Durango trace's rate)
  start-up         wall time from spawning the first process to the first frame on vcan1 (a
                   frame offered every 10 ms; the second process is spawned 0.5 s after the first)
  peak RSS         VmHWM of each process at the end
Where a run lost frames, the bridges' counter deltas (SIGUSR1 -> `counters:` log line) and the
kernel's drop counters are printed to show where the frames went. The test VM is emulated (TCG):
other VMs on the host slow it down, hence the host load average and the per-system speed index.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.codec import candump  # noqa: E402
from bridge.tools.logs import probe  # noqa: E402
from bridge.codec.socketcan import CAN_EFF_FLAG, pack_can  # noqa: E402
from bridge.endpoints.socketcan import RX_BUFFER  # noqa: E402
from bridge.hw.cansock import CAN_RAW_FILTER, SO_RCVBUFFORCE, SOL_CAN_RAW  # noqa: E402

# The interfaces of one run, per --bus: GEN (cangen and the probes send), SRC (bridge A reads), DST (bridge B
# writes), REC (candump and the probes count). On vcan GEN is SRC and REC is DST (a frame sent on vcan0 reaches
# every other socket on vcan0). On the emulated SJA1000s (`testvm --can sja1000:2 --can sja1000:2`: can0+can1
# on bus A, can2+can3 on bus B) the load and the counter sit on other nodes of each wire than the bridge, so
# every frame crosses two real controllers and the emulated bus twice: can1 -> bus A -> can0 -> system ->
# can2 -> bus B -> can3.
BUSES = {
    "vcan": ("vcan0", "vcan0", "vcan1", "vcan1"),
    "sja1000": ("can1", "can0", "can2", "can3"),
}
GEN, SRC, DST, REC = BUSES["vcan"]
GEN_TXQUEUELEN = 1000  # the generator's controller (can1) only: at the driver's 10, cangen -g 0 waits on
# ENOBUFS and the offered rate measures can1's queue, not the system; the bridges' can0/can2 keep 10
CANVM = ROOT / "hw" / "testvm" / "canvm.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARKER = pack_can(CAN_EFF_FLAG | 0x1FFFFFFF, b"canbrdg!")  # path-up probe; never counted
RECORDER_BUFFER = 256 << 20  # candump's SO_RCVBUF: the counter must never be what loses frames (at 32 MiB
# it dropped a third of a 200k burst that bridge B wrote to vcan1 complete); its own drops are reported
IDLE_MS = 4000  # candump gives up after this long without a frame
PAIR_PORT = 29610  # python-pair reference: its TCP hop
GAP_MS = 1.0  # cangen sleep between bursts on the rate ladder

FULL = {
    "rates": (5, 10, 15, 20, 25, 30, 40, 50),
    "frames": 100_000,
    "burst": 200_000,
    "pings": 500,
    "replay": 10_000,
    "ladder_budget_s": 150,  # stop climbing after this long (a slowed VM makes each rung slower)
}
QUICK = {
    "rates": (5, 10, 20, 40),
    "frames": 20_000,
    "burst": 20_000,
    "pings": 200,
    "replay": 2_500,
    "ladder_budget_s": 40,
}
REPLAY_RATE = 2500
DEFAULT_SYSTEMS = "cangw,python-loop,python-pair,canbridge-tcp,canbridge-udp"


# --------------------------------------------------------------------------- baseline system
def use_bus(name: str) -> None:
    """Point every measurement at the interfaces of bus `name` (a key of BUSES)."""
    global GEN, SRC, DST, REC
    GEN, SRC, DST, REC = BUSES[name]


def real_bus() -> bool:
    """True on controllers with a driver: frames cross a (emulated) wire and FIFOs that can overrun."""
    return GEN != SRC


def python_loop(src: str, dst: str) -> None:
    """The baseline: the plainest Python forwarder (same 8 MB receive buffer as the bridge)."""
    rx = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RX_BUFFER)
    rx.bind((src,))
    tx = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    tx.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, b"")  # send only: receive nothing
    tx.bind((dst,))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        frame = rx.recv(72)
        while True:
            try:
                tx.send(frame)
                break
            except OSError as exc:  # ENOBUFS: TX queue full, wait instead of dropping
                if exc.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.0001)


def python_pair(side: str, src: str, dst: str) -> None:
    """One half of the python-pair reference: side "a" reads src and sends each can_frame on a TCP
    connection to PAIR_PORT; side "b" accepts it and writes each frame to dst. Classic frames only."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    can = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    if side == "a":
        can.bind((src,))
        tcp = socket.create_connection(("127.0.0.1", PAIR_PORT))
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            tcp.sendall(can.recv(16))
    can.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, b"")
    can.bind((dst,))
    listener = socket.create_server(("127.0.0.1", PAIR_PORT))
    tcp, _ = listener.accept()
    buf = b""
    while data := tcp.recv(65536):
        buf += data
        while len(buf) >= 16:
            try:
                can.send(buf[:16])
            except OSError as exc:  # ENOBUFS: a real controller's TX queue (txqueuelen 10) is full: wait
                if exc.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.0001)
                continue
            buf = buf[16:]


# --------------------------------------------------------------------------- /proc readings
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process, MB."""
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(m.group(1)) / 1024 if m else None


def kernel_counters() -> dict:
    """Kernel-side drop counters that explain a loss outside the processes."""
    out = {"softnet_backlog_dropped": 0}
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        out["softnet_backlog_dropped"] += int(line.split()[1], 16)
    for ifname in dict.fromkeys((GEN, SRC, DST, REC)):
        for name in ("rx_dropped", "tx_dropped", "rx_over_errors"):  # rx_over_errors: RX FIFO overruns
            out[f"{ifname}_{name}"] = int(Path(f"/sys/class/net/{ifname}/statistics/{name}").read_text())
        if real_bus():  # a full TX queue's drops (cangw has no ENOBUFS to wait on) are the qdisc's
            out[f"{ifname}_qdisc_dropped"] = qdisc_dropped(ifname)
    snmp = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    for key, value in zip(*snmp):
        if key in ("RcvbufErrors", "SndbufErrors", "InErrors"):
            out[f"udp_{key}"] = int(value)
    return out


def qdisc_dropped(ifname: str) -> int:
    """Frames the interface's root qdisc dropped (`tc -s qdisc show`), 0 if it shows none."""
    res = subprocess.run(["tc", "-s", "qdisc", "show", "dev", ifname], capture_output=True, text=True, timeout=10)
    return sum(int(m) for m in re.findall(r"dropped (\d+)", res.stdout))


def delta(before, after):
    """after - before over the numeric leaves of nested dicts; zero and non-numeric leaves left out.
    A counter that went down was restarted (a new TCP connection): its new value is the delta."""
    if isinstance(after, dict):
        before = before if isinstance(before, dict) else {}
        return {k: d for k, v in after.items() if (d := delta(before.get(k), v))}
    if isinstance(after, (int, float)) and not isinstance(after, bool):
        before = before if isinstance(before, (int, float)) else 0
        return after - before if after >= before else after
    return None


# --------------------------------------------------------------------------- systems under test
class System:
    """Something that carries vcan0 -> vcan1. Subclasses start processes (or kernel rules)."""

    name = "?"

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.spawned_at: float | None = None  # monotonic time the first process was spawned
        self.cwd = ROOT  # the tree whose `bridge` package runs (benchmarks/hops.py compares two)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> dict:
        """SIGTERM every process; returns {process: exit code (None = had to be killed)}."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for label, proc in self.procs.items():
            try:
                codes[label] = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[label] = None
        return codes

    def _spawn(self, label: str, argv: list[str]) -> None:
        if not self.procs:
            self.spawned_at = time.monotonic()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.cwd != ROOT:
            env["PYTHONPATH"] = str(self.cwd)
        with open(self.logdir / f"{self.name}-{label}.log", "ab") as log:
            self.procs[label] = subprocess.Popen(argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def check_alive(self) -> None:
        for label, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} {label} exited with {proc.returncode}:\n{self.log_tail(label)}")

    def log_tail(self, label: str, n: int = 3000) -> str:
        path = self.logdir / f"{self.name}-{label}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def cpu(self) -> dict:
        return {label: cpu_seconds(p.pid) for label, p in self.procs.items()}

    def peak_rss(self) -> dict:
        return {label: peak_rss_mb(p.pid) for label, p in self.procs.items()}

    def counters(self) -> dict:
        """The processes' own counters, if they have any."""
        return {}


class Cangw(System):
    name = "cangw"

    def start(self) -> None:
        subprocess.run(["cangw", "-F"], check=True, timeout=10)
        subprocess.run(["cangw", "-A", "-s", SRC, "-d", DST, "-e"], check=True, timeout=10)

    def stop(self) -> dict:
        subprocess.run(["cangw", "-F"], check=True, timeout=10)
        return {}


class PythonLoop(System):
    name = "python-loop"

    def start(self) -> None:
        self._spawn("loop", [sys.executable, str(Path(__file__).resolve()), "--python-loop", SRC, DST])


class PythonPair(System):
    name = "python-pair"

    def start(self) -> None:
        script = str(Path(__file__).resolve())
        self._spawn("B", [sys.executable, script, "--python-pair", "b", SRC, DST])
        time.sleep(1.0)  # B listens before A connects
        self._spawn("A", [sys.executable, script, "--python-pair", "a", SRC, DST])


class Canbridge(System):
    """Bridge A on vcan0 and bridge B on vcan1, joined over 127.0.0.1."""

    PEERS: ClassVar[dict[str, tuple[str, str]]] = {
        "tcp": ("tcp-listen://127.0.0.1:29600", "tcp://127.0.0.1:29600"),
        "udp": ("udp://127.0.0.1:29602?bind=127.0.0.1:29601", "udp://127.0.0.1:29601?bind=127.0.0.1:29602"),
    }

    def __init__(self, logdir: Path, transport: str) -> None:
        super().__init__(logdir)
        self.name = f"canbridge-{transport}"
        self.peers = self.PEERS[transport]

    def start(self) -> None:
        self._spawn("A", [sys.executable, "-m", "bridge", SRC, self.peers[0]])
        time.sleep(0.5)  # let the listener bind before the client's first connect
        self._spawn("B", [sys.executable, "-m", "bridge", DST, self.peers[1]])

    def counters(self, timeout: float = 10.0) -> dict:
        """Ask each bridge for its counters (SIGUSR1) and read the line it logs."""
        seen = {label: self._counter_lines(label) for label in self.procs}
        for proc in self.procs.values():
            proc.send_signal(signal.SIGUSR1)
        out = {}
        deadline = time.monotonic() + timeout
        for label in self.procs:
            while len(lines := self._counter_lines(label)) <= len(seen[label]) and time.monotonic() < deadline:
                time.sleep(0.05)
            out[label] = json.loads(lines[-1]) if len(lines) > len(seen[label]) else {}
        return out

    def _counter_lines(self, label: str) -> list[str]:
        return [
            line.split("counters: ", 1)[1]
            for line in self.log_tail(label, 1 << 22).splitlines()
            if "counters: " in line
        ]


class Cannelloni(System):
    """Real cannelloni (https://github.com/mguentner/cannelloni), one instance per bus, joined over
    127.0.0.1 like canbridge's two bridges. UDP with `-t 1000`: a 1 ms flush timer, its best latency
    (the default 100 ms adds up to 100 ms per frame). TCP: no buffer timer, every frame is sent as read."""

    ARGS: ClassVar[dict[str, tuple[list[str], list[str]]]] = {
        "tcp": (
            ["-C", "s", "-L", "127.0.0.1", "-l", "29622"],
            ["-C", "c", "-R", "127.0.0.1", "-r", "29622"],
        ),
        "udp": (
            ["-L", "127.0.0.1", "-l", "29620", "-R", "127.0.0.1", "-r", "29621", "-t", "1000"],
            ["-L", "127.0.0.1", "-l", "29621", "-R", "127.0.0.1", "-r", "29620", "-t", "1000"],
        ),
    }

    def __init__(self, logdir: Path, transport: str, binary: str) -> None:
        super().__init__(logdir)
        self.name = f"cannelloni-{transport}"
        self.binary = binary
        self.args = self.ARGS[transport]

    def start(self) -> None:
        self._spawn("A", [self.binary, "-I", SRC, *self.args[0]])
        time.sleep(0.5)  # as for canbridge: the server listens before the client connects
        self._spawn("B", [self.binary, "-I", DST, *self.args[1]])


# --------------------------------------------------------------------------- load (C tools)
class Recorder:
    """candump on REC counting frames into a file on tmpfs. On a real bus it also listens on SRC (what
    bridge A's controller received: the rest was lost in bus A's RX FIFO) and on DST (the TX echo of what
    bridge B's writes: frames that left its controller; the rest of what REC misses was lost in bus B's FIFO)."""

    def __init__(self, workdir: Path, expected: int) -> None:
        self.path = workdir / "candump.txt"
        ifaces = [SRC, DST, REC] if real_bus() else [REC]
        count = expected * len(ifaces)
        argv = ["candump", "-n", str(count), "-T", str(IDLE_MS), "-r", str(RECORDER_BUFFER), "-d", *ifaces]
        with open(self.path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_for_socket(self.proc.pid)

    def finish(self, timeout: float) -> tuple[dict, int]:
        """Wait for candump to end (all frames, or IDLE_MS of silence); ({interface: frames}, its own drops)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        seen = dict.fromkeys((SRC, DST, REC), 0)
        drops = 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.startswith(b"DROPCOUNT"):
                    drops += int(re.search(rb"total drops (\d+)", line).group(1))
                elif fields := line.split():
                    seen[fields[0].decode()] = seen.get(fields[0].decode(), 0) + 1
        return seen, drops


def wait_for_socket(pid: int, timeout: float = 5.0) -> None:
    """Return once process `pid` holds a socket (candump has bound), plus a little margin."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd")):
                break
        except OSError:
            pass
        time.sleep(0.02)
    time.sleep(0.1)


def cangen(n: int, gap_ms: float, burst: int = 1, timeout: float = 300.0) -> float:
    """Send n frames (dlc 8, incrementing id) into GEN; returns cangen's wall time, s. `-p`: on ENOBUFS
    (a real controller's full TX queue) poll and resend, so all n frames are offered."""
    argv = ["cangen", GEN, "-g", f"{gap_ms:g}", "-c", str(burst), "-n", str(n), "-L", "8", "-I", "i", "-p", "100"]
    start = time.monotonic()
    res = subprocess.run(argv, check=False, capture_output=True, timeout=timeout)
    elapsed = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
    return elapsed


class RatePlan:
    """Maps a nominal rate to cangen's (-g gap ms, -c burst). Fitted once, on the idle bus, from
    cangen's cycle time: wall = startup + bursts * (per_burst + burst * per_frame), per_burst
    being the GAP_MS sleep plus its overshoot. Every system then gets the same offered load;
    the rate each run actually reached is measured (cangen shares the CPUs with the system)."""

    def __init__(self, startup: float, per_burst: float, per_frame: float) -> None:
        self.startup, self.per_burst, self.per_frame = startup, per_burst, per_frame

    @classmethod
    def calibrate(cls, frames: int = 20_000) -> RatePlan:
        """Three measurements, each of one unknown: startup (1 frame), per_frame (flat out),
        per_burst (bursts of one frame with GAP_MS gaps)."""
        cangen(frames, 0)  # warm-up: TCG translates cangen and the CAN stack on first use
        startup = min(cangen(1, 0) for _ in range(3))
        per_frame = max((cangen(frames, 0) - startup) / frames, 1e-6)
        per_burst = max((cangen(500, GAP_MS, 1) - startup) / 500 - per_frame, 1e-6)
        return cls(startup, per_burst, per_frame)

    def gap_burst(self, rate: float) -> tuple[float, int]:
        """(gap ms, frames per burst) for `rate` frames/s; (0, 1) = flat out when cangen cannot
        reach it with gaps."""
        room = 1 - rate * self.per_frame
        if room < 0.1:
            return 0, 1
        return GAP_MS, max(1, round(rate * self.per_burst / room))

    def describe(self) -> str:
        return (
            f"cangen on the idle bus: startup {self.startup * 1e3:.0f} ms, {self.per_burst * 1e3:.2f} ms per "
            f"burst (gap {GAP_MS:g} ms), {self.per_frame * 1e6:.1f} us per frame "
            f"(flat out ~{1 / self.per_frame:,.0f}/s)"
        )


def load_run(system: System, workdir: Path, n: int, gap_ms: float, burst: int, label: str) -> dict:
    """n frames from cangen into vcan0, counted by candump on vcan1, with the systems' CPU and
    counters and the kernel's drop counters taken across the run."""
    system.check_alive()
    k0, c0, cpu0 = kernel_counters(), system.counters(), system.cpu()
    recorder = Recorder(workdir, n)
    error = None
    try:
        elapsed = cangen(n, gap_ms, burst, timeout=60 + n / 500)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        error, elapsed = str(exc), None
    seen, recorder_drops = recorder.finish(timeout=60 + n / 500)
    received = seen[REC]
    cpu1 = system.cpu()
    run = {
        "label": label,
        "frames": n,
        "gap_ms": gap_ms,
        "burst": burst,
        "elapsed_s": elapsed,
        "rate": n / elapsed if elapsed else None,
        "received": received,
        "lost": n - received,
        "offered": n,  # frames that reached the system (SRC)
        "delivered": received,  # frames the system wrote that left DST
        "recorder_drops": recorder_drops,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu1},
        "kernel": delta(k0, kernel_counters()),
    }
    if real_bus():  # loss is the system's own (SRC seen, never left DST); the FIFOs' is the emulation's
        run["offered"], run["delivered"] = seen[SRC], seen[DST]
        run["sent_rate"] = run["rate"]  # what cangen sent; the system got only what passed bus A's FIFO
        run["rate"] = seen[SRC] / elapsed if elapsed else None
        run["lost"] = max(0, seen[SRC] - seen[DST])
        run["lost_end_to_end"] = n - received
        run["fifo_lost_a"] = n - seen[SRC]  # never reached SRC: SRC's RX FIFO overran
        run["fifo_lost_b"] = seen[DST] - received  # left DST, never reached REC: REC's RX FIFO overran
        run["rx_over_errors"] = {i: run["kernel"].get(f"{i}_rx_over_errors", 0) for i in (SRC, REC)}
    if error:
        run["error"] = error
    if run["lost"] or error:
        run["counters"] = delta(c0, system.counters())
    return run


# --------------------------------------------------------------------------- measurements
def speed_index_ms() -> float:
    """Wall ms of a fixed pure-Python workload. The test VM's speed drifts with the host's load
    (other VMs): a rising index means the figures after it were taken on a slower machine."""
    start = time.perf_counter()
    sum(i * i for i in range(200_000))
    return (time.perf_counter() - start) * 1e3


def first_frame_s(system: System, tx, rx, timeout: float = 60.0) -> float:
    """Seconds from the system's first spawn to the first MARKER seen on REC, MARKER being
    offered every 10 ms (so the figure is up to 10 ms late). Both sockets are drained after."""
    start = system.spawned_at or time.monotonic()
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline:
        probe.send(tx, MARKER)
        if select.select([rx], [], [], 0.01)[0]:
            probe.drain(rx, seen)
            if any(raw == MARKER for _, raw in seen):
                took = time.monotonic() - start
                time.sleep(0.3)
                probe.drain(rx, [])
                probe.drain(tx, [])
                return took
        else:
            system.check_alive()
    raise TimeoutError(f"{system.name}: no frame reached {REC} in {timeout:.0f} s")


@contextlib.contextmanager
def probe_sockets(system: System):
    """(sender on GEN with own-echo timestamps, recorder on REC), once a frame has crossed."""
    tx, rx = probe.open_can(GEN, recv_own=True), probe.open_can(REC)
    try:
        wait_path_up(system, tx, rx)
        yield tx, rx
    finally:
        tx.close()
        rx.close()


def wait_path_up(system: System, tx, rx, timeout: float = 30.0) -> None:
    """Send MARKER every 100 ms until it reaches REC; then discard what both sockets saw."""
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline:
        system.check_alive()
        probe.send(tx, MARKER)
        time.sleep(0.1)
        probe.drain(rx, seen)
        if any(raw == MARKER for _, raw in seen):
            time.sleep(0.3)
            probe.drain(rx, [])
            probe.drain(tx, [])
            return
    raise TimeoutError(f"{system.name}: no frame reached {REC} in {timeout:.0f} s")


def numbered_frame(i: int) -> bytes:
    """Frame i of a latency run: unique by (id, data) so probe.compare pairs them exactly."""
    return pack_can(i % 0x7FF, i.to_bytes(8, "big"))


def latency_in_flight(tx, rx, count: int, timeout: float = 1.0, budget_s: float = 120.0) -> probe.Report:
    """Send one frame, wait until it shows on vcan1 (at most `timeout`), repeat `count` times
    (fewer if that takes longer than budget_s)."""
    sent: list = []
    received: list = []
    give_up = time.monotonic() + budget_s
    for i in range(count):
        if time.monotonic() > give_up:
            break
        want = len(received) + 1
        probe.send(tx, numbered_frame(i))
        deadline = time.monotonic() + timeout
        while len(received) < want and (left := deadline - time.monotonic()) > 0:
            select.select([rx], [], [], left)
            probe.drain(rx, received)
        probe.drain(tx, sent, own_only=True)
    time.sleep(0.05)
    probe.drain(tx, sent, own_only=True)
    probe.drain(rx, received)
    return probe.compare(sent, received)


def latency_at_rate(tx, rx, count: int, rate: float, settle_s: float = 2.0) -> tuple[probe.Report, float]:
    """Replay `count` frames evenly spaced at `rate` frames/s and pair them up. Also returns the
    CPU seconds the replaying (this) process used: it competes with the system for the CPUs."""
    frames = [(i * 1_000_000_000 // int(rate), numbered_frame(i)) for i in range(count)]
    sent: list = []
    received: list = []

    def pump():
        probe.drain(tx, sent, own_only=True)
        probe.drain(rx, received)

    cpu0 = time.process_time()
    probe.replay(tx, frames, 1.0, on_wait=pump)
    prober_cpu = time.process_time() - cpu0
    quiet_since = time.monotonic()
    while len(received) < count and time.monotonic() - quiet_since < settle_s:
        before = len(received)
        pump()
        if len(received) != before:
            quiet_since = time.monotonic()
        time.sleep(0.01)
    pump()
    return probe.compare(sent, received), prober_cpu


def latency_at_rate_recorded(workdir: Path, tx, count: int, rate: float) -> tuple[probe.Report, float, float, dict]:
    """The 2,500 frames/s replay sent by this process (probe.replay, the pacing of latency_at_rate, no
    receiving between frames) and recorded by one `candump -L` on vcan0 and vcan1 (kernel timestamps, us;
    frames pair by content). In the VM, sending alone took ~37 % of a vCPU at this rate and candump ~21 %.
    (cangen cannot replace the sender: in TCG its sleep overshoots, so one frame per sleep made 1,967 to
    2,781 frames/s instead of 2,500, 2026-12-03.) On real controllers candump also counts SRC and DST, so a frame
    lost in an emulated RX FIFO is told from one the system lost. -> (report, CPU s of the sender and candump,
    actual rate, {interface: frames seen})."""
    frames = [(i * 1_000_000_000 // int(rate), numbered_frame(i)) for i in range(count)]
    path = workdir / "rate.log"
    before = os.times()
    with open(path, "wb") as out:
        dump = subprocess.Popen(
            ["candump", "-L", "-T", str(IDLE_MS), "-r", str(RECORDER_BUFFER), *dict.fromkeys((GEN, SRC, DST, REC))],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    wait_for_socket(dump.pid)
    cpu0 = time.process_time()
    actual = count / probe.replay(tx, frames, 1.0)
    sender_cpu = time.process_time() - cpu0
    try:
        dump.wait(IDLE_MS / 1e3 + 30)  # it stops after IDLE_MS of silence
    except subprocess.TimeoutExpired:
        dump.kill()
        dump.wait()
    after = os.times()
    recorder_cpu = after.children_user + after.children_system - before.children_user - before.children_system
    sent, received = [], []
    seen = dict.fromkeys((GEN, SRC, DST, REC), 0)
    for line in path.read_text().splitlines():
        ts, iface, raw = candump.parse_line(line)
        seen[iface] += 1
        if iface in (GEN, REC):
            (sent if iface == GEN else received).append((ts, raw))
    return probe.compare(sent, received), sender_cpu + recorder_cpu, actual, seen


def report_dict(rep: probe.Report) -> dict:
    return {
        "sent": rep.sent,
        "received": rep.received,
        "lost": rep.lost,
        "reordered": rep.reordered,
        "duplicated": rep.duplicated,
        "unexpected": rep.unexpected,
        "latency_ms": rep.latency_ms(),
    }


def rate_ladder(system: System, workdir: Path, plan: RatePlan, rates_k, n: int, budget_s: float) -> dict:
    """Climb the nominal rates; stop at the first loss, once cangen runs flat out, or after budget_s."""
    runs = []
    give_up = time.monotonic() + budget_s
    for k in rates_k:
        if time.monotonic() > give_up:
            print(f"    (ladder stopped: its {budget_s:.0f} s time budget is spent)", flush=True)
            break
        gap, burst = plan.gap_burst(k * 1000)
        run = load_run(system, workdir, n, gap, burst, f"{k}k nominal" if gap else f"{k}k -> flat out")
        runs.append(run)
        print(
            f"    {run['label']:>16} (-g {gap:g} -c {burst}): {fmt_rate(run['rate'])} frames/s, lost {run['lost']}",
            flush=True,
        )
        if run["lost"] or "error" in run or not gap:
            break
    return {"runs": runs}


def is_clean(run: dict) -> bool:
    return not run["lost"] and "error" not in run and bool(run["rate"])


def fastest_clean(runs: list[dict]) -> dict | None:
    return max(filter(is_clean, runs), key=lambda r: r["rate"], default=None)


def zero_loss(result: dict) -> tuple[dict | None, bool]:
    """(the fastest run without loss, ladder or burst; True if no run lost frames at all,
    i.e. the figure is cangen's limit rather than the system's)."""
    runs = [*result["zero_loss"]["runs"], result["burst"]]
    return fastest_clean(runs), all(map(is_clean, runs))


def measure(system: System, workdir: Path, plan: RatePlan, cfg: dict) -> dict:
    """Every figure for one system, in one start/stop of it."""
    speed = speed_index_ms()
    print(f"\n== {system.name} (speed index {speed:.0f} ms)", flush=True)
    result: dict = {"system": system.name, "speed_index_ms": speed}
    tx, rx = probe.open_can(GEN, recv_own=True), probe.open_can(REC)
    try:
        system.start()
        result["startup_s"] = first_frame_s(system, tx, rx)
        print(f"  start-up to the first forwarded frame: {result['startup_s']:.2f} s", flush=True)
    finally:
        tx.close()
        rx.close()
    try:
        with probe_sockets(system) as (tx, rx):
            latency_in_flight(tx, rx, 50)  # warm-up (TCG translates the hot paths on first use)
        warm = load_run(system, workdir, cfg["frames"] // 5, *plan.gap_burst(5000), "warm-up")
        print(
            f"  warm-up: {warm['frames']} frames at {fmt_rate(warm['rate'])}/s, lost {warm['lost']}",
            flush=True,
        )
        result["warmup"] = warm
        result["zero_loss"] = rate_ladder(system, workdir, plan, cfg["rates"], cfg["frames"], cfg["ladder_budget_s"])
        result["burst"] = load_run(system, workdir, cfg["burst"], 0, 1, "flat-out burst")
        b = result["burst"]
        print(f"  burst: {b['frames']} frames at {fmt_rate(b['rate'])}/s, lost {b['lost']}", flush=True)
        with probe_sockets(system) as (tx, rx):
            result["latency_in_flight"] = report_dict(latency_in_flight(tx, rx, cfg["pings"]))
            cpu0 = system.cpu()
            if cfg["replayer"] == "python":
                report, prober_cpu = latency_at_rate(tx, rx, cfg["replay"], REPLAY_RATE)
                actual, seen = None, {}
            else:
                report, prober_cpu, actual, seen = latency_at_rate_recorded(workdir, tx, cfg["replay"], REPLAY_RATE)
            cpu1 = system.cpu()
            result["latency_at_rate"] = {
                **report_dict(report),
                "replayer": cfg["replayer"],
                "actual_rate": actual,
                "prober_cpu_s": prober_cpu,
                "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu1},
            }
            if real_bus() and seen:  # where the replay's lost frames went: bus A's FIFO, the system, bus B's
                result["latency_at_rate"]["seen"] = seen
                result["latency_at_rate"]["offered"] = seen[SRC]  # CPU per frame the system handled
        for key in ("latency_in_flight", "latency_at_rate"):
            lat = result[key]["latency_ms"]
            print(
                f"  {key}: p50 {fmt_ms(lat['p50'])} p99 {fmt_ms(lat['p99'])} max {fmt_ms(lat['max'])} ms, "
                f"lost {result[key]['lost']}" + (f", seen per interface {seen}" if "seen" in result[key] else ""),
                flush=True,
            )
        result["peak_rss_mb"] = system.peak_rss()
        result["final_counters"] = system.counters()
    finally:
        result["exit_codes"] = system.stop()
    return result


# --------------------------------------------------------------------------- report
def fmt_rate(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def cpu_per_1k(run: dict | None) -> dict:
    """{process: CPU seconds per 1,000 frames} over one load run (or the 2.5k/s replay)."""
    if not run or not run.get("cpu_s"):
        return {}
    frames = run["offered"] if "offered" in run else run["sent"]  # the frames the system handled
    return {k: v / frames * 1000 for k, v in run["cpu_s"].items()} if frames else {}


def figures(result: dict) -> dict:
    """The headline numbers of one system, flat, for the table and the ratios."""
    best, generator_limited = zero_loss(result)
    burst = result["burst"]
    cpu = cpu_per_1k(fastest_clean(result["zero_loss"]["runs"]))  # a fixed-size run; the burst may differ in size
    return {
        "zero_loss_rate": best["rate"] if best else None,
        "zero_loss_frames": best["frames"] if best else None,
        "generator_limited": generator_limited,
        "burst_rate": burst["rate"],
        "burst_lost_pct": 100 * burst["lost"] / burst["offered"] if burst["offered"] else None,
        "burst_delivered": burst["delivered"],
        "burst_fifo_lost": (burst["fifo_lost_a"], burst["fifo_lost_b"]) if "fifo_lost_a" in burst else None,
        "lat1": result["latency_in_flight"]["latency_ms"],
        "lat_rate": result["latency_at_rate"]["latency_ms"],
        "cpu_per_1k": cpu,
        "cpu_per_1k_total": sum(cpu.values()) if cpu else None,
        "cpu_at_rate_per_1k": (at_rate := cpu_per_1k(result["latency_at_rate"])),
        "cpu_at_rate_per_1k_total": sum(at_rate.values()) if at_rate else None,
        "startup_s": result.get("startup_s"),
        "rss_mb": result["peak_rss_mb"],
    }


def print_table(results: list[dict]) -> None:
    print("\n" + "=" * 150)
    bus = results[0]["bus"] if results else "?"
    print(f"bus: {bus}, {' -> '.join(dict.fromkeys(BUSES.get(bus, ())))}")
    print(
        f"{'system':<14} {'zero-loss':>10} {'flat-out burst':>22} {'1 in flight, ms':>20} "
        f"{'at 2.5k/s, ms':>20} {'CPU s/1k frames':>17} {'CPU s/1k @2.5k/s':>17} {'start':>5} "
        f"{'peak RSS MB':>11} {'speed':>5}"
    )
    print(
        f"{'':<14} {'frames/s':>10} {'rate/s':>9} {'lost':>12} {'p50':>6} {'p99':>6} {'max':>6} "
        f"{'p50':>6} {'p99':>6} {'max':>6} {'(best rung)':>17} {'(replay)':>17} {'s':>5} {'':>11} {'idx':>5}"
    )
    for r in results:
        f = figures(r)
        cpu = "+".join(f"{v:.3f}" for v in f["cpu_per_1k"].values()) or "-"
        cpu_rate = "+".join(f"{v:.3f}" for v in f["cpu_at_rate_per_1k"].values()) or "-"
        rss = ",".join(f"{v:.0f}" for v in f["rss_mb"].values() if v) or "-"
        start = "-" if f["startup_s"] is None else f"{f['startup_s']:.2f}"
        lost = f"{r['burst']['lost']} ({f['burst_lost_pct']:.1f}%)" if f["burst_lost_pct"] is not None else "-"
        rate = (">=" if f["generator_limited"] else "") + fmt_rate(f["zero_loss_rate"])
        print(
            f"{r['system']:<14} {rate:>10} {fmt_rate(f['burst_rate']):>9} {lost:>12} "
            + " ".join(f"{fmt_ms(f['lat1'][q]):>6}" for q in ("p50", "p99", "max"))
            + " "
            + " ".join(f"{fmt_ms(f['lat_rate'][q]):>6}" for q in ("p50", "p99", "max"))
            + f" {cpu:>17} {cpu_rate:>17} {start:>5} {rss:>11} {r['speed_index_ms']:>5.0f}"
        )
    if any(figures(r)["burst_fifo_lost"] for r in results):
        print(
            "real controllers: 'lost' is the system's own loss (frames its input controller received that never "
            "left its output controller); a '>=' rate is what passed bus A's RX FIFO (the emulation's limit, not "
            "cangen's);\nqdisc 'dropped' counts every ENOBUFS, also those the writer waited out and sent again;"
            "\nthe emulated RX FIFOs' losses, per run (bus A before the system, "
            "bus B after it; rx_over_errors counts overrun events, not frames):"
        )
        for r in results:
            for run in (r["warmup"], *r["zero_loss"]["runs"], r["burst"]):
                if "fifo_lost_a" in run:
                    over = ", ".join(f"{k} {v}" for k, v in run["rx_over_errors"].items())
                    print(
                        f"  {r['system']:<14} {run['label']:>16}: {run['frames']} sent "
                        f"at {fmt_rate(run['sent_rate'])}/s, "
                        f"FIFO lost bus A {run['fifo_lost_a']}, bus B {run['fifo_lost_b']} "
                        f"(rx_over_errors {over}); system lost {run['lost']} of {run['offered']}"
                    )


def ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "-"
    r = a / b
    return f"{r:.3g}x" if r < 1000 else f"{r:,.0f}x"


def print_ratios(results: list[dict]) -> None:
    by_name = {r["system"]: figures(r) for r in results}
    speed = {r["system"]: r["speed_index_ms"] for r in results}
    print(
        "\nratios (row / reference): zero-loss rate, burst frames delivered, latency p50 and p99 "
        "one in flight and at 2.5k/s, CPU per frame (all processes; best rung, and at 2.5k/s)"
    )

    def line(name: str, ref: str) -> str:
        f, b = by_name[name], by_name[ref]
        return (
            f"  {name:>14} / {ref:<14} rate {ratio(f['zero_loss_rate'], b['zero_loss_rate']):>7}  "
            f"delivered {ratio(f['burst_delivered'], b['burst_delivered']):>7}  "
            f"1-in-flight p50 {ratio(f['lat1']['p50'], b['lat1']['p50']):>7} "
            f"p99 {ratio(f['lat1']['p99'], b['lat1']['p99']):>7}  "
            f"2.5k p50 {ratio(f['lat_rate']['p50'], b['lat_rate']['p50']):>7} "
            f"p99 {ratio(f['lat_rate']['p99'], b['lat_rate']['p99']):>7}  "
            f"CPU {ratio(f['cpu_per_1k_total'], b['cpu_per_1k_total']):>7} "
            f"@2.5k {ratio(f['cpu_at_rate_per_1k_total'], b['cpu_at_rate_per_1k_total']):>7}  "
            f"(speed idx {speed[name]:.0f} / {speed[ref]:.0f})"
        )

    for ref in ("cangw", "python-loop", "python-pair"):
        if ref in by_name:
            print("\n".join(line(name, ref) for name in by_name if name != ref))
    for transport in ("tcp", "udp"):
        ref = f"cannelloni-{transport}"
        if ref not in by_name:
            continue
        print(f"canbridge against {ref}:")
        for name in (f"canbridge-{transport}", *(f"canbridge-{t}" for t in ("tcp", "udp") if t != transport)):
            if name in by_name:
                print(line(name, ref))
    for name in ("canbridge-tcp", "canbridge-udp"):
        if name in by_name:
            f = by_name[name]
            print(
                f"  {name}: p50 at 2.5k/s / its own p50 one in flight "
                f"{ratio(f['lat_rate']['p50'], f['lat1']['p50'])}"
            )


def print_cpu(results: list[dict]) -> None:
    """CPU per 1,000 frames on every ladder rung: the per-wakeup cost shows at low rates."""
    lines = []
    for r in results:
        runs = [run for run in (*r["zero_loss"]["runs"], r["burst"]) if run["cpu_s"] and run["rate"]]
        cells = [f"{fmt_rate(run['rate'])}/s " + "+".join(f"{v:.3f}" for v in cpu_per_1k(run).values()) for run in runs]
        if cells:
            lines.append(f"  {r['system']:<14} " + ", ".join(cells))
    if lines:
        print("\nCPU s per 1,000 frames by actual rate (ladder rungs, then the burst; processes A+B):")
        print("\n".join(lines))
        replayer = ", ".join(f"{r['system']} {r['latency_at_rate']['prober_cpu_s']:.1f} s" for r in results)
        seconds = results[0]["latency_at_rate"]["sent"] / REPLAY_RATE
        python = results[0]["latency_at_rate"]["replayer"] == "python"
        who = "Python, this process" if python else "this process sending, candump recording"
        print(f"  the 2.5k/s latency replayer ({who}) used CPU: {replayer}, per {seconds:.0f} s of traffic")
        if not python:
            rates = ", ".join(f"{r['system']} {r['latency_at_rate']['actual_rate']:,.0f}/s" for r in results)
            print(f"  the 2.5k/s replay's actual rate: {rates}")


def print_losses(results: list[dict]) -> None:
    """Where frames went, for every run that lost some."""
    lines = []
    for r in results:
        runs = [r["warmup"], *r["zero_loss"]["runs"], r["burst"]]
        for run in runs:
            if not run["lost"] and "error" not in run:
                continue
            lines.append(
                f"  {r['system']} {run['label']}: sent {run['frames']}, {fmt_rate(run['rate'])}/s reached the system, "
                f"offered {run['offered']}, delivered {run['delivered']}, received {run['received']}, "
                f"lost {run['lost']}, candump's own drops "
                f"{run['recorder_drops']}; CPU s {json.dumps({k: round(v, 2) for k, v in run['cpu_s'].items()})}"
            )
            if "error" in run:
                lines.append(f"    error: {run['error']}")
            if run["kernel"]:
                lines.append(f"    kernel: {json.dumps(run['kernel'], sort_keys=True)}")
            for label, c in run.get("counters", {}).items():
                lines.append(f"    bridge {label}: {json.dumps(c, sort_keys=True)}")
            if not run["kernel"] and not run["recorder_drops"] and not run.get("counters"):
                lines.append("    (no kernel drops: the system's own socket receive queue overflowed)")
    if lines:
        print("\nruns with loss (kernel and bridge counter deltas across the run):")
        print("\n".join(lines))


def print_side_by_side(results: list[dict]) -> None:
    """Each system on the real controllers against itself on vcan, same boot: what the driver and the
    emulated wire add."""
    by = {(r["bus"], r["system"]): figures(r) for r in results}
    pairs = [name for bus, name in by if bus == "sja1000" and ("vcan", name) in by]
    if not pairs:
        return
    print(
        "\nsja1000 / vcan, each system against itself (zero-loss rate, latency p50 one in flight and at 2.5k/s, "
        "CPU per frame at 2.5k/s):"
    )
    for name in pairs:
        f, v = by["sja1000", name], by["vcan", name]
        print(
            f"  {name:<14} rate {ratio(f['zero_loss_rate'], v['zero_loss_rate']):>7}  "
            f"1-in-flight p50 {ratio(f['lat1']['p50'], v['lat1']['p50']):>7}  "
            f"2.5k p50 {ratio(f['lat_rate']['p50'], v['lat_rate']['p50']):>7}  "
            f"CPU @2.5k {ratio(f['cpu_at_rate_per_1k_total'], v['cpu_at_rate_per_1k_total']):>7}"
        )


# --------------------------------------------------------------------------- main
def run_in_vm(argv: list[str], buses: list[str]) -> int:
    """Re-run this script in the test VM (this kernel has no vcan0/vcan1); returns its exit code.
    The host's load average goes in and is printed after: other VMs on the host skew the figures.
    With the sja1000 bus the VM gets two emulated buses of two controllers each (CANVM_CAN="2 2")."""
    load = host_load()
    env = dict(os.environ, CANBRIDGE_BENCH_HOST_LOAD=load)
    env.setdefault("CANVM_TIMEOUT", "1200")
    env.setdefault("CANVM_MEM", "2G")
    if "sja1000" in buses:
        env.setdefault("CANVM_CAN", "2 2")
    env["CANVM_ENV"] = f"{env.get('CANVM_ENV', '')} CANBRIDGE_BENCH_HOST_LOAD".strip()
    print(
        f"throughput: no {' '.join(needed_ifaces(buses))} here; re-running in the test VM ({CANVM})",
        file=sys.stderr,
        flush=True,
    )
    rc = subprocess.run([str(CANVM), sys.executable, str(Path(__file__).resolve()), *argv], env=env).returncode
    print(f"host load average (1, 5, 15 min) before: {load}, after: {host_load()}", flush=True)
    return rc


def needed_ifaces(buses: list[str]) -> list[str]:
    return list(dict.fromkeys(i for b in buses for i in BUSES[b]))


@contextlib.contextmanager
def generator_queue():
    """GEN's txqueuelen at GEN_TXQUEUELEN for the duration (real controllers only), then put back."""
    path = Path(f"/sys/class/net/{GEN}/tx_queue_len")
    old = path.read_text().strip()
    if real_bus():
        subprocess.run(["ip", "link", "set", GEN, "txqueuelen", str(GEN_TXQUEUELEN)], check=True, timeout=10)
    try:
        yield
    finally:
        if real_bus():
            subprocess.run(["ip", "link", "set", GEN, "txqueuelen", old], check=False, timeout=10)


def git_commit() -> str:
    """HEAD of the repository, "+dirty" if bridge/ has uncommitted changes (what was measured);
    CANBRIDGE_BENCH_COMMIT names it when the tree is an exported snapshot (no .git)."""
    if os.environ.get("CANBRIDGE_BENCH_COMMIT"):
        return os.environ["CANBRIDGE_BENCH_COMMIT"]
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20)
        dirty = subprocess.run([*git, "status", "--porcelain", "bridge"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def host_load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer rates, 20k-frame runs")
    p.add_argument(
        "--bus",
        default="vcan",
        help="comma-separated, run in this order in one VM boot: vcan (vcan0 -> system -> vcan1, default) and/or "
        "sja1000 (QEMU's emulated SJA1000s: cangen on can1 -> bus A -> can0 -> system -> can2 -> bus B -> can3)",
    )
    p.add_argument("--json", metavar="FILE", help="write every figure and run to FILE")
    p.add_argument(
        "--systems",
        default=DEFAULT_SYSTEMS,
        help="comma-separated subset (default: all; with --cannelloni also cannelloni-tcp,cannelloni-udp)",
    )
    p.add_argument(
        "--cannelloni",
        metavar="PATH",
        help="a cannelloni binary: adds cannelloni-tcp and cannelloni-udp (-t 1000) to the systems",
    )
    p.add_argument(
        "--replayer",
        choices=("candump", "python"),
        default="candump",
        help="the 2,500 frames/s replay: this process sends, candump records (default); or this process does "
        "both (the figures before 2026-12-03)",
    )
    p.add_argument("--python-loop", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    p.add_argument("--python-pair", nargs=3, metavar=("SIDE", "SRC", "DST"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_systems(names: list[str], logdir: Path, cannelloni: str | None = None) -> list[System]:
    known = {
        "cangw": lambda: Cangw(logdir),
        "python-loop": lambda: PythonLoop(logdir),
        "python-pair": lambda: PythonPair(logdir),
        "canbridge-tcp": lambda: Canbridge(logdir, "tcp"),
        "canbridge-udp": lambda: Canbridge(logdir, "udp"),
    }
    if cannelloni:
        known["cannelloni-tcp"] = lambda: Cannelloni(logdir, "tcp", cannelloni)
        known["cannelloni-udp"] = lambda: Cannelloni(logdir, "udp", cannelloni)
    unknown = set(names) - set(known)
    if unknown:
        sys.exit(f"throughput: unknown system(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    return [known[n]() for n in names]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.python_loop:
        python_loop(*args.python_loop)
        return 0
    if args.python_pair:
        python_pair(*args.python_pair)
        return 0
    buses = args.bus.split(",")
    if unknown := set(buses) - set(BUSES):
        sys.exit(f"throughput: unknown bus(es) {', '.join(sorted(unknown))}; known: {', '.join(BUSES)}")
    if not all(Path(f"/sys/class/net/{i}").exists() for i in needed_ifaces(buses)):
        if os.environ.get("CANBRIDGE_IN_TESTVM"):
            sys.exit(f"throughput: no {' '.join(needed_ifaces(buses))} even inside the test VM")
        return run_in_vm(argv, buses)
    missing = [t for t in ("cangen", "candump", "cangw", "tc") if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        sys.exit(f"throughput: needs root and can-utils (missing: {', '.join(missing) or 'root'})")
    cfg = {**(QUICK if args.quick else FULL), "replayer": args.replayer}
    names = args.systems.split(",")
    if args.cannelloni:
        args.cannelloni = str(Path(args.cannelloni).resolve())
        if not os.access(args.cannelloni, os.X_OK):
            sys.exit(f"throughput: {args.cannelloni} is not an executable")
        if args.systems == DEFAULT_SYSTEMS:
            names += ["cannelloni-tcp", "cannelloni-udp"]
    started = time.monotonic()
    header = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "host_load_before": os.environ.get("CANBRIDGE_BENCH_HOST_LOAD", "unknown"),
        "commit": git_commit(),
        "mode": "quick" if args.quick else "full",
        "buses": {b: BUSES[b] for b in buses},
        "config": cfg,
        "replay_rate": REPLAY_RATE,
    }
    print(
        f"canbridge throughput benchmark, {header['date']}, kernel {header['kernel']}, "
        f"{header['cpus']} CPUs, Python {header['python']}, {header['mode']} mode, "
        f"host load average {header['host_load_before']}, canbridge {header['commit']}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="cb-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    results: list[dict] = []
    header["systems"] = names
    header["cangen"] = {}
    for bus in buses:
        use_bus(bus)
        print(f"\n##### bus {bus}: {' -> '.join(dict.fromkeys(BUSES[bus]))}", flush=True)
        with generator_queue():
            plan = RatePlan.calibrate()
            header["cangen"][bus] = vars(plan)
            print(plan.describe(), flush=True)
            for system in make_systems(names, workdir, args.cannelloni):
                try:
                    results.append({"bus": bus, **measure(system, workdir, plan, cfg)})
                except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                    print(f"  {system.name} FAILED: {exc}", flush=True)
    header["duration_s"] = round(time.monotonic() - started, 1)
    for bus in buses:
        use_bus(bus)
        on_bus = [r for r in results if r["bus"] == bus]
        if on_bus:
            print_table(on_bus)
            print_ratios(on_bus)
            print_cpu(on_bus)
            print_losses(on_bus)
    print_side_by_side(results)
    print(">= : no run lost a frame, so the figure is cangen's limit in this VM, not the system's")
    print("speed idx: ms for a fixed Python loop before each system; if it differs, so did the VM's speed")
    print(f"\nlogs: {workdir} (tmpfs, gone with the VM); total {header['duration_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    **header,
                    "figures": {b: {r["system"]: figures(r) for r in results if r["bus"] == b} for b in buses},
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
        print(f"figures written to {args.json}")
    return 0 if len(results) == len(names) * len(buses) else 1


if __name__ == "__main__":
    sys.exit(main())
