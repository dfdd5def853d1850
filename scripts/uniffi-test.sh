#!/usr/bin/env bash
# Kotlin and Swift binding tests: installs the toolchains (cached), builds the library,
# generates the bindings with the workspace's uniffi-bindgen, compiles and runs the tests in
# each language, including interop with a Rust `vitalwire host` over loopback TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
eval "$(scripts/uniffi-toolchains.sh)"
cargo build -q -p vitalwire-uniffi -p vitalwire-cli
lib=$root/target/debug/libvitalwire_uniffi.so
gen=$root/target/uniffi
rm -rf "$gen"
for lang in kotlin swift; do
    cargo run -q -p vitalwire-uniffi --bin uniffi-bindgen -- generate --library "$lib" --language $lang \
        --out-dir "$gen/$lang" --no-format >/dev/null
done
# The README shows the examples these tests compile: they must not drift apart.
python3 - <<'PY'
import pathlib
readme = pathlib.Path("README.md").read_text()
for f in ["bindings/uniffi/examples/Example.kt", "bindings/uniffi/examples/example.swift"]:
    assert pathlib.Path(f).read_text().strip() in readme, f"README.md must show {f} verbatim"
PY

# A Rust host for the interop tests.
work=$(mktemp -d)
trap 'kill $host_pid 2>/dev/null || true; rm -rf "$work"' EXIT
vw=$root/target/debug/vitalwire
$vw keygen --out "$work/host.key" >/dev/null
$vw keygen --out "$work/kotlin.key" >/dev/null
$vw keygen --out "$work/swift.key" >/dev/null
$vw trust --store "$work/trust.vw" add "$work/kotlin.key.pub" --device-id KOTLIN-1 >/dev/null
$vw trust --store "$work/trust.vw" add "$work/swift.key.pub" --device-id SWIFT-1 >/dev/null
$vw host --key "$work/host.key" --trust "$work/trust.vw" --tcp 127.0.0.1:0 --seconds 600 \
    >"$work/telemetry.jsonl" 2>"$work/host.err" &
host_pid=$!
for _ in $(seq 50); do grep -q "TCP" "$work/host.err" 2>/dev/null && break; sleep 0.1; done
addr=$(grep -o 'TCP [0-9.:]*' "$work/host.err" | cut -d' ' -f2)

echo "== Kotlin"
kout=$root/target/uniffi/kotlin-out
mkdir -p "$kout"
"$KOTLIN_HOME/bin/kotlinc" -nowarn -d "$kout/tests.jar" -classpath "$JNA_JAR" \
    "$gen/kotlin/org/vitalwire/vitalwire_uniffi.kt" bindings/uniffi/examples/Example.kt bindings/uniffi/tests/kotlin/Main.kt
java -ea -Djna.library.path="$root/target/debug" -cp "$kout/tests.jar:$JNA_JAR:$KOTLIN_HOME/lib/kotlin-stdlib.jar" MainKt \
    "$root" "$addr" "$work/kotlin.key" "$work/host.key.pub"

echo "== Swift"
if [ -n "$SWIFT_ROOT" ]; then
    build=$SWIFT_ROOT/build
    rm -rf "$build" && mkdir -p "$build/include" "$build/tests" "$build/repo/spec"
    cp "$gen/swift/Vitalwire.swift" "$lib" "$build/"
    cp "$gen/swift/VitalwireFFI.h" "$build/include/"
    cp "$gen/swift/VitalwireFFI.modulemap" "$build/include/module.modulemap"
    cp bindings/uniffi/tests/swift/main.swift bindings/uniffi/examples/example.swift "$build/tests/"
    cp -r spec/vectors "$build/repo/spec/"
    cp "$work/swift.key" "$work/host.key.pub" "$build/"
    mountpoint -q "$SWIFT_ROOT/proc" || mount -t proc proc "$SWIFT_ROOT/proc"
    status=0
    chroot "$SWIFT_ROOT" sh -c "cd /build && swiftc -suppress-warnings -module-name Vitalwire -I include -L . -lvitalwire_uniffi Vitalwire.swift tests/example.swift tests/main.swift -o t && LD_LIBRARY_PATH=. ./t /build/repo $addr /build/swift.key /build/host.key.pub" || status=$?
    umount "$SWIFT_ROOT/proc" || true
    [ $status = 0 ]
else
    swiftc -suppress-warnings -module-name Vitalwire -I "$gen/swift" -L "$root/target/debug" -lvitalwire_uniffi \
        -Xcc -fmodule-map-file="$gen/swift/VitalwireFFI.modulemap" \
        "$gen/swift/Vitalwire.swift" bindings/uniffi/examples/example.swift bindings/uniffi/tests/swift/main.swift -o "$gen/swift-tests"
    LD_LIBRARY_PATH="$root/target/debug" "$gen/swift-tests" "$root" "$addr" "$work/swift.key" "$work/host.key.pub"
fi

echo "== interop: the Rust host received the Kotlin and Swift telemetry"
kill $host_pid; wait $host_pid 2>/dev/null || true
grep -q '"device_id":"KOTLIN-1".*"text":"HR=80"' "$work/telemetry.jsonl"
grep -q '"device_id":"SWIFT-1".*"text":"HR=90"' "$work/telemetry.jsonl"
echo "interop: 2 passed, 0 failed"
