"""Where a frame's latency goes, per bridge: kernel timestamps at each hop of vcan0 -> A -> lo -> B -> vcan1.

Runs INSIDE the test VM (root, vcan0 + vcan1), like benchmarks/throughput.py, whose systems it uses:

    python -m bridge.hw.testvm --vcan 4 -- .venv/bin/python benchmarks/hops.py --cannelloni PATH \\
        [--systems canbridge-tcp,cannelloni-tcp,...] [--rounds 2] [--pyspy PATH/py-spy] [--strace]

Each frame is timed three times, all kernel timestamps of the same clock:
  t0  the sender's own loopback copy on vcan0 (the moment bridge A's socket gets it too)
  t1  the first sighting of the packet carrying it on `lo` (an AF_PACKET socket: the moment
      bridge A's send()/sendto() handed it to the kernel, within microseconds)
  t2  the recorder's copy on vcan1 (bridge B wrote it)
A = t1 - t0 is bridge A's residence (wake-up, CAN read, encode, network send); B = t2 - t1 is
bridge B's (wake-up, network read, decode, CAN write). Frames carry a marker (data c0 de + a 32-bit
counter) found in the lo payload whatever the wire format. Two loads: one frame in flight, and an
even replay at 2,500 frames/s. Systems are measured in turn, `--rounds` times over, alternated in one
boot, so a comparison is never across VM boots.

--pyspy PATH: after the timed runs of each canbridge system, sample both bridges with py-spy (as
root, `record --format raw`, idle frames left out) during another one-in-flight and 2.5k run; the
collapsed stacks go to out/hops-<system>-<A|B>-<load>.txt (summarised by benchmarks/stacks.py).
--strace: count the system calls of each process (strace -c -f) over 200 pings one in flight and
2,000 frames at 2.5k/s, printed per frame.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402

from bridge.codec.socketcan import pack_can  # noqa: E402
from bridge.tools.logs import probe  # noqa: E402

ROOT = tp.ROOT
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
MARK = b"\xc0\xde"
_TIMESPEC = struct.Struct("=qq")
GAP_S = 0.0  # pause between pings (--gap-ms); 0 as in throughput.py: the next ping follows the arrival


def frame(i: int) -> bytes:
    return pack_can(i % 0x7FF, MARK + b"\x00\x00" + i.to_bytes(4, "big"))


def number(raw: bytes) -> int | None:
    data = raw[8:16]
    return int.from_bytes(data[4:8], "big") if data[:2] == MARK else None


class LoCapture:
    """Every packet on lo with its kernel timestamp (AF_PACKET, ETH_P_ALL)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("lo", 0))
        self.sock.setblocking(False)
        self.packets: list[tuple[int, bytes]] = []

    def drain(self) -> None:
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            ts = 0
            for _lvl, _kind, d in anc:
                sec, nsec = _TIMESPEC.unpack(d)
                ts = sec * 1_000_000_000 + nsec
            if MARK in data:
                self.packets.append((ts, data))

    def first_seen(self) -> dict[int, int]:
        """frame number -> earliest lo timestamp of a packet carrying it."""
        seen: dict[int, int] = {}
        for ts, data in self.packets:
            p = data.find(MARK)
            while p >= 0:
                n = int.from_bytes(data[p + 4 : p + 8], "big")
                if n not in seen or ts < seen[n]:
                    seen[n] = ts
                p = data.find(MARK, p + 2)
        return seen

    def close(self) -> None:
        self.sock.close()


def pct(values: list, q: float):
    return probe.percentile(sorted(values), q)


def stage_report(sent: list, received: list, lo: dict[int, int]) -> dict:
    t0 = {number(raw): ts for ts, raw in sent if number(raw) is not None}
    t2 = {number(raw): ts for ts, raw in received if number(raw) is not None}
    a, b, total = [], [], []
    for n, s in t0.items():
        if n in t2:
            total.append(t2[n] - s)
            if n in lo:
                a.append(lo[n] - s)
                b.append(t2[n] - lo[n])
    out = {"sent": len(t0), "received": len(t2), "timed": len(a)}
    for name, vals in (("total", total), ("A", a), ("B", b)):
        out[name] = {q: (None if not vals else pct(vals, q) / 1e6) for q in (50, 90, 99)}
    return out


