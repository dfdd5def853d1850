"""asyncio helpers, and interop with the Rust `vitalwire host` and `vitalwire device`."""

import asyncio
import json
import pathlib
import socket
import subprocess
import time
from typing import Optional

import pytest

import vitalwire as vw
from vitalwire import aio


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_python_device_to_python_host() -> None:
    host_keys, dev_keys = vw.Keypair.generate(), vw.Keypair.generate()
    trust = vw.TrustStore()
    trust.add(dev_keys.public, "PM-7")
    received: list[tuple[str, int, bytes]] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            assert ch.peer_identity is not None
            async for m in ch:
                received.append((str(ch.peer_identity["device_id"]), m.channel, m.payload))

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler)
        port = server.sockets[0].getsockname()[1]
        ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-7", host_key=host_keys.public)
        for i in range(5):
            await ch.send(1, f"HR={70 + i}".encode())
        await ch.send(2, b"w" * 200_000)
        await ch.close()
        await asyncio.sleep(0.2)
        server.close()
        await server.wait_closed()

    run(main())
    assert [r[2] for r in received[:5]] == [f"HR={70 + i}".encode() for i in range(5)]
    assert received[5] == ("PM-7", 2, b"w" * 200_000)


def test_an_idle_ik_device_confirms_its_session_at_once() -> None:
    # spec §4.8: the host reports (and counts) an IK session only at the device's first frame;
    # a device with nothing to send yet confirms with a PING right after the handshake.
    host_keys, dev_keys = vw.Keypair.generate(), vw.Keypair.generate()
    trust = vw.TrustStore()
    trust.add(dev_keys.public, "PM-8")
    seen: list[str] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            try:
                await asyncio.wait_for(ch.recv(), 1.0)
            except asyncio.TimeoutError:
                pass
            seen.extend(e.kind for e in ch.events())

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler)
        port = server.sockets[0].getsockname()[1]
        ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-8", host_key=host_keys.public)
        await asyncio.sleep(1.5)  # idle: no data
        await ch.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert "session_established" in seen, seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_python_device_to_rust_host(tmp_path: pathlib.Path, vitalwire_bin: pathlib.Path) -> None:
    subprocess.run([vitalwire_bin, "keygen", "--out", tmp_path / "host.key"], check=True, capture_output=True)
    dev = vw.Keypair.generate()
    trust = vw.TrustStore.create(tmp_path / "trust.vw")
    trust.add(dev.public, "PY-1", "python device")
    port = free_port()
    host = subprocess.Popen(
        [vitalwire_bin, "host", "--key", tmp_path / "host.key", "--trust", tmp_path / "trust.vw",
         "--tcp", f"127.0.0.1:{port}", "--seconds", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    host_key = vw.load_public_key(tmp_path / "host.key.pub")

    async def main() -> None:
        for _ in range(50):
            try:
                ch = await aio.connect("127.0.0.1", port, keypair=dev, device_id="PY-1", host_key=host_key)
                break
            except OSError:
                await asyncio.sleep(0.05)
        for i in range(10):
            await ch.send(1, f"HR={60 + i}".encode())
        await ch.close()

    run(main())
    out, _ = host.communicate(timeout=20)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["text"] for line in lines] == [f"HR={60 + i}" for i in range(10)]
    assert all(line["device_id"] == "PY-1" for line in lines)


def test_rust_device_to_python_host(tmp_path: pathlib.Path, vitalwire_bin: pathlib.Path) -> None:
    subprocess.run([vitalwire_bin, "keygen", "--out", tmp_path / "pm.key"], check=True, capture_output=True)
    host_keys = vw.Keypair.generate()
    host_keys.save(tmp_path / "host.key")
    trust = vw.TrustStore()
    trust.add(vw.load_public_key(tmp_path / "pm.key.pub"), "RUST-1")
    received: list[bytes] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            async for m in ch:
                received.append(m.payload)

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            str(vitalwire_bin), "device", "--key", str(tmp_path / "pm.key"), "--host-key", str(tmp_path / "host.key.pub"),
            "--connect", f"127.0.0.1:{port}", "--id", "RUST-1", "--rate", "20", "--seconds", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        await asyncio.sleep(0.3)
        server.close()
        await server.wait_closed()

    run(main())
    numerics = [p for p in received if p.startswith(b"HR=")]
    assert len(numerics) >= 10


def test_refused_connections_report_events() -> None:
    host_keys = vw.Keypair.generate()
    events: list[vw.SecurityEvent] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            raise AssertionError("an untrusted device must not get a channel")

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=vw.TrustStore(), handler=handler, on_event=events.append)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(vw.UntrustedPeerError):
            await aio.connect("127.0.0.1", port, keypair=vw.Keypair.generate(), device_id="ROGUE", host_key=host_keys.public)
        await asyncio.sleep(0.1)
        server.close()
        await server.wait_closed()

    run(main())
    assert any(e.kind == "unknown_peer" and e.device_id == "ROGUE" for e in events)
    time.sleep(0)


