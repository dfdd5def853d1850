"""System tests: a Python `aio` device against a real `vitalwire host` process that is killed
(`kill -9`) or frozen (`SIGSTOP`) mid-session and restarted on the same port. The device must
notice (an error, never a hang), reconnect, and stream again; the host's telemetry file must
hold what was sent after the reconnect. Host processes are ended by PID, whatever happens."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
from typing import Callable, Iterator, Optional

import pytest

import vitalwire as vw
from vitalwire import aio

BOUND = 20.0  # seconds: "eventually" means within this, on a loaded machine
# The Rust host pings every 15 s when it has nothing to send, so a device that only streams
# hears nothing from a live host for that long. These tests keep the device's dead-peer timer
# short and let its own keepalives (answered by the host's PONGs) prove the host alive.
DEVICE_TIMERS = aio.Timers(keepalive=0.25, dead_peer=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HostProcess:
    """`vitalwire host` on one port, restartable; telemetry appended to one file."""

    def __init__(self, binary: pathlib.Path, tmp: pathlib.Path, port: int) -> None:
        self.binary, self.tmp, self.port = binary, tmp, port
        subprocess.run([binary, "keygen", "--out", tmp / "host.key"], check=True, capture_output=True)
        self.public = vw.load_public_key(tmp / "host.key.pub")
        self.telemetry = tmp / "telemetry.jsonl"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.runs = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        with open(self.tmp / f"host-{self.runs}.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [self.binary, "host", "--key", self.tmp / "host.key", "--trust", self.tmp / "trust.vw",
                 "--tcp", f"127.0.0.1:{self.port}", "--telemetry", self.telemetry,
                 "--events", self.tmp / f"events-{self.runs}.jsonl"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 by PID, and wait until the process is gone (its port is free again)."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=BOUND)

    def lines(self) -> list[dict[str, object]]:
        """The telemetry file's complete lines (a torn last line is skipped)."""
        out = []
        if self.telemetry.exists():
            for line in self.telemetry.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def stderr(self) -> str:
        return "\n".join((self.tmp / f"host-{n}.stderr").read_text() for n in range(1, self.runs + 1))


@pytest.fixture
def host(tmp_path: pathlib.Path, vitalwire_bin: pathlib.Path) -> Iterator[HostProcess]:
    h = HostProcess(vitalwire_bin, tmp_path, free_port())
    try:
        yield h
    finally:
        h.kill()


@pytest.fixture
def device(tmp_path: pathlib.Path) -> vw.Keypair:
    keys = vw.Keypair.generate()
    vw.TrustStore.create(tmp_path / "trust.vw").add(keys.public, "PY-1", "python aio device")
    return keys


async def connect(host: HostProcess, keys: vw.Keypair, events: list[vw.SecurityEvent]) -> aio.Channel:
    """Connects, retrying while the (re)started host is not listening yet."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            return await aio.connect("127.0.0.1", host.port, keypair=keys, device_id="PY-1", host_key=host.public,
                                     timeout=5.0, timers=DEVICE_TIMERS, on_event=events.append)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def eventually(what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND} s: {what}")
        await asyncio.sleep(0.05)


def texts(lines: list[dict[str, object]]) -> list[object]:
    return [line.get("text") for line in lines]


async def stream(ch: aio.Channel, tag: str, n: int) -> list[str]:
    sent = [f"{tag}-{i}" for i in range(n)]
    for text in sent:
        await ch.send(1, text.encode())
        await asyncio.sleep(0.02)
    return sent


async def reconnect_and_stream(host: HostProcess, keys: vw.Keypair) -> None:
    """Restart the host on the same port; the device reconnects and streams; the telemetry
    file then holds exactly what was sent after the reconnect."""
    before = len(host.lines())
    host.start()
    events: list[vw.SecurityEvent] = []
    ch = await connect(host, keys, events)
    sent = await stream(ch, "after", 10)
    await ch.close()  # the host answered CLOSE, so it has read every frame before it
    assert not ch.is_open and ch.peer_close_code == vw.CLOSE_NORMAL
    await eventually("the telemetry after the reconnect", lambda: len(host.lines()) - before >= len(sent))
    new = host.lines()[before:]
    assert texts(new) == sent, host.stderr()
    assert all(line["device_id"] == "PY-1" for line in new)
    assert any(e.kind == "session_established" for e in events)


def test_aio_device_notices_a_killed_host_reconnects_and_streams(host: HostProcess, device: vw.Keypair) -> None:
    events: list[vw.SecurityEvent] = []

    async def main() -> None:
        host.start()
        ch = await connect(host, device, events)
        sent = await stream(ch, "before", 10)
        await eventually("the telemetry before the kill", lambda: texts(host.lines()) == sent)

        host.kill()
        # The device keeps streaming, as a monitor does, until the session reports its end.
        async def stream_until_it_fails() -> None:
            i = 0
            while True:
                await ch.send(1, f"into-the-void-{i}".encode())
                i += 1
                await asyncio.sleep(0.02)

        with pytest.raises(vw.TruncatedError):
            await asyncio.wait_for(stream_until_it_fails(), BOUND)
        with pytest.raises(vw.TruncatedError):
            await asyncio.wait_for(ch.recv(), BOUND)
        assert not ch.is_open
        await ch.close()

        await reconnect_and_stream(host, device)

    asyncio.run(main())
    assert any(e.kind == "truncated" for e in events), [e.kind for e in events]


def test_aio_device_notices_a_frozen_host_by_its_timers(host: HostProcess, device: vw.Keypair) -> None:
    events: list[vw.SecurityEvent] = []

    async def main() -> None:
        host.start()
        ch = await connect(host, device, events)
        sent = await stream(ch, "before", 5)
        await eventually("the telemetry before the freeze", lambda: texts(host.lines()) == sent)
        # Idle for longer than the dead-peer time: the host's PONGs keep the session up.
        await asyncio.sleep(DEVICE_TIMERS.dead_peer * 1.5)  # type: ignore[operator]
        assert ch.is_open, [e.json for e in events]

        # The host process hangs: its socket stays open, the kernel still takes our bytes, but
        # nothing answers. Only the dead-peer timer can tell.
        host.signal(signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(vw.SessionTimeoutError):
            await asyncio.wait_for(ch.recv(), BOUND)
        assert time.monotonic() - start >= 0.9 * DEVICE_TIMERS.dead_peer  # type: ignore[operator]
        with pytest.raises(vw.SessionTimeoutError):
            await ch.send(1, b"too late")
        await ch.close()
        host.kill()  # SIGKILL ends a stopped process too

        await reconnect_and_stream(host, device)

    asyncio.run(main())
    assert any(e.kind == "timer_expired" for e in events), [e.kind for e in events]
