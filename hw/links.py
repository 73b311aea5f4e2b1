"""SocketCAN link management over rtnetlink (pyroute2 IPRoute): list, show, set up, restart, vcan.

What `ip -details link show type can` and `ip link set can0 type can bitrate ...` do, as a library and as
`canbridge link ...` (the CLI reference is in docs/deployment.md). Sources: linux/can/netlink.h
(IFLA_CAN_* attributes, `struct can_bittiming`, `struct can_berr_counter`, `enum can_state`),
drivers/net/can/dev/netlink.c (what the kernel accepts), pyroute2's `ifinfmsg` CAN plugin.

Units: bitrates in bit/s; sample points as a fraction of the bit time (0.875; the kernel's unit is
tenths of a percent, 875); restart_ms in milliseconds (0 = no automatic restart after BUS-OFF).
Changing bit timing needs CAP_NET_ADMIN and a link that is down: `setup()` takes it down, applies
the settings and brings it up again. Every failure raises LinkError naming the interface (and, on a
real controller, its type and driver: "can0 (sja1000, kvaser_pci)") and the options at fault; nothing a
caller asked for is silently skipped. What the controller cannot do (CAN FD on a classic SJA1000, a
mode it lacks) is refused before the link is touched, from the modes it reports
(IFLA_CAN_CTRLMODE_SUPPORTED); a bitrate or sample point it can only approach is made as near as the
kernel can, and `adjustments()` says by how much.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridge.hw.errors import CanBridgeError, ConfigError
from bridge.hw.linksettings import LINK_KEYS, link_value
from bridge.hw.linkstate import has_cap_net_admin

ARPHRD_CAN = 280  # linux/if_arp.h: the link type of can, vcan and vxcan devices
CAN_MTU, CANFD_MTU = 16, 72  # sizeof(struct can_frame), sizeof(struct canfd_frame)
# enum can_state (linux/can/netlink.h) as candump/`ip -details` print it
STATES = {0: "ERROR-ACTIVE", 1: "ERROR-WARNING", 2: "ERROR-PASSIVE", 3: "BUS-OFF", 4: "STOPPED", 5: "SLEEPING"}
# pyroute2 decodes IFLA_CAN_STATE through this value map
_PYROUTE2_STATES = {"ERROR_ACTIVE": 0, "ERROR_WARNING": 1, "ERROR_PASSIVE": 2, "BUS_OFF": 3, "STOPPED": 4,
                    "SLEEPING": 5}
BIT_TIMING_KEYS = ("bitrate", "sample_point", "dbitrate", "dsample_point", "restart_ms")
# control modes: our name -> pyroute2's IFLA_CAN_CTRLMODE field (linux/can/netlink.h CAN_CTRLMODE_*)
CTRLMODES = {"loopback": "loopback", "listen_only": "listenonly", "triple_sampling": "3_samples",
             "one_shot": "one_shot", "berr_reporting": "berr_reporting", "fd": "fd", "presume_ack": "presume_ack",
             "fd_non_iso": "fd_non_iso", "cc_len8_dlc": "cc_len8_dlc", "tdc_auto": "tdc_auto",
             "tdc_manual": "tdc_manual"}
_OUR_MODE = {v: k for k, v in CTRLMODES.items()}
MODE_KEYS = ("fd", "berr_reporting", "listen_only")  # the modes setup() sets


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
    ctrlmode: list[str] = field(default_factory=list)  # modes that are on, e.g. ["berr_reporting", "fd"]
    stats: dict[str, int] = field(default_factory=dict)  # rx/tx packets, errors, dropped (IFLA_STATS64)
    controller: str | None = None  # the bit-timing constants' name: "sja1000", "mcp251xfd", ...
    driver: str | None = None  # the device's driver (sysfs): "kvaser_pci", "gs_usb", ...; None on vcan
    supported_modes: list[str] | None = None  # IFLA_CAN_CTRLMODE_SUPPORTED (kernel >= 5.16); None: unknown
    timing_const: dict[str, int] | None = None  # IFLA_CAN_BITTIMING_CONST: tseg1/tseg2/sjw/brp limits

    @property
    def fd(self) -> bool:
        return self.mtu == CANFD_MTU

    @property
    def label(self) -> str:
        """The name as errors give it: "can0 (sja1000, kvaser_pci)" on a controller, else "vcan0"."""
        extra = [x for x in (self.controller, self.driver) if x]
        return f"{self.name} ({', '.join(extra)})" if extra else self.name


def _driver(name: str) -> str | None:
    try:
        return Path(f"/sys/class/net/{name}/device/driver").resolve(strict=True).name
    except OSError:
        return None


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
        info.ctrlmode = sorted(_OUR_MODE.get(k, k) for k, v in modes.items() if v == "on")
    ext = _data(msg, "IFLA_CAN_CTRLMODE_EXT")
    supported = ext.get_attr("IFLA_CAN_CTRLMODE_SUPPORTED") if ext is not None else None
    if supported is not None:
        info.supported_modes = sorted(_OUR_MODE.get(k, k) for k, v in supported.items() if v == "yes")
    const = _data(msg, "IFLA_CAN_BITTIMING_CONST")
    if const is not None:
        name = const["name"]
        info.controller = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\0")
        info.timing_const = {k: const[k] for k in ("tseg1_min", "tseg1_max", "tseg2_min", "tseg2_max", "sjw_max",
                                                   "brp_min", "brp_max", "brp_inc")}
    if kind == "can":
        info.driver = _driver(info.name)
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


def _change(ipr: IPRoute, iface: str, what: str, link: LinkInfo | None = None, **request) -> None:
    """One RTM_NEWLINK 'set'; kernel errors become LinkError naming `what` (the options in this request)
    and, given `link` (as read before), the controller."""
    try:
        ipr.link("set", index=_index(ipr, iface), **request)
    except NetlinkError as exc:
        raise LinkError(_explain(link.label if link else iface, what, exc, link)) from None


NEEDS_CAP = "needs CAP_NET_ADMIN: run as root, from canbridge-link@.service or the udev rule"


def _explain(label: str, what: str, exc: NetlinkError, link: LinkInfo | None = None) -> str:
    text = f"{label}: cannot set {what}: {_errmsg(exc)}"
    controller = link is not None and link.kind == "can"
    if exc.code == errno.EPERM:
        return f"{text} ({NEEDS_CAP})"
    if exc.code == errno.EOPNOTSUPP:
        if controller:
            return text + f" (the {link.controller or 'controller'} does not support it)"
        return text + " (this device has no such setting; vcan and vxcan have no bit timing)"
    if exc.code in (errno.EDOM, errno.ERANGE, errno.EINVAL) and controller and link.clock_hz:
        return text + f" (the {link.controller or 'controller'} with its {link.clock_hz / 1e6:g} MHz clock cannot " \
                      f"make this bit timing within the kernel's 5 %{_slowest(link)})"
    if exc.code == errno.EINVAL:
        return text + " (the controller rejects this value; check the bitrate, sample point and the clock)"
    if exc.code == errno.EBUSY:
        return text + " (the link is busy: it must be down, and restart works only in BUS-OFF)"
    return text


def _slowest(link: LinkInfo) -> str:
    c = link.timing_const
    if not c or not link.clock_hz:
        return ""
    return f"; its slowest is {link.clock_hz // (c['brp_max'] * (1 + c['tseg1_max'] + c['tseg2_max']))} bit/s"


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
    berr_reporting: bool | None = None
    listen_only: bool | None = None

    def wants(self) -> str:
        """The settings asked for, as errors name them: "bitrate=500000, restart_ms=100"."""
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if v is not None)

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


def _modes(s: Settings) -> dict[str, bool]:
    """The control modes asked for (fd implied by dbitrate)."""
    fd = True if s.dbitrate is not None and s.fd is None else s.fd
    wanted = {"fd": fd, "berr_reporting": s.berr_reporting, "listen_only": s.listen_only}
    return {k: v for k, v in wanted.items() if v is not None}


def _can_request(s: Settings) -> dict:
    """IFLA_INFO_DATA for kind "can" (pyroute2 names): bit timing, FD control mode, restart_ms."""
    req: dict = {}
    if s.bitrate is not None:
        req["can_bittiming"] = _bittiming(s.bitrate, s.sample_point)
    if s.dbitrate is not None:
        req["can_data_bittiming"] = _bittiming(s.dbitrate, s.dsample_point)
    modes = {CTRLMODES[k]: "on" if v else "off" for k, v in _modes(s).items()}
    if modes:
        req["can_ctrlmode"] = modes
    if s.restart_ms is not None:
        req["can_restart_ms"] = s.restart_ms
    return req


def setup(iface: str, bitrate: int | None = None, sample_point: float | None = None, dbitrate: int | None = None,
          dsample_point: float | None = None, fd: bool | None = None, restart_ms: int | None = None,
          txqueuelen: int | None = None, berr_reporting: bool | None = None,
          listen_only: bool | None = None) -> LinkInfo:
    """Take iface down, apply the given settings, bring it up; returns the link as the kernel then reports it.

    On a CAN controller (kind "can") the settings go in one IFLA_INFO_DATA request, so the kernel
    checks them together; `fd` (implied by dbitrate) is the FD control mode, which also makes the MTU 72.
    On vcan/vxcan `fd` sets the MTU (72 or 16) and bit-timing options raise LinkError (EOPNOTSUPP).
    berr_reporting and listen_only are control modes of a controller (refused on vcan/vxcan).
    If a setting fails, a link that was up is brought up again and LinkError names the option.
    Refused before the link is touched: a mode the controller does not list as supported, and a process
    without CAP_NET_ADMIN."""
    s = Settings(bitrate, sample_point, dbitrate, dsample_point, fd, restart_ms, txqueuelen, berr_reporting,
                 listen_only)
    s.check(iface)
    with IPRoute() as ipr:
        before = _get(ipr, iface)
        _refuse_early(before, s)
        _change(ipr, iface, "state down", before, state="down")
        try:
            _apply(ipr, iface, before, s)
        except LinkError:
            if before.up:
                try:
                    _change(ipr, iface, "state up", state="up")
                except LinkError:
                    pass  # the first error is the one to report
            raise
        _change(ipr, iface, "state up (with the new settings)", before, state="up")
        return _get(ipr, iface)


def _refuse_early(link: LinkInfo, s: Settings) -> None:
    """What cannot work is refused before the link goes down: no CAP_NET_ADMIN; on a controller, a mode
    it does not support (CAN FD on a classic controller); on vcan/vxcan, controller modes."""
    if not has_cap_net_admin():
        raise LinkError(f"{link.label}: cannot set {s.wants()}: {NEEDS_CAP}")
    modes = {k: v for k, v in _modes(s).items() if v}  # switching a mode off is always possible
    if link.kind == "can" and link.supported_modes is not None:
        missing = [k for k in modes if k not in link.supported_modes]
        if "fd" in missing:
            raise LinkError(f"{link.label}: cannot set {s.wants()}: the {link.controller or 'controller'} is a "
                            "classic CAN controller, it has no CAN FD (no fd, dbitrate or dsample_point)")
        if missing:
            raise LinkError(f"{link.label}: cannot set {', '.join(f'{k}=True' for k in missing)}: the "
                            f"{link.controller or 'controller'} does not support it (it supports: "
                            f"{', '.join(link.supported_modes)})")
    elif link.kind != "can" and (s.berr_reporting is not None or s.listen_only is not None):
        raise LinkError(f"{link.label}: berr_reporting and listen_only are modes of a CAN controller; a "
                        f"{link.kind or 'non-controller'} link has none")


def adjustments(s: Settings, link: LinkInfo) -> list[str]:
    """What the kernel made differently from what was asked (it picks the nearest bit timing the controller's
    clock allows, within 5 %): "can0: bitrate 123457 asked, 123076 made (-0.31 %)"; empty if all is exact."""
    notes = []
    for rate, sp in (("bitrate", "sample_point"), ("dbitrate", "dsample_point")):
        asked, made = getattr(s, rate), getattr(link, rate)
        if asked is not None and made is not None and made != asked:
            notes.append(f"{link.name}: {rate} {asked} asked, {made} made ({(made - asked) / asked * 100:+.2f} %, "
                         f"the nearest the {link.controller or 'controller'}'s clock allows)")
        asked, made = getattr(s, sp), getattr(link, sp)
        if asked is not None and made is not None and round(asked * 1000) != round(made * 1000):
            notes.append(f"{link.name}: {sp} {asked:.3f} asked, {made:.3f} made")
    return notes


def _apply(ipr: IPRoute, iface: str, before: LinkInfo, s: Settings) -> None:
    kind = before.kind
    timing = s.given(BIT_TIMING_KEYS)
    if kind == "can":
        request = _can_request(s)
        if request:
            what = ", ".join(f"{k}={getattr(s, k)}" for k in s.given(BIT_TIMING_KEYS + MODE_KEYS))
            _change(ipr, iface, what, before, kind="can", **request)
    else:
        if timing:
            # ask the kernel anyway (kind "can" on a vcan gives EOPNOTSUPP), so the error is the kernel's
            what = ", ".join(f"{k}={getattr(s, k)}" for k in timing)
            _change(ipr, iface, f"{what} on a {kind or 'non-controller'} link", kind="can", **_can_request(s))
        if s.fd is not None:
            mtu = CANFD_MTU if s.fd else CAN_MTU
            _change(ipr, iface, f"fd={s.fd} (mtu {mtu})", mtu=mtu)
    if s.txqueuelen is not None:
        _change(ipr, iface, f"txqueuelen={s.txqueuelen}", before, txqlen=s.txqueuelen)


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
