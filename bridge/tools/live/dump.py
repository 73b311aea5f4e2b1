"""`canbridge dump`: candump-compatible live output of local CAN interfaces and remote bridges.

    canbridge dump [-t a|d|z|A] [-H] [-L] [-l] [-f FILE] [-s 0|1|2] [-n COUNT] [-r SIZE] [-D] [-e] [-a] [-x]
                   [-T MSECS] SOURCE...
    SOURCE: IFACE[,FILTERS] (`any` = every CAN interface) or tcp://HOST[:PORT][/IFACE][?TLS][,FILTERS]
            or mqtt[s]://[USER@]BROKER[:PORT]/PREFIX/GATEWAY/IFACE[?OPTIONS][,FILTERS] (+ wildcards; docs/mqtt.md)

Output is byte-identical to can-utils candump (2023.03, checked in the test VM): the screen
format, `-t` timestamps, `-L` log lines (readable by canplayer, python-can and
bridge.codec.candump), `-l` log files (candump-DATE_TIME.log) and their stderr notices, `-s` silent
modes, `-H` hardware timestamps, `-r` receive buffer, `-D`, `-e` error-frame text, `-a`, `-x`.
`-f FILE` (can-utils after 2023.03) logs into FILE, in any python-can format chosen by its extension
(bridge/tools/logs/logfiles.py). Not implemented: `-c` (colour), `-i` (binary), `-S` (swap).
Local interfaces are read from CAN_RAW sockets whose filters are applied in the kernel; timestamps
are kernel RX times (SO_TIMESTAMPNS). A remote source is a canbridge serving `tcp-listen://`
(bridge/tools/live/remote.py): frames arrive in the native protocol with the gateway's kernel RX
timestamps, and the filters are applied here. An MQTT source (bridge/tools/live/mqtt_source.py) reads a
fleet's `rx` topics on a broker; its frames are named GATEWAY/IFACE and carry the gateway's timestamps.

Kernel drops (SO_RXQ_OVFL: our receive queue was full) are always reported, in candump -d's
words, before the frame that revealed them: on stdout in the screen format as candump does, on
stderr with -L so that the log stays readable by python-can (whose reader rejects the line), and
in a -l/-f .log file as candump writes them.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time

from bridge.codec import candump
from bridge.codec import socketcan as sc
from bridge.tools.live.local import LocalSource
from bridge.tools.live.opener import open_sources
from bridge.tools.live.source import Drops, InterfaceDown, Rx, SourceClosed, waiting
from bridge.tools.logs import logfiles

ANIMATION = "|/-\\"  # candump -s 1


class Formatter:
    """Rx -> candump text. Holds candump's state: the interface column width (the longest name
    seen), SFF indentation once an EFF frame was seen, and the reference time of -t d / -t z.

    mode: "screen" or "log" (-L); timestamps: None, "a", "d", "z" or "A" (screen only; local
    time for "A"); ascii (-a), extra (-x: TX/RX and FD flags), errors (-e: decode error frames)."""

    def __init__(self, names, *, log=False, timestamps=None, ascii=False, extra=False, errors=False) -> None:
        self.width = max((len(n) for n in names), default=0)
        self.log = log
        self.timestamps = timestamps
        self.ascii = ascii
        self.extra = extra
        self.errors = errors
        self.indent = False
        self._last_us: int | None = None

    def _timestamp(self, ts_ns: int) -> str:
        us = ts_ns // 1000
        mode = self.timestamps
        if mode == "a":
            return f"({us // 1_000_000:010d}.{us % 1_000_000:06d}) "
        if mode == "A":
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us // 1_000_000))
            return f"({stamp}.{us % 1_000_000:06d}) "
        if self._last_us is None:
            self._last_us = us
        diff = max(0, us - self._last_us)
        if mode == "d":
            self._last_us = us
        return f"({diff // 1_000_000:03d}.{diff % 1_000_000:06d}) "

    def frame(self, rx: Rx) -> tuple[str, str | None]:
        """-> (text for stdout without the final newline, warning for stderr or None)."""
        if len(rx.iface) > self.width:
            self.width = len(rx.iface)
        if self.log:
            return self.log_line(rx), None
        can_id = sc.HEADER.unpack_from(rx.raw)[0]
        if can_id & sc.CAN_EFF_FLAG:
            self.indent = True
        text = candump.format_screen(rx.raw, indent_sff=self.indent, ascii=self.ascii)
        stamp = self._timestamp(rx.ts_ns) if self.timestamps else ""
        extra = ""
        if self.extra:
            flags = rx.raw[5] if len(rx.raw) == sc.CANFD_MTU else 0
            extra = (f"{'TX' if rx.tx else 'RX'} {'B' if flags & sc.CANFD_BRS else '-'} "
                     f"{'E' if flags & sc.CANFD_ESI else '-'}  ")
        line = f" {stamp} {rx.iface:>{self.width}}  {extra}{text}"
        warning = None
        if self.errors and can_id & sc.CAN_ERR_FLAG:
            described = candump.describe_error_frame(rx.raw)
            if described is None:
                warning = f"Error class {can_id & sc.CAN_EFF_MASK:#x} is invalid"
            # lib.c writes nothing then, and candump prints its line buffer (the frame) again
            line += "\n\t" + (described or text)
        return line, warning

    def log_line(self, rx: Rx) -> str:
        """candump -L / -l: "(%010lu.%06lu) %*s FRAME[ T| R]" (the interface right-aligned to the longest name)."""
        sec, us = divmod(rx.ts_ns // 1000, 1_000_000)
        line = f"({sec:010d}.{us:06d}) {rx.iface:>{self.width}} {candump.format_frame(rx.raw, fd_flags_nibble=True)}"
        return (line + (" T" if rx.tx else " R")) if self.extra else line

    @staticmethod
    def drops(d: Drops) -> str:
        return candump.format_dropcount(d.dropped, d.iface, d.total)


class _Stop(Exception):
    pass


def _on_signal(_signum, _frame) -> None:
    raise _Stop


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="canbridge dump",
        description="candump-compatible live output of CAN interfaces and remote bridges.",
        epilog="examples:\n  canbridge dump vcan0,123:7FF -t a\n  canbridge dump -L any > trace.log\n"
               "  canbridge dump -l vcan0              # candump-2026-12-03_091500.log, nothing on stdout\n"
               "  canbridge dump -f trace.blf vcan0    # any python-can format: .log .asc .blf .csv .db .mf4 .trc\n"
               "  canbridge dump tcp://gateway:29600/can0,100:700\n"
               "  canbridge dump -L mqtt://broker/fleet/+/can0  # can0 of every gateway, named GATEWAY/can0\n"
               "filters (candump): ID:MASK, ID~MASK (inverse), #ERRMASK (error frames), j (join)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="IFACE[,FILTERS] (any = all CAN interfaces), tcp://HOST[:PORT][/IFACE][?TLS][,FILTERS] "
                        "or mqtt[s]://BROKER[:PORT]/PREFIX/GATEWAY/IFACE[,FILTERS]")
    p.add_argument("-t", dest="timestamps", choices="adzA",
                   help="timestamp: (a)bsolute / (d)elta / (z)ero / (A)bsolute with date")
    p.add_argument("-H", dest="hw_timestamps", action="store_true",
                   help="hardware timestamps instead of system timestamps (0 where the device has none, e.g. vcan)")
    p.add_argument("-L", dest="log", action="store_true", help="log file format on stdout (candump -L)")
    p.add_argument("-l", dest="logfile", action="store_true",
                   help="log frames into candump-YYYY-MM-DD_HHMMSS.log (sets -s 2 unless -s is given)")
    p.add_argument("-f", dest="filename", metavar="FILE",
                   help="log into FILE (implies -l; format from the extension: .log candump, or .asc .blf .csv "
                        ".db .mf4 .trc through python-can)")
    p.add_argument("-s", dest="silent", type=int, choices=(0, 1, 2),
                   help="silent mode: 0 off (default), 1 animation, 2 silent")
    p.add_argument("-n", dest="count", type=int, default=0, help="exit after COUNT frames")
    p.add_argument("-r", dest="rcvbuf", type=int, default=0, metavar="SIZE", help="socket receive buffer in bytes")
    p.add_argument("-D", dest="keep_on_down", action="store_true",
                   help="don't exit when an interface goes down")
    p.add_argument("-e", dest="errors", action="store_true",
                   help="describe error frames (receive them with a #ERRMASK filter, e.g. vcan0,#FFFFFFFF)")
    p.add_argument("-a", dest="ascii", action="store_true", help="ASCII column behind the data")
    p.add_argument("-x", dest="extra", action="store_true", help="extra info: RX/TX, BRS, ESI")
    p.add_argument("-T", dest="timeout_ms", type=int, default=0, help="exit after MSECS without a frame")
    p.add_argument("-d", dest="dropmonitor", action="store_true",
                   help="accepted for candump (drops are always reported)")
    return p


class FileLog:
    """candump -l / -f: frames into a log file. .log: candump's log lines, byte for byte (with DROPCOUNT
    notices, as candump writes them); other extensions: python-can's writer (bridge/tools/logs/logfiles.py).
    Raises LogFileError."""

    def __init__(self, path: str, names, extra: bool) -> None:
        self.path = path
        self.candump = logfiles.suffix(path) == logfiles.CANDUMP_SUFFIX and not path.endswith(".gz")
        self.fmt = Formatter(names, log=True, extra=extra)
        if self.candump:
            try:
                self.file = open(path, "w", encoding="ascii")
            except OSError as exc:
                raise logfiles.LogFileError(f"{path}: {exc.strerror}") from None
        else:
            self.writer = logfiles.LogWriter(path)

    def frame(self, rx: Rx) -> None:
        if self.candump:
            self.file.write(self.fmt.frame(rx)[0] + "\n")
        else:
            self.writer.write(rx.ts_ns, rx.iface, rx.raw, rx.tx)

    def drops(self, d: Drops) -> None:
        if self.candump:
            self.file.write(self.fmt.drops(d) + "\n")

    def close(self) -> None:
        """Flush and close; a format that could not hold some frames says so on stderr."""
        if self.candump:
            self.file.close()
            return
        self.writer.close()
        if self.writer.dropped:
            print(f"canbridge dump: {self.path}: {self.writer.dropped} frames not written: python-can's "
                  f"{logfiles.suffix(self.path)} writer takes no RTR or CAN FD frames", file=sys.stderr)


def _open_log(args, names) -> FileLog | None:
    """candump's messages about logging on stderr, then the log file (None without -l/-f)."""
    if not (args.logfile or args.filename):
        return None
    path = args.filename or time.strftime("candump-%Y-%m-%d_%H%M%S.log", time.localtime())
    if args.silent != 2:
        print("Warning: Console output active while logging!", file=sys.stderr)
    print(f"Enabling Logfile '{path}'", file=sys.stderr)
    return FileLog(path, names, args.extra)


