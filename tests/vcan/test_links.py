"""hw/links.py against the kernel: create a vcan, list/show it, MTU, up/down, txqueuelen, and the clear
error when bit timing is asked of a link that has none. Plus the udev rule on a real CAN netdev."""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bridge.cli import link as link_cli
from bridge.hw import links

pytestmark = pytest.mark.vcan
RULES = Path(__file__).resolve().parents[2] / "udev" / "80-canbridge.rules"


@pytest.fixture
def vcan():
    name = f"cbl{uuid.uuid4().hex[:8]}"
    info = links.create_vcan(name)
    yield name, info
    links.delete(name)


def test_create_list_show(vcan):
    name, info = vcan
    assert (info.name, info.kind, info.mtu, info.up, info.fd) == (name, "vcan", links.CANFD_MTU, True, True)
    assert info.bitrate is None and info.state is None  # vcan has no controller
    listed = {i.name: i for i in links.list_links()}
    assert listed[name] == links.show(name)
    assert "vcan0" in listed  # the test VM's own


def test_mtu_down_up(vcan):
    name, _ = vcan
    links.set_down(name)
    assert not links.show(name).up
    links.set_mtu(name, links.CAN_MTU)
    links.set_up(name)
    info = links.show(name)
    assert info.up and info.mtu == 16 and not info.fd
    with pytest.raises(links.LinkError, match="mtu 1500"):
        links.set_mtu(name, 1500)


def test_setup_fd_and_txqueuelen_on_vcan(vcan):
    name, _ = vcan
    info = links.setup(name, fd=False, txqueuelen=321)
    assert (info.up, info.mtu, info.txqueuelen) == (True, 16, 321)
    assert links.setup(name, fd=True).mtu == 72


def test_bitrate_on_vcan_raises_naming_the_option(vcan):
    name, _ = vcan
    with pytest.raises(links.LinkError) as e:
        links.setup(name, bitrate=500000, sample_point=0.875)
    text = str(e.value)
    assert name in text and "bitrate=500000" in text and "sample_point=0.875" in text
    assert "not supported" in text  # the kernel's EOPNOTSUPP
    assert links.show(name).up  # the link was up before: it is up again
    with pytest.raises(links.LinkError, match="restart"):
        links.restart(name)


def test_create_twice_and_missing(vcan):
    name, _ = vcan
    with pytest.raises(links.LinkError, match="exists"):
        links.create_vcan(name)
    with pytest.raises(links.NoSuchLink):
        links.show(name + "x")


def test_cli(vcan, tmp_path, capsys):
    name, _ = vcan
    assert link_cli.main(["show", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == name
    assert link_cli.main(["list"]) == 0
    assert name in capsys.readouterr().out
    assert link_cli.main(["setup", name, "--bitrate", "500000"]) == 1
    assert "bitrate=500000" in capsys.readouterr().err
    toml = tmp_path / "bridge.toml"
    toml.write_text(f'[[interface]]\nname = "{name}"\nfd = false\ntxqueuelen = 77\n'
                    '[[peer]]\nurl = "tcp-listen://127.0.0.1:29600"\n')
    assert link_cli.main(["setup", name, "--from-config", str(toml)]) == 0
    info = links.show(name)
    assert (info.mtu, info.txqueuelen) == (16, 77)
    assert link_cli.main(["setup", "vcan0", "--from-config", str(toml)]) == 0  # not listed: left alone
    assert "not in" in capsys.readouterr().err


def test_udev_rule_runs_link_setup_for_a_can_link(vcan, tmp_path):
    """`udevadm test` on a real ARPHRD_CAN netdev, with only our rules installed (private mount namespace)."""
    name, _ = vcan
    if not shutil.which("udevadm"):
        pytest.fail("udevadm missing: apt-get install udev")
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES, rules)
    # rules first (tmp_path may be under /run), then a scratch /run for udev's database
    script = (f"mount --bind {rules} /usr/lib/udev/rules.d && mount -t tmpfs tmpfs /run && "
              f"udevadm test --action=add /sys/class/net/{name}")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_LOG_LEVEL": "debug"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"/opt/canbridge/bin/canbridge link setup {name} --from-config /etc/canbridge/bridge.toml" in out, out
