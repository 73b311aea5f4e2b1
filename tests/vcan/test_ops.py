"""Operations on real bridges (test VM): `canbridge stats` and Prometheus counts match the frames sent,
JSON logs parse, SIGHUP reload keeps the unaffected TCP connection and survives an invalid file.

Two bridge processes in the VM's root namespace: the gateway reads vcan0 and serves TCP on loopback,
the remote connects and writes vcan1. Frames go into vcan0 and are counted on vcan1."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from bridge.codec import socketcan as sc
from bridge.daemon import control
from bridge.tools.logs import probe

pytestmark = pytest.mark.vcan

PORT_A, PORT_B, PORT_C = 29710, 29711, 29712  # the VM's own kernel: nothing else listens here
METRICS_PORT = 29790
WAIT_S = 60  # generous bound for one step in the emulated VM; only reached when something is broken


class Bridges:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, side: str, args: list[str]) -> str:
        """Start `python -m bridge ARGS --control SOCK --log-format json`; returns the control socket path."""
        sock = str(self.tmp / f"{side}.sock")
        log = open(self.tmp / f"{side}.log", "ab")
        self.procs[side] = subprocess.Popen([sys.executable, "-m", "bridge", *args, "--control", sock,
                                             "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        return sock

    def log(self, side: str) -> str:
        return (self.tmp / f"{side}.log").read_text(errors="replace")

    def stats(self, sock: str) -> dict:
        return control.request(sock)["stats"]

    def wait_stats(self, sock: str, ok, what: str) -> dict:
        """Poll the control socket until ok(stats) is true (bounded by WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        last = None
        while time.monotonic() < deadline:
            for side, proc in self.procs.items():
                assert proc.poll() is None, f"{side} exited {proc.returncode}:\n{self.log(side)[-3000:]}"
            try:
                last = self.stats(sock)
                if ok(last):
                    return last
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last stats {last}\n{self.log('gateway')[-3000:]}")

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for side, proc in self.procs.items():
            try:
                codes[side] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[side] = None
        return codes


@pytest.fixture
def bridges(tmp_path):
    b = Bridges(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def frames(n: int, can_id: int) -> list:
    return [sc.pack_can(can_id, i.to_bytes(4, "big")) for i in range(n)]


def send_and_receive(tx, rx, batch: list) -> list:
    """Send raw frames on tx and return those seen on rx once all arrived (bounded by WAIT_S)."""
    got: list = []
    for raw in batch:
        probe.send(tx, raw)
        probe.drain(rx, got)
    deadline = time.monotonic() + WAIT_S
    while len(got) < len(batch) and time.monotonic() < deadline:
        time.sleep(0.05)
        probe.drain(rx, got)
    return [raw for _, raw in got]


def wait_path_up(bridges, tx, rx) -> None:
    """Marker frames until one crosses; then forget everything seen."""
    marker = sc.pack_can(sc.CAN_EFF_FLAG | 0x1FFFFFFF, b"canbrdg!")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for side, proc in bridges.procs.items():
            assert proc.poll() is None, f"{side} exited {proc.returncode}:\n{bridges.log(side)[-3000:]}"
        probe.send(tx, marker)
        time.sleep(0.2)
        seen: list = []
        probe.drain(rx, seen)
        if any(raw == marker for _, raw in seen):
            time.sleep(0.5)
            probe.drain(rx, [])
            return
    logs = "\n".join(f"--- {side} ---\n{bridges.log(side)[-3000:]}" for side in bridges.procs)
    raise AssertionError(f"no frame crossed vcan0 -> vcan1\n{logs}")


def client_of(stats: dict, port: int) -> str:
    names = [n for n in stats if n.startswith(f"tcp-listen://127.0.0.1:{port}<-")]
    assert len(names) == 1, stats.keys()
    return names[0]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_stats_and_metrics_count_the_frames_sent(bridges, vcan0, vcan1):
    gw = bridges.start("gateway", [vcan0, f"tcp-listen://127.0.0.1:{PORT_A}", "--metrics",
                                   f"127.0.0.1:{METRICS_PORT}"])
    remote = bridges.start("remote", [vcan1, f"tcp://127.0.0.1:{PORT_A}"])
    tx, rx = probe.open_can(vcan0), probe.open_can(vcan1)
    try:
        wait_path_up(bridges, tx, rx)
        before_gw, before_remote = bridges.stats(gw), bridges.stats(remote)
        n = 500
        batch = frames(n, 0x123)
        assert send_and_receive(tx, rx, batch) == batch
    finally:
        tx.close()
        rx.close()
    client = client_of(before_gw, PORT_A)

    def delta(now, before, ep, key):
        return now[ep][key] - before[ep][key]

    after_gw = bridges.wait_stats(gw, lambda s: delta(s, before_gw, client, "tx_frames") >= n, "gateway tx")
    assert delta(after_gw, before_gw, "vcan0", "rx_frames") == n
    assert delta(after_gw, before_gw, client, "tx_frames") == n
    assert after_gw[client]["latency_us"]["count"] >= 1  # residence time measured on the path
    link = f"tcp://127.0.0.1:{PORT_A} (current connection)"
    after_remote = bridges.wait_stats(remote, lambda s: delta(s, before_remote, "vcan1", "tx_frames") >= n,
                                      "remote tx")
    assert delta(after_remote, before_remote, link, "rx_frames") == n
    assert delta(after_remote, before_remote, "vcan1", "tx_frames") == n

    # the real CLI, JSON form
    out = subprocess.run([sys.executable, "-m", "bridge", "stats", "--control", gw, "--json"], capture_output=True,
                         text=True, timeout=WAIT_S, check=True).stdout
    cli = json.loads(out)
    assert cli["pid"] == bridges.procs["gateway"].pid and cli["stats"]["vcan0"]["rx_frames"] == after_gw["vcan0"][
        "rx_frames"]

    # Prometheus shows the same counts once the next snapshot is published (every second)
    want = f'canbridge_rx_frames_total{{endpoint="vcan0"}} {float(after_gw["vcan0"]["rx_frames"])}'
    deadline = time.monotonic() + WAIT_S
    while want not in (text := scrape(METRICS_PORT)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert want in text, text
    assert f'canbridge_tx_frames_total{{endpoint="{client}"}} {float(after_gw[client]["tx_frames"])}' in text

    assert bridges.stop() == {"gateway": 0, "remote": 0}
    for side in ("gateway", "remote"):
        lines = [json.loads(line) for line in bridges.log(side).splitlines() if line.strip()]
        assert lines and all({"ts", "level", "logger", "msg"} <= set(rec) for rec in lines)
        assert any(rec["msg"].startswith("control socket") for rec in lines)


def write_config(path, ports: list[int]) -> None:
    peers = "".join(f'[[peer]]\nurl = "tcp-listen://127.0.0.1:{p}"\n' for p in ports)
    path.write_text(f'[[interface]]\nname = "vcan0"\n{peers}')


def can_connect(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


def test_sighup_reload_keeps_the_unaffected_connection(bridges, vcan0, vcan1, tmp_path):
    conf = tmp_path / "gw.toml"
    write_config(conf, [PORT_A, PORT_B])
    gw = bridges.start("gateway", ["run", "-c", str(conf)])
    remote = bridges.start("remote", [vcan1, f"tcp://127.0.0.1:{PORT_A}"])
    link = f"tcp://127.0.0.1:{PORT_A} (current connection)"
    tx, rx = probe.open_can(vcan0), probe.open_can(vcan1)
    try:
        wait_path_up(bridges, tx, rx)
        before = bridges.stats(gw)
        client = client_of(before, PORT_A)  # its name carries the remote's ephemeral port: one connection
        assert can_connect(PORT_B) and not can_connect(PORT_C)

        write_config(conf, [PORT_C, PORT_A])  # B removed, C added, A unchanged (and moved)
        bridges.procs["gateway"].send_signal(signal.SIGHUP)
        after = bridges.wait_stats(gw, lambda s: f"tcp-listen://127.0.0.1:{PORT_C}" in s, "reload")
        assert f"tcp-listen://127.0.0.1:{PORT_B}" not in after
        assert client_of(after, PORT_A) == client  # the same connection, never re-accepted
        assert after[f"tcp-listen://127.0.0.1:{PORT_A}"].get("accepted") == 1
        assert can_connect(PORT_C) and not can_connect(PORT_B)
        batch = frames(200, 0x321)
        assert send_and_receive(tx, rx, batch) == batch  # frames keep flowing over it

        conf.write_text("[[interface]]\nname = 3\n")  # invalid: the running config stays
        bridges.procs["gateway"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_S
        while "keeping the running configuration" not in bridges.log("gateway") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "keeping the running configuration" in bridges.log("gateway")
        assert client_of(bridges.stats(gw), PORT_A) == client and can_connect(PORT_C)
        batch = frames(200, 0x322)
        assert send_and_receive(tx, rx, batch) == batch
        remote_stats = bridges.stats(remote)
        assert remote_stats[f"tcp://127.0.0.1:{PORT_A}"].get("reconnects", 0) == 0 and link in remote_stats
    finally:
        tx.close()
        rx.close()
    assert bridges.stop() == {"gateway": 0, "remote": 0}


def test_reload_away_a_bus_then_flap_its_link_keeps_it_closed(bridges, vcan0, vcan1, vcan2, tmp_path):
    """A bus closed by a SIGHUP reload stops being watched (BusFaults.remove): deleting and re-creating its
    interface afterwards (a new ifindex, which makes a watched bus re-open its sockets) and taking it down
    and up leave it closed; the bus that stayed keeps forwarding."""
    conf = tmp_path / "gw.toml"
    peer = f'[[peer]]\nurl = "tcp-listen://127.0.0.1:{PORT_A}"\n'
    conf.write_text(f'[[interface]]\nname = "{vcan0}"\n[[interface]]\nname = "{vcan2}"\n{peer}')
    gw = bridges.start("gateway", ["run", "-c", str(conf)])
    bridges.start("remote", [vcan1, f"tcp://127.0.0.1:{PORT_A}"])
    tx, rx = probe.open_can(vcan0), probe.open_can(vcan1)
    try:
        wait_path_up(bridges, tx, rx)
        assert vcan2 in bridges.stats(gw)
        conf.write_text(f'[[interface]]\nname = "{vcan0}"\n{peer}')
        bridges.procs["gateway"].send_signal(signal.SIGHUP)
        bridges.wait_stats(gw, lambda s: vcan2 not in s, "reload closing the bus")
        mark = len(bridges.log("gateway"))
        ip = lambda *args: subprocess.run(["ip", "link", *args], check=True)  # noqa: E731
        ip("del", vcan2)
        ip("add", vcan2, "type", "vcan")
        ip("set", vcan2, "mtu", "72")
        ip("set", vcan2, "up")
        ip("set", vcan2, "down")
        ip("set", vcan2, "up")
        batch = frames(50, 0x323)
        assert send_and_receive(tx, rx, batch) == batch  # vcan0 still forwards; the link events were read
        assert vcan2 not in bridges.stats(gw)
        after = bridges.log("gateway")[mark:]
        assert vcan2 not in after, after  # no "bus vcan2: link ..." nor "interface is back ... re-opened"
    finally:
        tx.close()
        rx.close()
    assert bridges.stop() == {"gateway": 0, "remote": 0}
