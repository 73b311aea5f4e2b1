"""What the stream codecs share: the NEED_DATA / CLOSED sentinels of the h11-style
receive_data() / next_event() API, and the input buffer with its end-of-stream rule."""

from __future__ import annotations


class Sentinel:
    """A named singleton returned by next_event()."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = Sentinel("NEED_DATA")  # feed more bytes with receive_data()
CLOSED = Sentinel("CLOSED")  # the peer closed cleanly (EOF on a message boundary)


class StreamInput:
    """Input buffer of a stream decoder. Subclasses set `_protocol_error` (their ProtocolError
    subclass) and read `_buf`; receive_data(b"") marks EOF, and more data after it raises
    `_protocol_error("data_after_eof")`."""

    _protocol_error: type = Exception

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self.bytes_received = 0

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the socket; b"" means EOF."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise self._protocol_error("data_after_eof", f"{len(data)} bytes")
        self._buf += data
        self.bytes_received += len(data)
