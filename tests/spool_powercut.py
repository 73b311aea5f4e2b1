"""The in-VM half of tests/test_spool_powercut.py (run by `canbridge testvm --disk IMG`; not a test module).

    python tests/spool_powercut.py write SECONDS   spool on $CANBRIDGE_TESTVM_DISK at the Durango rate, the broker
                                                  away (nothing acknowledged), then cut the VM (sysrq b)
    python tests/spool_powercut.py check          read both spools back; one JSON line
    python tests/spool_powercut.py gateway-write SECONDS
                                                  a gateway process (tests/spool_gateway.py) with spool= on the
                                                  disk and its broker away, `fed N T` lines, and beside it the
                                                  two spools of `write`; then the cut
    python tests/spool_powercut.py check-all FED   check, then gateway-check
    python tests/spool_powercut.py gateway-check FED
                                                  Mosquitto, a consumer, the gateway again (100 new frames from
                                                  FED + 25): what arrived and what was counted, one JSON line

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


def write(seconds: float, between=None) -> None:
    """The two bare spools for `seconds`, then the cut (between(): called after each pass)."""
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
        if between is not None:
            between()
        if seq == passes - 1:
            time.sleep(cut_at)
            print(f"written {seq + 1}", flush=True)
            if between is not None:
                return
            cut(str(seq))
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


def gateway_url(port: int) -> str:
    # max_age: the next boot may come minutes later in the emulated VM; what goes stale is not the point here
    return f"mqtt://127.0.0.1:{port}/fleet?gateway=gw1&max_age=3600&spool={os.path.join(disk(), 'gateway')}"


def cut(after: str) -> None:
    print(f"cut {time.monotonic():.4f} after {after}", flush=True)
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("b")  # reset at once: no sync, no unmount
    time.sleep(10)
    sys.exit("spool_powercut: the VM was not cut")


def gateway_write(seconds: float) -> None:
    """The gateway process and, beside it, the two bare spools of `write` (this process), then the cut."""
    import subprocess

    from tests.mqtt_broker import free_port

    gw = subprocess.Popen([sys.executable, str(Path(__file__).with_name("spool_gateway.py")),
                           gateway_url(free_port()), "0", str(10**7)], stdout=subprocess.PIPE, text=True)
    os.set_blocking(gw.stdout.fileno(), False)
    first = gw.stdout.readline()
    while not first:  # the gateway's start-up is slow in the VM: the spools start with its first pass
        time.sleep(0.05)
        first = gw.stdout.readline()
    print(first, end="", flush=True)
    last = [first.strip()]

    def relay() -> None:
        for line in gw.stdout.readlines():
            print(line, end="", flush=True)
            last[0] = line.strip()

    write(seconds, between=relay)
    relay()
    cut(last[0])


def gateway_check(fed: int) -> None:
    import subprocess
    import tempfile

    from tests.mqtt_broker import Broker
    from tests.spool_gateway import PER_PASS
    from tests.test_mqtt import Side, connected, pump, unique

    broker = Broker(Path(tempfile.mkdtemp()) / "mosquitto").start()
    mirror = Side(f"mqtt://127.0.0.1:{broker.port}/fleet?gateway=backend&source=gw1/can0&read_only=0")
    assert pump([mirror], connected(mirror), timeout=30)
    pump([mirror], lambda: False, timeout=1.0)
    start2 = fed + PER_PASS
    gw = subprocess.Popen([sys.executable, str(Path(__file__).with_name("spool_gateway.py")),
                           gateway_url(broker.port), str(start2), "100"], stdout=subprocess.PIPE, text=True)
    os.set_blocking(gw.stdout.fileno(), False)
    result = {}

    def finished():
        for line in gw.stdout.readlines():
            if line.startswith("{"):
                result["gateway"] = json.loads(line)
        return "gateway" in result and set(range(start2, start2 + 100)) <= unique(mirror.bus.frames)

    pump([mirror], finished, timeout=120)
    pump([mirror], lambda: False, timeout=1.0)  # stragglers
    gw.wait(30)
    result.update(delivered=sorted(unique(mirror.bus.frames)), written=len(mirror.bus.frames),
                  consumer=mirror.peer.counters.snapshot())
    mirror.close()
    broker.stop()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"]:
        write(float(sys.argv[2]))
    elif sys.argv[1:2] == ["check"]:
        check()
    elif sys.argv[1:2] == ["check-all"]:
        check()
        gateway_check(int(sys.argv[2]))
    elif sys.argv[1:2] == ["gateway-write"]:
        gateway_write(float(sys.argv[2]))
    elif sys.argv[1:2] == ["gateway-check"]:
        gateway_check(int(sys.argv[2]))
    else:
        sys.exit(__doc__)
