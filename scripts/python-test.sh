#!/usr/bin/env bash
# Builds the Python wheel into a virtualenv (cached under target/) and runs the pytest suite,
# including interop with the Rust `vitalwire host` and `vitalwire device` (killed and frozen
# mid-session too), and mypy --strict on the package and a sample of user code.
# Usage: scripts/python-test.sh [--bench]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/py-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.16,<2" pytest mypy "noiseprotocol==0.3.1"
if [ "${1:-}" = "--bench" ]; then
    # Benchmarks want the release build (its own cache: it is a separate cargo workspace).
    export CARGO_TARGET_DIR=$root/target/python
else
    # Tests take the dev profile in the main target directory: the dependencies the Rust
    # stages already compiled with the same features are reused, not rebuilt.
    export CARGO_TARGET_DIR=$root/target
    export MATURIN_PEP517_ARGS="--profile dev"
fi
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./bindings/python
cargo build -q -p vitalwire-cli
export VITALWIRE_BIN=$CARGO_TARGET_DIR/debug/vitalwire
if [ "${1:-}" = "--bench" ]; then
    exec "$venv/bin/python" bindings/python/bench.py
fi
"$venv/bin/python" -m pytest -q bindings/python/tests
"$venv/bin/mypy" --strict bindings/python/tests/typing_example.py bindings/python/python/vitalwire
