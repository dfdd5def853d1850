"""Round trips, tampering, every exception path, wrong types (threads: test_threads.py)."""

import pytest

import vitalwire as vw

HOST = vw.Keypair.from_private(b"\x11" * 32)
DEVICE = vw.Keypair.from_private(b"\x22" * 32)


def trust() -> vw.TrustStore:
    t = vw.TrustStore()
    t.add(DEVICE.public, "PM-1", "test")
    return t


def pair(profile: str = "ik", suite: str = "chachapoly", **host_opts: object) -> tuple[vw.Connection, vw.Connection]:
    extra = {"host_key": HOST.public} if profile in ("ik", "kk") else {"pinned_host_keys": [HOST.public]}
    psks = None
    if profile == "xxpsk3":
        extra["psk"] = b"\x33" * 32
        extra["psk_id"] = b"batch-1"
        psks = {b"batch-1": b"\x33" * 32}
    dev = vw.Connection.initiator(DEVICE, "PM-1", profile=profile, suite=suite, **extra)  # type: ignore[arg-type]
    host = vw.Connection.responder(HOST, trust(), psks=psks, **host_opts)  # type: ignore[arg-type]
    pump(dev, host)
    assert dev.is_established and host.is_established
    return dev, host


def pump(a: vw.Connection, b: vw.Connection) -> None:
    for _ in range(4):
        b.receive(a.data_to_send())
        a.receive(b.data_to_send())


@pytest.mark.parametrize("profile", ["xx", "ik", "kk", "xxpsk3"])
@pytest.mark.parametrize("suite", ["chachapoly", "aesgcm"])
def test_round_trip_every_profile_and_suite(profile: str, suite: str) -> None:
    dev, host = pair(profile, suite)
    assert host.peer_identity is not None and host.peer_identity["device_id"] == "PM-1"
    assert dev.remote_static == HOST.public and host.remote_static == DEVICE.public
    assert dev.handshake_hash == host.handshake_hash
    msgs = host.receive(dev.send(1, b"HR=72") + dev.send(2, bytearray(b"wave")) + dev.send(3, memoryview(b"alarm")))
    assert [(m.kind, m.channel, m.payload) for m in msgs] == [("data", 1, b"HR=72"), ("data", 2, b"wave"), ("data", 3, b"alarm")]
    back = dev.receive(host.send(0, b"ack"))
    assert back[0].payload == b"ack"


def test_large_messages_fragment_and_release_the_gil() -> None:
    dev, host = pair()
    big = bytes(range(256)) * 4096  # 1 MiB
    msgs = host.receive(dev.send_message(2, big))
    data = [m for m in msgs if m.kind == "data"]
    assert len(data) == 1 and data[0].payload == big
    frame = dev.send(1, b"x" * 60000)
    assert host.receive(frame)[0].payload == b"x" * 60000


def test_tampering_raises_and_fails_closed() -> None:
    dev, host = pair()
    frame = bytearray(dev.send(1, b"HR=72"))
    frame[5] ^= 1
    with pytest.raises(vw.AuthenticationError):
        host.receive(bytes(frame))
    assert host.state == "failed"
    with pytest.raises(vw.AuthenticationError):
        host.receive(dev.send(1, b"next"))
    # The host queued a CLOSE telling the device why.
    msgs = dev.receive(host.data_to_send())
    assert msgs[0].kind == "closed" and msgs[0].close_code == vw.CLOSE_AUTHENTICATION_FAILED
    assert any(e.kind == "authentication_failure" and e.severity == "alert" for e in host.events())


def test_replay_and_truncation() -> None:
    dev, host = pair()
    f = dev.send(1, b"once")
    host.receive(f)
    with pytest.raises(vw.AuthenticationError):
        host.receive(f)
    dev, host = pair()
    host.receive(dev.send(1, b"partial"))
    with pytest.raises(vw.TruncatedError):
        host.end_of_stream()
    dev, host = pair()
    host.receive(dev.close())
    dev.receive(host.data_to_send())
    host.end_of_stream()  # a clean end
    assert host.state == "closed" and dev.state == "closed"


