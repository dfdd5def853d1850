"""asyncio helpers: a device connects with :func:`connect`, a host serves with :func:`serve`.
Both speak the same wire protocol as the Rust `vitalwire host` and `vitalwire device`.

Each :class:`Channel` runs a background task that reads the link, answers PINGs, runs the
session timers of spec/PROTOCOL.md §7.4 (handshake deadline, keepalive, dead peer, rekey by
time, lifetime) and delivers security events as they happen. So a peer that vanishes without
closing its socket ends ``recv()`` with :class:`vitalwire.SessionTimeoutError` instead of
hanging it, an idle session stays alive, and sending keys are rolled on time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Literal, Optional

from ._native import (
    ClosedError,
    Connection,
    Keypair,
    Message,
    SecurityEvent,
    TruncatedError,
    TrustStore,
)

_READ = 65536
# Received messages held for recv() before the channel stops reading (backpressure: the
# peer's writes then block; nothing is dropped).
_MAX_BUFFERED = 8 << 20
CLOSE_INTERNAL_ERROR = 0x0008

_origin: Optional[tuple[float, int]] = None


def now_ms() -> int:
    """The clock passed to the core (milliseconds): the wall clock read once, plus the time
    elapsed on the monotonic clock since. Timers never jump with the wall clock; event stamps
    read as wall-clock time (the same clock as the Rust adapters')."""
    global _origin
    if _origin is None:
        _origin = (time.monotonic(), int(time.time() * 1000))
    return _origin[1] + int((time.monotonic() - _origin[0]) * 1000)


def _ms(seconds: Optional[float]) -> Optional[int]:
    if seconds is None:
        return None
    if seconds <= 0:
        raise ValueError("a timer must be positive (None switches it off)")
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class Timers:
    """Session timers in seconds (spec/PROTOCOL.md §7.4); None switches one off. With
    keepalives on both sides a live peer is never declared dead; keep ``dead_peer`` several
    times the peer's keepalive interval."""

    keepalive: Optional[float] = 15.0
    dead_peer: Optional[float] = 60.0
    rekey_after: Optional[float] = 120.0
    max_lifetime: Optional[float] = 86400.0

    def apply(self, conn: Connection) -> None:
        conn.set_timers(
            keepalive_ms=_ms(self.keepalive),
            dead_peer_ms=_ms(self.dead_peer),
            rekey_after_ms=_ms(self.rekey_after),
            max_lifetime_ms=_ms(self.max_lifetime),
        )


EventCallback = Callable[[SecurityEvent], None]


class Channel:
    """A session over an asyncio stream. Created by :func:`connect` and :func:`serve`."""

    def __init__(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timers: Optional[Timers] = None,
        on_event: Optional[EventCallback] = None,
    ) -> None:
        self.connection = conn
        self._timers = timers or Timers()
        self._timers.apply(conn)
        self._paused = False
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._inbox: deque[Message] = deque()
        self._buffered = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._error: Optional[BaseException] = None
        self._finished = False
        self.peer_close_code: Optional[int] = None
        """The code of the peer's CLOSE, once received."""
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._task = loop.create_task(self._drive())

    # The driver: the only reader of the link.

    async def _drive(self) -> None:
        conn = self.connection
        read: Optional[asyncio.Task[bytes]] = None
        resume: Optional[asyncio.Task[Literal[True]]] = None
        try:
            self._tick()  # starts the handshake clock
            while not self._finished:
                if read is None and self._buffered < _MAX_BUFFERED:
                    read = asyncio.ensure_future(self._reader.read(_READ))
                if read is None and resume is None:
                    self._pause()
                    resume = asyncio.ensure_future(self._room.wait())
                waiter = read if read is not None else resume
                assert waiter is not None
                deadline = conn.poll_timeout()
                timeout = None if deadline is None else max(0, deadline - now_ms() + 1) / 1000
                await asyncio.wait({waiter}, timeout=timeout)
                if resume is not None and resume.done():
                    resume = None
                if read is not None and read.done():
                    try:
                        data = read.result()
                    except OSError as e:
                        raise self._link_broken(e) from e
                    finally:
                        read = None
                    if not data:
                        self._end_of_stream()
                        return
                    self._feed(data)
                    if self._paused:
                        self._paused = False
                        self._timers.apply(conn)  # the peer's bytes were waiting: it is alive
                    if conn.state == "closed":
                        self._finish(None)
                        return
                self._tick()  # after the input, so that it counts as activity
        except asyncio.CancelledError:
            self._finish(None)
            raise
        except Exception as e:
            self._finish(e)
        finally:
            for f in (read, resume):
                if f is not None:
                    f.cancel()

    def _pause(self) -> None:
        """Stops reading until recv() makes room. Meanwhile the peer's bytes wait in the
        kernel, unseen, so the dead-peer timer is held off until the next read (the other
        timers go on: keepalives tell the peer this side is alive)."""
        self._room.clear()
        self._paused = True
        replace(self._timers, dead_peer=None).apply(self.connection)

    def _tick(self) -> None:
        try:
            self.connection.handle_timeout(now_ms())
        finally:
            self._flush()
            self._deliver_events()

    def _feed(self, data: bytes) -> None:
        conn = self.connection
        conn.set_time(now_ms())
        try:
            messages = conn.receive(data)
        finally:
            self._flush()  # PONGs, handshake replies, a CLOSE answering or reporting
            self._deliver_events()
        for m in messages:
            if m.kind == "data":
                self._inbox.append(m)
                self._buffered += len(m.payload)
            elif m.kind == "closed":
                self.peer_close_code = m.close_code
        if messages:
            self._wakeup.set()
        if conn.is_established and not self._ready.done():
            self._ready.set_result(None)

    def _end_of_stream(self) -> None:
        self.connection.end_of_stream()  # raises TruncatedError unless the peer closed
        self._finish(None)

    def _link_broken(self, cause: OSError) -> BaseException:
        """The link failed (reset, broken pipe): the session is truncated."""
        try:
            self.connection.end_of_stream()
        except Exception as e:
            e.__cause__ = cause
            self._deliver_events()
            return e
        return TruncatedError(f"the link broke: {cause}")

    def _finish(self, error: Optional[BaseException]) -> None:
        if self._finished:
            return
        self._finished = True
        if error is not None:
            self._error = error
        self._deliver_events()
        if not self._ready.done():
            self._ready.set_exception(error or ClosedError("the connection ended during the handshake"))
            self._ready.exception()  # retrieved: whoever awaits it still gets it
        if error is not None:
            # At once, even if a stuck peer left bytes in the buffer; what the kernel already
            # holds (the CLOSE just flushed, as a rule) is still sent.
            self._writer.transport.abort()
        elif self.connection.state == "closed":
            self._writer.transport.close()
        self._wakeup.set()

    def _flush(self) -> None:
        out = self.connection.data_to_send()
        if out and not self._writer.transport.is_closing():
            self._writer.write(out)

    def _deliver_events(self) -> None:
        if self._on_event is None:
            return
        for e in self.connection.events():
            try:
                self._on_event(e)
            except Exception as cb_error:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "vitalwire.aio: the on_event callback raised", "exception": cb_error}
                )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def _established(self) -> None:
        await self._ready

    async def _abort(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._writer.transport.abort()

    # The application's side.

    async def send(self, channel: int, payload: bytes | bytearray | memoryview) -> None:
        """Sends one message (fragmented if larger than one frame). Raises the error that
        ended the session (:class:`vitalwire.TruncatedError` for a broken link,
        :class:`vitalwire.SessionTimeoutError` for a silent peer, ...). Messages sent just
        before the link broke may be lost without an error: only the peer's answer proves
        delivery."""
        self._raise_if_failed()
        frames = self.connection.send_message(channel, payload)
        self._flush()  # frames sealed earlier (a PONG, a keepalive) go first
        self._writer.write(frames)
        try:
            await self._writer.drain()
        except OSError as e:
            if self._error is None:
                self._finish(self._link_broken(e))
        self._raise_if_failed()

    async def recv(self) -> Optional[Message]:
        """The next DATA message, or None once the peer has closed cleanly. Everything that
        arrived before the session ended is delivered first; then the error that ended it is
        raised: :class:`vitalwire.TruncatedError` if the link ended or broke without a CLOSE,
        :class:`vitalwire.SessionTimeoutError` if the peer went silent longer than the
        dead-peer timer."""
        while True:
            if self._inbox:
                m = self._inbox.popleft()
                self._buffered -= len(m.payload)
                if self._buffered < _MAX_BUFFERED:
                    self._room.set()
                return m
            if self._finished:
                self._raise_if_failed()
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Message:
        m = await self.recv()
        if m is None:
            raise StopAsyncIteration
        return m

    def events(self) -> list[SecurityEvent]:
        """Security events not yet taken (when no ``on_event`` callback receives them)."""
        return self.connection.events()

    @property
    def peer_identity(self) -> Optional[dict[str, object]]:
        return self.connection.peer_identity

    @property
    def is_open(self) -> bool:
        """Whether the session still runs (no CLOSE exchanged, no error)."""
        return not self._finished

    async def close(self, code: int = 0, timeout: float = 2.0) -> None:
        """Sends CLOSE with `code`, waits up to `timeout` seconds for the peer's (messages
        arriving meanwhile stay readable with ``recv()``), and closes the stream."""
        if not self._finished and self.connection.state == "established":
            try:
                frame = self.connection.close(code)
            except ClosedError:
                frame = b""  # this side already closed
            except Exception:
                frame = b""  # the session failed; the driver reports it
            self._flush()
            if frame and not self._writer.transport.is_closing():
                self._writer.write(frame)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, OSError):
                pass
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (asyncio.TimeoutError, OSError):
            self._writer.transport.abort()  # the peer does not take what is left


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
    timers: Optional[Timers] = None,
    on_event: Optional[EventCallback] = None,
    **options: object,
) -> Channel:
    """Connects to a host and runs the handshake (each within `timeout` seconds, else
    :class:`vitalwire.SessionTimeoutError`); returns the established channel. `timers`
    default to the spec's; `on_event` receives each security event as it happens."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        pins = {"host_key": host_key} if profile in ("ik", "kk") else {"pinned_host_keys": [host_key]}
        conn = Connection.initiator(
            keypair, device_id, profile=profile, suite=suite, handshake_timeout_ms=_ms(timeout), **pins, **options  # type: ignore[arg-type]
        )
        channel = Channel(conn, reader, writer, timers=timers, on_event=on_event)
    except BaseException:
        writer.close()
        raise
    try:
        await channel._established()
    except BaseException:
        await channel._abort()
        raise
    return channel


ErrorCallback = Callable[[Channel, BaseException], None]


async def serve(
    host: str,
    port: int,
    *,
    keypair: Keypair,
    trust: TrustStore,
    handler: Callable[[Channel], Awaitable[None]],
    on_event: Optional[EventCallback] = None,
    on_error: Optional[ErrorCallback] = None,
    handshake_timeout: float = 5.0,
    timers: Optional[Timers] = None,
    **options: object,
) -> asyncio.Server:
    """Serves devices: each established channel is passed to `handler`; when it returns, the
    channel is closed (CLOSE NORMAL). `on_event` receives every security event as it happens,
    refused handshakes included. An exception the handler raises is not swallowed: the channel
    is closed with CLOSE INTERNAL_ERROR and the exception goes to `on_error(channel, exc)`, or,
    without one, to the event loop's exception handler (which logs it)."""
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = Connection.responder(keypair, trust, handshake_timeout_ms=_ms(handshake_timeout), **options)  # type: ignore[arg-type]
            channel = Channel(conn, reader, writer, timers=timers, on_event=on_event)
        except BaseException:
            writer.close()
            raise
        try:
            await channel._established()
        except Exception:
            await channel._abort()  # a refused or failed handshake: reported as events
            return
        try:
            await handler(channel)
        except asyncio.CancelledError:
            await channel._abort()
            raise
        except Exception as e:
            try:
                if on_error is not None:
                    on_error(channel, e)
                else:
                    asyncio.get_running_loop().call_exception_handler(
                        {
                            "message": f"vitalwire.aio.serve: the handler raised (device {_device(channel)})",
                            "exception": e,
                        }
                    )
            finally:
                await channel.close(CLOSE_INTERNAL_ERROR)
        else:
            await channel.close()

    return await asyncio.start_server(on_connect, host, port)


def _device(channel: Channel) -> str:
    identity = channel.peer_identity
    return str(identity["device_id"]) if identity else "?"
