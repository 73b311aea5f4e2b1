"""A real Mosquitto for tests: `mosquitto -c CONFIG` on a free 127.0.0.1 port (never 1883, never the
system service), with a generated config: anonymous, a password file (mosquitto_passwd), an ACL, and TLS
with the certificates of tests/pki.py. Tests marked `mosquitto` fail (never skip) when the binary is
missing: scripts/setup.sh installs the Debian package.

Broker(tmp_path, ...).start() / .kill() (SIGKILL) / .pause() (SIGSTOP) / .resume() / .restart() (same port) /
.stop(); the broker keeps Mosquitto's defaults (Receive Maximum 20) unless `extra` config lines say otherwise.
The fixture running(tmp_path) is the body of a `mosquitto` fixture: a started anonymous broker, stopped at
teardown.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
needs_mosquitto = pytest.mark.mosquitto  # tests/conftest.py fails such a test when mosquitto is missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto process. users: {name: password} (password file, anonymous off); acl: the text of
    an ACL file; tls: {ca, server_cert, server_key} of tests/pki.make_pki (require_certificate when
    require_cert)."""

    def __init__(self, directory: Path, *, users: dict | None = None, acl: str | None = None,
                 tls: dict | None = None, require_cert: bool = False, port: int | None = None,
                 extra: tuple = ()) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        lines = ["per_listener_settings false", "persistence false", f"listener {self.port} 127.0.0.1",
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 "max_queued_messages 100000", *extra]  # max_inflight_messages left at 20: our Receive Maximum
        if os.geteuid() == 0:  # as root mosquitto switches to user mosquitto, who cannot read pytest's tmp_path
            lines.append(f"user {pwd.getpwuid(0).pw_name}")
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            path = self.dir / "acl"
            path.write_text(acl)
            lines.append(f"acl_file {path}")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['server_cert']}", f"keyfile {tls['server_key']}",
                      f"require_certificate {'true' if require_cert else 'false'}"]
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"

    def start(self, timeout: float = 5.0) -> Broker:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=logf, stderr=logf)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL (also of a paused broker): no clean disconnect, no session saved (persistence false)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay up, nothing is read or answered (a hung broker)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> Broker:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def running(tmp_path):
    """Generator for a fixture: a started anonymous broker, stopped at teardown. Use it as
    `@pytest.fixture(name="mosquitto")` / `def _broker(tmp_path): yield from running(tmp_path)`."""
    if MOSQUITTO is None:
        pytest.fail("mosquitto not installed (scripts/setup.sh installs it)", pytrace=False)
    broker = Broker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()
