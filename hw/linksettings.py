"""The link settings an [[interface]] of a bridge.toml may carry (bitrate, sample point, ...), with their
units and ranges: what `canbridge link setup --from-config` (hw/links.py) applies and what the config
checks. Kept apart from hw/links.py so that reading a config never imports pyroute2."""

from __future__ import annotations

from bridge.hw.errors import ConfigError

# Link settings of an [[interface]], applied by `canbridge link setup --from-config` (hw/links.py), never by
# the bridge itself (which needs no CAP_NET_ADMIN). key -> (type, min, max, what); bool keys have no range.
LINK_KEYS = {
    "bitrate": (int, 1, 1_000_000, "bit/s (classic CAN and the FD arbitration phase: at most 1 Mbit/s)"),
    "sample_point": (float, 0.001, 0.999, "fraction of the bit time, e.g. 0.875"),
    "dbitrate": (int, 1, 20_000_000, "bit/s (CAN FD data phase)"),
    "dsample_point": (float, 0.001, 0.999, "fraction of the bit time, e.g. 0.75"),
    "restart_ms": (int, 0, 2**32 - 1, "ms before an automatic restart after BUS-OFF; 0 = never"),
    "txqueuelen": (int, 1, 2**31 - 1, "frames in the interface TX queue"),
    "berr_reporting": (bool, None, None, "true or false (bus-error frames from the controller)"),
    "listen_only": (bool, None, None, "true or false (the controller never sends, not even an ACK)"),
}


def link_value(key: str, value, where: str) -> int | float | bool:
    """A LINK_KEYS value checked for type and range; ConfigError naming `where` otherwise."""
    kind, low, high, what = LINK_KEYS[key]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        return value
    ok_type = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok_type or not low <= value <= high:
        raise ConfigError(f"{where}: expected {what}, {low}..{high}, got {value!r}")
    return kind(value)
