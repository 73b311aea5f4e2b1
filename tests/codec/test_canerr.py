"""bridge.codec.canerr: bus states from error frames as Linux drivers send them (linux/can/error.h)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import canerr
from bridge.codec import socketcan as sc


@pytest.mark.parametrize(
    ("classes", "crtl", "state"),
    [
        (canerr.CAN_ERR_BUSOFF, 0, "BUS-OFF"),
        (canerr.CAN_ERR_RESTARTED, 0, "ERROR-ACTIVE"),
        (canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_WARNING, "ERROR-WARNING"),
        (canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_RX_WARNING, "ERROR-WARNING"),
        (canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_RX_PASSIVE, "ERROR-PASSIVE"),
        (canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE | canerr.CAN_ERR_CRTL_RX_WARNING, "ERROR-PASSIVE"),
        (canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_ACTIVE, "ERROR-ACTIVE"),
        # can_bus_off() sends BUSOFF with CRTL passive details: BUS-OFF wins
        (canerr.CAN_ERR_BUSOFF | canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE, "BUS-OFF"),
        (canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_RX_OVERFLOW, None),  # an overflow is not a state
        (canerr.CAN_ERR_PROT | canerr.CAN_ERR_BUSERROR, 0, None),
        (canerr.CAN_ERR_LOSTARB, 0, None),
    ],
)
def test_states(classes, crtl, state):
    assert canerr.bus_state(canerr.error_frame(classes, crtl)) == state


def test_data_frames_say_nothing():
    assert canerr.bus_state(sc.pack_can(canerr.CAN_ERR_BUSOFF, b"\x00" * 8)) is None  # id 0x040 is a data frame
    assert canerr.bus_state(sc.pack_canfd(0x123, bytes(12))) is None


def test_error_frame_layout():
    raw = canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE)
    can_id, n, _flags, _len8, data = sc.unpack(raw)
    assert can_id == sc.CAN_ERR_FLAG | canerr.CAN_ERR_CRTL and n == 8 and data[1] == 0x20


@settings(deadline=None)  # a loaded host must not fail a codec test
@given(st.integers(0, sc.CAN_ERR_MASK), st.binary(min_size=8, max_size=8))
def test_any_error_frame_decodes(classes, data):
    state = canerr.bus_state(sc.pack_can(sc.CAN_ERR_FLAG | classes, data))
    assert state in (None, "ERROR-ACTIVE", "ERROR-WARNING", "ERROR-PASSIVE", "BUS-OFF")
    if classes & canerr.CAN_ERR_BUSOFF:
        assert state == "BUS-OFF"
