"""Broker lists and failover order (bridge.endpoints.brokers), broker kinds and cloud profiles
(bridge.endpoints.broker_profiles), against the limits their documentation gives (issue 21; no cloud here)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from bridge.codec import mqtt_payload as mp
from bridge.endpoints import broker_profiles as bp
from bridge.endpoints.brokers import Broker, BrokerListError, Failover, parse_brokers, split_netloc


# ---------------------------------------------------------------- broker lists
def test_a_url_with_three_brokers():
    parts = urlsplit("mqtt://fleet@n1:1883,n2:1884,n3/fleet")
    user, hosts = split_netloc(parts.netloc)
    assert user == "fleet"
    assert parse_brokers(hosts, 1883) == (Broker("n1", 1883), Broker("n2", 1884), Broker("n3", 1883))
    assert parse_brokers(["[fd00::1]:8883", "[::1]", "10.0.0.1"], 8883) == (
        Broker("fd00::1", 8883), Broker("::1", 8883), Broker("10.0.0.1", 8883))
    assert str(Broker("fd00::1", 1883)) == "[fd00::1]:1883"


@pytest.mark.parametrize("bad, why", [
    ("", "no host"), ("n1,,n2", "no host"), ("n1:0", "port"), ("n1:70000", "port"), ("n1:x", "port"),
    ("fd00::1", "brackets"), ("[fd00::1", "IPV6"), ("n1,n1:1883", "twice"),
    (",".join(f"n{i}" for i in range(17)), "at most"),
])
def test_bad_broker_lists_say_which_entry(bad, why):
    with pytest.raises(BrokerListError, match=why):
        parse_brokers(bad, 1883)


def test_failover_goes_round_robin():
    f = Failover(parse_brokers("n1,n2,n3", 1883))
    assert str(f.current) == "n1:1883" and f.describe() == "n1:1883 (1 of 3)"
    assert [f.next().host for _ in range(7)] == ["n2", "n3", "n1", "n2", "n3", "n1", "n2"]  # a dead node: once a round
    assert f.describe() == "n2:1883 (2 of 3)"
    alone = Failover((Broker("only", 1),))
    assert alone.next() == Broker("only", 1) and alone.describe() == "only:1"


# ---------------------------------------------------------------- topics per broker kind
def test_nats_refuses_a_dot_or_white_space_in_a_level_with_a_clear_error():
    nats = bp.profile("nats")
    assert bp.check_topic(nats, "fleet/gw_example/can0/rx")
    with pytest.raises(bp.ProfileError, match=r"level 'gw\.example' holds '\.'.*nats refuses"):
        bp.check_topic(nats, "fleet/gw.example/can0/rx")
    with pytest.raises(bp.ProfileError, match="' '"):
        bp.check_topic(nats, "fleet/my gw/can0/rx")
    assert bp.check_topic(bp.profile("generic"), "fleet/gw.example/can0/rx")  # Mosquitto takes it


def test_aws_iot_topic_depth_and_length():
    aws = bp.profile("aws-iot")
    seven = "a/b/c/d/e/f/g/h"  # 7 slashes: the most AWS IoT takes
    assert bp.check_topic(aws, seven)
    with pytest.raises(bp.ProfileError, match="at most 7"):
        bp.check_topic(aws, seven + "/i")
    assert bp.check_topic(aws, "t/" + "x" * 254)
    with pytest.raises(bp.ProfileError, match="257 bytes"):
        bp.check_topic(aws, "t/" + "x" * 255)
    assert bp.check_topic(aws, bp.telemetry_topic(aws, "canbridge", "g" * 64, "can0"))  # our tree fits


def test_azure_iot_hub_fixed_topic_client_id_tls_and_no_subscriptions():
    az = bp.profile("azure-iot-hub")
    events = "devices/truck-17/messages/events/"
    assert bp.telemetry_topic(az, "ignored", "truck-17", "can0") == \
        events + "iface=can0&$.ct=application%2Fvnd.canbridge.frames"
    # the system properties message routing needs to query a JSON body: $.ct and $.ce, URL-encoded
    assert bp.telemetry_topic(az, "ignored", "truck-17", "can0", "json") == \
        events + "iface=can0&$.ct=application%2Fjson&$.ce=utf-8"
    assert bp.telemetry_topic(az, "ignored", "truck-17", "can0", "candump") == \
        events + "iface=can0&$.ct=text%2Fplain%3B%20charset%3Dutf-8&$.ce=utf-8"
    assert bp.status_topic(az, "ignored", "truck-17") == events + "type=status&$.ct=application%2Fjson&$.ce=utf-8"
    aws = bp.profile("aws-iot")  # our tree: the content type is an MQTT 5 property there, not in the topic
    assert bp.telemetry_topic(aws, "fleet", "truck-17", "can0", "json") == "fleet/truck-17/can0/rx"
    ok = dict(protocol="", qos=1, client_id="truck-17", gateway="truck-17", tls=True)
    assert bp.check_options(az, **ok) == "3.1.1"
    for change, why in [({"protocol": "5"}, "3.1.1 only"), ({"client_id": "other"}, "device id"),
                        ({"qos": 2}, "qos 0..1"), ({"tls": False}, "mqtts"),
                        ({"sources": ("gw2/can0",)}, "no subscriptions"), ({"read_only": False}, "no subscriptions")]:
        with pytest.raises(bp.ProfileError, match=why):
            bp.check_options(az, **{**ok, **change})
    assert not az.retain


def test_protocols_per_broker():
    assert bp.check_options(bp.profile("generic"), protocol="", qos=1, client_id="c", gateway="g") == "auto"
    nats = bp.profile("nats")
    assert bp.check_options(nats, protocol="auto", qos=1, client_id="c", gateway="g") == "3.1.1"  # no 5 to try
    with pytest.raises(bp.ProfileError, match="MQTT 3.1.1 only"):
        bp.check_options(bp.profile("nats"), protocol="5", qos=1, client_id="c", gateway="g")
    with pytest.raises(bp.ProfileError, match="protocol must be"):
        bp.check_options(bp.profile("generic"), protocol="4", qos=1, client_id="c", gateway="g")
    with pytest.raises(bp.ProfileError, match="128 bytes"):
        bp.check_options(bp.profile("aws-iot"), protocol="", qos=1, client_id="c" * 129, gateway="g", tls=True)
    with pytest.raises(bp.ProfileError, match="broker must be one of"):
        bp.profile("hivemq-cloud")


WORST_FD = ((0x9FFFFFFF).to_bytes(4, "little") + bytes([64, 0x07, 0, 0]) + b"\xff" * 64, 2**62)


@pytest.mark.parametrize("name", ["aws-iot", "azure-iot-hub", "generic"])
@pytest.mark.parametrize("fmt", mp.FORMATS)
def test_the_largest_message_fits_the_payload_cap(name, fmt):
    """A message of frames_per_message worst-case frames (64-byte FD, extended ID) fits the hub's cap."""
    p = bp.profile(name)
    n = bp.frames_per_message(p, fmt)
    payload = mp.encode(fmt, "g" * 64, "can0", [WORST_FD] * n)
    if fmt == "native":
        payload = mp.encode_native([WORST_FD] * n, (2**32 - 1, 2**64 - 1))  # with its PUB_COUNT head
    assert len(payload) <= p.max_payload
    if name == "aws-iot" and fmt == "json":
        assert n < mp.MAX_MESSAGE_FRAMES  # 512 json FD frames would be ~131 KB > 128 KB
        assert len(mp.encode(fmt, "g" * 64, "can0", [WORST_FD] * mp.MAX_MESSAGE_FRAMES)) > p.max_payload


