"""What an MQTT peer assumes of the protocol version, in one place: MQTT 5 (paho-mqtt 2.x). A 3.1.1 variant
(issue 21) is a second class with the same methods; nothing else in bridge.endpoints.mqtt* reads MQTT 5
properties, reason codes or subscribe options.

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

MAX_PACKET_BYTES = 1 << 20  # CONNECT Maximum Packet Size: the broker sends nothing bigger (paho buffers a packet whole)
RECEIVE_MAXIMUM_DEFAULT = 65535  # MQTT 5 3.2.2.3.3: a CONNACK without Receive Maximum means 65,535
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another client connected with our client id


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
