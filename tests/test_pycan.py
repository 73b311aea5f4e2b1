"""The python-can plugin (`interface="canbridge"`) on the host against a fake bridge over loopback
(tests/fakebridge.py: real sockets, real TLS, the real native codec): Notifiers (asyncio and thread),
CAN FD protocol, bus state, channel names, TLS, config detection, can.logger and can.player."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import can
import pytest

from bridge.codec import canerr
from bridge.frame import CanFrame
from tests.fakebridge import FakeBridge, frames

BURST = 11


@pytest.fixture
def fake():
    bridges = []

    def make(**kw):
        bridges.append(FakeBridge(**kw))
        return bridges[-1]

    yield make
    for b in bridges:
        b.close()


def _ids(msgs) -> list[int]:
    return [m.arbitration_id for m in msgs]


def test_asyncio_notifier_delivers_frames_sent_with_the_hello(fake):
    """The bridge's HELLO and 11 frames in one write, then another 11 in one write: the asyncio
    Notifier (one recv(0) per readable event on fileno()) delivers all 22."""
    bridge = fake(first=frames(BURST))

    async def run() -> list:
        with can.Bus(interface="canbridge", channel=bridge.url + "/vcan0") as bus:
            reader = can.AsyncBufferedReader()
            notifier = can.Notifier(bus, [reader], loop=asyncio.get_running_loop())
            got = [await asyncio.wait_for(reader.get_message(), 5) for _ in range(BURST)]
            bridge.push(frames(BURST, base=0x200))
            got += [await asyncio.wait_for(reader.get_message(), 5) for _ in range(BURST)]
            notifier.stop()
            return got

    got = asyncio.run(run())
    assert _ids(got) == [0x100 + i for i in range(BURST)] + [0x200 + i for i in range(BURST)]


def test_thread_notifier_delivers_every_frame(fake):
    bridge = fake(first=frames(BURST))
    with can.Bus(interface="canbridge", channel=bridge.url) as bus:
        reader = can.BufferedReader()
        notifier = can.Notifier(bus, [reader], timeout=0.1)
        got = [reader.get_message(5) for _ in range(BURST)]
        bridge.push(frames(BURST, base=0x200))
        got += [reader.get_message(5) for _ in range(BURST)]
        notifier.stop()
    assert _ids(got) == [0x100 + i for i in range(BURST)] + [0x200 + i for i in range(BURST)]


def test_fileno_stays_readable_while_frames_wait(fake):
    """select() on fileno() after a recv that left frames queued: still readable."""
    import select

    bridge = fake(first=frames(3))
    with can.Bus(interface="canbridge", channel=bridge.url) as bus:
        for i in range(3):
            assert select.select([bus.fileno()], [], [], 2)[0], f"frame {i} stranded"
            assert bus.recv(0).arbitration_id == 0x100 + i
        assert not select.select([bus.fileno()], [], [], 0.2)[0]
        assert bus.recv(0) is None


def test_protocol_channel_name_and_timestamps(fake):
    fd = CanFrame(0x1ABCDEF, bytes(range(48)), is_extended=True, is_fd=True, brs=True).to_raw()
    bridge = fake(channels=("vcan0", "vcan1"), first=[(fd, 1_700_000_000_123_456_789)], channel=1)
    with can.Bus(interface="canbridge", channel=bridge.url + "/vcan1") as bus:
        assert bus.protocol == can.CanProtocol.CAN_FD
        assert bus.channel_info.startswith(f"canbridge 127.0.0.1:{bridge.port}/vcan1")
        m = bus.recv(2)
        assert m.is_fd and m.bitrate_switch and bytes(m.data) == bytes(range(48))
        assert m.channel == f"127.0.0.1:{bridge.port}/vcan1"
        assert m.timestamp == pytest.approx(1_700_000_000.123456789)
    with can.Bus(interface="canbridge", channel=bridge.url) as first:  # no path: the first interface
        assert first.recv(0.3) is None  # the frame is on channel 1
        assert first.channel_info.startswith(f"canbridge 127.0.0.1:{bridge.port}/vcan0")


def test_fd_false_and_bridge_without_fd(fake):
    fd = CanFrame(0x123, bytes(12), is_fd=True).to_raw()
    bridge = fake(first=[(fd, 1), frames(1)[0]])
    with can.Bus(interface="canbridge", channel=bridge.url, fd=False) as bus:
        assert bus.protocol == can.CanProtocol.CAN_20
        assert bus.recv(2).arbitration_id == 0x100
        assert bus.dropped == {"fd_disabled": 1}
        with pytest.raises(can.CanOperationError, match="CAN FD is off"):
            bus.send(can.Message(arbitration_id=1, data=bytes(12), is_fd=True))
    classic = fake(capabilities=0)
    with can.Bus(interface="canbridge", channel=classic.url) as bus:
        assert bus.protocol == can.CanProtocol.CAN_20


def test_bus_state_follows_error_frames(fake):
    bridge = fake()
    with can.Bus(interface="canbridge", channel=bridge.url) as bus:
        assert bus.state == can.BusState.ACTIVE
        steps = [(canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE), can.BusState.PASSIVE),
                 (canerr.error_frame(canerr.CAN_ERR_BUSOFF), can.BusState.ERROR),
                 (canerr.error_frame(canerr.CAN_ERR_RESTARTED), can.BusState.ACTIVE)]
        for raw, state in steps:
            bridge.push([(raw, 1)])
            m = bus.recv(2)
            assert m.is_error_frame and bus.state == state


def test_send_reaches_the_bridge(fake):
    bridge = fake(channels=("vcan0", "vcan1"))
    with can.Bus(interface="canbridge", channel=bridge.url + "/vcan1") as bus:
        bus.send(can.Message(arbitration_id=0x321, data=b"\x01\x02", is_extended_id=False))
        bus.send(can.Message(arbitration_id=0x1234567, data=bytes(64), is_fd=True))
        deadline = time.monotonic() + 5
        while len(bridge.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    got = [(ch, CanFrame.from_raw(raw)) for ch, raw in bridge.received]
    assert [(ch, f.can_id, f.is_fd) for ch, f in got] == [(1, 0x321, False), (1, 0x1234567, True)]


def test_unknown_interface_and_unreachable_are_init_errors(fake):
    bridge = fake()
    with pytest.raises(can.CanInitializationError, match="has no interface 'can9'"):
        can.Bus(interface="canbridge", channel=bridge.url + "/can9")
    port = bridge.port
    bridge.close()
    with pytest.raises(can.CanInitializationError, match="cannot connect"):
        can.Bus(interface="canbridge", channel=f"tcp://127.0.0.1:{port}")
    with pytest.raises(can.CanInitializationError, match="unknown option 'bogus'"):
        can.Bus(interface="canbridge", channel="tcp://127.0.0.1:1?bogus=1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def _mtls_server(pki):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    ctx.load_verify_locations(pki["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_tls_gateway_with_client_certificates(fake, pki):
    """A gateway that requires mutual TLS: kwargs or URL options; without our certificate it fails cleanly."""
    bridge = fake(first=frames(BURST), context=_mtls_server(pki))
    url = bridge.url.replace("127.0.0.1", "localhost")
    with can.Bus(interface="canbridge", channel=url, tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                 tls_key=pki["client_key"]) as bus:
        assert _ids(bus.recv(2) for _ in range(BURST)) == [0x100 + i for i in range(BURST)]
        bus.send(can.Message(arbitration_id=0x77, data=b"\x07", is_extended_id=False))
    query = f"{url}/vcan0?tls_ca={pki['ca']}&tls_cert={pki['client_cert']}&tls_key={pki['client_key']}"
    with can.Bus(interface="canbridge", channel=query) as bus:
        assert bus.recv(2).arbitration_id == 0x100
    deadline = time.monotonic() + 5
    while not bridge.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [CanFrame.from_raw(raw).can_id for _, raw in bridge.received] == [0x77]
    with pytest.raises(can.CanInitializationError):
        can.Bus(interface="canbridge", channel=url, tls_ca=pki["ca"]).recv(1)  # no client certificate
    with pytest.raises(can.CanInitializationError, match="tls_ca"):
        can.Bus(interface="canbridge", channel=url, tls_ca="/nonexistent/ca.pem")


def test_tls_many_records_in_one_read_are_all_delivered(fake, pki):
    """Frames decrypted into the ssl object's buffer (invisible to select) are not stranded."""
    bridge = fake(context=_mtls_server(pki))
    url = bridge.url.replace("127.0.0.1", "localhost")
    with can.Bus(interface="canbridge", channel=url, tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                 tls_key=pki["client_key"]) as bus:
        bridge.wait_clients()
        for k in range(20):  # 20 separate TLS records
            bridge.push(frames(1, base=0x300 + k))
        time.sleep(0.3)
        got = [bus.recv(2) for _ in range(20)]
    assert _ids(got) == [0x300 + k for k in range(20)]


