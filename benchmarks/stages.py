"""Where one frame's time goes inside each bridge, stage by stage (one frame in flight, canbridge over TCP).

Runs INSIDE the test VM (root, vcan0 + vcan1), like benchmarks/hops.py:

    python -m bridge.hw.testvm --vcan 4 -- .venv/bin/python benchmarks/stages.py [--pings 500]

Bridge A (vcan0 -> tcp-listen) and bridge B (tcp -> vcan1) run as usual, except that each is started
through this file (`--bridge OUT ARGS`), which wraps the methods of the forwarding path so that every call
appends (stage letter, time.time_ns()) to a list written to OUT at exit. The pings of throughput.py
(one frame in flight) then run, and for every loop pass that forwarded a frame the time between
consecutive stages is reported as p50/p90 us. The wrappers cost a few us each, so the stages read a little
long; what matters is where the big steps are. Bridge A's first stage is the kernel RX timestamp of the
frame (its wake-up); B's wake-up is not measured here (benchmarks/hops.py times B from the lo packet).
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# (stage letter, module, class, method, letter after the call or None), in the order a frame meets them
A_STAGES = [
    ("C", "bridge.endpoints.socketcan", "SocketCanEndpoint", "_on_readable", None),
    ("D", "bridge.endpoints.socketcan", "SocketCanEndpoint", "_deliver", None),
    ("R", "bridge.core.router", "Router", "from_bus", None),
    ("S", "bridge.endpoints.tcp", "StreamPeer", "send_frames", None),
    ("E", "bridge.protocols.native", "NativeStream", "encode", "e"),
    ("L", "bridge.endpoints.ledger", "WriteLedger", "record", None),
    ("W", "bridge.core.transport", "StreamTransport", "write", "w"),
]
B_STAGES = [
    ("r", "bridge.core.transport", "StreamTransport", "_on_readable", None),
    ("d", "bridge.endpoints.tcp", "StreamPeer", "data_received", None),
    ("f", "bridge.protocols.native", "NativeStream", "feed", "g"),
    ("q", "bridge.core.router", "Router", "from_peer", None),
    ("c", "bridge.endpoints.socketcan", "SocketCanEndpoint", "send_frames", None),
    ("s", "bridge.endpoints.socketcan", "SocketCanEndpoint", "_write", "x"),
]
NAMES = {"F": "kernel RX ts", "P": "epoll returned", "C": "CAN readable", "D": "frame read (recvmsg)",
         "R": "router", "S": "peer", "E": "encode", "e": "encoded", "L": "ledger", "W": "write",
         "w": "sent (send returned)", "r": "TCP readable", "d": "read (recv)", "f": "decode", "g": "decoded",
         "q": "router", "c": "bus", "s": "CAN send", "x": "sent"}


def run_bridge(out: str, args: list[str]) -> None:
    """`python -m bridge ARGS` with every stage of A_STAGES and B_STAGES marked; marks written to `out`."""
    import importlib

    import bridge.core.reactor as reactor_mod

    marks: list = []
    add, now = marks.append, time.time_ns

    def wrap(cls, name: str, tag: str, after: str | None) -> None:
        inner = getattr(cls, name)

        def marked(self, *a):
            add((tag, now()))
            result = inner(self, *a)
            if after:
                add((after, now()))
            return result

        setattr(cls, name, marked)

    for tag, module, cls, name, after in A_STAGES + B_STAGES:
        wrap(getattr(importlib.import_module(module), cls), name, tag, after)
    deliver = importlib.import_module("bridge.endpoints.socketcan").SocketCanEndpoint._deliver

    def frame_ts(self, batch, ovfl):  # the first frame's kernel RX timestamp: A's wake-up starts there
        if batch:
            add(("F", batch[0][1]))
        return deliver(self, batch, ovfl)

    importlib.import_module("bridge.endpoints.socketcan").SocketCanEndpoint._deliver = frame_ts

    class MarkedEpoll:
        def __init__(self, epoll) -> None:
            self.epoll = epoll

        def poll(self, *a):
            ready = self.epoll.poll(*a)
            if ready:
                add(("P", now()))
            return ready

        def __getattr__(self, name):
            return getattr(self.epoll, name)

    init = reactor_mod.Reactor.__init__

    def marked_init(self, *a, **k):
        init(self, *a, **k)
        self._epoll = MarkedEpoll(self._epoll)

    reactor_mod.Reactor.__init__ = marked_init
    atexit.register(lambda: Path(out).write_text("".join(f"{k} {v}\n" for k, v in marks)))
    import runpy

    sys.argv = ["bridge", *args]
    runpy.run_module("bridge", run_name="__main__")


def passes(path: Path) -> list[dict]:
    """The marks cut into loop passes (each starts at P); per pass, the first time of each stage."""
    out, cur = [], None
    for line in path.read_text().split("\n"):
        if not line:
            continue
        tag, value = line.split()
        if tag == "P":
            cur = {"P": int(value)}
            out.append(cur)
        elif cur is not None:
            cur.setdefault(tag, int(value))
    return out


def report(label: str, path: Path, order: list[str], last: int) -> None:
    rows = [p for p in passes(path)[-last:] if all(t in p for t in order)]
    print(f"bridge {label}: {len(rows)} passes that forwarded a frame")
    for a, b in zip(order, order[1:]):
        us = sorted((p[b] - p[a]) / 1e3 for p in rows)
        if us:
            p50, p90 = us[len(us) // 2], us[int(len(us) * 0.9)]
            print(f"  {NAMES[a]:>22} -> {NAMES[b]:<22} p50 {p50:7.1f} us  p90 {p90:7.1f}")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--bridge":
        run_bridge(sys.argv[2], sys.argv[3:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pings", type=int, default=500)
    args = p.parse_args()
    import throughput as tp
    from bridge.tools.logs import probe

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"stages-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, __file__, "--bridge"]
    a = subprocess.Popen([*me, str(work / "A"), tp.SRC, "tcp-listen://127.0.0.1:29600"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    b = subprocess.Popen([*me, str(work / "B"), tp.DST, "tcp://127.0.0.1:29600"], stderr=subprocess.DEVNULL)
    try:
        tx, rx = probe.open_can(tp.SRC, recv_own=True), probe.open_can(tp.DST)
        time.sleep(6)  # both bridges started and connected (CPython starts in ~2-3 s in the VM)
        tp.latency_in_flight(tx, rx, 50)  # warm-up
        rep = tp.latency_in_flight(tx, rx, args.pings)
        print(f"stages: {args.pings} pings one in flight, end to end {rep.latency_ms()}")
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGINT)
        for proc in (a, b):
            proc.wait(30)
    report("A (vcan0 -> TCP)", work / "A", ["F", "P", "C", "D", "R", "S", "E", "e", "L", "W", "w"], args.pings + 20)
    report("B (TCP -> vcan1)", work / "B", ["P", "r", "d", "f", "g", "q", "c", "s", "x"], args.pings + 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
