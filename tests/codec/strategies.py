"""Hypothesis strategies shared by the codec tests: arbitrary valid raw SocketCAN frames (linux/can.h
struct can_frame, 16 bytes, and struct canfd_frame, 72 bytes), as the kernel hands them to us."""

from hypothesis import strategies as st

from bridge.codec import socketcan as sc

u64 = st.integers(0, 2**64 - 1)


@st.composite
def classic_frames(draw):
    """SFF or EFF; data, RTR (len 0..8, no data) or error frames; len8_dlc 9..15 only with len 8."""
    eff = draw(st.booleans())
    can_id = draw(st.integers(0, sc.CAN_EFF_MASK if eff else sc.CAN_SFF_MASK))
    can_id |= sc.CAN_EFF_FLAG if eff else 0
    kind = draw(st.sampled_from(["data", "rtr", "err"]))
    n = draw(st.integers(0, 8))
    l8 = draw(st.sampled_from([0, *range(9, 16)])) if n == 8 else 0
    if kind == "rtr":
        return sc.pack_can(can_id | sc.CAN_RTR_FLAG, b"", l8, length=n)
    data = draw(st.binary(min_size=n, max_size=n))
    return sc.pack_can(can_id | (sc.CAN_ERR_FLAG if kind == "err" else 0), data, l8)


@st.composite
def fd_frames(draw):
    """SFF or EFF, every valid FD length 0..64, any BRS/ESI combination."""
    eff = draw(st.booleans())
    can_id = draw(st.integers(0, sc.CAN_EFF_MASK if eff else sc.CAN_SFF_MASK)) | (sc.CAN_EFF_FLAG if eff else 0)
    n = draw(st.sampled_from(sc.FD_LENGTHS))
    flags = draw(st.sampled_from([0, sc.CANFD_BRS, sc.CANFD_ESI, sc.CANFD_BRS | sc.CANFD_ESI]))
    return sc.pack_canfd(can_id, draw(st.binary(min_size=n, max_size=n)), flags)


any_frames = st.one_of(classic_frames(), fd_frames())
timed_frames = st.tuples(any_frames, u64)  # (raw, ts_ns): a batch item
