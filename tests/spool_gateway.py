"""A gateway process for tests/test_spool_gateway.py (not a test module): one MQTT peer opened from URL (as
tests/test_mqtt.py's Side does: the real config, registry, reactor and router, a recording bus), fed
FRAMES counted frames from START, 25 per 10 ms pass (the Durango rate); after each pass it prints
`fed N T` (N: frames handed over in passes that have ended: their flush, the spool's write, is done;
T: time.monotonic() then).
Then, while the outbox holds anything, it keeps the loop running; then prints its counters as one JSON
line and closes.

    python tests/spool_gateway.py URL START FRAMES
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_mqtt import Side, counted  # noqa: E402

PER_PASS = 25
PASS_S = 0.01


def main(url: str, start: int, frames: int) -> None:
    gw = Side(url)
    t0 = time.monotonic()
    for i, first in enumerate(range(start, start + frames, PER_PASS)):
        gw.router.from_bus(gw.bus, 0, counted(min(PER_PASS, start + frames - first), first))
        gw.reactor.run_once(0)
        print(f"fed {first - start + PER_PASS} {time.monotonic():.4f}", flush=True)
        while (delay := t0 + (i + 1) * PASS_S - time.monotonic()) > 0:
            gw.reactor.run_once(delay)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (gw.peer.counters.gauges.get("queued_messages")
                                           or not gw.peer.connected):
        gw.reactor.run_once(0.01)
    print(json.dumps(gw.peer.counters.snapshot()), flush=True)
    gw.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
