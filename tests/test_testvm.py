"""Tests of `canbridge testvm` (hw/testvm): host tests that boot the QEMU test VM themselves.

Three VM boots (about 5 s each, plus an 8 s timeout); the rest needs no VM. The first boot also has
emulated CAN controllers (--can), so checking them costs no boot of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.hw.testvm import runner

ROOT = Path(__file__).resolve().parents[1]
CANVM = ROOT / "hw" / "testvm" / "canvm.sh"
boots_vm = pytest.mark.skipif(os.environ.get("CANBRIDGE_IN_TESTVM") == "1",
                              reason="would boot a VM inside the test VM (pure emulation: far too slow)")


def run_testvm(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge.hw.testvm", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


PY_IN_VM = (  # the VM's own view: vcan works natively there; TemporaryFile (pytest's capture) works
    "import tempfile; from bridge.hw.testvm import vcan_available as v; "
    "f = tempfile.TemporaryFile(); f.write(b'abc'); f.truncate(1); "
    "print('native_vcan=%s tmp=%s' % (v(), tempfile.gettempdir()))"
)


@boots_vm
def test_vm_exit_code_streams_env_and_vcans():
    script = (
        'echo out1; echo err1 >&2; '
        'for i in 0 1 2 3; do echo "vcan$i mtu=$(cat /sys/class/net/vcan$i/mtu)"; done; '
        'test -e /sys/class/net/vcan4 && echo vcan4-exists; '
        'for i in 0 1 2; do echo "can$i $(cat /sys/class/net/can$i/tx_queue_len)'
        ' $(ip -d link show can$i | grep -o "bitrate [0-9]*")'
        ' $(grep DRIVER /sys/class/net/can$i/device/uevent)"; done; '
        'test -e /sys/class/net/can3 && echo can3-exists; '
        'candump -n 1 -T 3000 can1 > /run/s1 & candump -n 1 -T 1500 can2 > /run/s2 & sleep 0.5; '
        'cansend can0 123#01; wait; echo "seen on can1, can2: $(wc -l < /run/s1) $(wc -l < /run/s2)"; '
        'echo "in_vm=$CANBRIDGE_IN_TESTVM pp=$PYTHONPATH x=$CANBRIDGE_TEST_X cwd=$(pwd)"; '
        f'"{sys.executable}" -c "{PY_IN_VM}"; '
        'exit 7'
    )
    r = run_testvm("--vm", "--vcan", "4", "--can", "sja1000:2", "--can", "sja1000:1", "--timeout", "200", "--",
                   "sh", "-c", script, PYTHONPATH=str(ROOT), CANBRIDGE_TEST_X="a b")
    assert r.returncode == 7, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "out1"
    assert out[1:5] == [f"vcan{i} mtu=72" for i in range(4)]
    assert "vcan4-exists" not in out
    # two controllers on the first emulated bus, one on the second: up at 500 kbit/s, qlen 10, kvaser_pci
    assert out[5:8] == [f"can{i} 10 bitrate 500000 DRIVER=kvaser_pci" for i in range(3)]
    assert "can3-exists" not in out
    assert "seen on can1, can2: 1 0" in out  # can0's frame crosses its own wire only
    assert f"in_vm=1 pp={ROOT} x=a b cwd={ROOT}" in out
    assert "native_vcan=True tmp=/run/tmp" in out
    assert "err1" not in r.stdout and "\r" not in r.stdout
    assert r.stderr.splitlines() == ["err1"]


@boots_vm
def test_vm_timeout_gives_124():
    t0 = time.monotonic()
    r = run_testvm("--vm", "--timeout", "8", "--", "sleep", "120", timeout=120)
    assert r.returncode == 124, r.stderr
    assert "timed out" in r.stderr
    assert time.monotonic() - t0 < 60


@boots_vm
def test_vm_death_gives_255():
    r = run_testvm("--vm", "--", "true", CANVM_APPEND="rdinit=/nonexistent")  # the kernel panics at boot
    assert r.returncode == 255, r.stderr
    assert "without an exit code" in r.stderr


def test_nothing_usable_says_what_to_install():
    r = run_testvm("--", "true", CANVM_QEMU="/nonexistent/qemu-system-x86_64")
    if runner.vcan_available():  # a kernel with vcan runs natively and never needs qemu
        assert r.returncode == 0
        return
    assert r.returncode == runner.EXIT_UNUSABLE == 3
    assert "apt-get install -y --no-install-recommends qemu-system-x86 kmod iproute2" in r.stderr
    assert "apt-get update" in r.stderr
    assert "Traceback" not in r.stderr
    c = subprocess.run(["bash", str(CANVM), "true"], capture_output=True, text=True,
                       env={**os.environ, "CANVM_QEMU": "/nonexistent/qemu"}, timeout=60)
    assert c.returncode == 3 and "qemu-system-x86" in c.stderr


def test_native_requested_without_can(monkeypatch, capsys):
    monkeypatch.setattr(runner, "can_raw_available", lambda: False)
    assert runner.main(["--native", "--", "true"]) == 3
    assert "cannot run natively: no CAN_RAW" in capsys.readouterr().err


def test_native_path_passes_exit_code_and_times_out(monkeypatch):
    monkeypatch.setattr(runner, "ensure_native_vcans", lambda n: None)  # as on a kernel with vcan
    monkeypatch.setattr(runner, "run_vm", lambda *a, **k: pytest.fail("must not boot a VM"))
    assert runner.main(["--", sys.executable, "-c", "raise SystemExit(9)"]) == 9
    t0 = time.monotonic()
    assert runner.main(["--timeout", "1", "--", "sleep", "30"]) == 124
    assert time.monotonic() - t0 < 10
    assert runner.main(["--", "/nonexistent/cmd"]) == 127


def test_usage(capsys):
    assert runner.main(["--help"]) == 0
    assert "canbridge testvm --vcan 4" in capsys.readouterr().out
    assert runner.main([]) == 2
    assert runner.main(["--mem", "lots", "--", "true"]) == 2
    assert runner.main(["--vcan", "-1", "--", "true"]) == 2
    for bad in ("ctucan:2", "sja1000:0", "sja1000", "sja1000:x", "sja1000:99"):
        assert runner.main(["--can", bad, "--", "true"]) == 2
        assert "sja1000:N" in capsys.readouterr().err
    assert runner.main(["--native", "--can", "sja1000:2", "--", "true"]) == 3  # controllers exist only in the VM
    assert "--can needs the VM" in capsys.readouterr().err
    capsys.readouterr()
    r = subprocess.run(["bash", str(CANVM), "true"], capture_output=True, text=True,
                       env={**os.environ, "CANVM_VCAN": "x"}, timeout=60)
    assert r.returncode == 2 and "CANVM_VCAN" in r.stderr


def test_vm_gets_options_as_canvm_env(monkeypatch):
    seen = {}

    def fake_run(argv, env, timeout):
        seen.update(argv=argv, env=env)
        return 0

    monkeypatch.setattr(runner, "_run", fake_run)
    monkeypatch.setattr(runner, "vm_unusable_reason", lambda: None)
    monkeypatch.setenv("CANBRIDGE_FOO", "1")
    monkeypatch.setenv("CANVM_ENV", "MYVAR")
    assert runner.main(["--vm", "--vcan", "3", "--timeout", "90", "--mem", "2G", "--cpus", "1",
                        "--can", "sja1000:2", "--can", "sja1000:1", "--", "pytest", "-x"]) == 0
    env = seen["env"]
    assert seen["argv"][1:] == [str(runner.canvm_script()), "--", "pytest", "-x"]
    assert (env["CANVM_VCAN"], env["CANVM_TIMEOUT"], env["CANVM_MEM"], env["CANVM_CPUS"]) == ("3", "90", "2G", "1")
    assert env["CANVM_CAN"] == "2 1"
    assert set(env["CANVM_ENV"].split()) >= {"MYVAR", "CANBRIDGE_FOO", "CANBRIDGE_IN_TESTVM"}
    assert env["CANBRIDGE_IN_TESTVM"] == "1"
