"""Minimal sd_notify(3) client: tell systemd (Type=notify units) that the bridge is ready, alive, stopping.

Protocol (sd_notify(3), systemd.service(5) NotifyAccess=, WatchdogSec=): newline-separated
`KEY=VALUE` assignments in one AF_UNIX datagram to the socket named by $NOTIFY_SOCKET, a filesystem
path or, when it starts with "@", a name in the abstract namespace (the "@" stands for a NUL byte).
Without $NOTIFY_SOCKET (not started by systemd) every call is a no-op that returns False.
A failed send is logged once and never raised: health reporting must not stop the bridge.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_warned = False


def _address() -> str | bytes | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        return b"\0" + addr[1:].encode()
    if addr.startswith("/"):
        return addr
    _warn(f"NOTIFY_SOCKET={addr!r}: only paths and @abstract names are supported")
    return None


def _warn(text: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("sd_notify: %s", text)


def notify(*assignments: str) -> bool:
    """Send `KEY=VALUE` assignments in one datagram; True if sent, False if not under systemd or the send
    failed (logged once)."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), addr)
    except OSError as exc:
        _warn(f"cannot send to {os.environ.get('NOTIFY_SOCKET')}: {exc}")
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """READY=1: start-up finished (systemd then starts units ordered After= this one)."""
    return notify("READY=1", *([f"STATUS={status_text}"] if status_text else []))


def watchdog() -> bool:
    """WATCHDOG=1: keep-alive; with WatchdogSec= systemd kills (SIGABRT) a service that stops sending it."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """STATUS=text: one line shown by `systemctl status`."""
    return notify(f"STATUS={text}")


def stopping() -> bool:
    """STOPPING=1: shutdown has begun."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """WatchdogSec= in seconds from $WATCHDOG_USEC, if it is meant for this process ($WATCHDOG_PID unset or
    equal to our pid); None when no watchdog is wanted. Send watchdog() at about half this interval."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6
