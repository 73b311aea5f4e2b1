"""`canbridge dump` / `top` source on a fleet's MQTT broker (docs/mqtt.md): the backend side.

    mqtt[s]://[USER@]BROKER[:PORT][,BROKER[:PORT]...]/PREFIX/GATEWAY/IFACE[?topics=per-id&share=GROUP
                                                        &password_file=..&tls_ca=..&tls_cert=..&tls_key=..]

GATEWAY and IFACE may be MQTT `+` wildcards (`mqtt://broker/fleet/+/can0`: can0 of every gateway). It
subscribes (qos 0: an observer) to PREFIX/GATEWAY/IFACE/rx (`/+` more with topics=per-id; `$share/GROUP/`
in front with share=), decodes each message as its gateway wrote it (MQTT 5 content type, else sniffed;
format= is accepted and has no effect) and yields dump's Rx items with
"GATEWAY/IFACE" as the interface name and the gateway's kernel RX timestamp. Same interface as dump's
RemoteSource: fileno(), waiting(), read(), close(), name, url. paho runs without its thread: read() calls
loop_read / loop_write / loop_misc.

Several brokers (a cluster): the first that answers is used (refused or unreachable: the next); MQTT 5
first, MQTT 3.1.1 when a broker refuses 5 (nats-server, RabbitMQ), as the gateways' protocol=auto.

A lost connection (the node killed, restarted, or the link gone): read() moves to the next broker of the
list, round the list (the same broker when there is one, e.g. restarted), with the gateways' backoff
between rounds (bridge.endpoints.tcp.backoff_delay: 0.1 s doubling to 5 s, times 0.5..1), for up to
FAILOVER_S, and logs a warning naming the node lost and the node now in use.
What the fleet published in between is not seen (an observer's qos 0 subscription; the gap shows in the
timestamps). No broker in FAILOVER_S: SourceClosed (dump and top exit 1). fileno() is an epoll descriptor
holding the current socket, so a poller registered once goes on working after the switch.

A malformed message is skipped and counted in `bad_messages` (a fleet must not stop a dump).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from urllib.parse import parse_qsl, unquote, urlsplit

import paho.mqtt.client as paho

from bridge.codec import mqtt_payload as mp
from bridge.endpoints.brokers import BrokerListError, parse_brokers, split_netloc
from bridge.endpoints.mqtt_connection import new_client
from bridge.endpoints.mqtt_version import Mqtt5, Mqtt311, refused_version
from bridge.endpoints.tcp import backoff_delay
from bridge.errors import ConfigError
from bridge.protocols.mqtt import DEFAULT_PORT, DEFAULT_TLS_PORT
from bridge.security.options import Security
from bridge.security.tls import client_context
from bridge.tools.live.source import Rx, SourceClosed, parse_filters

CONNECT_TIMEOUT_S = 5.0  # CONNACK and SUBACK must come within this
KEEPALIVE_S = 0  # no MQTT keepalive: dump and top sleep in poll() until a frame comes, so nothing would send
#                 the PINGREQs and the broker would drop an idle dump after 1.5 x keepalive. TCP keepalive instead:
TCP_KEEPIDLE_S, TCP_KEEPINTVL_S, TCP_KEEPCNT = 30, 10, 3  # the kernel probes an idle link after 30 s: a dead
#                 broker or link ends the dump (SourceClosed) within about 60 s
MAX_BACKLOG = 65536  # frames decoded but not yet returned by read() (one read returns them all)
FAILOVER_S = 30.0  # a lost broker: how long read() looks for another before the source ends (a node restart
#                    in a cluster or a Mosquitto restart takes a few seconds; a dump should ride it out)

log = logging.getLogger(__name__)


def parse_url(url: str) -> dict:
    """-> {scheme, host, port, user, prefix, gateway, iface, options}. ConfigError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{url!r}: expected mqtt:// or mqtts://")
    if parts.password is not None:
        raise ConfigError(f"{url!r}: no password in the URL; use password_file=PATH")
    levels = unquote(parts.path).strip("/").split("/")
    if len(levels) < 3 or not all(levels) or any("#" in lv for lv in levels):
        raise ConfigError(f"{url!r}: expected mqtt://BROKER/PREFIX/GATEWAY/IFACE (+ allowed for GATEWAY, IFACE)")
    opts = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = {"format", "topics", "share", "password_file", "tls_ca", "tls_cert", "tls_key"}
    if unknown := set(opts) - known:
        raise ConfigError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                          f"expected {', '.join(sorted(known))}")
    if opts.get("format", "native") not in mp.FORMATS:
        raise ConfigError(f"{url!r}: format must be one of {', '.join(mp.FORMATS)}")
    tls = parts.scheme == "mqtts"
    try:
        brokers = parse_brokers(split_netloc(parts.netloc)[1] or "127.0.0.1", DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    except BrokerListError as exc:
        raise ConfigError(f"{url!r}: {exc}") from None
    return {"scheme": parts.scheme, "host": brokers[0].host, "port": brokers[0].port, "brokers": brokers,
            "user": unquote(parts.username) if parts.username else None, "prefix": "/".join(levels[:-2]),
            "gateway": levels[-2], "iface": levels[-1], "options": opts}


class _RefusedVersion(Exception):
    """The broker's CONNACK refused MQTT 5: try 3.1.1."""


def _tcp_keepalive(sock) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPIDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPINTVL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPCNT)


