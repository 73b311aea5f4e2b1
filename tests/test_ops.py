"""Operations, the parts that need no CAN: latency histogram, JSON logs, [bridge] config, reload plan,
Prometheus families, and the control socket served by a real reactor over a real unix socket."""

import io
import json
import logging
import os
import socket
import stat
import threading

import pytest

from bridge.core.reactor import Reactor
from bridge.core.stats import HISTOGRAM_BUCKETS, Counters, Log2Histogram, quantile_us
from bridge.daemon import config as cfg
from bridge.daemon import control, reload
from bridge.daemon.logfmt import JsonFormatter, setup_logging
from bridge.daemon.metrics import snapshot_metrics
from bridge.errors import ConfigError
from bridge.tools.live.stats_client import main as stats_main
from bridge.tools.live.stats_client import render


# --- histogram ---------------------------------------------------------------------------------------
def test_histogram_buckets_are_log2_microseconds():
    h = Log2Histogram()
    for ns in (0, 999, 1_000, 1_999, 2_000, 3_999, 1_000_000, 10**12, -5):
        h.observe(ns)
    snap = h.snapshot()
    counts = dict(zip(snap["le_us"], snap["counts"]))
    assert counts[1] == 3  # 0, 999 ns and the negative one (clamped to 0) are < 1 us
    assert counts[2] == 2 and counts[4] == 2  # [1, 2) us and [2, 4) us
    assert counts[1 << 10] == 1  # 1 ms = 1000 us lies in [512, 1024)
    assert counts[None] == 1  # 1000 s: the open last bucket
    assert snap["count"] == 9 == sum(snap["counts"]) and snap["negative"] == 1
    assert len(snap["counts"]) == HISTOGRAM_BUCKETS
    assert quantile_us(snap, 0.5) == 2 and quantile_us(snap, 1.0) is None


def test_counters_snapshot_shows_latency_only_when_measured():
    c = Counters()
    assert "latency_us" not in c.snapshot()
    c.latency.observe(1500)
    assert c.snapshot()["latency_us"]["count"] == 1
    json.dumps(c.snapshot())


