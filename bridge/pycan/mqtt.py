"""The python-can plugin (bridge/pycan/bus.py) on a fleet's MQTT broker (docs/mqtt.md): one gateway's bus as a
python-can bus, through the broker instead of a direct connection to the gateway.

    bus = can.Bus(interface="canbridge", channel="mqtt://broker/fleet/truck17/can0")
    bus = can.Bus(interface="canbridge", channel="mqtts://ops@broker/fleet/truck17/can0?tls_ca=ca.pem"
                                                 "&password_file=mqtt.pw&format=json")

channel: mqtt[s]://[USER@]BROKER[:PORT]/PREFIX/GATEWAY/IFACE[?format=..&topics=per-id&share=GROUP
&password_file=..&tls_ca=..&tls_cert=..&tls_key=..] (the options of bridge/tools/live/mqtt_source.py).
recv() reads PREFIX/GATEWAY/IFACE/rx (GATEWAY and IFACE may be `+`: then Message.channel tells which
gateway's bus a frame came from, "GATEWAY/IFACE"); Message.timestamp is the gateway's kernel RX time.
send() publishes one frame per message on PREFIX/GATEWAY/IFACE/tx with qos 1 and waits for the broker's
PUBACK (the gateway writes it to its bus only when it runs with read_only=0). A message the gateway has not
taken within SEND_EXPIRY_S expires in the broker: a stale command never reaches a bus.

No fileno(): frames decoded from one MQTT message wait in the plugin where select() cannot see them, so
python-can's Notifier uses its reader thread (always correct).
"""

from __future__ import annotations

import select
import ssl
import time
from collections import deque

import can
import paho.mqtt.client as paho

from bridge.codec import mqtt_payload as mp
from bridge.codec import socketcan as sc
from bridge.errors import ConfigError
from bridge.frame import CanFrame
from bridge.tools.live.source import SourceClosed
from bridge.tools.live.mqtt_source import MqttSource, parse_url, split_spec

SEND_TIMEOUT_S = 5.0  # send(timeout=None): the broker's PUBACK must come within this
SEND_EXPIRY_S = 60  # message expiry of what send() publishes: the gateway's default max_age for MQTT
POLL_SLICE_S = 0.05  # send() waits for its PUBACK in slices this long (frames received meanwhile are kept)


class MqttBus(can.BusABC):
    """channel: an mqtt[s]:// URL as above; fd=False: CAN FD frames are neither sent nor received (those
    received are counted in `bus.dropped["fd_disabled"]`); `bus.dropped["bad_message"]` counts malformed
    messages skipped. Raises can.CanInitializationError for a bad URL, an unreachable broker, a refused
    connection or subscription."""

    def __init__(self, channel: str, can_filters=None, fd: bool = True, **kwargs):
        try:
            self._src = MqttSource(channel)
            u = parse_url(split_spec(channel)[0])
        except ConfigError as exc:
            raise can.CanInitializationError(f"canbridge: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            raise can.CanInitializationError(f"canbridge: cannot connect to {channel}: {exc}") from exc
        wildcard = "+" in (u["gateway"], u["iface"])
        self._tx_topic = None if wildcard else f"{u['prefix']}/{u['gateway']}/{u['iface']}/tx"
        self._gateway, self._iface = u["gateway"], u["iface"]
        self._fd = bool(fd)
        self._can_protocol = can.CanProtocol.CAN_FD if self._fd else can.CanProtocol.CAN_20
        self.dropped = {"fd_disabled": 0}  # frames received and not delivered, by reason
        self._queue: deque = deque()  # dump Rx items received, not yet returned
        self.channel_info = f"canbridge {self._src.name} ({self._src.url})"
        super().__init__(channel=self._src.name, can_filters=can_filters, **kwargs)

    def _take(self, items: list) -> None:
        for rx in items:
            if len(rx.raw) == sc.CANFD_MTU and not self._fd:
                self.dropped["fd_disabled"] += 1
                continue
            self._queue.append(rx)
        self.dropped["bad_message"] = self._src.bad_messages

    def _read(self, timeout: float) -> None:
        """Take what the broker sent, waiting up to `timeout` s for the socket when nothing is there yet."""
        try:
            if not self._src.waiting() and timeout != 0:
                select.select([self._src.fileno()], [], [], timeout)
            self._take(self._src.read())
        except SourceClosed as exc:
            raise can.CanOperationError(f"canbridge: {exc}") from None

    def _recv_internal(self, timeout):
        if not self._queue:
            self._read(0)  # what is already there, without waiting
        if not self._queue and timeout != 0:
            self._read(timeout if timeout is not None else POLL_SLICE_S * 20)
        if not self._queue:
            return None, False  # BusABC.recv calls again while its timeout lasts
        rx = self._queue.popleft()
        return CanFrame.from_raw(rx.raw, rx.ts_ns).to_message(channel=rx.iface), False

    def send(self, msg: can.Message, timeout=None) -> None:
        """Publish on PREFIX/GATEWAY/IFACE/tx (qos 1) and wait up to `timeout` s (None: SEND_TIMEOUT_S)
        for the broker's PUBACK. can.CanOperationError when the channel has a wildcard, for CAN FD with
        fd=False, when paho refuses the message or the broker does not acknowledge it in time."""
        if self._tx_topic is None:
            raise can.CanOperationError(f"canbridge: {self._src.name}: cannot send to a wildcard channel")
        if msg.is_fd and not self._fd:
            raise can.CanOperationError(f"canbridge: {self._src.name}: CAN FD is off (fd=False)")
        raw = CanFrame.from_message(msg).to_raw()
        props = self._src.mqtt.publish_props(self._src.fmt, SEND_EXPIRY_S)
        payload = mp.encode(self._src.fmt, self._gateway, self._iface, [(raw, time.time_ns())])
        info = self._src.client.publish(self._tx_topic, payload, qos=1, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise can.CanOperationError(f"canbridge: send failed: {paho.error_string(info.rc)}")
        deadline = time.monotonic() + (SEND_TIMEOUT_S if timeout is None else timeout)
        while not info.is_published():
            left = deadline - time.monotonic()
            if left <= 0:
                raise can.CanOperationError(f"canbridge: send: no PUBACK from the broker in "
                                            f"{SEND_TIMEOUT_S if timeout is None else timeout} s")
            if self._src.client.want_write():
                self._src.client.loop_write()
            self._read(min(left, POLL_SLICE_S))  # reads the PUBACK; frames that came meanwhile are queued

    def shutdown(self) -> None:
        super().shutdown()
        self._src.close()