def split_spec(spec: str) -> tuple[str, str]:
    """URL[,FILTERS] -> (URL, FILTERS): the filters start at the first comma after the URL's path begins (a
    comma before it separates brokers: mqtt://n1,n2/fleet/+/can0,123:7FF)."""
    path = spec.find("/", spec.find("://") + 3)
    cut = spec.find(",", path) if path >= 0 else -1
    return (spec[:cut], spec[cut + 1:]) if cut >= 0 else (spec, "")


class MqttSource:
    def __init__(self, spec: str) -> None:
        url, filters = split_spec(spec)
        self.filter = parse_filters(filters)
        u = parse_url(url)
        self.url, self.name = url, f"{u['gateway']}/{u['iface']}"
        o = u["options"]
        self.fmt = o.get("format", "native")
        self.bad_messages = 0
        self._backlog: list = []
        self._lost: str | None = None
        self._prefix_levels = len(u["prefix"].split("/"))
        topic = f"{u['prefix']}/{u['gateway']}/{u['iface']}/rx" + ("/+" if o.get("topics") == "per-id" else "")
        if o.get("share"):
            topic = f"$share/{o['share']}/{topic}"
        tls = None
        if u["scheme"] == "mqtts":  # the system CAs unless tls_ca; ConfigError naming a file that does not load
            tls = client_context(Security(tls_cert=o.get("tls_cert"), tls_key=o.get("tls_key"),
                                          tls_ca=o.get("tls_ca")), url)
        self._brokers, self._at = u["brokers"], 0
        self._connect = lambda broker: self._open(u, o, tls, topic, broker)
        self._ep = select.epoll()  # fileno(): stable across a failover
        self.client = None
        try:
            self._connect_first(range(len(self._brokers)))
        except BaseException:
            self._ep.close()
            raise

    def _connect_first(self, order) -> None:
        """Connect to the first broker of `order` (indexes into the list) that answers and subscribes;
        raises the last one's OSError or ConfigError when none does."""
        error: Exception = OSError("no broker")
        for at in order:
            try:
                self._connect(self._brokers[at])
            except (OSError, ConfigError) as exc:
                error = exc
                self._drop_client()
                continue
            self._at = at
            self._ep.register(self.client.socket().fileno(), select.EPOLLIN)
            return
        raise error

    def _open(self, u: dict, o: dict, tls, topic: str, broker) -> None:
        """MQTT 5 first, then 3.1.1 if the broker refuses 5 (the version's room is shared with the gateway)."""
        try:
            self._open_version(u, o, tls, topic, Mqtt5(), broker)
        except _RefusedVersion:
            self._open_version(u, o, tls, topic, Mqtt311(), broker)  # 3.1.1 has no version refusal of its own

    def _open_version(self, u: dict, o: dict, tls, topic: str, version, broker) -> None:
        """Connect to `broker` in `version` and subscribe; _RefusedVersion if it refuses the version."""
        self.mqtt = version
        self._lost = None
        url = self.url
        c = self.client = new_client(self.mqtt, username=u["user"], password_file=o.get("password_file"), tls=tls,
                                     client_class=paho.Client)  # a blocking connect: dump has nothing else to do
        state: dict = {}
        c.on_connect = lambda _c, _u, _f, rc, _p: state.update(connack=rc)
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: state.update(suback=rcs)
        c.on_message = self._on_message
        c.on_disconnect = lambda _c, _u, _f, rc, _p: setattr(self, "_lost", str(rc))
        c.connect(broker.host, broker.port, KEEPALIVE_S)  # OSError when unreachable
        _tcp_keepalive(c.socket())
        self._wait(lambda: "connack" in state)
        if self.mqtt.failed(state["connack"]):
            c.socket() and c.socket().close()
            if self.mqtt.name == "5" and refused_version(state["connack"]):
                self._lost = None
                raise _RefusedVersion()
            raise ConfigError(f"{url}: the broker refused the connection: {state['connack']}")
        c.subscribe(topic, qos=0)
        self._wait(lambda: "suback" in state)
        if self.mqtt.failed(state["suback"][0]):
            raise ConfigError(f"{url}: the broker refused the subscription to {topic}: {state['suback'][0]}")

    def _wait(self, cond) -> None:
        """Run paho until cond() (CONNACK, SUBACK); OSError after CONNECT_TIMEOUT_S or a lost connection."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not cond():
            if time.monotonic() > deadline:
                raise OSError(f"no answer from the broker in {CONNECT_TIMEOUT_S:.0f} s")
            if self.client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS and not cond():  # a refusing CONNACK closes
                raise OSError(f"connection to the broker lost: {self._lost}")

    def _on_message(self, _c, _u, msg) -> None:
        levels = msg.topic.split("/")
        name = "/".join(levels[self._prefix_levels : self._prefix_levels + 2])
        try:
            frames = mp.decode(self.mqtt.message_format(msg), msg.payload)
        except mp.MqttPayloadError:
            self.bad_messages += 1
            return
        if len(self._backlog) + len(frames) > MAX_BACKLOG:  # read() was not called: never happens in dump
            self.bad_messages += 1
            return
        self._backlog.extend(Rx(name, raw, ts) for raw, ts in self.filter.filter_batch(frames))

    def fileno(self) -> int:
        """An epoll descriptor, readable when the current broker's socket is."""
        return self._ep.fileno()

    def waiting(self) -> bool:
        """Frames decoded and not yet read, or TLS holds decrypted bytes (poll() does not signal them)."""
        sock = self.client.socket() if self.client is not None else None
        return bool(self._backlog) or bool(getattr(sock, "pending", None) and sock.pending())

    def read(self) -> list:
        if not self._backlog and self.client is None:  # a failover ran out of time before: try again
            self._fail_over("no broker answered")
        if not self._backlog:
            rc = self.client.loop_read()
            if rc == paho.MQTT_ERR_SUCCESS:
                if self.client.want_write():
                    self.client.loop_write()
                self.client.loop_misc()
            if rc != paho.MQTT_ERR_SUCCESS or self._lost:
                self._fail_over(self._lost or paho.error_string(rc))
        out, self._backlog = self._backlog, []
        return out

    def _fail_over(self, reason: str) -> None:
        """The connection to broker `_at` is lost: the next one of the list that answers, round the list
        for up to FAILOVER_S (SourceClosed after that)."""
        lost = self._brokers[self._at]
        self._drop_client()
        n = len(self._brokers)
        order = [(self._at + 1 + i) % n for i in range(n)]  # the lost node last
        deadline, rounds = time.monotonic() + FAILOVER_S, 0
        while True:
            try:
                self._connect_first(order)
            except (OSError, ConfigError) as exc:
                pause = backoff_delay(rounds)
                rounds += 1
                if time.monotonic() + pause > deadline:
                    raise SourceClosed(f"{self.url}: connection to the broker {lost} lost ({reason}); no broker "
                                       f"answered in {FAILOVER_S:.0f} s ({exc})") from None
                time.sleep(pause)
                continue
            log.warning("%s: connection to the broker %s lost (%s); now on %s (MQTT %s)", self.url, lost, reason,
                        self.broker, self.mqtt.name)
            return

    @property
    def broker(self):
        """The node in use (host:port), as the gateways' `broker` gauge names it."""
        return self._brokers[self._at]

    def _drop_client(self) -> None:
        """Forget the current connection: out of the epoll set, socket closed."""
        client, self.client = self.client, None
        sock = client.socket() if client is not None else None
        if sock is not None:
            try:
                self._ep.unregister(sock.fileno())
            except (OSError, ValueError):  # never registered (a failed connect) or already closed
                pass
            sock.close()

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:  # noqa: BLE001 - closing: nothing to report
                pass
        self._drop_client()
        self._ep.close()
