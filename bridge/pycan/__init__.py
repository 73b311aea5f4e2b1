"""The python-can plugin, `can.Bus(interface="canbridge", channel=...)` (entry point `canbridge` in the
`can.interface` group): a remote bridge or a fleet's broker as a python-can bus.

    bus.py   CanBridgeBus: tcp://GATEWAY[:PORT]/IFACE, the native protocol to a bridge's tcp-listen://
    mqtt.py  MqttBus: mqtt[s]://BROKER/PREFIX/GATEWAY/IFACE, through the broker (paho-mqtt, imported only then)

The top of the package: may import every layer (the buses read through bridge.tools.live's clients)."""

from bridge.pycan.bus import CanBridgeBus

__all__ = ["CanBridgeBus"]
