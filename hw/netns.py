"""Network namespaces for test rigs: create/delete with iproute2 and open sockets inside one.

A socket stays in the namespace it was created in, so one process can hold sockets in several
namespaces (used by the demo's probe to send on the gateway's bus and record the remote's).
"""

from __future__ import annotations

import contextlib
import subprocess

from pyroute2 import netns as pyroute2_netns


def ip(*args: str, netns: str | None = None) -> None:
    """Run `ip [-n NETNS] ARGS`; raises CalledProcessError with ip's message on failure."""
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def inside(name: str):
    """Run the body with this process in network namespace `name` (from `ip netns add`);
    pyroute2's pushns/popns do the setns(2) there and back."""
    pyroute2_netns.pushns(name)
    try:
        yield
    finally:
        pyroute2_netns.popns()


def exec_argv(name: str, argv: list[str]) -> list[str]:
    """argv that runs `argv` inside namespace `name`."""
    return ["ip", "netns", "exec", name, *argv]