def test_the_publish_rate_cap_holds_over_any_second():
    rate = bp.publish_rate(bp.profile("aws-iot"), now=0.0)
    sent = [t / 1000 for t in range(5000) if rate.allow(t / 1000)]  # asking every ms for 5 s
    assert 440 <= len(sent) <= 495  # ~90-99 a second (a token that overflows a full bucket between asks is lost)
    for i, t in enumerate(sent):  # no window of one second holds more than AWS IoT's 100 publishes
        assert sum(1 for u in sent[i:i + 120] if u < t + 1.0) <= 100
    late = bp.PublishRate(100.0, now=0.0)
    assert late.allow(0.0) and not late.allow(0.0)
    assert late.wait(0.0) == pytest.approx(0.01)
    assert bp.publish_rate(bp.profile("generic")) is None


# ---------------------------------------------------------------- the presets as the MQTT peer applies them
def _cfg(url):
    from bridge.daemon.config import parse_peer_url

    return parse_peer_url(url)


def test_azure_iot_hub_preset_config():
    x = _cfg("mqtts://hub.azure-devices.net/?gateway=truck-17&broker=azure-iot-hub").extra
    assert (x["client_id"], x["protocol"]) == ("truck-17", "3.1.1")  # auto: no MQTT 5 to try on the hub
    assert x["username"] == "hub.azure-devices.net/truck-17/?api-version=2021-04-12"
    assert _cfg("mqtts://hub/?gateway=t1&broker=azure-iot-hub&protocol=auto").extra["protocol"] == "3.1.1"