def test_untrusted_and_wrong_keys() -> None:
    stranger = vw.Keypair.generate()
    dev = vw.Connection.initiator(stranger, "X-1", profile="ik", host_key=HOST.public)
    host = vw.Connection.responder(HOST, trust())
    with pytest.raises(vw.UntrustedPeerError):
        host.receive(dev.data_to_send())
    with pytest.raises(vw.UntrustedPeerError):
        dev.receive(host.data_to_send())
    assert any(e.kind == "unknown_peer" and e.device_id == "X-1" for e in host.events())
    # IK to the wrong host key.
    dev = vw.Connection.initiator(DEVICE, "PM-1", profile="ik", host_key=vw.Keypair.generate().public)
    with pytest.raises(vw.AuthenticationError):
        vw.Connection.responder(HOST, trust()).receive(dev.data_to_send())
    # Revoked.
    t = trust()
    t.revoke(DEVICE.public)
    dev = vw.Connection.initiator(DEVICE, "PM-1", profile="ik", host_key=HOST.public)
    with pytest.raises(vw.UntrustedPeerError):
        vw.Connection.responder(HOST, t).receive(dev.data_to_send())


def test_bad_input_and_wrong_types() -> None:
    dev, host = pair()
    with pytest.raises(vw.DecodeError):
        host.receive(b"\x00\x00")  # a zero length
    dev, host = pair(max_frame_len=256)
    with pytest.raises(vw.DecodeError):
        host.receive(b"\x10\x00")
    with pytest.raises(TypeError):
        host.receive("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dev.send(1, 42)  # type: ignore[arg-type]
    with pytest.raises(vw.PayloadTooLargeError):
        dev.send(1, b"x" * 300)
    with pytest.raises(OverflowError):
        dev.send(300, b"x")
    with pytest.raises(ValueError):
        vw.Keypair.from_private(b"short")
    with pytest.raises(vw.ConfigError):
        vw.Connection.initiator(DEVICE, "PM-1", profile="nope")
    with pytest.raises(vw.ConfigError):
        vw.Connection.initiator(DEVICE, "PM-1", profile="ik")  # IK needs the host key
    with pytest.raises(vw.ConfigError):
        dev2 = vw.Connection.initiator(DEVICE, "PM-1", profile="ik", host_key=HOST.public)
        dev2.send(1, b"too early")
    assert issubclass(vw.UntrustedPeerError, vw.HandshakeError)
    assert all(issubclass(e, vw.VitalwireError) for e in [vw.DecodeError, vw.ReplayError, vw.TruncatedError, vw.ClosedError])


def test_keys_pairing_and_trust_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kp = vw.Keypair.generate()
    kp.save(tmp_path / "dev.key", "PM-9")
    assert vw.Keypair.load(tmp_path / "dev.key").public == kp.public
    assert vw.load_public_key(tmp_path / "dev.key.pub") == kp.public
    assert vw.fingerprint(kp.public) == kp.fingerprint and "export" not in repr(kp)
    (tmp_path / "dev.key").chmod(0o644)
    with pytest.raises(vw.KeyFileError, match="chmod 600"):
        vw.Keypair.load(tmp_path / "dev.key")
    store = vw.TrustStore.create(tmp_path / "trust.vw")
    store.add(kp.public, "PM-9", "bed 9")
    assert vw.TrustStore.open(tmp_path / "trust.vw").decision(kp.public, "PM-9") == "trusted"
    (tmp_path / "trust.vw").write_text("vitalwire trust store v1\n")
    with pytest.raises(vw.KeyFileError):
        vw.TrustStore.open(tmp_path / "trust.vw")
    # Pairing: both ends show the same code.
    dev = vw.Connection.initiator(DEVICE, "PM-1", profile="xx", pairing=True)
    host = vw.Connection.responder(HOST, vw.TrustStore(), allow_pairing=True)
    pump(dev, host)
    assert dev.pairing_code is not None and dev.pairing_code == host.pairing_code and len(dev.pairing_code) == 6


def test_datagram_client_and_fragments() -> None:
    link = vw.FragmentLink(20)
    pieces = link.split(bytes(range(50)))
    assert len(pieces) == 4 and all(len(p) <= 20 for p in pieces)
    rx = vw.FragmentLink(20)
    out = [rx.receive(p, 0) for p in reversed(pieces)]
    assert out[-1] == bytes(range(50))
    with pytest.raises(vw.DecodeError):
        rx.receive(b"\x00", 0)
    c = vw.DatagramClient(DEVICE, "PM-1", 0, host_key=HOST.public)
    hello = c.transmit(0)
    assert len(hello) == 1 and hello[0][0] == 0x21
    with pytest.raises(vw.DecodeError):
        c.receive(b"\x99garbage", 1)
    assert not c.is_established


def test_timers_run_on_the_time_passed_in() -> None:
    dev, host = pair()
    dev.set_timers(keepalive_ms=100, dead_peer_ms=1000, rekey_after_ms=250, max_lifetime_ms=None)
    dev.handle_timeout(10_000)  # starts the clocks
    assert dev.poll_timeout() == 10_100
    dev.handle_timeout(10_100)  # nothing sent for 100 ms: a keepalive
    assert [m.kind for m in host.receive(dev.data_to_send())] == ["ping"]
    dev.receive(host.data_to_send())  # the PONG: the peer is alive
    dev.handle_timeout(10_250)  # the sending key is 250 ms old
    assert "rekey" in [m.kind for m in host.receive(dev.data_to_send())]
    dev.handle_timeout(11_249)  # the PONG was stamped at 10 250
    host.receive(dev.data_to_send())
    assert dev.state == "established"
    with pytest.raises(vw.SessionTimeoutError):
        dev.handle_timeout(11_250)
    assert dev.state == "failed"
    closing = host.receive(dev.data_to_send())
    assert closing[-1].kind == "closed" and closing[-1].close_code == vw.CLOSE_IDLE_TIMEOUT
    assert any(e.kind == "timer_expired" for e in dev.events())
    with pytest.raises(vw.ConfigError):
        host.set_timers(keepalive_ms=0)
    host.set_timers(keepalive_ms=None, dead_peer_ms=None, rekey_after_ms=None, max_lifetime_ms=None)
    host.handle_timeout(0)
    assert host.poll_timeout() is None


def test_the_handshake_deadline_is_set_per_connection() -> None:
    dev = vw.Connection.initiator(DEVICE, "PM-1", host_key=HOST.public, handshake_timeout_ms=500)
    dev.handle_timeout(1_000)
    assert dev.poll_timeout() == 1_500
    dev.handle_timeout(1_499)
    with pytest.raises(vw.SessionTimeoutError):
        dev.handle_timeout(1_500)
    with pytest.raises(vw.ConfigError):
        vw.Connection.responder(HOST, trust(), handshake_timeout_ms=0)
    # Timers set before the handshake ends apply to the session.
    dev = vw.Connection.initiator(DEVICE, "PM-1", host_key=HOST.public)
    dev.set_timers(keepalive_ms=None, dead_peer_ms=40, rekey_after_ms=None, max_lifetime_ms=None)
    host = vw.Connection.responder(HOST, trust())
    pump(dev, host)
    dev.handle_timeout(0)
    assert dev.poll_timeout() == 40


def test_no_frame_follows_a_close_even_when_a_ping_crossed_it() -> None:
    """Spec §7.2: after sending CLOSE a side sends nothing more. A keepalive PING that
    crossed the CLOSE in flight gets no PONG (the peer would take it as a protocol violation)."""
    dev, host = pair()
    ping = host.ping(b"12345678")
    close = dev.close()
    assert dev.receive(ping)[0].kind == "ping"
    after = dev.data_to_send()
    assert after == b""
    msgs = host.receive(close + after)
    assert msgs[-1].kind == "closed"
    dev.receive(host.data_to_send())  # the host's answering CLOSE
    assert dev.state == "closed" and host.state == "closed"
