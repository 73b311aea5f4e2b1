"""The python-can interface plugin (`interface="canbridge"`) against a real bridge on vcan0."""

import os
import select
import subprocess
import sys
import time

import can
import pytest

from tests.test_pycan import start_logger, stop_logger

pytestmark = pytest.mark.vcan

PORT = 29700
URL = f"tcp://127.0.0.1:{PORT}/vcan0"


@pytest.fixture
def bridge(vcan0, tmp_path):
    log = open(tmp_path / "bridge.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", vcan0, f"tcp-listen://127.0.0.1:{PORT}"],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            can.Bus(interface="canbridge", channel=URL).shutdown()
            break
        except can.CanInitializationError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)
    yield proc
    proc.terminate()
    code = proc.wait(20)
    print((tmp_path / "bridge.log").read_text())  # shown when the test fails
    assert code == 0


def test_send_recv_filters_fileno_timestamps(bridge, vcan0):
    with can.Bus(interface="canbridge", channel=URL, can_filters=[{"can_id": 0x123, "can_mask": 0x7FF}]) as remote, \
            can.Bus(interface="socketcan", channel=vcan0, fd=True) as local:
        assert remote.recv(0.2) is None  # recv with timeout returns None
        before = time.time()
        for can_id in (0x124, 0x123):
            local.send(can.Message(arbitration_id=can_id, data=b"\xaa\xbb", is_extended_id=False))
        assert select.select([remote.fileno()], [], [], 5)[0]  # fileno() works with select
        m = remote.recv(5)
        assert (m.arbitration_id, bytes(m.data), m.is_extended_id) == (0x123, b"\xaa\xbb", False)  # 0x124 filtered
        assert before - 1 < m.timestamp < time.time() + 1  # the gateway's kernel RX time

        fd = can.Message(arbitration_id=0x1ABCDEF, data=bytes(range(48)), is_fd=True, bitrate_switch=True)
        remote.send(fd)
        got = local.recv(5)
        assert got.is_fd and got.bitrate_switch and got.arbitration_id == 0x1ABCDEF
        assert bytes(got.data) == bytes(range(48))


def test_unknown_interface_is_a_clean_error(bridge):
    with pytest.raises(can.CanInitializationError, match="has no interface 'can9'"):
        can.Bus(interface="canbridge", channel=f"tcp://127.0.0.1:{PORT}/can9")


def _wait_for_line(proc, text: str, timeout: float = 120.0) -> None:
    """Read proc's stdout until it contains `text` (python-can's imports take seconds in the test VM,
    more when the host is loaded); fails with its stderr if it exits or the bound passes first. Reads
    the pipe's fd itself: select() on a buffered file misses lines that one readline() pulled into the
    buffer along with the first (the logger prints its two lines at once)."""
    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 1.0)[0]:
            seen += os.read(fd, 4096)
            if text.encode() in seen:
                return
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[2]} exited {proc.returncode}: {proc.stderr.read()}")
    pytest.fail(f"no {text!r} from {proc.args[2]} in {timeout} s")


def test_python_can_logger_and_player(bridge, vcan0, tmp_path):
    """python-can's own tools with `-i canbridge`: the player sends a log through the bridge onto
    vcan0, the logger records vcan0 through the bridge."""
    src = tmp_path / "in.log"
    src.write_text("".join(f"(1700000000.{i:06d}) can0 {0x100 + i:03X}#{i:02X}{i:02X}\n" for i in range(20)))
    out = tmp_path / "out.log"
    logger = start_logger("-c", URL, "-f", str(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with can.Bus(interface="socketcan", channel=vcan0) as local:
        _wait_for_line(logger, "Can Logger (Started")  # printed once its bus is connected
        player = subprocess.run([sys.executable, "-m", "can.player", "-i", "canbridge", "-c", URL, str(src)],
                                capture_output=True, text=True, timeout=120)
        assert player.returncode == 0, player.stderr
        seen = [local.recv(5) for _ in range(20)]
        for i in range(5):  # frames born on vcan0 reach the logger (a peer's own frames never return to peers)
            local.send(can.Message(arbitration_id=0x300 + i, data=bytes([i]), is_extended_id=False))
        time.sleep(5)  # the logger reads them (nothing it could be asked; bounded, generous for a loaded VM)
    stop_logger(logger)
    assert [(m.arbitration_id, bytes(m.data)) for m in seen] == [(0x100 + i, bytes([i, i])) for i in range(20)]
    logged = [(m.arbitration_id, bytes(m.data)) for m in can.LogReader(str(out))]
    assert logged == [(0x300 + i, bytes([i])) for i in range(5)]


def test_asyncio_notifier_gets_a_whole_burst(bridge, vcan0):
    """python-can's asyncio Notifier (recv(0) once per readable event on fileno()) against the real
    bridge: every frame of a flat-out cangen burst arrives, in order."""
    import asyncio

    n = 3000

    async def run() -> list:
        with can.Bus(interface="canbridge", channel=URL) as remote:
            reader = can.AsyncBufferedReader()
            notifier = can.Notifier(remote, [reader], loop=asyncio.get_running_loop())
            await asyncio.sleep(0.5)
            cangen = await asyncio.create_subprocess_exec("cangen", vcan0, "-n", str(n), "-g", "0", "-I", "i",
                                                          "-L", "8", "-D", "i")
            got = [await asyncio.wait_for(reader.get_message(), 30) for _ in range(n)]
            await cangen.wait()
            notifier.stop()
            return got

    got = asyncio.run(run())
    assert len(got) == n
    assert all(m.channel == f"127.0.0.1:{PORT}/vcan0" for m in got)


def test_tls_gateway(vcan0, tmp_path):
    """A real bridge requiring mutual TLS; the plugin with tls_ca/tls_cert/tls_key sends and receives."""
    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    port = PORT + 1
    url = (f"tcp-listen://127.0.0.1:{port}?tls_cert={pki['server_cert']}&tls_key={pki['server_key']}"
           f"&tls_ca={pki['ca']}")
    log = open(tmp_path / "bridge.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", vcan0, url], stdout=log, stderr=log)
    kw = dict(interface="canbridge", channel=f"tcp://localhost:{port}/vcan0", tls_ca=pki["ca"],
              tls_cert=pki["client_cert"], tls_key=pki["client_key"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                remote = can.Bus(**kw)
                break
            except can.CanInitializationError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "bridge.log").read_text()
                time.sleep(0.2)
        with remote, can.Bus(interface="socketcan", channel=vcan0) as local:
            time.sleep(0.5)
            local.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
            m = remote.recv(5)
            assert (m.arbitration_id, bytes(m.data)) == (0x123, b"\x01")
            remote.send(can.Message(arbitration_id=0x321, data=b"\x02", is_extended_id=False))
            got = local.recv(5)
            assert (got.arbitration_id, bytes(got.data)) == (0x321, b"\x02")
        with pytest.raises(can.CanInitializationError):  # no client certificate: the gateway refuses
            can.Bus(interface="canbridge", channel=f"tcp://localhost:{port}/vcan0", tls_ca=pki["ca"]).recv(2)
    finally:
        proc.terminate()
        proc.wait(20)
