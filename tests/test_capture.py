"""`canbridge capture` on network links (AF_PACKET + BPF), on the host: real UDP/TCP traffic on the
loopback of a fresh network namespace, read back with tshark (Wireshark's own pcapng reader)."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.codec import pcapng

SENDER = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    u.sendto(b"frame%05d" % i, ("127.0.0.1", port))
    u.sendto(b"other%05d" % i, ("127.0.0.1", port + 1))   # filtered out
    time.sleep(0.001)
"""


def blocks(path: Path) -> list[tuple[int, bytes]]:
    return pcapng.blocks(path.read_bytes())


def isb_counts(path: Path) -> list[tuple[int, int]]:
    """(isb_ifrecv, isb_ifdrop) of every Interface Statistics Block."""
    counts = []
    for btype, body in blocks(path):
        if btype == pcapng.ISB_TYPE:
            opts = pcapng.options(body, 12)
            counts.append((struct.unpack("=Q", opts[pcapng.ISB_IFRECV])[0],
                           struct.unpack("=Q", opts[pcapng.ISB_IFDROP])[0]))
    return counts


def start_capture(ns: str, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bridge", "capture", *args],
                            stdout=stdout, stderr=subprocess.PIPE, text=stdout is not subprocess.PIPE)
    line = proc.stderr.readline()
    assert "capturing on" in str(line), line
    return proc


def tshark(path: Path, *fields: str) -> list[list[str]]:
    cmd = ["tshark", "-r", str(path), "-T", "fields", *(a for f in fields for a in ("-e", f))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def send_udp(ns: str, port: int, n: int) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(port), str(n)], check=True)


def test_af_packet_bpf_filter_to_pcapng_read_by_tshark(netns, tmp_path):
    ns = netns()
    out = tmp_path / "lo.pcapng"
    proc = start_capture(ns, "-i", "lo", "-f", "udp port 29700", "-w", str(out))
    send_udp(ns, 29700, 50)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    rows = tshark(out, "frame.interface_name", "udp.dstport", "data.data", "frame.time_epoch")
    # loopback shows each packet once (the outgoing copy is skipped, as libpcap does); filter held
    assert [r[2] for r in rows] == [(b"frame%05d" % i).hex() for i in range(50)]
    assert {r[0] for r in rows} == {"lo"} and {r[1] for r in rows} == {"29700"}
    assert abs(float(rows[0][3]) - time.time()) < 60  # a kernel timestamp, not zero
    assert subprocess.run(["capinfos", "-r", str(out)], capture_output=True, text=True).stdout.count("0x09") >= 1
    assert isb_counts(out) == [(50, 0)]


def test_count_limit_stdout_and_nanosecond_resolution(netns, tmp_path):
    ns = netns()
    proc = start_capture(ns, "-i", "lo", "-f", "udp port 29700", "-c", "10", "-w", "-", stdout=subprocess.PIPE)
    send_udp(ns, 29700, 20)
    data, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    out = tmp_path / "stdout.pcapng"
    out.write_bytes(data)
    assert len(tshark(out, "frame.number")) == 10
    idb = [body for btype, body in blocks(out) if btype == pcapng.IDB_TYPE]
    assert len(idb) == 1 and struct.unpack_from("=H", idb[0])[0] == pcapng.LINKTYPE_ETHERNET


def test_ring_buffer_keeps_newest_files(netns, tmp_path):
    ns = netns()
    out = tmp_path / "ring.pcapng"
    # 0.004 MB per file: each file takes a handful of ~100-byte packets
    proc = start_capture(ns, "-i", "lo", "-f", "udp port 29700", "-C", "0.004", "-W", "3", "-w", str(out))
    send_udp(ns, 29700, 200)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    files = sorted(tmp_path.glob("ring_*.pcapng"))
    assert len(files) == 3, files
    numbers = [int(f.stem.split("_")[1]) for f in files]
    assert numbers == list(range(numbers[0], numbers[0] + 3)) and numbers[0] > 1
    last = tshark(files[-1], "data.data")[-1][0]
    assert bytes.fromhex(last) == b"frame00199"  # the newest file holds the end of the traffic
    for f in files:  # every file stands alone: readable, with its own interface and statistics blocks
        assert tshark(f, "frame.number") and isb_counts(f)


def test_bad_filter_and_unknown_interface_are_usage_errors(netns):
    ns = netns()
    for args, expect in ((["-i", "lo", "-f", "port nonsense("], "capture filter"),
                         (["-i", "nosuch0"], "no such interface"),
                         (["-i", "lo@no-such-netns"], "network namespace")):
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bridge", "capture", *args, "-w", "-"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("raw,expected", [
    (struct.pack("=IBBBB8s", 0x123, 3, 0, 0, 0, b"\x01\x02\x03"), bytes.fromhex("0000012303000000010203")),
    (struct.pack("=IBBBB64s", 0x80000456, 12, 0x01, 0, 0, bytes(range(12))),
     bytes.fromhex("800004560c050000") + bytes(range(12))),
])
def test_can_record_big_endian_id_and_fdf(raw, expected):
    assert pcapng.can_record(raw) == expected
