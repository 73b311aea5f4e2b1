"""URLs, TOML config and the errors they give."""

import pytest

from bridge.daemon import config as cfg
from bridge.errors import ConfigError


def test_common_case_urls():
    c = cfg.from_args(["vcan0", "can://vcan1,123:7FF"], ["tcp-listen://:29600", "tcp://10.0.0.2:1234",
                                                         "udp://10.0.0.3:29601?bind=0.0.0.0:29602&mtu=1200"])
    assert [i.name for i in c.interfaces] == ["vcan0", "vcan1"]
    assert c.interfaces[1].filter.matches(0x123) and not c.interfaces[1].filter.matches(0x124)
    listen, client, udp = c.peers
    assert (listen.scheme, listen.host, listen.port) == ("tcp-listen", "127.0.0.1", 29600)  # loopback default
    assert (client.host, client.port) == ("10.0.0.2", 1234)
    assert udp.bind == ("0.0.0.0", 29602) and udp.mtu == 1200


def test_default_port():
    assert cfg.parse_peer_url("tcp://gw").port == cfg.DEFAULT_PORT


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://x:1", "unknown scheme"),
        ("tcp://:1", "needs a host"),
        ("udp://h:1?mtu=abc", "mtu must be an integer"),
        ("udp://h:1?mtu=20", "out of range"),
        ("udp://h:1?bind=nope", "expected ADDR:PORT"),
        ("tcp://h:99999", "bad port"),
        ("tcp://h:1?colour=red", "unknown option 'colour'"),
        ("tcp://h:1?filter=12G:7FF", "bad filter"),
    ],
)
def test_bad_urls_name_the_problem(url, words):
    with pytest.raises(ConfigError) as e:
        cfg.parse_peer_url(url, f"argument {url!r}")
    assert words in str(e.value) and url in str(e.value)


def test_missing_parts():
    with pytest.raises(ConfigError, match="no peer"):
        cfg.from_args(["vcan0"], [])
    with pytest.raises(ConfigError, match="no CAN interface"):
        cfg.from_args([], ["tcp://h:1"])
    with pytest.raises(ConfigError, match="not a network interface name"):
        cfg.from_args(["averyveryverylongname0"], ["tcp://h:1"])


def test_toml(tmp_path):
    p = tmp_path / "bridge.toml"
    p.write_text(
        '[[interface]]\nname = "vcan0"\nerror_frames = true\nfilter = "100:700"\n'
        '[[interface]]\nname = "vcan1"\nfd = false\n'
        '[[peer]]\nurl = "tcp-listen://0.0.0.0:29600"\nfilter = "123:7FF"\n'
        '[[peer]]\nurl = "udp://10.0.0.9:29601"\nbind = "0.0.0.0:29601"\nmtu = 1000\n'
    )
    c = cfg.load_toml(str(p))
    assert c.interfaces[0].error_frames and c.interfaces[1].fd is False
    assert c.peers[0].filter.matches(0x123) and not c.peers[0].filter.matches(0x124)
    assert c.peers[1].bind == ("0.0.0.0", 29601) and c.peers[1].mtu == 1000


@pytest.mark.parametrize(
    "text, words",
    [
        ('[[interface]]\nname = "vcan0"\ncolour = 1\n[[peer]]\nurl="tcp://h:1"\n',
         "interface[0]: unknown key(s) ['colour']"),
        ('[[interface]]\nname = 5\n[[peer]]\nurl="tcp://h:1"\n', "interface[0].name: expected a string"),
        ('[[interface]]\nname = "vcan0"\nfd = "yes"\n[[peer]]\nurl="tcp://h:1"\n', "fd: expected true or false"),
        ('[[interface]]\nname = "vcan0"\n[[peer]]\nurl="udp://h:1"\nmtu = "x"\n', "mtu must be an integer"),
        ('interface = 3\n', "interface must be an array of tables"),
        ('[bridges]\n', "unknown top-level key"),
        ('[[interface]\n', "invalid TOML"),
    ],
)
def test_toml_errors_name_the_key(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        cfg.load_toml(str(p))
    assert words in str(e.value)


def test_cli_reports_config_errors_without_traceback(capsys):
    from bridge.cli.main import main

    assert main(["vcan0", "tcp://:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("canbridge: error:") and "needs a host" in err and "Traceback" not in err
