"""Mosquitto's own knee, measured with C clients (issue 12): our Python gateways and consumer saturate the
two host cores long before the broker does (benchmarks/fleet.py), so here the load comes from
`mosquitto_pub -l -q 1` (one per simulated gateway, fed pre-generated lines) and is counted by
`mosquitto_sub -q 1` (one, or --subs K sharing `$share/knee/...`).

    .venv/bin/python benchmarks/broker_knee.py [--gateways 16] [--sizes 400,40] [--rates 2000,5000,...]
                                                [--seconds 8] [--subs 1] [--json out.json]

Needs mosquitto and mosquitto-clients (scripts/setup.sh). Mosquitto is tests/mqtt_broker.py's (127.0.0.1,
free port, no persistence, max_queued_messages 100000, max_inflight_messages 64).

Per step (message size, offered rate in messages/s summed over the gateways): each publisher gets its
share of lines every 10 ms for --seconds; a line is SIZE bytes and starts with its send time (ns), so the
counting side samples latency (write into the publisher's pipe -> line out of mosquitto_sub: both C
clients and the broker). Printed: offered and delivered messages/s (over the send window; delivered
counts what arrived up to 3 s after it), lost, p50/p99 ms, CPU of mosquitto / all publishers / all
subscribers in % of one core, and the load average. The steps stop after the first two that miss the
offered rate by more than 10 % (or p99 above 1 s). Equivalent frames/s: x19 for a native batch of a
16-gateway Durango fleet (~400 bytes), x1 for one message per frame (~40 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICK_S = 0.01
FRAMES_PER_BATCH = 19  # native batch of one Durango gateway at 16 gateways (docs/scale-out.md)


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counter(sub: subprocess.Popen, state: dict, lock: threading.Lock) -> None:
    """Count lines from one mosquitto_sub; sample one latency per read (the last complete line)."""
    fd = sub.stdout.fileno()
    tail = b""
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        now = time.time_ns()
        buf = tail + chunk
        n = buf.count(b"\n")
        cut = buf.rfind(b"\n")
        tail = buf[cut + 1:]
        last = buf[:cut].rsplit(b"\n", 1)[-1] if n else b""
        with lock:
            state["count"] += n
            state["last"] = time.monotonic()
            if last[:19].isdigit():
                state["lat"].append(now - int(last[:19]))


def step(port: int, gateways: int, size: int, rate: float, seconds: float, subs: int, broker_pid: int) -> dict:
    pub_bin, sub_bin = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    topic = "knee/{}/can0/rx"
    filt = ("$share/knee/" if subs > 1 else "") + "knee/+/can0/rx"
    state = {"count": 0, "last": time.monotonic(), "lat": []}
    lock = threading.Lock()
    subp = [subprocess.Popen([sub_bin, "-p", str(port), "-q", "1", "-t", filt, "-i", f"knee-sub{k}"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for k in range(subs)]
    threads = [threading.Thread(target=counter, args=(s, state, lock), daemon=True) for s in subp]
    for t in threads:
        t.start()
    pubs = [subprocess.Popen([pub_bin, "-p", str(port), "-q", "1", "-l", "-t", topic.format(f"gw{g:03d}"),
                              "-i", f"knee-gw{g:03d}"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for g in range(gateways)]
    time.sleep(1.0)  # connected and subscribed
    pad = b"x" * max(0, size - 21)
    per_pub = rate / gateways
    owed = [0.0] * gateways
    sent = 0
    c0 = {"broker": cpu_s(broker_pid), "pubs": sum(cpu_s(p.pid) for p in pubs),
          "subs": sum(cpu_s(s.pid) for s in subp)}
    with lock:
        n0 = state["count"]
    t0 = time.monotonic()
    next_tick = t0
    while (now := time.monotonic()) - t0 < seconds:
        stamp = b"%019d " % time.time_ns() + pad + b"\n"
        for g, p in enumerate(pubs):
            owed[g] += per_pub * TICK_S
            k = int(owed[g])
            if k:
                owed[g] -= k
                p.stdin.write(stamp * k)
                p.stdin.flush()
                sent += k
        next_tick += TICK_S
        if next_tick > now:
            time.sleep(next_tick - now)
    t1 = time.monotonic()
    with lock:
        n_window = state["count"] - n0
    for p in pubs:
        p.stdin.close()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        with lock:
            if state["count"] - n0 >= sent:
                break
        time.sleep(0.05)
    c1 = {"broker": cpu_s(broker_pid), "pubs": sum(cpu_s(p.pid) for p in pubs),
          "subs": sum(cpu_s(s.pid) for s in subp)}
    wall = t1 - t0
    for p in pubs + subp:
        if p.poll() is None:
            p.terminate()
    for p in pubs + subp:
        p.wait()
    with lock:
        delivered = state["count"] - n0
        lat = sorted(state["lat"])
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1e6 if lat else None  # noqa: E731
    return {"gateways": gateways, "size": size, "subs": subs, "offered_rate": rate, "sent": sent,
            "offered_per_s": sent / wall, "delivered_in_window_per_s": n_window / wall, "delivered": delivered,
            "lost": sent - delivered, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "cpu_pct": {k: 100 * (c1[k] - c0[k]) / wall for k in c0}, "load": os.getloadavg()[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateways", type=int, default=16)
    p.add_argument("--sizes", default="400,40", help="message sizes in bytes")
    p.add_argument("--rates", default="2000,5000,10000,20000,40000,60000,80000,120000",
                   help="offered messages/s summed over the gateways")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--subs", type=int, default=1, help="consumers; >1 share one $share group")
    p.add_argument("--json", help="write the results here too")
    a = p.parse_args()
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} missing: apt-get install mosquitto-clients (scripts/setup.sh)")
    from tests.mqtt_broker import Broker

    results = []
    with tempfile.TemporaryDirectory(prefix="canbridge-knee-") as tmp:
        broker = Broker(Path(tmp)).start()
        try:
            for size in (int(x) for x in a.sizes.split(",")):
                misses = 0
                for rate in (float(x) for x in a.rates.split(",")):
                    r = step(broker.port, a.gateways, size, rate, a.seconds, a.subs, broker.proc.pid)
                    results.append(r)
                    fpm = FRAMES_PER_BATCH if size >= 200 else 1
                    print(f"{size:4d} B offered {r['offered_per_s']:8.0f} msg/s delivered "
                          f"{r['delivered_in_window_per_s']:8.0f} msg/s (= {fpm * r['delivered_in_window_per_s']:8.0f}"
                          f" frames/s) lost {r['lost']:7d}  p50 {r['p50_ms'] or 0:8.1f} ms p99 "
                          f"{r['p99_ms'] or 0:8.1f} ms  CPU% broker {r['cpu_pct']['broker']:5.1f} pubs "
                          f"{r['cpu_pct']['pubs']:5.1f} subs {r['cpu_pct']['subs']:5.1f}  load {r['load']:.1f}",
                          flush=True)
                    if r["delivered_in_window_per_s"] < 0.9 * r["offered_per_s"] or (r["p99_ms"] or 0) > 1000:
                        misses += 1
                        if misses >= 2:
                            break
        finally:
            broker.stop()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
