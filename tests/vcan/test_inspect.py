"""Capture and inspect in the test VM: CAN frames of every kind read back by tshark and scapy, and the
Durango trace through two bridges over UDP captured on both vcans and the veth link, then paired
by `canbridge inspect` (0 lost, plausible latencies, a PNG with both charts)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from bridge.codec import candump
from bridge.codec import socketcan as sc
from bridge.tools.logs import probe
from bridge.tools.rig.demo import DEFAULT_TRACE
from bridge.tools.rig.rig import Rig

pytestmark = pytest.mark.vcan
DURANGO = DEFAULT_TRACE


def start_capture(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "capture", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert "capturing on" in line, line + proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


FRAMES = [
    sc.pack_can(0x123, b"\xde\xad\xbe\xef"),
    sc.pack_can(sc.CAN_EFF_FLAG | 0x12345678, bytes(range(8))),
    sc.pack_can(sc.CAN_RTR_FLAG | 0x456, b"", length=3),
    sc.pack_can(sc.CAN_ERR_FLAG | 0x40, bytes(8)),  # bus-off error frame
    sc.pack_canfd(0x7FF, bytes(range(12)), 0x01),  # FD, BRS
    sc.pack_canfd(sc.CAN_EFF_FLAG | 0x1ABCDEF, bytes(range(64)), 0x03),  # FD 64, BRS | ESI
    sc.pack_canfd(0x001, b"\x11\x22\x33", 0),  # FD with 3 bytes, no flags: FDF must still mark it
]


def test_capture_can_frames_read_by_tshark_and_scapy(vcan0, tmp_path):
    out = tmp_path / "can.pcapng"
    cap = start_capture("-i", vcan0, "-w", str(out), "-c", str(len(FRAMES)))
    tx = probe.open_can(vcan0)
    for raw in FRAMES:
        probe.send(tx, raw)
    tx.close()
    cap.wait(60)
    assert cap.returncode == 0
    fields = ["can.id", "can.flags.xtd", "can.flags.rtr", "can.flags.err", "can.len", "canfd.flags.brs",
              "canfd.flags.esi", "data.data"]
    res = subprocess.run(["tshark", "-r", str(out), "-T", "fields", *(a for f in fields for a in ("-e", f))],
                         capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert len(rows) == len(FRAMES)
    for raw, row in zip(FRAMES, rows):
        can_id, length, flags, _, data = sc.unpack(raw)
        fd = len(raw) == sc.CANFD_MTU
        if can_id & sc.CAN_ERR_FLAG:
            assert row[3] in ("1", "True") and row[4] == "8", row  # tshark shows the class, not the id
            continue
        assert int(row[0]) == can_id & sc.CAN_EFF_MASK, row
        assert row[1] in (("1", "True") if can_id & sc.CAN_EFF_FLAG else ("0", "False", "")), row
        assert int(row[4]) == length, row
        if fd:
            assert row[5] in (("1", "True") if flags & 1 else ("0", "False")), row
            assert row[6] in (("1", "True") if flags & 2 else ("0", "False")), row
        elif can_id & sc.CAN_RTR_FLAG:
            assert row[2] in ("1", "True"), row
        if length and not can_id & sc.CAN_RTR_FLAG:
            assert bytes.fromhex(row[7])[:length] == bytes(data[:length]), row
    from bridge.tools.inspect import dissect

    got = [f.raw for f in dissect.bus_frames(dissect.read_packets(out))]
    assert [candump.format_frame(r) for r in got] == [candump.format_frame(r) for r in FRAMES]


def test_durango_through_two_udp_bridges_captured_and_inspected(tmp_path):
    frames = [(ts, raw) for ts, _, raw in candump.read_log(DURANGO)]
    pcap, png, js = tmp_path / "rig.pcapng", tmp_path / "latency.png", tmp_path / "report.json"
    with Rig() as rig:
        rig.start_pair("udp")
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx)
            cap = start_capture(*rig.capture_args("udp"), "-w", str(pcap))
            sent, received = [], []
            probe.replay(tx, frames, 1.0, on_wait=lambda: (probe.drain(tx, sent), probe.drain(rx, received)))
            deadline = time.monotonic() + 30
            while len(received) < len(frames) and time.monotonic() < deadline:
                probe.drain(rx, received)
                time.sleep(0.05)
            time.sleep(0.5)
            err = stop(cap)
    assert "0 dropped" in err and "dropped by the kernel" in err, err
    for line in err.splitlines():
        if "dropped by the kernel" in line:
            assert line.rstrip().endswith(" 0 dropped by the kernel"), line
    res = subprocess.run([sys.executable, "-m", "bridge", "inspect", str(pcap), *rig.inspect_args("udp"),
                          "--plot", str(png), "--json", str(js)],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    rep = json.loads(js.read_text())
    assert rep["sent"] == len(frames) and rep["delivered"] == len(frames), rep
    assert rep["lost"] == 0 and rep["duplicates"] == 0
    assert rep["on_wire"] == len(frames) and rep["wire"] == f"veth0@{rig.gw}"
    lat = rep["latency"]
    for hop in ("bus_to_bus", "bus_to_wire", "wire_to_bus"):
        assert lat[hop]["n"] == len(frames)
        assert 0 < lat[hop]["p50_ms"] <= lat[hop]["p99_ms"] <= lat[hop]["max_ms"] < 2000, lat
    # the hops add up: bus->wire + wire->bus is the whole way
    assert abs(lat["bus_to_wire"]["p50_ms"] + lat["wire_to_bus"]["p50_ms"] - lat["bus_to_bus"]["p50_ms"]) < \
        max(1.0, lat["bus_to_bus"]["p50_ms"])
    assert len(rep["per_id"]) == len({sc.can_id_of(raw) for _, raw in frames})
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency per hop" in res.stdout
