"""Access control against a real bridge process on vcan0 (docs/cli.md, "Access control"): read-only peers,
write allowlists, the token-bucket rate limit under a flood, max_clients, loopback by default, and the
privilege drop (`--user nobody`). Clients speak the native protocol with bridge.codec.native."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.codec.base import events
from bridge.codec.filters import parse_filters
from bridge.daemon.privileges import capabilities, drop_privileges
from bridge.tools.logs import probe

pytestmark = pytest.mark.vcan

ROOT = Path(__file__).resolve().parent.parent.parent
P_RO, P_ALLOW, P_RATE, P_OPEN, P_USER, P_SCD = 29611, 29612, 29613, 29614, 29615, 29616
FLOOD = 50_000
RATE, BURST = 1000, 100


# --- helpers -------------------------------------------------------------------------------------------


def listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets in LISTEN state on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, hexport = fields[1].rpartition(":")
            if fields[3] == "0A" and int(hexport, 16) == port:
                found.append(addr)
    return found


@contextmanager
def bridge(tmp_path, args, ports, name="bridge"):
    """A `python -m bridge ARGS` process; yields (proc, log path) once every port in `ports` listens."""
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", *args], stdout=out, stderr=out, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not all(listeners(p) for p in ports):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]


def counters(proc, log: Path) -> dict:
    """The bridge's counters, logged on SIGUSR1 (one JSON object per 'counters:' line)."""
    before = log.read_text().count("counters: ")
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while (text := log.read_text()).count("counters: ") == before:
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.05)
    return json.loads(re.findall(r"counters: (\{.*\})", text)[-1])


def dropped(stats: dict, server: str, reason: str) -> int:
    """Frames dropped for `reason` by a server: its own total (closed connections) plus its live ones."""
    return sum(v["dropped"].get(reason, 0) for k, v in stats.items() if k == server or k.startswith(server + "<-"))


class Client:
    """A native-protocol TCP client (heartbeat_ms 0: its silence is not taken for death)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        hello = native.Hello(capabilities=native.CAP_FD, heartbeat_ms=0, channels=("vcan0",))
        self.sock.sendall(native.STREAM_PREAMBLE + native.encode_hello(hello))
        self.decoder = native.StreamDecoder()
        self.got: list[bytes] = []

    def send(self, raws: list, chunk: int = 1000) -> None:
        for i in range(0, len(raws), chunk):
            self.sock.sendall(native.encode_frames(0, [(raw, 0) for raw in raws[i:i + chunk]]))

    def _read(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.decoder.receive_data(data)
        for event in events(self.decoder):
            if isinstance(event, native.Frames):
                self.got.extend(raw for raw, _ts in event.frames)
        return bool(data)

    def receive(self, n: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            self._read()
        return self.got

    def receive_until(self, raw: bytes, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while raw not in self.got and time.monotonic() < deadline:
            self._read()
        return raw in self.got

    def finish(self, timeout: float = 120) -> None:
        """Half-close, then wait for the bridge's EOF: it has handled every byte sent before."""
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.settimeout(timeout)
        while self._read():
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def frames(ids, tag: int = 0) -> list[bytes]:
    return [sc.pack_can(i, (tag + n).to_bytes(4, "big")) for n, i in enumerate(ids)]


