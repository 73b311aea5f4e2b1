"""End to end through a real Mosquitto (docs/mqtt.md): vcan0 -> gateway bridge process -> mosquitto ->
a second bridge process (source=GW/vcan0, read_only=0) -> its vcan0, in the two network namespaces of
bridge/tools/rig/rig.py. The broker runs in the gateway's namespace on a free port; the remote reaches it over
the veth. Every payload format; classic (Durango trace), CAN FD, EFF, RTR and len8_dlc frames."""

import subprocess
import time

import pytest

from bridge.codec.candump import read_log
from bridge.tools.rig.demo import DEFAULT_TRACE
from bridge.tools.rig.rig import GW_ADDR, Rig
from bridge.hw import netns
from tests.mqtt_broker import MOSQUITTO, Broker, free_port
from tests.vcan.test_e2e import fd_zoo

pytestmark = [pytest.mark.vcan, pytest.mark.mosquitto]
DURANGO_FRAMES = 20_000  # 8 s of the trace at 1x: enough for batching under load, short for a TCG VM


@pytest.fixture(scope="module")
def durango():
    return [(ts, raw) for ts, _iface, raw in read_log(DEFAULT_TRACE)][:DURANGO_FRAMES]


class NsBroker(Broker):
    """Mosquitto inside the gateway's namespace, listening on every address of it."""

    def __init__(self, directory, ns):
        super().__init__(directory, port=free_port())
        self.ns = ns
        text = self.config.read_text().replace(f"listener {self.port} 127.0.0.1", f"listener {self.port}")
        self.config.write_text(text)

    def start(self, timeout=10.0):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(netns.exec_argv(self.ns, [MOSQUITTO, "-c", str(self.config)]),
                                     stdout=logf, stderr=logf)
        logf.close()
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(self.log.read_text())
        return self


def _run(tmp_path, frames, fmt, speed):
    with Rig() as rig:
        broker = NsBroker(tmp_path / "broker", rig.gw).start()
        try:
            opts = f"format={fmt}"
            rig.start_bridge("gateway", ["vcan0", f"mqtt://127.0.0.1:{broker.port}/fleet?gateway=gw&{opts}"])
            rig.start_bridge("remote", ["vcan0", f"mqtt://{GW_ADDR}:{broker.port}/fleet?gateway=remote"
                                                 f"&source=gw/vcan0&read_only=0&{opts}"])
            report = rig.run_traffic(frames, speed=speed)
            codes = rig.stop_bridges()
            logs = rig.all_logs()
        finally:
            broker.stop()
    return report, codes, logs


@pytest.mark.parametrize("fmt", ["native", "json", "candump"])
def test_durango_through_mosquitto_every_format(tmp_path, durango, fmt):
    report, codes, logs = _run(tmp_path, durango, fmt, speed=1.0)
    print(f"mqtt {fmt}: {report.summary()}")
    assert report.sent == len(durango)
    assert report.received == report.sent, report.summary() + "\n" + logs[-3000:]
    assert report.complete, report.summary()
    assert codes == [0, 0]


def test_can_fd_rtr_eff_through_mosquitto(tmp_path):
    frames = fd_zoo()
    report, codes, logs = _run(tmp_path, frames, "native", speed=1.0)
    assert report.sent == len(frames)
    assert report.complete, report.summary() + "\n" + logs[-3000:]
    assert codes == [0, 0]
