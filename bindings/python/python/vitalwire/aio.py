"""asyncio helpers: a device connects with :func:`connect`, a host serves with :func:`serve`.
Both speak the same wire protocol as the Rust `vitalwire host` and `vitalwire device`."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable, Optional

from ._native import Connection, Keypair, Message, SecurityEvent, TrustStore

_READ = 65536


class Channel:
    """An established session over an asyncio stream."""

    def __init__(self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connection = conn
        self._reader = reader
        self._writer = writer
        self._pending: deque[Message] = deque()
        self._closed = False

    async def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out:
            self._writer.write(out)
            await self._writer.drain()

    async def _handshake(self) -> None:
        await self._flush()
        while not self.connection.is_established:
            data = await self._reader.read(_READ)
            if not data:
                self.connection.end_of_stream()
            try:
                self._pending.extend(self.connection.receive(data))
            finally:
                await self._flush()
        # Starts the session's clocks; an IK/KK device sends its key-confirming PING now
        # (spec §4.8: a host counts the session only once a first frame arrives).
        self.connection.handle_timeout(int(time.monotonic() * 1000))
        await self._flush()

    async def send(self, channel: int, payload: bytes | bytearray | memoryview) -> None:
        """Sends one message (fragmented if larger than one frame)."""
        self._writer.write(self.connection.send_message(channel, payload))
        await self._writer.drain()

    async def recv(self) -> Optional[Message]:
        """The next DATA message, or None once the peer has closed cleanly. Raises
        :class:`vitalwire.TruncatedError` if the stream ends without a CLOSE."""
        while True:
            while self._pending:
                m = self._pending.popleft()
                if m.kind == "data":
                    return m
                if m.kind == "closed":
                    self._closed = True
            if self._closed and self.connection.state == "closed":
                return None
            data = await self._reader.read(_READ)
            if not data:
                self.connection.end_of_stream()
                return None
            try:
                self._pending.extend(self.connection.receive(data))
            finally:
                await self._flush()

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Message:
        m = await self.recv()
        if m is None:
            raise StopAsyncIteration
        return m

    def events(self) -> list[SecurityEvent]:
        return self.connection.events()

    @property
    def peer_identity(self) -> Optional[dict[str, object]]:
        return self.connection.peer_identity

    async def close(self, code: int = 0) -> None:
        """Sends CLOSE, waits briefly for the peer's, and closes the stream."""
        if self.connection.state == "established":
            self._writer.write(self.connection.close(code))
            await self._writer.drain()
            try:
                await asyncio.wait_for(self._drain_until_closed(), timeout=2.0)
            except (asyncio.TimeoutError, Exception):
                pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass

    async def _drain_until_closed(self) -> None:
        while self.connection.state != "closed":
            data = await self._reader.read(_READ)
            if not data:
                return
            self._pending.extend(self.connection.receive(data))


async def connect(
    host: str,
    port: int,
    *,
    keypair: Keypair,
    device_id: str,
    host_key: bytes,
    profile: str = "ik",
    suite: str = "chachapoly",
    timeout: float = 10.0,
    **options: object,
) -> Channel:
    """Connects to a host and runs the handshake; returns the established channel."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    if profile in ("ik", "kk"):
        conn = Connection.initiator(keypair, device_id, profile=profile, suite=suite, host_key=host_key, **options)  # type: ignore[arg-type]
    else:
        conn = Connection.initiator(keypair, device_id, profile=profile, suite=suite, pinned_host_keys=[host_key], **options)  # type: ignore[arg-type]
    channel = Channel(conn, reader, writer)
    try:
        await asyncio.wait_for(channel._handshake(), timeout)
    except BaseException:
        writer.close()
        raise
    return channel


async def serve(
    host: str,
    port: int,
    *,
    keypair: Keypair,
    trust: TrustStore,
    handler: Callable[[Channel], Awaitable[None]],
    on_event: Optional[Callable[[SecurityEvent], None]] = None,
    handshake_timeout: float = 5.0,
    **options: object,
) -> asyncio.Server:
    """Serves devices: each established channel is passed to `handler`. Refused and failed
    connections report their security events to `on_event`."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection.responder(keypair, trust, **options)  # type: ignore[arg-type]
        channel = Channel(conn, reader, writer)
        try:
            await asyncio.wait_for(channel._handshake(), handshake_timeout)
            await handler(channel)
        except Exception:
            pass
        finally:
            if on_event is not None:
                for e in conn.events():
                    on_event(e)
            writer.close()

    return await asyncio.start_server(on_connect, host, port)
