"""SIGHUP: re-read the TOML file and change only what changed (docs/cli.md, "Operations").

`plan(old, new)` is pure: interfaces are compared by position (the position is the channel index on
the wire), peers by their whole configuration (URL and options; equal configs are matched one to one).
A changed peer is closed and opened again; an unchanged one keeps its sockets and connections. When any
interface changes, socketcand servers are re-created too (they announce the bus list at connect time).
Peers opened before the change keep the channel names of their HELLO.

`reload(bridge)` applies it: an invalid file (ConfigError) is logged and the running config stays; an
endpoint that fails to open is logged, left out, and tried again on the next SIGHUP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bridge.daemon.config import Config, load_toml
from bridge.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Indexes into old.interfaces / new.interfaces (same position = same channel) and old/new peers."""

    close_buses: list[int] = field(default_factory=list)  # channels to close (changed or gone)
    open_buses: list[int] = field(default_factory=list)  # channels to open from new.interfaces
    keep_peers: list[tuple[int, int]] = field(default_factory=list)  # (old index, new index)
    close_peers: list[int] = field(default_factory=list)
    open_peers: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.close_buses or self.open_buses or self.close_peers or self.open_peers)


def plan(old: Config, new: Config) -> Plan:
    p = Plan()
    for ch in range(max(len(old.interfaces), len(new.interfaces))):
        before = old.interfaces[ch] if ch < len(old.interfaces) else None
        after = new.interfaces[ch] if ch < len(new.interfaces) else None
        if before == after:
            continue
        if before is not None:
            p.close_buses.append(ch)
        if after is not None:
            p.open_buses.append(ch)
    buses_changed = bool(p.close_buses or p.open_buses)
    unmatched = list(range(len(old.peers)))
    for j, peer in enumerate(new.peers):
        match = next((i for i in unmatched if old.peers[i] == peer), None)
        if match is None or (buses_changed and peer.scheme == "socketcand"):
            p.open_peers.append(j)
        else:
            unmatched.remove(match)
            p.keep_peers.append((match, j))
    p.close_peers = unmatched
    return p


def reload(bridge) -> Plan | None:
    """Re-read bridge.config.source and apply the difference to the running bridge (reactor thread)."""
    path = bridge.config.source
    try:
        new = load_toml(path)
    except ConfigError as exc:
        log.error("reload: keeping the running configuration: %s", exc)
        return None
    if new.ops != bridge.config.ops:  # also when command-line flags override the file
        log.info("reload: [bridge] control/metrics differ from the running ones; they change only at a restart")
    new.ops = bridge.config.ops
    changes = plan(bridge.config, new)
    if changes.empty:
        log.info("reload: %s: no change", path)
        bridge.config = new
        return changes
    log.info("reload: %s: closing %d peer(s) and %d bus(es), opening %d peer(s) and %d bus(es), keeping %d peer(s)",
             path, len(changes.close_peers), len(changes.close_buses), len(changes.open_peers), len(changes.open_buses),
             len(changes.keep_peers))
    bridge.apply_reload(new, changes)
    return changes
