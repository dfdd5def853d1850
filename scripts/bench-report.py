#!/usr/bin/env python3
"""Turns one criterion run (target/criterion) into the ratio tables of benches/README.md.
Every figure is a ratio to its reference measured in the same run."""
import json, os

root = os.path.join(os.path.dirname(__file__), "..")
crit = os.path.join(root, "target", "criterion")


def mean_ns(group, name, param=None):
    parts = [crit, group, name] + ([str(param)] if param is not None else []) + ["new", "estimates.json"]
    with open(os.path.join(*parts)) as f:
        return json.load(f)["median"]["point_estimate"]


def us(ns):
    return f"{ns / 1e3:.1f} µs"


out = []
sizes = [64, 256, 1024, 16384]
impls = [
    ("floor_ring_chacha_plus_header", "floor_ring_chacha"),
    ("floor_ring_aesgcm_plus_header", "floor_ring_aesgcm"),
    ("vitalwire_stream_chacha", "floor_ring_chacha"),
    ("vitalwire_stream_aesgcm", "floor_ring_aesgcm"),
    ("vitalwire_stream_in_place_chacha", "floor_ring_chacha"),
    ("vitalwire_stream_in_place_aesgcm", "floor_ring_aesgcm"),
    ("vitalwire_datagram_chacha", "floor_ring_chacha"),
    ("vitalwire_stream_in_place_portable_chacha", "floor_rustcrypto_chacha"),
    ("snow_default", "floor_ring_chacha"),
    ("snow_ring", "floor_ring_chacha"),
    ("rustls_tls13", "floor_ring_aesgcm"),
]
out.append("### Seal + open per frame (time, and ratio to the raw AEAD floor of the same cipher)\n")
out.append("| implementation | " + " | ".join(f"{s} B" for s in sizes) + " |")
out.append("|---|" + "---|" * len(sizes))
for floor in ["floor_ring_chacha", "floor_ring_aesgcm", "floor_rustcrypto_chacha"]:
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
for alt, ref in [
    ("snow_default", "vitalwire_stream_chacha"),
    ("snow_default", "vitalwire_stream_in_place_chacha"),
    ("snow_ring", "vitalwire_stream_chacha"),
    ("snow_ring", "vitalwire_stream_in_place_chacha"),
    ("rustls_tls13", "vitalwire_stream_aesgcm"),
    ("rustls_tls13", "vitalwire_stream_in_place_aesgcm"),
]:
    cells = [f"{mean_ns('seal_open', alt, s) / mean_ns('seal_open', ref, s):.2f}x" for s in sizes]
    out.append(f"| {alt} | {ref} | " + " | ".join(cells) + " |")
out.append("")

out.append("### Complete handshakes, both sides, in memory\n")
out.append("| pattern | vitalwire (aws-lc X25519, default) | vitalwire (portable X25519) | snow (bare, its default X25519) | vitalwire / snow | TLS 1.3 mutual / vitalwire |")
out.append("|---|---|---|---|---|---|")
tls = mean_ns("handshake", "rustls_tls13_mutual", "ECDSA-P256")
for p in ["XX", "IK", "KK"]:
    v = mean_ns("handshake", "vitalwire", p)
    vp = mean_ns("handshake", "vitalwire_portable_x25519", p)
    s = mean_ns("handshake", "snow", p)
    out.append(f"| {p} | {us(v)} | {us(vp)} | {us(s)} | {v / s:.2f}x | {tls / v:.2f}x |")
out.append(f"| TLS 1.3, mutual auth (rustls, ECDSA P-256) | {us(tls)} | | | | |")
out.append("")

prim = {n: mean_ns("primitive", n) for n in [
    "x25519_dh_aws_lc", "x25519_keygen_aws_lc", "x25519_dh_dalek", "x25519_keygen_dalek",
    "p256_ecdhe_ring", "p256_ecdsa_sign_ring", "p256_ecdsa_verify_ring"]}
out.append("### The public-key operations under the handshakes\n")
out.append("| operation | time |")
out.append("|---|---|")
for n, t in prim.items():
    out.append(f"| {n} | {us(t)} |")
out.append("")
dh, kg = prim["x25519_dh_aws_lc"], prim["x25519_keygen_aws_lc"]
tls_floor = 2 * prim["p256_ecdhe_ring"] + 2 * prim["p256_ecdsa_sign_ring"] + 4 * prim["p256_ecdsa_verify_ring"]
out.append("| handshake | public-key operations (both sides) | their cost alone | measured | share of the measured time |")
out.append("|---|---|---|---|---|")
for p, n_dh in [("XX", 6), ("IK", 8), ("KK", 8)]:
    floor = n_dh * dh + 2 * kg
    v = mean_ns("handshake", "vitalwire", p)
    out.append(f"| vitalwire {p} | {n_dh} X25519 + 2 X25519 key generations | {us(floor)} | {us(v)} | {floor / v:.0%} |")
out.append(f"| TLS 1.3 mutual | 2 P-256 ECDHE + 2 ECDSA signs + 4 ECDSA verifies | {us(tls_floor)} | {us(tls)} | {tls_floor / tls:.0%} |")
out.append("")
out.append(f"Fastest possible XX at this X25519 speed: {us(6 * dh + 2 * kg)}; half of TLS 1.3 mutual: {us(tls / 2)}.")
print("\n".join(out))
