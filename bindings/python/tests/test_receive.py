"""What `Connection.receive` delivers when a read mixes good frames with an unknown kind or a
failure, and how harmless errors are classified (issue #14, items 2 and 5)."""

import pytest

import vitalwire as vw

HOST = vw.Keypair.from_private(b"\x11" * 32)
DEVICE = vw.Keypair.from_private(b"\x22" * 32)


def pair(pairing: bool = False) -> tuple[vw.Connection, vw.Connection]:
    trust = vw.TrustStore()
    trust.add(DEVICE.public, "PM-1", "test")
    dev = vw.Connection.initiator(DEVICE, "PM-1", profile="xx", pinned_host_keys=[HOST.public], pairing=pairing)
    host = vw.Connection.responder(HOST, trust, allow_pairing=pairing)
    for _ in range(4):
        host.receive(dev.data_to_send())
        dev.receive(host.data_to_send())
    assert dev.is_established and host.is_established
    return dev, host


def data(msgs: list[vw.Message]) -> list[tuple[int, bytes]]:
    return [(m.channel, m.payload) for m in msgs if m.kind == "data"]


def test_an_unknown_kind_between_frames_loses_nothing() -> None:
    dev, host = pair()
    host.events()
    wire = dev.send(1, b"before") + dev.send_raw_for_testing_only(0x42, 0, 0, b"a newer kind") + dev.send(2, b"after")
    msgs = host.receive(wire)
    assert [(m.kind, m.channel, m.payload) for m in msgs] == [("data", 1, b"before"), ("data", 2, b"after")]
    assert host.state == "established"
    events = host.events()
    assert any(e.kind == "unknown_frame_kind" and '"kind":66' in e.json for e in events), events
    assert data(host.receive(dev.send(3, b"still up"))) == [(3, b"still up")]


def test_a_failure_after_good_frames_delivers_them_then_raises() -> None:
    dev, host = pair()
    host.handle_timeout(7_000)
    good = dev.send(1, b"HR=72")
    bad = bytearray(dev.send(1, b"HR=73"))
    bad[4] ^= 1
    assert data(host.receive(good + bytes(bad))) == [(1, b"HR=72")]
    assert host.state == "failed"
    assert host.poll_timeout() == 7_000, "the held-back error is due at once"
    with pytest.raises(vw.AuthenticationError):
        host.handle_timeout(7_000)
    assert host.poll_timeout() is None
    with pytest.raises(vw.AuthenticationError):
        host.receive(b"")
    told = dev.receive(host.data_to_send())
    assert [(m.kind, m.close_code) for m in told] == [("closed", 3)]


def test_harmless_errors_do_not_fail_the_connection() -> None:
    dev, host = pair(pairing=True)
    assert dev.pairing_code is not None and dev.pairing_code == host.pairing_code
    with pytest.raises(vw.ConfigError):
        dev.send(1, b"telemetry in a pairing session")
    assert dev.state == "established"
    assert [m.kind for m in host.receive(dev.ping(b"pairing!"))] == ["ping"]
    assert [m.payload for m in dev.receive(host.data_to_send())] == [b"pairing!"]

    dev, host = pair()
    host.receive(dev.close())
    with pytest.raises(vw.ClosedError):
        host.send(1, b"late")
    with pytest.raises(vw.ClosedError):
        dev.send(1, b"late")
    dev.receive(host.data_to_send())
    with pytest.raises(vw.ClosedError):
        dev.send(1, b"later")
    assert (dev.state, host.state) == ("closed", "closed"), "a clean close is not a failure"
    dev.end_of_stream()
    host.end_of_stream()
