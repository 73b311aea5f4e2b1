"""SocketCAN link management over rtnetlink (pyroute2 IPRoute): list, show, set up, restart, vcan.

What `ip -details link show type can` and `ip link set can0 type can bitrate ...` do, as a library and as
`canbridge link ...` (the CLI reference is in docs/deployment.md). Sources: linux/can/netlink.h
(IFLA_CAN_* attributes, `struct can_bittiming`, `struct can_berr_counter`, `enum can_state`),
drivers/net/can/dev/netlink.c (what the kernel accepts), pyroute2's `ifinfmsg` CAN plugin.

Units: bitrates in bit/s; sample points as a fraction of the bit time (0.875; the kernel's unit is
tenths of a percent, 875); restart_ms in milliseconds (0 = no automatic restart after BUS-OFF).
Changing bit timing needs CAP_NET_ADMIN and a link that is down: `setup()` takes it down, applies
the settings and brings it up again. Every failure raises LinkError naming the interface and the
options at fault; nothing a caller asked for is silently skipped.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridge.hw.errors import CanBridgeError, ConfigError
from bridge.hw.linksettings import LINK_KEYS, link_value

ARPHRD_CAN = 280  # linux/if_arp.h: the link type of can, vcan and vxcan devices
CAN_MTU, CANFD_MTU = 16, 72  # sizeof(struct can_frame), sizeof(struct canfd_frame)
# enum can_state (linux/can/netlink.h) as candump/`ip -details` print it
STATES = {0: "ERROR-ACTIVE", 1: "ERROR-WARNING", 2: "ERROR-PASSIVE", 3: "BUS-OFF", 4: "STOPPED", 5: "SLEEPING"}
# pyroute2 decodes IFLA_CAN_STATE through this value map
_PYROUTE2_STATES = {"ERROR_ACTIVE": 0, "ERROR_WARNING": 1, "ERROR_PASSIVE": 2, "BUS_OFF": 3, "STOPPED": 4,
                    "SLEEPING": 5}
BIT_TIMING_KEYS = ("bitrate", "sample_point", "dbitrate", "dsample_point", "restart_ms")


class LinkError(CanBridgeError):
    """A link cannot be found, read or changed; the message names the interface and the option."""


class NoSuchLink(LinkError):
    """The interface does not exist (e.g. its USB adapter is not plugged in)."""


@dataclass
class LinkInfo:
    """One CAN link as the kernel reports it. CAN-controller fields are None on vcan/vxcan, which have
    no bit timing, and when the driver does not report them (berr counters need do_get_berr_counter)."""

    name: str
    index: int
    kind: str  # "can" (a real controller), "vcan", "vxcan", or "" if the kernel gave no IFLA_INFO_KIND
    up: bool  # administratively up (IFF_UP)
    operstate: str  # "UP", "DOWN", "UNKNOWN" (vcan), ...
    mtu: int  # 16: classic CAN only; 72: CAN FD
    txqueuelen: int
    state: str | None = None  # one of STATES
    bitrate: int | None = None
    sample_point: float | None = None
    dbitrate: int | None = None
    dsample_point: float | None = None
    clock_hz: int | None = None
    restart_ms: int | None = None
    txerr: int | None = None  # IFLA_CAN_BERR_COUNTER
    rxerr: int | None = None
    ctrlmode: list[str] = field(default_factory=list)  # modes that are on, e.g. ["fd", "berr_reporting"]
    stats: dict[str, int] = field(default_factory=dict)  # rx/tx packets, errors, dropped (IFLA_STATS64)

    @property
    def fd(self) -> bool:
        return self.mtu == CANFD_MTU


def _data(msg, name: str):
    return msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", name)


def link_info(msg) -> LinkInfo:
    """LinkInfo from a decoded RTM_NEWLINK message (pyroute2 ifinfmsg)."""
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
    info = LinkInfo(
        name=msg.get_attr("IFLA_IFNAME"),
        index=msg["index"],
        kind=kind,
        up=bool(msg["flags"] & 1),  # IFF_UP
        operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
        mtu=msg.get_attr("IFLA_MTU"),
        txqueuelen=msg.get_attr("IFLA_TXQLEN"),
    )
    stats = msg.get_attr("IFLA_STATS64")
    if stats is not None:
        info.stats = {k: stats[k] for k in ("rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped",
                                            "tx_dropped")}
    if kind != "can":
        return info
    state = _data(msg, "IFLA_CAN_STATE")
    if state is not None:
        info.state = STATES.get(_PYROUTE2_STATES.get(state, state), str(state))
    timing = _data(msg, "IFLA_CAN_BITTIMING")
    if timing is not None and timing["bitrate"]:
        info.bitrate, info.sample_point = timing["bitrate"], timing["sample_point"] / 1000
    dtiming = _data(msg, "IFLA_CAN_DATA_BITTIMING")
    if dtiming is not None and dtiming["bitrate"]:
        info.dbitrate, info.dsample_point = dtiming["bitrate"], dtiming["sample_point"] / 1000
    info.clock_hz = _data(msg, "IFLA_CAN_CLOCK")
    info.restart_ms = _data(msg, "IFLA_CAN_RESTART_MS")
    berr = _data(msg, "IFLA_CAN_BERR_COUNTER")
    if berr is not None:
        info.txerr, info.rxerr = berr["txerr"], berr["rxerr"]
    modes = _data(msg, "IFLA_CAN_CTRLMODE")
    if modes is not None:
        info.ctrlmode = sorted(k for k, v in modes.items() if v == "on")
    return info


def _errmsg(exc: NetlinkError) -> str:
    return os.strerror(exc.code) if exc.code else str(exc)


def _index(ipr: IPRoute, iface: str) -> int:
    found = ipr.link_lookup(ifname=iface)
    if not found:
        raise NoSuchLink(f"{iface}: no such network interface")
    return found[0]


def _get(ipr: IPRoute, iface: str) -> LinkInfo:
    msg = ipr.get_links(_index(ipr, iface))[0]
    if msg["ifi_type"] != ARPHRD_CAN:
        raise LinkError(f"{iface}: not a CAN interface (link type {msg['ifi_type']}, CAN is {ARPHRD_CAN})")
    return link_info(msg)


def list_links() -> list[LinkInfo]:
    """Every CAN link (can, vcan, vxcan: link type ARPHRD_CAN) in this network namespace, by index."""
    with IPRoute() as ipr:
        return [link_info(m) for m in ipr.get_links() if m["ifi_type"] == ARPHRD_CAN]


def show(iface: str) -> LinkInfo:
    """The link named iface; LinkError if it does not exist or is not a CAN link."""
    with IPRoute() as ipr:
        return _get(ipr, iface)


def _change(ipr: IPRoute, iface: str, what: str, **request) -> None:
    """One RTM_NEWLINK 'set'; kernel errors become LinkError naming `what` (the options in this request)."""
    try:
        ipr.link("set", index=_index(ipr, iface), **request)
    except NetlinkError as exc:
        raise LinkError(_explain(iface, what, exc)) from None


def _explain(iface: str, what: str, exc: NetlinkError) -> str:
    text = f"{iface}: cannot set {what}: {_errmsg(exc)}"
    if exc.code == errno.EPERM:
        return text + " (needs CAP_NET_ADMIN: run as root or from canbridge-link@.service)"
    if exc.code == errno.EOPNOTSUPP:
        return text + " (this device has no such setting; vcan and vxcan have no bit timing)"
    if exc.code == errno.EINVAL:
        return text + " (the controller rejects this value; check the bitrate, sample point and the clock)"
    if exc.code == errno.EBUSY:
        return text + " (the link is busy: it must be down, and restart works only in BUS-OFF)"
    return text


def set_up(iface: str) -> None:
    with IPRoute() as ipr:
        _get(ipr, iface)  # CAN links only: never take the gateway's Ethernet up or down by a typo
        _change(ipr, iface, "state up", state="up")


def set_down(iface: str) -> None:
    with IPRoute() as ipr:
        _get(ipr, iface)
        _change(ipr, iface, "state down", state="down")


def set_mtu(iface: str, mtu: int) -> None:
    """16 = classic CAN only, 72 = CAN FD (vcan, vxcan; on a controller use setup(fd=...))."""
    if mtu not in (CAN_MTU, CANFD_MTU):
        raise LinkError(f"{iface}: mtu {mtu}: a CAN link's MTU is {CAN_MTU} (classic) or {CANFD_MTU} (CAN FD)")
    with IPRoute() as ipr:
        _get(ipr, iface)
        _change(ipr, iface, f"mtu {mtu}", mtu=mtu)


@dataclass
class Settings:
    """What `setup()` applies; None leaves a setting as it is. Values as in config.LINK_KEYS."""

    bitrate: int | None = None
    sample_point: float | None = None
    dbitrate: int | None = None
    dsample_point: float | None = None
    fd: bool | None = None
    restart_ms: int | None = None
    txqueuelen: int | None = None

    def given(self, keys=None) -> list[str]:
        return [k for k, v in asdict(self).items() if v is not None and (keys is None or k in keys)]

    def check(self, iface: str) -> None:
        for key in self.given(LINK_KEYS):
            try:
                link_value(key, getattr(self, key), key)
            except ConfigError as exc:
                raise LinkError(f"{iface}: {exc}") from None
        if (self.sample_point is not None and self.bitrate is None) or (
            self.dsample_point is not None and self.dbitrate is None
        ):
            raise LinkError(f"{iface}: a sample point needs its bitrate (the kernel computes both together)")
        if self.dbitrate is not None and self.fd is False:
            raise LinkError(f"{iface}: dbitrate is the CAN FD data phase bitrate; it cannot go with fd off")


def _bittiming(bitrate: int, sample_point: float | None) -> dict:
    # tq = 0: the kernel computes the time quanta from bitrate and sample point (CONFIG_CAN_CALC_BITTIMING)
    return {"bitrate": bitrate, "sample_point": round(sample_point * 1000) if sample_point else 0}


def _can_request(s: Settings) -> dict:
    """IFLA_INFO_DATA for kind "can" (pyroute2 names): bit timing, FD control mode, restart_ms."""
    req: dict = {}
    if s.bitrate is not None:
        req["can_bittiming"] = _bittiming(s.bitrate, s.sample_point)
    if s.dbitrate is not None:
        req["can_data_bittiming"] = _bittiming(s.dbitrate, s.dsample_point)
    fd = True if s.dbitrate is not None and s.fd is None else s.fd
    if fd is not None:
        req["can_ctrlmode"] = {"fd": "on" if fd else "off"}
    if s.restart_ms is not None:
        req["can_restart_ms"] = s.restart_ms
    return req


def setup(iface: str, bitrate: int | None = None, sample_point: float | None = None, dbitrate: int | None = None,
          dsample_point: float | None = None, fd: bool | None = None, restart_ms: int | None = None,
          txqueuelen: int | None = None) -> LinkInfo:
    """Take iface down, apply the given settings, bring it up; returns the link as the kernel then reports it.

    On a CAN controller (kind "can") the settings go in one IFLA_INFO_DATA request, so the kernel
    checks them together; `fd` (implied by dbitrate) is the FD control mode, which also makes the MTU 72.
    On vcan/vxcan `fd` sets the MTU (72 or 16) and bit-timing options raise LinkError (EOPNOTSUPP).
    If a setting fails, a link that was up is brought up again and LinkError names the option."""
    s = Settings(bitrate, sample_point, dbitrate, dsample_point, fd, restart_ms, txqueuelen)
    s.check(iface)
    with IPRoute() as ipr:
        before = _get(ipr, iface)
        _change(ipr, iface, "state down", state="down")
        try:
            _apply(ipr, iface, before.kind, s)
        except LinkError:
            if before.up:
                try:
                    _change(ipr, iface, "state up", state="up")
                except LinkError:
                    pass  # the first error is the one to report
            raise
        _change(ipr, iface, "state up (with the new settings)", state="up")
        return _get(ipr, iface)


def _apply(ipr: IPRoute, iface: str, kind: str, s: Settings) -> None:
    timing = s.given(BIT_TIMING_KEYS)
    if kind == "can":
        request = _can_request(s)
        if request:
            what = ", ".join(f"{k}={getattr(s, k)}" for k in s.given(BIT_TIMING_KEYS + ("fd",)))
            _change(ipr, iface, what, kind="can", **request)
    else:
        if timing:
            # ask the kernel anyway (kind "can" on a vcan gives EOPNOTSUPP), so the error is the kernel's
            what = ", ".join(f"{k}={getattr(s, k)}" for k in timing)
            _change(ipr, iface, f"{what} on a {kind or 'non-controller'} link", kind="can", **_can_request(s))
        if s.fd is not None:
            mtu = CANFD_MTU if s.fd else CAN_MTU
            _change(ipr, iface, f"fd={s.fd} (mtu {mtu})", mtu=mtu)
    if s.txqueuelen is not None:
        _change(ipr, iface, f"txqueuelen={s.txqueuelen}", txqlen=s.txqueuelen)


def restart(iface: str) -> None:
    """Restart a controller in BUS-OFF now (IFLA_CAN_RESTART; `ip link set IFACE type can restart`).
    The kernel refuses (EBUSY) unless the link is up and in BUS-OFF."""
    with IPRoute() as ipr:
        _get(ipr, iface)
        _change(ipr, iface, "restart", kind="can", can_restart=1)


def create_vcan(name: str, mtu: int = CANFD_MTU, up: bool = True) -> LinkInfo:
    """Create a vcan link (mtu 72 = CAN FD, 16 = classic) and bring it up; needs the vcan module."""
    if mtu not in (CAN_MTU, CANFD_MTU):
        raise LinkError(f"{name}: mtu {mtu}: a CAN link's MTU is {CAN_MTU} (classic) or {CANFD_MTU} (CAN FD)")
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind="vcan")
        except NetlinkError as exc:
            hint = {errno.EEXIST: " (it exists already)",
                    errno.EOPNOTSUPP: " (no vcan in this kernel: modprobe vcan)"}.get(exc.code, "")
            raise LinkError(f"{name}: cannot create vcan: {_errmsg(exc)}{hint}") from None
        _change(ipr, name, f"mtu {mtu}", mtu=mtu)
        if up:
            _change(ipr, name, "state up", state="up")
        return _get(ipr, name)


def delete(iface: str) -> None:
    """Delete a virtual link (vcan, vxcan); a real controller cannot be deleted (EOPNOTSUPP)."""
    with IPRoute() as ipr:
        _get(ipr, iface)
        try:
            ipr.link("del", index=_index(ipr, iface))
        except NetlinkError as exc:
            raise LinkError(f"{iface}: cannot delete: {_errmsg(exc)}") from None
