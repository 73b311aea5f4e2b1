"""Footprint of a plain bridge: peak RSS (VmHWM) and start-up, for one or more source trees side by side.

    canbridge testvm --vcan 2 -- python benchmarks/footprint.py [--tree OLD_CHECKOUT] [--rounds 3]

Each round starts, for each tree in turn, a plain TCP pair in the VM's root namespace (gateway
`vcan0 tcp-listen://127.0.0.1:PORT`, remote `vcan1 tcp://127.0.0.1:PORT`, as `python -m bridge` run
from that tree) and reports:
  start-up     seconds from spawning both bridges to the first frame crossing vcan0 -> vcan1
               (a frame is offered every 20 ms until one arrives)
  import       seconds of imports in the gateway process, from its own `-X importtime` report (every
               module the running bridge imported, summed over the top-level imports)
  RSS          VmHWM of each bridge after 2,000 more frames have crossed, in MB
Trees are alternated within a round, so a slow VM minute hits them alike. Needs vcan0/vcan1 and root.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.codec import socketcan as sc  # noqa: E402
from bridge.tools.logs import probe  # noqa: E402

PORT = 29780
FRAMES = 2000
WAIT_S = 60  # a step that takes longer than this in the emulated VM is broken, not slow


def _vmhwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def _import_s(stderr: str) -> float:
    total = 0
    for line in stderr.splitlines():  # "import time: self | cumulative | name"; top-level lines sum up
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m:
            total += int(m.group(1))
    return total / 1e6


def _run_pair(tree: Path, tx, rx) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.monotonic()
    log = tree / "out" / "footprint-gateway.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as gw_err:
        procs = [subprocess.Popen([sys.executable, *flags, "-m", "bridge", *args], cwd=tree, env=env,
                                  stdout=subprocess.DEVNULL, stderr=err)
                 for flags, args, err in (
                     (["-X", "importtime"], ["vcan0", f"tcp-listen://127.0.0.1:{PORT}"], gw_err),
                     ([], ["vcan1", f"tcp://127.0.0.1:{PORT}"], subprocess.DEVNULL))]
    try:
        marker = sc.pack_can(0x7FF, b"up")
        got: list = []
        while not any(raw == marker for _, raw in got):
            if time.monotonic() - start > WAIT_S:
                raise RuntimeError(f"{tree}: no frame crossed in {WAIT_S} s")
            probe.send(tx, marker)
            time.sleep(0.02)
            probe.drain(rx, got)
        startup = time.monotonic() - start
        got.clear()
        for i in range(FRAMES):
            probe.send(tx, sc.pack_can(0x123, i.to_bytes(4, "big")))
            if i % 50 == 49:
                time.sleep(0.01)
                probe.drain(rx, got)
        deadline = time.monotonic() + WAIT_S
        while len(got) < FRAMES and time.monotonic() < deadline:
            time.sleep(0.05)
            probe.drain(rx, got)
        return {"startup": startup, "rss": [_vmhwm_mb(p.pid) for p in procs], "frames": len(got),
                "import": _import_s(log.read_text(errors="replace"))}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        probe.drain(rx, [])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="another source tree (e.g. an old checkout)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    trees = [ROOT, *[Path(t).resolve() for t in args.tree]]
    results: dict[Path, list] = {t: [] for t in trees}
    tx, rx = probe.open_can("vcan0"), probe.open_can("vcan1")
    for _ in range(args.rounds):
        for tree in trees:
            results[tree].append(_run_pair(tree, tx, rx))
    print(f"{'tree':<40}{'start-up s':>12}{'import s':>10}{'RSS MB gw':>11}{'RSS MB remote':>15}{'frames':>8}")
    for tree, rs in results.items():
        med = lambda key, i=None, rs=rs: statistics.median(r[key] if i is None else r[key][i] for r in rs)  # noqa: E731
        print(f"{str(tree):<40}{med('startup'):>12.2f}{med('import'):>10.3f}{med('rss', 0):>11.1f}"
              f"{med('rss', 1):>15.1f}{min(r['frames'] for r in rs):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
