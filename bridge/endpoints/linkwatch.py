"""Link events: an rtnetlink RTNLGRP_LINK subscription in the reactor, so the bridge sees an interface
go down, come up, disappear (USB adapter unplugged) or come back (replugged) at once, without polling.

One non-blocking AF_NETLINK socket, bound to the link multicast group; each datagram carries
RTM_NEWLINK / RTM_DELLINK messages, decoded with pyroute2's rtnl marshal and hw/links.py's
`link_info()` (which reads IFLA_CAN_STATE on CAN controllers). If events arrive faster than the loop
reads them the kernel drops some and recv() fails with ENOBUFS: then every watched link is re-read
with a netlink dump (counted in `overflows`), so a lost event never leaves a stale state.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from bridge.core.reactor import Reactor
from hw.links import link_info

log = logging.getLogger(__name__)

NL_RCVBUF = 1 << 20  # link events waiting for the loop (~1 KB each): bursts of a thousand links changing
NL_READ_MAX = 64  # datagrams per readable event: bounds the time other fds wait
IFF_UP = 0x1

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


def event_of(msg) -> LinkEvent:
    """LinkEvent from a decoded RTM_NEWLINK/RTM_DELLINK message (pyroute2 ifinfmsg)."""
    name = msg.get_attr("IFLA_IFNAME")
    if msg["header"]["type"] == RTM_DELLINK:
        return LinkEvent(name, 0, ABSENT)
    info = link_info(msg)
    return LinkEvent(name, info.index, UP if msg["flags"] & IFF_UP else DOWN, info.state)


def current(ifname: str) -> LinkEvent:
    """The link's state now, from a netlink dump (blocking; start-up and resync only)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return LinkEvent(ifname, 0, ABSENT)
        msgs = ipr.get_links(found[0])
    return event_of(msgs[0]) if msgs else LinkEvent(ifname, 0, ABSENT)


class LinkWatch:
    """Calls each watcher with a LinkEvent whenever its interface's link changes (any RTM_NEWLINK for that
    name, so also repeats of the same state). Opening needs only an unprivileged netlink socket; it
    follows the network namespace the process is in."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.overflows = 0  # times the kernel dropped events (ENOBUFS) and the links were re-read
        self._watchers: dict[str, list[Callable[[LinkEvent], None]]] = {}
        self._marshal = MarshalRtnl()
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
            for msg in self._marshal.parse(data):
                if msg["header"]["type"] in (RTM_NEWLINK, RTM_DELLINK):
                    name = msg.get_attr("IFLA_IFNAME")
                    if name in self._watchers:
                        self._notify(event_of(msg))

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
