"""The single owner of an MQTT peer's outgoing frames, and so of their order (docs/mqtt.md "Store and
forward"). Every frame read from our buses goes through it; nothing reaches the MQTT client another way.

    take(channel, frames)   frames of this loop pass (the router's send_frames)
    flush()                 end of the pass: this pass's frames become messages (bridge.endpoints.mqtt_store),
                            then pump()
    pump()                  hand messages to the client oldest first while fewer than `window` of ours are
                            unacknowledged: window = min(WINDOW_MAX, the broker's Receive Maximum), 0 while
                            there is no connection; under a broker's publishes/s cap (broker=aws-iot) only
                            while its token bucket has a token (what waits stays stored, errors{rate_limited})
    acknowledged(mid, ok)   the broker's PUBACK (qos 1) or paho's "written" (qos 0) for one message
    connected(receive_max)  CONNACK: the window opens, everything stored is sent again from the oldest
    lost(client)            the connection is gone: take back what the client held (drop_out_messages():
                            paho must not resend it itself after the next CONNACK, before our older messages),
                            and forget which messages were in flight: the next connection sends them again

Batching: while nothing waits and the window has room a pass's frames leave at once, one message per
interface. Otherwise they wait in an open message per interface (coalesced: at most MAX_MESSAGE_FRAMES
frames and SEGMENT_SPAN_S), sealed into the store when full, old, or when the window reaches them.

Every frame taken ends in exactly one of: tx_frames (acknowledged; qos 0: written), dropped{queue_full,
stale, publish_failed, unencodable, no_such_channel, closed}, or `unconfirmed_frames` (handed to the
client and never acknowledged, so the broker may or may not have them: the connection was lost and they
went stale before it came back, the store bound pushed them out, or we closed; a canbridge consumer counts
those it did not get as lost_in_transit). So at the gateway: taken = tx_frames + dropped + unconfirmed.

PUB_COUNT (native batch topics, docs/protocol.md 10): a message is numbered when it is stored (session,
frames numbered on its topic before it). Frames numbered and then dropped by us without being sent (stale,
queue_full, closed) or refused by the broker are added to the topic's PUB_DROPPED figure, carried by its
later messages, so a consumer does not count them a second time as lost_in_transit.
"""

from __future__ import annotations

import math
import secrets
import time

from bridge.codec import mqtt_payload as mp
from bridge.codec import native
from bridge.core.stats import Counters
from bridge.endpoints.mqtt_store import MemoryBackend, Message, OutboxBackend

WINDOW_MAX = 64  # our messages unacknowledged at once (the broker's Receive Maximum may make it fewer): enough
#                  to fill a 100 ms link at 640 messages/s, small enough that a lost connection resends little
STORE_MAX_BYTES = 4_500_000  # stored while the broker is away: ~160k 8-byte classic frames (28 B each) = 64 s of a
#                              Durango bus (2.5k frames/s); the bound is 5 MB of RSS
SEGMENT_SPAN_S = 1.0  # a waiting (open) message takes frames for at most this long: stale messages are dropped
#                       whole, so a frame may outlive max_age by this much
DEFAULT_MAX_AGE_S = 60.0  # a vehicle in a tunnel: frames up to a minute old are still worth sending


