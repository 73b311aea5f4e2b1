"""Issue 20's acceptance: a round trip of N frames (default 20,000) per gateway through real gateways, a
real Mosquitto (tests/mqtt_broker.py) and canbridge mirrors (format=native, source=), with the broker
paused (SIGSTOP, messages unacknowledged) and then killed (SIGKILL) and restarted twice mid-stream.

Gateways alternate between format=native and format=json. Checked per gateway, each run: every frame its
mirror got is in the order sent; native: ids strictly increasing (none twice: the mirror skips
redelivered frames by PUB_COUNT) and delivered + dropped at the gateway + lost_in_transit at the mirror =
sent; json (no count, so a reordering is not hidden as a loss plus a skipped duplicate): the first
arrival of each frame in increasing order, redeliveries only of frames already seen, and every frame
delivered or dropped at the gateway (a broker loss would show here as missing frames).

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
    fmts = ["native" if i % 2 == 0 else "json" for i in range(gateways)]
    gws = [Side(url(broker, gateway=f"gw{i}", format=f)) for i, f in enumerate(fmts)]
    mirrors = [Side(url(broker, gateway=f"backend{i}", format=f, source=f"gw{i}/can0", read_only=0))
               for i, f in enumerate(fmts)]
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
        for gw, m, fmt in zip(gws, mirrors, fmts):
            got = _ids(m.bus.frames)
            g, c = gw.peer.counters, m.peer.counters
            lost = c.dropped.get("lost_in_transit", 0)
            gw_dropped = sum(g.dropped.values())
            if fmt == "native":
                ordered = all(a < b for a, b in zip(got, got[1:]))
                delivered, twice = len(got), 0
            else:
                first, seen = [], set()
                for i in got:
                    if i not in seen:
                        seen.add(i)
                        first.append(i)
                ordered = all(a < b for a, b in zip(first, first[1:]))
                delivered, twice = len(first), len(got) - len(first)
            identity = delivered + gw_dropped + lost == sent
            ok &= ordered and identity
            notes.append(f"{gw.peer.gateway} ({fmt}): sent {sent} delivered {delivered} dropped {gw_dropped} "
                         f"lost {lost} skipped {c.errors.get('duplicate_frames', 0)} twice {twice} unconfirmed "
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