def _check_args(args) -> str | None:
    """candump's refusals, or None."""
    if args.log and (args.ascii or args.errors):
        return "Log file format selected: Please disable ASCII/BINARY/SWAP options!"
    if args.count < 0 or args.timeout_ms < 0 or args.rcvbuf < 0:
        return "canbridge dump: -n, -r and -T must be >= 0"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if (problem := _check_args(args)) is not None:
        print(problem, file=sys.stderr)
        return 2
    if args.silent is None:
        if args.logfile or args.filename:
            print("Disabled standard output while logging.", file=sys.stderr)
        args.silent = 2 if (args.logfile or args.filename) else 0
    sources, status = open_sources(args.sources, "dump", hw_timestamps=args.hw_timestamps,
                                   down_exits=not args.keep_on_down)
    if status:
        return status
    if args.rcvbuf:
        for s in sources:
            warning = s.set_rcvbuf(args.rcvbuf) if isinstance(s, LocalSource) else None
            if warning and s is sources[0]:
                print(warning, file=sys.stderr)
    names = [s.name for s in sources]
    fmt = Formatter(names, log=args.log, timestamps=args.timestamps,
                    ascii=args.ascii, extra=args.extra, errors=args.errors)
    try:
        filelog = _open_log(args, names)
    except logfiles.LogFileError as exc:
        print(f"canbridge dump: {exc}", file=sys.stderr)
        for s in sources:
            s.close()
        return 2
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _loop(sources, Output(fmt, filelog, args.silent), args.count, args.timeout_ms)
    except _Stop:
        return _flush()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for s in sources:
            s.close()
        if filelog is not None:
            filelog.close()


