"""`canbridge demo --transport mqtt` in the test VM: the Durango trace through a gateway bridge, a Mosquitto
in the gateway's namespace and a second bridge (source=gateway/vcan0) in the remote namespace, the same
loss and latency table as the other transports, every frame delivered and both bridges exiting 0."""

import subprocess
import sys

import pytest


LIMIT = 2000  # 0.8 s of the trace at 1x: the whole path, short enough for an emulated VM


pytestmark = [pytest.mark.vcan, pytest.mark.mosquitto]


def test_demo_transport_mqtt_loses_nothing():
    res = subprocess.run([sys.executable, "-m", "bridge", "demo", "--transport", "mqtt", "--limit", str(LIMIT)],
                         capture_output=True, text=True, timeout=600)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{LIMIT} frames over" in res.stdout
    assert f"mqtt: sent {LIMIT}, received {LIMIT}, lost 0," in res.stdout
    assert "bridge exit codes [0, 0]" in res.stdout
    row = next(line.split() for line in res.stdout.splitlines() if line.startswith("mqtt "))
    assert row[:6] == ["mqtt", str(LIMIT), str(LIMIT), "0", "0", "0"]  # sent, received, lost, dup, reordered
    assert all(float(v) > 0 for v in row[6:9])  # p50, p99, max latency in ms were measured
