"""Log output: `--log-format text` (default, human) or `json` (one object per line, for journald/Loki/jq).

JSON line shape: {"ts": RFC 3339 UTC with microseconds, "level", "logger", "msg", ...extra fields passed
with `log.info(..., extra={...})`, "exc": traceback text when there is one}. Values JSON cannot encode
are written as their str().

Under systemd (JOURNAL_STREAM names our stderr: its "DEV:INODE" equals fstat(stderr)'s st_dev:st_ino), every
line starts with a syslog priority prefix `<N>` (sd-daemon(3): <2> critical, <3> error, <4> warning, <6> info,
<7> debug; a traceback's lines too) that journald strips and stores as PRIORITY, so `journalctl -p err`
finds the errors. Output to a terminal, a file or a pipe is unchanged.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# attributes every LogRecord has; anything else on a record came from `extra=` and is written as a field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, no newlines inside (tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out = {
            "ts": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


# logging level -> syslog priority (sd-daemon.h SD_CRIT .. SD_DEBUG)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """Syslog priority of a logging level: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, below INFO 7."""
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


class JournalPrefix(logging.Formatter):
    """Wraps a formatter: `<N>` before every line of its output (N = priority(record.levelno))."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def is_journal_stream(stream) -> bool:
    """True when JOURNAL_STREAM ("DEV:INODE", set by systemd for a unit whose stderr is the journal)
    names `stream`'s file: a child whose stderr was redirected elsewhere inherits the variable but not the match."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):  # unset or malformed variable, a stream without a file
        return False


def setup_logging(verbose: int = 0, log_format: str = "text", stream=None) -> None:
    """Root logger at INFO (DEBUG with verbose > 0) on stderr in the chosen format, with journald priority
    prefixes when stderr is the journal; replaces any handlers."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(JournalPrefix(formatter) if is_journal_stream(stream) else formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 0 else logging.INFO)