class Outbox:
    """counters: the peer's; topics: the rx topic of each channel; send(message, payload_age_s) -> the
    client's message id, or None if the client refused it at once (counted publish_failed here);
    numbered: native batch topics (PUB_COUNT); per_id: one message per frame on TOPIC/ID; max_age: s
    (0: none); clock: wall-clock seconds (time.time: a durable backend keeps messages across restarts);
    max_frames: frames per message (a broker's payload cap, broker_profiles.frames_per_message); rate: a
    broker_profiles.PublishRate (a publishes/s cap) or None, read with rate_clock (monotonic s); a message
    it holds back stays stored (counted once in errors{rate_limited}) and wake(delay_s) is asked to call
    pump() again when a token is due."""

    def __init__(self, counters: Counters, topics: list, send, *, numbered: bool, per_id: bool = False,
                 backend: OutboxBackend | None = None, max_bytes: int = STORE_MAX_BYTES,
                 max_age: float = DEFAULT_MAX_AGE_S, clock=time.time, max_frames: int = mp.MAX_MESSAGE_FRAMES,
                 rate=None, rate_clock=time.monotonic, wake=None) -> None:
        self.counters, self.topics, self._send = counters, list(topics), send
        self.numbered, self.per_id = numbered, per_id
        self.backend = backend if backend is not None else MemoryBackend()
        self.durable = getattr(self.backend, "durable", False)  # a spool: every pass's frames are stored
        self.full_reason = getattr(self.backend, "full_reason", "queue_full")
        self.max_bytes, self.max_age, self._clock = max_bytes, max_age, clock
        self.max_frames = max_frames
        self.rate, self._rate_clock, self._wake = rate, rate_clock, wake
        self._rate_held = -1  # seq of the last message counted rate_limited (each counted once)
        self._woken = False  # a wake() is pending
        self.state = self.backend.load_state() or {"session": secrets.randbits(32), "next_seq": 0,
                                                   "published": {}, "dropped": {}}
        self._pass: dict[int, list] = {}  # channel -> frames taken in this loop pass
        self._open: dict[int, list] = {}  # channel -> [created, frames, bytearray of records]: waiting, unsealed
        self._inflight: dict[int, int | None] = {}  # mid -> seq (None: a control message, e.g. the status)
        self._mid_of: dict[int, int] = {}  # seq -> mid of our messages in flight
        self._cursor = -1  # highest seq handed to the client on this connection
        self.window = 0  # 0: no connection
        self.unconfirmed = 0

    # ------------------------------------------------------------------------------------ in
    def take(self, channel: int, frames: list) -> None:
        held = self._pass.get(channel)
        if held is None:
            self._pass[channel] = list(frames)
        else:
            held.extend(frames)

    def flush(self) -> None:
        """This pass's frames become messages (sent at once when nothing waits and there is room)."""
        held, self._pass = self._pass, {}
        sealed: list = []
        now = self._clock()
        for channel, frames in held.items():
            if channel >= len(self.topics):
                self.counters.drop("no_such_channel", len(frames))
            elif self.per_id:
                sealed += self._per_id(channel, frames, now)
            else:
                self._add_open(channel, frames, now, sealed)
        if self.durable and self._open:  # on disk at the end of the pass that read them (SIGKILL-proof)
            sealed += [self._seal(ch) for ch in sorted(self._open, key=lambda c: self._open[c][0])]
        if sealed:
            self._append(sealed)
        self.pump()

    def _per_id(self, channel: int, frames: list, now: float) -> list:
        out = []
        for f in frames:
            try:
                records = native.encode_frames(0, [f])
            except ValueError:
                self.counters.drop("unencodable")
                continue
            out.append(self._message(channel, f"{self.topics[channel]}/{mp.id_topic(f[0])}", 1, now, records))
        return out

    def _add_open(self, channel: int, frames: list, now: float, sealed: list) -> None:
        for part in mp.chunks(frames, self.max_frames):
            try:
                records = native.encode_frames(0, part)
            except ValueError:  # a raw frame no kernel produces
                self.counters.drop("unencodable", len(part))
                continue
            tail = self._open.get(channel)
            if tail is not None and tail[1] + len(part) > self.max_frames:
                sealed.append(self._seal(channel))
                tail = None
            if tail is None:
                tail = self._open[channel] = [now, 0, bytearray()]
            tail[1] += len(part)
            tail[2] += records

    def _message(self, channel: int, topic: str, n: int, created: float, records: bytes) -> Message:
        st = self.state
        seq, st["next_seq"] = st["next_seq"], st["next_seq"] + 1
        count = None
        if self.numbered:
            before = st["published"].get(topic, 0)
            count, st["published"][topic] = (st["session"], before), before + n
        return Message(seq, channel, topic, n, created, bytes(records), count)

    def _seal(self, channel: int) -> Message:
        created, n, records = self._open.pop(channel)
        return self._message(channel, self.topics[channel], n, created, records)

    def _append(self, messages: list) -> None:
        self.backend.append(messages, self.state)
        while self.backend.bytes > self.max_bytes:
            self._drop(self.backend.drop_oldest(), self.full_reason)

    # ------------------------------------------------------------------------------------ out
    def _unsent(self) -> int:
        return self.backend.messages - len(self._mid_of)

    def pump(self) -> None:
        """Send stored messages oldest first while the window has room (then the open ones, if all went)."""
        while self.window and len(self._inflight) < self.window:
            if not self._unsent():
                if not self._open:
                    return
                self._append([self._seal(ch) for ch in sorted(self._open, key=lambda c: self._open[c][0])])
            batch = []
            for m in self.backend.pending(self._cursor):
                batch.append(m)
                if len(self._inflight) + len(batch) >= self.window:
                    break
            if not batch:
                return
            now = self._clock()
            for m in batch:
                if self.rate is not None and not self._rate_allows(m):
                    return
                self._cursor = m.seq
                mid = self._send(m, max(0.0, now - m.created))
                if mid is None:  # refused by the client at once (e.g. a payload it cannot send)
                    self.backend.acknowledge(m.seq)
                    self._refused(m)
                    continue
                m.sent = True
                self._inflight[mid] = m.seq
                self._mid_of[m.seq] = mid

    def _rate_allows(self, m: Message) -> bool:
        """A token for message m, or m waits (stored, counted once) and a wake-up is asked for."""
        now = self._rate_clock()
        if self.rate.allow(now):
            return True
        if m.seq != self._rate_held:
            self._rate_held = m.seq
            self.counters.errors["rate_limited"] += 1
        if self._wake is not None and not self._woken:
            self._woken = True
            self._wake(self.rate.wait(now))
        return False

    def woken(self) -> None:
        """The wake-up wake() asked for: pump again."""
        self._woken = False
        self.pump()

    def control(self, mid: int) -> None:
        """A message of the peer's own (the status) is in flight: it takes a place in the window."""
        self._inflight[mid] = None

    def acknowledged(self, mid: int, ok: bool) -> bool:
        """The broker acknowledged message `mid` (ok) or refused it. -> False for a mid not ours (e.g. one
        taken back at a lost connection)."""
        if mid not in self._inflight:
            return False
        seq = self._inflight.pop(mid)
        if seq is not None:
            self._mid_of.pop(seq, None)
            m = self.backend.acknowledge(seq)
            if m is not None:  # else: pushed out by the bound meanwhile, counted then
                if ok:
                    self.counters.tx_frames += m.frames
                else:
                    self._refused(m)
        self.pump()
        return True

    def _refused(self, m: Message) -> None:
        self.counters.drop("publish_failed", m.frames)
        self._numbered_drop(m)

    def _numbered_drop(self, m: Message) -> None:
        if m.count is not None:
            dropped = self.state["dropped"]
            dropped[m.topic] = dropped.get(m.topic, 0) + m.frames

    def _drop(self, m: Message | None, reason: str) -> None:
        """A message left the store unacknowledged: never sent -> dropped{reason}; sent -> unconfirmed."""
        if m is None:
            return
        mid = self._mid_of.pop(m.seq, None)
        if mid is not None:
            self._inflight[mid] = None  # its PUBACK may still come: it keeps its place in the window
        if m.sent:
            self.unconfirmed += m.frames
        else:
            self.counters.drop(reason, m.frames)
            self._numbered_drop(m)

    def pub_dropped(self, topic: str) -> int:
        """Frames numbered on `topic` and then dropped by us (the PUB_DROPPED record of its messages)."""
        return self.state["dropped"].get(topic, 0)

    # ------------------------------------------------------------------------------------ connection
    def connected(self, receive_max: int) -> None:
        self.window = max(1, min(WINDOW_MAX, receive_max))
        self._cursor = -1
        self.sweep()

    def lost(self, client) -> None:
        """The connection is gone: paho's unacknowledged messages are taken back (we resend them, in order,
        after the next CONNACK), and nothing of ours is in flight any more."""
        self.window = 0
        client.drop_out_messages()
        self._inflight.clear()
        self._mid_of.clear()
        self._cursor = -1

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------------------------------ time
    def sweep(self) -> None:
        """Once a second (and at CONNACK): seal open messages older than SEGMENT_SPAN_S (into the store),
        drop stale messages from the oldest (those not on the wire of a live connection), then pump."""
        now = self._clock()
        old = [ch for ch, tail in self._open.items() if now - tail[0] >= SEGMENT_SPAN_S]
        if old and self._unsent():  # (with nothing unsent, pump takes them at once)
            self._append([self._seal(ch) for ch in old])
        if self.max_age:
            horizon = now - self.max_age
            while True:
                m = self.backend.oldest()
                if m is None or m.created >= horizon or m.seq in self._mid_of:
                    break
                self._drop(self.backend.drop_oldest(), "stale")
            for ch in [ch for ch, tail in self._open.items() if tail[0] < horizon]:
                self.counters.drop("stale", self._open.pop(ch)[1])  # not numbered yet: nothing to tell
        self.pump()

    def expiry(self, age: float) -> int | None:
        """The message expiry (s) of a message whose oldest frame is `age` s old: what is left of max_age."""
        return max(1, math.ceil(self.max_age - age)) if self.max_age else None

    def gauges(self) -> dict:
        waiting = sum(t[1] for t in self._open.values()) + sum(map(len, self._pass.values()))
        return {"queued_frames": self.backend.frames + waiting, "queued_bytes": self.backend.bytes,
                "queued_messages": self.backend.messages, "inflight_messages": len(self._inflight),
                "window": self.window, "unconfirmed_frames": self.unconfirmed}

    def close(self) -> None:
        """We stop: what was never sent is dropped{closed} (a durable backend keeps it: nothing counted),
        what was sent and not acknowledged is unconfirmed (the broker may have it)."""
        self.counters.drop("closed", sum(map(len, self._pass.values())))
        self._pass.clear()
        durable = self.backend.durable
        if self._open:
            if durable:
                self._append([self._seal(ch) for ch in list(self._open)])
            else:
                self.counters.drop("closed", sum(t[1] for t in self._open.values()))
                self._open.clear()
        self._inflight.clear()
        self._mid_of.clear()
        if not durable:
            while self.backend.messages:
                self._drop(self.backend.drop_oldest(), "closed")
        self.backend.save_state(self.state)
        self.backend.close()
