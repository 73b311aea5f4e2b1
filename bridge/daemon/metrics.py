"""Prometheus endpoint (`--metrics ADDR:PORT`, extra `canbridge[metrics]`).

prometheus-client serves HTTP from its own thread. That thread never touches endpoints: the reactor
thread calls `publish(stats)` (once a second) with a fresh dict it never mutates afterwards, and the
collector only reads the latest published dict (swapping one reference is atomic in CPython).

Metrics, each labelled endpoint="<endpoint name>" (as in `canbridge stats`):
    canbridge_rx_frames_total, canbridge_tx_frames_total, canbridge_rx_bytes_total, canbridge_tx_bytes_total
    canbridge_dropped_frames_total{reason}, canbridge_errors_total{reason}
    canbridge_<gauge>  every numeric gauge (reconnects, tx_queued, peer_up, ...), booleans as 0/1
    canbridge_state_info{gauge, value} = 1   every text gauge (bus_state, peer_state, ...)
    canbridge_bus_to_peer_latency_seconds    histogram (log2 buckets, bridge.core.stats.Log2Histogram)
  bus health of each CAN interface (bridge/endpoints/bushealth.py; a value the kernel does not report is left out):
    canbridge_bus_load_ratio                 bus load over the last second, 0..1 (may exceed 1: canbusload's estimate)
    canbridge_bus_bits_per_second, canbridge_bus_bitrate_bits_per_second, canbridge_bus_data_bitrate_bits_per_second
    canbridge_bus_tx_error_counter, canbridge_bus_rx_error_counter   the controller's TEC and REC
    canbridge_bus_controller_events_total{event}   xstats: bus_error, error_warning, error_passive, bus_off,
                                                   arbitration_lost, restarts
    canbridge_bus_rx_overruns_total, canbridge_bus_rx_dropped_total, canbridge_bus_socket_drops_total
    canbridge_uptime_seconds, canbridge_build_info{version}
"""

from __future__ import annotations

import re

from bridge import __version__
from bridge.errors import ConfigError

