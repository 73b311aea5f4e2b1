"""Short soak (the suite's version of benchmarks/soak.py): the Durango trace looped through two
bridges over TCP while every fault of tests/rig/soak.py is injected once. Neither bridge may crash, traffic
must recover after each fault without a restart (the remote is restarted only by the `kill` fault),
frames may be lost only inside fault windows, and the gateway's RSS must stay flat."""


import pytest

from bridge.codec.candump import read_log
from bridge.tools.rig.demo import DEFAULT_TRACE
from tests.rig.soak import FAULTS, Soak

pytestmark = pytest.mark.vcan
TRACE = DEFAULT_TRACE


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_short_soak_with_every_fault(transport):
    frames = [(ts, raw) for ts, _, raw in read_log(TRACE)]
    res = Soak(transport).run(frames, seconds=120, speed=1.0, faults=FAULTS, gap_s=6.0)
    print(res.summary())
    assert not res.crashed and res.exit_codes["gateway"] == 0 and res.exit_codes["remote"] == 0
    injected = [f[0] for f in res.faults]
    assert set(injected) == set(FAULTS) - ({"slow"} if transport == "udp" else set()), injected
    for name, recovered_after in res.recovery_s:
        assert recovered_after is not None, f"no traffic recovered after {name}: {res.summary()}"
    # frames lost outside the fault windows (a window lasts from the fault until frames flow again):
    # only what was in flight at a window's edge. Measured: TCP ~0, UDP ~0.8 % of the frames sent
    # (see docs/benchmarks.md); more than 2 % means frames are being lost while nothing is wrong
    assert res.lost - res.lost_in_windows() <= 0.02 * res.sent, res.summary()
    # every lost frame is counted by a bridge (unacked_at_close, lost_in_transit, no_peer, peer_down...)
    # except what died inside the SIGKILLed remote; measured: TCP 37 and UDP 0 of ~320k sent uncounted
    # (window edges), against 22k (TCP) and 71k (UDP) that the newest counters explain
    assert abs(res.uncounted_outside_kills()) <= 0.005 * res.sent, res.summary()
    assert res.rss_growth_mb("gateway") < 5.0, res.summary()
