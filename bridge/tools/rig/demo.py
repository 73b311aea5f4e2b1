"""`canbridge demo`: the Durango recording through two bridges, over TCP and over UDP (or Mosquitto: mqtt).

Inside a kernel with vcan (the test VM is started automatically when this one has none):
namespaces "gateway" and "remote" joined by veth, a vcan0 in each, a canbridge on each side;
the trace is replayed into the gateway's vcan0 with its recorded timing (divided by --speed)
and recorded on the remote's vcan0. Prints sent/received/lost/reordered and bus-to-bus latency.
While a trace plays, stderr shows frames done and rate (live on a terminal, else a line every 5 s).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# shipped in the wheel beside this module (GPL-3.0, see data/SOURCE.txt), so an installed demo finds it
DEFAULT_TRACE = Path(__file__).resolve().parents[1] / "data" / "durango_mapswitch.log"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="candump log to replay (default: Durango trace)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor (default 1 = recorded timing)")
    p.add_argument("--transport", default="tcp,udp",
                   help="comma list of tcp, udp, cannelloni+tcp, cannelloni+udp, mqtt (gateway -> Mosquitto -> "
                        "remote bridge; default tcp,udp)")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N frames")
    p.add_argument("--capture", metavar="DIR",
                   help="also capture both buses and the veth link into DIR/TRANSPORT.pcapng and run "
                        "`canbridge inspect` on it (report DIR/TRANSPORT.txt, .json, plot .png)")
    return p


def _in_can_kernel() -> bool:
    from bridge.hw.testvm.runner import vcan_available

    return os.geteuid() == 0 and vcan_available()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not Path(args.trace).is_file():
        print(f"canbridge demo: trace not found: {args.trace} (give --trace FILE)", file=sys.stderr)
        return 2
    transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    from bridge.tools.rig.rig import TRANSPORTS

    if any(t not in TRANSPORTS for t in transports):
        print(f"canbridge demo: --transport takes {', '.join(TRANSPORTS)}; got {args.transport!r}", file=sys.stderr)
        return 2
    if args.capture and "mqtt" in transports:  # inspect dissects our protocols on the link, not MQTT
        print("canbridge demo: --capture is not available with --transport mqtt", file=sys.stderr)
        return 2
    if not _in_can_kernel():
        from bridge.hw.testvm.runner import main as testvm

        if os.environ.get("CANBRIDGE_IN_TESTVM") == "1":  # never boot a VM inside the VM
            print("canbridge demo: no vcan in the test VM (needs root and the vcan module)", file=sys.stderr)
            return 3
        print("canbridge demo: this kernel has no vcan; running inside the test VM", file=sys.stderr)
        return testvm(["--vcan", "2", "--timeout", "1800", "--mem", "2G", "--",
                       sys.executable, "-m", "bridge", "demo", *argv])
    return _run(args, transports)


def _run(args, transports: list[str]) -> int:
    from bridge.codec.candump import read_log
    from bridge.tools.logs.progress import Progress, rate_text
    from bridge.tools.rig.rig import Rig

    frames = [(ts, raw) for ts, _iface, raw in read_log(args.trace)]
    if args.limit:
        frames = frames[: args.limit]
    span = (frames[-1][0] - frames[0][0]) / 1e9 if frames else 0
    print(f"trace: {args.trace}: {len(frames)} frames over {span:.1f} s, replay at {args.speed:g}x", flush=True)
    rows = []
    ok = True
    for transport in transports:
        with Rig() as rig:
            rig.start_pair(transport)
            capture = _Capture(rig, transport, args.capture) if args.capture else None
            progress = Progress(f"canbridge demo: {transport}")
            try:
                counted = _Counted(frames, lambda i, p=progress: p.restart() if i == 0 else p.show(
                    lambda: rate_text(i, len(frames), p.elapsed())))  # timed from the first frame
                report = rig.run_traffic(counted, args.speed, on_path_up=capture.start if capture else None)
            finally:
                progress.close()
            if capture:
                capture.stop()
            codes = rig.stop_bridges()
            if capture:
                ok &= capture.inspect() == 0
        ok &= report.complete and codes == [0, 0]
        rows.append((transport, report, codes))
        print(f"{transport}: {report.summary()}; bridge exit codes {codes}", flush=True)
    print(_table(rows))
    return 0 if ok else 1


class _Counted(list):
    """The frames rig.run_traffic replays; on_frame(i) as the replay takes frame i (i frames are done):
    progress on stderr without changing the replay."""

    def __init__(self, frames: list, on_frame) -> None:
        super().__init__(frames)
        self.on_frame = on_frame

    def __iter__(self):
        for i, item in enumerate(super().__iter__()):
            self.on_frame(i)
            yield item


class _Capture:
    """`canbridge capture` of one rig run, then `canbridge inspect` of the file."""

    def __init__(self, rig, transport: str, directory: str) -> None:
        self.rig, self.transport = rig, transport
        self.base = Path(directory) / transport.replace("+", "-")
        self.base.parent.mkdir(parents=True, exist_ok=True)
        self.proc = None

    def start(self) -> None:
        import subprocess

        argv = [sys.executable, "-m", "bridge", "capture", *self.rig.capture_args(self.transport),
                "-w", f"{self.base}.pcapng"]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "capturing on ..." once every socket is open
        if "capturing on" not in line:
            raise RuntimeError(f"canbridge capture failed: {line}{self.proc.stderr.read()}")

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)
        print(self.proc.communicate(timeout=120)[1].strip(), flush=True)

    def inspect(self) -> int:
        import subprocess

        argv = [sys.executable, "-m", "bridge", "inspect", f"{self.base}.pcapng",
                *self.rig.inspect_args(self.transport), "--json", f"{self.base}.json", "--plot", f"{self.base}.png"]
        res = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, COLUMNS="110"))
        Path(f"{self.base}.txt").write_text(res.stdout)
        print(res.stdout + res.stderr, flush=True)
        return res.returncode


def _table(rows) -> str:
    head = f"{'transport':<16}{'sent':>8}{'received':>10}{'lost':>6}{'dup':>5}{'reordered':>11}" \
           f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    lines = ["", head, "-" * len(head)]
    for transport, rep, _codes in rows:
        lat = rep.latency_ms()
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"{transport:<16}{rep.sent:>8}{rep.received:>10}{rep.lost:>6}{rep.duplicated:>5}"
                     f"{rep.reordered:>11}{f(lat['p50']):>9}{f(lat['p99']):>9}{f(lat['max']):>9}")
    return "\n".join(lines)
