"""What the stream codecs share: the NEED_DATA / CLOSED sentinels of the h11-style
receive_data() / next_event() API, the input buffer with its end-of-stream rule, and the packing
of records into datagrams."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate


class Sentinel:
    """A named singleton returned by next_event()."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = Sentinel("NEED_DATA")  # feed more bytes with receive_data()
CLOSED = Sentinel("CLOSED")  # the peer closed cleanly (EOF on a message boundary)


def events(decoder):
    """Yield decoder.next_event() results until NEED_DATA or CLOSED (h11's loop, written once).
    The decoder's own ProtocolError propagates to the caller."""
    while (event := decoder.next_event()) is not NEED_DATA and event is not CLOSED:
        yield event


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


def pack_datagrams(records: list, room: int, header: Callable[[int], bytes]) -> list[bytes]:
    """records[1:] (encoded records, each <= room bytes) -> datagrams of header(count) + at most
    `room` bytes of records, in order, as few as fit. records[0] is a free slot (b"") the header goes
    into. Cut points come from bisecting the running sizes (C loops, no per-record Python work)."""
    ends = list(accumulate(map(len, records)))  # ends[i]: bytes in records[:i+1]
    datagrams = []
    start = 1
    while start < len(records):
        stop = bisect_right(ends, ends[start - 1] + room, start)
        records[start - 1] = header(stop - start)
        datagrams.append(b"".join(records[start - 1 : stop]))
        start = stop
    return datagrams
