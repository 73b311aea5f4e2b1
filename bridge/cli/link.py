"""`canbridge link ...`: list, show, set up, restart and create SocketCAN links (bridge.hw.links does the
netlink work; this module parses arguments, reads a bridge.toml for --from-config and prints)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from bridge.daemon import config as cfg
from bridge.errors import ConfigError
from bridge.hw.links import (
    CAN_MTU,
    CANFD_MTU,
    LINK_KEYS,
    LinkError,
    LinkInfo,
    NoSuchLink,
    Settings,
    adjustments,
    create_vcan,
    delete,
    link_value,
    list_links,
    restart,
    set_down,
    set_up,
    setup,
    show,
)


def settings_from_config(path: str) -> dict[str, Settings]:
    """{interface name: link settings} of every [[interface]] in a bridge.toml (bridge.hw.links.LINK_KEYS plus
    `fd`), in file order. Raises ConfigError for a bad file."""
    return {i.name: Settings(fd=i.fd, **i.link) for i in cfg.load_toml(path).interfaces}


# --- CLI -------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge link", description="Show and set up SocketCAN links (rtnetlink).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="all CAN links: state, bitrate, sample point, MTU, error counters, bus health")
    s.add_argument("--json", action="store_true")
    s.add_argument("--load", type=float, metavar="S", default=0.0,
                   help="also count the frames on each link for S seconds: bus load (canbusload's estimate)")
    s = sub.add_parser("show", help="one link in detail")
    s.add_argument("iface")
    s.add_argument("--json", action="store_true")
    s.add_argument("--load", type=float, metavar="S", default=0.0, help="as for list")
    s = sub.add_parser("setup", help="down, apply settings, up (needs CAP_NET_ADMIN)",
                       description="Take IFACE down, apply the settings, bring it up. With --from-config and no "
                                   "IFACE: every [[interface]] in the file. An IFACE the file does not list is "
                                   "left alone (exit 0), so the udev rule can run this for every CAN link.")
    s.add_argument("iface", nargs="?")
    s.add_argument("--from-config", metavar="TOML", help="take the settings from this bridge.toml's [[interface]]")
    for key, flag, meta, hlp in [
        ("bitrate", "--bitrate", "BIT/S", "arbitration (classic) bitrate, e.g. 500000"),
        ("sample_point", "--sample-point", "FRACTION", "e.g. 0.875"),
        ("dbitrate", "--dbitrate", "BIT/S", "CAN FD data phase bitrate, e.g. 2000000 (implies --fd)"),
        ("dsample_point", "--dsample-point", "FRACTION", "CAN FD data phase sample point"),
        ("restart_ms", "--restart-ms", "MS", "automatic restart delay after BUS-OFF, 0 = off"),
        ("txqueuelen", "--txqueuelen", "FRAMES", "interface TX queue length (the kernel's default: 10)"),
    ]:  # the bool keys of LINK_KEYS are --X/--no-X flags below
        s.add_argument(flag, dest=key, metavar=meta, type=_cli_value(key), help=hlp)
    s.add_argument("--fd", action=argparse.BooleanOptionalAction, default=None, help="CAN FD on/off (MTU 72/16)")
    s.add_argument("--berr-reporting", action=argparse.BooleanOptionalAction, default=None,
                   help="the controller reports bus errors as error frames (a controller only)")
    s.add_argument("--listen-only", action=argparse.BooleanOptionalAction, default=None,
                   help="the controller never sends, not even an ACK (a controller only)")
    s = sub.add_parser("restart", help="restart a controller in BUS-OFF")
    s.add_argument("iface")
    for name, hlp in [("up", "bring a link up"), ("down", "take a link down")]:
        sub.add_parser(name, help=hlp).add_argument("iface")
    s = sub.add_parser("vcan", help="create a vcan link (needs the vcan module)")
    s.add_argument("name")
    s.add_argument("--mtu", type=int, choices=(CAN_MTU, CANFD_MTU), default=CANFD_MTU)
    s = sub.add_parser("delete", help="delete a vcan/vxcan link")
    s.add_argument("iface")
    return p


def _cli_value(key: str):
    kind = LINK_KEYS[key][0]

    def convert(text: str):
        try:
            return link_value(key, kind(text), "--" + key.replace("_", "-"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        except ConfigError as exc:  # argparse names the option itself
            raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None

    return convert


def _fmt_rate(rate: int | None, sp: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate}" + (f" @{sp:.3f}" if sp else "")


def _health(links: list[LinkInfo], seconds: float) -> dict[str, dict]:
    """bridge.endpoints.bushealth.link_health() of each link, its load counted over `seconds` (0: none)."""
    from bridge.endpoints.bushealth import link_health, measure_bits

    if seconds < 0:
        raise ConfigError(f"--load: expected a number of seconds >= 0, got {seconds:g}")
    try:
        wires = measure_bits([i.name for i in links], seconds) if seconds else {}
        return {i.name: link_health(i.name, wires.get(i.name), seconds) for i in links}
    except OSError as exc:
        raise LinkError(str(exc)) from None


def _fmt_health(h: dict) -> tuple[str, str, str]:
    """(bus-off/restarts, rx overruns, load) cells of `link list`."""
    x = h.get("xstats")
    events = "-" if x is None else f"{x['bus_off']}/{x['restarts']}"
    load = "-" if h["load_pct"] is None else f"{h['load_pct']:.1f} %"
    if h["load_pct"] is None and h["bits_per_s"] is not None:
        load = f"{h['bits_per_s']} bit/s"  # vcan: no bitrate to divide by
    return events, "-" if h["rx_overruns"] is None else str(h["rx_overruns"]), load


def _print_table(links: list[LinkInfo], health: dict[str, dict] | None = None) -> None:
    if not links:
        print("no CAN links in this network namespace (ip link add dev vcan0 type vcan; modprobe mcp251x; ...)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    health = health or {}
    for col in ("link", "kind", "admin", "oper", "state", "bitrate @sp", "dbitrate @sp", "mtu", "txqlen",
                "tx/rx err", "restart-ms", "ctrlmode", "bus-off/restarts", "rx overruns", "load"):
        table.add_column(col)
    for i in links:
        berr = "-" if i.txerr is None else f"{i.txerr}/{i.rxerr}"
        h = health.get(i.name)
        table.add_row(i.name, i.kind or "?", "up" if i.up else "down", i.operstate, i.state or "-",
                      _fmt_rate(i.bitrate, i.sample_point), _fmt_rate(i.dbitrate, i.dsample_point), str(i.mtu),
                      str(i.txqueuelen), berr, "-" if i.restart_ms is None else str(i.restart_ms),
                      ",".join(i.ctrlmode) or "-", *(_fmt_health(h) if h else ("-", "-", "-")))
    # a pipe gets full rows (grep-able names) instead of rich's 80-column default
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _setup_cli(args, parser) -> int:
    given = {k: v for k, v in vars(args).items() if (k in LINK_KEYS or k == "fd") and v is not None}
    if args.from_config:
        if given:
            parser.error("setup: give either --from-config or settings on the command line, not both")
        wanted = settings_from_config(args.from_config)
        if args.iface:
            if args.iface not in wanted:
                print(f"canbridge link: {args.iface} is not in {args.from_config}: left as it is", file=sys.stderr)
                return 0
            _report(wanted[args.iface], setup(args.iface, **asdict(wanted[args.iface])))
            return 0
        failed = 0
        for name, settings in wanted.items():  # every interface: one failure does not stop the others
            try:
                _report(settings, setup(name, **asdict(settings)))
            except NoSuchLink as exc:
                print(f"canbridge link: {exc}: skipped; 80-canbridge.rules sets it up when it appears", file=sys.stderr)
            except LinkError as exc:
                print(f"canbridge link: {exc}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    if not args.iface:
        parser.error("setup: IFACE is required (or --from-config TOML for every interface in it)")
    _report(Settings(**given), setup(args.iface, **given))
    return 0


def _report(asked: Settings, made: LinkInfo) -> None:
    """The link as set up, and a line for each value the kernel rounded (nearest bit timing the clock allows)."""
    print(_summary(made))
    for note in adjustments(asked, made):
        print(f"canbridge link: note: {note}")


def _summary(i: LinkInfo) -> str:
    parts = [f"{i.name}: {'up' if i.up else 'down'}", f"mtu {i.mtu}", f"txqueuelen {i.txqueuelen}"]
    if i.bitrate:
        parts.append(f"bitrate {_fmt_rate(i.bitrate, i.sample_point)}")
    if i.dbitrate:
        parts.append(f"dbitrate {_fmt_rate(i.dbitrate, i.dsample_point)}")
    if i.restart_ms is not None:
        parts.append(f"restart-ms {i.restart_ms}")
    if i.ctrlmode:
        parts.append(f"ctrlmode {','.join(i.ctrlmode)}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`canbridge link ...`; returns 0, 1 when the kernel refuses (LinkError), 2 for usage/config errors."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd in ("list", "show"):
            links = list_links() if args.cmd == "list" else [show(args.iface)]
            health = _health(links, args.load)
            if args.json:
                print(json.dumps([{**asdict(i), "health": health[i.name]} for i in links], indent=2))
            else:
                _print_table(links, health)
        elif args.cmd == "setup":
            return _setup_cli(args, parser)
        elif args.cmd == "vcan":
            print(_summary(create_vcan(args.name, args.mtu)))
        else:
            {"restart": restart, "up": set_up, "down": set_down, "delete": delete}[args.cmd](args.iface)
        return 0
    except ConfigError as exc:
        print(f"canbridge link: error: {exc}", file=sys.stderr)
        return 2
    except LinkError as exc:
        print(f"canbridge link: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
