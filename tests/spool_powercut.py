"""The in-VM half of tests/test_spool_powercut.py (run by `canbridge testvm --disk IMG`; not a test module).

    python tests/spool_powercut.py write SECONDS   spool on $CANBRIDGE_TESTVM_DISK at the Durango rate, the broker
                                                  away (nothing acknowledged), then cut the VM (sysrq b)
    python tests/spool_powercut.py check          read both spools back; one JSON line

`write` feeds two spools in step, as the outbox does (one message of 25 frames per 10 ms pass, the
numbering state with each append): `synced`, the spool as shipped (spool_sync 100 ms / 1,000 frames), and
`unsynced`, the same with its fsyncs disabled (the control: what a spool without fsync keeps after a power
cut). After each pass it prints `synced SEQ` for the last seq of the synced spool whose fsync has returned
(stdout is the VM's serial port: the host has the line before the cut). The cut comes at a random point of
the last pass, without sync or unmount: `echo b > /proc/sysrq-trigger`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.core.stats import Counters  # noqa: E402
from bridge.endpoints.mqtt_store import Message  # noqa: E402
from bridge.endpoints.outbox_spool import SpoolBackend  # noqa: E402

FRAMES_PER_PASS = 25  # 2,500 frames/s in 10 ms passes
PASS_S = 0.01
RECORDS = bytes(28 * FRAMES_PER_PASS)  # 25 FRAME records' worth (the content does not matter here)
TOPIC = "fleet/gw1/can0/rx"


def disk() -> str:
    d = os.environ.get("CANBRIDGE_TESTVM_DISK")
    if not d:
        sys.exit("spool_powercut: CANBRIDGE_TESTVM_DISK is not set (run it under canbridge testvm --disk)")
    return d


class Timers:
    """call_later for the backend: the window's fsync timer, run by this loop between passes."""

    def __init__(self) -> None:
        self.due: list = []

    def call_later(self, delay, fn):
        entry = [time.monotonic() + delay, fn]
        self.due.append(entry)
        return type("T", (), {"cancel": lambda _self: self.due.remove(entry) if entry in self.due else None})()

    def run(self) -> None:
        now = time.monotonic()
        for entry in [e for e in self.due if e[0] <= now]:
            self.due.remove(entry)
            entry[1]()


def write(seconds: float) -> None:
    timers = Timers()
    synced = SpoolBackend(os.path.join(disk(), "synced"), call_later=timers.call_later)
    unsynced = SpoolBackend(os.path.join(disk(), "unsynced"), sync_interval=3600, sync_frames=10**12)
    passes = int(seconds / PASS_S)
    cut_at = random.uniform(0, PASS_S)
    t0 = time.monotonic()
    for seq in range(passes):
        state = {"session": 1, "next_seq": seq + 1, "published": {TOPIC: (seq + 1) * FRAMES_PER_PASS}, "dropped": {}}
        for b in (synced, unsynced):
            b.append([Message(seq, 0, TOPIC, FRAMES_PER_PASS, time.time(), RECORDS, (1, seq * FRAMES_PER_PASS))],
                     dict(state))
        timers.run()
        if synced.spool.fsyncs and not synced.spool._dirty:  # everything up to seq is on the disk
            print(f"synced {seq}", flush=True)
        if seq == passes - 1:
            time.sleep(cut_at)
            print(f"cut after {seq}", flush=True)
            with open("/proc/sysrq-trigger", "w") as f:
                f.write("b")  # reset at once: no sync, no unmount
            time.sleep(10)
        delay = t0 + (seq + 1) * PASS_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sys.exit("spool_powercut: the VM was not cut")


def check() -> None:
    out = {}
    for name in ("synced", "unsynced"):
        c = Counters()
        b = SpoolBackend(os.path.join(disk(), name), c)
        seqs = [m.seq for m in b.pending()]
        out[name] = {"seqs": seqs, "frames": b.frames, "state": b.load_state(),
                     "corrupt": c.errors.get("spool_corrupt", 0)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"]:
        write(float(sys.argv[2]))
    elif sys.argv[1:2] == ["check"]:
        check()
    else:
        sys.exit(__doc__)
