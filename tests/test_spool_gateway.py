"""SIGKILL of a spooling gateway (issue 21): a real gateway process with spool=DIR takes frames while its
broker is down, is killed with SIGKILL, and starts again once Mosquitto is up. Everything it had handed
over in loop passes that ended (the spool's write(2) is done: no fsync needed for a killed process)
reaches a consumer, in order; the consumer does not count the restart as loss (the PUB_COUNT session
and numbering continue from the spool); so per gateway delivered + counted = sent. Fails on the
in-memory outbox (issue 20): the consumer got 0 of the frames."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


from tests.mqtt_broker import Broker, needs_mosquitto
from tests.spool_gateway import PER_PASS
from tests.test_mqtt import Side, connected, pump, unique

pytestmark = needs_mosquitto
ROOT = Path(__file__).resolve().parents[1]
FED_BEFORE_KILL = 3000


def gateway(url: str, start: int, frames: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "spool_gateway.py"), url, str(start), str(frames)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_sigkilled_gateway_loses_nothing_its_spool_took(tmp_path):
    broker = Broker(tmp_path / "mosquitto")  # its port, not listening yet: the gateway spools
    spool = tmp_path / "spool"
    url = f"mqtt://127.0.0.1:{broker.port}/fleet?gateway=gw1&spool={spool}"

    first = gateway(url, 0, 10**6)
    fed = 0
    for line in first.stdout:
        if line.startswith("fed "):
            fed = int(line.split()[1])
            if fed >= FED_BEFORE_KILL:
                break
    first.send_signal(signal.SIGKILL)  # mid-stream: a pass may be under way
    first.wait(10)
    assert fed >= FED_BEFORE_KILL, "the gateway did not take frames"
    assert any(n.startswith("seg-") for n in os.listdir(spool / os.listdir(spool)[0]))

    broker.start()
    try:
        mirror = Side(f"mqtt://127.0.0.1:{broker.port}/fleet?gateway=backend&source=gw1/can0&read_only=0")
        assert pump([mirror], connected(mirror))
        pump([mirror], lambda: False, timeout=0.3)  # subscribed before the gateway comes back
        start2 = fed + PER_PASS  # past the pass under way at the kill: its frames may or may not be spooled
        second = gateway(url, start2, 500)
        done = {}

        def all_there():
            line = second.stdout.readline() if second.poll() is None or not done else ""
            if line.startswith("{"):
                done["counters"] = json.loads(line)
            want = set(range(fed)) | set(range(start2, start2 + 500))
            return "counters" in done and want <= unique(mirror.bus.frames)

        os.set_blocking(second.stdout.fileno(), False)
        assert pump([mirror], all_there, timeout=60), (len(unique(mirror.bus.frames)), done)
        second.wait(30)
        delivered = unique(mirror.bus.frames)
        under_way = delivered & set(range(fed, start2))
        assert under_way in (set(), set(range(fed, start2)))  # the pass under way: whole or not at all
        sent = fed + len(under_way) + 500
        rx, gw = mirror.peer.counters, done["counters"]
        counted = sum(gw["dropped"].values()) + rx.dropped["lost_in_transit"]
        assert len(delivered) + counted == sent, (rx.snapshot(), gw)
        assert counted == 0 and len(mirror.bus.frames) == len(delivered)  # no loss, no duplicate written
        order = [int.from_bytes(raw[8:12], "big") for raw, _ in mirror.bus.frames]
        assert order == sorted(order)  # the spool first, in order, then the new frames
        mirror.close()
    finally:
        broker.stop()