def bus_frames(rx, ids_filter: str, settle: float = 0.5) -> list[bytes]:
    """Frames waiting on rx (and arriving within `settle` s) whose id passes the candump filter."""
    fs = parse_filters(ids_filter)
    got: list = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        probe.drain(rx, got)
        time.sleep(0.02)
    return [raw for _ts, raw in got if fs.matches(sc.can_id_of(raw))]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One bridge, five servers: read-only, allowlist + max_clients=2, rate limit, unrestricted, and a
    read-only socketcand server."""
    tmp = tmp_path_factory.mktemp("access")
    args = ["vcan0", f"tcp-listen://:{P_RO}?read_only=1",
            f"tcp-listen://:{P_ALLOW}?write_allow=100:700,7DF&max_clients=2",
            f"tcp-listen://:{P_RATE}?rate={RATE}&burst={BURST}", f"tcp-listen://:{P_OPEN}",
            f"socketcand://:{P_SCD}?read_only=1"]
    if not Path("/sys/class/net/vcan0").exists():
        pytest.fail("vcan0 missing: run in the test VM", pytrace=False)
    with bridge(tmp, args, [P_RO, P_ALLOW, P_RATE, P_OPEN, P_SCD]) as (proc, log):
        yield proc, log


# --- tests ---------------------------------------------------------------------------------------------


def test_default_listen_address_is_loopback_only(gateway):
    assert listeners(P_RO) == ["0100007F"]  # 127.0.0.1, nothing on 0.0.0.0 nor on IPv6


def test_read_only_peer_never_writes_but_still_receives(gateway, vcan0):
    proc, log = gateway
    with probe.open_can(vcan0) as rx, probe.open_can(vcan0) as tx:
        ro = Client(P_RO)
        sent = frames([0x3A0 + (i % 16) for i in range(1000)])
        ro.send(sent)
        bus_side = frames([0x123, 0x456, 0x789], tag=7)
        for raw in bus_side:
            probe.send(tx, raw)
        assert [r for r in ro.receive(3) if sc.can_id_of(r) in (0x123, 0x456, 0x789)] == bus_side
        ro.finish()
        assert bus_frames(rx, "3A0:7F0") == []
    stats = counters(proc, log)[f"tcp-listen://127.0.0.1:{P_RO}"]
    assert stats["dropped"]["read_only"] == len(sent)
    assert stats["rx_frames"] == len(sent)


def test_read_only_socketcand_client_sends_are_dropped_silently(gateway, vcan0):
    proc, log = gateway
    with probe.open_can(vcan0) as rx, socket.create_connection(("127.0.0.1", P_SCD), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            out = b""
            while not out.endswith(b">"):
                out += f.read(1)
            return out

        assert reply() == b"< hi >"
        s.sendall(b"< open vcan0 >")
        assert reply() == b"< ok >"
        s.sendall(b"< rawmode >")
        assert reply() == b"< ok >"
        s.sendall(b"< send 3B1 2 01 02 >< send 3B2 0 >")  # no reply either way: socketcand sends none
        probe.send(rx, sc.pack_can(0x3B9, b"\x09"))
        assert reply().startswith(b"< frame 3B9 ")  # the client still receives the bus
        assert bus_frames(rx, "3B0:7F0") == []
        assert dropped(counters(proc, log), f"socketcand://127.0.0.1:{P_SCD}", "read_only") == 2


def test_write_allow_lets_only_allowed_ids_through(gateway, vcan0):
    proc, log = gateway
    ids = [0x100, 0x1FF, 0x200, 0x7DF, 0x7DE, sc.CAN_EFF_FLAG | 0x7DF, 0x000, 0x1AB, 0x6FF]
    allowed = [0x100, 0x1FF, 0x7DF, 0x1AB]
    with probe.open_can(vcan0) as rx:
        c = Client(P_ALLOW)
        sent = frames(ids, tag=100)
        c.send(sent)
        c.finish()
        got = bus_frames(rx, "0:0")
    assert [sc.can_id_of(r) for r in got] == allowed
    assert got == [raw for raw in sent if sc.can_id_of(raw) in allowed]  # byte-exact, in order
    stats = counters(proc, log)[f"tcp-listen://127.0.0.1:{P_ALLOW}"]
    assert stats["dropped"]["not_allowed"] == len(ids) - len(allowed)


def test_max_clients_refuses_the_third(gateway):
    proc, log = gateway
    a, b = Client(P_ALLOW), Client(P_ALLOW)
    third = socket.create_connection(("127.0.0.1", P_ALLOW), timeout=30)
    try:
        data = b""
        while chunk := third.recv(4096):  # accepted, then closed at once: EOF without a HELLO
            data += chunk
        assert data == b""
        stats = counters(proc, log)
        assert stats[f"tcp-listen://127.0.0.1:{P_ALLOW}"]["errors"]["refused_max_clients"] >= 1
        assert len([k for k in stats if k.startswith(f"tcp-listen://127.0.0.1:{P_ALLOW}<-")]) == 2
    finally:
        third.close()
        a.close()
        b.close()


def test_rate_limit_holds_under_a_flood_and_other_peers_are_served(gateway, vcan0):
    proc, log = gateway
    flood = frames([0x2C0 + (i % 16) for i in range(FLOOD)])
    with probe.open_can(vcan0) as rx, probe.open_can(vcan0) as tx:
        other = Client(P_OPEN)
        flooder = Client(P_RATE)
        start = time.monotonic()
        pump = threading.Thread(target=flooder.send, args=(flood,))
        pump.start()
        # meanwhile another peer keeps working both ways
        mine = frames([0x555] * 200, tag=1000)
        other.send(mine)
        probe.send(tx, sc.pack_can(0x666, b"\x66"))
        assert other.receive_until(sc.pack_can(0x666, b"\x66"))
        pump.join()
        flooder.finish()
        elapsed = time.monotonic() - start
        on_bus = bus_frames(rx, "2C0:7F0,555:7FF")
    flooded = [r for r in on_bus if sc.can_id_of(r) != 0x555]
    print(f"flood: {len(flooded)} of {FLOOD} frames on the bus in {elapsed:.2f} s "
          f"(bound {BURST + RATE * elapsed:.0f})")
    assert [r for r in on_bus if sc.can_id_of(r) == 0x555] == mine  # the other peer: complete, in order
    assert BURST <= len(flooded) <= BURST + RATE * elapsed
    later = iter(flood)
    assert all(raw in later for raw in flooded)  # flood frames, each at most once, in their order
    stats = counters(proc, log)[f"tcp-listen://127.0.0.1:{P_RATE}"]
    assert stats["dropped"]["rate_limited"] == FLOOD - len(flooded)
    other.close()


def test_user_nobody_forwards_both_ways_without_privileges(tmp_path, vcan0):
    with bridge(tmp_path, ["vcan0", f"tcp-listen://:{P_USER}", "--user", "nobody"], [P_USER]) as (proc, log):
        deadline = time.monotonic() + 30
        while "privileges dropped" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        assert uids == ["65534"] * 4, status
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^CapPrm:\s+0+$", status, re.M), status
        with probe.open_can(vcan0) as rx, probe.open_can(vcan0) as tx:
            c = Client(P_USER)
            to_bus = frames([0x4E0 + i for i in range(10)], tag=50)
            c.send(to_bus)
            from_bus = frames([0x4F0 + i for i in range(10)], tag=60)
            for raw in from_bus:
                probe.send(tx, raw)
            assert [r for r in c.receive(10) if sc.can_id_of(r) >> 4 == 0x4F] == from_bus
            c.finish()
            assert bus_frames(rx, "4E0:7F0") == to_bus


def test_can_raw_needs_no_capability(vcan0):
    """What docs/deployment.md says: after the privilege drop (uid nobody, no capabilities) a process can
    still open, bind and write a CAN_RAW socket (so re-opening a bus later needs no privilege). Forked, so
    the child needs no interpreter that nobody may execute."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop, then open a CAN socket; report through the pipe
        try:
            drop_privileges("nobody")
            with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as s:
                s.bind((vcan0,))
                s.send(sc.pack_can(0x4D0, b"\x01"))
            os.write(write, f"ok {os.getuid()} {capabilities()['CapEff']}".encode())
        except BaseException as exc:  # noqa: BLE001 - anything goes back to the parent
            os.write(write, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == "ok 65534 0"


def test_unknown_user_stops_the_bridge_with_status_2(vcan0):
    r = subprocess.run([sys.executable, "-m", "bridge", vcan0, f"tcp-listen://:{P_USER}", "--user",
                        "no-such-user-canbridge"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "user 'no-such-user-canbridge': no such user" in r.stderr
    assert not listeners(P_USER)  # and its sockets are closed
