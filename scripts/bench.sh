#!/usr/bin/env bash
# The benchmark command: criterion comparisons against the raw AEAD floor, snow and rustls
# (one run; ratios from that run), wire and memory footprints, and the host benchmark.
# Prints markdown tables (benches/README.md quotes one run of this). Takes ~10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p vitalwire-benches
echo
python3 scripts/bench-report.py
echo
cargo run -q --release -p vitalwire-benches --bin footprint
echo
cargo bench -p vitalwire-cli --bench host
