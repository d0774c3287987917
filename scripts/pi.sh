#!/usr/bin/env bash
# Raspberry Pi builds and tests; `make pi` and `make test-pi` call this.
#
#   scripts/pi.sh build   release binaries for both Pi targets: static,
#                         stripped, sizes printed (target/pi/<triple>/release/abide)
#   scripts/pi.sh test    the whole `cargo test` suite for both targets under
#                         qemu-user, then the armv7 address-space check
#                         (scripts/pi-cap-check.rs)
#
# The compiler is Debian's rustc-web with ARM standard libraries, prepared by
# scripts/pi-toolchain.sh (run first, quick when already done); cargo is the
# host's. Cross builds use their own target folder (target/pi), so the host
# build in target/ is left alone.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
toolchain="${PI_TOOLCHAIN_DIR:-$repo/target/pi-toolchain}"
target_dir="${PI_TARGET_DIR:-$repo/target/pi}"
cargo="${CARGO:-cargo}"
triples=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

PI_TOOLCHAIN_DIR="$toolchain" "$repo/scripts/pi-toolchain.sh"

export RUSTC="$toolchain/bin/rustc" RUSTDOC="$toolchain/bin/rustdoc"
# Static linking: the binary runs on any Pi OS release, whatever its glibc,
# and qemu-user needs no ARM sysroot.
static="-C target-feature=+crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$static"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="$static"
# Test binaries run under qemu-user. tiny_http spawns its connection threads
# with std's default stack size, which comes from RUST_MIN_STACK; the abide
# binary sets 128 KiB itself (src/main.rs), in-process test servers do not,
# and with 2 MiB stacks a 32-bit process runs out of address space near 2,000
# threads (tests/idle_flood.rs opens 2,000 connections). So the emulated test
# processes get a small default stack through qemu's -E. (Not through cargo's
# [env] or the environment: that would reach rustc too, which then crashes.)
# It also sizes libtest's own test threads, whose unoptimised bodies (a test
# parses 64-deep JSON) need more than the binary's 128 KiB: 256 KiB, which
# still fits 2,000 connections in a 32-bit address space. PI_TEST_MIN_STACK
# overrides it.
min_stack="${PI_TEST_MIN_STACK:-262144}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -E RUST_MIN_STACK=$min_stack"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -E RUST_MIN_STACK=$min_stack"
export CARGO_PROFILE_RELEASE_STRIP=symbols

# Builds the release binary for each triple given; checks it is a static,
# stripped ELF and prints its size.
build() {
  for triple in "$@"; do
    "$cargo" build --release --bin abide --target "$triple" --target-dir "$target_dir"
  done
  for triple in "$@"; do
    local bin="$target_dir/$triple/release/abide"
    if readelf -lW "$bin" | grep -q INTERP; then echo "$bin is not statically linked" >&2; exit 1; fi
    if readelf -SW "$bin" | grep -q '\.symtab'; then echo "$bin is not stripped" >&2; exit 1; fi
    local bytes
    bytes="$(stat -c %s "$bin")"
    awk -v t="$triple" -v b="$bytes" -v p="${bin#"$repo"/}" \
      'BEGIN { printf "%-32s %9d bytes (%.2f MiB), static, stripped: %s\n", t, b, b / 1048576, p }'
  done
}

binfmt_ready() {
  local arch="$1" entry
  for entry in /proc/sys/fs/binfmt_misc/*; do
    [ -f "$entry" ] && grep -qx enabled "$entry" 2>/dev/null && grep -q "interpreter .*qemu-$arch\b" "$entry" && return 0
  done
  return 1
}

test_all() {
  # Tests that start a child process (the abide binary, or the test binary
  # itself) exec an ARM file from inside qemu; the kernel hands it to qemu
  # through binfmt_misc, which pi-toolchain.sh registers.
  for arch in aarch64 arm; do
    binfmt_ready "$arch" || { echo "binfmt_misc has no qemu-$arch entry: see scripts/pi-toolchain.sh" >&2; exit 1; }
  done
  local failed=() summary=()
  for triple in "${triples[@]}"; do
    echo "== cargo test --target $triple (under qemu-user)"
    local start=$SECONDS status=0
    # --lib --bins --tests: everything `cargo test` runs but the doc tests,
    # which cargo >= 1.89 would run for a cross target with rustdoc flags
    # (--test-runtool) that the 1.85 rustdoc does not have. Doc tests are
    # target-independent and run in `make test`.
    "$cargo" test --no-fail-fast --lib --bins --tests --target "$triple" --target-dir "$target_dir" || status=$?
    local took=$((SECONDS - start))
    summary+=("$(printf '%-32s %s in %dm%02ds (build and run)' "$triple" \
      "$([ "$status" -eq 0 ] && echo passed || echo FAILED)" $((took / 60)) $((took % 60)))")
    [ "$status" -eq 0 ] || failed+=("cargo test --target $triple")
  done

  echo "== armv7 address-space check: the release server under qemu-arm with a 32-bit Pi's 3 GiB"
  build armv7-unknown-linux-gnueabihf
  # A host program (std only), compiled by the host's own rustc.
  env -u RUSTC rustc --edition 2021 -O -o "$target_dir/pi-cap-check" scripts/pi-cap-check.rs
  local start=$SECONDS status=0
  "$target_dir/pi-cap-check" "$target_dir/armv7-unknown-linux-gnueabihf/release/abide" qemu-arm -s 1024M || status=$?
  summary+=("$(printf '%-32s %s in %ds' "armv7 3 GiB check" \
    "$([ "$status" -eq 0 ] && echo passed || echo FAILED)" $((SECONDS - start)))")
  [ "$status" -eq 0 ] || failed+=("armv7 address-space check")

  echo "== test-pi summary"
  printf '%s\n' "${summary[@]}"
  if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
  fi
}

case "${1:-}" in
  build) build "${triples[@]}" ;;
  test) test_all ;;
  *) echo "usage: scripts/pi.sh build|test" >&2; exit 2 ;;
esac
