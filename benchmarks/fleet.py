"""Fleet over MQTT, on the host: N gateways replay the Durango trace at recorded speed into one Mosquitto;
one backend consumer counts per gateway. Side by side in one run: our batched `native` and `json` formats
against one message per frame (`topics=per-id`, can2mqtt's model).

    .venv/bin/python benchmarks/fleet.py [--gateways 1,4,16] [--formats native,json,per-id]
                                          [--seconds 10] [--procs 4] [--broker mosquitto,nats-cluster]

Where the figures come from: everything here runs on the host (no vcan): each gateway is a real
bridge.endpoints.mqtt.MqttPeer opened from its URL by the protocol registry, with its own router; the N
gateways share --procs processes (default 4), one reactor each (the bus side is a replay timer that hands
the trace's frames to the router as a SocketCAN bus would, stamped with the wall clock as the kernel RX
timestamp). The consumer is a plain
paho client in its own process (subscribed to PREFIX/+/can0/rx or .../rx/+ with qos 1), decoding with
bridge.codec.mqtt_payload. Mosquitto 2 on 127.0.0.1 with a free port; or (`--broker nats-cluster`, issue 21)
a three-node NATS cluster (tests/nats_cluster.py: nats-server 2.9, JetStream, MQTT 3.1.1 listeners): the
gateways are given the list of the three nodes (they connect to node 1, protocol=auto falls back to
3.1.1), the consumer (MQTT 3.1.1) is on node 2, and the CPU is reported per node.

Per run: frames sent (replayed), delivered (consumer), lost = sent - delivered - counted drops at the
gateways, latency from the replay stamp to the consumer's decode (p50/p99 ms), MQTT messages/s against
frames/s, CPU per 1,000 frames of the gateways' process and of the broker. The machine is shared: each
figure is one run, +-30 %.

`--where vm` (run it inside the test VM, as root; issue 12): real gateway processes instead. Per gateway a
network namespace cbfl<i> with its own vcan0 (MTU 72) and a veth pair to the root namespace
(10.201.<i>.1 root side, .2 gateway side); in it `python -m bridge vcan0
"mqtt://10.201.<i>.1:1883/fleet?gateway=gwNNN&format=native"` and canplayer replaying the first --seconds
of the Durango trace at recorded speed into that vcan0. Mosquitto (bridge/tools/rig/broker.py's config) in
the root namespace on 0.0.0.0:1883; the consumer (paho, qos 1, root namespace) counts per gateway and
measures latency from the gateway's kernel RX timestamp (carried by native) to its decode: one clock, the
VM's. CPU and RSS of each process from /proc. On the VM's two emulated vCPUs one gateway keeps up, 4
fall behind (no loss), 8 lose frames (docs/scale-out.md).

    .venv/bin/python -m bridge.hw.testvm --vcan 1 --timeout 1500 --mem 2G -- \
        .venv/bin/python benchmarks/fleet.py --where vm --gateways 1,4 --seconds 20 --json /tmp/fleet-vm.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "fleet"
TICK_S = 0.002  # replay granularity: frames due within 2 ms leave together (a bus read drains the same way)


def load_trace(path: Path, seconds: float) -> list[tuple[int, bytes]]:
    from bridge.codec.candump import read_log

    out, t0 = [], None
    for ts, _iface, raw in read_log(path):
        t0 = ts if t0 is None else t0
        if ts - t0 > seconds * 1e9:
            break
        out.append((ts - t0, raw))
    return out


def run_gateways(hosts: str, n: int, fmt: str, seconds: float, trace_path: Path, first: int = 0) -> dict:
    from types import SimpleNamespace

    from bridge.codec import native
    from bridge.core.reactor import Reactor
    from bridge.core.router import Router
    from bridge.core.stats import Counters
    from bridge.daemon.config import parse_peer_url
    from bridge.protocols.base import PeerContext

    trace = load_trace(trace_path, seconds)
    reactor = Reactor()
    hello = native.Hello(capabilities=native.CAP_FD, channels=("can0",))
    topics = "per-id" if fmt == "per-id" else "batch"
    wire = "native" if fmt == "per-id" else fmt
    gws = []
    for i in range(n):  # gateways gw{first}..gw{first+n-1}
        router = Router(reactor)
        bus = SimpleNamespace(channel=0, counters=Counters(), send_frames=lambda ch, f: len(f))
        router.add_bus(bus)
        query = f"gateway=gw{first + i:03d}&format={wire}&topics={topics}"
        cfg = parse_peer_url(f"mqtt://{hosts}/{PREFIX}?{query}")
        peer = cfg.protocol.open(PeerContext(reactor, router, hello, [bus]), cfg)
        gws.append((router, bus, peer))
    deadline = time.monotonic() + 10
    while not all(p.connected for _r, _b, p in gws) and time.monotonic() < deadline:
        reactor.run_once(0.01)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start_wall = time.monotonic()
    pos = [0]
    sent = [0]

    def replay() -> None:
        due = (time.monotonic() - start_wall) * 1e9
        i = pos[0]
        j = i
        while j < len(trace) and trace[j][0] <= due:
            j += 1
        if j > i:
            now = time.time_ns()
            batch = [(raw, now) for _t, raw in trace[i:j]]
            for router, bus, _p in gws:
                router.from_bus(bus, 0, batch)
            sent[0] += (j - i) * len(gws)
            pos[0] = j
        if j >= len(trace):
            reactor.stop()

    timer = reactor.call_every(TICK_S, replay)
    reactor.run()
    timer.cancel()
    end = time.monotonic() + 15  # let the last messages be acknowledged
    while time.monotonic() < end and any(p.counters.gauges.get("queued_frames") or p.outbox.inflight
                                         for _r, _b, p in gws):
        reactor.run_once(0.01)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {"sent": sent[0], "acked": sum(p.counters.tx_frames for _r, _b, p in gws),
           "dropped": sum(sum(p.counters.dropped.values()) for _r, _b, p in gws),
           "drops": {}, "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
           "wall_s": time.monotonic() - start_wall}
    for _r, _b, p in gws:
        for k, v in p.counters.dropped.items():
            out["drops"][k] = out["drops"].get(k, 0) + v
        p.close()
    return out


def run_consumer(port: int, fmt: str, idle_s: float, iface: str = "can0", v311: bool = False) -> dict:
    import paho.mqtt.client as paho

    from bridge.codec import mqtt_payload as mp

    wire = "native" if fmt == "per-id" else fmt
    per_gw: dict[str, int] = {}
    lat: list[int] = []
    msgs = [0]
    last = [time.monotonic()]
    first = [None]
    lock = threading.Lock()

    def on_message(_c, _u, m):
        now = time.time_ns()
        frames = mp.decode(wire, m.payload)
        gw = m.topic.split("/")[1]
        with lock:
            msgs[0] += 1
            per_gw[gw] = per_gw.get(gw, 0) + len(frames)
            lat.extend(now - ts for _raw, ts in frames[:: max(1, len(frames) // 8)])  # <= 8 samples a message
            last[0] = time.monotonic()
            first[0] = first[0] or last[0]

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311 if v311 else paho.MQTTv5,
                    client_id=f"bench-consumer-{os.getpid()}")
    c.max_inflight_messages_set(1000)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(f"{PREFIX}/+/{iface}/rx" + ("/+" if fmt == "per-id" else ""), qos=1)
    c.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()  # the gateways are done
    while time.monotonic() - last[0] < idle_s:
        time.sleep(0.1)
    c.loop_stop()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6 if lat else None  # noqa: E731
    span = (last[0] - first[0]) if first[0] else 0
    return {"delivered": sum(per_gw.values()), "per_gateway": per_gw, "messages": msgs[0],
            "p50_ms": q(0.5), "p99_ms": q(0.99), "span_s": span}


def broker_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS kB) of a process; (0, 0) once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), rss


def wait_online(port: int, names: set, timeout: float) -> float:
    """Seconds until every gateway in `names` published status online (retained)."""
    import paho.mqtt.client as paho

    seen: set = set()
    t0 = time.monotonic()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-status-{os.getpid()}")
    c.on_message = lambda _c, _u, m: (b'"online"' in m.payload) and seen.add(m.topic.split("/")[1])
    c.connect("127.0.0.1", port)
    c.subscribe(f"{PREFIX}/+/status", qos=1)
    c.loop_start()
    while not names <= seen and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    c.loop_stop()
    c.disconnect()
    if not names <= seen:
        raise RuntimeError(f"gateways not online after {timeout:.0f} s: {sorted(names - seen)}")
    return time.monotonic() - t0


def vm_run(n: int, seconds: float, trace: Path, logdir: Path) -> dict:
    """N real gateway processes, one network namespace and vcan0 each, Mosquitto in the root namespace."""
    from bridge.hw import netns
    from bridge.tools.rig.broker import RigBroker

    cut = logdir / "trace.log"
    lines = trace.read_text().splitlines()
    t0 = float(lines[0].split(")")[0][1:])
    keep = [x for x in lines if float(x.split(")")[0][1:]) - t0 <= seconds]
    cut.write_text("\n".join(keep) + "\n")
    src_iface = keep[0].split()[1]
    port = 1883
    names = [f"cbfl{i}" for i in range(n)]
    broker = RigBroker(logdir, "0.0.0.0", port)
    gws: list[subprocess.Popen] = []
    players: list[subprocess.Popen] = []
    try:
        for i, ns in enumerate(names):
            netns.ip("netns", "add", ns)
            netns.ip("link", "add", f"fl{i}", "type", "veth", "peer", "veth0", "netns", ns)
            netns.ip("addr", "add", f"10.201.{i}.1/24", "dev", f"fl{i}")
            netns.ip("link", "set", f"fl{i}", "up")
            netns.ip("addr", "add", f"10.201.{i}.2/24", "dev", "veth0", netns=ns)
            for args in (("link", "set", "lo", "up"), ("link", "set", "veth0", "up"),
                         ("link", "add", "vcan0", "type", "vcan"), ("link", "set", "vcan0", "mtu", "72", "up")):
                netns.ip(*args, netns=ns)
        broker.start()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for i, ns in enumerate(names):
            url = f"mqtt://10.201.{i}.1:{port}/{PREFIX}?gateway=gw{i:03d}&format=native"
            log = open(logdir / f"gw{i:03d}.log", "wb")
            gws.append(subprocess.Popen(netns.exec_argv(ns, [sys.executable, "-m", "bridge", "vcan0", url]),
                                        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT)))
            log.close()
        startup = wait_online(port, {f"gw{i:03d}" for i in range(n)}, timeout=180)
        me = [sys.executable, str(Path(__file__).resolve())]
        cons = subprocess.Popen([*me, "--role", "consumer", "--port", str(port), "--format", "native",
                                 "--iface", "vcan0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert cons.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        g0 = [proc_stat(g.pid) for g in gws]
        b0 = proc_stat(broker.proc.pid)[0]
        start = time.monotonic()
        players = [subprocess.Popen(netns.exec_argv(ns, ["canplayer", "-I", str(cut), f"vcan0={src_iface}"]))
                   for ns in names]
        for pl in players:
            pl.wait()
        replay_s = time.monotonic() - start
        time.sleep(2.0)  # the last batches leave the gateways
        g1 = [proc_stat(g.pid) for g in gws]
        b1 = proc_stat(broker.proc.pid)[0]
        cons.stdin.write("done\n")
        cons.stdin.flush()
        c = json.loads(cons.stdout.read().strip().splitlines()[-1])
        cons.wait()
    finally:
        for g in gws:
            if g.poll() is None:
                g.terminate()
        for g in gws:
            try:
                g.wait(20)
            except subprocess.TimeoutExpired:
                g.kill()
        broker.stop()
        for i, ns in enumerate(names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"fl{i}"], capture_output=True)
    sent = len(keep) * n
    gw_cpu = sum(b[0] - a[0] for a, b in zip(g0, g1))
    return {"where": "vm", "gateways": n, "format": "native", "sent": sent, "delivered": c["delivered"],
            "lost": sent - c["delivered"], "per_gateway": c["per_gateway"], "trace_rate": len(keep) / seconds,
            "replay_s": replay_s, "frames_per_s": c["delivered"] / max(c["span_s"], 1e-9),
            "messages_per_s": c["messages"] / max(c["span_s"], 1e-9), "p50_ms": c["p50_ms"], "p99_ms": c["p99_ms"],
            "gateway_cpu_pct_each": 100 * gw_cpu / n / replay_s, "broker_cpu_pct": 100 * (b1 - b0) / replay_s,
            "gateway_cpu_ms_per_1k": 1e6 * gw_cpu / max(sent, 1),
            "broker_cpu_ms_per_1k": 1e6 * (b1 - b0) / max(sent, 1),
            "gateway_rss_kb": max(x[1] for x in g1), "startup_s": startup, "load": os.getloadavg()}


class Target:
    """Where the gateways publish: hosts (the URL's host list), the consumer's port, the broker pids."""

    def __init__(self, name: str, hosts: str, consumer_port: int, pids: list, v311: bool, settle_s: float):
        self.name, self.hosts, self.consumer_port, self.pids = name, hosts, consumer_port, pids
        self.v311, self.settle_s = v311, settle_s


def one_run(target: Target, n: int, fmt: str, seconds: float, trace: Path, procs: int) -> dict:
    """One (N gateways, format) run; the N gateways are spread over `procs` processes."""
    me = [sys.executable, str(Path(__file__).resolve())]
    cons = subprocess.Popen([*me, "--role", "consumer", "--port", str(target.consumer_port), "--format", fmt,
                             *(["--v311"] if target.v311 else [])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert cons.stdout.readline().strip() == "ready"
    time.sleep(target.settle_s)  # the subscription carries (NATS: its JetStream consumer, 1-2.5 s)
    b0 = [broker_cpu(pid) for pid in target.pids]
    share = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
    starts = [sum(share[:k]) for k in range(procs)]
    gws = [subprocess.Popen([*me, "--role", "gateways", "--hosts", target.hosts, "--n", str(share[k]),
                             "--first", str(starts[k]), "--format", fmt, "--seconds", str(seconds),
                             "--trace", str(trace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for k in range(procs) if share[k]]
    parts = []
    for proc in gws:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(err[-3000:])
        parts.append(json.loads(out.strip().splitlines()[-1]))
    g = {"sent": sum(x["sent"] for x in parts), "dropped": sum(x["dropped"] for x in parts),
         "cpu_s": sum(x["cpu_s"] for x in parts), "wall_s": max(x["wall_s"] for x in parts), "drops": {}}
    for x in parts:
        for k, v in x["drops"].items():
            g["drops"][k] = g["drops"].get(k, 0) + v
    cons.stdin.write("done\n")
    cons.stdin.flush()
    c = json.loads(cons.stdout.read().strip().splitlines()[-1])
    cons.wait()
    b1 = [broker_cpu(pid) for pid in target.pids]
    sent = g["sent"]
    return {"broker": target.name, "gateways": n, "procs": len(gws), "format": fmt, "sent": sent,
            "delivered": c["delivered"],
            "dropped_at_gateways": g["dropped"], "lost": sent - c["delivered"] - g["dropped"], "drops": g["drops"],
            "frames_per_s": sent / max(g["wall_s"], 1e-9),
            "messages_per_s": c["messages"] / max(c["span_s"], 1e-9), "p50_ms": c["p50_ms"], "p99_ms": c["p99_ms"],
            "gateway_cpu_ms_per_1k": 1e6 * g["cpu_s"] / max(sent, 1),
            "broker_cpu_ms_per_1k": 1e6 * (sum(b1) - sum(b0)) / max(sent, 1),
            "broker_cpu_ms_per_1k_each": [round(1e6 * (y - x) / max(sent, 1), 2) for x, y in zip(b0, b1)]}


def targets(names: list, tmp: Path):
    """Start each broker of --broker -> (Target, stop())."""
    for name in names:
        if name == "mosquitto":
            from tests.mqtt_broker import Broker

            broker = Broker(tmp / "mosquitto").start()
            yield Target(name, f"127.0.0.1:{broker.port}", broker.port, [broker.proc.pid], False, 0.3), broker.stop
        elif name == "nats-cluster":
            from tests.nats_cluster import Cluster

            cluster = Cluster(tmp / "nats").start()
            nodes = cluster.nodes
            yield Target(name, ",".join(f"127.0.0.1:{x.mqtt_port}" for x in nodes), nodes[1].mqtt_port,
                         [x.proc.pid for x in nodes], True, 3.0), cluster.stop
        else:
            raise SystemExit(f"--broker: mosquitto or nats-cluster, not {name!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("main", "gateways", "consumer"), default="main")
    p.add_argument("--port", type=int)
    p.add_argument("--hosts", help=argparse.SUPPRESS)  # the gateways' broker list
    p.add_argument("--v311", action="store_true", help=argparse.SUPPRESS)  # the consumer speaks MQTT 3.1.1
    p.add_argument("--broker", default="mosquitto", help="mosquitto, nats-cluster or both (comma-separated)")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--procs", type=int, default=4, help="gateway processes (the N gateways are spread over them)")
    p.add_argument("--format", default="native")
    p.add_argument("--gateways", default="1,4,16")
    p.add_argument("--formats", default="native,json,per-id")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of the trace each gateway replays")
    p.add_argument("--trace", default=str(ROOT / "bridge" / "tools" / "data" / "durango_mapswitch.log"))
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--where", choices=("host", "vm"), default="host",
                   help="vm: real gateway processes, a namespace and vcan0 each (inside the test VM, as root)")
    p.add_argument("--iface", default="can0", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.role == "gateways":
        print(json.dumps(run_gateways(a.hosts, a.n, a.format, a.seconds, Path(a.trace), a.first)))
        return 0
    if a.role == "consumer":
        print(json.dumps(run_consumer(a.port, a.format, idle_s=3.0, iface=a.iface, v311=a.v311)))
        return 0
    if a.where == "vm":
        import tempfile

        results = []
        for n in (int(x) for x in a.gateways.split(",")):
            r = vm_run(n, a.seconds, Path(a.trace), Path(tempfile.mkdtemp(prefix="canbridge-fleetvm-")))
            results.append(r)
            print(f"VM {n:3d} gw native sent {r['sent']:7d} delivered {r['delivered']:7d} lost {r['lost']:6d} "
                  f"{r['frames_per_s']:8.0f} f/s (trace {r['trace_rate'] * n:.0f}) {r['messages_per_s']:7.0f} msg/s "
                  f"p50 {r['p50_ms'] or 0:7.1f} ms p99 {r['p99_ms'] or 0:7.1f} ms  CPU % gateway each "
                  f"{r['gateway_cpu_pct_each']:5.1f} broker {r['broker_cpu_pct']:5.1f}  RSS {r['gateway_rss_kb']} kB "
                  f"startup {r['startup_s']:.1f} s  load {r['load'][0]:.2f}", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(results, indent=1))
        return 0
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="canbridge-fleet-") as tmp:
        for target, stop in targets(a.broker.split(","), Path(tmp)):
            try:
                for n in (int(x) for x in a.gateways.split(",")):
                    for fmt in a.formats.split(","):
                        r = one_run(target, n, fmt, a.seconds, Path(a.trace), min(n, a.procs))
                        results.append(r)
                        each = "/".join(f"{x:.1f}" for x in r["broker_cpu_ms_per_1k_each"])
                        print(f"{target.name:12s} {n:3d} gw {fmt:8s} sent {r['sent']:7d} delivered "
                              f"{r['delivered']:7d} lost {r['lost']:6d} dropped {r['dropped_at_gateways']:6d} "
                              f"{r['frames_per_s']:8.0f} f/s {r['messages_per_s']:8.0f} msg/s  "
                              f"p50 {r['p50_ms'] or 0:7.1f} ms p99 {r['p99_ms'] or 0:7.1f} ms  "
                              f"CPU/1k frames: gateways {r['gateway_cpu_ms_per_1k']:6.1f} ms broker "
                              f"{r['broker_cpu_ms_per_1k']:6.1f} ms ({each} per node)", flush=True)
            finally:
                stop()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