# Session timers, live events and handler errors. Timers are short here (a dead peer after
# 1 s) so the tests stay quick; every wait is bounded far above the promise, and nothing
# asserts a speed.

QUICK = aio.Timers(keepalive=0.25, dead_peer=1.0)
BOUND = 20.0  # seconds: "eventually" means within this, on a loaded machine


def keys_and_trust() -> tuple[vw.Keypair, vw.Keypair, vw.TrustStore]:
    host_keys, dev_keys = vw.Keypair.generate(), vw.Keypair.generate()
    trust = vw.TrustStore()
    trust.add(dev_keys.public, "PM-7")
    return host_keys, dev_keys, trust


async def raw_handshake(conn: vw.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Runs a handshake by hand (no timers, no driver): after it this peer says nothing."""
    writer.write(conn.data_to_send())
    while not conn.is_established:
        data = await reader.read(65536)
        assert data, "the peer hung up during the handshake"
        conn.receive(data)
        writer.write(conn.data_to_send())
    await writer.drain()


async def read_all(conn: vw.Connection, reader: asyncio.StreamReader) -> list[vw.Message]:
    """What the peer sent until it closed the link."""
    msgs: list[vw.Message] = []
    while data := await reader.read(65536):
        msgs.extend(conn.receive(data))
    return msgs


def test_a_host_notices_a_device_that_went_silent() -> None:
    host_keys, dev_keys, trust = keys_and_trust()
    events: list[vw.SecurityEvent] = []
    outcome: list[object] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            start = time.monotonic()
            try:
                await ch.recv()
            except vw.SessionTimeoutError as e:
                outcome.append((e, time.monotonic() - start, list(events)))

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler,
                                 on_event=events.append, timers=QUICK)
        port = server.sockets[0].getsockname()[1]
        # The device completes the handshake and confirms its key with one PING (spec §4.8:
        # an IK session exists only from the device's first frame), then neither sends nor
        # closes its socket.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dev = vw.Connection.initiator(dev_keys, "PM-7", host_key=host_keys.public)
        await raw_handshake(dev, reader, writer)
        writer.write(dev.ping(b"confirm!"))
        await writer.drain()
        heard = await asyncio.wait_for(read_all(dev, reader), BOUND)
        writer.close()
        server.close()
        await server.wait_closed()
        # The host kept pinging the silent device, then closed with IDLE_TIMEOUT.
        assert [m.kind for m in heard if m.kind == "ping"], [m.kind for m in heard]
        assert heard[-1].kind == "closed" and heard[-1].close_code == vw.CLOSE_IDLE_TIMEOUT

    run(main())
    assert len(outcome) == 1, "recv() must end with SessionTimeoutError"
    _, waited, events_then = outcome[0]
    assert isinstance(waited, float) and waited >= 0.9, "not before the dead-peer time"
    # Events were delivered while the session ran, not when it ended.
    assert isinstance(events_then, list) and any(e.kind == "timer_expired" for e in events_then)
    assert any(e.kind == "session_established" and e.device_id == "PM-7" for e in events)
    # Stamped with the adapters' clock: wall-clock milliseconds, not a bare counter.
    assert all(abs(e.time - time.time() * 1000) < 120_000 for e in events), [e.time for e in events]


def test_a_device_notices_a_host_that_went_silent() -> None:
    host_keys, dev_keys, trust = keys_and_trust()
    events: list[vw.SecurityEvent] = []
    release = asyncio.Event()

    async def main() -> None:
        async def silent_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await raw_handshake(vw.Connection.responder(host_keys, trust), reader, writer)
            await release.wait()  # the host process hangs: the socket stays open
            writer.close()

        server = await asyncio.start_server(silent_host, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-7", host_key=host_keys.public,
                               timers=QUICK, on_event=events.append)
        with pytest.raises(vw.SessionTimeoutError):
            await asyncio.wait_for(ch.recv(), BOUND)
        with pytest.raises(vw.SessionTimeoutError):
            await ch.send(1, b"HR=70")  # the session is over, and says why
        assert not ch.is_open
        await ch.close()
        release.set()
        server.close()
        await server.wait_closed()

    run(main())
    assert any(e.kind == "timer_expired" for e in events)


def test_keepalives_keep_an_idle_session_alive_and_keys_roll_on_time() -> None:
    host_keys, dev_keys, trust = keys_and_trust()
    host_events: list[vw.SecurityEvent] = []
    received: list[tuple[bytes, int]] = []
    failures: list[BaseException] = []

    def inbound_rekeys() -> int:
        return sum(1 for e in host_events if e.kind == "rekeyed" and json.loads(e.json)["direction"] == "inbound")

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            async for m in ch:
                received.append((m.payload, inbound_rekeys()))

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler,
                                 on_event=host_events.append, on_error=lambda ch, e: failures.append(e), timers=QUICK)
        port = server.sockets[0].getsockname()[1]
        ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-7", host_key=host_keys.public,
                               timers=aio.Timers(keepalive=0.25, dead_peer=1.0, rekey_after=0.4))
        await ch.send(1, b"before")
        await asyncio.sleep(3.0)  # three dead-peer intervals of silence from both applications
        assert ch.is_open
        await ch.send(1, b"after")
        await ch.close()
        await asyncio.sleep(0.2)
        server.close()
        await server.wait_closed()

    run(main())
    assert not failures, failures
    assert [p for p, _ in received] == [b"before", b"after"]
    # The device's key rolled on time (0.4 s) while idle; the host saw it during the session.
    assert received[1][1] >= 3, host_events


def test_handler_exceptions_are_reported_and_close_the_channel() -> None:
    host_keys, dev_keys, trust = keys_and_trust()
    reported: list[tuple[str, BaseException]] = []
    logged: list[dict[str, object]] = []

    async def main() -> None:
        def log(loop: asyncio.AbstractEventLoop, ctx: dict[str, object]) -> None:
            if str(ctx["message"]).startswith("vitalwire.aio.serve"):
                logged.append(ctx)

        asyncio.get_running_loop().set_exception_handler(log)

        async def handler(ch: aio.Channel) -> None:
            await ch.recv()
            raise RuntimeError("the handler failed")

        def on_error(ch: aio.Channel, e: BaseException) -> None:
            assert ch.peer_identity is not None
            reported.append((str(ch.peer_identity["device_id"]), e))

        for errors in (on_error, None):
            server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler, on_error=errors)
            port = server.sockets[0].getsockname()[1]
            ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-7", host_key=host_keys.public)
            await ch.send(1, b"HR=70")
            assert await asyncio.wait_for(ch.recv(), BOUND) is None  # the host closed
            assert ch.peer_close_code == vw.CLOSE_INTERNAL_ERROR
            await ch.close()
            assert len(reported) + len(logged) == (1 if errors else 2), "reported before the CLOSE"
            server.close()
            await server.wait_closed()

    run(main())
    assert [(d, str(e)) for d, e in reported] == [("PM-7", "the handler failed")]
    assert len(logged) == 1 and str(logged[0]["exception"]) == "the handler failed"
    assert "PM-7" in str(logged[0]["message"])


def test_a_handshake_that_gets_no_answer_times_out() -> None:
    events: list[vw.SecurityEvent] = []

    async def main() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # reads the HELLO, never answers; returns when the device hangs up
            writer.close()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        start = time.monotonic()
        with pytest.raises(vw.SessionTimeoutError):
            await asyncio.wait_for(
                aio.connect("127.0.0.1", port, keypair=vw.Keypair.generate(), device_id="PM-7",
                            host_key=vw.Keypair.generate().public, timeout=0.5, on_event=events.append),
                BOUND,
            )
        assert time.monotonic() - start >= 0.45
        server.close()
        await server.wait_closed()

    run(main())
    assert any(e.kind == "timer_expired" for e in events)


def test_a_host_application_that_reads_slowly_holds_the_device_back_and_loses_nothing() -> None:
    """The channel reads ahead for recv() only up to a bound (8 MiB); then TCP backpressure
    holds the sender back. Nothing is dropped, the session carries on once read, and the
    waiting is not taken for a dead peer (the host's application, not the device, is slow)."""
    host_keys, dev_keys, trust = keys_and_trust()
    received: list[bytes] = []
    blobs = [bytes([i]) * 1_000_000 for i in range(48)]
    failures: list[BaseException] = []

    async def main() -> None:
        go = asyncio.Event()

        async def handler(ch: aio.Channel) -> None:
            await go.wait()
            async for m in ch:
                received.append(m.payload)

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler,
                                 on_error=lambda ch, e: failures.append(e), timers=QUICK)
        port = server.sockets[0].getsockname()[1]
        ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-7", host_key=host_keys.public,
                               timers=QUICK)

        async def send_all() -> None:
            for b in blobs:
                await ch.send(2, b)

        sender = asyncio.create_task(send_all())
        await asyncio.sleep(3.0)  # the host application reads nothing for 3 dead-peer times
        # 48 MB cannot all be in flight: the device is held back, and its session is up.
        assert not sender.done(), sender.exception() or "the host's channel did not hold the device back"
        go.set()
        await asyncio.wait_for(sender, BOUND)
        await ch.close(timeout=BOUND)
        server.close()
        await server.wait_closed()

    run(main())
    assert not failures, failures
    assert len(received) == len(blobs) and all(r == b for r, b in zip(received, blobs))