def in_flight(tx, rx, cap: LoCapture, count: int, first: int) -> tuple[list, list]:
    sent: list = []
    received: list = []
    for i in range(first, first + count):
        want = len(received) + 1
        probe.send(tx, frame(i))
        deadline = time.monotonic() + 1.0
        while len(received) < want and (left := deadline - time.monotonic()) > 0:
            select.select([rx], [], [], left)
            probe.drain(rx, received)
        probe.drain(tx, sent, own_only=True)
        cap.drain()
        if GAP_S:
            time.sleep(GAP_S)
    time.sleep(0.05)
    probe.drain(tx, sent, own_only=True)
    probe.drain(rx, received)
    cap.drain()
    return sent, received


def at_rate(tx, rx, cap: LoCapture, count: int, first: int, rate: float = tp.REPLAY_RATE) -> tuple[list, list]:
    frames = [(k * 1_000_000_000 // int(rate), frame(first + k)) for k in range(count)]
    sent: list = []
    received: list = []

    def pump():
        probe.drain(tx, sent, own_only=True)
        probe.drain(rx, received)

    probe.replay(tx, frames, 1.0, on_wait=pump)
    quiet = time.monotonic()
    while len(received) < count and time.monotonic() - quiet < 2.0:
        before = len(received)
        pump()
        if len(received) != before:
            quiet = time.monotonic()
        time.sleep(0.01)
    pump()
    cap.drain()
    return sent, received


def fmt(st: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return "  ".join(
        f"{name} {f(st[name][50])}/{f(st[name][90])}/{f(st[name][99])}" for name in ("total", "A", "B")
    ) + f"  (timed {st['timed']}/{st['sent']})"


def profile_pyspy(system: tp.System, pyspy: str, tx, rx, cap, pings: int, replay: int, first: int) -> int:
    for load in ("1inflight", "2500"):
        spies = {}
        for label, proc in system.procs.items():
            out = ROOT / "out" / f"hops-{system.name}-{label}-{load}.txt"
            spies[label] = subprocess.Popen(
                [pyspy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "250",
                 "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # py-spy attaches
        if load == "1inflight":
            in_flight(tx, rx, cap, pings, first)
            first += pings
        else:
            at_rate(tx, rx, cap, replay, first)
            first += replay
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
        for spy in spies.values():
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        cap.packets.clear()
    return first


def profile_strace(system: tp.System, tx, rx, cap, first: int) -> tuple[int, dict]:
    counts = {}
    for load, n in (("1inflight", 200), ("2500", 2000)):
        tracers = {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, proc in system.procs.items():
                path = Path(tmp) / label
                tracers[label] = (subprocess.Popen(
                    ["strace", "-c", "-f", "-o", str(path), "-p", str(proc.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path)
            time.sleep(1.0)
            if load == "1inflight":
                in_flight(tx, rx, cap, n, first)
            else:
                at_rate(tx, rx, cap, n, first)
            first += n
            for tracer, _ in tracers.values():
                tracer.send_signal(signal.SIGINT)
            for label, (tracer, path) in tracers.items():
                tracer.wait(30)
                calls = {}
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
                        calls[parts[-1]] = int(parts[3])
                ordered = sorted(calls.items(), key=lambda kv: -kv[1])
                counts[f"{label} {load}"] = {k: round(v / n, 2) for k, v in ordered}
        cap.packets.clear()
    return first, counts


def systems(names: list[str], logdir: Path, cannelloni: str | None, trees: list[str]) -> list:
    """throughput.py's systems; `canbridge-tcp@TAG` runs the tree given as --tree TAG=DIR."""
    where = dict(t.split("=", 1) for t in trees)
    out = []
    for name in names:
        base, _, tag = name.partition("@")
        system = tp.make_systems([base], logdir, cannelloni)[0]
        if tag:
            system.name = name
            system.cwd = Path(where[tag]).resolve()
        out.append(system)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cannelloni", metavar="PATH")
    p.add_argument("--systems", default="canbridge-tcp,cannelloni-tcp,canbridge-udp,cannelloni-udp")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pings", type=int, default=300)
    p.add_argument("--replay", type=int, default=5000)
    p.add_argument("--pyspy", metavar="PATH")
    p.add_argument("--strace", action="store_true")
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="TAG=DIR",
        help="also run canbridge-tcp/udp from the source tree DIR, named canbridge-tcp@TAG (A/B in one boot)",
    )
    p.add_argument("--gap-ms", type=float, default=0.0, help="pause between one-in-flight pings")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    global GAP_S
    GAP_S = args.gap_ms / 1000
    if not Path("/sys/class/net/vcan0").exists():
        sys.exit("hops: run me in the test VM (python -m bridge.hw.testvm --vcan 4 -- ...)")
    if args.cannelloni:
        args.cannelloni = str(Path(args.cannelloni).resolve())
    logdir = Path(tempfile.mkdtemp(prefix="cb-hops-"))
    names = args.systems.split(",")
    print(f"hops: commit {tp.git_commit()}, systems {names}, {args.rounds} rounds; "
          "ms p50/p90/p99 of total (vcan0 -> vcan1), A (vcan0 -> lo), B (lo -> vcan1)", flush=True)
    results: list = []
    first = 0
    for rnd in range(args.rounds):
        for system in systems(names, logdir, args.cannelloni, args.tree):
            speed = tp.speed_index_ms()
            system.start()
            cap = LoCapture()
            try:
                with tp.probe_sockets(system) as (tx, rx):
                    in_flight(tx, rx, cap, 50, first)  # warm-up
                    first += 50
                    cap.packets.clear()
                    cpu0 = system.cpu()
                    s, r = in_flight(tx, rx, cap, args.pings, first)
                    cpu1 = system.cpu()
                    first += args.pings
                    one = stage_report(s, r, cap.first_seen())
                    one["cpu_ms_per_frame"] = {k: 1e3 * (cpu1[k] - cpu0[k]) / args.pings for k in cpu1}
                    cap.packets.clear()
                    cpu0 = system.cpu()
                    s, r = at_rate(tx, rx, cap, args.replay, first)
                    cpu1 = system.cpu()
                    first += args.replay
                    rate = stage_report(s, r, cap.first_seen())
                    rate["cpu_ms_per_frame"] = {k: 1e3 * (cpu1[k] - cpu0[k]) / args.replay for k in cpu1}
                    cap.packets.clear()
                    entry = {"round": rnd, "system": system.name, "speed_index_ms": speed, "one": one, "rate": rate}
                    print(f"[{rnd}] {system.name:<15} speed {speed:.0f}\n"
                          f"    1 in flight: {fmt(one)}  CPU ms/frame {one['cpu_ms_per_frame']}\n"
                          f"    2.5k/s:      {fmt(rate)}  CPU ms/frame {rate['cpu_ms_per_frame']}", flush=True)
                    if rnd == args.rounds - 1 and args.pyspy and system.name.startswith("canbridge"):
                        first = profile_pyspy(system, args.pyspy, tx, rx, cap, args.pings, args.replay, first)
                    if rnd == args.rounds - 1 and args.strace:
                        first, entry["syscalls_per_frame"] = profile_strace(system, tx, rx, cap, first)
                        for k, v in entry["syscalls_per_frame"].items():
                            print(f"    syscalls/frame {k}: {v}", flush=True)
                    results.append(entry)
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                print(f"  {system.name} FAILED: {exc}", flush=True)
            finally:
                cap.close()
                system.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
