#!/usr/bin/env bash
# Fuzzing: `scripts/fuzz.sh smoke [SECONDS]` runs every target briefly (CI);
# `scripts/fuzz.sh campaign [MINUTES]` runs each target longer and prints the table that
# fuzz/README.md records. Installs cargo-fuzz if missing; needs the nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
mode=${1:-smoke}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
targets=$(ls fuzz_targets | sed 's/\.rs$//')
case "$mode" in
    # The smoke run only proves every target builds and runs: an unoptimised build compiles
    # in about half the time. Campaigns want speed per input: optimised.
    smoke) seconds=${2:-5}; profile=(--dev) ;;
    campaign) seconds=$(( ${2:-10} * 60 )); profile=() ;;
    *) echo "usage: scripts/fuzz.sh smoke [SECONDS] | campaign [MINUTES]" >&2; exit 2 ;;
esac
cargo +nightly fuzz build "${profile[@]}" >/dev/null 2>&1 || cargo +nightly fuzz build "${profile[@]}"
mkdir -p logs
printf '%-22s %12s %8s %8s %8s\n' target runs cov ft corpus
failed=0
for t in $targets; do
    mkdir -p "corpus/$t"
    mkdir -p "logs/$mode"
    log="logs/$mode/$t.log"
    # A private working corpus for new inputs; the checked-in seeds stay read-only.
    work="target/corpus/$t"
    mkdir -p "$work"
    if ! cargo +nightly fuzz run "${profile[@]}" "$t" "$work" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 \
        >"$log" 2>&1; then
        echo "FAILED: $t (see fuzz/$log; reproducer in fuzz/artifacts/$t)" >&2
        failed=1
    fi
    runs=$(grep -a -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
    last=$(grep -a -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.*corp: \([0-9]*\).*/\1/p' <<<"$last")
    printf '%-22s %12s %8s %8s %8s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
done
exit $failed
