"""Open the sources of `canbridge dump`/`top` by their spec: IFACE[,FILTERS] (local.py), tcp://... (remote.py),
mqtt[s]://... (mqtt_source.py, imported only then: paho-mqtt is an optional extra)."""

from __future__ import annotations

import sys

from bridge.errors import ConfigError
from bridge.tools.live.local import LocalSource
from bridge.tools.live.remote import RemoteSource


def open_sources(specs: list[str], prog: str, **local) -> tuple[list, int]:
    """Open every source of `canbridge dump`/`top`: (sources, 0), or ([], exit status) after printing
    why (2: a bad spec, 1: the interface or bridge cannot be opened); nothing is left open on failure.
    local: keyword arguments of LocalSource (hw_timestamps, down_exits)."""
    sources: list = []
    try:
        for spec in specs:
            sources.append(open_source(spec, **local))
        return sources, 0
    except ConfigError as exc:
        print(f"canbridge {prog}: error: {exc}", file=sys.stderr)
        status = 2
    except OSError as exc:
        print(f"canbridge {prog}: {spec}: {exc.strerror or exc}", file=sys.stderr)
        status = 1
    for s in sources:
        s.close()
    return [], status


MQTT_SCHEMES = ("mqtt://", "mqtts://")  # a fleet's broker: bridge/tools/live/mqtt_source.py


def open_source(spec: str, **local):
    """IFACE[,FILTERS] -> LocalSource(spec, **local); tcp://... -> RemoteSource; mqtt[s]://... -> MqttSource."""
    if spec.startswith(MQTT_SCHEMES):
        try:  # paho-mqtt is the optional extra canbridge[mqtt]: imported only for an mqtt:// source
            from bridge.tools.live.mqtt_source import MqttSource
        except ImportError as exc:
            raise ConfigError(f"{spec}: MQTT sources need paho-mqtt 2.x: pip install 'canbridge[mqtt]' "
                              f"({exc})") from None
        return MqttSource(spec)
    return RemoteSource(spec) if "://" in spec else LocalSource(spec, **local)
