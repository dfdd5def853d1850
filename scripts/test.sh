#!/usr/bin/env bash
# The one test command: everything CI checks, from a fresh clone.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
step() { printf '\n== [%4ds] %s\n' "$((SECONDS - start))" "$*"; }

# The Kotlin and Swift toolchains are mostly downloading and unpacking (network and disk, little
# CPU): install them in the background while the Rust stages compile. The binding stage runs
# the same (idempotent) script again, which finishes or reports whatever this did not.
mkdir -p target
scripts/uniffi-toolchains.sh >target/uniffi-toolchains.out 2>&1 &
toolchains=$!

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "no_std build of the core, linted (cargo clippy -p vitalwire --no-default-features)"
cargo clippy -p vitalwire --no-default-features -- -D warnings

step "the core's other feature sets send the same bytes (tests/promises.rs on no_std and on std without aws-lc)"
cargo test -p vitalwire --no-default-features --test promises
cargo test -p vitalwire --no-default-features --features std --test promises

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests (cargo test --workspace; the benchmarks are only type-checked, by clippy above)"
cargo test --workspace --exclude vitalwire-benches

step "Python package (wheel in a virtualenv, pytest with interop, mypy --strict; scripts/python-test.sh)"
scripts/python-test.sh

step "Kotlin and Swift bindings (toolchains, generated sources, tests, interop; scripts/uniffi-test.sh)"
wait "$toolchains" || echo "background toolchain install failed (target/uniffi-toolchains.out); retrying"
scripts/uniffi-test.sh

step "fuzz smoke (every cargo-fuzz target for a few seconds; scripts/fuzz.sh)"
scripts/fuzz.sh smoke 5

printf '\nall checks passed in %ds\n' "$((SECONDS - start))"
