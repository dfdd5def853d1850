"""Workloads that share `vitalwire` objects between real threads, with no Python-side lock
around any call. `test_threads.py` runs each in a child interpreter with a deadline: a
deadlock there freezes every thread of that interpreter (the GIL included), so only a
separate process can turn it into a failure instead of a hung test run.

Usage: python thread_workloads.py SCENARIO. Prints "ok" and exits 0 when every check held.
"""

from __future__ import annotations

import faulthandler
import queue
import sys
import threading
import time
from typing import Callable, Optional

import vitalwire as vw

HOST = vw.Keypair.from_private(b"\x11" * 32)
DEVICE = vw.Keypair.from_private(b"\x22" * 32)
HOST_EPHEMERAL = b"\x44" * 32
DEVICE_EPHEMERAL = b"\x55" * 32

# Frames from 4 KiB (the size from which the crypto runs with the GIL released) up to the
# largest DATA payload of a 65535-byte frame.
SIZES = [4096, 4097, 6000, 8192, 16384, 32768, 65535 - 19]


def pair() -> tuple[vw.Connection, vw.Connection]:
    """A device and a host session with fixed keys and ephemerals: every call gives sessions
    with the same keys, so a fresh host can check frames sealed by an earlier device."""
    trust = vw.TrustStore()
    trust.add(DEVICE.public, "PM-1")
    dev = vw.Connection.initiator(DEVICE, "PM-1", host_key=HOST.public, ephemeral_for_testing_only=DEVICE_EPHEMERAL)
    host = vw.Connection.responder(HOST, trust, ephemeral_for_testing_only=HOST_EPHEMERAL)
    for _ in range(3):
        host.receive(dev.data_to_send())
        dev.receive(host.data_to_send())
    assert dev.is_established and host.is_established
    return dev, host


def payload(tag: int, i: int, size: int) -> bytes:
    head = f"{tag}:{i}:".encode()
    return head + bytes((tag * 31 + i + k) & 0xFF for k in range(size - len(head)))


