"""Capture under load: does `canbridge capture` keep up with the bridge at its highest zero-loss rate?

Setup (needs vcan0 and vcan1; run in the test VM):
    python -m bridge.hw.testvm --vcan 2 -- .venv/bin/python benchmarks/capture.py [--rate 30000] [--frames 100000]

canbridge A (vcan0) and B (vcan1) joined over UDP on 127.0.0.1 (as benchmarks/throughput.py), a
`canbridge capture -i vcan0 -i vcan1 -i lo` process beside them, cangen offering FRAMES frames at
RATE into vcan0 and candump counting them on vcan1. Reported: frames delivered by the bridge, frames
and packets in the capture per interface, the kernel drop counts the capture recorded (pcapng
Interface Statistics Blocks), CPU seconds of every process, and the file size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
tp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tp)

from bridge.codec import pcapng  # noqa: E402


def pcapng_counts(path: Path) -> dict:
    """{interface name: {"packets": EPBs, "isb_recv": .., "isb_drop": ..}} from a pcapng file."""
    names: list[str] = []
    out: dict = {}
    for btype, body in pcapng.blocks(path.read_bytes()):
        if btype == pcapng.IDB_TYPE:
            names.append(pcapng.options(body, 8)[pcapng.IF_NAME].decode())
            out[names[-1]] = {"packets": 0}
        elif btype == pcapng.EPB_TYPE:
            out[names[struct.unpack_from("=I", body)[0]]]["packets"] += 1
        elif btype == pcapng.ISB_TYPE:
            opts = pcapng.options(body, 12)
            entry = out[names[struct.unpack_from("=I", body)[0]]]
            entry["isb_recv"] = struct.unpack("=Q", opts[pcapng.ISB_IFRECV])[0]
            entry["isb_drop"] = struct.unpack("=Q", opts[pcapng.ISB_IFDROP])[0]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=30_000, help="offered frames/s (default 30000)")
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--buffer", type=int, default=64, help="capture's kernel buffer per interface, MiB (-B)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="canbridge-capbench-"))
    plan = tp.RatePlan.calibrate()
    print(plan.describe(), flush=True)
    gap, burst = plan.gap_burst(args.rate)
    system = tp.Canbridge(work, "udp")
    system.start()
    pcap = work / "load.pcapng"
    result: dict = {"offered_rate": args.rate, "frames": args.frames, "gap_ms": gap, "burst": burst}
    try:
        with tp.probe_sockets(system):
            pass  # the path is up
        cap = subprocess.Popen([sys.executable, "-m", "bridge", "capture", "-i", tp.SRC, "-i", tp.DST, "-i", "lo",
                                "-f", "udp port 29601 or udp port 29602", "-B", str(args.buffer), "-w", str(pcap)],
                               stderr=subprocess.PIPE, text=True)
        assert "capturing on" in cap.stderr.readline()
        cpu0 = tp.cpu_seconds(cap.pid)
        run = tp.load_run(system, work, args.frames, gap, burst, f"{args.rate:g}/s with capture")
        while True:  # the capture may still be working through its socket buffers: wait until idle
            before = tp.cpu_seconds(cap.pid)
            time.sleep(1.0)
            if tp.cpu_seconds(cap.pid) - before < 0.05:
                break
        cap_cpu = tp.cpu_seconds(cap.pid) - cpu0
        cap.send_signal(signal.SIGINT)
        summary = cap.communicate(timeout=120)[1]
        result.update(run=run, capture_cpu_s=cap_cpu, capture_summary=summary.strip().splitlines(),
                      pcapng=pcapng_counts(pcap), pcapng_mb=pcap.stat().st_size / 1e6)
    finally:
        system.stop()
    r = result["run"]
    print(f"bridge: {r['received']}/{r['frames']} delivered at {r['rate']:,.0f} frames/s (lost {r['lost']})")
    for name, c in result["pcapng"].items():
        print(f"capture {name}: {c['packets']} records, kernel drops {c.get('isb_drop')}")
    print(f"capture CPU {cap_cpu:.1f} s, file {result['pcapng_mb']:.1f} MB; bridge CPU {r['cpu_s']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
