"""Operations around a running Bridge (docs/cli.md, "Operations"): the control socket that
`canbridge stats` queries, the optional Prometheus endpoint, and SIGHUP reload. Everything here runs
in the reactor thread except prometheus-client's HTTP thread, which only reads published snapshots.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from bridge import __version__
from bridge.daemon import control
from bridge.daemon import reload
from bridge.daemon.metrics import MetricsServer

log = logging.getLogger(__name__)

METRICS_REFRESH_S = 1.0  # how stale a Prometheus scrape may be; one stats() walk per second is cheap


def bridge_name(config) -> str:
    """NAME in the default control socket path: the config file's stem (canbridge@NAME reads NAME.toml)."""
    if config.source:
        return os.path.splitext(os.path.basename(config.source))[0] or "canbridge"
    return "canbridge"


class Operations:
    """Started by Bridge.run() once every endpoint is open. Raises OSError when an explicitly requested
    control path or the metrics address cannot be used, ConfigError when prometheus-client is missing."""

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        self.started = time.monotonic()
        self.control: control.ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self._timer = None
        ops = bridge.config.ops
        try:
            if ops.control_enabled:
                self.control = self._open_control(ops.control)
            if ops.metrics:
                self.metrics = MetricsServer(ops.metrics)
                log.info("Prometheus metrics on http://%s:%d/metrics", *self.metrics.address)
                self._publish()
        except BaseException:
            self.close()
            raise
        # Without a handler SIGHUP would kill the process: always catch it, reload when there is a file.
        bridge.reactor.add_signal_handler(signal.SIGHUP, self.reload)

    def _open_control(self, path: str | None) -> control.ControlServer | None:
        commands = {"stats": self.stats, "ping": lambda _req: {"ok": True}, "reload": self._reload_command}
        if path is not None:  # asked for: failing is an error
            server = control.ControlServer(self.bridge.reactor, path, commands)
        else:
            path = control.default_path(bridge_name(self.bridge.config))
            try:
                server = control.ControlServer(self.bridge.reactor, path, commands)
            except OSError as exc:  # optional when not asked for: say so, keep bridging
                log.warning("%s; running without a control socket", exc)
                return None
        log.info("control socket %s", path)
        return server

    def stats(self, _request=None) -> dict:
        """The `stats` command: {"version", "pid", "uptime_s", "config", "stats": Bridge.stats()}."""
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "config": self.bridge.config.source,
            "stats": self.bridge.stats(),
        }

    def _publish(self) -> None:
        self.metrics.publish(self.stats())  # a fresh dict: the HTTP thread may read it at any time
        self._timer = self.bridge.reactor.call_later(METRICS_REFRESH_S, self._publish)

    def reload(self) -> bool:
        """SIGHUP: re-read the config file and apply the difference; False when not possible or invalid."""
        if not self.bridge.config.source:
            log.warning("SIGHUP: nothing to reload (only `canbridge run -c FILE` can reload)")
            return False
        return reload.reload(self.bridge) is not None

    def _reload_command(self, _request) -> dict:
        return {"ok": self.reload(), "config": self.bridge.config.source}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.control is not None:
            self.control.close()
            self.control = None
