"""`canbridge dump tcp://...` on the host against a fake bridge over loopback (tests/fakebridge.py):
frames that came in the same write as the HELLO are printed, TLS options in the URL work."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from bridge.codec import candump
from tests.fakebridge import FakeBridge, frames

DUMP = [sys.executable, "-m", "bridge", "dump"]


@pytest.fixture
def fake():
    made = []

    def make(**kw):
        made.append(FakeBridge(**kw))
        return made[-1]

    yield make
    for b in made:
        b.close()


def _expected(batch, iface="vcan0") -> str:
    return "".join(candump.format_line(ts, iface, raw) + "\n" for raw, ts in batch)


def test_frames_with_the_hello_are_printed(fake):
    burst = frames(11)
    bridge = fake(first=burst)
    out = subprocess.run([*DUMP, "-L", "-n", "11", "-T", "5000", bridge.url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == _expected(burst)


def test_tls_options_in_the_url(fake, tmp_path):
    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    ctx.load_verify_locations(pki["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    burst = frames(5)
    bridge = fake(first=burst, context=ctx)
    url = (f"tcp://localhost:{bridge.port}/vcan0?tls_ca={pki['ca']}&tls_cert={pki['client_cert']}"
           f"&tls_key={pki['client_key']},100:7F0")
    out = subprocess.run([*DUMP, "-L", "-n", "5", "-T", "5000", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == _expected(burst)
    bad = subprocess.run([*DUMP, "-L", "-n", "1", "-T", "2000", f"tcp://localhost:{bridge.port}?tls_ca=/nope.pem"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "tls_ca" in bad.stderr and "Traceback" not in bad.stderr
