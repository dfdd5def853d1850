"""asyncio helpers, and interop with the Rust `vitalwire host` and `vitalwire device`."""

import asyncio
import json
import pathlib
import socket
import subprocess
import time

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
