"""The bridge process: builds endpoints from a Config, runs the reactor, reports counters."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal

from bridge.daemon import privileges
from bridge.daemon import sdnotify
from bridge.codec import native
from bridge.daemon.config import Config, PeerConfig
from bridge.daemon.operations import Operations
from bridge.endpoints.busfaults import BusFaults
from bridge.endpoints.bushealth import BusHealthMonitor
from bridge.endpoints.socketcan import SocketCanEndpoint
from bridge.endpoints.liveness import HEARTBEAT_S
from bridge.protocols.base import PeerContext
from bridge.core.reactor import Reactor
from bridge.core.router import Router

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _logged(what: str):
    """Run one step of a larger change; a failure is logged and the change goes on."""
    try:
        yield
    except OSError as exc:
        log.error("%s: %s", what, exc)
    except Exception:
        log.exception("%s: step failed", what)


class Bridge:
    """Owns the reactor, the router and every endpoint. Raises OSError (with the interface or
    address named) when an endpoint the user asked for cannot be opened."""

    def __init__(self, config: Config, reactor: Reactor | None = None) -> None:
        self.config = config
        self.reactor = reactor or Reactor()
        self.router = Router(self.reactor)
        self.buses: list[SocketCanEndpoint] = []
        self.peers: list = []
        self.ops: Operations | None = None  # set by run()
        self.peer_groups: list[list] = []  # endpoints of config.peers[i] (a beacon rides with its server)
        self.faults = BusFaults(self.reactor)  # link and bus-state tracking of every bus
        self.health = BusHealthMonitor(self.reactor)  # error counters, xstats, overruns, load of every bus
        try:
            for channel, iface in enumerate(config.interfaces):
                self.buses.append(self._open_bus(channel, iface))
            self.hello = native.Hello(
                version=native.VERSION,
                capabilities=native.CAP_FD | native.CAP_ERR_FRAMES,
                heartbeat_ms=int(HEARTBEAT_S * 1000),
                channels=tuple(i.name for i in config.interfaces),
            )
            for peer in config.peers:
                self.peer_groups.append(self._add_peer(peer))
        except BaseException:
            self.close()
            raise

    def _open_bus(self, channel: int, iface) -> SocketCanEndpoint:
        try:
            bus = SocketCanEndpoint(
                self.reactor,
                iface.name,
                channel,
                self.router.from_bus,
                rx_filter=iface.filter,
                error_frames=iface.error_frames,
                fd=iface.fd,
                **({"rcvbuf": iface.rx_buffer} if iface.rx_buffer else {}),
                max_age=iface.max_age,
                tx_flush=iface.tx_flush,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open CAN interface {iface.name}: {exc.strerror}") from None
        self.router.add_bus(bus)
        try:
            self.health.add(bus, self.faults.add(bus))
        except OSError as exc:
            bus.close()
            raise OSError(exc.errno, f"cannot watch CAN interface {iface.name}: {exc.strerror}") from None
        log.info("bus %s: channel %d, CAN FD %s", iface.name, channel, "on" if bus.fd_enabled else "off")
        return bus

    def _add_peer(self, peer: PeerConfig) -> list:
        """Open one configured peer; returns its endpoints (they are also in self.peers)."""
        endpoints = self._open_peer(peer, self.hello)
        self.peers.extend(endpoints)
        return endpoints

    def apply_reload(self, new: Config, plan) -> None:
        """Apply a bridge.daemon.reload.Plan (SIGHUP): close what changed or went away first (frees ports), then
        open; an endpoint that fails to open is logged and left out (retried on the next reload)."""
        for i in plan.close_peers:
            self._close_endpoints(self.peer_groups[i])
        for ch in plan.close_buses:
            if (bus := self.router.buses.pop(ch, None)) is not None:
                self._close_endpoints([bus])
        self.config, self.hello = new, dataclasses.replace(self.hello, channels=tuple(i.name for i in new.interfaces))
        for ch, iface in enumerate(new.interfaces):
            if ch not in self.router.buses:  # changed, added, or failed to open last time
                with _logged("reload"):
                    self.buses.append(self._open_bus(ch, iface))
        groups: list[list] = [[] for _ in new.peers]
        for i, j in plan.keep_peers:
            groups[j] = self.peer_groups[i]
        for j, peer in enumerate(new.peers):
            if not groups[j]:  # changed, added, or failed to open last time
                with _logged("reload"):
                    groups[j] = self._add_peer(peer)
        self.peer_groups = groups

    def _close_endpoints(self, endpoints: list) -> None:
        for ep in endpoints:
            if ep in self.buses:  # stop watching a bus we close: a later link event must not reopen it
                with _logged("reload"):
                    self.faults.remove(ep)
                self.health.remove(ep)
            with _logged("reload"):
                ep.close()
            for owned in (self.peers, self.buses):
                if ep in owned:
                    owned.remove(ep)

    def _open_peer(self, peer: PeerConfig, hello) -> list:
        """The endpoints of one configured peer, opened by its protocol (bridge.protocols.registry)."""
        protocol = peer.protocol
        gate = peer.access.gate(self.reactor.time())  # one per configured peer: its connections share it
        where = f"peer {peer.url!r}"
        secure = None
        if peer.security.tls:  # ssl is imported only for a peer that uses TLS
            from bridge.security import tls

            secure = tls.for_peer(peer.security, protocol.tls_client, peer.host, where)  # ConfigError if unusable
        ctx = PeerContext(self.reactor, self.router, hello, list(self.buses), tls=secure,
                          routing=(peer.filter, peer.inbound_filter, gate))
        try:
            return [protocol.open(ctx, peer), *ctx.also_owned]
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open {peer.url}: {exc.strerror}") from None

    def stats(self) -> dict:
        """{endpoint name: counters snapshot}; TCP servers include their live clients."""
        out = {}
        for ep in [*self.buses, *self.peers]:
            out[ep.name] = ep.counters.snapshot()
            if isinstance(ep, SocketCanEndpoint):
                out[ep.name]["tx_queued"] = ep.tx_queued
                out[ep.name]["health"] = self.health.snapshot(ep)
            for client in getattr(ep, "clients", ()):
                out[client.name] = client.counters.snapshot()
            unidentified = getattr(ep, "unidentified", None)
            if unidentified is not None and (unidentified.dropped or unidentified.errors or unidentified.tx_frames):
                out[ep.name + " (unidentified clients)"] = unidentified.snapshot()
            live = getattr(ep, "peer", None)
            if live is not None:
                out[ep.name + " (current connection)"] = live.counters.snapshot()
        out["reactor"] = {"callback_errors": self.reactor.callback_errors, "passes": self.reactor.passes}
        return out

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; returns 0 after a requested stop. SIGUSR1 logs counters.
        Under systemd (bridge/daemon/sdnotify.py): READY=1 from the loop's first pass, WATCHDOG=1 from a loop timer
        (so a stuck loop misses it), STOPPING=1 when the loop ends."""
        self.reactor.stop_on_signals(signal.SIGINT, signal.SIGTERM)
        self.reactor.add_signal_handler(signal.SIGUSR1, self.log_stats)
        self.reactor.call_soon(self._notify_ready)
        try:
            self.ops = Operations(self)  # control socket, Prometheus endpoint, SIGHUP reload (daemon/operations.py)
            if self.config.user:  # after every socket is open, before the first frame is handled
                privileges.drop_privileges(self.config.user)
            self.reactor.run()
        finally:
            sdnotify.stopping()
            self.log_stats()
            if self.ops is not None:
                self.ops.close()
            self.close()
            self.reactor.close()
        return 0

    def _notify_ready(self) -> None:
        names = [ep.name for ep in [*self.buses, *self.peers]]
        sdnotify.ready("bridging " + ", ".join(names))
        interval = sdnotify.watchdog_interval()
        if interval:
            self._watchdog(interval / 2)

    def _watchdog(self, every: float) -> None:
        sdnotify.watchdog()
        self.reactor.call_later(every, lambda: self._watchdog(every))

    def log_stats(self) -> None:
        log.info("counters: %s", json.dumps(self.stats(), sort_keys=True))

    def close(self) -> None:
        self.faults.close()
        self.health.close()
        for ep in [*self.peers, *self.buses]:
            try:
                ep.close()
            except Exception:
                log.exception("closing %s", ep.name)
        self.peers.clear()
        self.buses.clear()
