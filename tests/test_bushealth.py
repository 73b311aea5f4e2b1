"""Bus health on the host (issue 22, point 6): the bus-load estimator against can-utils' canbusload
(bridge/codec/busload.py), the rtnetlink decoding of a controller's error counters, xstats and RX
statistics (hw/linkstate.py), the error counters of error frames, and how health reaches Prometheus."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.codec import busload, canerr
from bridge.codec import socketcan as sc
from bridge.codec.busload import NO_BITSTUFFING, WireBits, frame_bits, load_percent, raw_bits


def test_frame_bits_are_canbusloads():
    """canframelen.c's can_frame_length(): worst case (canbusload's default) 55/80 bits + 10 per byte;
    -i: 47/67 + 8 per byte; CAN FD: the unstuffed length * 5/4, the BRS part at the data bitrate."""
    assert frame_bits(0x123, 8) == (135, 0)
    assert frame_bits(0x123 | sc.CAN_EFF_FLAG, 8) == (160, 0)
    assert frame_bits(0x7FF, 0) == (55, 0)
    assert frame_bits(0x123, 8, mode=NO_BITSTUFFING) == (111, 0)
    assert frame_bits(0x1 | sc.CAN_EFF_FLAG, 2, mode=NO_BITSTUFFING) == (83, 0)
    assert frame_bits(0x123 | sc.CAN_RTR_FLAG, 4) == (95, 0)  # canbusload counts an RTR's len
    assert frame_bits(sc.CAN_ERR_FLAG | canerr.CAN_ERR_BUSOFF, 8) == (0, 0)  # not on the wire
    # FD, 64 bytes, 11-bit ID, BRS: (1 + 11 + 21 + 5 + 12 + 512) * 5 // 4 total, (1+1+4+21+512) * 5 // 4 fast
    assert frame_bits(0x123, 64, fd=True, brs=True) == (702, 673)
    assert frame_bits(0x123, 12, fd=True) == ((1 + 11 + 17 + 5 + 12 + 96) * 5 // 4, 0)
    assert frame_bits(0x123, 12, fd=True, brs=True, mode=NO_BITSTUFFING) == (142, 1 + 1 + 4 + 17 + 96)
    with pytest.raises(ValueError, match="exact"):
        frame_bits(0x123, 8, mode="exact")


@pytest.mark.parametrize("bits, data_bits, bitrate, dbitrate, percent", [
    (21980, 0, 100_000, None, 21),  # `canbusload -h`'s example lines: can0@100k 192 21980 9136 0 21%
    (475500, 131825, 500_000, 2_000_000, 74),  # can1@500k/2M 2651 475500 234448 131825 74%
    (136777, 0, 500_000, None, 27),  # can2@500k 855 136777 62968 35219 27%
])
def test_load_percent_matches_canbusloads_example(bits, data_bits, bitrate, dbitrate, percent):
    """canbusload prints int((bits - dbits) * 100 / bitrate) + int(dbits * 100 / dbitrate) per second."""
    got = load_percent(bits, data_bits, 1.0, bitrate, dbitrate)
    assert int(got) in (percent, percent + 1) and abs(got - percent) < 1.5
    assert load_percent(bits * 2, data_bits * 2, 2.0, bitrate, dbitrate) == pytest.approx(got)
    with pytest.raises(ValueError):
        load_percent(bits, 0, 1.0, 0)


frames = st.one_of(
    st.builds(lambda i, d, eff: sc.pack_can(i | (sc.CAN_EFF_FLAG if eff else 0), d),
              st.integers(0, 0x7FF), st.binary(max_size=8), st.booleans()),
    st.builds(lambda i, d, brs: sc.pack_canfd(i, d, sc.CANFD_BRS if brs else 0),
              st.integers(0, 0x7FF), st.sampled_from([bytes(n) for n in (0, 8, 12, 16, 20, 64)]), st.booleans()),
    st.builds(lambda c: canerr.error_frame(c), st.sampled_from([canerr.CAN_ERR_CRTL, canerr.CAN_ERR_BUSOFF])),
)


@given(st.lists(frames, max_size=40), st.sampled_from(busload.MODES))
def test_wire_bits_tables_agree_with_frame_bits(raws, mode):
    """The forwarding path's lookup tables (WireBits) give frame_bits() of every frame, FD and error
    frames included; a classic batch takes the one-comprehension path."""
    want = [raw_bits(r, mode) for r in raws]
    wire = WireBits(mode)
    wire.add(raws)
    assert (wire.bits, wire.data_bits, wire.frames) == (sum(b for b, _ in want), sum(d for _, d in want), len(raws))
    batch = WireBits(mode)
    batch.add_batch([(r, 0) for r in raws], fd_link=True)
    classic = [r for r in raws if len(r) == sc.CAN_MTU]
    batch.add_batch([(r, 0) for r in classic], fd_link=False)
    assert batch.bits == wire.bits + sum(raw_bits(r, mode)[0] for r in classic)


def _rtattr(kind: int, payload: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def _newlink(index: int, name: str, kind: bytes, info_data: bytes = b"", xstats: bytes = b"",
             stats64: bytes = b"") -> bytes:
    """An RTM_NEWLINK message laid out as linux/rtnetlink.h and if_link.h say (the kernel's own bytes)."""
    info = _rtattr(1, kind + b"\0") + (_rtattr(2, info_data) if info_data else b"") + (
        _rtattr(3, xstats) if xstats else b"")
    attrs = _rtattr(3, name.encode() + b"\0") + _rtattr(18, info) + (_rtattr(23, stats64) if stats64 else b"")
    body = struct.pack("=BxHiII", 0, 280, index, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 16, 0, 0, 0) + body


def test_linkstate_health_decodes_berr_counter_xstats_and_stats64():
    """hw/linkstate.py's health decoder: IFLA_CAN_BITTIMING (bitrate), IFLA_CAN_STATE, IFLA_CAN_BERR_COUNTER
    (struct can_berr_counter), IFLA_INFO_XSTATS (struct can_device_stats), IFLA_STATS64 (rx_over_errors,
    rx_dropped); a vcan has none of the controller's; a controller without berr counter reads None."""
    from bridge.hw import linkstate

    timing = struct.pack("=8I", 500_000, 875, 125, 6, 7, 2, 1, 1)
    can_data = _rtattr(1, timing) + _rtattr(4, struct.pack("=I", 2)) + _rtattr(8, struct.pack("=HH", 130, 7))
    xstats = struct.pack("=6I", 11, 3, 2, 1, 5, 1)
    stats64 = struct.pack("=24Q", *range(100, 124))
    can0 = _newlink(7, "can0", b"can", can_data, xstats, stats64)
    vcan = _newlink(8, "vcan0", b"vcan", stats64=stats64)
    bare = _newlink(9, "can1", b"can", _rtattr(4, struct.pack("=I", 0)))
    got = linkstate.parse_health(can0 + vcan + bare + can0[:20])
    assert [h.name for h in got] == ["can0", "vcan0", "can1"]
    h = got[0]
    assert (h.kind, h.can_state, h.bitrate, h.dbitrate, h.txerr, h.rxerr) == ("can", "ERROR-PASSIVE", 500_000, None,
                                                                              130, 7)
    assert h.xstats == {"bus_error": 11, "error_warning": 3, "error_passive": 2, "bus_off": 1, "arbitration_lost": 5,
                        "restarts": 1}
    assert (h.stats["rx_packets"], h.stats["rx_dropped"], h.stats["rx_over_errors"]) == (100, 106, 111)
    assert (got[1].kind, got[1].bitrate, got[1].xstats, got[1].stats["tx_packets"]) == ("vcan", None, None, 101)
    assert (got[2].txerr, got[2].bitrate, got[2].xstats, got[2].stats) == (None, None, None, None)
    assert linkstate.health("lo").stats["rx_packets"] >= 0 and linkstate.health("no-such-link0") is None


def test_error_counters_of_error_frames():
    """TEC/REC ride in data[6], data[7] of error frames with CAN_ERR_CNT (linux/can/error.h); a restart
    resets them; other frames say nothing."""
    passive = canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE, txerr=135, rxerr=4)
    assert canerr.error_counters(passive) == (135, 4) and canerr.bus_state(passive) == canerr.ERROR_PASSIVE
    assert canerr.error_counters(canerr.error_frame(canerr.CAN_ERR_RESTARTED)) == (0, 0)
    assert canerr.error_counters(canerr.error_frame(canerr.CAN_ERR_BUSOFF)) is None
    assert canerr.error_counters(sc.pack_can(0x123, bytes(8))) is None