@pytest.mark.parametrize("url, why", [
    ("mqtt://hub/?gateway=t1&broker=azure-iot-hub", "TLS only: use mqtts://"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&source=t2/can0&read_only=0", "no subscriptions"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&source=t2/can0", "no subscriptions"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&read_only=0", "no subscriptions of ours"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&protocol=5", "speaks MQTT 3.1.1 only"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&client_id=other", "device id as client id"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&topics=per-id", "one topic only"),
    ("mqtts://hub/?gateway=t1&broker=azure-iot-hub&qos=2", "qos"),
    ("mqtt://iot/?gateway=t1&broker=aws-iot", "TLS only"),
    ("mqtts://iot/a/b/c/d/e/f/g?gateway=t1&broker=aws-iot", "at most 7 '/'"),  # status: 8 slashes
    ("mqtts://iot/a?gateway=t1&broker=cloud", "broker must be one of generic, nats, azure-iot-hub, aws-iot"),
])
def test_preset_refusals_are_clear_at_start(url, why):
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError, match=why):
        _cfg(url)


def test_aws_iot_topic_depth_of_the_rx_topics_is_checked_when_the_peer_opens():
    """The rx topics need the bus names (the HELLO): PREFIX/GW/IFACE/rx[/ID] is checked at open."""
    from bridge.errors import ConfigError
    from tests.test_mqtt import Side

    with pytest.raises(ConfigError, match="at most 7 '/'"):  # a/b/c/d/e/f/t1/can0/rx: 8 slashes
        Side("mqtts://127.0.0.1:1/a/b/c/d/e/f?gateway=t1&broker=aws-iot")
    with pytest.raises(ConfigError, match="at most 7 '/'"):  # per-id: a/b/c/d/e/t1/can0/rx/ID
        Side("mqtts://127.0.0.1:1/a/b/c/d/e?gateway=t1&broker=aws-iot&topics=per-id")
    ok = Side("mqtts://127.0.0.1:1/a/b/c/d/e?gateway=t1&broker=aws-iot&format=json")  # 7 slashes: fits
    try:
        assert ok.peer.outbox.max_frames == bp.frames_per_message(bp.profile("aws-iot"), "json") == 511
        assert ok.peer.outbox.rate is not None
    finally:
        ok.close()


def _outbox(profile_name, fmt="native", clock=None):
    from bridge.core.stats import Counters
    from bridge.endpoints.mqtt_outbox import Outbox

    p = bp.profile(profile_name)
    sent, wakes, now = [], [], clock or [0.0]
    box = Outbox(Counters(), ["fleet/gw/can0/rx"], lambda m, age: (sent.append((now[0], m)), len(sent))[1],
                 numbered=fmt == "native", max_frames=bp.frames_per_message(p, fmt), rate=bp.publish_rate(p, 0.0),
                 rate_clock=lambda: now[0], wake=wakes.append, clock=lambda: 1e9 + now[0])
    return box, sent, wakes, now


def test_aws_iot_publish_rate_in_the_outbox_holds_what_waits_and_counts_it():
    """2 s of a busy bus (2,500 frames/s in 5 ms passes: 200 messages/s uncapped, every publish acknowledged
    at once): no second holds more than 100 publishes, frames wait in fuller messages meanwhile (nothing
    dropped), the waits are counted, and all of it leaves once the clock moves on."""
    box, sent, wakes, now = _outbox("aws-iot")
    box.connected(65535)
    frame = (bytes(16), 1)
    for step in range(800):  # 4 s in 5 ms passes: 2 s of frames, then 2 s of quiet
        now[0] = step / 200
        if step < 400:
            box.take(0, [frame] * (12 + step % 2))
            box.flush()
        if wakes:
            wakes.clear()
            box.woken()
        for mid in list(box._inflight):
            box.acknowledged(mid, True)
        box.sweep() if step % 200 == 0 else None
    times = [t for t, _m in sent]
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:i + 200] if u < t + 1.0) <= 100
    assert sum(m.frames for _t, m in sent) == 5000 and not box.counters.dropped
    assert box.counters.tx_frames == 5000
    assert box.counters.errors["rate_limited"] > 0
    assert max(m.frames for _t, m in sent) > 25  # held frames went out together


def test_payload_cap_bounds_frames_per_message_in_the_outbox():
    box, sent, wakes, now = _outbox("aws-iot", fmt="json")
    box.connected(1)  # one in flight: the rest waits and coalesces up to the cap
    box.take(0, [WORST_FD] * 3000)
    box.flush()
    while box.inflight or wakes:
        now[0] += 0.011
        if wakes:
            wakes.clear()
            box.woken()
        for mid in list(box._inflight):
            box.acknowledged(mid, True)
    assert sum(m.frames for _t, m in sent) == 3000
    assert max(m.frames for _t, m in sent) == 511
    assert all(len(mp.encode("json", "g" * 64, "can0", [WORST_FD] * m.frames)) <= 128 * 1024 for _t, m in sent)
