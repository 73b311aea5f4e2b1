"""The `[bridge]` table of bridge.toml and the matching flags: where the control socket and the Prometheus
endpoint live (docs/cli.md, "Operations"). Flags given on the command line override the file.

    [bridge]
    control = "/run/canbridge/gw.sock"   # or "none"; default: see bridge.daemon.control.default_path
    metrics = "127.0.0.1:9700"           # Prometheus endpoint; default: off
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import ConfigError

OPS_KEYS = {"control", "metrics"}


@dataclass
class OpsConfig:
    control: str | None = None  # path; None = the default path; "none" = no control socket
    metrics: tuple[str, int] | None = None  # (addr, port) of the Prometheus endpoint; None = off

    @property
    def control_enabled(self) -> bool:
        return self.control != "none"


def parse_control(value, where: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"{where}: expected a socket path or \"none\", got {value!r}")
    if value != "none" and len(value.encode()) > 107:  # sizeof(sockaddr_un.sun_path) - 1
        raise ConfigError(f"{where}: socket path longer than 107 bytes: {value!r}")
    return value


def parse_metrics(value, where: str) -> tuple[str, int]:
    """"ADDR:PORT" or "[V6ADDR]:PORT" -> (addr, port); port 1..65535."""
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: expected ADDR:PORT (e.g. 127.0.0.1:9700), got {value!r}")
    return host.strip("[]"), int(port)


def ops_from_table(table, where: str) -> OpsConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table ([bridge])")
    unknown = set(table) - OPS_KEYS
    if unknown:
        # "user" is read by bridge/daemon/config.py before this table reaches us (privilege drop)
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(OPS_KEYS | {'user'})}")
    ops = OpsConfig()
    if "control" in table:
        ops.control = parse_control(table["control"], f"{where}.control")
    if "metrics" in table:
        ops.metrics = parse_metrics(table["metrics"], f"{where}.metrics")
    return ops
