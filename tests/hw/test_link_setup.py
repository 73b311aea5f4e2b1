"""`canbridge link setup` on a real controller (the VM's emulated SJA1000 behind kvaser_pci): what is asked is
what `link show`, `link list --json` and `ip -details` read back; a rounded bitrate is reported; each
refusal (a bitrate the controller cannot make, CAN FD on a classic controller, no CAP_NET_ADMIN) is one
line naming the controller, with a non-zero exit and the link left as it was; `--from-config` sets every
interface of a bridge.toml; and the udev rule, run by a real udevd on the real PCI device, gives the
controller a stable name by driver and slot, sets pfifo_fast and brings the link up from bridge.toml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import link as link_cli
from bridge.hw import links
from tests.hw.conftest import BITRATE, ip, wait_for
from tests.hw.udevd import slot_of, stable_name

pytestmark = pytest.mark.hw
ROOT = Path(__file__).resolve().parents[2]
CANBRIDGE = str(Path(sys.executable).with_name("canbridge"))


def canbridge(*args: str, user: int | None = None) -> subprocess.CompletedProcess:
    """`canbridge ARGS` in a process of its own (a few seconds each in the VM: used sparingly)."""
    argv = [sys.executable, "-m", "bridge", *args]
    if user is not None:  # an unprivileged user: no CAP_NET_ADMIN
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture
def link(capsys):
    """link(*args) -> CompletedProcess-like result of `canbridge link ARGS` run in this process (main())."""

    def run(*args: str) -> subprocess.CompletedProcess:
        try:
            rc = link_cli.main(list(args))
        except SystemExit as exc:  # argparse
            rc = exc.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    return run


def details(name: str) -> str:
    return ip("-details", "link", "show", name).stdout


def refused(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A refusal: non-zero exit, exactly one line on stderr holding every needle, no traceback."""
    assert r.returncode != 0, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_setup_reads_back(bus_a, link):
    r = link("setup", "can0", "--bitrate", "250000", "--sample-point", "0.875", "--restart-ms", "100",
                  "--txqueuelen", "32", "--berr-reporting", "--listen-only")
    assert r.returncode == 0, r.stderr
    assert "note:" not in r.stdout  # nothing rounded
    info = links.show("can0")
    assert (info.up, info.bitrate, info.sample_point, info.restart_ms, info.txqueuelen) == (True, 250000, 0.875,
                                                                                             100, 32)
    assert info.ctrlmode == ["berr_reporting", "listen_only"]
    assert (info.controller, info.driver, info.clock_hz) == ("sja1000", "kvaser_pci", 8_000_000)
    assert "fd" not in info.supported_modes and "listen_only" in info.supported_modes
    shown = details("can0")
    assert "bitrate 250000 sample-point 0.875" in shown and "restart-ms 100" in shown and "qlen 32" in shown
    assert "<LISTEN-ONLY,BERR-REPORTING>" in shown
    listed = {i["name"]: i for i in json.loads(link("list", "--json").stdout)}
    assert (listed["can0"]["bitrate"], listed["can0"]["txqueuelen"], listed["can1"]["bitrate"]) == (250000, 32,
                                                                                                     BITRATE)
    table = link("show", "can0").stdout
    assert "250000 @0.875" in table and "berr_reporting,listen_only" in table
    # and off again
    assert link("setup", "can0", "--no-berr-reporting", "--no-listen-only").returncode == 0
    assert links.show("can0").ctrlmode == []


def test_rounded_bitrate_is_reported(bus_a, link):
    r = link("setup", "can0", "--bitrate", "123457")
    assert r.returncode == 0, r.stderr
    assert "can0: bitrate 123457 asked, 123076 made (-0.31 %" in r.stdout, r.stdout
    assert links.show("can0").bitrate == 123076


def test_refusals_are_one_line_naming_the_controller(bus_a, link):
    """In this process (a traceback would fail the test), but for the unprivileged user, which is a process
    of its own (its one line on stderr, no traceback)."""
    before = links.show("can0")
    line = refused(link("setup", "can0", "--bitrate", "1000"),
                   "can0 (sja1000, kvaser_pci)", "bitrate=1000", "slowest is 5000 bit/s")
    assert "vcan" not in line
    for args in (["--fd"], ["--dbitrate", "2000000"], ["--bitrate", "500000", "--fd"]):
        line = refused(link("setup", "can0", *args), "can0 (sja1000, kvaser_pci)",
                       "classic CAN controller", "no CAN FD")
        assert "vcan" not in line
    refused(canbridge("link", "setup", "can0", "--bitrate", "250000", user=65534),
            "can0 (sja1000, kvaser_pci)", "bitrate=250000", "needs CAP_NET_ADMIN")
    refused(link("setup", "can9", "--bitrate", "250000"), "can9", "no such network interface")
    after = links.show("can0")  # every refusal left the link as it was: up, same timing
    assert (after.up, after.bitrate, after.sample_point) == (True, before.bitrate, before.sample_point)
    refused(link("setup", "vcan0", "--listen-only"), "vcan0", "modes of a CAN controller")


def test_from_config_sets_every_interface(bus_a, tmp_path, link):
    toml = tmp_path / "bridge.toml"
    toml.write_text('[[interface]]\nname = "can0"\nbitrate = 125000\nsample_point = 0.75\nrestart_ms = 50\n'
                    'txqueuelen = 20\nberr_reporting = true\n'
                    '[[interface]]\nname = "can1"\nbitrate = 125000\nlisten_only = false\n'
                    '[[peer]]\nurl = "tcp-listen://127.0.0.1:29600"\n')
    r = link("setup", "--from-config", str(toml))
    assert r.returncode == 0, r.stderr
    a, b = links.show("can0"), links.show("can1")
    assert (a.bitrate, a.sample_point, a.restart_ms, a.txqueuelen, a.ctrlmode) == (125000, 0.75, 50, 20,
                                                                                   ["berr_reporting"])
    assert (b.bitrate, b.up, b.ctrlmode) == (125000, True, [])
    assert "bitrate 125000 sample-point 0.75" in details("can0")


# --- the udev rule on the real PCI device -----------------------------------------------------------
def test_udev_rule_names_by_slot_and_brings_up_from_config(udev_named_can1):
    name, _ = udev_named_can1
    info = wait_for(lambda: links.show(name) if Path(f"/sys/class/net/{name}").exists() else None, what=name)
    info = wait_for(lambda: (i := links.show(name)).up and i, what=f"{name} up")
    assert (info.bitrate, info.txqueuelen, info.driver) == (250000, 16, "kvaser_pci")
    assert "qdisc pfifo_fast" in details(name)
    assert not Path("/sys/class/net/can1").exists()
    assert stable_name(slot_of(name)) == name
