"""What an MQTT peer assumes of the protocol version, in one place: MQTT 5 and MQTT 3.1.1 (paho-mqtt 2.x),
two classes with the same methods; nothing else in bridge.endpoints.mqtt* reads MQTT 5 properties, reason
codes or subscribe options. `protocol=auto` starts with MQTT 5 and falls back to 3.1.1 when the broker
refuses the version (refused_version) (nats-server 2.9, RabbitMQ 3.10, Azure IoT Hub).

MQTT 5 features used: Session Expiry Interval and Maximum Packet Size in CONNECT, Receive Maximum from
CONNACK (our window, bridge.endpoints.mqtt_outbox), Message Expiry Interval, Payload Format Indicator and
Content Type on PUBLISH, no-local and shared subscriptions, PUBACK / SUBACK / DISCONNECT reason codes.
"""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.codec import mqtt_payload as mp
from bridge.codec import native

MAX_PACKET_BYTES = 1 << 20  # CONNECT Maximum Packet Size: the broker sends nothing bigger (paho buffers a packet whole)
RECEIVE_MAXIMUM_DEFAULT = 65535  # MQTT 5 3.2.2.3.3: a CONNACK without Receive Maximum means 65,535
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another client connected with our client id
UNSUPPORTED_VERSION = (0x84, 0x01)  # CONNACK: MQTT 5 "Unsupported Protocol Version", 3.1.1 return code 1
WINDOW_311 = 65535  # 3.1.1 has no Receive Maximum: the outbox's own WINDOW_MAX bounds what is in flight


class Mqtt5:
    """MQTT 5 as canbridge uses it (module docstring)."""

    name = "5"
    protocol = paho.MQTTv5

    def connect_args(self, session_expiry: int) -> dict:
        """Keyword arguments of paho's connect_async beyond host, port and keepalive: session_expiry s
        (0: a clean session each time)."""
        props = Properties(PacketTypes.CONNECT)
        if session_expiry:
            props.SessionExpiryInterval = session_expiry
        props.MaximumPacketSize = MAX_PACKET_BYTES
        return {"clean_start": not session_expiry, "properties": props}

    def publish_props(self, fmt: str, expiry_s: int | None = None) -> Properties:
        """PUBLISH properties of a payload in `fmt`; expiry_s: Message Expiry Interval (None: none)."""
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1 if fmt in mp.UTF8_FORMATS else 0
        props.ContentType = mp.CONTENT_TYPES[fmt]
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        return props

    def subscriptions(self, topics: list, sources: list, qos: int, share: str | None) -> list:
        """(topic, options) for SUBSCRIBE: our own `topics` (tx) and mirrored `sources` (rx): no-local, or
        $share/GROUP/... (MQTT 5 forbids no-local on a shared subscription)."""
        subs = [(t, SubscribeOptions(qos=qos)) for t in topics]
        for t in sources:
            if share:
                subs.append((f"$share/{share}/{t}", SubscribeOptions(qos=qos)))
            else:
                subs.append((t, SubscribeOptions(qos=qos, noLocal=True)))
        return subs

    def receive_maximum(self, properties) -> int:
        """The broker's Receive Maximum from CONNACK properties: how many qos 1 messages it takes unacknowledged."""
        return getattr(properties, "ReceiveMaximum", RECEIVE_MAXIMUM_DEFAULT) if properties else RECEIVE_MAXIMUM_DEFAULT

    def failed(self, reason_code) -> bool:
        """A CONNACK / PUBACK / SUBACK reason code that says no."""
        return reason_code.is_failure

    def taken_over(self, reason_code) -> bool:
        """The broker closed us because another client connected with our client id."""
        return getattr(reason_code, "value", None) == SESSION_TAKEN_OVER

    def has_expiry(self, msg) -> bool:
        """A received message carries a Message Expiry Interval: the broker bounded its age (else the
        consumer does, from the frames' timestamps)."""
        return msg.properties is not None and getattr(msg.properties, "MessageExpiryInterval", None) is not None

    def message_format(self, msg) -> str:
        """The payload format of a received message: its Content Type (our gateways set it), else sniffed."""
        content_type = getattr(msg.properties, "ContentType", None) if msg.properties is not None else None
        return _BY_CONTENT_TYPE.get(content_type) or sniff_format(msg.payload)


class Mqtt311:
    """MQTT 3.1.1 as canbridge uses it, and what it lacks (docs/mqtt.md "MQTT 3.1.1"): no Session Expiry
    (a persistent session is clean session = 0, kept as long as the broker keeps it), no message expiry
    (max_age is the consumer's, from the frames' timestamps), no Content Type (a consumer sniffs the
    format), no no-local (the gateway-name check drops our own frames), no shared subscriptions (refused
    at configuration), no reason codes on PUBACK or SUBACK beyond 0x80 (failure)."""

    name = "3.1.1"
    protocol = paho.MQTTv311

    def connect_args(self, session_expiry: int) -> dict:
        return {"clean_start": not session_expiry}

    def publish_props(self, fmt: str, expiry_s: int | None = None) -> None:
        return None

    def subscriptions(self, topics: list, sources: list, qos: int, share: str | None) -> list:
        """Plain subscriptions: share= cannot apply (refused at start with protocol=3.1.1; after an auto
        fall-back the peer says so and every consumer gets every message)."""
        return [(t, qos) for t in [*topics, *sources]]

    def receive_maximum(self, properties) -> int:
        return WINDOW_311

    def failed(self, reason_code) -> bool:
        return reason_code.is_failure

    def taken_over(self, reason_code) -> bool:
        return False  # 3.1.1 closes the old connection without saying why

    def has_expiry(self, msg) -> bool:
        return False  # no message expiry in 3.1.1: max_age is the consumer's, from the frames' timestamps

    def message_format(self, msg) -> str:
        return sniff_format(msg.payload)


_BY_CONTENT_TYPE = {ct: fmt for fmt, ct in mp.CONTENT_TYPES.items()}


def sniff_format(payload: bytes) -> str:
    """A payload's format by its first bytes (no Content Type: MQTT 3.1.1, or a foreign publisher): native
    starts with its magic, json with '{' (after white space), anything else is read as candump lines."""
    if payload[:4] == native.MAGIC:
        return "native"
    return "json" if payload.lstrip()[:1] == b"{" else "candump"


def refused_version(reason_code) -> bool:
    """A CONNACK that refuses the protocol version (protocol=auto then speaks 3.1.1)."""
    return getattr(reason_code, "value", None) in UNSUPPORTED_VERSION


def version(name: str):
    """"5" or "3.1.1" -> its class instance (protocol=auto starts with "5")."""
    return Mqtt311() if name == "3.1.1" else Mqtt5()
