"""Link events: an rtnetlink RTNLGRP_LINK subscription in the reactor, so the bridge sees an interface
go down, come up, disappear (USB adapter unplugged) or come back (replugged) at once, without polling.

One non-blocking AF_NETLINK socket, bound to the link multicast group; each datagram carries
RTM_NEWLINK / RTM_DELLINK messages, decoded by hw/linkstate.py (name, ifindex, IFF_UP and a CAN
controller's IFLA_CAN_STATE; no pyroute2, which would cost ~25 MB of RSS). If events arrive faster than
the loop reads them the kernel drops some and recv() fails with ENOBUFS: then every watched link is
re-read with RTM_GETLINK (counted in `overflows`), so a lost event never leaves a stale state.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from bridge.core.reactor import Reactor
from bridge.hw import linkstate
from bridge.hw.linkstate import RTMGRP_LINK

log = logging.getLogger(__name__)

NL_RCVBUF = 1 << 20  # link events waiting for the loop (~1 KB each): bursts of a thousand links changing
NL_READ_MAX = 64  # datagrams per readable event: bounds the time other fds wait

UP, DOWN, ABSENT = "up", "down", "absent"


@dataclass(frozen=True)
class LinkEvent:
    """One link's state: name; index (ifindex, 0 when absent); state UP (administratively up), DOWN or
    ABSENT (no such interface); can_state: IFLA_CAN_STATE of a CAN controller ("ERROR-ACTIVE",
    "BUS-OFF", "STOPPED"...), None on vcan/vxcan and when absent."""

    name: str
    index: int
    state: str
    can_state: str | None = None


def event_of(link: linkstate.LinkState) -> LinkEvent:
    """LinkEvent from a decoded RTM_NEWLINK/RTM_DELLINK message (bridge.hw.linkstate.LinkState)."""
    if link.deleted:
        return LinkEvent(link.name, 0, ABSENT)
    return LinkEvent(link.name, link.index, UP if link.up else DOWN, link.can_state)


def current(ifname: str) -> LinkEvent:
    """The link's state now, from RTM_GETLINK (blocking; start-up and resync only)."""
    link = linkstate.query(ifname)
    return event_of(link) if link is not None else LinkEvent(ifname, 0, ABSENT)


class LinkWatch:
    """Calls each watcher with a LinkEvent whenever its interface's link changes (any RTM_NEWLINK for that
    name, so also repeats of the same state). Opening needs only an unprivileged netlink socket; it
    follows the network namespace the process is in."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.overflows = 0  # times the kernel dropped events (ENOBUFS) and the links were re-read
        self._watchers: dict[str, list[Callable[[LinkEvent], None]]] = {}
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NL_RCVBUF)
            self.sock.bind((0, RTMGRP_LINK))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        reactor.add_reader(self.sock.fileno(), self._on_readable)

    def watch(self, ifname: str, callback: Callable[[LinkEvent], None]) -> LinkEvent:
        """Register callback(LinkEvent) for ifname; returns the link's state now. Subscribed before the
        dump, so a change in between is reported, not lost."""
        self._watchers.setdefault(ifname, []).append(callback)
        return current(ifname)

    def unwatch(self, ifname: str, callback: Callable[[LinkEvent], None]) -> None:
        """Stop calling `callback` for ifname (no error if it was not registered)."""
        callbacks = self._watchers.get(ifname, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._watchers.pop(ifname, None)

    def _on_readable(self) -> None:
        for _ in range(NL_READ_MAX):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events lost: re-read what we watch
                    self._resync()
                    continue
                raise
            for link in linkstate.parse(data):
                if link.name in self._watchers:
                    self._notify(event_of(link))

    def _resync(self) -> None:
        self.overflows += 1
        log.warning("link events lost (netlink ENOBUFS): re-reading %s", ", ".join(self._watchers))
        for name in self._watchers:
            self._notify(current(name))

    def _notify(self, event: LinkEvent) -> None:
        for callback in self._watchers.get(event.name, ()):
            try:
                callback(event)
            except Exception:  # one bus's handler must not starve the others of the event
                log.exception("link event %s for %s", event, callback)

    def close(self) -> None:
        self.reactor.forget(self.sock.fileno())
        self.sock.close()