HEALTH = {"bitrate": 500_000, "dbitrate": None, "bits_per_s": 60_000, "load_pct": 12.0, "txerr": 130, "rxerr": 7,
          "xstats": {"bus_error": 11, "error_warning": 3, "error_passive": 2, "bus_off": 1, "arbitration_lost": 5,
                     "restarts": 1},
          "rx_overruns": 4, "rx_dropped": 0, "socket_drops": 2}


def test_health_in_prometheus():
    """Each bus's health dict becomes its own families: load as a ratio, TEC/REC gauges, xstats as
    counters by event; values the kernel gave no number for (dbitrate on a classic bus) are left out."""
    from prometheus_client import CollectorRegistry, generate_latest

    from bridge.core.stats import Counters
    from bridge.daemon.metrics import snapshot_metrics

    snap = {"uptime_s": 1.0, "stats": {"can0": {**Counters().snapshot(), "bus_state": "ERROR-PASSIVE",
                                                "health": HEALTH},
                                       "vcan0": {**Counters().snapshot(), "health": None}}}

    class One:
        def collect(self):
            yield from snapshot_metrics(snap)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(One())
    text = generate_latest(reg).decode()
    for line in ('canbridge_bus_load_ratio{endpoint="can0"} 0.12',
                 'canbridge_bus_tx_error_counter{endpoint="can0"} 130.0',
                 'canbridge_bus_rx_error_counter{endpoint="can0"} 7.0',
                 'canbridge_bus_bitrate_bits_per_second{endpoint="can0"} 500000.0',
                 'canbridge_bus_controller_events_total{endpoint="can0",event="bus_off"} 1.0',
                 'canbridge_bus_controller_events_total{endpoint="can0",event="arbitration_lost"} 5.0',
                 'canbridge_bus_rx_overruns_total{endpoint="can0"} 4.0',
                 'canbridge_bus_socket_drops_total{endpoint="can0"} 2.0',
                 'canbridge_state_info{endpoint="can0",gauge="bus_state",value="ERROR-PASSIVE"} 1.0'):
        assert line in text
    assert "data_bitrate_bits_per_second{" not in text and 'endpoint="vcan0"} 0.12' not in text


