"""CAN log files in every format python-can knows, the format chosen by the file extension.

    .log              candump log (`candump -l`): our own codec (bridge.codec.candump), byte-exact
                      with candump and faster than python-can's reader
    .asc .blf .csv .db .mf4 .trc  (and any of them + .gz where python-can allows it): can.LogReader /
                      can.Logger (.mf4 needs asammdf: `pip install asammdf`)

Frames are (ts_ns, iface, raw): ts_ns int nanoseconds since the epoch, iface a name (python-can formats
that store channel numbers give "can<N>", or `default_iface` when none), raw a 16-byte can_frame or a
72-byte canfd_frame as built by bridge.codec.socketcan.

Any failure to read or write a file (missing, unknown extension, not that format, truncated, a missing
optional library) is one LogFileError whose text is a single line naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from bridge.codec import candump
from bridge.frame import CanFrame

CANDUMP_SUFFIX = ".log"


class LogFileError(Exception):
    """A log file cannot be read or written; str() is one line naming the file and the reason."""


def suffix(path: str | os.PathLike) -> str:
    """".blf" for "a.blf" and "a.blf.gz" (python-can's compressed formats), lower case."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) > 1 and suffixes[-1] == ".gz":
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def formats(kind: str) -> list[str]:
    """Extensions python-can can read (kind "read") or write ("write")."""
    from can.io import logger, player

    table = player.MESSAGE_READERS if kind == "read" else logger.MESSAGE_WRITERS
    return sorted(s for s in table if s != ".txt")


def read_frames(path: str | os.PathLike, default_iface: str = "can0") -> list[tuple[int, str, bytes]]:
    """All frames of a log file, in file order. Raises LogFileError."""
    try:
        return list(_frames(path, default_iface))
    except LogFileError:
        raise
    except candump.CandumpError as exc:
        raise LogFileError(f"{path}: not a candump log: {exc}") from None
    except OSError as exc:
        raise LogFileError(f"{path}: {exc.strerror or exc}") from None
    except (ImportError, NotImplementedError) as exc:  # .mf4 without asammdf
        raise LogFileError(f"{path}: this format needs a library that is not installed: {exc}") from None
    except Exception as exc:  # python-can's readers raise anything on bad input (struct, Unicode, zlib...)
        raise LogFileError(f"{path}: not a readable {suffix(path)} file ({type(exc).__name__}: {exc})") from None


def _frames(path, default_iface: str) -> Iterator[tuple[int, str, bytes]]:
    ext = suffix(path)
    if ext == CANDUMP_SUFFIX and not str(path).lower().endswith(".gz"):
        yield from candump.read_log(path)
        return
    if ext not in formats("read"):
        raise LogFileError(f"{path}: unknown log format {ext or '(no extension)'!r}; "
                           f"known: {' '.join(formats('read'))}")
    import can

    if not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    _check_complete(path, ext)
    options = {"relative_timestamp": False} if ext == ".asc" else {}  # absolute times from its date line
    with _CanWarnings() as warned, can.LogReader(path, **options) as reader:
        for msg in reader:
            if warned.first:
                raise ValueError(warned.first)
            yield _from_message(msg, default_iface)
        if warned.first:
            raise ValueError(warned.first)
        size = getattr(reader, "file_size", 0)  # .blf: the size its header announces
        if not str(path).endswith(".gz") and size > os.path.getsize(path):
            raise ValueError(f"truncated: {os.path.getsize(path)} of {size} bytes")


def _check_complete(path, ext: str) -> None:
    """Text logs end with a newline (.asc with its `End TriggerBlock`): a cut file does not.
    python-can's readers skip a partial last line silently."""
    if ext not in (".asc", ".csv", ".trc") or str(path).endswith(".gz"):
        return
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        tail = f.read()
    if tail and not tail.endswith(b"\n"):
        raise ValueError("truncated: the last line is incomplete")
    if ext == ".asc" and tail and b"End TriggerBlock" not in tail:
        raise ValueError("truncated: no 'End TriggerBlock' line at the end")


class _CanWarnings(logging.Handler):
    """Catches the warnings python-can's readers log instead of raising (a line they could not parse)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None
        self._logger = logging.getLogger("can")
        self._propagate = self._logger.propagate

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            self.first = record.getMessage()

    def __enter__(self):
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def _from_message(msg, default_iface: str) -> tuple[int, str, bytes]:
    ts_ns = int(round(msg.timestamp * 1e9))
    if not msg.is_fd and len(msg.data) > 8:  # .csv and .db do not store is_fd: more than 8 bytes is CAN FD
        msg.is_fd = True
    if isinstance(msg.channel, int):
        iface = f"can{msg.channel}"
    elif isinstance(msg.channel, str) and msg.channel and len(msg.channel.split()) == 1:
        iface = msg.channel
    else:
        iface = default_iface
    return ts_ns, iface, CanFrame.from_message(msg).to_raw()


# frames python-can's writer of a format silently leaves out (it logs a warning): counted in LogWriter.dropped
_REFUSED = {".trc": lambda f: f.is_fd or f.is_remote}


class LogWriter:
    """Write frames to a log file of the format its extension names. write(ts_ns, iface, raw, tx=None)
    (tx: True/False appends candump -x's " T"/" R" in .log files), close(). Raises LogFileError.
    `dropped` counts the frames the format cannot hold (they are not written)."""

    def __init__(self, path: str | os.PathLike, *, extra: bool = False) -> None:
        self.path = path
        self.extra = extra
        self.width = 0
        self._file = self._logger = None
        self.dropped = 0  # frames the format cannot hold (python-can's .trc writer: RTR and CAN FD)
        ext = suffix(path)
        self._refused = _REFUSED.get(ext)
        try:
            if ext == CANDUMP_SUFFIX and not str(path).lower().endswith(".gz"):
                self._file = open(path, "w", encoding="ascii")
                return
            if ext not in formats("write"):
                raise LogFileError(f"{path}: unknown log format {ext or '(no extension)'!r}; "
                                   f"known: {' '.join(formats('write'))}")
            import can

            self._logger = can.Logger(path)
        except OSError as exc:
            raise LogFileError(f"{path}: {exc.strerror or exc}") from None
        except (ImportError, NotImplementedError) as exc:
            raise LogFileError(f"{path}: this format needs a library that is not installed: {exc}") from None

    def write(self, ts_ns: int, iface: str, raw: bytes, tx: bool | None = None) -> None:
        if self._file is not None:
            line = candump.format_line(ts_ns, iface, raw, iface_width=self.width, fd_flags_nibble=True)
            if self.extra and tx is not None:
                line += " T" if tx else " R"
            self._file.write(line + "\n")
            return
        frame = CanFrame.from_raw(raw, ts_ns)
        if self._refused and self._refused(frame):
            self.dropped += 1
            return
        msg = frame.to_message(channel=iface)
        if tx is not None:
            msg.is_rx = not tx
        self._logger.on_message_received(msg)

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
            elif self._logger is not None:
                _wait_drained(self._logger)
                self._logger.stop()
        except OSError as exc:
            raise LogFileError(f"{self.path}: {exc.strerror or exc}") from None


def _wait_drained(writer, timeout: float = 30.0) -> None:
    """python-can's SqliteWriter (.db) writes from a thread and, once stopped, drops what its queue still
    holds (python-can 4.6): wait until the thread has taken everything (bounded by timeout seconds)."""
    import time

    buffer = getattr(writer, "buffer", None)
    if buffer is None or not hasattr(writer, "_writer_thread"):
        return
    deadline = time.monotonic() + timeout
    while not buffer.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
