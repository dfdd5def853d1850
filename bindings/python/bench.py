"""Seal + open per frame: vitalwire (this package) against noiseprotocol (an independent
Noise implementation on PyPI, over OpenSSL's ChaCha20-Poly1305), in the same run.

    python bindings/python/bench.py

Prints microseconds per round trip and the ratio noiseprotocol / vitalwire."""

import timeit

from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

import vitalwire as vw

SIZES = [64, 256, 4096]


def vitalwire_pair() -> tuple[vw.Connection, vw.Connection]:
    host, dev = vw.Keypair.generate(), vw.Keypair.generate()
    trust = vw.TrustStore()
    trust.add(dev.public, "BENCH")
    a = vw.Connection.initiator(dev, "BENCH", profile="ik", host_key=host.public)
    b = vw.Connection.responder(host, trust)
    b.receive(a.data_to_send())
    a.receive(b.data_to_send())
    return a, b


def noise_pair() -> tuple[NoiseConnection, NoiseConnection]:
    name = b"Noise_NN_25519_ChaChaPoly_BLAKE2s"
    a, b = NoiseConnection.from_name(name), NoiseConnection.from_name(name)
    a.set_as_initiator()
    b.set_as_responder()
    a.start_handshake()
    b.start_handshake()
    b.read_message(a.write_message())
    a.read_message(b.write_message())
    return a, b


def best_of(stmt, number: int) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> None:
    a, b = vitalwire_pair()
    na, nb = noise_pair()
    print(f"{'payload':>8} {'vitalwire µs':>13} {'noiseprotocol µs':>17} {'ratio':>6}")
    for size in SIZES:
        payload = bytes(size)
        v = best_of(lambda: b.receive(a.send(1, payload)), 20_000)
        n = best_of(lambda: nb.decrypt(na.encrypt(payload)), 20_000)
        print(f"{size:>7}B {v:>13.2f} {n:>17.2f} {n / v:>5.1f}x")


if __name__ == "__main__":
    main()
