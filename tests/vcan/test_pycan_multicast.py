"""canbridge as a member of a python-can `udp_multicast` group, against python-can 4.6.1's own bus.

Everything runs in one fresh network namespace: a vcan0 (MTU 72) bridged by `python -m bridge vcan0
udp-multicast://...`, python-can's socketcan bus on that vcan0 and python-can's udp_multicast bus on the
group. lo cannot carry IPv6 multicast, so the namespace gets a veth pair (mc0 <-> mc1) with the group
routes on mc0; multicast loopback delivers every datagram to every member in the namespace, including
its sender, which is what the bridge's echo suppression is tested against.
"""

import subprocess
import sys
import time

import can
import pytest

from bridge.frame import CanFrame
from bridge.hw import netns as hwns
from tests.vcan.test_e2e import counters_at_exit

pytestmark = pytest.mark.vcan

GROUP_V4 = "239.74.163.2"
PROBE_ID = 0x7FF
QUIET_S = 1.5  # after the expected frames arrived, this long without more means "nothing duplicated"


@pytest.fixture
def mc_ns(netns):
    """A namespace with vcan0 and an interface that carries IPv6 and IPv4 multicast (mc0)."""
    ns = netns("cbmc")
    hwns.ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")  # link-local usable at once
    for args in (["link", "add", "mc0", "type", "veth", "peer", "name", "mc1"],
                 ["link", "set", "mc0", "up"], ["link", "set", "mc1", "up"],
                 ["addr", "add", "10.201.0.1/24", "dev", "mc0"],
                 ["route", "add", "224.0.0.0/4", "dev", "mc0"],
                 ["-6", "route", "add", "ff15::/16", "dev", "mc0", "table", "local"],
                 ["link", "add", "vcan0", "type", "vcan"],
                 ["link", "set", "vcan0", "mtu", "72", "up"]):
        hwns.ip(*args, netns=ns)
    return ns


def frames_on_the_bus() -> list[can.Message]:
    m = can.Message
    return [
        m(arbitration_id=0x123, is_extended_id=False, data=b"\x01\x02"),
        m(arbitration_id=0x000, is_extended_id=False, data=b""),
        m(arbitration_id=0x1ABCDEF0, is_extended_id=True, data=bytes(range(8))),
        m(arbitration_id=0x321, is_extended_id=False, is_remote_frame=True, dlc=3),
        m(arbitration_id=0x100, is_extended_id=False, is_fd=True, data=bytes(range(12))),
        m(arbitration_id=0x10000, is_extended_id=True, is_fd=True, bitrate_switch=True, data=bytes(64)),
        m(arbitration_id=0x101, is_extended_id=False, is_fd=True, error_state_indicator=True, data=b"\x55" * 8),
    ]


def key(msg: can.Message) -> bytes:
    """The raw frame a message stands for (id, flags, len, data; not time or channel)."""
    return CanFrame.from_message(msg).to_raw()


def collect(bus, n: int, timeout: float = 30.0) -> list:
    """Up to n messages (stops early only at the timeout), then whatever else arrives until QUIET_S of silence."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = bus.recv(0.5)
        if m is not None:
            got.append(m)
    while (m := bus.recv(QUIET_S)) is not None:
        got.append(m)
    return got


def wait_joined(local, group_bus, timeout: float = 90.0) -> int:
    """Send probes on vcan0 until one crosses to the group; drain both sides; returns probes sent."""
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        local.send(can.Message(arbitration_id=PROBE_ID, is_extended_id=False, data=sent.to_bytes(4, "big")))
        sent += 1
        m = group_bus.recv(0.5)
        if m is not None:
            assert m.arbitration_id == PROBE_ID
            while group_bus.recv(QUIET_S) is not None:  # later probes that made it too
                pass
            while local.recv(0.1) is not None:
                pass
            return sent
    pytest.fail("no probe crossed vcan0 -> bridge -> group")


@pytest.mark.parametrize("url,channel", [
    ("udp-multicast://", None),  # python-can's defaults: [ff15:7079:7468:6f6e:6465:6d6f:6d63:6173]:43113
    (f"udp-multicast://{GROUP_V4}:43113?iface=mc0&hop_limit=1", GROUP_V4),
], ids=["ipv6-default", "ipv4-iface"])
def test_python_can_group_member_exactly_once_both_ways(mc_ns, tmp_path, url, channel):
    log = tmp_path / "bridge.log"
    with hwns.inside(mc_ns):
        group_bus = can.Bus(interface="udp_multicast", **({"channel": channel} if channel else {}))
        local = can.Bus(interface="socketcan", channel="vcan0", fd=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(hwns.exec_argv(mc_ns, [sys.executable, "-m", "bridge", "vcan0", url]),
                                stdout=out, stderr=out)
    try:
        with group_bus, local:
            probes = wait_joined(local, group_bus)

            # vcan0 -> group: each frame once on the group, and nothing comes back to vcan0 (our echo suppressed)
            sent = frames_on_the_bus()
            for m in sent:
                local.send(m)
            got = collect(group_bus, len(sent))
            assert [key(m) for m in got] == [key(m) for m in sent]
            assert all(m.channel == "vcan0" for m in got)  # named as python-can's socketcan bus names it
            assert local.recv(0.2) is None

            # group -> vcan0: each frame once on vcan0; the group hears it once (python-can's own loopback), not twice
            for m in sent:
                group_bus.send(m)
            on_bus = collect(local, len(sent))
            assert [key(m) for m in on_bus] == [key(m) for m in sent]
            assert [key(m) for m in collect(group_bus, len(sent))] == [key(m) for m in sent]
    finally:
        proc.terminate()
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    stats = next(v for k, v in counters_at_exit(text).items() if k.startswith("udp-multicast://"))
    # probes sent before the bridge opened vcan0 never reach it; at least the one that crossed did
    assert 1 + len(sent) <= stats["tx_frames"] <= probes + len(sent)
    assert stats["echoes"] == stats["tx_frames"]
    assert stats["rx_frames"] == len(sent)
    assert stats["errors"] == {} and stats["dropped"] == {}