COUNTER_KEYS = {"rx_frames": "rx_frames", "tx_frames": "tx_frames", "rx_bytes": "rx_bytes", "tx_bytes": "tx_bytes"}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def snapshot_metrics(snapshot: dict) -> list:
    """Metric families for one published snapshot {"uptime_s", "stats": {endpoint: counters}}. Pure: used
    by the collector and by tests."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    counters = {k: CounterMetricFamily(f"canbridge_{v}", f"{k.replace('_', ' ')} per endpoint", labels=["endpoint"])
                for k, v in COUNTER_KEYS.items()}
    by_reason = ["endpoint", "reason"]
    dropped = CounterMetricFamily("canbridge_dropped_frames", "frames dropped, by reason", labels=by_reason)
    errors = CounterMetricFamily("canbridge_errors", "errors, by reason", labels=by_reason)
    states = GaugeMetricFamily("canbridge_state_info", "text gauges", labels=["endpoint", "gauge", "value"])
    latency = HistogramMetricFamily("canbridge_bus_to_peer_latency_seconds",
                                    "kernel RX timestamp to hand-over to the peer socket, first frame of each batch",
                                    labels=["endpoint"])
    gauges: dict[str, GaugeMetricFamily] = {}
    health = _HealthFamilies()
    for endpoint, values in snapshot.get("stats", {}).items():
        for key, value in values.items():
            if key in counters:
                counters[key].add_metric([endpoint], value)
            elif key == "dropped":
                for reason, n in value.items():
                    dropped.add_metric([endpoint, reason], n)
            elif key == "errors":
                for reason, n in value.items():
                    errors.add_metric([endpoint, reason], n)
            elif key == "latency_us":
                latency.add_metric([endpoint], _buckets(value), sum_value=value["sum_us"] / 1e6)
            elif key == "health":
                if value:
                    health.add(endpoint, value)
            elif isinstance(value, (bool, int, float)):
                name = "canbridge_" + _NAME_BAD.sub("_", key)
                family = gauges.get(name) or gauges.setdefault(name, GaugeMetricFamily(name, f"gauge {key}",
                                                                                      labels=["endpoint"]))
                family.add_metric([endpoint], float(value))
            elif isinstance(value, str):
                states.add_metric([endpoint, key, value], 1)
    uptime = GaugeMetricFamily("canbridge_uptime_seconds", "seconds since the bridge started")
    uptime.add_metric([], snapshot.get("uptime_s", 0.0))
    info = GaugeMetricFamily("canbridge_build_info", "version", labels=["version"])
    info.add_metric([__version__], 1)
    return [*counters.values(), dropped, errors, *gauges.values(), states, latency, *health.families, uptime, info]


# health key -> (metric, help, is a counter, scale)
_HEALTH = {
    "load_pct": ("canbridge_bus_load_ratio", "bus load over the last second (canbusload's worst-case estimate)", False,
                 0.01),
    "bits_per_s": ("canbridge_bus_bits_per_second", "bits on the wire over the last second", False, 1),
    "bitrate": ("canbridge_bus_bitrate_bits_per_second", "nominal bitrate", False, 1),
    "dbitrate": ("canbridge_bus_data_bitrate_bits_per_second", "CAN FD data bitrate", False, 1),
    "txerr": ("canbridge_bus_tx_error_counter", "the controller's transmit error counter (TEC)", False, 1),
    "rxerr": ("canbridge_bus_rx_error_counter", "the controller's receive error counter (REC)", False, 1),
    "rx_overruns": ("canbridge_bus_rx_overruns", "the controller's RX FIFO overruns", True, 1),
    "rx_dropped": ("canbridge_bus_rx_dropped", "frames the interface dropped on receive", True, 1),
    "socket_drops": ("canbridge_bus_socket_drops", "frames dropped because the bridge's socket was full", True, 1),
}


class _HealthFamilies:
    """The bus health metric families, filled per endpoint from its `health` dict."""

    def __init__(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.by_key = {key: (CounterMetricFamily if counter else GaugeMetricFamily)(name, text, labels=["endpoint"])
                       for key, (name, text, counter, _scale) in _HEALTH.items()}
        self.events = CounterMetricFamily("canbridge_bus_controller_events", "the controller's xstats",
                                          labels=["endpoint", "event"])

    def add(self, endpoint: str, health: dict) -> None:
        for key, family in self.by_key.items():
            if health.get(key) is not None:
                family.add_metric([endpoint], health[key] * _HEALTH[key][3])
        for event, n in (health.get("xstats") or {}).items():
            self.events.add_metric([endpoint, event], n)

    @property
    def families(self) -> list:
        return [*self.by_key.values(), self.events]


def _buckets(hist: dict) -> list[tuple[str, float]]:
    """Log2Histogram snapshot -> cumulative Prometheus buckets (le in seconds, last "+Inf")."""
    out, total = [], 0
    for bound, n in zip(hist["le_us"], hist["counts"]):
        total += n
        out.append(("+Inf" if bound is None else repr(bound / 1e6), total))
    return out


class SnapshotCollector:
    """prometheus-client Collector over the last published snapshot (read-only in the HTTP thread)."""

    def __init__(self) -> None:
        self.snapshot: dict = {}

    def publish(self, snapshot: dict) -> None:
        """Reactor thread: hand over a dict that nobody mutates afterwards."""
        self.snapshot = snapshot

    def collect(self):
        yield from snapshot_metrics(self.snapshot)


class MetricsServer:
    """Starts prometheus-client's HTTP server on addr:port with a private registry. Raises ConfigError
    when prometheus-client is missing, OSError naming the address when it cannot bind."""

    def __init__(self, addr: tuple[str, int]) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise ConfigError("--metrics needs prometheus-client: pip install canbridge[metrics]") from None
        self.collector = SnapshotCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(addr[1], addr=addr[0], registry=registry)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {addr[0]}:{addr[1]}: {exc.strerror}") from None
        self.address = self._server.server_address[:2]

    def publish(self, snapshot: dict) -> None:
        self.collector.publish(snapshot)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
