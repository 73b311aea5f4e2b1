"""Short soak (the suite's version of benchmarks/soak.py): the Durango trace looped through two
bridges over TCP while every fault of hw/soak.py is injected once. Neither bridge may crash, traffic
must recover after each fault without a restart (the remote is restarted only by the `kill` fault),
frames may be lost only inside fault windows, and the gateway's RSS must stay flat."""

from pathlib import Path

import pytest

from bridge.codec.candump import read_log
from hw.soak import FAULTS, Soak

pytestmark = pytest.mark.vcan
TRACE = Path(__file__).resolve().parent.parent / "data" / "durango_mapswitch.log"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_short_soak_with_every_fault(transport):
    frames = [(ts, raw) for ts, _, raw in read_log(TRACE)]
    res = Soak(transport).run(frames, seconds=100, speed=1.0, faults=FAULTS, gap_s=6.0)
    print(res.summary())
    assert not res.crashed and res.exit_codes["gateway"] == 0 and res.exit_codes["remote"] == 0
    injected = [f[0] for f in res.faults]
    assert set(injected) == set(FAULTS) - ({"slow"} if transport == "udp" else set()), injected
    for name, _t0, _t1, sent, delivered in res.faults:
        assert sent > 0 and delivered > 0, f"no traffic recovered after {name}"
    # frames lost outside the fault windows: at most a handful in flight at a window's edge
    assert res.lost - res.lost_in_windows() <= 50, res.summary()
    assert res.delivered > 0.8 * res.sent
    assert res.rss_growth_mb("gateway") < 5.0, res.summary()
