"""Network namespaces for test rigs: create/delete with iproute2 and open sockets inside one.

A socket stays in the namespace it was created in, so one process can hold sockets in several
namespaces (used by the demo's probe to send on the gateway's bus and record the remote's).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, netns: str | None = None) -> None:
    """Run `ip [-n NETNS] ARGS`; raises CalledProcessError with ip's message on failure."""
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(name: str):
    """Run the body with this thread in network namespace `name` (from `ip netns add`)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/run/netns/{name}")
        yield
    finally:
        try:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")
        finally:
            os.close(home)


def exec_argv(name: str, argv: list[str]) -> list[str]:
    """argv that runs `argv` inside namespace `name`."""
    return ["ip", "netns", "exec", name, *argv]
