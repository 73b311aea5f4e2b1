"""The socketcand discovery beacon text (socketcand beacon.c) and python-can's reading of it."""

import xml.etree.ElementTree as ET

import pytest

from bridge.codec import socketcand


def test_exact_socketcand_form():
    assert socketcand.encode_beacon("gw", "10.0.0.1", 29536, ["vcan0", "vcan1"]) == (
        b'<CANBeacon name="gw" type="SocketCAN" description="socketcand">\n'
        b'<URL>can://10.0.0.1:29536</URL><Bus name="vcan0"/><Bus name="vcan1"/></CANBeacon>'
    )


def test_parsed_as_python_can_does():
    root = ET.fromstring(socketcand.encode_beacon('a"<b>&', "192.0.2.1", 1234, ["can0"]).decode("utf-8"))
    assert root.tag == "CANBeacon" and root.get("name") == 'a"<b>&'  # attribute escaping holds
    assert root.find("URL").text == "can://192.0.2.1:1234"
    assert [b.get("name") for b in root.iter("Bus")] == ["can0"]


def test_size_limit_of_python_cans_single_recv():
    with pytest.raises(ValueError, match="exceeds 1024"):
        socketcand.encode_beacon("gw", "10.0.0.1", 29536, [f"vcan{i}" for i in range(60)])