def test_a_host_drops_a_connection_that_never_starts_the_handshake() -> None:
    host_keys, _, trust = keys_and_trust()
    events: list[vw.SecurityEvent] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            raise AssertionError("no channel without a handshake")

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler,
                                 on_event=events.append, handshake_timeout=0.5)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(), BOUND) == b""  # the host hung up
        assert time.monotonic() - start >= 0.45
        # Reported as it happened, by the core's handshake timer.
        assert [json.loads(e.json).get("timer") for e in events if e.kind == "timer_expired"] == ["handshake"]
        writer.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_a_forged_frame_ends_the_session_with_an_error_an_event_and_a_close() -> None:
    host_keys, dev_keys, trust = keys_and_trust()
    events: list[vw.SecurityEvent] = []
    outcome: list[BaseException] = []
    received: list[bytes] = []

    async def main() -> None:
        got_one = asyncio.Event()

        async def handler(ch: aio.Channel) -> None:
            with pytest.raises(vw.AuthenticationError) as e:
                while (m := await ch.recv()) is not None:
                    received.append(m.payload)
                    got_one.set()
            outcome.append(e.value)

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler,
                                 on_event=events.append)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dev = vw.Connection.initiator(dev_keys, "PM-7", host_key=host_keys.public)
        await raw_handshake(dev, reader, writer)
        writer.write(dev.send(1, b"HR=71"))
        await asyncio.wait_for(got_one.wait(), BOUND)
        frame = bytearray(dev.send(1, b"HR=70"))
        frame[-1] ^= 1  # the tag no longer matches
        writer.write(bytes(frame))
        heard = await asyncio.wait_for(read_all(dev, reader), BOUND)
        assert heard[-1].kind == "closed" and heard[-1].close_code == vw.CLOSE_AUTHENTICATION_FAILED
        writer.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert len(outcome) == 1 and received == [b"HR=71"]
    assert any(e.kind == "authentication_failure" and e.severity == "alert" for e in events)


def test_a_session_ends_at_its_lifetime_and_the_peer_hears_why() -> None:
    host_keys, dev_keys, trust = keys_and_trust()
    host_saw: list[Optional[int]] = []

    async def main() -> None:
        async def handler(ch: aio.Channel) -> None:
            assert await ch.recv() is None  # the device closed
            host_saw.append(ch.peer_close_code)

        server = await aio.serve("127.0.0.1", 0, keypair=host_keys, trust=trust, handler=handler)
        port = server.sockets[0].getsockname()[1]
        ch = await aio.connect("127.0.0.1", port, keypair=dev_keys, device_id="PM-7", host_key=host_keys.public,
                               timers=aio.Timers(max_lifetime=1.0))
        start = time.monotonic()
        with pytest.raises(vw.SessionTimeoutError):
            await asyncio.wait_for(ch.recv(), BOUND)
        assert time.monotonic() - start >= 0.9
        await ch.close()
        deadline = time.monotonic() + BOUND
        while not host_saw and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()

    run(main())
    assert host_saw == [vw.CLOSE_SESSION_EXPIRED]
