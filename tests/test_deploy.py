"""Deployment files checked by the tools that exist for them (host, no vcan needed):
systemd units with `systemd-analyze verify` and `security --offline`, udev rules with `udevadm test` on a
veth in a network namespace, the example bridge.toml with bridge.config, sd_notify with a real AF_UNIX
datagram socket, and bridge.hw.links' decoding of a CAN link message built by pyroute2's own encoder.
The bridge process under sd_notify and the udev rule on a real CAN netdev: tests/vcan/."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from bridge.cli import link as link_cli
from bridge.daemon import config as cfg
from bridge.daemon import sdnotify
from bridge.errors import ConfigError
from bridge.hw import links

ROOT = Path(__file__).resolve().parent.parent
UDEV = ROOT / "udev"
INSTALLED = "/opt/canbridge/bin/canbridge"  # the path the units and rules use (docs/deployment.md)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} missing: apt-get install {'udev' if name == 'udevadm' else 'systemd'}")
    return path


def _instance(tmp_path: Path, unit: str, text: str | None = None) -> Path:
    """The template as instance NAME@bridge.service, ExecStart pointing at this checkout's canbridge
    (systemd-analyze checks that the executable exists)."""
    text = (UDEV / unit).read_text() if text is None else text
    out = tmp_path / unit.replace("@.", "@bridge.")
    out.write_text(text.replace(INSTALLED, str(ROOT / ".venv" / "bin" / "canbridge")))
    return out


def _verify(path: Path) -> str:
    r = subprocess.run([_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True,
                       timeout=60, cwd=path.parent)
    # verify exits 0 on unknown keys and bad values; those show up as lines naming the file
    return (r.stdout + r.stderr).strip() if r.returncode or path.name in r.stdout + r.stderr else ""


@pytest.mark.parametrize("unit", ["canbridge@.service", "canbridge-link@.service"])
def test_units_verify_clean(tmp_path, unit):
    assert _verify(_instance(tmp_path, unit)) == ""


def test_verify_can_fail(tmp_path):
    bad = (UDEV / "canbridge@.service").read_text().replace("Restart=on-failure", "Restart=sometimes\nFoo=1")
    out = _verify(_instance(tmp_path, "canbridge@.service", bad))
    assert "restart specifier" in out and "Foo" in out


@pytest.mark.parametrize("unit, threshold", [("canbridge@.service", 30), ("canbridge-link@.service", 20)])
def test_units_exposure_is_low(tmp_path, unit, threshold):
    """`systemd-analyze security` score x10 must stay under threshold (2.3 and 1.7 "OK" when written)."""
    path = _instance(tmp_path, unit)
    r = subprocess.run([_tool("systemd-analyze"), "security", "--offline=yes", f"--threshold={threshold}",
                        str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr


def test_units_content():
    bridge = (UDEV / "canbridge@.service").read_text()
    for line in ["Type=notify", "NotifyAccess=main", "Restart=on-failure", "DynamicUser=yes",
                 "AmbientCapabilities=CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_RAW", "ProtectSystem=strict",
                 f"ExecStart={INSTALLED} run -c /etc/canbridge/%i.toml", "StateDirectory=canbridge/%i",
                 "RestrictAddressFamilies=AF_CAN AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_PACKET"]:
        assert re.search(f"^{re.escape(line)}$", bridge, re.M), line
    assert "CAP_NET_ADMIN" not in re.findall(r"^\w*Capabilit\w*=.*$", bridge, re.M)[0]
    assert re.search(r"^WatchdogSec=\d+$", bridge, re.M)
    link = (UDEV / "canbridge-link@.service").read_text()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN\n" in link and "Type=oneshot\n" in link


# --- udev ----------------------------------------------------------------------------------------
def _udevadm_test(ns: str, rules_dir: Path, device: str) -> str:
    """`udevadm test` in namespace ns, seeing only rules_dir's rules (bind-mounted over
    /usr/lib/udev/rules.d in a private mount namespace) and a scratch /run for udev's database."""
    script = (f"mount --bind {rules_dir} /usr/lib/udev/rules.d && mount -t tmpfs tmpfs /run && "
              f"{_tool('udevadm')} test --action=add /sys/class/net/{device}")
    r = subprocess.run(["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _rule_problems(output: str) -> list[str]:
    """udev's parser reports each problem as 'FILE:LINE message'."""
    return re.findall(r"^\S+\.rules:\d+ .*$", output, re.M)


@pytest.fixture
def veth_ns(netns):
    ns = netns("cbudev")
    subprocess.run(["ip", "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb"], check=True)
    return ns


def test_udev_rules_parse_clean_with_examples(veth_ns, tmp_path):
    """The shipped rules plus every commented example/template line (uncommented) parse without a
    complaint; on a non-CAN device (veth, type 1) nothing of ours runs."""
    text = (UDEV / "80-canbridge.rules").read_text()
    examples = re.findall(r"^#(SUBSYSTEM==.*)$", text, re.M)
    assert len(examples) >= 5 and any('ATTRS{serial}=="REPLACE' in e for e in examples)
    (tmp_path / "80-canbridge.rules").write_text(text)
    (tmp_path / "81-examples.rules").write_text("\n".join(examples) + "\n")
    out = _udevadm_test(veth_ns, tmp_path, "va")
    assert "Reading rules file: /usr/lib/udev/rules.d/80-canbridge.rules" in out
    assert "Reading rules file: /usr/lib/udev/rules.d/81-examples.rules" in out
    assert _rule_problems(out) == []
    assert "canbridge link setup" not in out  # only CAN links (ATTR{type}==280) get link setup


def test_udev_check_can_fail(veth_ns, tmp_path):
    (tmp_path / "80-bad.rules").write_text('SUBSYSTEM=="net", ATTRS{serial}="x", BOGUS{y}="z", NAME="can-x"\n')
    assert len(_rule_problems(_udevadm_test(veth_ns, tmp_path, "va"))) >= 1


def test_udev_rule_names_and_runs():
    text = (UDEV / "80-canbridge.rules").read_text()
    assert re.search(r'^RUN\+="' + re.escape(INSTALLED) + r' link setup \$name --from-config '
                     r'/etc/canbridge/bridge.toml"$', text, re.M)
    assert re.search(r'^ATTR\{type\}!="280", GOTO="canbridge_end"$', text, re.M)
    for name in re.findall(r'NAME="([^"]+)"', text):
        assert len(name) < cfg.IFNAMSIZ, name


# --- example config -------------------------------------------------------------------------------
def test_example_config_parses():
    c = cfg.load_toml(str(UDEV / "bridge.toml"))
    engine, hat = c.interfaces
    assert engine.name == "can-engine" and engine.fd is True
    assert engine.link == {"bitrate": 500000, "sample_point": 0.875, "dbitrate": 2000000, "dsample_point": 0.75,
                           "restart_ms": 100, "txqueuelen": 1000}
    assert hat.link == {"bitrate": 250000, "sample_point": 0.875, "restart_ms": 100}
    assert hat.filter.matches(0x123) and not hat.filter.matches(0x223)
    assert [p.scheme for p in c.peers] == ["tcp-listen", "socketcand", "mqtts"]
    fleet = c.peers[2].extra
    assert len(fleet["brokers"]) == 3 and fleet["spool"]["dir"] == "/var/lib/canbridge/bridge"
    settings = link_cli.settings_from_config(str(UDEV / "bridge.toml"))
    assert settings["can-engine"].dbitrate == 2000000 and settings["can0"].fd is None


@pytest.mark.parametrize("line, words", [
    ("bitrate = 2000000", "interface[0].bitrate: expected bit/s"),
    ('bitrate = "500k"', "interface[0].bitrate"),
    ("sample_point = 87.5", "interface[0].sample_point: expected fraction"),
    ("restart_ms = -1", "interface[0].restart_ms"),
    ("bitrat = 500000", "unknown key(s) ['bitrat']"),
])
def test_bad_link_keys_name_the_key(tmp_path, line, words):
    path = tmp_path / "b.toml"
    path.write_text(f'[[interface]]\nname = "can0"\n{line}\n[[peer]]\nurl = "tcp-listen://:29600"\n')
    with pytest.raises(ConfigError, match=re.escape(words)):
        cfg.load_toml(str(path))


def test_link_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        link_cli.main(["setup", "can0", "--bitrate", "2000000"])
    assert e.value.code == 2 and "--bitrate" in capsys.readouterr().err
    assert link_cli.main(["setup", "lo", "--bitrate", "500000"]) == 1  # refused before lo is touched
    assert "lo: not a CAN interface" in capsys.readouterr().err
    assert link_cli.main(["down", "lo"]) == 1


# --- bridge.hw.links decoding ---------------------------------------------------------------------------
def test_link_info_decodes_a_can_controller():
    """An RTM_NEWLINK as a CAN FD controller in BUS-OFF reports it, encoded and decoded by pyroute2."""
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["ifi_type"] = 7, 1, links.ARPHRD_CAN
    msg["attrs"] = [
        ("IFLA_IFNAME", "can0"), ("IFLA_MTU", 72), ("IFLA_TXQLEN", 1000), ("IFLA_OPERSTATE", "UP"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "can"), ("IFLA_INFO_DATA", {"attrs": [
            ("IFLA_CAN_BITTIMING", {"bitrate": 500000, "sample_point": 875, "tq": 25, "prop_seg": 34,
                                    "phase_seg1": 35, "phase_seg2": 10, "sjw": 1, "brp": 1}),
            ("IFLA_CAN_DATA_BITTIMING", {"bitrate": 2000000, "sample_point": 750, "tq": 25, "prop_seg": 7,
                                         "phase_seg1": 7, "phase_seg2": 5, "sjw": 1, "brp": 1}),
            ("IFLA_CAN_CLOCK", 40000000), ("IFLA_CAN_STATE", 3), ("IFLA_CAN_RESTART_MS", 100),
            ("IFLA_CAN_BERR_COUNTER", {"txerr": 248, "rxerr": 3}),
            ("IFLA_CAN_CTRLMODE", {"fd": "on", "berr_reporting": "on", "loopback": "off"}),
        ]})]}),
    ]
    msg.encode()
    decoded = ifinfmsg(msg.data)
    decoded.decode()
    info = links.link_info(decoded)
    assert (info.name, info.kind, info.up, info.mtu, info.fd) == ("can0", "can", True, 72, True)
    assert (info.state, info.bitrate, info.sample_point) == ("BUS-OFF", 500000, 0.875)
    assert (info.dbitrate, info.dsample_point, info.clock_hz) == (2000000, 0.75, 40000000)
    assert (info.restart_ms, info.txerr, info.rxerr) == (100, 248, 3)
    assert "fd" in info.ctrlmode and "berr_reporting" in info.ctrlmode and "loopback" not in info.ctrlmode


# --- sd_notify ------------------------------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)  # bound for a lost datagram, not a timing assertion
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield sock
    sock.close()


def test_sdnotify_messages(notify_socket):
    assert sdnotify.ready("bridging vcan0")
    assert notify_socket.recv(512) == b"READY=1\nSTATUS=bridging vcan0"
    assert sdnotify.watchdog() and notify_socket.recv(512) == b"WATCHDOG=1"
    assert sdnotify.status("3 clients") and notify_socket.recv(512) == b"STATUS=3 clients"
    assert sdnotify.stopping() and notify_socket.recv(512) == b"STOPPING=1"


def test_sdnotify_abstract_namespace(monkeypatch):
    import socket

    name = f"cbt-sdnotify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(512) == b"READY=1"


def test_sdnotify_without_systemd_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.watchdog() is False  # logged, never raised


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
