"""The udev rule (udev/80-canbridge.rules) run by a real systemd-udevd in the test VM, on the real PCI device of
an emulated controller: its PCI example enabled for that slot, RUN pointed at this checkout."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hw.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
CANBRIDGE = str(Path(sys.executable).with_name("canbridge"))


def slot_of(name: str) -> str:
    return Path(f"/sys/class/net/{name}/device").resolve().name  # "0000:00:03.0"


def stable_name(slot: str) -> str:
    return "cbpci" + slot.split(":")[2].replace(".", "")  # 0000:00:03.0 -> cbpci030


def rules_for(slot: str, toml: Path, dest: Path) -> None:
    """udev/80-canbridge.rules with its PCI example enabled for `slot` and RUN pointed at this checkout."""
    text = (ROOT / "udev" / "80-canbridge.rules").read_text()
    example = '#SUBSYSTEM=="net", ACTION=="add", DRIVERS=="kvaser_pci", KERNELS=="0000:00:02.0", NAME="can-pci2"'
    assert example in text
    text = text.replace(example, example[1:].replace("0000:00:02.0", slot).replace("can-pci2", stable_name(slot)))
    text = text.replace("/opt/canbridge/bin/canbridge", CANBRIDGE).replace("/etc/canbridge/bridge.toml", str(toml))
    dest.mkdir()
    (dest / "80-canbridge.rules").write_text(text)


class Udevd:
    """systemd-udevd in a private mount namespace that sees only `rules` (no other rule renames or runs)."""

    def __init__(self, rules: Path) -> None:
        udevd = shutil.which("systemd-udevd", path="/lib/systemd:/usr/lib/systemd")
        if udevd is None:
            pytest.fail("systemd-udevd missing: apt-get install udev")
        empty = rules.parent / "empty"
        empty.mkdir(exist_ok=True)
        script = (f"mount --bind {rules} /usr/lib/udev/rules.d && mount --bind {empty} /etc/udev/rules.d && "
                  f"exec {udevd}")
        self.log = rules.parent / "udevd.log"
        Path("/run/udev/control").unlink(missing_ok=True)  # a stopped udevd's socket: not a sign of this one
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or subprocess.run(
            ["udevadm", "control", "--ping", "--timeout=2"], capture_output=True).returncode == 0, what="udevd")
        assert self.proc.poll() is None, self.log.read_text()

    def settle(self) -> None:
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=True, timeout=90)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
