#!/usr/bin/env python3
"""Writes small seed corpora for the fuzz targets from spec/vectors (checked in as
fuzz/corpus/<target>/seed-*). Run after regenerating the vectors."""
import json, os, glob, hashlib

root = os.path.join(os.path.dirname(__file__), "..")
vectors = os.path.join(root, "spec", "vectors")
corpus = os.path.join(root, "fuzz", "corpus")

def write(target, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha256(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

stream = sorted(p for p in glob.glob(os.path.join(vectors, "*.json"))
                if not os.path.basename(p).startswith(("datagram", "fragments")))
for path in stream[:4]:
    v = json.load(open(path))
    frames = [bytes.fromhex(f["wire"]) for f in v["frames"]]
    hs = [f for f, raw in zip(frames, v["frames"]) if raw["phase"] == "handshake"]
    # Bodies without the 2-byte length prefix, as the decoders see them.
    for f in hs:
        write("frame_decode", f[2:])
        write("responder", f[2:])
    for raw in v["frames"]:
        if raw["phase"] == "handshake" and raw["handshake_payload"]:
            write("handshake_payloads", bytes.fromhex(raw["handshake_payload"]))
    write("stream_decoder", bytes([255]) + b"".join(frames))
for path in glob.glob(os.path.join(vectors, "datagram_*.json")):
    v = json.load(open(path))
    packets = [bytes.fromhex(p["wire"]) for p in v["packets"]]
    for p in packets:
        write("frame_decode", p)
    write("datagram_peers", b"\xfe".join(packets))
frag = json.load(open(os.path.join(vectors, "fragments_mtu20.json")))
write("reassembly", b"".join(bytes([len(bytes.fromhex(f))]) + bytes.fromhex(f) for f in frag["fragments"]))
write("session", bytes([1, 0, 5, 0, 9, 4, 0, 5, 1, 0, 7, 2, 3]))
write("two_peers", bytes([1] + [0x83, 0x01, 0x02, 0x01, 0x83, 0x06, 0x00, 0x01, 0x03, 0x01] * 20))
write("replay_window", bytes(range(0, 120)))
write("key_and_trust_files", b"vitalwire public key v1\nx25519 " + b"ab" * 32 + b"\ncheck 00000000\n")
write("key_and_trust_files", b"vitalwire trust store v1\ntofu off\ncheck 00\n")
print("seed corpora written to", os.path.normpath(corpus))
