"""The MQTT outbox's durable backend (bridge.endpoints.mqtt_store's contract) on the spool
(bridge.endpoints.spool): `spool=DIR`. Messages live in the spool's segment files, not in memory: the
index holds seq -> (offset, frames, created, channel); pending() and oldest() read a message back when
the outbox asks for it.

One stored message is one spool DATA record whose payload is
    topic length u16 | has_count u8 | session u32 | frames_before u64 | topic (UTF-8) | FRAME records
(little-endian). append(messages, state) records the STATE first and then the DATA records, in one
write(2) at the end of the call, so a torn write can leave a state that counts messages which did not
survive (a gap the consumer counts as lost in transit), never the reverse (a state older than surviving
messages would number new frames as duplicates of them). The fsync window (spool_sync=) is kept by a
timer: `call_later(delay, fn)` (the reactor's), armed when a write is left unsynced.
"""

from __future__ import annotations

import struct

from bridge.core.stats import Counters
from bridge.endpoints.mqtt_store import MESSAGE_OVERHEAD_BYTES, Message
from bridge.endpoints.spool import (DEFAULT_MAX_BYTES, DEFAULT_SYNC_FRAMES, DEFAULT_SYNC_INTERVAL_S, Record,
                                    Spool)

_HEAD = struct.Struct("<HBIQ")  # topic length, has_count, session, frames_before


def pack(m: Message) -> bytes:
    topic = m.topic.encode()
    session, before = m.count if m.count is not None else (0, 0)
    return _HEAD.pack(len(topic), m.count is not None, session, before) + topic + m.records


def unpack(r: Record) -> Message | None:
    """A spool Record -> the Message it stores, or None if its payload is malformed."""
    p = r.payload
    if len(p) < _HEAD.size:
        return None
    tlen, has_count, session, before = _HEAD.unpack_from(p)
    end = _HEAD.size + tlen
    if len(p) < end:
        return None
    try:
        topic = p[_HEAD.size:end].decode()
    except UnicodeDecodeError:
        return None
    return Message(r.rid, r.channel, topic, r.frames, r.created, p[end:], (session, before) if has_count else None)


class SpoolBackend:
    """An OutboxBackend on disk in `directory`. max_bytes: the disk bound (spool_max=; beyond it the oldest
    segment goes, counted spool_full); sync_interval / sync_frames: spool_sync=; call_later: arms the
    window's fsync when no later append comes. SpoolError (bridge.endpoints.spool) if DIR is unusable."""

    durable = True  # the outbox keeps what is stored at close (nothing counted closed): the next run sends it
    full_reason = "spool_full"  # what the outbox counts when spool_max pushes the oldest out

    def __init__(self, directory: str, counters: Counters | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 sync_interval: float = DEFAULT_SYNC_INTERVAL_S, sync_frames: int = DEFAULT_SYNC_FRAMES,
                 call_later=None) -> None:
        # the outbox bounds its messages at max_bytes (dropping the oldest, spool_full); the files may hold a
        # quarter more (acknowledged records wait for their whole segment) before the spool evicts by itself
        self.spool = Spool(directory, counters, max_bytes=max_bytes + max_bytes // 4, sync_interval=sync_interval,
                           sync_frames=sync_frames, on_evict=self._evicted)
        self._call_later = call_later
        self._timer = None
        self._sizes: dict[int, int] = {}  # seq -> Message.size of what is stored (for spool_full evictions)
        self.messages = self.frames = self.bytes = 0
        for rid in list(self.spool.pending()):  # the index of what an earlier run left: sizes only
            m = self._read(rid)
            if m is not None:
                self._count(m, +1)
        self._sync()

    def _read(self, rid: int) -> Message | None:
        r = self.spool.read(rid)
        m = unpack(r) if r is not None else None
        if m is None and rid in self.spool:  # unreadable now: it goes (counted by the spool or here)
            if r is not None:
                self.spool.counters.errors["spool_corrupt"] += 1
            self.spool.counters.drop("spool_corrupt", self.spool.frames_of(rid))
            self.spool.acknowledge(rid)
        return m

    def _count(self, m: Message, sign: int) -> None:
        self.messages += sign
        self.frames += sign * m.frames
        self.bytes += sign * m.size
        if sign > 0:
            self._sizes[m.seq] = m.size
        else:
            self._sizes.pop(m.seq, None)

    def _evicted(self, gone: list) -> None:
        # the spool's disk bound took these (counted spool_full there): they are no longer stored
        for rid, frames in gone:
            self.messages -= 1
            self.frames -= frames
            self.bytes -= self._sizes.pop(rid, MESSAGE_OVERHEAD_BYTES)

    def append(self, messages: list[Message], state: dict) -> None:
        self.spool.set_state(outbox=state)  # before the DATA: see the module docstring
        for m in messages:
            self.spool.append(m.channel, m.frames, pack(m), created=m.created, rid=m.seq)
            self._count(m, +1)
        self._sync()

    def acknowledge(self, seq: int) -> Message | None:
        if seq not in self.spool:
            return None
        m = self._read(seq)
        if m is not None:
            self.spool.acknowledge(seq)
            self._count(m, -1)
        return m

    def pending(self, after: int = -1):
        for rid in self.spool.pending(after):
            m = self._read(rid)
            if m is not None:
                yield m

    def oldest(self) -> Message | None:
        for rid in self.spool.pending():
            m = self._read(rid)
            if m is not None:
                return m
        return None

    def drop_oldest(self) -> Message | None:
        m = self.oldest()
        if m is not None:
            self.spool.acknowledge(m.seq)
            self._count(m, -1)
        return m

    def load_state(self) -> dict | None:
        return self.spool.state.get("outbox")

    def save_state(self, state: dict) -> None:
        self.spool.set_state(outbox=state)
        self._sync()

    def _sync(self) -> None:
        """Write what was recorded (it survives SIGKILL now); fsync if the window is due, else arm the timer."""
        due = self.spool.flush()
        if due is not None and self._timer is None and self._call_later is not None:
            self._timer = self._call_later(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._sync()

    def gauges(self) -> dict:
        return self.spool.gauges()

    def close(self) -> None:
        """Write and fsync what is pending; the messages stay on disk for the next run."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.spool.close()
        self.messages = self.frames = self.bytes = 0