# --- logs --------------------------------------------------------------------------------------------
def test_json_log_lines_parse_with_extra_fields_and_tracebacks():
    stream = io.StringIO()
    setup_logging(1, "json", stream)
    try:
        log = logging.getLogger("canbridge.test")
        log.info("peer %s up", "tcp://x:1", extra={"endpoint": "tcp://x:1", "obj": object()})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed")
    finally:
        setup_logging(0, "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "peer tcp://x:1 up" and first["level"] == "INFO" and first["logger"] == "canbridge.test"
    assert first["endpoint"] == "tcp://x:1" and first["ts"].endswith("Z") and "object" in first["obj"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_json_formatter_is_one_line():
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "a\nb %d", (3,), None)
    out = JsonFormatter().format(rec)
    assert "\n" not in out and json.loads(out)["msg"] == "a\nb 3"


# --- [bridge] config ---------------------------------------------------------------------------------
BASE = '[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "tcp-listen://127.0.0.1:29600"\n'


def test_bridge_table(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text('[bridge]\ncontrol = "/tmp/x.sock"\nmetrics = "127.0.0.1:9700"\n' + BASE)
    c = cfg.load_toml(str(p))
    assert c.ops.control == "/tmp/x.sock" and c.ops.metrics == ("127.0.0.1", 9700) and c.source == str(p)
    p.write_text('[bridge]\ncontrol = "none"\n' + BASE)
    assert not cfg.load_toml(str(p)).ops.control_enabled


@pytest.mark.parametrize("table, words", [
    ('metrics = "9700"', "bridge.metrics: expected ADDR:PORT"),
    ('metrics = "h:0"', "bridge.metrics"),
    ("control = 3", "bridge.control: expected a socket path"),
    ('colour = "red"', "unknown key(s) ['colour']"),
])
def test_bridge_table_errors_name_the_key(tmp_path, table, words):
    p = tmp_path / "gw.toml"
    p.write_text(f"[bridge]\n{table}\n" + BASE)
    with pytest.raises(ConfigError) as e:
        cfg.load_toml(str(p))
    assert words in str(e.value)


# --- reload plan -------------------------------------------------------------------------------------
def _cfg(ifaces, peers):
    return cfg.from_args(ifaces, peers)


def test_plan_keeps_unchanged_peers_and_recreates_changed_ones():
    old = _cfg(["vcan0"], ["tcp://10.0.0.1:1", "tcp-listen://:2", "udp://10.0.0.3:3"])
    new = _cfg(["vcan0"], ["udp://10.0.0.3:3", "tcp://10.0.0.1:1?filter=123:7FF", "tcp://10.0.0.4:4"])
    p = reload.plan(old, new)
    assert p.keep_peers == [(2, 0)]  # the UDP peer moved in the file but is unchanged
    assert sorted(p.close_peers) == [0, 1] and p.open_peers == [1, 2]
    assert not p.close_buses and not p.open_buses


def test_plan_buses_by_position_and_socketcand_follows_them():
    old = _cfg(["vcan0", "vcan1"], ["socketcand://:29536", "tcp://10.0.0.1:1"])
    new = _cfg(["vcan0", "vcan2", "vcan3"], ["socketcand://:29536", "tcp://10.0.0.1:1"])
    p = reload.plan(old, new)
    assert p.close_buses == [1] and p.open_buses == [1, 2]
    assert p.keep_peers == [(1, 1)] and p.open_peers == [0] and p.close_peers == [0]
    assert reload.plan(old, _cfg(["vcan0", "vcan1"], ["socketcand://:29536", "tcp://10.0.0.1:1"])).empty


def test_plan_duplicates_match_one_to_one():
    old = _cfg(["vcan0"], ["tcp://10.0.0.1:1"])
    new = _cfg(["vcan0"], ["tcp://10.0.0.1:1", "tcp://10.0.0.1:1"])
    p = reload.plan(old, new)
    assert p.keep_peers == [(0, 0)] and p.open_peers == [1]


# --- Prometheus families -----------------------------------------------------------------------------
def test_snapshot_metrics_exposition():
    from prometheus_client import CollectorRegistry, generate_latest

    c = Counters()
    c.rx_frames, c.tx_bytes = 7, 99
    c.drop("peer_slow", 3)
    c.errors["peer_timeout"] += 1
    c.gauges.update(reconnects=2, bus_state="ERROR-ACTIVE", peer_up=True)
    c.latency.observe(3_000)
    snap = {"uptime_s": 1.5, "stats": {"tcp://h:1": c.snapshot()}}

    class One:
        def collect(self):
            yield from snapshot_metrics(snap)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(One())
    text = generate_latest(reg).decode()
    assert 'canbridge_rx_frames_total{endpoint="tcp://h:1"} 7.0' in text
    assert 'canbridge_tx_bytes_total{endpoint="tcp://h:1"} 99.0' in text
    assert 'canbridge_dropped_frames_total{endpoint="tcp://h:1",reason="peer_slow"} 3.0' in text
    assert 'canbridge_errors_total{endpoint="tcp://h:1",reason="peer_timeout"} 1.0' in text
    assert 'canbridge_reconnects{endpoint="tcp://h:1"} 2.0' in text
    assert 'canbridge_peer_up{endpoint="tcp://h:1"} 1.0' in text
    assert 'canbridge_state_info{endpoint="tcp://h:1",gauge="bus_state",value="ERROR-ACTIVE"} 1.0' in text
    assert 'canbridge_bus_to_peer_latency_seconds_bucket{endpoint="tcp://h:1",le="2e-06"} 0.0' in text
    assert 'canbridge_bus_to_peer_latency_seconds_bucket{endpoint="tcp://h:1",le="4e-06"} 1.0' in text
    assert 'canbridge_bus_to_peer_latency_seconds_count{endpoint="tcp://h:1"} 1.0' in text
    assert "canbridge_uptime_seconds 1.5" in text


# --- control socket ----------------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    """A ControlServer on a real reactor running in a thread; yields (path, server)."""
    reactor = Reactor()
    path = str(tmp_path / "c.sock")
    answer = {"version": "t", "pid": 1, "uptime_s": 2.0, "config": None,
              "stats": {"vcan0": {**Counters().snapshot(), "bus_state": "ERROR-ACTIVE"}}}
    server = control.ControlServer(reactor, path, {"stats": lambda req: answer}, max_clients=2)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [reactor.run_once(0.05) for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        yield path, server
    finally:
        stop.set()
        thread.join()
        server.close()
        reactor.close()


def test_control_answers_and_keeps_the_connection(served):
    path, server = served
    assert stat.S_IMODE(os.stat(path).st_mode) == control.SOCKET_MODE
    client = control.ControlClient(path)
    try:
        for _ in range(3):
            assert client.request("stats")["stats"]["vcan0"]["bus_state"] == "ERROR-ACTIVE"
        assert "unknown command" in client.request("nope")["error"]
    finally:
        client.close()
    assert control.request(path)["version"] == "t"


def test_control_rejects_oversized_requests_and_extra_clients(served):
    path, server = served
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"x" * (control.MAX_REQUEST + 10))
        s.settimeout(5)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert b"longer than" in data  # answered, then closed (recv returned b"")
    clients = [control.ControlClient(path) for _ in range(2)]
    try:
        for c in clients:
            c.request("stats")  # both are registered now
        with pytest.raises(OSError):
            control.ControlClient(path).request("stats")  # the third is refused
    finally:
        for c in clients:
            c.close()
    assert server.counters.errors["too_many_clients"] >= 1 and server.counters.errors["request_too_long"] == 1


def test_stale_socket_replaced_live_one_refused(tmp_path, served):
    path, _ = served
    with pytest.raises(OSError, match="another bridge"):
        control.ControlServer(Reactor(), path, {})
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # a socket file nobody listens on: what a crashed bridge leaves
    r = Reactor()
    server = control.ControlServer(r, stale, {})
    server.close()
    r.close()
    assert not os.path.exists(stale)


def test_stats_cli_json_and_table(served, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path, _ = served
    assert stats_main(["--control", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["vcan0"]["rx_frames"] == 0
    assert stats_main(["--control", path]) == 0
    out = capsys.readouterr().out
    assert "vcan0" in out and "bus_state=ERROR-ACTIVE" in out
    assert stats_main(["--control", path + ".missing"]) == 1
    assert stats_main(["--watch", "0"]) == 2


def test_render_shows_generic_gauges_and_latency():
    from rich.console import Console

    c = Counters()
    c.latency.observe(5_000)
    c.gauges["peer_state"] = "up"
    console = Console(width=200, record=True)
    console.print(render({"stats": {"tcp://h:1": c.snapshot()}}))
    text = console.export_text()
    assert "peer_state=up" in text and "p50 <8 us" in text
