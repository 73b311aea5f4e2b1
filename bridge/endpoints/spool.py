"""A durable spool: messages waiting for a broker, kept on disk so that a killed process or a power cut
does not lose them (issue 21; docs/mqtt.md "Spool"). An append-only segment log with a CRC per record, in
the manner of Vector's disk buffer: chosen over SQLite by measurement (benchmarks/spool.py, docs/mqtt.md):
at the Durango rate it writes a fraction of the bytes (no page images, no checkpoint copy) for the same
fsyncs.

Interface (the outbox's backend): append(channel, frames, payload, created) -> rid; flush(now) once per
loop pass (write(2) of what the pass appended: it survives SIGKILL of the process) which fsyncs when the
sync window is due (every `sync_interval` s or `sync_frames` frames, whichever first: it then survives a
power cut); acknowledge(rid) when the broker acknowledged it; replay(now) at start: what was not
acknowledged, oldest first, honouring max_age; state / set_state: a small JSON object stored with the next
flush (the PUB_COUNT session and counts).

Files in DIR: seg-NNNNNNNNNNNNNNNNNNNN.log (NNN counts up, so names sort in order; a new one at every start),
each at most `segment_bytes`. A segment is deleted when every DATA record in it and in all older segments
was acknowledged (whole files, oldest first: an ACK record only refers to DATA before it). Record layout
(little-endian):
    header  magic u32 = 0x52534243 ("CBSR") | body length u32 | crc32(body) u32
    body    kind u8 | ...
      DATA  1 | rid u64 | created f64 (Unix s) | channel u16 | frames u32 | payload (opaque bytes)
      ACK   2 | rid u64 * n
      STATE 3 | JSON object (UTF-8); the last one read wins; each new segment starts with a copy
A record whose magic, length or CRC is wrong (a write torn by a power cut, a flipped bit) is skipped and
counted (errors spool_corrupt); reading resumes at the next magic. Bounded by `max_bytes` of segment files:
beyond, the oldest segment goes and its unacknowledged frames are counted dropped spool_full.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from bridge.core.stats import Counters

MAGIC = 0x52534243
_HEADER = struct.Struct("<III")  # magic, body length, crc32(body)
_DATA = struct.Struct("<BQdHI")  # kind, rid, created, channel, frames
_MAGIC_BYTES = _HEADER.pack(MAGIC, 0, 0)[:4]
KIND_DATA, KIND_ACK, KIND_STATE = 1, 2, 3
MAX_BODY = 8 << 20  # a longer length field is corruption (a payload is <= 256 KB: bridge.codec.mqtt_payload)

DEFAULT_MAX_BYTES = 64 << 20  # ~1.9M 8-byte frames in 25-frame messages (~35 B each): 13 min of a Durango bus
MIN_MAX_BYTES = 64 << 10
DEFAULT_SEGMENT_BYTES = 1 << 20  # the unit of deletion and of spool_full eviction (at most 1/8 of max_bytes)
DEFAULT_SYNC_INTERVAL_S = 0.1  # the power-cut window: what was appended in the last 100 ms may be lost
DEFAULT_SYNC_FRAMES = 1000  # ... or the last 1,000 frames, whichever comes first


class SpoolError(Exception):
    """The spool directory cannot be used (not creatable, not writable): raised at open, never later."""


@dataclass(frozen=True)
class Record:
    """One message read back from the spool: rid (its id, ascending in append order), created (Unix s),
    channel, frames (how many CAN frames the payload holds), payload (bytes as appended), age (s at replay)."""

    rid: int
    created: float
    channel: int
    frames: int
    payload: bytes
    age: float


def parse_sync(value: str) -> tuple[float, int]:
    """spool_sync=SECONDS[,FRAMES] (e.g. "0.1,1000"): the fsync window. ValueError if malformed."""
    parts = str(value).split(",")
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"spool_sync: expected SECONDS[,FRAMES], got {value!r}")
    interval = float(parts[0])
    frames = int(parts[1]) if len(parts) == 2 else DEFAULT_SYNC_FRAMES
    if not 0 < interval <= 60 or frames < 1:
        raise ValueError(f"spool_sync: SECONDS must be 0..60 (not 0) and FRAMES >= 1, got {value!r}")
    return interval, frames


class _Segment:
    __slots__ = ("path", "number", "size", "unacked")

    def __init__(self, path: str, number: int, size: int = 0) -> None:
        self.path, self.number, self.size = path, number, size
        self.unacked: OrderedDict[int, tuple[int, int, float, int]] = OrderedDict()  # rid -> (offset, frames, ..)


class Spool:
    """The segment log in `directory` (created if missing). Opening reads what an earlier run left (the
    index only: rid, offset, frames, created per unacknowledged message; payloads are read at replay).
    SpoolError if the directory cannot be created or written."""

    def __init__(self, directory: str, counters: Counters | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 sync_interval: float = DEFAULT_SYNC_INTERVAL_S, sync_frames: int = DEFAULT_SYNC_FRAMES,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, clock=time.time, on_evict=None) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise SpoolError(f"spool_max must be at least {MIN_MAX_BYTES} bytes, got {max_bytes}")
        self.directory, self.counters = directory, counters if counters is not None else Counters()
        self.max_bytes, self.sync_interval, self.sync_frames = max_bytes, sync_interval, sync_frames
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 8))
        self._clock, self._on_evict = clock, on_evict  # on_evict([(rid, frames)]): dropped spool_full
        self._segments: list[_Segment] = []
        self._where: dict[int, _Segment] = {}  # unacknowledged rid -> its segment
        self.state: dict = {}
        self._buf = bytearray()  # appended in this pass, not yet written
        self._acks: list[int] = []
        self._fd = -1
        self._reader = None  # (path, fd) of the segment read() reads last
        self._unsynced_frames = 0
        self._synced_at = clock()
        self._dirty = False  # written since the last fsync
        self.next_rid = 0
        self.fsyncs = 0
        self.bytes_written = 0
        try:
            os.makedirs(directory, exist_ok=True)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(f"not writable: {directory}")
            self._load()
            self._roll()
        except OSError as exc:
            raise SpoolError(f"spool {directory}: {exc}") from None

    # ------------------------------------------------------------------ reading what is there
    def _load(self) -> None:
        names = sorted(n for n in os.listdir(self.directory) if n.startswith("seg-") and n.endswith(".log"))
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                number = int(name[4:-4])
            except ValueError:
                continue
            seg = _Segment(path, number, os.path.getsize(path))
            self._segments.append(seg)
            with open(path, "rb") as f:
                data = f.read()
            for offset, body in self._records(data):
                kind = body[0]
                if kind == KIND_DATA and len(body) >= _DATA.size:
                    _, rid, created, channel, frames = _DATA.unpack_from(body)
                    seg.unacked[rid] = (offset, frames, created, channel)
                    self._where[rid] = seg
                    self.next_rid = max(self.next_rid, rid + 1)
                elif kind == KIND_ACK and (len(body) - 1) % 8 == 0:
                    # an ACK acknowledges the DATA before it in the log: a rid used again later is a new message
                    for rid in struct.unpack_from(f"<{(len(body) - 1) // 8}Q", body, 1):
                        acked = self._where.pop(rid, None)
                        if acked is not None:
                            acked.unacked.pop(rid, None)
                elif kind == KIND_STATE:
                    try:
                        self.state = json.loads(body[1:])
                    except ValueError:
                        self.counters.errors["spool_corrupt"] += 1
                else:
                    self.counters.errors["spool_corrupt"] += 1
        self._trim()

    def _records(self, data: bytes):
        """(offset, body) of each intact record; torn or corrupt stretches are skipped and counted."""
        pos, end = 0, len(data)
        while pos + _HEADER.size <= end:
            magic, length, crc = _HEADER.unpack_from(data, pos)
            body_at = pos + _HEADER.size
            if magic == MAGIC and 0 < length <= MAX_BODY and body_at + length <= end \
                    and zlib.crc32(data[body_at:body_at + length]) == crc:
                yield pos, data[body_at:body_at + length]
                pos = body_at + length
                continue
            self.counters.errors["spool_corrupt"] += 1
            nxt = data.find(_MAGIC_BYTES, pos + 1)
            if nxt < 0:
                return
            pos = nxt
        if pos < end and data[pos:].strip(b"\0"):
            self.counters.errors["spool_corrupt"] += 1  # a torn header at the end

    def replay(self, max_age: float = 0.0, now: float | None = None):
        """Yield each unacknowledged message as a Record, oldest first (one segment's bytes in memory at a
        time). Older than max_age s (0: no limit): counted dropped stale and acknowledged, not yielded; age
        is never negative (a clock set back counts as fresh). A record unreadable now is counted
        spool_corrupt and acknowledged."""
        now = self._clock() if now is None else now
        for seg in list(self._segments):
            if not seg.unacked:
                continue
            try:
                with open(seg.path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            for rid, (offset, frames, created, channel) in list(seg.unacked.items()):
                if rid not in self._where:
                    continue  # acknowledged meanwhile
                age = max(0.0, now - created)
                if max_age and age > max_age:
                    self.counters.drop("stale", frames)
                    self.acknowledge(rid)
                    continue
                body = self._body_at(data, offset)
                if body is None:
                    self.counters.errors["spool_corrupt"] += 1
                    self.counters.drop("spool_corrupt", frames)
                    self.acknowledge(rid)
                    continue
                yield Record(rid, created, channel, frames, bytes(body[_DATA.size:]), age)

    def read(self, rid: int, now: float | None = None) -> Record | None:
        """The unacknowledged message rid, read back (from this pass's buffer or its segment file), or
        None if it is not stored or unreadable (counted spool_corrupt)."""
        seg = self._where.get(rid)
        if seg is None:
            return None
        offset, frames, created, channel = seg.unacked[rid]
        if seg is self._segments[-1] and offset >= seg.size:
            body = self._body_at(self._buf, offset - seg.size)
        else:
            body = self._body_at(self._pread(seg.path, offset), 0)
        if body is None:
            self.counters.errors["spool_corrupt"] += 1
            return None
        age = max(0.0, (self._clock() if now is None else now) - created)
        return Record(rid, created, channel, frames, bytes(body[_DATA.size:]), age)

    def _pread(self, path: str, offset: int) -> bytes:
        if self._reader is None or self._reader[0] != path:
            self._close_reader()
            try:
                self._reader = (path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return b""
        fd = self._reader[1]
        head = os.pread(fd, _HEADER.size, offset)
        if len(head) < _HEADER.size:
            return b""
        return head + os.pread(fd, min(_HEADER.unpack(head)[1], MAX_BODY), offset + _HEADER.size)

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader[1])
            self._reader = None

    def pending(self, after: int = -1):
        """rids of the unacknowledged messages above `after`, oldest first (lazily; do not change the spool
        while iterating)."""
        for seg in self._segments:
            if seg.unacked and next(reversed(seg.unacked)) > after:
                for rid in seg.unacked:
                    if rid > after:
                        yield rid

    @staticmethod
    def _body_at(data: bytes, offset: int):
        if offset + _HEADER.size > len(data):
            return None
        magic, length, crc = _HEADER.unpack_from(data, offset)
        body = data[offset + _HEADER.size:offset + _HEADER.size + length]
        return body if magic == MAGIC and len(body) == length and zlib.crc32(body) == crc else None

    # ------------------------------------------------------------------ writing
    def append(self, channel: int, frames: int, payload: bytes, created: float | None = None,
               rid: int | None = None) -> int:
        """Queue one message (written at the next flush) -> its rid: the given one (above every rid stored
        before, ValueError otherwise) or the next. created: Unix s (default: now)."""
        if rid is None:
            rid = self.next_rid
        elif rid in self._where:
            raise ValueError(f"spool: rid {rid} is stored already")
        self.next_rid = max(self.next_rid, rid + 1)
        created = self._clock() if created is None else created
        body = _DATA.pack(KIND_DATA, rid, created, channel, frames) + payload
        seg = self._segments[-1]
        seg.unacked[rid] = (seg.size + len(self._buf), frames, created, channel)
        self._where[rid] = seg
        self._record(body)
        self._unsynced_frames += frames
        return rid

    def _record(self, body: bytes) -> None:
        self._buf += _HEADER.pack(MAGIC, len(body), zlib.crc32(body))
        self._buf += body

    def acknowledge(self, rid: int) -> None:
        """The broker has the message: its record may go (recorded at the next flush, never fsynced for
        itself: a lost ACK only means the message is sent again after a power cut, a duplicate)."""
        seg = self._where.pop(rid, None)
        if seg is not None:
            del seg.unacked[rid]
            self._acks.append(rid)

    def set_state(self, **values) -> None:
        """Update the stored JSON object: recorded here, in order with append() (written by the next flush,
        fsynced with the next window). A torn write keeps a prefix of what one flush wrote, so a STATE
        recorded before the DATA records of its batch is never older than the DATA that survive."""
        self.state.update(values)
        self._record(bytes([KIND_STATE]) + json.dumps(self.state, separators=(",", ":")).encode())

    def flush(self, now: float | None = None, force_sync: bool = False) -> float | None:
        """Write what this pass appended (one write(2)); fsync when the window is due (or force_sync).
        -> seconds until the next fsync is due (call flush again by then), or None when all is synced."""
        now = self._clock() if now is None else now
        if self._acks:
            self._record(struct.pack(f"<B{len(self._acks)}Q", KIND_ACK, *self._acks))
            self._acks.clear()
        if self._buf:
            self._write(self._buf)
            self._buf = bytearray()
        if self._dirty and (force_sync or self._unsynced_frames >= self.sync_frames
                            or now - self._synced_at >= self.sync_interval):
            os.fsync(self._fd)
            self.fsyncs += 1
            self._dirty = False
            self._unsynced_frames = 0
        if not self._dirty:
            self._synced_at = now
        if self._segments[-1].size >= self.segment_bytes:
            self._roll()
        self._trim()
        return max(0.0, self._synced_at + self.sync_interval - now) if self._dirty else None

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._segments[-1].size += len(data)
        self.bytes_written += len(data)
        self._dirty = True

    def _roll(self) -> None:
        """Start a new segment (its name: the next rid) with a copy of the state; the old one is fsynced."""
        if self._fd >= 0:
            if self._dirty:
                os.fsync(self._fd)
                self.fsyncs += 1
                self._dirty = False
            os.close(self._fd)
        number = self._segments[-1].number + 1 if self._segments else 1
        path = os.path.join(self.directory, f"seg-{number:020d}.log")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._segments.append(_Segment(path, number))
        dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)  # the new file's name survives a power cut
        finally:
            os.close(dirfd)
        if self.state:  # at once and fsynced: the older segments holding the last STATE may go next
            self.set_state()
            self.flush(force_sync=True)

    def _trim(self) -> None:
        """Delete fully acknowledged segments from the oldest; beyond max_bytes, evict the oldest."""
        while len(self._segments) > 1 and not self._segments[0].unacked:
            self._unlink(self._segments.pop(0))
        while len(self._segments) > 1 and self.size > self.max_bytes:
            seg = self._segments.pop(0)
            self.counters.drop("spool_full", sum(v[1] for v in seg.unacked.values()))
            for rid in seg.unacked:
                self._where.pop(rid, None)
            self._unlink(seg)
            if self._on_evict is not None and seg.unacked:
                self._on_evict([(rid, v[1]) for rid, v in seg.unacked.items()])

    def _unlink(self, seg: _Segment) -> None:
        if self._reader is not None and self._reader[0] == seg.path:
            self._close_reader()
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ the rest
    @property
    def size(self) -> int:
        """Bytes in segment files (what max_bytes bounds)."""
        return sum(s.size for s in self._segments)

    def frames_of(self, rid: int) -> int:
        """Frames in the unacknowledged message rid (0 if it is not stored)."""
        seg = self._where.get(rid)
        return seg.unacked[rid][1] if seg is not None else 0

    def __contains__(self, rid: int) -> bool:
        return rid in self._where

    @property
    def frames(self) -> int:
        """Frames in unacknowledged messages."""
        return sum(v[1] for s in self._segments for v in s.unacked.values())

    def gauges(self) -> dict:
        return {"spool_bytes": self.size, "spool_messages": len(self._where), "spool_fsyncs": self.fsyncs}

    def close(self) -> None:
        """Write and fsync what is pending; the files stay for the next start."""
        if self._fd < 0:
            return
        self.flush(force_sync=True)
        self._close_reader()
        os.close(self._fd)
        self._fd = -1
