"""CAN error frames (linux/can/error.h): what one says about the controller's bus state. Sans-IO.

An error frame is a classic `struct can_frame` whose can_id has CAN_ERR_FLAG set; the low bits of
can_id are the error classes, data[1] details CAN_ERR_CRTL (controller status), data[6]/data[7] are the
TX/RX error counters when CAN_ERR_CNT is set. Drivers send CAN_ERR_CRTL on each state change
(can_change_state()), CAN_ERR_BUSOFF when the controller leaves the bus (can_bus_off()) and
CAN_ERR_RESTARTED when it is restarted (can_restart(): `restart-ms`, or `ip link set can0 type can
restart`). State names are those of `ip -details link show` (hw/links.py STATES).
"""

from __future__ import annotations

from bridge.codec import socketcan as sc

# error classes in can_id
CAN_ERR_TX_TIMEOUT = 0x001
CAN_ERR_LOSTARB = 0x002
CAN_ERR_CRTL = 0x004
CAN_ERR_PROT = 0x008
CAN_ERR_TRX = 0x010
CAN_ERR_ACK = 0x020
CAN_ERR_BUSOFF = 0x040
CAN_ERR_BUSERROR = 0x080
CAN_ERR_RESTARTED = 0x100
CAN_ERR_CNT = 0x200
# data[1] when CAN_ERR_CRTL is set
CAN_ERR_CRTL_RX_OVERFLOW = 0x01
CAN_ERR_CRTL_TX_OVERFLOW = 0x02
CAN_ERR_CRTL_RX_WARNING = 0x04
CAN_ERR_CRTL_TX_WARNING = 0x08
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_ACTIVE = 0x40  # back to error active (kernel >= 5.1)

# the classes that change the bus state: what a state tracker subscribes to (CAN_RAW_ERR_FILTER)
STATE_CLASSES = CAN_ERR_CRTL | CAN_ERR_BUSOFF | CAN_ERR_RESTARTED

ERROR_ACTIVE, ERROR_WARNING, ERROR_PASSIVE, BUS_OFF = "ERROR-ACTIVE", "ERROR-WARNING", "ERROR-PASSIVE", "BUS-OFF"


def bus_state(raw: bytes) -> str | None:
    """The bus state an error frame reports (ERROR_ACTIVE, ERROR_WARNING, ERROR_PASSIVE, BUS_OFF), or
    None when it says nothing about the state (a data frame, a bus error, lost arbitration, an overflow).
    raw: a 16-byte can_frame (a canfd_frame's first 16 bytes decode the same way)."""
    can_id = sc.can_id_of(raw)
    if not can_id & sc.CAN_ERR_FLAG:
        return None
    if can_id & CAN_ERR_BUSOFF:
        return BUS_OFF
    if can_id & CAN_ERR_RESTARTED:
        return ERROR_ACTIVE
    if can_id & CAN_ERR_CRTL:
        status = raw[9] if len(raw) > 9 else 0  # data starts at offset 8
        if status & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
            return ERROR_PASSIVE
        if status & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
            return ERROR_WARNING
        if status & CAN_ERR_CRTL_ACTIVE:
            return ERROR_ACTIVE
    return None


def error_counters(raw: bytes) -> tuple[int, int] | None:
    """(txerr, rxerr), the controller's TEC and REC, from an error frame with CAN_ERR_CNT (data[6],
    data[7]); (0, 0) from CAN_ERR_RESTARTED without them (a restart resets both); None otherwise."""
    can_id = sc.can_id_of(raw)
    if not can_id & sc.CAN_ERR_FLAG:
        return None
    if can_id & CAN_ERR_CNT and len(raw) >= 16:
        return raw[14], raw[15]
    return (0, 0) if can_id & CAN_ERR_RESTARTED else None


def error_frame(classes: int, crtl: int = 0, txerr: int | None = None, rxerr: int = 0) -> bytes:
    """A can_frame with CAN_ERR_FLAG | classes and data[1] = crtl (the controller status byte), as a
    driver sends it; with txerr, also CAN_ERR_CNT and the counters in data[6], data[7] (0..255). Used to
    inject state changes on vcan (vcan delivers it to every reader)."""
    data = bytearray(8)
    data[1] = crtl
    if txerr is not None:
        classes |= CAN_ERR_CNT
        data[6], data[7] = txerr, rxerr
    return sc.pack_can(sc.CAN_ERR_FLAG | classes, bytes(data))
