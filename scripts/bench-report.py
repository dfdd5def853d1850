#!/usr/bin/env python3
"""Turns one criterion run (target/criterion) into the ratio tables of benches/README.md.
Every figure is a ratio to its reference measured in the same run."""
import json, os, sys

root = os.path.join(os.path.dirname(__file__), "..")
crit = os.path.join(root, "target", "criterion")

def mean_ns(group, name, param):
    path = os.path.join(crit, group, name, str(param), "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["mean"]["point_estimate"]

out = []
sizes = [64, 256, 1024, 16384]
impls = [
    ("vitalwire_stream_chacha", "floor_ring_chacha"),
    ("vitalwire_stream_aesgcm", "floor_ring_aesgcm"),
    ("vitalwire_datagram_chacha", "floor_ring_chacha"),
    ("snow_default", "floor_ring_chacha"),
    ("snow_ring", "floor_ring_chacha"),
    ("rustls_tls13", "floor_ring_aesgcm"),
]
out.append("### Seal + open per frame (time, and ratio to the raw AEAD floor of the same cipher)\n")
out.append("| implementation | " + " | ".join(f"{s} B" for s in sizes) + " |")
out.append("|---|" + "---|" * len(sizes))
for floor in ["floor_ring_chacha", "floor_ring_aesgcm"]:
    out.append(f"| {floor} (reference) | " + " | ".join(f"{mean_ns('seal_open', floor, s):.0f} ns" for s in sizes) + " |")
for name, floor in impls:
    cells = []
    for s in sizes:
        t = mean_ns("seal_open", name, s)
        cells.append(f"{t:.0f} ns ({t / mean_ns('seal_open', floor, s):.2f}x)")
    out.append(f"| {name} | " + " | ".join(cells) + " |")
out.append("")
out.append("### vitalwire against the alternatives on the same cipher (their time / vitalwire's; above 1 means vitalwire is faster)\n")
out.append("| alternative | vitalwire reference | " + " | ".join(f"{s} B" for s in sizes) + " |")
out.append("|---|---|" + "---|" * len(sizes))
for alt, ref in [("snow_default", "vitalwire_stream_chacha"), ("snow_ring", "vitalwire_stream_chacha"), ("rustls_tls13", "vitalwire_stream_aesgcm")]:
    cells = [f"{mean_ns('seal_open', alt, s) / mean_ns('seal_open', ref, s):.2f}x" for s in sizes]
    out.append(f"| {alt} | {ref} | " + " | ".join(cells) + " |")
out.append("")
out.append("### Complete handshakes, both sides, in memory\n")
out.append("| pattern | vitalwire | snow (bare) | vitalwire / snow | TLS 1.3 mutual / vitalwire |")
out.append("|---|---|---|---|---|")
tls = mean_ns("handshake", "rustls_tls13_mutual", "ECDSA-P256")
for p in ["XX", "IK", "KK"]:
    v, s = mean_ns("handshake", "vitalwire", p), mean_ns("handshake", "snow", p)
    out.append(f"| {p} | {v / 1e3:.1f} µs | {s / 1e3:.1f} µs | {v / s:.2f}x | {tls / v:.2f}x |")
out.append(f"| TLS 1.3, mutual auth (rustls, ECDSA P-256) | {tls / 1e3:.1f} µs | | | |")
print("\n".join(out))
