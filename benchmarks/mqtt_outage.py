"""Issue 20's acceptance: a round trip of N frames (default 20,000) per gateway through real gateways, a
real Mosquitto (tests/mqtt_broker.py) and canbridge mirrors (format=native, source=), with the broker
paused (SIGSTOP, messages unacknowledged) and then killed (SIGKILL) and restarted twice mid-stream.

Checked per gateway, each run: every frame its mirror got is in the order sent (ids strictly increasing:
none twice), and delivered + dropped at the gateway + lost_in_transit at the mirror = sent (with
unconfirmed_frames at the gateway counted as well: they are delivered or seen as a gap).

    .venv/bin/python -m benchmarks.mqtt_outage --runs 10 [--frames 20000] [--gateways 2]
Prints one line per run and the pass count; exit 1 if any run missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.mqtt_broker import Broker
from tests.test_mqtt import Side, counted, feed, pump, url


def _ids(frames):
    return [int.from_bytes(raw[8:12], "big") for raw, _ts in frames]


def one_run(directory: Path, n: int, gateways: int) -> tuple[bool, str]:
    broker = Broker(directory).start()
    gws = [Side(url(broker, gateway=f"gw{i}")) for i in range(gateways)]
    mirrors = [Side(url(broker, gateway=f"backend{i}", source=f"gw{i}/can0", read_only=0)) for i in range(gateways)]
    every = gws + mirrors
    try:
        assert pump(every, lambda: all(s.peer.connected for s in every), timeout=15)
        pump(every, lambda: False, timeout=0.3)
        sent, step = 0, 100
        outages = {n // 3, 2 * n // 3}
        while sent < n:
            if any(sent <= o < sent + step for o in outages):
                broker.pause()  # messages written, never acknowledged
                for gw in gws:
                    feed(gw, counted(step, sent), per_pass=5)
                sent += step
                pump(gws, lambda: False, timeout=0.2)
                broker.kill()
                pump(every, lambda: not any(s.peer.connected for s in every), timeout=5)
                for _ in range(5):  # stored while the broker is away
                    for gw in gws:
                        feed(gw, counted(step, sent), per_pass=5)
                    sent += step
                broker.start()
                pump(mirrors, lambda: all(m.peer.connected for m in mirrors), timeout=15)
                pump(mirrors, lambda: False, timeout=0.3)
                continue
            for gw in gws:
                feed(gw, counted(step, sent), per_pass=5)
            sent += step
            pump(every, lambda: False, timeout=0.005)

        def settled():
            return all(g.peer.counters.tx_frames + sum(g.peer.counters.dropped.values())
                       + g.peer.counters.gauges.get("unconfirmed_frames", 0) >= sent for g in gws)

        pump(every, settled, timeout=60)
        pump(every, lambda: False, timeout=0.5)
        notes, ok = [], True
        for gw, m in zip(gws, mirrors):
            got = _ids(m.bus.frames)
            ordered = all(a < b for a, b in zip(got, got[1:]))
            g, c = gw.peer.counters, m.peer.counters
            lost = c.dropped.get("lost_in_transit", 0)
            gw_dropped = sum(g.dropped.values())
            identity = len(got) + gw_dropped + lost == sent
            ok &= ordered and identity
            notes.append(f"{gw.peer.gateway}: sent {sent} delivered {len(got)} dropped {gw_dropped} lost {lost} "
                         f"dup_skipped {c.errors.get('duplicate_frames', 0)} unconfirmed "
                         f"{g.gauges.get('unconfirmed_frames', 0)} ordered {ordered} identity {identity}")
        return ok, "; ".join(notes)
    finally:
        for s in every:
            s.close()
        broker.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--gateways", type=int, default=2)
    args = ap.parse_args(argv)
    passed = 0
    for run in range(args.runs):
        t = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            try:
                ok, notes = one_run(Path(d), args.frames, args.gateways)
            except AssertionError as exc:
                ok, notes = False, f"setup failed: {exc!r}"
        passed += ok
        print(f"run {run + 1}: {'pass' if ok else 'MISS'} in {time.monotonic() - t:.1f} s: {notes}", flush=True)
    print(f"{passed}/{args.runs} runs passed")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