def test_detect_available_configs(tmp_path, monkeypatch):
    (tmp_path / "gw.toml").write_text('[[interface]]\nname = "can0"\n[[interface]]\nname = "can1"\n'
                                      '[[peer]]\nurl = "tcp-listen://0.0.0.0:29650"\n'
                                      '[[peer]]\nurl = "udp://192.0.2.20:29601"\n')
    (tmp_path / "broken.toml").write_text("[[interface\n")
    monkeypatch.setenv("CANBRIDGE_CONFIGS", str(tmp_path / "*.toml"))
    assert can.detect_available_configs(["canbridge"]) == [
        {"interface": "canbridge", "channel": "tcp://127.0.0.1:29650/can0"},
        {"interface": "canbridge", "channel": "tcp://127.0.0.1:29650/can1"},
    ]


def start_logger(*args: str, **popen) -> subprocess.Popen:
    """`python -m can.logger -i canbridge ARGS...` with Ctrl-C (SIGINT) at its default: a test run
    started in the background by a non-interactive shell inherits SIGINT ignored, and Python keeps an
    ignored SIGINT ignored, so the logger would never stop (seen in a fresh-clone run from `nohup ... &`)."""
    return subprocess.Popen([sys.executable, "-u", "-m", "can.logger", "-i", "canbridge", *args],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def stop_logger(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Ctrl-C for `python -m can.logger`, reading its stderr meanwhile (a full, unread pipe would block
    its exit); if it does not stop, kill it and fail with what it wrote."""
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"can.logger ignored SIGINT for {timeout:.0f} s; stderr:\n{_text(err)[-3000:]}")
    assert proc.returncode == 0, _text(err)[-3000:]


def _text(data) -> str:
    return data if isinstance(data, str) else data.decode(errors="replace")


def test_python_can_logger_and_player(fake, tmp_path):
    """`python -m can.logger -i canbridge` records what the bridge sends (format from the extension,
    BLF here), `python -m can.player -i canbridge` sends a log to the bridge."""
    bridge = fake()
    out = tmp_path / "out.blf"
    logger = start_logger("-c", bridge.url, "-f", str(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        bridge.wait_clients(1, timeout=60)
        bridge.push(frames(BURST, base=0x300))
        time.sleep(1)
    finally:
        stop_logger(logger)
    assert _ids(can.LogReader(str(out))) == [0x300 + i for i in range(BURST)]
    channels = {m.channel for m in can.LogReader(str(tmp_path / "out.blf"))}
    assert channels <= {None, 0, 1}  # BLF stores channel numbers: a "GATEWAY/IFACE" name is not kept

    src = tmp_path / "in.log"
    src.write_text("".join(f"(1700000000.{i:06d}) can0 {0x100 + i:03X}#{i:02X}{i:02X}\n" for i in range(20)))
    player = subprocess.run([sys.executable, "-m", "can.player", "-i", "canbridge", "-c", bridge.url, str(src)],
                            capture_output=True, text=True, timeout=120)
    assert player.returncode == 0, player.stderr
    deadline = time.monotonic() + 5
    while len(bridge.received) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [CanFrame.from_raw(raw).can_id for _, raw in bridge.received] == [0x100 + i for i in range(20)]


def test_logger_names_the_channel_gateway_iface(fake, tmp_path):
    """A candump-format log written by can.logger names the interface GATEWAY/IFACE, not the URL."""
    bridge = fake()
    out = tmp_path / "out.log"
    logger = start_logger("-c", bridge.url + "/vcan0", "-f", str(out), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    try:
        bridge.wait_clients(1, timeout=60)
        bridge.push(frames(2))
        time.sleep(1)
    finally:
        stop_logger(logger)
    lines = out.read_text().split()
    assert lines[1] == f"127.0.0.1:{bridge.port}/vcan0", lines
