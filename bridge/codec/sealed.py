"""Encrypted native UDP datagrams ("sealed"), sans-IO: ChaCha20-Poly1305 with a pre-shared 32-byte key.

Format (docs/protocol.md, "Encrypted datagrams"): the native 14-byte datagram header in clear with flag bit
FLAG_SEALED set, a u32 `epoch`, then the records encrypted, then the 16-byte Poly1305 tag:

    magic "CNBR" | version 1 | flags 0x01 | session u32 | seq u32 | epoch u32 | ciphertext | tag (16)

Associated data = the first 18 bytes (header + epoch); nonce (12 bytes) = session | epoch | seq. The
Sealer owns session/epoch/seq, so a nonce is never used twice by one sender: seq counts every datagram
and, before it would wrap, the sender moves to a new (session + 1, epoch + 1). Two senders sharing a key
differ by their random session and start epoch.

The Opener authenticates first (a datagram that fails is never parsed), then checks a sliding replay
window (REPLAY_WINDOW sequence numbers per session; older epochs than the current one are refused), and
returns the plain native datagram for bridge.codec.native.decode_datagram.
"""

from __future__ import annotations

import struct

from bridge.codec import native
from bridge.errors import ProtocolError

FLAG_SEALED = 0x01  # bit 0 of the datagram header's flags byte
KEY_LEN = 32
TAG_LEN = 16
_HDR = struct.Struct(">4sBBIII")  # magic, version, flags, session, seq, epoch
AAD_LEN = _HDR.size  # 18: header + epoch, authenticated in clear
OVERHEAD = AAD_LEN - native.UDP_HEADER_LEN + TAG_LEN  # 20 bytes more than a plain datagram
REPLAY_WINDOW = 1024  # sequence numbers remembered behind the highest one seen (as native.SequenceTracker)
SESSIONS_PER_EPOCH = 16  # sessions remembered for the current epoch (senders restarting within one second)
_U32 = 0xFFFFFFFF


class SealedError(ProtocolError):
    """A datagram that cannot be opened: reasons "not_sealed" (plain datagram where a key is configured),
    "sealed_no_key" (sealed datagram where none is), "auth_failed" (wrong key, tampered, truncated),
    "reflected" (one of our own datagrams sent back to us: both ends share the key)."""


def is_sealed(data) -> bool:
    """True if `data` looks like a native datagram with FLAG_SEALED set (not authenticated)."""
    return len(data) > 5 and data[:4] == native.MAGIC and bool(data[5] & FLAG_SEALED)


def _cipher(key: bytes):
    """A ChaCha20Poly1305 (cryptography) for `key`; imported here, so a bridge without psk never loads it."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes, got {len(key)}")
    return ChaCha20Poly1305(key)


class Sealer:
    """Seals plain native datagrams (from native.DatagramEncoder, at most MTU - OVERHEAD bytes).

    key: 32 bytes; session: random u32 chosen at start; epoch: u32 start time in seconds since the Unix
    epoch (the caller reads the clock), strictly greater than any earlier epoch of this sender."""

    def __init__(self, key: bytes, session: int, epoch: int) -> None:
        self._aead = _cipher(key)
        self.session = session & _U32
        self.epoch = epoch & _U32
        self.seq = 0

    def seal(self, datagram: bytes) -> bytes:
        """Plain native datagram -> sealed datagram (OVERHEAD bytes longer). Its header's session and
        seq are replaced by the sealer's (they are the nonce). ValueError if it is not a native datagram."""
        if len(datagram) < native.UDP_HEADER_LEN or datagram[:4] != native.MAGIC:
            raise ValueError("not a native datagram")
        if self.seq > _U32:  # next seq would repeat a nonce: continue in a new session
            self.session = (self.session + 1) & _U32
            self.epoch = (self.epoch + 1) & _U32
            self.seq = 0
        aad = _HDR.pack(native.MAGIC, datagram[4], datagram[5] | FLAG_SEALED, self.session, self.seq, self.epoch)
        self.seq += 1
        return aad + self._aead.encrypt(_nonce(aad), datagram[native.UDP_HEADER_LEN:], aad)


def _nonce(aad: bytes) -> bytes:
    return aad[6:10] + aad[14:18] + aad[10:14]  # session | epoch | seq


class ReplayWindow:
    """Accepts each (epoch, session, seq) once. Per the current session: the highest seq seen and a
    bitmap of the REPLAY_WINDOW below it; seq more than the window behind is refused. A new session is
    taken when its epoch is newer, or equal with a session not seen in that epoch; an older epoch is
    refused. Only authenticated datagrams may be shown to it."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.session: int | None = None
        self._sessions: list[int] = []  # sessions seen in the current epoch
        self._top = 0
        self._seen = 0  # bit i: seq top - i received

    def accept(self, epoch: int, session: int, seq: int) -> bool:
        if session != self.session or epoch != self.epoch:
            if self.epoch is not None and (epoch < self.epoch or (epoch == self.epoch and session in self._sessions)):
                return False
            if epoch != self.epoch:
                self._sessions = []
            self._sessions = [*self._sessions[-(SESSIONS_PER_EPOCH - 1):], session]
            self.epoch, self.session, self._top, self._seen = epoch, session, seq, 1
            return True
        if seq > self._top:
            d = seq - self._top
            self._seen = ((self._seen << d) | 1) & ((1 << REPLAY_WINDOW) - 1) if d < REPLAY_WINDOW else 1
            self._top = seq
            return True
        back = self._top - seq
        if back >= REPLAY_WINDOW or self._seen >> back & 1:
            return False
        self._seen |= 1 << back
        return True


class Opener:
    """Receiver side for one peer. open(data) -> plain native datagram (header with FLAG_SEALED cleared,
    then the records) or None if it is a replay (already received, too old, or from an older epoch).
    Raises SealedError "not_sealed" / "auth_failed" / "reflected"; nothing of a failing datagram is parsed."""

    def __init__(self, key: bytes, own: Sealer | None = None) -> None:
        self._aead = _cipher(key)
        self.window = ReplayWindow()
        self.own = own  # our sender: its datagrams reflected back to us are refused

    def open(self, data) -> bytes | None:
        data = bytes(data)
        if not is_sealed(data):
            raise SealedError("not_sealed", "plain datagram, but this peer has a key (psk)")
        if len(data) < AAD_LEN + TAG_LEN:
            raise SealedError("auth_failed", f"sealed datagram of {len(data)} bytes is too short")
        aad = data[:AAD_LEN]
        from cryptography.exceptions import InvalidTag  # loaded already by _cipher: a dict lookup

        try:
            plain = self._aead.decrypt(_nonce(aad), data[AAD_LEN:], aad)
        except InvalidTag:
            raise SealedError("auth_failed", "wrong key or modified in transit") from None
        _magic, _version, _flags, session, seq, epoch = _HDR.unpack(aad)
        if self.own is not None and (session, epoch) == (self.own.session, self.own.epoch):
            raise SealedError("reflected", "our own datagram came back")
        if not self.window.accept(epoch, session, seq):
            return None
        return aad[:5] + bytes((aad[5] & ~FLAG_SEALED,)) + aad[6:14] + plain
