"""An MQTT fleet peer: frames read from our buses are published to a broker, frames from the broker
(commands on our `tx` topics, remote gateways' `rx` topics named by `source=`) go to our buses.
paho-mqtt 2.x (callback API 2) does the MQTT protocol in our reactor. The peer is split in rooms:

    bridge.endpoints.mqtt_outbox      the single owner of outgoing frames and their order (store and
                                      forward, the window, acknowledgements, resending after a reconnect)
    bridge.endpoints.mqtt_store       the outbox's storage backend interface and the in-memory backend
    bridge.endpoints.mqtt_connection  TCP connect, TLS, paho's socket in the reactor, backoff, failover
                                      across a broker list (bridge.endpoints.brokers)
    bridge.endpoints.mqtt_version     MQTT 5 and 3.1.1 (properties, reason codes, subscriptions);
                                      protocol=auto falls back to 3.1.1 when the broker refuses 5
    bridge.endpoints.outbox_spool     spool=DIR: the outbox's messages on disk (bridge.endpoints.spool)

This module ties them together and does the receive side (broker -> bus) and the status topic.

Topic tree (docs/mqtt.md), PREFIX from the URL path, GATEWAY from `gateway=` (default: host name):
    PREFIX/GATEWAY/IFACE/rx        frames read from bus IFACE, one message per interface per loop pass
                                   (at most MAX_MESSAGE_FRAMES frames each); topics=per-id: one message
                                   per frame on PREFIX/GATEWAY/IFACE/rx/ID (ID as candump prints it)
    PREFIX/GATEWAY/IFACE/tx        frames to write to bus IFACE (subscribed only with read_only=0)
    PREFIX/GATEWAY/status          retained JSON {"status": "online"|"offline", ...}; the will sets offline;
                                   online, it carries each bus's health (bridge/endpoints/bushealth.py),
                                   republished every STATUS_HEALTH_S and at once when a bus state changes

End to end (format=native, batch topics): each message carries a PUB_COUNT record (docs/protocol.md 10),
our session and the frames numbered on its topic before it, and PUB_DROPPED when we dropped numbered
frames ourselves. A consuming peer counts the gaps not explained by PUB_DROPPED as dropped
lost_in_transit (messages a broker acknowledged and then lost: killed, restarted without persistence,
expired) and skips redelivered frames (errors duplicate_frames), so per gateway:
frames sent = frames delivered + dropped at the gateway + lost_in_transit at the consumer.
A received message without a message expiry (MQTT 3.1.1) has its frames older than our max_age by their
gateway timestamps dropped stale here (the wall clocks' skew counts: docs/mqtt.md "MQTT 3.1.1"), so there
the consumer's dropped{stale} joins the sum.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import paho.mqtt.client as paho

from bridge.codec import mqtt_payload as mp
from bridge.codec import native
from bridge.codec.frameloss import PublishedFrames
from bridge.core.logsummary import SummarisedLog
from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.endpoints import broker_profiles as bp
from bridge.endpoints.brokers import Broker
from bridge.endpoints.bushealth import HealthReport
from bridge.endpoints.socketcan import SocketCanEndpoint
from bridge.endpoints.mqtt_connection import STABLE_S, Connection, _Client, new_client
from bridge.endpoints.mqtt_outbox import DEFAULT_MAX_AGE_S, WINDOW_MAX, Outbox
from bridge.endpoints.mqtt_store import Message
from bridge.endpoints.mqtt_version import Mqtt311, refused_version
from bridge.endpoints.mqtt_version import version as mqtt_version

log = logging.getLogger(__name__)

__all__ = ["MqttPeer", "DEFAULT_MAX_AGE_S", "default_client_id", "default_gateway"]

PAHO_QUEUE_LIMIT = WINDOW_MAX + 4  # paho's own bound on qos>0 messages it holds: our window and the status
MISC_INTERVAL_S = 1.0  # loop_misc (keepalive PINGREQ, timeouts) and the outbox's stale sweep
# the online status (retained) is republished with the buses' health this often, and at once when a bus state
# changes: a fleet of 1,000 gateways costs its broker 100 small messages a second
STATUS_HEALTH_S = 10.0
DEFAULT_KEEPALIVE_S = 30
SUBSCRIBE_RETRY_S = 2.0  # a refused subscription is asked again this often while connected (bounded: one a topic)
DEFAULT_SESSION_EXPIRY_S = 3600  # the broker keeps our subscriptions and queued tx commands this long
BAD_PAYLOAD_SUMMARY_S = 60.0  # malformed messages: the first per (source, reason) logged, then one summary per this


class BadMessageLog(SummarisedLog):
    """Log lines for malformed messages: the first of each (topic, reason) in full, later ones counted and
    told in one summary line at most every `interval` s, so a garbage flood cannot flood the log (the
    counters errors{bad_payload...} count every one). At most MAX_KEYS (topic, reason) pairs remembered."""

    MAX_KEYS = 1024  # a flood on ever new topics: beyond, every message goes to the summary

    def __init__(self, reactor: Reactor, name: str, interval: float = BAD_PAYLOAD_SUMMARY_S) -> None:
        super().__init__(reactor, name, interval, self.MAX_KEYS)
        self._pending = 0

    def bad(self, topic: str, reason: str, line: str) -> None:
        if self.first((topic, reason)):
            log.warning("%s: %s (first of its kind on this topic; more are summarised every %g s)",
                        self.name, line, self.interval)
        else:
            self._pending += 1

    def _summarise(self) -> bool:
        if not self._pending:
            return False
        log.warning("%s: %d more malformed messages dropped (errors{bad_payload_REASON})", self.name,
                    self._pending)
        self._pending = 0
        return True


class MqttPeer:
    """One MQTT client. channels: our bus names by channel index (the HELLO's); sources: the
    `GATEWAY/IFACE` patterns whose rx topics we mirror; tls: an ssl.SSLContext or None;
    read_only: subscribe to nothing (frames from the broker never reach a bus); password_file: its first
    line is the password (read when the peer opens); backend: the outbox's storage
    (bridge.endpoints.mqtt_store; default in memory); spool: {"dir", "max_bytes", "sync_interval",
    "sync_frames"} for a durable one (its files in DIR/CLIENT_ID; SpoolError if unusable); brokers: the
    list to fail over across (default: host:port alone); protocol: "5", "3.1.1" or "auto"; profile: the
    broker's bridge.endpoints.broker_profiles.BrokerProfile (default generic): its fixed telemetry and status
    topics, retained messages or not, frames per message under its payload cap, its publishes/s cap."""

    def __init__(self, reactor: Reactor, router, *, host: str, port: int, prefix: str, gateway: str,
                 channels: list, client_id: str, username: str | None = None, password_file: str | None = None,
                 qos: int = 1, fmt: str = "native", per_id: bool = False, keepalive: int = DEFAULT_KEEPALIVE_S,
                 session_expiry: int = DEFAULT_SESSION_EXPIRY_S, share: str | None = None,
                 sources: tuple = (), read_only: bool = True, max_age: float = DEFAULT_MAX_AGE_S,
                 tls=None, fd: bool = False, version: str = "",
                 routing=(None, None, None), name: str | None = None, backend=None, spool: dict | None = None,
                 brokers: tuple | None = None, protocol: str = "5", profile: bp.BrokerProfile | None = None) -> None:
        self.reactor = reactor
        self.router = router
        self.name = name or f"mqtt://{host}:{port}/{prefix}"
        self.counters = Counters()
        self.prefix, self.gateway, self.channels = prefix, gateway, list(channels)
        self.qos, self.fmt, self.per_id = qos, fmt, per_id
        self.share, self.sources, self.read_only = share, tuple(sources), read_only
        self.max_age = max_age
        self.client_id = client_id
        self.profile = profile = profile or bp.profile("generic")
        self.status_topic = bp.status_topic(profile, prefix, gateway)
        self._retain = profile.retain  # a hub without retained messages: status at connect and on change only
        self._tx_topics = {f"{prefix}/{gateway}/{iface}/tx": ch for ch, iface in enumerate(self.channels)}
        self._received = PublishedFrames()  # per topic: gaps and redeliveries of what we consume
        self._connected = False
        self._closing = False
        self._refused = False  # the broker's CONNACK refused us: on_disconnect does not count it again
        self._subscribing: dict[int, list] = {}  # SUBSCRIBE mid -> its (topic, options): to ask again if refused
        self._short = 0  # connections in a row that ended within STABLE_S of their CONNACK
        self._started = time.time()
        self._fd_capable, self._version = fd, version
        self._health = HealthReport(self._can_buses, reactor.time())
        self._health_due = 0.0  # reactor time the next status with health is due
        self._bus_states: dict = {}  # the bus states the last status reported
        self._bad = BadMessageLog(reactor, self.name)
        self._auto = protocol == "auto"  # MQTT 5 until a broker refuses it, then 3.1.1 for good
        self.mqtt = mqtt_version("5" if self._auto else protocol)
        self._fallback = False
        self._login = (username, password_file, tls, keepalive, session_expiry)
        max_bytes = {}
        if spool is not None:
            from bridge.endpoints.outbox_spool import SpoolBackend

            backend = SpoolBackend(os.path.join(spool["dir"], _file_name(client_id)), self.counters,
                                   max_bytes=spool["max_bytes"], sync_interval=spool["sync_interval"],
                                   sync_frames=spool["sync_frames"], call_later=reactor.call_later)
            max_bytes = {"max_bytes": spool["max_bytes"]}
        rate = bp.publish_rate(profile, time.monotonic())
        self.outbox = Outbox(self.counters, [bp.telemetry_topic(profile, prefix, gateway, iface, fmt)
                                             for iface in self.channels],
                             self._publish, numbered=fmt == "native" and not per_id, per_id=per_id,
                             backend=backend, max_age=max_age, max_frames=bp.frames_per_message(profile, fmt),
                             rate=rate, rate_clock=time.monotonic, wake=self._wake, **max_bytes)
        self.client = self._new_client()
        self.connection = Connection(reactor, self.client, brokers=tuple(brokers or (Broker(host, port),)),
                                     tls=tls, name=self.name, counters=self.counters, on_change=self._gauges)
        self._misc = reactor.call_every(MISC_INTERVAL_S, self._tick)
        self._gauges()
        router.add_peer(self, *routing)
        self.connection.start()

    def _new_client(self) -> _Client:
        """A paho client speaking self.mqtt's version, our callbacks set (paho fixes the version at creation)."""
        username, password_file, tls, keepalive, session_expiry = self._login
        v = self.mqtt
        c = new_client(v, self.client_id, username=username, password_file=password_file, tls=tls)
        c.max_queued_messages_set(PAHO_QUEUE_LIMIT)
        c.max_inflight_messages_set(0)  # no limit of paho's: the outbox keeps the window (and paho would
        #                                  otherwise queue and resend by itself, out of our order)
        c.will_set(self.status_topic, self._status("offline"), qos=1, retain=self._retain,
                   properties=v.publish_props("json"))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect_async("localhost", 1883, keepalive, **v.connect_args(session_expiry))  # the socket is ours
        return c

    def _tick(self) -> None:
        self.connection.tick()
        self.outbox.sweep()  # count frames going stale in an outage as they do, not at reconnect
        if self._connected and (self.reactor.time() >= self._health_due or self._states_now() != self._bus_states):
            self._publish_online(self.client)
        self.connection.write_now()
        self._gauges()

    def _can_buses(self) -> list:
        return [bus for bus in self.router.buses.values() if isinstance(bus, SocketCanEndpoint)]

    def _states_now(self) -> dict:
        return {bus.name: bus.counters.gauges.get("bus_state") for bus in self._can_buses()}

    def _publish_online(self, client) -> None:
        """The retained online status with the buses' health; the outbox keeps its place in the window."""
        info = client.publish(self.status_topic, self._status("online"), qos=1, retain=self._retain,
                              properties=self.mqtt.publish_props("json"))
        self.outbox.control(info.mid)

    # ---------------------------------------------------------------------------- connection state
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.mqtt.failed(reason_code):  # bad user name or password, not authorized, ...
            self._refused = True
            if self._auto and self.mqtt.name == "5" and refused_version(reason_code):
                self._fallback = True  # the next client speaks 3.1.1 (made in on_disconnect, after paho closed)
                log.info("%s: %s refuses MQTT 5 (%s): speaking MQTT 3.1.1", self.name, self.connection.node,
                         reason_code)
                return
            self.connection.failed("connect_refused", f"broker refused the connection: {reason_code}")
            return  # paho closes the socket: on_disconnect follows
        self._connected = True
        self.connection.up()
        log.info("%s: connected to %s, MQTT %s (session present: %s)", self.name, self.connection.node,
                 self.mqtt.name, flags.session_present)
        self._publish_online(client)
        if not self.read_only:
            sources = [f"{self.prefix}/{s}/rx" + ("/+" if self.per_id else "") for s in self.sources]
            if self.share and self.mqtt.name == "3.1.1" and not self.counters.errors["share_unsupported"]:
                self.counters.errors["share_unsupported"] += 1
                log.warning("%s: the broker speaks MQTT 3.1.1 only: share=%s is not applied (every consumer "
                            "gets every message)", self.name, self.share)
            self._subscribing.clear()  # the last connection's unanswered SUBSCRIBEs
            self._subscribe(self.mqtt.subscriptions(list(self._tx_topics), sources, self.qos, self.share))
        self.outbox.connected(self.mqtt.receive_maximum(properties))  # resends what the last connection left
        self._gauges()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected
        self._connected = False
        self.outbox.lost(client)  # before paho's next CONNACK could resend them ahead of older ones
        if self._closing:
            return
        refused, self._refused = self._refused, False
        if self._fallback:  # protocol=auto: the same node again, now in 3.1.1
            self._fallback = False
            self.mqtt = Mqtt311()
            self.client = self._new_client()
            self.connection.use(self.client)
            self.connection.schedule_retry(move=False)
            self._gauges()
            return
        lived = self.connection.down()
        if self.mqtt.taken_over(reason_code):
            self.counters.errors["session_taken_over"] += 1
        if was:
            self.counters.errors["disconnected"] += 1
            self._lost_line(reason_code, lived)
        elif not refused:  # e.g. the broker's TLS refused our certificate after the handshake (TLS 1.3)
            self.connection.failed("connect_failed",
                                   f"connection closed before the broker accepted it ({reason_code})")
        self._gauges()

    def _lost_line(self, reason_code, lived: float) -> None:
        """Log a lost connection; connections that keep ending soon after the CONNACK are told once (two
        clients with one client id take each other's session: Mosquitto 2.0 just closes the old one)."""
        if lived >= STABLE_S:
            self._short = 0
        else:
            self._short += 1
        if self._short <= 1:
            log.warning("%s: connection lost (%s); frames wait in the outbox (max_age %s s)",
                        self.name, reason_code, self.max_age)
        elif self._short == 2:
            log.warning("%s: connection lost again within %g s of the CONNACK (%s): a broker restarting, or "
                        "another client with our client id %r (two gateways with the same gateway= or client_id=)? "
                        "Told once; counted in errors{disconnected}", self.name, STABLE_S, reason_code, self.client_id)

    def _subscribe(self, subs: list) -> None:
        rc, mid = self.client.subscribe(subs)
        if rc == paho.MQTT_ERR_SUCCESS:
            self._subscribing[mid] = subs

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """A refused subscription (an ACL; or a cluster busy electing leaders: NATS answers 0x80 when its
        JetStream times out) is asked again after SUBSCRIBE_RETRY_S while the connection lasts."""
        subs = self._subscribing.pop(mid, [])
        again = []
        for i, rc in enumerate(reason_codes):
            if self.mqtt.failed(rc):
                self.counters.errors["subscribe_refused"] += 1
                log.warning("%s: broker refused a subscription: %s (asked again every %g s)", self.name, rc,
                            SUBSCRIBE_RETRY_S)
                if i < len(subs):
                    again.append(subs[i])
        if again:
            client_now = self.client
            self.reactor.call_later(SUBSCRIBE_RETRY_S, lambda: self._connected and self.client is client_now
                                    and self._subscribe(again))

    def _status(self, state: str) -> bytes:
        status = {"status": state, "gateway": self.gateway, "version": self._version,
                  "interfaces": self.channels, "fd": self._fd_capable, "format": self.fmt,
                  "tx": not self.read_only, "started": round(self._started, 3)}
        if state == "online":  # the will and a clean stop say offline: no health in them
            status.update(broker=self.connection.node, protocol=self.mqtt.name)  # the node in use
            now = self.reactor.time()
            status["buses"] = self._health.report(now)
            self._bus_states = {name: h["state"] for name, h in status["buses"].items()}
            # no retained status (a hub): not republished on a timer, every message costs its quota
            self._health_due = now + STATUS_HEALTH_S if self._retain else float("inf")
        return json.dumps(status, separators=(",", ":")).encode()

    # ---------------------------------------------------------------------------- bus -> broker
    def send_frames(self, channel: int, frames: list) -> bool:
        """Take a batch read from bus `channel`; published at the end-of-pass flush."""
        self.outbox.take(channel, frames)
        return True

    def _wake(self, delay: float) -> None:
        """The outbox waits for a publish token (a broker's publishes/s cap): pump again then."""
        def again():
            if not self._closing:
                self.outbox.woken()
                self.connection.write_now()
        self.reactor.call_later(delay, again)

    def flush(self) -> None:
        """End of the loop pass: the outbox publishes (or stores) this pass's frames, and what paho queued
        leaves now, in the pass that read the frames."""
        self.outbox.flush()
        self.connection.write_now()
        self._gauges()

    def _payload(self, m: Message) -> bytes:
        """The PUBLISH payload of a stored message, in our format."""
        if m.count is not None:
            return mp.native_head(m.count, self.outbox.pub_dropped(m.topic)) + m.records
        if self.fmt == "native":
            return native.STREAM_PREAMBLE + m.records
        frames = mp.decode_native(native.STREAM_PREAMBLE + m.records)
        return mp.encode(self.fmt, self.gateway, self.channels[m.channel], frames)

    def _publish(self, m: Message, age: float) -> int | None:
        """The outbox's send: hand one message to paho -> its mid, or None if paho refused it."""
        payload = self._payload(m)
        props = self.mqtt.publish_props(self.fmt, self.outbox.expiry(age))
        info = self.client.publish(m.topic, payload, qos=self.qos, properties=props)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            return None
        self.counters.tx_bytes += len(payload)
        return info.mid

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ok = not self.mqtt.failed(reason_code)
        if not self.outbox.acknowledged(mid, ok) or ok:
            return
        self.counters.errors["publish_refused"] += 1  # e.g. "Not authorized": an ACL refused our rx topic
        if self.connection.last_error != str(reason_code):
            log.warning("%s: broker refused a publish: %s", self.name, reason_code)
            self.connection.last_error = str(reason_code)

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
            # format= is what we publish; what we read is decoded as its publisher wrote it (docs/mqtt.md)
            frames, count = mp.decode_counted(self.mqtt.message_format(msg), msg.payload)
        except mp.MqttPayloadError as exc:
            self.counters.errors["bad_payload"] += 1
            self.counters.errors[f"bad_payload_{exc.reason}"] += 1
            self._bad.bad(topic, exc.reason, f"dropped a malformed message on {topic}: {exc}")
            return
        if count is not None:
            frames = self._account(topic, count, frames)
        if self.max_age and not self.mqtt.has_expiry(msg):  # no broker expiry (3.1.1): max_age is ours
            frames, stale = mp.fresh_frames(frames, time.time_ns(), self.max_age)
            if stale:
                self.counters.drop("stale", stale)
        self.counters.rx_frames += len(frames)
        self.counters.rx_bytes += len(msg.payload)
        if frames:
            self.router.from_peer(self, channel, frames)

    def _account(self, topic: str, count: tuple[int, int, int], frames: list) -> list:
        """A counted message: gaps before it not explained by PUB_DROPPED go to dropped lost_in_transit (a
        latest figure: set, not added); -> its frames not seen before."""
        skip, lost = self._received.observe(topic, count[0], count[1], len(frames), count[2])
        if lost or "lost_in_transit" in self.counters.dropped:
            self.counters.dropped["lost_in_transit"] = self._received.lost
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
        self.counters.gauges.update(self.outbox.gauges(), state="up" if self._connected else "down",
                                    broker=self.connection.node, protocol=self.mqtt.name,
                                    **getattr(self.outbox.backend, "gauges", dict)(),
                                    **({"last_error": self.connection.last_error}
                                       if self.connection.last_error else {}))

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self) -> None:
        """Publish offline (retained), disconnect cleanly (no will). What was never sent is counted
        dropped{closed}; what the broker has not acknowledged yet is unconfirmed_frames (it may have it)."""
        if self._closing:
            return
        self._closing = True
        self._misc.cancel()
        self.connection.close()
        self.router.remove_peer(self)
        if self._connected:
            self.client.publish(self.status_topic, self._status("offline"), qos=0, retain=self._retain,
                                properties=self.mqtt.publish_props("json"))
            self.client.disconnect()
            for _ in range(8):  # the socket is non-blocking: push the last packets out if they fit
                if self.client.loop_write() != paho.MQTT_ERR_SUCCESS or not self.client.want_write():
                    break
        self.outbox.close()
        self._bad.summary()
        self.connection.release()
        self._gauges()


def _file_name(client_id: str) -> str:
    """A client id as one directory name (the spool of each MQTT peer of a config apart)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in client_id)
    return name if name.strip(".") else "client"


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

