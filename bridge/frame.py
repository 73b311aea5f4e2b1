"""CanFrame: the friendly frame object used at the API edges (python-can, dump, tests).

The forwarding path never builds these; it moves raw `can_frame`/`canfd_frame` bytes
(see bridge.codec.socketcan). Convert with `CanFrame.from_raw` / `CanFrame.to_raw`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.codec import socketcan as sc


@dataclass(frozen=True, slots=True)
class CanFrame:
    """One CAN CC or CAN FD frame.

    can_id: arbitration id without flag bits (11-bit if not is_extended, else 29-bit; for error
        frames the error class bits).
    data: payload (0..8 bytes classic, a valid FD length 0..64 for FD; empty for RTR).
    length: `len` of the struct: payload length, or the requested length of an RTR frame.
    timestamp_ns: int nanoseconds since the epoch, kernel RX time (SO_TIMESTAMPNS); 0 if unknown.
    """

    can_id: int
    data: bytes = b""
    is_extended: bool = False
    is_remote: bool = False
    is_error: bool = False
    is_fd: bool = False
    brs: bool = False
    esi: bool = False
    len8_dlc: int = 0
    length: int | None = None
    timestamp_ns: int = 0

    @property
    def raw_can_id(self) -> int:
        """can_id with EFF/RTR/ERR flag bits as in canid_t."""
        return (
            self.can_id
            | (sc.CAN_EFF_FLAG if self.is_extended else 0)
            | (sc.CAN_RTR_FLAG if self.is_remote else 0)
            | (sc.CAN_ERR_FLAG if self.is_error else 0)
        )

    def to_raw(self) -> bytes:
        if self.is_fd:
            flags = (sc.CANFD_BRS if self.brs else 0) | (sc.CANFD_ESI if self.esi else 0)
            return sc.pack_canfd(self.raw_can_id, self.data, flags)
        return sc.pack_can(self.raw_can_id, self.data, self.len8_dlc, self.length)

    @classmethod
    def from_raw(cls, raw: bytes, timestamp_ns: int = 0) -> CanFrame:
        can_id, n, flags, len8_dlc, data = sc.unpack(raw)
        eff = bool(can_id & sc.CAN_EFF_FLAG)
        err = bool(can_id & sc.CAN_ERR_FLAG)
        mask = sc.CAN_EFF_MASK if (eff or err) else sc.CAN_SFF_MASK
        return cls(
            can_id=can_id & mask,
            data=data,
            is_extended=eff,
            is_remote=bool(can_id & sc.CAN_RTR_FLAG),
            is_error=err,
            is_fd=len(raw) == sc.CANFD_MTU,
            brs=bool(flags & sc.CANFD_BRS),
            esi=bool(flags & sc.CANFD_ESI),
            len8_dlc=len8_dlc,
            length=n if (can_id & sc.CAN_RTR_FLAG) else None,
            timestamp_ns=timestamp_ns,
        )

    def to_message(self, channel: str | None = None):
        """-> can.Message (python-can), timestamp in float seconds."""
        import can

        return can.Message(
            timestamp=self.timestamp_ns / 1e9,
            arbitration_id=self.can_id,
            is_extended_id=self.is_extended,
            is_remote_frame=self.is_remote,
            is_error_frame=self.is_error,
            is_fd=self.is_fd,
            bitrate_switch=self.brs,
            error_state_indicator=self.esi,
            dlc=self.length if self.is_remote else len(self.data),
            data=self.data,
            channel=channel,
        )

    @classmethod
    def from_message(cls, msg) -> CanFrame:
        """can.Message -> CanFrame (python-can's Message is the source of truth for its fields)."""
        return cls(
            can_id=msg.arbitration_id,
            data=b"" if msg.is_remote_frame else bytes(msg.data),
            is_extended=msg.is_extended_id,
            is_remote=msg.is_remote_frame,
            is_error=msg.is_error_frame,
            is_fd=msg.is_fd,
            brs=msg.bitrate_switch,
            esi=msg.error_state_indicator,
            length=msg.dlc if msg.is_remote_frame else None,
            timestamp_ns=int(round(msg.timestamp * 1e9)),
        )

    def __str__(self) -> str:  # cansend notation
        cid = sc.format_can_id(self.raw_can_id)
        if self.is_fd:
            flags = (sc.CANFD_BRS if self.brs else 0) | (sc.CANFD_ESI if self.esi else 0)
            return f"{cid}##{flags:X}{self.data.hex().upper()}"
        if self.is_remote:
            return f"{cid}#R{self.length or ''}"
        return f"{cid}#{self.data.hex().upper()}"
