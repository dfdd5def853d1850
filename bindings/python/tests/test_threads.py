"""`vitalwire` objects shared between real threads with no Python-side lock, frames of 4 KiB
and more (sealed and opened with the GIL released). Each workload runs in a child interpreter
with a deadline, so a deadlock fails the test instead of hanging the run; see
thread_workloads.py for what each one checks."""

import pathlib
import subprocess
import sys
import threading
import time

import pytest

WORKLOADS = pathlib.Path(__file__).with_name("thread_workloads.py")
# Generous for a loaded 2-core machine (each workload takes about a second unloaded); the
# child's own watchdog fires first and prints every thread's stack.
WATCHDOG_S = 120
LIMIT_S = WATCHDOG_S + 30


@pytest.mark.parametrize("scenario", ["duplex", "concurrent_senders", "datagram_and_fragments"])
def test_objects_are_shared_between_threads_without_a_lock(scenario: str) -> None:
    try:
        r = subprocess.run(
            [sys.executable, str(WORKLOADS), scenario, str(WATCHDOG_S)],
            capture_output=True, text=True, timeout=LIMIT_S,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{scenario}: no answer within {LIMIT_S} s (deadlock?)\n{e.stderr}")
    assert r.returncode == 0 and r.stdout.startswith("ok"), (
        f"{scenario}: exit {r.returncode} (a deadlock ends with the watchdog's stack dump)\n{r.stdout}\n{r.stderr}"
    )


def test_mutable_buffers_are_copied_then_sealed_and_opened_with_the_gil_released() -> None:
    """A bytearray or memoryview is copied before the core reads it (another extension's
    thread may write to it without the GIL), so large ones are sealed and opened with the GIL
    released, like bytes. Seen from a second thread: it can run only while a call has released
    the GIL, since the switch interval is raised so that the calling thread gives the GIL up
    only then."""
    from thread_workloads import pair

    dev, host = pair()
    big = bytes(range(256)) * 234  # 59904 bytes: one frame
    ticks = [0]
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.0002)  # sleeps without the GIL, then waits for it

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    t = threading.Thread(target=ticker)
    t.start()
    progressed = {}
    try:
        while ticks[0] == 0:
            time.sleep(0.01)
        for name, make in [("bytes", bytes), ("bytearray", bytearray), ("memoryview", memoryview)]:
            data = make(big)
            before = ticks[0]
            sealed = [make(dev.send(1, data)) for _ in range(400)]
            progressed[f"send {name}"] = ticks[0] - before
            before = ticks[0]
            opened = [host.receive(frame) for frame in sealed]
            progressed[f"receive {name}"] = ticks[0] - before
            assert all([(m.channel, m.payload) for m in got] == [(1, big)] for got in opened)
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join()
    assert all(n > 0 for n in progressed.values()), f"the GIL stayed held: {progressed}"


def test_any_byte_buffer_is_accepted_and_read_as_it_was_at_the_call() -> None:
    from thread_workloads import pair

    dev, host = pair()
    strided = memoryview(bytes(range(200)))[::2]  # not contiguous: copied in order
    data = bytearray(b"HR=72")
    frame = dev.send(1, data)
    data[:] = b"HR=00"  # changing the buffer afterwards changes nothing sent
    msgs = host.receive(frame + dev.send(2, strided))
    assert [(m.channel, m.payload) for m in msgs] == [(1, b"HR=72"), (2, bytes(range(0, 200, 2)))]
    with pytest.raises(TypeError):
        dev.send(1, memoryview(bytearray(8)).cast("I"))  # not bytes