def _answer() -> dict:
    from bridge.core.stats import Counters

    bus = Counters()
    bus.rx_frames = 123456
    bus.drop("kernel_rx_overflow", 2)
    bus.drop("tx_queue_full", 12)
    bus.errors["tx_enobufs"] = 5
    bus.gauges.update(link_state="up", bus_state="ERROR-PASSIVE", link_changes=0, bus_state_changes=2, reopens=0)
    peer = Counters()
    peer.latency.observe(3000)
    peer.drop("peer_not_connected_and_queue_full_for_a_long_time", 7)
    peer.gauges.update(peer_state="up", reconnects=0, peer="10.0.0.2:29600 native v1 channels=can0,can1,can2")
    return {"version": "0.9", "pid": 1, "uptime_s": 42.0, "config": "/etc/canbridge/bridge.toml",
            "stats": {"can0": {**bus.snapshot(), "tx_queued": 0, "health": HEALTH},
                      "tcp-listen://0.0.0.0:29600 (unidentified clients)": peer.snapshot(),
                      "reactor": {"callback_errors": 0, "passes": 100}}}


def test_stats_piped_is_a_block_per_endpoint_in_80_columns(tmp_path, capsys):
    """`canbridge stats` into a pipe: no table squeezed into 80 columns (it broke words over lines): a block
    per endpoint, no line over 80 columns, no word broken, a bus's health on its `bus` and `controller`
    lines; `--json` carries the health dict for scripts."""
    import json
    import threading

    from bridge.core.reactor import Reactor
    from bridge.daemon import control
    from bridge.tools.live.stats_client import main as stats_main

    answer = _answer()
    reactor = Reactor()
    path = str(tmp_path / "c.sock")
    server = control.ControlServer(reactor, path, {"stats": lambda req: answer})
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [reactor.run_once(0.05) for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        assert stats_main(["--control", path]) == 0
        text = capsys.readouterr().out
        assert stats_main(["--control", path, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["stats"]["can0"]["health"] == HEALTH
    finally:
        stop.set()
        thread.join()
        server.close()
        reactor.close()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    words = text.split()
    for word in ("tcp-listen://0.0.0.0:29600", "kernel_rx_overflow=2,",
                 "peer_not_connected_and_queue_full_for_a_long_time=7", "arbitration_lost=5,",
                 "channels=can0,can1,can2", "/etc/canbridge/bridge.toml"):
        assert word in words, (word, text)
    assert "  bus        ERROR-PASSIVE  tec 130 rec 7  load 12.0 % of 500 kbit/s" in lines
    clients = "tcp-listen://0.0.0.0:29600 (unidentified clients)"
    assert lines.index("can0") < lines.index(clients) < lines.index("reactor")
    assert "rx_overruns=4," in words and "socket_drops=2" in words


def test_top_header_has_the_bus_health_of_each_interface():
    """`canbridge top`'s header: per interface the bits of its frames stamped in the last whole second
    (canbusload's estimate); a local controller's state, TEC/REC, load at its bitrate, overruns and
    bus-off count beside them; a remote interface (no local link) bits per second only."""
    from bridge.hw.linkstate import LinkHealth
    from bridge.tools.live.top import TopStats, bus_header

    stats = TopStats()
    s = 1_000_000_000
    for i in range(100):  # 100 frames of 135 bits in second 41, 10 of 90 bits in second 42
        stats.add("can0", sc.pack_can(0x100, bytes(8)), 41 * s + i * 1000)
        stats.add("gw1/can0", sc.pack_can(0x1 | sc.CAN_EFF_FLAG, b"\x01"), 41 * s + i)
    for i in range(10):
        stats.add("can0", sc.pack_can(0x1 | sc.CAN_EFF_FLAG, b"\x01"), 42 * s + i)
    link = LinkHealth("can0", 3, True, "can", "ERROR-WARNING", 250_000, None, 97, 0, {**HEALTH["xstats"]},
                      {"rx_over_errors": 4, "rx_dropped": 0})
    head = bus_header(stats, 42 * s + 500_000_000, {"can0": link}).splitlines()
    assert head == ["bus can0: ERROR-WARNING  tec 97 rec 0  load 5.4 % of 250 kbit/s  rx_overruns 4  bus_off 1",
                    "bus gw1/can0: 9000 bit/s"]
    assert bus_header(stats, 43 * s, {"can0": link}).splitlines()[0].endswith("load 0.4 % of 250 kbit/s  "
                                                                             "rx_overruns 4  bus_off 1")


def test_stats_on_a_narrow_terminal_is_blocks_and_on_a_wide_one_a_table():
    """On a terminal the table is printed only when it fits without folding a cell; else the blocks."""
    from rich.console import Console
    from rich.table import Table

    from bridge.tools.live.stats_client import _fitting

    answer = _answer()
    narrow = Console(width=80, force_terminal=True, record=True)
    narrow.print(_fitting(narrow, answer))
    assert max(map(len, narrow.export_text().splitlines())) <= 80
    assert isinstance(_fitting(Console(width=400, force_terminal=True), answer), Table)
