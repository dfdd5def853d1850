#!/usr/bin/env bash
# The one test command: everything CI checks, from a fresh clone.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
step() { printf '\n== [%4ds] %s\n' "$((SECONDS - start))" "$*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "no_std build of the core (cargo build -p vitalwire --no-default-features)"
cargo build -p vitalwire --no-default-features

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests (cargo test --workspace; the benchmarks are only type-checked, by clippy above)"
cargo test --workspace --exclude vitalwire-benches

step "Python package (wheel in a virtualenv, pytest with interop, mypy --strict; scripts/python-test.sh)"
scripts/python-test.sh

step "Kotlin and Swift bindings (toolchains, generated sources, tests, interop; scripts/uniffi-test.sh)"
scripts/uniffi-test.sh

step "fuzz smoke (every cargo-fuzz target for a few seconds; scripts/fuzz.sh)"
scripts/fuzz.sh smoke 5

printf '\nall checks passed in %ds\n' "$((SECONDS - start))"
