"""What a broker accepts, per kind: `broker=generic|nats|azure-iot-hub|aws-iot` (issue 21; docs/mqtt.md
"Brokers and cloud hubs"). Pure: the config checks a gateway's topics and options against its profile at
start (a clear error instead of a silent disconnect loop), the peer caps frames per message and publishes
per second from it.

Sources of the limits:
  generic         MQTT 3.1.1 / 5: a topic is 1..65535 bytes of UTF-8; '+' and '#' are wildcards (not in
                  a PUBLISH topic), no NUL (OASIS MQTT 3.1.1 section 4.7, MQTT 5 section 4.7)
  nats            nats-server's MQTT gateway (2.9, "MQTT Implementation Details"): MQTT 3.1.1 only, qos 0/1
                  (qos 2 closes the connection), an MQTT topic becomes a NATS subject, so a topic level may
                  not hold '.' or white space (the connection is closed; tests/test_nats_cluster.py)
  azure-iot-hub   "Communicate with an IoT hub using the MQTT protocol": MQTT 3.1.1 only, port 8883 with
                  TLS, client id = device id, telemetry only on devices/{device_id}/messages/events/
                  (with an optional property bag after it: URL-encoded key=value pairs joined by '&',
                  the system properties $.ct content type and $.ce content encoding among them, which
                  message routing needs to query a body), messages <= 256 KB, qos 0/1, no retained
                  messages (the retain flag becomes an application property), commands on
                  devices/{device_id}/messages/devicebound/#
  aws-iot         "AWS IoT Core message broker and protocol limits and quotas": MQTT 3.1.1 and 5, payload
                  <= 128 KB, a topic <= 256 bytes with at most 7 forward slashes, 100 publishes/s per
                  connection, client id <= 128 bytes, qos 0/1, port 8883 with TLS
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from bridge.codec import mqtt_payload as mp

PROTOCOLS = ("5", "3.1.1", "auto")

# Worst-case encoded bytes per frame and per message head (a 64-byte CAN FD frame with an extended ID;
# the json head with a 64-character gateway name), measured with bridge.codec.mqtt_payload.encode
# (tests/test_broker_profiles.py checks these stay true)
FRAME_BYTES = {"native": 84, "json": 256, "candump": 176}
HEAD_BYTES = {"native": 6 + 16, "json": 256, "candump": 0}


class ProfileError(ValueError):
    """An option or topic the chosen broker does not accept; the message says which and why."""


@dataclass(frozen=True)
class BrokerProfile:
    """name; protocol: what to speak ("5", "3.1.1", "auto": try 5, fall back on refusal); protocols: what
    the broker accepts; max_payload (bytes) and max_topic_bytes; max_topic_slashes (None: no limit);
    level_forbidden: characters a topic level may not hold besides the MQTT wildcards; publish_rate
    (publishes/s per connection, None: no cap); retain: retained messages work; qos_max; topic: a fixed
    telemetry topic template ({device}: the device id) or None for our tree; client_id_is_device: the
    client id must be the device id; subscribe: arbitrary subscriptions (source=, tx topics) allowed;
    tls: the broker only listens with TLS (mqtts://); property_bag: the fixed topic takes a property bag,
    where the content type and encoding go (MQTT 3.1.1 has no content type property)."""

    name: str
    protocol: str = "5"
    protocols: tuple = ("5", "3.1.1")
    max_payload: int = 256 * 1024 * 1024
    max_topic_bytes: int = 65535
    max_topic_slashes: int | None = None
    level_forbidden: str = ""
    publish_rate: float | None = None
    retain: bool = True
    qos_max: int = 2
    topic: str | None = None
    client_id_is_device: bool = False
    max_client_id: int = 65535
    subscribe: bool = True
    tls: bool = False
    property_bag: bool = False


PROFILES = {
    "generic": BrokerProfile("generic", protocol="auto"),
    "nats": BrokerProfile("nats", protocol="3.1.1", protocols=("3.1.1",), level_forbidden=". \t\r\n", qos_max=1),
    "azure-iot-hub": BrokerProfile("azure-iot-hub", protocol="3.1.1", protocols=("3.1.1",),
                                   max_payload=256 * 1024, retain=False, qos_max=1,
                                   topic="devices/{device}/messages/events/", client_id_is_device=True,
                                   max_client_id=128, subscribe=False, tls=True, property_bag=True),
    "aws-iot": BrokerProfile("aws-iot", protocol="5", max_payload=128 * 1024, max_topic_bytes=256,
                             max_topic_slashes=7, publish_rate=100.0, qos_max=1, max_client_id=128, tls=True),
}


def profile(name: str) -> BrokerProfile:
    """`broker=NAME` -> its profile; ProfileError listing the names for an unknown one."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"broker must be one of {', '.join(PROFILES)}, got {name!r}") from None


def check_topic(p: BrokerProfile, topic: str, what: str = "topic") -> str:
    """The topic (a PUBLISH topic or a subscription filter) if broker p takes it, else ProfileError saying
    which level and which character (wildcards are the caller's business: a filter may hold them)."""
    size = len(topic.encode())
    if not 1 <= size <= p.max_topic_bytes:
        raise ProfileError(f"{what} {topic!r}: {size} bytes; {p.name} takes 1..{p.max_topic_bytes}")
    if "\0" in topic:
        raise ProfileError(f"{what} {topic!r}: holds a NUL character")
    if p.max_topic_slashes is not None and topic.count("/") > p.max_topic_slashes:
        raise ProfileError(f"{what} {topic!r}: {topic.count('/')} levels separators; {p.name} takes at most "
                           f"{p.max_topic_slashes} '/' (use a shorter prefix or gateway name)")
    for level in topic.split("/"):
        bad = sorted({c for c in level if c in p.level_forbidden})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise ProfileError(f"{what} {topic!r}: level {level!r} holds {shown}, which {p.name} refuses "
                               f"(it closes the connection); set gateway= or the prefix without it")
    return topic


def telemetry_topic(p: BrokerProfile, prefix: str, gateway: str, iface: str, fmt: str = "native") -> str:
    """Where frames of bus `iface` in payload format `fmt` are published: PREFIX/GATEWAY/IFACE/rx, or the
    hub's fixed topic with the interface and the content type in its property bag (Azure:
    devices/GATEWAY/messages/events/iface=can0&$.ct=application%2Fjson&$.ce=utf-8 for json)."""
    if p.topic is None:
        return f"{prefix}/{gateway}/{iface}/rx"
    return p.topic.format(device=gateway) + _property_bag(p, fmt, iface=iface)


def status_topic(p: BrokerProfile, prefix: str, gateway: str) -> str:
    """Where the gateway's status (JSON, and its will) goes: PREFIX/GATEWAY/status, or on a hub with a fixed
    topic that topic with type=status in its property bag (Azure: devices/GATEWAY/messages/events/type=status
    &$.ct=application%2Fjson&$.ce=utf-8)."""
    if p.topic is None:
        return f"{prefix}/{gateway}/status"
    return p.topic.format(device=gateway) + _property_bag(p, "json", type="status")


def _property_bag(p: BrokerProfile, fmt: str, **props: str) -> str:
    """key=value&... (values URL-encoded), then the system properties $.ct (the MQTT 5 content type we set,
    bridge.codec.mqtt_payload.CONTENT_TYPES) and $.ce (utf-8 for the text formats), where p takes them."""
    pairs = list(props.items())
    if p.property_bag:
        pairs.append(("$.ct", mp.CONTENT_TYPES[fmt]))
        if fmt in mp.UTF8_FORMATS:
            pairs.append(("$.ce", "utf-8"))
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)


