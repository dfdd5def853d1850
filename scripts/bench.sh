#!/usr/bin/env bash
# The benchmark command: criterion comparisons against the raw AEAD floor, snow and rustls
# (one run; ratios from that run), wire and memory footprints, and the host benchmark.
# Prints markdown tables (benches/README.md quotes one run of this). Takes ~6 minutes.
# The interleaved ratios (bin ratios) are the ones to trust on a noisy machine: every
# implementation and its reference run in alternation, the ratio is taken per round.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p vitalwire-benches
echo
python3 scripts/bench-report.py
echo
cargo run -q --release -p vitalwire-benches --bin ratios
echo
cargo run -q --release -p vitalwire-benches --bin footprint
echo
cargo bench -p vitalwire-cli --bench host
