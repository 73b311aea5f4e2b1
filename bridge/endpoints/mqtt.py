"""An MQTT 5 fleet peer: frames read from our buses are published to a broker, frames from the broker
(commands on our `tx` topics, remote gateways' `rx` topics named by `source=`) go to our buses.
paho-mqtt 2.x (callback API 2) does the MQTT protocol; our reactor does its I/O (no paho thread):
the client's socket is registered with add_reader / add_writer (on_socket_open/close/register_write/
unregister_write), loop_read() on readable, loop_write() on writable, loop_misc() once a second. What paho
queued in a pass (our PUBLISHes at the end-of-pass flush, the PUBACKs of messages just read) is written in
that same pass (_write_now): with an external loop paho only asks for write interest, which would leave every
packet to the next pass, at the cost of that pass and two epoll_ctl calls per packet.
The TCP connect and the TLS handshake are ours too, non-blocking in the reactor (bridge.security.tls
Handshake); paho gets the connected socket (_Client) and sends its CONNECT over it, so a broker that does not
answer never stalls the loop. Only resolving a host name (getaddrinfo) blocks, as for TCP peers.

Topic tree (docs/mqtt.md), PREFIX from the URL path, GATEWAY from `gateway=` (default: host name):
    PREFIX/GATEWAY/IFACE/rx        frames read from bus IFACE, one message per interface per loop pass
                                   (at most MAX_MESSAGE_FRAMES frames each); topics=per-id: one message
                                   per frame on PREFIX/GATEWAY/IFACE/rx/ID (ID as candump prints it)
    PREFIX/GATEWAY/IFACE/tx        frames to write to bus IFACE (subscribed only with read_only=0)
    PREFIX/GATEWAY/status          retained JSON {"status": "online"|"offline", ...}; the will sets offline

Store and forward: frames that cannot be published at once (the broker is away, or paho already holds
PAHO_MAX_MESSAGES unacknowledged messages) wait in a FrameStore, encoded as native FRAME records (28 bytes
for an 8-byte classic frame, no per-frame Python objects), bounded in bytes, dropped after max_age; what
cannot wait is counted: queue_full (bound), stale (older than max_age),
publish_failed (paho refused the message, or the broker answered a PUBACK with an error), closed (held
at close). With qos=1 a frame counts in tx_frames when the broker has acknowledged its message; paho
resends unacknowledged messages after a reconnect (so a consumer may see a message twice, never lose
one the broker acknowledged while it was subscribed). With qos=0 tx_frames counts frames written.

End to end (format=native, batch topics): each message carries a PUB_COUNT record (docs/protocol.md 10), our
session and the frames we put in earlier messages on its topic. A consuming peer counts the gaps as
dropped lost_in_transit (messages a broker acknowledged and then lost: killed, restarted without
persistence, expired) and skips redelivered frames (errors duplicate_frames), so per gateway:
frames sent = frames delivered + dropped at the gateway + lost_in_transit at the consumer.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import secrets
import select
import socket
import time
from collections import deque

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.codec import mqtt_payload as mp
from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.codec import native
from bridge.codec.frameloss import PublishedFrames
from bridge.endpoints.tcp import backoff_delay
from bridge.security.tls import Handshake, Tls, describe

log = logging.getLogger(__name__)

STORE_MAX_BYTES = 4_500_000  # encoded frames held while the broker is away: ~160k 8-byte classic frames (28 B
#                             each) = 64 s of a Durango bus (2.5k frames/s); the bound is 5 MB of RSS
SEGMENT_SPAN_S = 1.0  # a stored segment takes frames of one channel for at most this long (then a new one):
#                      stale frames are dropped per segment, so a frame may outlive max_age by this much
DEFAULT_MAX_AGE_S = 60.0  # a vehicle in a tunnel: frames up to a minute old are still worth sending
PAHO_MAX_MESSAGES = 256  # messages handed to paho and not yet acknowledged: beyond, frames wait in ours
PAHO_QUEUE_LIMIT = PAHO_MAX_MESSAGES + mp.MAX_MESSAGE_FRAMES  # paho's own bound: one more segment always fits
PAHO_MAX_INFLIGHT = 64  # qos 1 PUBLISH packets on the wire without PUBACK (paho's inflight window)
MAX_PACKET_BYTES = 1 << 20  # CONNECT Maximum Packet Size: the broker sends nothing bigger (paho buffers a packet whole)
READ_PACKETS_PER_PASS = 256  # MQTT packets read per readable event: bounded, so our buses get their turn
#                              (paho's loop_read reads one per call while nothing of ours is in flight)
MISC_INTERVAL_S = 1.0  # loop_misc (keepalive PINGREQ, timeouts) and the stale sweep of our queue
CONNECT_TIMEOUT_S = 3.0  # a TCP connect (non-blocking) not established by then fails (the next address, then
#                          a retry with backoff); a SYN into a dead link is retried by the kernel for minutes
DEFAULT_KEEPALIVE_S = 30
DEFAULT_SESSION_EXPIRY_S = 3600  # the broker keeps our subscriptions and queued tx commands this long


class _Client(paho.Client):
    """paho's Client over a socket we connected (and secured) without blocking: reconnect() takes
    `ready_socket` instead of opening its own with a blocking create_connection and TLS handshake.
    _create_socket is paho 2.x's internal hook (paho is pinned <3): if a paho release stops calling it, every
    connection test fails (tests/test_mqtt.py; tests/test_mqtt_connect.py checks the loop never stalls)."""

    ready_socket = None

    def _create_socket(self):
        sock, self.ready_socket = self.ready_socket, None
        if sock is None:
            raise OSError(errno.ENOTCONN, "canbridge: no connected socket for paho")
        return sock


class FrameStore:
    """Frames waiting for the broker, oldest first: segments [last_append (monotonic s), channel, frames,
    bytearray of native FRAME records (bridge.codec.native, channel 0)], each <= MAX_MESSAGE_FRAMES frames
    of one channel, appended to for at most SEGMENT_SPAN_S. Bounded by max_bytes of records (the oldest
    segments go, counted queue_full); segments whose last frame is older than max_age go (stale)."""

    def __init__(self, counters: Counters, max_bytes: int = STORE_MAX_BYTES, max_age: float = DEFAULT_MAX_AGE_S,
                 clock=time.monotonic) -> None:
        self._segments: deque = deque()
        self._tails: dict[int, list] = {}  # channel -> the segment still taking frames
        self._counters = counters
        self.max_bytes, self.max_age, self._clock = max_bytes, max_age, clock
        self.frames = 0
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._segments)

    def add(self, channel: int, frames: list) -> None:
        """Store a batch of (raw, ts_ns) of one channel (any length: cut at MAX_MESSAGE_FRAMES)."""
        if len(frames) > mp.MAX_MESSAGE_FRAMES:
            for part in mp.chunks(frames):
                self.add(channel, part)
            return
        try:
            records = native.encode_frames(0, frames)
        except ValueError:
            self._counters.drop("unencodable", len(frames))
            return
        now = self._clock()
        tail = self._tails.get(channel)
        if tail is None or tail[2] + len(frames) > mp.MAX_MESSAGE_FRAMES or now - tail[4] > SEGMENT_SPAN_S:
            tail = [now, channel, 0, bytearray(), now]  # last append, channel, frames, records, created
            self._segments.append(tail)
            self._tails[channel] = tail
        tail[0] = now
        tail[2] += len(frames)
        tail[3] += records
        self.frames += len(frames)
        self.bytes += len(records)
        while self.bytes > self.max_bytes and self._segments:
            self._counters.drop("queue_full", self._popleft()[2])

    def _popleft(self) -> list:
        seg = self._segments.popleft()
        if self._tails.get(seg[1]) is seg:
            del self._tails[seg[1]]
        self.frames -= seg[2]
        self.bytes -= len(seg[3])
        return seg

    def drop_stale(self) -> None:
        if not self.max_age:
            return
        horizon = self._clock() - self.max_age
        while self._segments and self._segments[0][0] < horizon:
            self._counters.drop("stale", self._popleft()[2])

    def pop(self):
        """The oldest fresh segment as (channel, frames, records bytes, age s), or None (stale ones counted)."""
        self.drop_stale()
        if not self._segments:
            return None
        seg = self._popleft()
        return seg[1], seg[2], bytes(seg[3]), self._clock() - seg[0]

    def discard(self, reason: str) -> None:
        self._counters.drop(reason, self.frames)
        self._segments.clear()
        self._tails.clear()
        self.frames = self.bytes = 0

    def gauges(self) -> dict:
        return {"queued_frames": self.frames, "queued_bytes": self.bytes}


class MqttPeer:
    """One MQTT client. channels: our bus names by channel index (the HELLO's); sources: the
    `GATEWAY/IFACE` patterns whose rx topics we mirror; tls: an ssl.SSLContext or None;
    read_only: subscribe to nothing (frames from the broker never reach a bus)."""

    def __init__(self, reactor: Reactor, router, *, host: str, port: int, prefix: str, gateway: str,
                 channels: list, client_id: str, username: str | None = None, password: str | None = None,
                 qos: int = 1, fmt: str = "native", per_id: bool = False, keepalive: int = DEFAULT_KEEPALIVE_S,
                 session_expiry: int = DEFAULT_SESSION_EXPIRY_S, share: str | None = None,
                 sources: tuple = (), read_only: bool = True, max_age: float = DEFAULT_MAX_AGE_S,
                 tls=None, fd: bool = False, version: str = "",
                 routing=(None, None, None), name: str | None = None) -> None:
        self.reactor = reactor
        self.router = router
        self.name = name or f"mqtt://{host}:{port}/{prefix}"
        self.counters = Counters()
        self.prefix, self.gateway, self.channels = prefix, gateway, list(channels)
        self.qos, self.fmt, self.per_id = qos, fmt, per_id
        self.share, self.sources, self.read_only = share, tuple(sources), read_only
        self.max_age = max_age
        self.status_topic = f"{prefix}/{gateway}/status"
        self._tx_topics = {f"{prefix}/{gateway}/{iface}/tx": ch for ch, iface in enumerate(self.channels)}
        self._pass: dict[int, list] = {}  # channel -> frames handed over in this loop pass
        self._store = FrameStore(self.counters, STORE_MAX_BYTES, max_age)
        self._unacked: dict[int, int] = {}  # mid -> frames in that message (acknowledged: tx_frames)
        self._session = secrets.randbits(32)  # PUB_COUNT session: a restarted gateway numbers from 0 again
        self._published = [0] * len(self.channels)  # per channel: frames in messages paho accepted (PUB_COUNT)
        self._received = PublishedFrames()  # per topic: gaps and redeliveries of what we consume
        self._connected = False
        self._closing = False
        self._refused = False  # the broker's CONNACK refused us: on_disconnect does not count it again
        self._attempt = 0
        self._retry = None
        self._fd = -1
        self._more = None  # select.poll of the paho socket (set when it opens)
        self._last_error = ""
        self._started = time.time()
        self._fd_capable, self._version = fd, version

        self._host, self._port = host, port
        self._tls = None if tls is None else Tls(tls, server_side=False, server_hostname=host)
        self._pending = None  # (socket, remaining addresses, timeout timer) of a TCP connect in progress
        self._handshake = None  # a TLS handshake in progress
        self.client = c = _Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5, reconnect_on_failure=False)
        c.max_queued_messages_set(PAHO_QUEUE_LIMIT)
        c.max_inflight_messages_set(PAHO_MAX_INFLIGHT)
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set_context(tls)
        c.will_set(self.status_topic, self._status("offline"), qos=1, retain=True,
                   properties=self._props("json"))
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        connect_props = Properties(PacketTypes.CONNECT)
        if session_expiry:
            connect_props.SessionExpiryInterval = session_expiry
        connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        c.connect_async(host, port, keepalive, clean_start=not session_expiry, properties=connect_props)
        self._misc = reactor.call_every(MISC_INTERVAL_S, self._tick)
        self._gauges()
        router.add_peer(self, *routing)
        self._connect()

    # ------------------------------------------------------------------ paho socket <-> our reactor
    def _on_socket_open(self, client, userdata, sock) -> None:
        self._fd = sock.fileno()
        self.reactor.add_reader(self._fd, self._readable)
        self._more = select.poll()  # "more bytes waiting?" between two packets of one readable event
        self._more.register(self._fd, select.POLLIN)

    def _on_socket_close(self, client, userdata, sock) -> None:
        if self._fd >= 0:
            self.reactor.forget(self._fd)
            self._fd = -1

    def _on_register_write(self, client, userdata, sock) -> None:
        if self._fd >= 0:
            self.reactor.add_writer(self._fd, self._writable)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        if self._fd >= 0:
            self.reactor.remove_writer(self._fd)

    def _readable(self) -> None:
        """Read up to READ_PACKETS_PER_PASS packets while bytes wait (loop_read takes one per call, whatever
        its max_packets says, unless messages of ours are in flight)."""
        for _ in range(READ_PACKETS_PER_PASS):
            self.client.loop_read(READ_PACKETS_PER_PASS)  # lost connection: paho closes, calls on_disconnect
            sock = self.client.socket()
            if sock is None:
                return
            tls_pending = bool(getattr(sock, "pending", None) and sock.pending())
            if not tls_pending and not self._more.poll(0):
                break
        self._write_now()  # the PUBACKs (and anything else) the packets just read made paho queue
        if tls_pending:
            self.reactor.call_soon(self._readable)  # TLS holds decrypted bytes epoll will not signal again

    def _writable(self) -> None:
        self.client.loop_write()

    def _write_now(self) -> None:
        """Hand what paho queued to the kernel now, in this loop pass (paho with an external loop only
        registers write interest). What does not fit stays queued, and paho keeps write interest for it."""
        if self._fd >= 0 and self.client.want_write():
            self.client.loop_write()

    def _tick(self) -> None:
        if self._fd >= 0:
            self.client.loop_misc()
        self._store.drop_stale()  # count frames going stale in an outage as they do, not at reconnect
        self._gauges()

    # ---------------------------------------------------------------------------- connection state
    def _connect(self) -> None:
        """Start a non-blocking TCP connect to the broker's first address (then TLS, then paho's CONNECT)."""
        self._retry = None
        if self._closing:
            return
        try:
            infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except OSError as exc:
            self._failed("connect_failed", f"cannot connect: {exc}")
            return
        self._try_address([(info[0], info[4]) for info in infos], None)

    def _try_address(self, addresses: list, last_error: Exception | None) -> None:
        """Connect to addresses[0] (family, sockaddr); on failure the next; all failed: connect_failed."""
        while addresses:
            family, sockaddr = addresses.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (0, errno.EINPROGRESS):
                timer = self.reactor.call_later(CONNECT_TIMEOUT_S, self._connect_timed_out)
                self._pending = (sock, addresses, timer)
                self.reactor.add_writer(sock.fileno(), self._on_tcp_connected)
                return
            sock.close()
            last_error = OSError(err, os.strerror(err))
        self._failed("connect_failed", f"cannot connect: {last_error}")

    def _drop_pending(self):
        """-> (socket, remaining addresses) of the connect in progress, no longer watched or timed."""
        sock, addresses, timer = self._pending
        self._pending = None
        timer.cancel()
        self.reactor.forget(sock.fileno())
        return sock, addresses

    def _connect_timed_out(self) -> None:
        sock, addresses = self._drop_pending()
        sock.close()
        self._try_address(addresses, TimeoutError(f"no answer from the broker in {CONNECT_TIMEOUT_S:g} s"))

    def _on_tcp_connected(self) -> None:
        sock, addresses = self._drop_pending()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._try_address(addresses, OSError(err, os.strerror(err)))
            return
        if self._tls is None:
            self._start_mqtt(sock)
            return
        self._handshake = Handshake(self.reactor, sock, self._tls, self.name, self._start_mqtt,
                                    self._on_tls_failed, quiet=True)

    def _on_tls_failed(self, reason: str) -> None:
        self._handshake = None
        self._failed("connect_failed", f"cannot connect: TLS handshake failed: {reason}")

    def _start_mqtt(self, sock) -> None:
        """The socket is connected (and secured): paho takes it and queues its CONNECT."""
        self._handshake = None
        self.client.ready_socket = sock
        try:
            self.client.reconnect()
        except (OSError, ValueError) as exc:
            self._failed("connect_failed", f"cannot connect: {describe(exc)}")

    def _failed(self, slug: str, message: str) -> None:
        self.counters.errors[slug] += 1
        if message != self._last_error:
            log.warning("%s: %s", self.name, message)
        self._last_error = message
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._closing or self._retry is not None:
            return
        delay = backoff_delay(self._attempt)
        self._attempt += 1
        self._retry = self.reactor.call_later(delay, self._connect)
        self._gauges()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:  # bad user name or password, not authorized, ...
            self._refused = True
            self._failed("connect_refused", f"broker refused the connection: {reason_code}")
            return  # paho closes the socket: on_disconnect follows
        self._connected = True
        self._attempt = 0
        self._last_error = ""
        log.info("%s: connected (session present: %s)", self.name, flags.session_present)
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True, properties=self._props("json"))
        subs = []
        if not self.read_only:
            subs += [(topic, SubscribeOptions(qos=self.qos)) for topic in self._tx_topics]
            for source in self.sources:
                topic = f"{self.prefix}/{source}/rx" + ("/+" if self.per_id else "")
                if self.share:  # MQTT 5 forbids no-local on a shared subscription
                    subs.append((f"$share/{self.share}/{topic}", SubscribeOptions(qos=self.qos)))
                else:
                    subs.append((topic, SubscribeOptions(qos=self.qos, noLocal=True)))
        if subs:
            client.subscribe(subs)
        self._drain()
        self._gauges()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected
        self._connected = False
        if self._closing:
            return
        refused, self._refused = self._refused, False
        if was:
            self.counters.errors["disconnected"] += 1
            log.warning("%s: connection lost (%s); frames wait in the queue (max_age %s s)",
                        self.name, reason_code, self.max_age)
        elif not refused:  # e.g. the broker's TLS refused our certificate after the handshake (TLS 1.3)
            self._failed("connect_failed", f"connection closed before the broker accepted it ({reason_code})")
        self._schedule_retry()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes:
            if rc.is_failure:  # an ACL refused one of our topics
                self.counters.errors["subscribe_refused"] += 1
                log.warning("%s: broker refused a subscription: %s", self.name, rc)

    def _status(self, state: str) -> bytes:
        return json.dumps({"status": state, "gateway": self.gateway, "version": self._version,
                           "interfaces": self.channels, "fd": self._fd_capable, "format": self.fmt,
                           "tx": not self.read_only, "started": round(self._started, 3)},
                          separators=(",", ":")).encode()

    def _props(self, fmt: str) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1 if fmt in mp.UTF8_FORMATS else 0
        props.ContentType = mp.CONTENT_TYPES[fmt]
        return props

    # ---------------------------------------------------------------------------- bus -> broker
    def send_frames(self, channel: int, frames: list) -> bool:
        """Take a batch read from bus `channel`; published at the end-of-pass flush."""
        held = self._pass.get(channel)
        if held is None:
            self._pass[channel] = list(frames)
        else:
            held.extend(frames)
        return True

    def _room(self) -> bool:
        return self._connected and len(self._unacked) < PAHO_MAX_MESSAGES

    def flush(self) -> None:
        """Publish this pass's frames, one message per interface (per MAX_MESSAGE_FRAMES frames), when
        connected, nothing older waits and paho has room; otherwise store them (encoded, bounded, max_age)."""
        held, self._pass = self._pass, {}
        for channel, frames in held.items():
            if channel >= len(self.channels):
                self.counters.drop("no_such_channel", len(frames))
                continue
            for part in mp.chunks(frames):
                if self._room() and not self._store:
                    self._publish_frames(channel, part, 0.0)
                else:
                    self._store.add(channel, part)
        self._drain()
        self._write_now()  # the frames leave in the pass that read them, not in the next one
        self._gauges()

    def _drain(self) -> None:
        """Publish stored segments, oldest first, while connected and paho has room."""
        while self._room() and self._store:
            seg = self._store.pop()
            if seg is None:
                break
            channel, n, records, age = seg
            if self.fmt == "native" and not self.per_id:  # stored as it is sent: no re-encoding
                self._send(self._rx_topic(channel), mp.native_head(self._count(channel)) + records, n, age, channel)
            else:
                self._publish_frames(channel, mp.decode_native(native.STREAM_PREAMBLE + records), age)

    def _rx_topic(self, channel: int) -> str:
        return f"{self.prefix}/{self.gateway}/{self.channels[channel]}/rx"

    def _publish_frames(self, channel: int, frames: list, age: float) -> None:
        iface, base = self.channels[channel], self._rx_topic(channel)
        try:
            if self.per_id:
                for f in frames:
                    self._send(f"{base}/{mp.id_topic(f[0])}", mp.encode(self.fmt, self.gateway, iface, [f]), 1, age)
            elif self.fmt == "native":
                self._send(base, mp.encode_native(frames, self._count(channel)), len(frames), age, channel)
            else:
                self._send(base, mp.encode(self.fmt, self.gateway, iface, frames), len(frames), age)
        except ValueError:  # a raw frame no kernel produces
            self.counters.drop("unencodable", len(frames))

    def _count(self, channel: int) -> tuple[int, int]:
        """The PUB_COUNT of the next message on channel's rx topic: (session, frames_before)."""
        return self._session, self._published[channel]

    def _send(self, topic: str, payload: bytes, n: int, age: float, channel: int | None = None) -> None:
        """Hand one message of n frames to paho. channel: its PUB_COUNT numbering, advanced only when paho
        takes it (a message refused here is counted here and leaves no gap for a consumer to count)."""
        props = self._props(self.fmt)
        if self.max_age:  # the broker drops the message once its frames are older than max_age
            props.MessageExpiryInterval = max(1, math.ceil(self.max_age - age))
        info = self.client.publish(topic, payload, qos=self.qos, properties=props)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.counters.drop("queue_full", n)
        elif info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self.counters.drop("publish_failed", n)
        else:
            self.counters.tx_bytes += len(payload)
            self._unacked[info.mid] = n  # NO_CONN: paho keeps it and sends it after the reconnect
            if channel is not None:
                self._published[channel] += n

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        n = self._unacked.pop(mid, None)
        if n is None:
            return  # the status message
        if reason_code.is_failure:  # e.g. "Not authorized": an ACL refused our rx topic
            self.counters.drop("publish_failed", n)
            self.counters.errors["publish_refused"] += 1
            if self._last_error != str(reason_code):
                log.warning("%s: broker refused a publish: %s", self.name, reason_code)
                self._last_error = str(reason_code)
        else:
            self.counters.tx_frames += n
        if self._store and len(self._unacked) < PAHO_MAX_MESSAGES // 2:
            self._drain()  # room again: what waited goes now

    # ---------------------------------------------------------------------------- broker -> bus
    def _on_message(self, client, userdata, msg) -> None:
        topic = msg.topic
        channel = self._tx_topics.get(topic)
        if channel is None:
            channel = self._source_channel(topic)
            if channel is None:
                return
        if msg.retain:  # a retained command would be replayed on every subscribe
            self.counters.errors["retained_message"] += 1
            return
        try:
            frames, count = mp.decode_counted(self.fmt, msg.payload)
        except mp.MqttPayloadError as exc:
            self.counters.errors["bad_payload"] += 1
            self.counters.errors[f"bad_payload_{exc.reason}"] += 1
            log.warning("%s: dropped a malformed message on %s: %s", self.name, topic, exc)
            return
        if count is not None:
            frames = self._account(topic, count, frames)
        self.counters.rx_frames += len(frames)
        self.counters.rx_bytes += len(msg.payload)
        if frames:
            self.router.from_peer(self, channel, frames)

    def _account(self, topic: str, count: tuple[int, int], frames: list) -> list:
        """A counted message: gaps before it go to dropped lost_in_transit; -> its frames not seen before."""
        skip, lost = self._received.observe(topic, count[0], count[1], len(frames))
        if lost:
            self.counters.drop("lost_in_transit", lost)
        if skip:
            self.counters.errors["duplicate_frames"] += skip
            return frames[skip:]
        return frames

    def _source_channel(self, topic: str) -> int | None:
        """PREFIX/GW/IFACE/rx[/ID] of a mirrored source -> our channel: the bus of the same name, or our
        only bus; None (counted) for our own gateway or a topic that is not a source's."""
        parts = topic[len(self.prefix) + 1 :].split("/") if topic.startswith(self.prefix + "/") else []
        if len(parts) < 3 or parts[2] != "rx":
            self.counters.errors["unexpected_topic"] += 1
            return None
        gw, iface = parts[0], parts[1]
        if gw == self.gateway:  # our own frames (no-local cannot tell another client of the same gateway)
            self.counters.errors["own_gateway"] += 1
            return None
        if iface in self.channels:
            return self.channels.index(iface)
        if len(self.channels) == 1:
            return 0
        self.counters.errors["no_such_channel"] += 1
        return None

    # ---------------------------------------------------------------------------- the rest
    def _gauges(self) -> None:
        self.counters.gauges.update(self._store.gauges(), state="up" if self._connected else "down",
                                    unacked_messages=len(self._unacked),
                                    **({"last_error": self._last_error} if self._last_error else {}))

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self) -> None:
        """Publish offline (retained), disconnect cleanly (no will), count what is still held as closed."""
        if self._closing:
            return
        self._closing = True
        self._misc.cancel()
        if self._retry is not None:
            self._retry.cancel()
        if self._pending is not None:
            self._drop_pending()[0].close()
        if self._handshake is not None:
            self._handshake.cancel()
            self._handshake = None
        self.router.remove_peer(self)
        if self._connected:
            self.client.publish(self.status_topic, self._status("offline"), qos=0, retain=True,
                                properties=self._props("json"))
            self.client.disconnect()
            for _ in range(8):  # the socket is non-blocking: push the last packets out if they fit
                if self.client.loop_write() != paho.MQTT_ERR_SUCCESS or not self.client.want_write():
                    break
        self._store.discard("closed")
        self.counters.drop("closed", sum(map(len, self._pass.values())))
        self._pass.clear()
        self.counters.drop("closed", sum(self._unacked.values()))
        self._unacked.clear()
        if self._fd >= 0:
            self.reactor.forget(self._fd)
            self._fd = -1
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def default_gateway() -> str:
    """The host name, as a topic level (no '/', '+', '#')."""
    name = socket.gethostname().split(".")[0] or "gateway"
    return "".join("_" if c in "/+#" else c for c in name)


def default_client_id(gateway: str, prefix: str) -> str:
    """Stable across restarts (a persistent session needs the same id), distinct per gateway and prefix."""
    return f"canbridge-{gateway}-{abs(hash_prefix(prefix)):08x}"[:64]


def hash_prefix(prefix: str) -> int:
    """A stable 32-bit hash (not Python's salted hash())."""
    h = 2166136261
    for b in prefix.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h

