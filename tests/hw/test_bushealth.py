"""Bus health on the REAL DRIVER (issue 22, point 6): the values the sja1000/kvaser_pci driver reports for
QEMU's emulated controllers (bitrate, berr counter, xstats, RX FIFO overruns) as the bridge reads them
over its own rtnetlink decoder, against iproute2's reading of the same link, and the bus load from the
frames on that wire at the driver's bitrate. The states the emulation never reaches (error-passive,
bus-off) are tested with injected error frames in tests/vcan/test_bushealth.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from bridge.cli import link as link_cli
from bridge.codec import socketcan as sc
from bridge.codec.busload import raw_bits
from bridge.core.reactor import Reactor
from bridge.endpoints.busfaults import BusFaults
from bridge.endpoints.bushealth import BusHealthMonitor
from bridge.endpoints.socketcan import SocketCanEndpoint
from bridge.hw.cansock import open_can_raw
from tests.hw.conftest import BITRATE, wait_for
from tests.hw.pci import interrupt_held_off

pytestmark = pytest.mark.hw


def _ip_json(name: str) -> dict:
    out = subprocess.run(["ip", "-details", "-statistics", "-json", "link", "show", name], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return json.loads(out)[0]


@pytest.fixture
def health_of_can0(bus_a):
    reactor = Reactor()
    endpoint = SocketCanEndpoint(reactor, "can0", 0, lambda ep, ch, batch: None)
    faults, health = BusFaults(reactor), BusHealthMonitor(reactor)
    health.add(endpoint, faults.add(endpoint))
    yield reactor, endpoint, health
    health.close()
    faults.close()
    endpoint.close()
    reactor.close()


def test_real_driver_reports_bitrate_berr_counter_and_xstats(health_of_can0):
    """REAL DRIVER: what the sja1000 driver reports, read by the bridge, equals what iproute2 reads: the
    bitrate, TEC/REC (do_get_berr_counter: 0/0, the emulation stays error-active) and every xstat."""
    reactor, endpoint, health = health_of_can0
    snap = health.snapshot(endpoint)
    ip = _ip_json("can0")
    data, xstats = ip["linkinfo"]["info_data"], ip["linkinfo"]["info_xstats"]
    assert snap["bitrate"] == data["bittiming"]["bitrate"] == BITRATE and snap["dbitrate"] is None
    assert (snap["txerr"], snap["rxerr"]) == (data["berr_counter"]["tx"], data["berr_counter"]["rx"]) == (0, 0)
    assert snap["xstats"] == {"bus_error": xstats["bus_error"], "error_warning": xstats["error_warning"],
                              "error_passive": xstats["error_passive"], "bus_off": xstats["bus_off"],
                              "arbitration_lost": xstats["arbitration_lost"], "restarts": xstats["restarts"]}
    assert snap["rx_overruns"] == ip["stats64"]["rx"]["over_errors"]
    assert endpoint.counters.gauges["bus_state"] == "ERROR-ACTIVE"


def test_real_driver_bus_load_and_rx_overruns(health_of_can0):
    """REAL DRIVER: frames from can1 over the emulated wire, read by the bridge on can0, give the bits of
    canbusload's estimate and the load at the driver's 500 kbit/s over a window; a flood from can1
    (cangen, no pause, can0's interrupt held off: tests/hw/pci.py) overruns can0's 64-byte RX FIFO, which
    the health shows as the driver counts it."""
    reactor, endpoint, health = health_of_can0
    meter = health.buses[endpoint]
    frames = [sc.pack_can(0x100 + i, bytes(8)) for i in range(40)] + [
        sc.pack_can(sc.CAN_EFF_FLAG | 0x18FEF100 | i, bytes(4)) for i in range(40)]
    meter.tick(1000.0)  # a window of our own making: starts now...
    tx = open_can_raw("can1", fd=False, timestamps=False)
    try:
        for raw in frames:  # one at a time: txqueuelen 10, and at this pace can0's FIFO keeps up
            tx.send(raw)
            reactor.run_once(0.01)
        wait_for(lambda: reactor.run_once(0.02) or endpoint.counters.rx_frames == len(frames), what="80 frames on can0")
    finally:
        tx.close()
    meter.tick(1002.0)  # ...and is 2 s long
    want = sum(raw_bits(raw)[0] for raw in frames)  # 40 * 135 + 40 * 120
    assert endpoint.wire.bits == want == 10_200
    snap = health.snapshot(endpoint)
    assert snap["bits_per_s"] == want / 2 and snap["load_pct"] == round(want / 2 / BITRATE * 100, 2)  # 1.02 %

    before = snap["rx_overruns"]
    with interrupt_held_off("can0"):
        subprocess.run(["cangen", "can1", "-g", "0", "-i", "-n", "300", "-L", "8", "-I", "i"], check=True, timeout=120)
    wait_for(lambda: reactor.run_once(0.02) or health.snapshot(endpoint)["rx_overruns"] > before,
             what="an RX FIFO overrun on can0", timeout=10)
    snap = health.snapshot(endpoint)
    assert snap["rx_overruns"] == _ip_json("can0")["stats64"]["rx"]["over_errors"]


def test_real_driver_link_show_counts_the_load(bus_a, capsys):
    """REAL DRIVER: `canbridge link show can0 --load 2 --json` (no bridge running) counts the frames
    another controller puts on the wire during its 2 s and gives their load at the driver's bitrate,
    with the driver's xstats and overruns beside it; the table has the same columns."""
    frames = [sc.pack_can(0x100 + i, bytes(8)) for i in range(40)] + [
        sc.pack_can(sc.CAN_EFF_FLAG | 0x18FEF100 | i, bytes(4)) for i in range(40)]
    result = []
    show = threading.Thread(target=lambda: result.append(link_cli.main(["show", "can0", "--json", "--load", "2"])))
    show.start()
    time.sleep(0.5)  # its socket is open (measure_bits opens before it counts)
    tx = open_can_raw("can1", fd=False, timestamps=False)
    try:
        for raw in frames:
            tx.send(raw)
            time.sleep(0.002)  # txqueuelen 10: a pace the queue takes
    finally:
        tx.close()
    show.join(10)
    assert result == [0]
    health = json.loads(capsys.readouterr().out)[0]["health"]
    assert health["bits_per_s"] == 10_200 / 2 and health["load_pct"] == 1.02
    assert health["xstats"]["bus_off"] == 0 and health["rx_overruns"] is not None
    assert link_cli.main(["list"]) == 0
    table = capsys.readouterr().out
    assert "bus-off/restarts" in table and re.search(r"can0 .* 0/0 +\d+ +-", table), table


def test_real_driver_top_header(bus_a, capsys):
    """REAL DRIVER: `canbridge top can0 --once` while can1 sends: the header line of can0 carries the
    driver's state and error counters and a load at its 500 kbit/s."""
    from bridge.tools.live import top

    gen = subprocess.Popen(["cangen", "can1", "-g", "4", "-i", "-I", "123", "-L", "8", "-D", "i"])
    try:
        assert top.main(["can0", "--once", "--duration", "2.5"]) == 0
    finally:
        gen.terminate()
        gen.wait(5)
    out = capsys.readouterr().out
    line = next((x for x in out.splitlines() if x.startswith("bus can0: ")), None)
    assert line and re.match(r"bus can0: ERROR-ACTIVE  tec 0 rec 0  load \d+\.\d % of 500 kbit/s  rx_overruns \d+  "
                             r"bus_off 0$", line), out
    assert float(line.split("load ")[1].split(" %")[0]) > 0, out


def test_real_driver_bridge_stats_and_metrics(bus_a, tmp_path, capsys):
    """REAL DRIVER, the whole bridge: `canbridge can0 tcp-listen://...` while can1 sends; its `stats`
    (JSON and the piped text) and its Prometheus metrics carry can0's health: the driver's bitrate,
    TEC/REC and xstats, and a bus load from the frames it reads."""
    import os
    import urllib.request

    from bridge.daemon import control
    from bridge.tools.live import stats_client

    sock = str(tmp_path / "gw.sock")
    log = open(tmp_path / "gw.log", "wb")
    bridge = subprocess.Popen([sys.executable, "-m", "bridge", "can0", "tcp-listen://127.0.0.1:29731", "--control",
                               sock, "--metrics", "127.0.0.1:29792"], stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log.close()
    gen = None
    try:
        wait_for(lambda: os.path.exists(sock) or bridge.poll() is not None, timeout=60, what="the bridge's socket")
        assert bridge.poll() is None, (tmp_path / "gw.log").read_text()
        gen = subprocess.Popen(["cangen", "can1", "-g", "4", "-i", "-I", "123", "-L", "8", "-D", "i"])
        health = wait_for(lambda: (control.request(sock)["stats"]["can0"]["health"] or {}).get("load_pct"),
                          timeout=30, what="a bus load on can0") and control.request(sock)["stats"]["can0"]["health"]
        assert health["bitrate"] == BITRATE and (health["txerr"], health["rxerr"]) == (0, 0)
        assert health["xstats"]["bus_off"] == 0 and 0 < health["load_pct"] < 100
        assert stats_client.main(["--control", sock]) == 0
        text = capsys.readouterr().out
        assert re.search(r"^  bus        ERROR-ACTIVE  tec 0 rec 0  load \d+\.\d % of 500 kbit/s$", text, re.M), text
        assert re.search(r"^  controller bus_error=0, error_warning=0, ", text, re.M), text

        def scraped():
            with urllib.request.urlopen("http://127.0.0.1:29792/metrics", timeout=10) as r:
                body = r.read().decode()
            return 'canbridge_bus_load_ratio{endpoint="can0"}' in body and body

        body = wait_for(scraped, timeout=10, what="bus health in the metrics")
        assert 'canbridge_bus_controller_events_total{endpoint="can0",event="bus_off"} 0.0' in body
        assert 'canbridge_bus_bitrate_bits_per_second{endpoint="can0"} 500000.0' in body
    finally:
        if gen is not None:
            gen.terminate()
            gen.wait(5)
        bridge.terminate()
        bridge.wait(30)
