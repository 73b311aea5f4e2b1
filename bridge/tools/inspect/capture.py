"""`canbridge capture`: raw-socket capture of CAN and network interfaces into pcapng.

No tcpdump or dumpcap underneath: CAN_RAW sockets on CAN interfaces (every frame on the bus,
including those sent by local programs, FD and error frames), AF_PACKET sockets with an in-kernel
BPF filter on network links (hw/rawsock.py). One Interface Description Block per interface (link
type 227 SocketCAN or Ethernet), nanosecond timestamps, Interface Statistics Blocks with the
kernel's drop counts at the end of every file. It runs as its own process with its own socket
buffers, so it never slows the bridge down.

    canbridge capture -i vcan0 -i eth0 -w trace.pcapng
    canbridge capture -i vcan0 -w - | wireshark -k -i -
    canbridge capture -i can0 -i eth0 -C 50 -W 10 -w /var/log/canbridge/ring.pcapng
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from bridge.codec import pcapng
from bridge.errors import ConfigError
from bridge.core.reactor import Reactor
from bridge.hw import rawsock

log = logging.getLogger("canbridge.capture")



def default_filter() -> str:
    """The default ports of every protocol in the registry (native 29600, cannelloni 20000, socketcand
    29536, python-can udp_multicast 43113) and the socketcand beacon (42000), as a BPF expression."""
    from bridge.codec.socketcand import BEACON_PORT
    from bridge.protocols import registry

    ports = sorted({*registry.families().values(), BEACON_PORT})
    return " or ".join(f"port {p}" for p in ports)

WRITE_BUFFER = 1 << 20  # bytes of pcapng buffered before a write(2): few system calls under load
STOP_DRAIN_S = 5.0  # on stop, keep reading what the kernel already queued for at most this long
STATS_INTERVAL_S = 1.0  # PACKET_STATISTICS is folded in this often (the counters are per read)

EXAMPLES = """\
examples:
  canbridge capture -i vcan0 -i eth0 -w trace.pcapng     both sides of a gateway, bridge ports only
  canbridge capture -i vcan0 -w - | wireshark -k -i -    live in Wireshark
  canbridge capture -i vcan0@gw -i veth0@gw -i vcan0@remote -w rig.pcapng   interfaces in netns
  canbridge capture -i can0 -C 50 -W 10 -w ring.pcapng   ring of 10 files of 50 MB
  canbridge capture -i eth0 -f "udp port 20000" -c 1000 -w x.pcapng
