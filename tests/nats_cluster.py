"""A real three-node NATS cluster for tests (issue 21): `nats-server -c CONFIG` per node on free 127.0.0.1
ports, each with JetStream (its own store directory), a cluster listener with routes to all three, an MQTT
listener (MQTT 3.1.1 only: nats-server 2.9 refuses an MQTT 5 CONNECT) and a monitoring port. Debian's
package nats-server (scripts/setup.sh installs it); a test using the fixture fails (never skips) without it.

Cluster(tmp_path).start() -> every node answers an MQTT CONNECT (the JetStream meta leader is elected, or
MQTT refuses sessions); node.kill() (SIGKILL), node.start() (the same ports and store: it rejoins);
cluster.stop(). The fixture body: `yield from running(tmp_path)`.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from tests.mqtt_broker import free_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
CLUSTER_NAME = "canbridge-test"
START_TIMEOUT_S = 30.0  # three nodes and a JetStream meta leader: ~1-2 s here, far more in the TCG VM


class Node:
    """One nats-server of the cluster: name, port (NATS clients), mqtt_port, cluster_port, http_port."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir, self.name = directory, name
        self.port, self.mqtt_port, self.cluster_port, self.http_port = (free_port() for _ in range(4))
        self.config = directory / f"{name}.conf"
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self, routes: list[int]) -> None:
        store = self.dir / f"{self.name}-js"
        self.config.write_text("\n".join([
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 256MB }}',
            f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{self.cluster_port}, routes: ["
            + ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes) + "] }",
            # every MQTT stream and consumer on all three nodes: a subscription must outlive the node it was made on
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3, consumer_replicas: 3 }}",
        ]) + "\n")

    def start(self) -> Node:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.config)], stdout=logf, stderr=logf)
        logf.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients or the other nodes."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def routes(self) -> int:
        """Routes to the other nodes, from the monitoring port (-1 if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/routez", timeout=1) as r:
                return json.load(r).get("num_routes", 0)
        except OSError:
            return -1

    def mqtt_ready(self) -> bool:
        """An MQTT 3.1.1 CONNECT is accepted (clean session: no state left behind)."""
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{self.name}", protocol=paho.MQTTv311)
        try:
            c.connect("127.0.0.1", self.mqtt_port, keepalive=10)
            deadline = time.monotonic() + 3
            while not c.is_connected() and time.monotonic() < deadline:
                c.loop(0.05)
            ok = c.is_connected()
            c.disconnect()
            return ok
        except OSError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""


class Cluster:
    """Three nodes n1, n2, n3 in `directory`, each routed to all three (itself included, as the NATS docs
    write one config for every node)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [Node(self.dir, f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.write_config([n.cluster_port for n in self.nodes])

    def start(self, timeout: float = START_TIMEOUT_S) -> Cluster:
        for node in self.nodes:
            node.start()
        self.wait_ready(self.nodes, timeout)
        return self

    def wait_ready(self, nodes: list, timeout: float = START_TIMEOUT_S) -> None:
        """Until each of `nodes` is routed to every other live node and accepts MQTT sessions."""
        deadline = time.monotonic() + timeout
        live = sum(n.alive for n in self.nodes)
        for node in nodes:
            while not (node.routes() >= live - 1 and node.mqtt_ready()):
                if not node.alive:
                    raise RuntimeError(f"nats-server {node.name} exited: {node.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {node.name} not ready in {timeout:g} s: {node.tail()}")
                time.sleep(0.1)

    def url(self, prefix: str = "fleet") -> str:
        """mqtt://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/PREFIX: the broker list a gateway is given."""
        return "mqtt://" + ",".join(f"127.0.0.1:{n.mqtt_port}" for n in self.nodes) + f"/{prefix}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def running(tmp_path):
    """Generator for a fixture: a started three-node cluster, stopped at teardown."""
    if NATS_SERVER is None:
        pytest.fail("nats-server not installed (scripts/setup.sh installs it: apt-get install nats-server)",
                    pytrace=False)
    cluster = Cluster(tmp_path / "nats")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
