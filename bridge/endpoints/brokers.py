"""A broker list and the order a gateway tries it in (issue 21; docs/mqtt.md "Failover"). Pure: no
sockets, no clock; the MQTT connection asks which node to dial next.

    mqtt://n1:1883,n2:1883,n3:1883/fleet      in a URL (userinfo before the first host applies to all)
    brokers = ["n1:1883", "n2", "[fd00::1]:1883"]   in TOML, or brokers=n1:1883,n2 as an option

paho-mqtt takes one host; moving to another is ours: when the connection is lost (or an attempt fails) the
next attempt goes to the next node of the list, round-robin, each after the connection's usual jittered
backoff, whose attempt count grows across nodes, so a dead node is tried at most once per round and never
in a storm.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BROKERS = 16  # a cluster's nodes, not a scan list: more is a mistake worth a clear error


class BrokerListError(ValueError):
    """A broker list that cannot be used; the message names the bad entry."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_broker(text: str, default_port: int) -> Broker:
    """"HOST", "HOST:PORT", "[IPV6]" or "[IPV6]:PORT" -> Broker. BrokerListError if malformed."""
    entry = text.strip()
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BrokerListError(f"broker {text!r}: expected [IPV6] or [IPV6]:PORT")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = entry.rpartition(":") if ":" in entry else (entry, "", None)
        if ":" in host:
            raise BrokerListError(f"broker {text!r}: an IPv6 address goes in brackets: [{entry}]:PORT")
    if not host or any(c in host for c in "/@ ,"):
        raise BrokerListError(f"broker {text!r}: no host name")
    if port_text is None:
        return Broker(host, default_port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BrokerListError(f"broker {text!r}: port must be 1..65535")
    return Broker(host, int(port_text))


def parse_brokers(value, default_port: int) -> tuple[Broker, ...]:
    """A comma-separated string ("n1:1883,n2") or a list of entries -> the brokers, in the order given.
    BrokerListError: empty, malformed, listed twice, or more than MAX_BROKERS."""
    entries = value.split(",") if isinstance(value, str) else list(value or ())
    if not entries or any(not isinstance(e, str) for e in entries):
        raise BrokerListError(f"brokers: expected HOST[:PORT] entries, got {value!r}")
    brokers = tuple(parse_broker(e, default_port) for e in entries)
    if len(brokers) > MAX_BROKERS:
        raise BrokerListError(f"brokers: at most {MAX_BROKERS}, got {len(brokers)}")
    seen = set()
    for b in brokers:
        if b in seen:
            raise BrokerListError(f"brokers: {b} is listed twice")
        seen.add(b)
    return brokers


def split_netloc(netloc: str) -> tuple[str | None, str]:
    """A URL's network location -> (userinfo or None, the host list): "user@n1:1883,n2" ->
    ("user", "n1:1883,n2"). urlsplit's .hostname/.port cannot read a list ("bad port")."""
    userinfo, sep, hosts = netloc.rpartition("@")
    return (userinfo if sep else None), hosts


class Failover:
    """Which broker to dial: `current`; next() when the attempt failed or the connection was lost (the
    backoff is the connection's, bridge.endpoints.mqtt_connection)."""

    def __init__(self, brokers: tuple[Broker, ...]) -> None:
        if not brokers:
            raise BrokerListError("no broker")
        self.brokers = tuple(brokers)
        self.index = 0

    @property
    def current(self) -> Broker:
        return self.brokers[self.index]

    def next(self) -> Broker:
        """Move to the next node, round-robin (a list of one stays where it is)."""
        self.index = (self.index + 1) % len(self.brokers)
        return self.current

    def describe(self) -> str:
        """The node in use for the status topic and `canbridge stats`: "n2:1883 (2 of 3)"."""
        return f"{self.current} ({self.index + 1} of {len(self.brokers)})" if len(self.brokers) > 1 \
            else str(self.current)
