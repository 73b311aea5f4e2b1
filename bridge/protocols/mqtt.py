"""MQTT fleet peers (docs/mqtt.md): `mqtt://[USER@]BROKER[:PORT][,BROKER[:PORT]...]/PREFIX` (several brokers:
a cluster, failed over in turn) and `mqtts://` (TLS: tls_ca, tls_cert, tls_key as for TCP peers).
Payloads: bridge.codec.mqtt_payload; the client: bridge.endpoints.mqtt
(paho-mqtt 2.x, the optional extra `canbridge[mqtt]`, imported only when such a URL is used).

Options (URL query or [[peer]] keys): gateway= (default: the host name), client_id=, qos=0|1 (default 1),
format=native|json|candump, topics=batch|per-id, keepalive= (s), session_expiry= (s, 0: clean session),
share=GROUP (shared subscription for the source= topics), source=GW/IFACE[,GW/IFACE...] (MQTT + wildcards
allowed), password_file=PATH (first line; never a password in the URL), read_only= (default 1 for MQTT: frames
from the broker reach a bus only with read_only=0), max_age= (s, default 60), protocol=5|3.1.1|auto (default
auto: MQTT 5, 3.1.1 when the broker refuses 5), broker=generic|nats|azure-iot-hub|aws-iot (what the broker
accepts, bridge.endpoints.broker_profiles: topics checked at start; the hubs' presets: docs/mqtt.md),
brokers=HOST[:PORT],... (more nodes after the URL's), spool=DIR (a durable outbox on disk, off by default),
spool_max=BYTES (K/M/G suffixes; default 64M), spool_sync=SECONDS[,FRAMES] (the fsync window, default
0.1,1000), and the usual filter=, inbound_filter=, write_allow=, rate=, burst=.
"""

from __future__ import annotations

import os
from dataclasses import replace
from urllib.parse import unquote, urlsplit

from bridge import __version__
from bridge.codec import mqtt_payload
from bridge.errors import ConfigError
from bridge.protocols.base import ACCESS, FILTERS, TLS, PeerProtocolBase
from bridge.security import access as access_control

DEFAULT_PORT = 1883  # IANA "mqtt"
DEFAULT_TLS_PORT = 8883  # IANA "secure-mqtt"
DEFAULT_PREFIX = "canbridge"
MAX_TOPIC_LEVEL = 64  # gateway / share names: short topic levels keep every message small
_OPTIONS = ("gateway", "client_id", "qos", "format", "topics", "keepalive", "session_expiry", "share",
            "source", "password_file", "read_only", "max_age", "protocol", "broker", "brokers", "spool",
            "spool_max", "spool_sync")
