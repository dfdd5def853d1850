#!/usr/bin/env bash
# Installs what the Kotlin and Swift binding tests need, idempotently, cached under
# ~/.cache/vitalwire-toolchains (recipes: shared/TOOLCHAINS.md):
#   - the Kotlin JVM compiler (npm package kotlin-compiler) and JNA (Debian libjna-java);
#   - Swift: native swiftc if present, else Debian trixie's swiftlang in a debootstrap root.
# Prints the variables the test script needs.
set -euo pipefail
cache=${VITALWIRE_TOOLCHAINS:-$HOME/.cache/vitalwire-toolchains}
mkdir -p "$cache"
log=$cache/install.log

apt_updated=0
apt_install() {
    if [ $apt_updated = 0 ]; then
        apt-get update -qq >>"$log" 2>&1 || true
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1
}

# Kotlin compiler.
kotlin=$cache/kotlin/package
if [ ! -x "$kotlin/bin/kotlinc" ]; then
    rm -rf "$cache/kotlin" && mkdir -p "$cache/kotlin"
    (cd "$cache/kotlin" && npm pack --silent kotlin-compiler@2.4.20 >>"$log" 2>&1 && tar xzf kotlin-compiler-*.tgz)
    chmod +x "$kotlin/bin/"* 2>/dev/null || true
fi

# JNA.
if ! dpkg -s libjna-java >/dev/null 2>&1; then
    apt_install libjna-java
fi
jna=$(dpkg -L libjna-java | grep 'jna.jar$' | head -1)

# Swift.
swift_root=""
if ! command -v swiftc >/dev/null 2>&1; then
    swift_root=$cache/swift-root
    if [ ! -x "$swift_root/usr/bin/swiftc" ]; then
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        if [ ! -x "$swift_root/usr/bin/apt-get" ]; then
            rm -rf "$swift_root"
            debootstrap --variant=minbase trixie "$swift_root" >>"$log" 2>&1
        fi
        mountpoint -q "$swift_root/proc" || mount -t proc proc "$swift_root/proc"
        # An install cut short earlier leaves dpkg half-configured: finish it first.
        chroot "$swift_root" dpkg --configure -a >>"$log" 2>&1 || true
        chroot "$swift_root" apt-get update -qq >>"$log" 2>&1
        DEBIAN_FRONTEND=noninteractive chroot "$swift_root" apt-get install -y -qq --no-install-recommends \
            swiftlang libc6-dev libstdc++-14-dev >>"$log" 2>&1
        umount "$swift_root/proc" || true
    fi
fi

echo "KOTLIN_HOME=$kotlin"
echo "JNA_JAR=$jna"
echo "SWIFT_ROOT=$swift_root"