class Failures:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def run(self, name: str, body: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                body()
            except BaseException as e:  # reported by the main thread
                self.errors.append(f"{name}: {type(e).__name__}: {e}")

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        return t


def as_buffer(i: int, data: bytes) -> bytes | bytearray | memoryview:
    """Every third input a bytes, a bytearray or a memoryview (the copying path)."""
    return (data, bytearray(data), memoryview(data))[i % 3]


def duplex() -> None:
    """Each connection is used by three threads at once: one seals and sends, one receives
    the peer's frames, one polls timers, state and events. Frames are 4 KiB to 64 KiB and
    fragmented messages up to 300 KB, so sealing and opening run with the GIL released while
    the other threads call in."""
    dev, host = pair()
    n = 120
    failures = Failures()
    done = threading.Event()
    links: dict[str, queue.Queue[Optional[bytes]]] = {"to_host": queue.Queue(), "to_dev": queue.Queue()}
    got: dict[str, list[tuple[int, bytes]]] = {"host": [], "dev": []}

    def expected(tag: int) -> list[tuple[int, bytes]]:
        out = []
        for i in range(n):
            size = SIZES[i % len(SIZES)]
            if i % 10 == 9:
                out.append((3, payload(tag, i, 300_000)))
            else:
                out.append((1, payload(tag, i, size)))
        return out

    def sender(conn: vw.Connection, link: queue.Queue[Optional[bytes]], tag: int) -> Callable[[], None]:
        def body() -> None:
            for i, (channel, data) in enumerate(expected(tag)):
                buf = as_buffer(i, data)
                frame = conn.send_message(channel, buf) if channel == 3 else conn.send(channel, buf)
                link.put(frame)
            link.put(None)

        return body

    def receiver(conn: vw.Connection, link: queue.Queue[Optional[bytes]], into: list[tuple[int, bytes]]) -> Callable[[], None]:
        def body() -> None:
            i = 0
            while (frame := link.get(timeout=60)) is not None:
                # Whole frames, or split in two at an odd place, as a socket would hand them over.
                cut = len(frame) // 3 + 1
                for piece in (frame[:cut], frame[cut:]):
                    into.extend((m.channel, m.payload) for m in conn.receive(as_buffer(i, piece)) if m.kind == "data")
                i += 1

        return body

    def poller(conn: vw.Connection) -> Callable[[], None]:
        def body() -> None:
            while not done.is_set():
                conn.handle_timeout(1)  # a fixed time: no timer fires
                conn.poll_timeout()
                conn.events()
                assert conn.state == "established", conn.state
                assert conn.is_established and conn.max_payload_len == 65535 - 19
                assert conn.remote_static is not None and conn.handshake_hash is not None
                repr(conn)

        return body

    threads = [
        failures.run("dev-sender", sender(dev, links["to_host"], 1)),
        failures.run("host-sender", sender(host, links["to_dev"], 2)),
        failures.run("host-receiver", receiver(host, links["to_host"], got["host"])),
        failures.run("dev-receiver", receiver(dev, links["to_dev"], got["dev"])),
    ]
    pollers = [failures.run("dev-poller", poller(dev)), failures.run("host-poller", poller(host))]
    for t in threads:
        t.join()
    done.set()
    for t in pollers:
        t.join()
    assert not failures.errors, failures.errors
    assert got["host"] == expected(1), "the host did not get the device's messages in order"
    assert got["dev"] == expected(2), "the device did not get the host's messages in order"
    assert dev.data_to_send() == b"" and host.data_to_send() == b""


def concurrent_senders() -> None:
    """Three threads seal on one connection at once. The order in which they return their
    frames is unknown (no lock), but each `send` must be atomic: every frame takes the next
    nonce exactly once. So there must be an interleaving of the three threads' lists (each in
    its own order) that a host accepts frame by frame; it is found by trying each thread's next
    frame on a spare host in the same state (a failed try costs that spare)."""
    dev, _ = pair()
    per_thread = 40
    failures = Failures()
    sealed: list[list[tuple[bytes, bytes]]] = [[] for _ in range(3)]

    def sender(tag: int) -> Callable[[], None]:
        def body() -> None:
            for i in range(per_thread):
                data = payload(tag, i, SIZES[(i + tag) % len(SIZES)])
                sealed[tag].append((dev.send(tag, as_buffer(i, data)), data))

        return body

    threads = [failures.run(f"sender-{t}", sender(t)) for t in range(3)]
    for t in threads:
        t.join()
    assert not failures.errors, failures.errors
    assert all(len(s) == per_thread for s in sealed)

    accepted: list[bytes] = []

    def host_at(prefix: list[bytes]) -> vw.Connection:
        _, h = pair()
        for f in prefix:
            h.receive(f)
        return h

    live = host_at([])
    spare = host_at([])
    heads = [0, 0, 0]
    while len(accepted) < 3 * per_thread:
        for tag in range(3):
            if heads[tag] == per_thread:
                continue
            frame, data = sealed[tag][heads[tag]]
            try:
                msgs = spare.receive(frame)
            except vw.AuthenticationError:
                spare = host_at(accepted)
                continue
            assert [(m.channel, m.payload) for m in msgs] == [(tag, data)]
            assert [(m.channel, m.payload) for m in live.receive(frame)] == [(tag, data)]
            accepted.append(frame)
            heads[tag] += 1
            break
        else:
            raise AssertionError(f"no thread's next frame takes nonce {len(accepted)}: a send was not atomic")


def datagram_and_fragments() -> None:
    """The datagram client and the fragment link shared the same way."""
    client = vw.DatagramClient(DEVICE, "PM-1", 0, host_key=HOST.public)
    link = vw.FragmentLink(200, max_message_len=1 << 20, max_in_flight=64)
    failures = Failures()
    big = bytes(range(256)) * 156  # 39 KiB: 200 pieces

    def splitter(tag: int) -> Callable[[], None]:
        def body() -> None:
            for _ in range(30):
                pieces = link.split(bytes([tag]) + big)
                assert len(pieces) == 204
                client.transmit(1)
                client.poll_timeout()
                client.events(1)
                assert not client.is_established

        return body

    threads = [failures.run(f"splitter-{t}", splitter(t)) for t in range(3)]
    for t in threads:
        t.join()
    assert not failures.errors, failures.errors


SCENARIOS: dict[str, Callable[[], None]] = {
    "duplex": duplex,
    "concurrent_senders": concurrent_senders,
    "datagram_and_fragments": datagram_and_fragments,
}

if __name__ == "__main__":
    # A deadlock freezes the GIL too; this watchdog runs in a C thread, dumps every thread's
    # stack and ends the process, so the parent test sees why.
    deadline = float(sys.argv[2]) if len(sys.argv) > 2 else 90.0
    faulthandler.dump_traceback_later(deadline, exit=True)
    start = time.monotonic()
    SCENARIOS[sys.argv[1]]()
    print(f"ok {time.monotonic() - start:.2f}s")