"""

LINKTYPES = {rawsock.CAN: pcapng.LINKTYPE_CAN_SOCKETCAN, rawsock.ETHERNET: pcapng.LINKTYPE_ETHERNET,
             rawsock.RAW: pcapng.LINKTYPE_RAW}  # bridge.hw.rawsock.Source.kind -> pcapng link type


class PcapngOutput:
    """pcapng writer over one stream (stdout) or a ring of files.

    path "-" writes to stdout. With `max_bytes`, a file that reaches it is closed (after its ISBs)
    and the next one opened, named STEM_NNNNN.SUFFIX; with `max_files` only the newest max_files
    files are kept (older ones deleted), as dumpcap's ring buffer. Every file is self-contained:
    section header and all interface blocks first."""

    def __init__(self, path: str, sources: list, max_bytes: int = 0, max_files: int = 0) -> None:
        self.path = path
        self.sources = sources
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.files: list[Path] = []
        self._index = 0
        self._stream = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self._written = 0
        self._open_next()

    def _name(self) -> Path:
        if not self.max_bytes:
            return Path(self.path)
        p = Path(self.path)
        return p.with_name(f"{p.stem}_{self._index:05d}{p.suffix or '.pcapng'}")

    def _open_next(self) -> None:
        if self.path == "-":
            self._stream = sys.stdout.buffer
        else:
            self._index += 1
            name = self._name()
            self._stream = open(name, "wb")  # noqa: SIM115 - closed in _close_file
            self.files.append(name)
            while self.max_files and len(self.files) > self.max_files:
                self.files.pop(0).unlink(missing_ok=True)
        self._written = 0
        self._put(pcapng.section_header(f"canbridge capture ({os.uname().sysname})"))
        for src in self.sources:
            self._put(pcapng.interface_description(LINKTYPES[src.kind], src.name, 0, bpf_filter=src.bpf_filter))

    def _put(self, block: bytes) -> None:
        self._buf.append(block)
        self._buffered += len(block)
        self._written += len(block)

    def packets(self, interface_id: int, records: list) -> None:
        """Append EPBs for (data, ts_ns, orig_len, outgoing) records of one interface (bridge.hw.rawsock.Source);
        CAN frames become LINKTYPE_CAN_SOCKETCAN records (big-endian can_id)."""
        epb, can = pcapng.enhanced_packet, self.sources[interface_id].kind == rawsock.CAN
        record = pcapng.can_record
        for data, ts, orig, outgoing in records:
            direction = pcapng.DIRECTION_OUTBOUND if outgoing else pcapng.DIRECTION_INBOUND
            block = epb(interface_id, ts, record(data) if can else data, orig, direction)
            self._buf.append(block)
            self._buffered += len(block)
            self._written += len(block)
            if self.max_bytes and self._written >= self.max_bytes:
                self._close_file()
                self._open_next()
        if self._buffered >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._stream.write(b"".join(self._buf))
            self._stream.flush()
            self._buf.clear()
            self._buffered = 0

    def statistics(self, start_ns: int) -> None:
        now = time.time_ns()
        for i, src in enumerate(self.sources):
            self._put(pcapng.interface_statistics(i, now, src.received, src.dropped, start_ns, now))

    def _close_file(self) -> None:
        self.statistics(0)
        self.flush()
        if self._stream is not sys.stdout.buffer:
            self._stream.close()

    def close(self, start_ns: int) -> None:
        self.statistics(start_ns)
        self.flush()
        if self._stream is not sys.stdout.buffer:
            self._stream.close()


class Capture:
    """Reads every source when readable and writes pcapng; stops on SIGINT/SIGTERM, after `count`
    records, or after `duration` seconds, with everything flushed and statistics written."""

    def __init__(self, sources: list, output: PcapngOutput, count: int = 0, duration: float = 0,
                 progress=None) -> None:
        self.sources = sources
        self.output = output
        self.count = count
        self.captured = 0
        self.per_source = [0] * len(sources)  # records written, by source
        self.progress = progress  # bridge.tools.logs.progress.Progress: live count per interface, or None
        self.start_ns = time.time_ns()
        self.reactor = Reactor()
        self.reactor.stop_on_signals(signal.SIGINT, signal.SIGTERM)
        for i, src in enumerate(sources):
            self.reactor.add_reader(src.fileno(), lambda i=i, src=src: self._read(i, src))
        self.reactor.add_end_of_pass(output.flush)  # idle -> on disk/pipe now (live viewing)
        self.reactor.call_later(STATS_INTERVAL_S, self._stats)
        if duration:
            self.reactor.call_later(duration, self.reactor.stop)
        if progress is not None and not progress.quiet:
            self.reactor.call_every(progress.interval, lambda: progress.show(self.counts, force=True))

    def counts(self) -> str:
        """dumpcap-like: "vcan0: 1,234  eth0: 56 packets"."""
        return "  ".join(f"{src.name}: {n:,}" for src, n in zip(self.sources, self.per_source)) + " packets"

    def _read(self, index: int, src) -> int:
        records = src.read()
        if self.count:
            records = records[: self.count - self.captured]
        self.output.packets(index, records)
        self.captured += len(records)
        self.per_source[index] += len(records)
        if self.captured == self.count:
            self.reactor.stop()
        return len(records)

    def _stats(self) -> None:
        for src in self.sources:
            src.update_stats()
        self.reactor.call_later(STATS_INTERVAL_S, self._stats)

    def run(self) -> None:
        try:
            self.reactor.run()
        finally:
            if self.progress is not None:
                self.progress.close()
            deadline = time.monotonic() + STOP_DRAIN_S  # what the kernel already queued is not lost,
            for index, src in enumerate(self.sources):  # but a busy bus must not keep us from stopping
                while (not self.count or self.captured < self.count) and time.monotonic() < deadline \
                        and self._read(index, src):
                    pass
                src.update_stats()
            self.output.close(self.start_ns)
            self.reactor.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="canbridge capture",
        description="Capture CAN interfaces (CAN_RAW) and network links (AF_PACKET + BPF) into pcapng.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--interface", action="append", required=True, metavar="IFACE[@NETNS]",
                   help="interface to capture (repeat for several); CAN interfaces are detected by type")
    p.add_argument("-w", "--write", required=True, metavar="FILE", help="pcapng output file, '-' for stdout")
    ports = default_filter()
    p.add_argument("-f", "--filter", default=ports, metavar="EXPR",
                   help=f"BPF filter for network links, libpcap syntax (default: {ports!r}; '' = all)")
    p.add_argument("-c", "--count", type=int, default=0, help="stop after this many frames/packets")
    p.add_argument("-a", "--duration", type=float, default=0, metavar="SECONDS", help="stop after this long")
    p.add_argument("-C", "--file-size", type=float, default=0, metavar="MB",
                   help="start a new file when this one reaches MB (10^6 bytes); names get _NNNNN")
    p.add_argument("-W", "--files", type=int, default=0, metavar="N", help="with -C: keep only the newest N files")
    p.add_argument("-B", "--buffer", type=int, default=64, metavar="MiB", help="kernel buffer per interface")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no live count per interface (a line every 5 s when stderr is no terminal), no summary")
    return p


def main(argv: list[str]) -> int:

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="canbridge capture: %(message)s")
    if args.files and not args.file_size:
        print("canbridge capture: error: -W needs -C", file=sys.stderr)
        return 2
    if args.write == "-" and args.file_size:
        print("canbridge capture: error: -C cannot be used with -w -", file=sys.stderr)
        return 2
    sources = []
    try:
        for name in args.interface:
            sources.append(rawsock.open_source(name, args.filter, args.buffer << 20))
    except ConfigError as exc:
        print(f"canbridge capture: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"canbridge capture: error: {name}: {exc} (capturing needs root or CAP_NET_RAW)", file=sys.stderr)
        return 1
    output = PcapngOutput(args.write, sources, int(args.file_size * 1e6), args.files)
    from bridge.tools.logs.progress import Progress

    capture = Capture(sources, output, args.count, args.duration, Progress("canbridge capture", quiet=args.quiet))
    if not args.quiet:
        log.info("capturing on %s", ", ".join(s.name for s in sources))
    try:
        capture.run()
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. Wireshark closed): not an error
        return 0
    if not args.quiet:
        for src in sources:
            log.info("%s: %d captured, %d dropped by the kernel", src.name, src.received, src.dropped)
    for src in sources:
        src.close()
    return 0
