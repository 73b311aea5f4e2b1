"""bridge.endpoints.linkwatch on real rtnetlink: a veth pair in a network namespace of its own goes up,
down, away and comes back; the watcher sees each change from the reactor, without polling."""

import subprocess
import time

from bridge.core.reactor import Reactor
from bridge.endpoints.linkwatch import ABSENT, DOWN, UP, LinkWatch, current
from bridge.hw import netns as hwnetns


def test_link_events_in_order(netns):
    ns = netns("lw")
    seen = []

    def ip(*args):
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    with hwnetns.inside(ns):
        r = Reactor()
        watch = LinkWatch(r)
        first = watch.watch("lwa", seen.append)
        assert first.state == ABSENT and first.index == 0

        def pump_until(state):
            deadline = time.monotonic() + 10
            while not (seen and seen[-1].state == state) and time.monotonic() < deadline:
                r.run_once(timeout=0.05)
            assert seen and seen[-1].state == state, seen

        ip("link", "add", "lwa", "type", "veth", "peer", "lwb")
        pump_until(DOWN)
        index = seen[-1].index
        assert index > 0 and current("lwa").index == index
        ip("link", "set", "lwa", "up")
        pump_until(UP)
        ip("link", "set", "lwa", "down")
        pump_until(DOWN)
        ip("link", "del", "lwa")
        pump_until(ABSENT)
        ip("link", "add", "lwa", "type", "veth", "peer", "lwb")
        pump_until(DOWN)
        assert seen[-1].index != index  # a new interface under the same name
        watch.close()
        r.close()
    states = [e.state for e in seen]
    collapsed = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert collapsed == [DOWN, UP, DOWN, ABSENT, DOWN]
    assert {e.name for e in seen} == {"lwa"}  # lwb's events are not ours
    assert all(e.can_state is None for e in seen)  # not a CAN controller


def test_linkstate_decodes_what_pyroute2_encodes():
    """bridge.hw.linkstate (the bridge's own small rtnetlink decoder) against pyroute2's encoder: a CAN controller
    in BUS-OFF, a vcan without CAN data, and a deleted link, in one datagram; a truncated tail is dropped."""
    from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from bridge.hw import linkstate

    def encoded(kind, index, flags, attrs):
        msg = ifinfmsg()
        msg["header"]["type"] = kind
        msg["index"], msg["flags"] = index, flags
        msg["attrs"] = attrs
        msg.encode()
        return bytes(msg.data)

    can_data = {"attrs": [("IFLA_CAN_STATE", 3), ("IFLA_CAN_RESTART_MS", 100)]}
    can0 = encoded(RTM_NEWLINK, 7, 1, [("IFLA_IFNAME", "can0"), ("IFLA_MTU", 72), ("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "can"), ("IFLA_INFO_DATA", can_data)]})])
    vcan_info = {"attrs": [("IFLA_INFO_KIND", "vcan")]}
    vcan = encoded(RTM_NEWLINK, 8, 0, [("IFLA_IFNAME", "vcan1"), ("IFLA_LINKINFO", vcan_info)])
    gone = encoded(RTM_DELLINK, 9, 0, [("IFLA_IFNAME", "can9")])
    got = linkstate.parse(can0 + vcan + gone + gone[:10])
    assert got == [linkstate.LinkState("can0", 7, True, False, "BUS-OFF"), linkstate.LinkState("vcan1", 8, False),
                   linkstate.LinkState("can9", 9, False, True)]
    assert linkstate.query("lo").up and linkstate.query("no-such-link0") is None
