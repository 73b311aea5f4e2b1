"""`canbridge` entry point. Subcommands are dispatched on the first word; anything else is the
common case `canbridge IFACE... PEER_URL...`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bridge import __version__
from bridge.errors import ConfigError

EXAMPLES = """\
examples:
  canbridge vcan0 tcp-listen://0.0.0.0:29600          gateway side: serve vcan0 to TCP clients
  canbridge vcan1 tcp://192.0.2.10:29600              remote side: connect, reconnect when lost
  canbridge vcan0 udp://192.0.2.11:29601?bind=0.0.0.0:29601   UDP, both directions
  canbridge vcan0,123:7FF tcp://gw:29600              only id 0x123 leaves vcan0 (candump filter)
  canbridge vcan0 cannelloni+udp://192.0.2.11:20000?bind=0.0.0.0:20000   talk to a cannelloni peer
  canbridge vcan0 udp-multicast://                    join python-can's udp_multicast group (its defaults)
  canbridge vcan0 'tcp-listen://0.0.0.0:29600?tls_cert=gw.pem&tls_key=gw.key&tls_ca=ca.pem'   mutual TLS
  canbridge vcan0 'tcp-listen://0.0.0.0:29600?read_only=1'   clients may listen but never write to the bus
  canbridge capture -i vcan0 -i eth0 -w trace.pcapng  raw-socket capture into pcapng (see --help)
  canbridge run -c /etc/canbridge/bridge.toml         several interfaces, peers and filters
  canbridge demo                                      Durango trace through two bridges (test VM)
  canbridge testvm --vcan 2 -- pytest -m vcan         run a command in a kernel with vcan0, vcan1
  canbridge replay bridge/tools/data/durango_mapswitch.log vcan0 --speed 4

subcommands: run, demo, replay, testvm, capture, inspect, dump, top, link, stats, completion (each has --help)
URLs: tcp://HOST:PORT, tcp-listen://[ADDR]:PORT (ADDR defaults to 127.0.0.1), udp://HOST:PORT[?bind=ADDR:PORT&mtu=N];
      options on any peer URL: filter=SPEC (bus -> peer), inbound_filter=SPEC (peer -> bus).
"""

# subcommand -> "module:function"; each function takes argv (after the subcommand) and returns the exit
# status. Imported lazily so that `canbridge IFACE PEER` never pays for scapy, rich or matplotlib.
SUBCOMMANDS = {
    "demo": "bridge.tools.rig.demo:main",
    "replay": "bridge.tools.logs.replay:main",
    "testvm": "bridge.hw.testvm.runner:main",
    "capture": "bridge.tools.inspect.capture:main",
    "inspect": "bridge.tools.inspect.inspect:main",
    "dump": "bridge.tools.live.dump:main",
    "top": "bridge.tools.live.top:main",
    "link": "bridge.cli.link:main",
    "stats": "bridge.tools.live.stats_client:main",
}


def _setup_logging(verbose: int, log_format: str = "text") -> None:
    from bridge.daemon.logfmt import setup_logging

    setup_logging(verbose, log_format)


def _add_ops_flags(p: argparse.ArgumentParser) -> None:
    """Flags of bridge/daemon/operations.py (docs/cli.md "Operations"); they override the [bridge] table."""
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    p.add_argument("--control", metavar="PATH", help='control socket for `canbridge stats` ("none": off)')
    p.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics (pip install canbridge[metrics])")


def _apply_user(config, args):
    if args.user is not None:
        config.user = args.user  # bridge/daemon/privileges.py, after every socket is open
    return config


def _apply_ops_flags(config, args):
    from bridge.daemon.ops_config import parse_control, parse_metrics

    if args.control is not None:
        config.ops.control = parse_control(args.control, "--control")
    if args.metrics is not None:
        config.ops.metrics = parse_metrics(args.metrics, "--metrics")
    return config


def _bridge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="canbridge",
        description="Bridge SocketCAN interfaces to TCP/UDP peers (native protocol).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoints", nargs="+", metavar="IFACE|PEER_URL", help="CAN interfaces and peer URLs")
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    p.add_argument("--version", action="version", version=f"canbridge {__version__}")
    _add_ops_flags(p)
    p.add_argument("--user", metavar="NAME", help="drop privileges to this user once every socket is open")
    return p


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge run", description="Run a bridge from a TOML config file.")
    p.add_argument("-c", "--config", required=True, help="path to bridge.toml (format: docs/cli.md)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    _add_ops_flags(p)
    p.add_argument("--user", metavar="NAME", help="drop privileges to this user (overrides [bridge] user)")
    return p


def _serve(config) -> int:
    from bridge.daemon.app import Bridge

    try:
        bridge = Bridge(config)
    except OSError as exc:
        logging.getLogger("canbridge").error("%s", exc)
        return 1
    try:
        return bridge.run()
    except OSError as exc:  # the control socket or the metrics port could not be opened
        logging.getLogger("canbridge").error("%s", exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    try:
        if command == "completion":  # bash/zsh scripts generated from every parser (bridge/cli/completion.py)
            from bridge.cli.completion import main as completion

            return completion(argv[1:], SUBCOMMANDS, _bridge_parser(), _run_parser())
        if command in SUBCOMMANDS:
            module, _, func = SUBCOMMANDS[command].partition(":")
            return getattr(importlib.import_module(module), func)(argv[1:])
        from bridge.daemon import config as cfg

        if command == "run":
            args = _run_parser().parse_args(argv[1:])
            _setup_logging(args.verbose, args.log_format)
            return _serve(_apply_user(_apply_ops_flags(cfg.load_toml(args.config), args), args))
        args = _bridge_parser().parse_args(argv)
        _setup_logging(args.verbose, args.log_format)
        peers = [e for e in args.endpoints if cfg.is_peer_url(e)]
        ifaces = [e for e in args.endpoints if not cfg.is_peer_url(e)]
        return _serve(_apply_user(_apply_ops_flags(cfg.from_args(ifaces, peers), args), args))
    except ConfigError as exc:
        print(f"canbridge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