class Output:
    """Where a received item goes: stdout (silent 0), an animation character (silent 1) or nothing
    (silent 2); and the log file of -l/-f."""

    def __init__(self, fmt: Formatter, filelog: FileLog | None, silent: int) -> None:
        self.fmt = fmt
        self.filelog = filelog
        self.silent = silent
        self.ani = 0

    def frame(self, rx: Rx) -> None:
        if self.filelog is not None:
            self.filelog.frame(rx)
        if self.silent == 1:
            sys.stdout.write(ANIMATION[self.ani % 4] + "\b")
            self.ani += 1
            sys.stdout.flush()
        elif self.silent == 0:
            text, warning = self.fmt.frame(rx)
            if warning:
                sys.stderr.write(warning + "\n")
            sys.stdout.write(text + "\n")

    def drops(self, d: Drops) -> None:
        if self.filelog is not None:
            self.filelog.drops(d)
        if self.silent == 0:
            (sys.stderr if self.fmt.log else sys.stdout).write(self.fmt.drops(d) + "\n")


def _loop(sources, output: Output, count: int, timeout_ms: int) -> int:
    poller = select.poll()
    by_fd = {}
    for s in sources:
        poller.register(s.fileno(), select.POLLIN)
        by_fd[s.fileno()] = s
    n = 0
    try:
        while True:
            ready = waiting(sources) or poller.poll(timeout_ms or None)
            if not ready:
                return _flush()  # -T: nothing received for timeout_ms
            for fd, _mask in ready:
                for item in by_fd[fd].read():
                    if isinstance(item, Drops):
                        output.drops(item)
                        continue
                    output.frame(item)
                    n += 1
                    if n == count:
                        return _flush()
    except InterfaceDown as exc:
        _flush()
        print(exc, file=sys.stderr)
        return 1
    except SourceClosed as exc:
        _flush()
        print(f"canbridge dump: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _broken_pipe()


def _flush() -> int:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _broken_pipe()
    return 0


def _broken_pipe() -> int:
    """The reader went away (`| head`): a clean exit, without Python's flush error at shutdown."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