# broker=: the profiles whose limits the endpoint honours (bridge.endpoints.broker_profiles)
BROKER_KINDS = ("generic", "nats", "azure-iot-hub", "aws-iot")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(value, what: str, where: str, lo: int) -> int:
    text = str(value).strip().upper().removesuffix("B")
    unit = text[-1:] if text[-1:] in "KMG" else ""
    try:
        n = int(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        n = -1
    if n < lo:
        raise ConfigError(f"{where}: {what} must be a size in bytes >= {lo} (K, M, G allowed), got {value!r}")
    return n


def _level(value, what: str, where: str, wildcard: bool = False) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TOPIC_LEVEL or "/" in value \
            or "#" in value or ("+" in value and not (wildcard and value == "+")) or value.startswith("$"):
        raise ConfigError(f"{where}: {what}: {value!r} is not a topic level (1..{MAX_TOPIC_LEVEL} characters, "
                          f"no '/', '#', '+'{' except a whole + level' if wildcard else ''})")
    return value


def _int(value, lo: int, hi: int, what: str, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = lo - 1
    if isinstance(value, bool) or not lo <= n <= hi:
        raise ConfigError(f"{where}: {what} must be an integer {lo}..{hi}, got {value!r}")
    return n


class Mqtt(PeerProtocolBase):
    scheme, family, transport = "mqtt", "mqtt", "tcp"
    default_port = DEFAULT_PORT
    host_list = True  # several brokers in the URL (bridge.daemon.config leaves the list to configure)
    options = frozenset({FILTERS, ACCESS})
    extra_options = _OPTIONS
    option_hints = {
        "timeout": "MQTT peers use keepalive= (the broker and paho notice a dead link)",
        "overflow": "MQTT peers queue frames while the broker is away and drop the oldest (queue_full)",
        "tls_ca": "use mqtts:// for TLS", "tls_cert": "use mqtts:// for TLS", "tls_key": "use mqtts:// for TLS",
    }

    @classmethod
    def configure(cls, peer, where: str) -> None:
        try:  # paho-mqtt is the optional extra canbridge[mqtt]
            from bridge.endpoints.mqtt import DEFAULT_MAX_AGE_S, default_client_id, default_gateway
        except ImportError as exc:
            raise ConfigError(f"{where}: MQTT peers need paho-mqtt 2.x "
                              f"(pip install 'canbridge[mqtt]'): {exc}") from None

        parts = urlsplit(peer.url)
        if parts.password is not None:
            raise ConfigError(f"{where}: no password in the URL; use password_file=PATH")
        x = peer.extra
        prefix = unquote(parts.path).strip("/") or DEFAULT_PREFIX
        for level in prefix.split("/"):
            _level(level, "the URL path (topic prefix)", where)
        x["prefix"] = prefix
        x["username"] = unquote(parts.username) if parts.username else None
        x["gateway"] = _level(x.get("gateway") or default_gateway(), "gateway", where)
        kind = x.get("broker", "generic")
        if kind not in BROKER_KINDS:
            raise ConfigError(f"{where}: broker must be one of {', '.join(BROKER_KINDS)}, got {kind!r}")
        if kind == "azure-iot-hub":  # the hub's device: client id and user name are the device id's
            x.setdefault("client_id", x["gateway"])
            if not x["username"]:
                from bridge.endpoints.broker_profiles import azure_username

                x["username"] = azure_username(peer.host, x["gateway"])
        x["client_id"] = str(x.get("client_id") or default_client_id(x["gateway"], prefix))
        if not 1 <= len(x["client_id"]) <= 64:
            raise ConfigError(f"{where}: client_id must be 1..64 characters")
        x["qos"] = _int(x.get("qos", 1), 0, 1, "qos", where)
        fmt = x.get("format", "native")
        if fmt not in mqtt_payload.FORMATS:
            raise ConfigError(f"{where}: format must be one of {', '.join(mqtt_payload.FORMATS)}, got {fmt!r}")
        x["format"] = fmt
        topics = x.get("topics", "batch")
        if topics not in ("batch", "per-id"):
            raise ConfigError(f"{where}: topics must be batch or per-id, got {topics!r}")
        x["per_id"] = topics == "per-id"
        x["keepalive"] = _int(x.get("keepalive", 30), 5, 65535, "keepalive (seconds)", where)
        x["session_expiry"] = _int(x.get("session_expiry", 3600), 0, 2**32 - 1, "session_expiry (seconds)", where)
        share = x.get("share")
        x["share"] = _level(share, "share", where) if share is not None else None
        sources = x.get("source") or ()
        if isinstance(sources, str):
            sources = [s for s in sources.split(",") if s]
        checked = []
        for source in sources:
            levels = source.split("/") if isinstance(source, str) else []
            if len(levels) != 2:
                raise ConfigError(f"{where}: source: {source!r}: expected GATEWAY/IFACE (+ allowed for either)")
            # a URL query decodes "+" to a space: source=+/can0 means the + wildcard, as the user typed it
            levels = ["+" if lv == " " else lv for lv in levels]
            checked.append("/".join(_level(lv, "source", where, wildcard=True) for lv in levels))
        x["source"] = tuple(checked)
        if x["share"] and not checked:
            raise ConfigError(f"{where}: share= splits source= subscriptions among consumers; give a source=")
        password_file = x.get("password_file")
        if password_file is not None:
            if not x["username"]:
                raise ConfigError(f"{where}: password_file needs a user name in the URL (mqtt://USER@BROKER/...)")
            if not os.access(str(password_file), os.R_OK):
                raise ConfigError(f"{where}: password_file: {password_file!r} is not readable")
        # MQTT is read-only unless told otherwise: a broker is shared by a fleet and its backends
        peer.access = access_control.with_option(peer.access, "read_only", x.pop("read_only", "1"), where)
        if checked and kind == "azure-iot-hub":  # before read_only's advice: no setting makes it work
            raise ConfigError(f"{where}: source=: {kind} takes no subscriptions of ours (telemetry out only)")
        if checked and peer.access.read_only:
            raise ConfigError(f"{where}: source= writes remote frames to our bus: it needs read_only=0")
        max_age = x.get("max_age", DEFAULT_MAX_AGE_S)
        try:
            max_age = float(max_age)
        except (TypeError, ValueError):
            max_age = -1.0
        if not 0 <= max_age <= 86400:
            raise ConfigError(f"{where}: max_age must be seconds 0..86400 (0: no limit), got {x.get('max_age')!r}")
        x["max_age"] = max_age
        peer.limits = replace(peer.limits, max_age=max_age)
        cls._cluster_options(peer, x, parts, where)

    @classmethod
    def _cluster_options(cls, peer, x: dict, parts, where: str) -> None:
        """Issue 21: the broker list, the protocol version, the broker kind's limits, the spool."""
        from bridge.endpoints import broker_profiles as bp
        from bridge.endpoints.brokers import BrokerListError, parse_brokers, split_netloc
        from bridge.endpoints.spool import DEFAULT_MAX_BYTES, MIN_MAX_BYTES, parse_sync

        try:
            brokers = parse_brokers(split_netloc(parts.netloc)[1], cls.default_port)
            more = x.get("brokers")
            if more:
                brokers = parse_brokers([str(b) for b in brokers] + (more.split(",") if isinstance(more, str)
                                                                     else list(more)), cls.default_port)
        except BrokerListError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        x["brokers"] = brokers
        profile = bp.profile(x.get("broker", "generic"))
        try:
            x["protocol"] = bp.check_options(profile, protocol=str(x.get("protocol", "")), qos=x["qos"],
                                             client_id=x["client_id"], gateway=x["gateway"], sources=x["source"],
                                             read_only=peer.access.read_only, tls=cls.scheme == "mqtts")
            if profile.topic is not None and x["per_id"]:
                raise bp.ProfileError(f"topics=per-id: {profile.name} takes telemetry on its one topic only")
            for topic in (bp.status_topic(profile, x["prefix"], x["gateway"]),
                          *(f"{x['prefix']}/{s}/rx" for s in x["source"])):
                bp.check_topic(profile, topic)
        except bp.ProfileError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if x["protocol"] == "3.1.1" and x["share"]:
            raise ConfigError(f"{where}: share= is an MQTT 5 shared subscription; protocol=3.1.1 has none")
        x["profile"] = profile
        spool = x.get("spool")
        if spool is None:
            for key in ("spool_max", "spool_sync"):
                if key in x:
                    raise ConfigError(f"{where}: {key}= needs spool=DIR")
            return
        if not isinstance(spool, str) or not spool:
            raise ConfigError(f"{where}: spool must be a directory, got {spool!r}")
        try:
            interval, frames = parse_sync(x.get("spool_sync", "0.1,1000"))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        x["spool"] = {"dir": spool, "max_bytes": _size(x.get("spool_max", DEFAULT_MAX_BYTES), "spool_max", where,
                                                       MIN_MAX_BYTES),
                      "sync_interval": interval, "sync_frames": frames}

    @classmethod
    def _tls(cls, ctx, peer):
        return None

    @classmethod
    def open(cls, ctx, peer):
        from bridge.endpoints import broker_profiles as bp
        from bridge.endpoints.spool import SpoolError

        x = peer.extra
        hello = ctx.hello
        where = f"{cls.scheme}://{peer.host}:{peer.port}/{x['prefix']}"
        try:
            for iface in hello.channels:
                topic = bp.telemetry_topic(x["profile"], x["prefix"], x["gateway"], iface, x["format"])
                bp.check_topic(x["profile"], topic + ("/18DAF110" if x["per_id"] else ""))  # the longest ID level
        except bp.ProfileError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            return cls._peer(ctx, peer, x, hello)
        except SpoolError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def _peer(cls, ctx, peer, x, hello):
        from bridge.endpoints.mqtt import MqttPeer

        return MqttPeer(ctx.reactor, ctx.router, host=peer.host, port=peer.port, prefix=x["prefix"],
                        gateway=x["gateway"], channels=list(hello.channels), client_id=x["client_id"],
                        username=x["username"], password_file=x.get("password_file"), qos=x["qos"],
                        fmt=x["format"],
                        per_id=x["per_id"], keepalive=x["keepalive"], session_expiry=x["session_expiry"],
                        share=x["share"], sources=x["source"], read_only=peer.access.read_only,
                        max_age=x["max_age"], tls=cls._tls(ctx, peer), fd=bool(hello.capabilities & 1),
                        version=__version__, routing=ctx.routing,
                        name=f"{cls.scheme}://{peer.host}:{peer.port}/{x['prefix']}",
                        brokers=x["brokers"], protocol=x["protocol"], spool=x.get("spool"), profile=x["profile"])


class Mqtts(Mqtt):
    scheme = "mqtts"
    default_port = DEFAULT_TLS_PORT
    tls_client = True
    options = frozenset({FILTERS, ACCESS, TLS})
    option_hints = {k: v for k, v in Mqtt.option_hints.items() if not k.startswith("tls_")}

    @classmethod
    def configure(cls, peer, where: str) -> None:
        super().configure(peer, where)
        name = peer.security.tls_server_name
        if name is not None and name != peer.host:  # paho checks the certificate against the URL's host
            raise ConfigError(f"{where}: tls_server_name is not supported for mqtts://: put the name the "
                              f"broker's certificate carries in the URL ({name!r}) instead of {peer.host!r}")

    @classmethod
    def _tls(cls, ctx, peer):
        if ctx.tls is not None:  # tls_ca / tls_cert / tls_key given: bridge.security.tls built the context
            return ctx.tls.context
        import ssl

        return ssl.create_default_context()  # the system's CAs
