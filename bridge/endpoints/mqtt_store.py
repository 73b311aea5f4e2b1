"""Where the MQTT outbox (bridge.endpoints.mqtt_outbox) keeps the messages it has not yet seen
acknowledged: the backend interface, and the in-memory backend. A durable backend (an on-disk spool,
issue 21) implements the same interface; the outbox never looks behind it.

What is stored are *messages*, not frames: one Message is one future PUBLISH (one interface, at most
MAX_MESSAGE_FRAMES frames; with topics=per-id one frame), its frames kept as native FRAME records
(bridge.codec.native, channel 0: 28 bytes for an 8-byte classic frame, no Python object per frame). The
payload in the wire format (json, candump, the PUB_COUNT head of native) is rendered from them when the
message is sent, so a message is immutable once appended.

Contract of a backend (the outbox is its only user, single-threaded):
- append(messages, state): store the messages (their seq ascending, above every seq stored before) and
  the numbering state in one step: a durable backend writes both or neither.
- acknowledge(seq) -> the Message removed, or None if it was not stored (acknowledged or dropped before).
  Any stored seq may be acknowledged, not only the oldest (a broker answers in order, but a refusal or
  a qos 0 write can come out of turn).
- pending(after=-1): the stored messages with seq > after, oldest (lowest seq) first; the outbox stops
  iterating when its window is full, so a backend should yield lazily. The backend must not be changed
  while a pending() iteration is in progress (the outbox finishes or drops the iterator first).
- oldest() -> the Message with the lowest seq, or None; drop_oldest() removes and returns it (the outbox
  counts why: queue_full, stale, closed).
- load_state() -> the state last given to append (or to save_state), or None for a new store; save_state
  persists it alone (a drop changes the PUB_DROPPED count without an append).
- messages, frames, bytes: what is stored now (bytes: payload records + MESSAGE_OVERHEAD_BYTES each, the
  figure the outbox bounds); close(): release it (a durable backend keeps its messages for the next run).
- durable: False here. True: at close the outbox seals what waits into the store and counts nothing as
  dropped{closed}; the next run's outbox finds the messages (pending()) and the state (load_state()).

The numbering state (dict, JSON-ready) is the outbox's: {"session": u32 of the PUB_COUNT records,
"next_seq": the seq of the next message, "published": {topic: frames numbered on it}, "dropped": {topic:
frames numbered and then dropped by us (PUB_DROPPED)}}. A backend stores it as given and returns it as
given; the outbox mutates the dict it passed, so a backend that keeps it in memory must copy it if it
needs the value as of the call (the in-memory one keeps the reference: same process, same dict).
Message.sent is set by the outbox on the stored object; a durable backend may persist it or not (a
message of an earlier run is then treated as never sent: if it is dropped, a consumer is told it was).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

MESSAGE_OVERHEAD_BYTES = 160  # a stored message's own cost beyond its records (object, topic string, dict slot):
#                               counted in `bytes`, so the bound holds for one-frame (per-id) messages too


@dataclass(slots=True, eq=False)
class Message:
    """One future PUBLISH. seq: outbox order (ascending, never reused in a store); channel: our bus index;
    topic: where it goes; frames: FRAME records in `records`; created: wall-clock s (time.time()) of its
    oldest frame's arrival, for max_age (wall clock, so it holds across restarts of a durable store);
    count: its PUB_COUNT (session, frames_before), or None for unnumbered formats (json, candump,
    per-id); sent: handed to the MQTT client at least once (its fate is unknown until acknowledged)."""

    seq: int
    channel: int
    topic: str
    frames: int
    created: float
    records: bytes
    count: tuple[int, int] | None = None
    sent: bool = False

    @property
    def size(self) -> int:
        return len(self.records) + MESSAGE_OVERHEAD_BYTES


class OutboxBackend(Protocol):
    """The storage interface of the outbox (module docstring: the contract)."""

    messages: int
    frames: int
    bytes: int
    durable: bool

    def append(self, messages: list[Message], state: dict) -> None: ...

    def acknowledge(self, seq: int) -> Message | None: ...

    def pending(self, after: int = -1) -> Iterator[Message]: ...

    def oldest(self) -> Message | None: ...

    def drop_oldest(self) -> Message | None: ...

    def load_state(self) -> dict | None: ...

    def save_state(self, state: dict) -> None: ...

    def close(self) -> None: ...


class MemoryBackend:
    """The outbox's messages in memory (an OrderedDict by seq): lost when the process ends."""

    durable = False

    def __init__(self) -> None:
        self._messages: OrderedDict[int, Message] = OrderedDict()
        self._state: dict | None = None
        self.messages = self.frames = self.bytes = 0

    def append(self, messages: list[Message], state: dict) -> None:
        for m in messages:
            self._messages[m.seq] = m
            self.frames += m.frames
            self.bytes += m.size
        self.messages = len(self._messages)
        self._state = state

    def _removed(self, m: Message | None) -> Message | None:
        if m is not None:
            self.frames -= m.frames
            self.bytes -= m.size
            self.messages = len(self._messages)
        return m

    def acknowledge(self, seq: int) -> Message | None:
        return self._removed(self._messages.pop(seq, None))

    def pending(self, after: int = -1) -> Iterator[Message]:
        for seq, m in self._messages.items():  # acknowledged ones are gone: few in-flight ones are skipped
            if seq > after:
                yield m

    def oldest(self) -> Message | None:
        return next(iter(self._messages.values()), None)

    def drop_oldest(self) -> Message | None:
        if not self._messages:
            return None
        return self._removed(self._messages.popitem(last=False)[1])

    def load_state(self) -> dict | None:
        return self._state

    def save_state(self, state: dict) -> None:
        self._state = state

    def close(self) -> None:
        self._messages.clear()
        self.messages = self.frames = self.bytes = 0