def azure_username(host: str, device: str) -> str:
    """Azure IoT Hub's MQTT user name for a device ("Using the MQTT protocol directly (as a device)"):
    {iothubhostname}/{device_id}/?api-version=2021-04-12 (the password is a SAS token, or none with an
    X.509 client certificate)."""
    return f"{host}/{device}/?api-version=2021-04-12"


def frames_per_message(p: BrokerProfile, fmt: str, limit: int = mp.MAX_MESSAGE_FRAMES) -> int:
    """The most frames one message of `fmt` may carry so that it fits p.max_payload in the worst case."""
    fit = (p.max_payload - HEAD_BYTES[fmt]) // FRAME_BYTES[fmt]
    if fit < 1:
        raise ProfileError(f"{p.name}: a message of {p.max_payload} bytes cannot hold one {fmt} frame")
    return min(limit, fit)


def check_options(p: BrokerProfile, *, protocol: str, qos: int, client_id: str, gateway: str,
                  sources: tuple = (), read_only: bool = True, tls: bool = False) -> str:
    """The options of one MQTT peer against broker p -> the protocol to speak ("" given: p's own);
    ProfileError naming the option otherwise."""
    protocol = protocol or p.protocol
    if protocol == "auto" and "5" not in p.protocols:
        protocol = p.protocol  # no MQTT 5 to try: the hub's version at once (Azure would refuse 5 first)
    if protocol not in PROTOCOLS:
        raise ProfileError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol != "auto" and protocol not in p.protocols:
        raise ProfileError(f"protocol={protocol}: {p.name} speaks MQTT {' and '.join(p.protocols)} only")
    if qos > p.qos_max:
        raise ProfileError(f"qos={qos}: {p.name} takes qos 0..{p.qos_max}")
    if len(client_id.encode()) > p.max_client_id:
        raise ProfileError(f"client_id: {p.name} takes at most {p.max_client_id} bytes")
    if p.client_id_is_device and client_id != gateway:
        raise ProfileError(f"client_id={client_id!r}: {p.name} needs the device id as client id "
                           f"(gateway={gateway!r}); leave client_id unset")
    if not p.subscribe and (sources or not read_only):
        raise ProfileError(f"{p.name} takes no subscriptions of ours: source= and read_only=0 are not supported")
    if p.tls and not tls:
        raise ProfileError(f"{p.name} listens with TLS only: use mqtts://")
    return protocol


class PublishRate:
    """A token bucket for a broker's publishes-per-second cap: allow(now) takes a token or says no;
    wait(now) -> seconds until one is there. Any window of T seconds holds at most rate * T + burst
    publishes. now: monotonic seconds, passed in."""

    def __init__(self, rate: float, burst: float = 1.0, now: float = 0.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = now

    def _fill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def allow(self, now: float) -> bool:
        self._fill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self, now: float) -> float:
        self._fill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


def publish_rate(p: BrokerProfile, now: float = 0.0) -> PublishRate | None:
    """The limiter for broker p's cap, or None: one publish per 1/(cap - 1) s, no burst, so that no window
    of one second holds more than the cap (frames wait and go out in fuller messages meanwhile)."""
    if p.publish_rate is None:
        return None
    return PublishRate(p.publish_rate - 1, burst=1.0, now=now)
