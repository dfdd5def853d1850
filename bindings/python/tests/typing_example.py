"""User code checked with `mypy --strict` by the test script: the stubs must describe it."""

import asyncio

import vitalwire
from vitalwire import aio


def seal_and_open() -> bytes:
    host = vitalwire.Keypair.generate()
    dev = vitalwire.Keypair.generate()
    trust = vitalwire.TrustStore()
    trust.add(dev.public, "PM-1", "bed 1")
    a = vitalwire.Connection.initiator(dev, "PM-1", profile="ik", host_key=host.public)
    b = vitalwire.Connection.responder(host, trust)
    b.receive(a.data_to_send())
    a.receive(b.data_to_send())
    msgs: list[vitalwire.Message] = b.receive(a.send(1, b"HR=72"))
    try:
        b.receive(b"\x00\x00")
    except vitalwire.VitalwireError as e:
        print(type(e).__name__)
    return msgs[0].payload


def log_event(e: vitalwire.SecurityEvent) -> None:
    print(e.json)


async def device(port: int, host_key: bytes) -> None:
    timers = aio.Timers(keepalive=5.0, dead_peer=20.0, rekey_after=None)
    ch: aio.Channel = await aio.connect(
        "127.0.0.1", port, keypair=vitalwire.Keypair.generate(), device_id="PM-2", host_key=host_key,
        timers=timers, on_event=log_event,
    )
    await ch.send(1, b"SpO2=98")
    m = await ch.recv()
    if m is not None:
        print(m.channel, m.payload)
    await ch.close()


async def host(trust: vitalwire.TrustStore) -> None:
    async def handler(ch: aio.Channel) -> None:
        async for m in ch:
            print(m.payload)

    def on_error(ch: aio.Channel, e: BaseException) -> None:
        print(ch.peer_identity, repr(e), ch.peer_close_code, ch.is_open)

    server = await aio.serve("0.0.0.0", 7700, keypair=vitalwire.Keypair.generate(), trust=trust, handler=handler,
                             on_event=log_event, on_error=on_error, timers=aio.Timers())
    server.close()


if __name__ == "__main__":
    print(seal_and_open())
    asyncio.run(device(7700, b"\x00" * 32))
