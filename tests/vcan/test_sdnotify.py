"""A real bridge process under a stand-in for systemd: our AF_UNIX datagram socket is its NOTIFY_SOCKET
(abstract namespace, "@name"), WATCHDOG_USEC asks for keep-alives. It must send READY=1, then WATCHDOG=1
from its loop, and STOPPING=1 on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.vcan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_watchdog_stopping(vcan0):
    name = f"cbt-notify-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)
        notify.settimeout(120)  # an upper bound for a slow VM, not a timing assertion
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"}
        env.pop("WATCHDOG_PID", None)
        url = f"tcp-listen://127.0.0.1:{_free_port()}"
        proc = subprocess.Popen([sys.executable, "-m", "bridge", vcan0, url], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = notify.recv(4096).decode().split("\n")
            assert first[0] == "READY=1"
            assert first[1].startswith("STATUS=bridging ") and vcan0 in first[1], first
            assert [notify.recv(4096) for _ in range(2)] == [b"WATCHDOG=1"] * 2
            proc.send_signal(signal.SIGTERM)
            while (msg := notify.recv(4096)) == b"WATCHDOG=1":
                pass
            assert msg == b"STOPPING=1"
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
