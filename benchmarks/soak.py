"""Soak and fault run (issue 5): the Durango trace looped at 4x for 10 minutes through two bridges,
over TCP and over UDP, with faults injected on a schedule (tests/rig/soak.py: peer SIGKILL and restart,
veth down/up, 100% loss for 10 s, a slow TCP consumer, a port scan with garbage).

    python -m bridge.hw.testvm --vcan 2 --timeout 3600 -- .venv/bin/python benchmarks/soak.py [--minutes 10]

Prints, per transport: frames sent and delivered, frames lost inside and outside fault windows,
the bridges' drop counters by reason, RSS before/after (growth after a 20 % warm-up), exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.codec.candump import read_log  # noqa: E402
from bridge.tools.rig.demo import DEFAULT_TRACE  # noqa: E402
from tests.rig.soak import FAULTS, Soak  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="per transport (default 10)")
    p.add_argument("--speed", type=float, default=4.0)
    p.add_argument("--transport", default="tcp,udp")
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    frames = [(ts, raw) for ts, _, raw in read_log(DEFAULT_TRACE)]
    results = []
    for transport in args.transport.split(","):
        res = Soak(transport).run(frames, args.minutes * 60, args.speed, args.faults.split(","))
        print(res.summary(), flush=True)
        results.append({**asdict(res), "lost": res.lost, "lost_in_windows": res.lost_in_windows(),
                        "rss_growth_mb": {k: res.rss_growth_mb(k) for k in res.rss_mb}})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
