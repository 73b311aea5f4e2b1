"""python-can interface plugin: use a remote canbridge as a bus, on any OS python-can runs on.

    bus = can.Bus(interface="canbridge", channel="tcp://gateway:29600/can0")
    bus = can.Bus(interface="canbridge", channel="tcp://gateway:29600/can0",
                  tls_ca="ca.pem", tls_cert="me.pem", tls_key="me.key")      # a gateway with mutual TLS
    bus = can.Bus(interface="canbridge", channel="mqtt://broker/fleet/truck17/can0")  # through a broker
    python -m can.logger -i canbridge -c tcp://gateway:29600/can0 -f trace.blf

An mqtt:// or mqtts:// channel goes through a fleet's MQTT broker instead: bridge/pycan/mqtt.py.

The bridge must listen with `tcp-listen://`. The plugin speaks the native protocol (docs/protocol.md)
through bridge.tools.live.remote: it reads the bridge's HELLO, finds the named interface in its channel list
(the first one when the URL has no path), and exchanges frames of that channel only.
Message.timestamp is the gateway's kernel RX time; Message.channel is "GATEWAY/IFACE" (e.g.
"gateway/can0", "127.0.0.1:29700/vcan0": the port only when it is not 29600).

`bus.protocol` is CAN_FD when the bridge announces CAP_FD and fd=True (the default; fd=False: CAN FD
frames are neither sent nor received, those received are counted in `bus.dropped["fd_disabled"]`).
`bus.state` follows the error frames the bridge forwards (an interface with `error_frames = true`):
BUS-OFF -> BusState.ERROR, ERROR-PASSIVE -> PASSIVE, ERROR-ACTIVE/restarted -> ACTIVE.

`fileno()` (Linux) is an epoll fd that is readable while the socket has data OR frames wait in the
plugin's queue (an eventfd), so python-can's asyncio Notifier, which calls recv(0) once per readable
event, never leaves a frame behind. Registered as entry point `canbridge` in the `can.interface` group.
"""

from __future__ import annotations

import glob
import os
import select
import ssl
from collections import deque

import can

from bridge.codec import canerr, native
from bridge.codec import socketcan as sc
from bridge.errors import ConfigError
from bridge.frame import CanFrame
from bridge.tools.live.remote import RemoteBridge, RemoteClosed

CONFIG_GLOB = "/etc/canbridge/*.toml"  # where _detect_available_configs looks; env CANBRIDGE_CONFIGS overrides
_STATES = {canerr.BUS_OFF: can.BusState.ERROR, canerr.ERROR_PASSIVE: can.BusState.PASSIVE,
           canerr.ERROR_WARNING: can.BusState.ACTIVE, canerr.ERROR_ACTIVE: can.BusState.ACTIVE}


class _Readiness:
    """fileno() for select/asyncio: an epoll fd watching the socket and an eventfd that is set while
    frames wait in the plugin. None of it on systems without os.eventfd (fileno() is then unsupported
    and python-can's Notifier uses a thread, which is always correct)."""

    def __init__(self, sock_fd: int) -> None:
        self.epoll = self.efd = None
        self._set = False
        if hasattr(os, "eventfd") and hasattr(select, "epoll"):
            self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.epoll = select.epoll()
            self.epoll.register(sock_fd, select.EPOLLIN)
            self.epoll.register(self.efd, select.EPOLLIN)

    def fileno(self) -> int:
        if self.epoll is None:
            raise NotImplementedError("canbridge: fileno() needs Linux (epoll, eventfd)")
        return self.epoll.fileno()

    def update(self, waiting: bool) -> None:
        """waiting: frames are queued in the plugin -> keep the fd readable."""
        if self.efd is None or waiting == self._set:
            return
        if waiting:
            os.eventfd_write(self.efd, 1)
        else:
            os.eventfd_read(self.efd)
        self._set = waiting

    def close(self) -> None:
        if self.epoll is not None:
            self.epoll.close()
            os.close(self.efd)
            self.epoll = self.efd = None


