"""Mosquitto for the two-namespace rig (bridge/tools/rig/rig.py, `canbridge demo --transport mqtt`): one broker
process in the gateway's namespace, listening on GW_ADDR so the gateway reaches it locally and the remote
over the veth. Anonymous, no persistence, a generated config in the rig's log directory.

    broker = RigBroker(logdir, "10.200.0.1", 1883)
    broker.start(wrap=lambda argv: netns.exec_argv(ns, argv))   # waits until it listens
    ...
    broker.stop()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 20.0  # mosquitto says "running" within ms; an emulated test VM shared with others is slower
STOP_TIMEOUT_S = 5.0
QUEUE_LIMIT = 100_000  # messages the broker queues per client: a whole demo run, the rig must not lose any


def mosquitto_path() -> str:
    """The mosquitto binary; RuntimeError naming the package when it is missing."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        raise RuntimeError("transport mqtt needs Mosquitto: apt-get install mosquitto (scripts/setup.sh)")
    return found


INFLIGHT = 64  # QoS 1 messages in flight toward each client (and the Receive Maximum its CONNACK announces, which
#               the gateway's outbox respects): Mosquitto's default 20 caps a consumer at 20 messages per round
#               trip, under the trace's ~2,500 messages/s in the emulated test VM (p50 1.3 s instead of 41 ms)


def config_text(addr: str, port: int) -> str:
    lines = [f"listener {port} {addr}", "allow_anonymous true", "persistence false", "log_dest stderr",
             "log_type error", "log_type warning", "log_type notice", "log_type information",
             f"max_queued_messages {QUEUE_LIMIT}", f"max_inflight_messages {INFLIGHT}"]
    if os.geteuid() == 0:  # as root mosquitto switches to user mosquitto, who cannot read the rig's log dir
        lines.append("user root")
    return "\n".join(lines) + "\n"


class RigBroker:
    """One mosquitto on addr:port, its config and log in `directory`."""

    def __init__(self, directory: Path, addr: str, port: int) -> None:
        self.addr, self.port = addr, port
        self.config = Path(directory) / "mosquitto.conf"
        self.log = Path(directory) / "mosquitto.log"
        self.config.write_text(config_text(addr, port))
        self.proc: subprocess.Popen | None = None

    def start(self, wrap=lambda argv: argv) -> None:
        """Run it (wrap: argv -> argv, e.g. inside a network namespace) and wait for its listener.
        RuntimeError with the broker's log when it exits or does not come up in START_TIMEOUT_S."""
        with open(self.log, "wb") as logf:  # a fresh log: "running" below is this start's
            self.proc = subprocess.Popen(wrap([mosquitto_path(), "-c", str(self.config)]),
                                         stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log_text()}")
            if " running" in self.log_text():  # "mosquitto version 2.0.x running" (information): listening
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not start in {START_TIMEOUT_S:.0f} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