class CanBridgeBus(can.BusABC):
    """channel: "tcp://HOST[:PORT][/IFACE][?tls_ca=..&tls_cert=..&tls_key=..]" (port 29600 by default).
    fd: use CAN FD when the bridge offers it. tls_ca/tls_cert/tls_key/tls_server_name: TLS as a
    `tcp://` peer (any of them turns TLS on; bridge/security/tls.py). Raises can.CanInitializationError
    when the bridge is unreachable, refuses the TLS handshake, or has no such interface."""

    def __new__(cls, channel=None, *args, **kwargs):
        """channel mqtt:// or mqtts://: a fleet's broker instead of a bridge (bridge/pycan/mqtt.py)."""
        if cls is CanBridgeBus and isinstance(channel, str) and channel.startswith(("mqtt://", "mqtts://")):
            from bridge.pycan.mqtt import MqttBus  # paho-mqtt only when asked for (canbridge[mqtt])

            return MqttBus(channel, *args, **kwargs)  # not a CanBridgeBus: its __init__ does not run again
        return super().__new__(cls)

    def __init__(self, channel: str, can_filters=None, fd: bool = True, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, tls_server_name: str | None = None,
                 **kwargs):
        try:
            self._remote = RemoteBridge(channel, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                        tls_server_name=tls_server_name)
        except ConfigError as exc:
            raise can.CanInitializationError(f"canbridge: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            raise can.CanInitializationError(f"canbridge: cannot connect to {channel}: {exc}") from exc
        self._fd = bool(fd) and bool(self._remote.hello.capabilities & native.CAP_FD)
        self._can_protocol = can.CanProtocol.CAN_FD if self._fd else can.CanProtocol.CAN_20
        self._state = can.BusState.ACTIVE
        self.dropped = {"fd_disabled": 0}  # frames received and not delivered, by reason
        self._queue: deque = deque()  # (raw, ts_ns) received, not yet returned
        self._ready = _Readiness(self._remote.fileno())
        self._take(self._remote.backlog)  # frames that came in the same read as the HELLO
        self._remote.backlog = []
        self.channel_info = f"canbridge {self._remote.channel} ({self._remote.url})"
        super().__init__(channel=self._remote.channel, can_filters=can_filters, **kwargs)

    @property
    def state(self) -> can.BusState:
        """The bus state of the gateway's interface, from the error frames it forwards."""
        return self._state

    def _take(self, frames: list) -> None:
        """Queue received (raw, ts_ns), learning the bus state from error frames; count what fd=False drops."""
        for raw, ts in frames:
            if len(raw) == sc.CANFD_MTU and not self._fd:
                self.dropped["fd_disabled"] += 1
                continue
            state = canerr.bus_state(raw)
            if state is not None:
                self._state = _STATES[state]
            self._queue.append((raw, ts))
        self._ready.update(bool(self._queue))

    def _recv_internal(self, timeout):
        try:
            if not self._queue:
                self._take(self._remote.read())  # what is already there, without waiting
            if not self._queue and timeout != 0 and select.select([self._remote.sock], [], [], timeout)[0]:
                self._take(self._remote.read())
        except RemoteClosed as exc:
            raise can.CanOperationError(f"canbridge: {exc}") from None
        if not self._queue:
            return None, False
        raw, ts = self._queue.popleft()
        self._ready.update(bool(self._queue))
        return CanFrame.from_raw(raw, ts).to_message(channel=self._remote.channel), False

    def send(self, msg: can.Message, timeout=None) -> None:
        if msg.is_fd and not self._fd:
            raise can.CanOperationError(f"canbridge: {self._remote.channel}: CAN FD is off (fd=False or the "
                                        "bridge does not offer it)")
        raw = CanFrame.from_message(msg).to_raw()
        try:
            self._remote.send([(raw, 0)], timeout)
        except (OSError, ssl.SSLError) as exc:
            raise can.CanOperationError(f"canbridge: send failed: {exc}") from exc

    def fileno(self) -> int:
        return self._ready.fileno()

    def shutdown(self) -> None:
        super().shutdown()
        self._ready.close()
        self._remote.close()

    @staticmethod
    def _detect_available_configs() -> list[dict]:
        """One config per interface served by a `tcp-listen://` peer in the bridge config files
        (CANBRIDGE_CONFIGS: paths or globs separated by os.pathsep; default /etc/canbridge/*.toml).
        A wildcard listen address becomes the loopback address; unreadable files are skipped."""
        from bridge.daemon.config import load_toml

        found = []
        for pattern in os.environ.get("CANBRIDGE_CONFIGS", CONFIG_GLOB).split(os.pathsep):
            for path in sorted(glob.glob(pattern)):
                try:
                    config = load_toml(path)
                except (ConfigError, OSError):
                    continue
                found += _configs_of(config)
        return found


def _configs_of(config) -> list[dict]:
    """python-can configs {"interface", "channel"} for the tcp-listen peers x interfaces of a Config."""
    out = []
    for peer in config.peers:
        if peer.scheme != "tcp-listen":
            continue
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(peer.host, peer.host)
        hostport = f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"
        for iface in config.interfaces:
            found = {"interface": "canbridge", "channel": f"tcp://{hostport}/{iface.name}"}
            if found not in out:
                out.append(found)
    return out

