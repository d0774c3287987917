#!/usr/bin/env bash
# Prepares the cross toolchain for the Raspberry Pi targets from Debian's
# packages, and prints what it set up:
#
#   - cross linkers (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf, with the
#     cross C libraries for static linking) and qemu-user, installed with apt;
#   - Debian's `rustc-web` compiler with the standard libraries for
#     aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf, downloaded
#     with `apt-get download` and unpacked with `dpkg -x` into
#     $PI_TOOLCHAIN_DIR (default target/pi-toolchain), never installed: it
#     would conflict with nothing of rustup's, but Debian's `rustc` package
#     declares a conflict with it, and the host's rustup toolchain stays as it
#     is. cargo (rustup's) drives it with RUSTC=$PI_TOOLCHAIN_DIR/bin/rustc.
#
# Idempotent: a second run finds everything in place and only checks it.
# Needs root (or sudo) the first time, for apt. Debian 12 (bookworm) or later.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${PI_TOOLCHAIN_DIR:-$repo/target/pi-toolchain}"
triples=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
foreign_archs=(arm64 armhf)
# Debian packages installed with apt (checked on every run).
apt_packages=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross
              libc6-dev-armhf-cross qemu-user libllvm19)

say() { printf 'pi-toolchain: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "needs root to run: $*"
  fi
}

# apt-get update with arm64/armhf added exits 100 when one foreign index is
# stale on the mirror (seen with bookworm-security's armhf index); what
# matters is whether the packages we need can then be found, which the
# callers check.
apt_update() {
  say "apt-get update"
  local rc=0
  as_root apt-get update -qq >/dev/null 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 100 ]; then die "apt-get update failed with exit code $rc"; fi
  [ "$rc" -eq 0 ] || say "apt-get update exited $rc (a stale index); carrying on"
}

updated=0
ensure_updated() { if [ "$updated" -eq 0 ]; then apt_update; updated=1; fi; }

# 1. Multiarch, so that apt can see the arm64 and armhf standard libraries.
for arch in "${foreign_archs[@]}"; do
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    say "dpkg --add-architecture $arch"
    as_root dpkg --add-architecture "$arch"
    updated=0
    need_update=1
  fi
done

# 2. Linkers, cross C libraries, qemu-user and the LLVM library rustc-web links to.
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  ensure_updated
  say "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# 3. rustc-web and the target standard libraries, unpacked into $dir: the
# release of Cargo.toml's rust-version (the Pi compiler every crate must
# build with), not merely the newest (bookworm-security also carries newer
# ones, which link to another LLVM).
msrv="$(sed -nE 's/^rust-version *= *"([0-9]+\.[0-9]+).*/\1/p' "$repo/Cargo.toml" | head -n 1)"
[ -n "$msrv" ] || die "no rust-version in $repo/Cargo.toml"
stamp="$dir/version"
if [ -x "$dir/bin/rustc" ] && [ -s "$stamp" ] && grep -q "^$msrv\." "$stamp" \
   && "$dir/bin/rustc" -V >/dev/null 2>&1; then
  version="$(cat "$stamp")"
else
  if [ "${need_update:-0}" -eq 1 ] || ! apt-cache show libstd-rust-web-dev:armhf >/dev/null 2>&1; then
    ensure_updated
  fi
  # The newest $msrv.x that exists for amd64, arm64 and armhf alike.
  versions() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u; }
  version="$(comm -12 <(versions rustc-web) <(versions libstd-rust-web-dev:arm64) \
             | comm -12 - <(versions libstd-rust-web-dev:armhf) | grep "^$msrv\." | sort -V | tail -n 1 || true)"
  [ -n "$version" ] || die "no rustc-web $msrv.x is available for amd64, arm64 and armhf alike (is this Debian 12, with apt-get update done?)"
  major_minor="$(printf '%s' "$version" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')"
  debs=("rustc-web=$version" "libstd-rust-web-$major_minor=$version" "libstd-rust-web-dev=$version")
  for arch in "${foreign_archs[@]}"; do
    debs+=("libstd-rust-web-$major_minor:$arch=$version" "libstd-rust-web-dev:$arch=$version")
  done
  work="$(mktemp -d "${TMPDIR:-/tmp}/pi-toolchain.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  say "apt-get download ${debs[*]}"
  # (As root, apt warns that it downloads unsandboxed into a folder its _apt
  # user cannot write; that is expected.)
  if ! (cd "$work" && apt-get download -qq "${debs[@]}" >"$work/download.log" 2>&1); then
    cat "$work/download.log" >&2
    die "apt-get download failed"
  fi
  mkdir -p "$work/root"
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
  # Debian's rustc finds librustc_driver and libstd's .so in the system
  # library folder; the wrapper points the loader at the unpacked copy.
  mkdir -p "$work/root/bin"
  for tool in rustc rustdoc; do
    cat >"$work/root/bin/$tool" <<EOF
#!/bin/sh
# Debian's $tool $version from rustc-web, unpacked by scripts/pi-toolchain.sh.
LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/usr/bin/$tool" "\$@"
EOF
    chmod 755 "$work/root/bin/$tool"
  done
  printf '%s\n' "$version" >"$work/root/version"
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  mv "$work/root" "$dir"
fi

# 4. binfmt_misc entries, so that an ARM program that an emulated test starts
#    (the abide binary, or the test binary re-run as a child) is run by qemu
#    too: qemu-user passes a guest's execve to the host kernel. Registered
#    with the F flag (the kernel keeps qemu open); they last until reboot and
#    concern ARM ELF files only. Skipped when an enabled entry exists.
binfmt=/proc/sys/fs/binfmt_misc
elf_mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
declare -A elf_magic=(
  [arm]='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
  [aarch64]='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
)
binfmt_entry() { # prints the enabled entry that runs ARM files of $1 with qemu, if any
  local entry
  for entry in "$binfmt"/*; do
    [ -f "$entry" ] || continue
    grep -qx enabled "$entry" 2>/dev/null && grep -q "interpreter .*qemu-$1\b" "$entry" && { echo "$entry"; return 0; }
  done
  return 1
}
binfmt_state=()
for arch in arm aarch64; do
  if entry="$(binfmt_entry "$arch")"; then
    binfmt_state+=("qemu-$arch (${entry##*/})")
    continue
  fi
  if [ ! -w "$binfmt/register" ]; then
    as_root mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
  fi
  if printf '%s' ":qemu-$arch:M::${elf_magic[$arch]}:$elf_mask:$(command -v "qemu-$arch"):F" \
       | as_root tee "$binfmt/register" >/dev/null 2>&1 && binfmt_entry "$arch" >/dev/null; then
    say "registered qemu-$arch in binfmt_misc"
    binfmt_state+=("qemu-$arch (registered now)")
  else
    say "warning: could not register qemu-$arch in binfmt_misc; tests that start a child process will fail under emulation"
    binfmt_state+=("qemu-$arch MISSING")
  fi
done

# 5. Check and print what is there.
rustc_v="$("$dir/bin/rustc" -V)" || die "$dir/bin/rustc does not run"
for triple in "${triples[@]}"; do
  ls "$dir/usr/lib/rustlib/$triple/lib/"libstd-*.rlib >/dev/null 2>&1 \
    || die "no standard library for $triple in $dir"
done
for cmd in aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64 qemu-arm; do
  command -v "$cmd" >/dev/null || die "$cmd is missing"
done

cat <<EOF
Raspberry Pi cross toolchain ready (Debian rustc-web $version):
  RUSTC=$dir/bin/rustc  ($rustc_v)
  RUSTDOC=$dir/bin/rustdoc
  targets:  ${triples[*]}
  linkers:  $(aarch64-linux-gnu-gcc -dumpfullversion) aarch64-linux-gnu-gcc, $(arm-linux-gnueabihf-gcc -dumpfullversion) arm-linux-gnueabihf-gcc
  emulator: qemu-aarch64, qemu-arm $(qemu-arm --version | head -n 1 | sed 's/^qemu-arm //')
  binfmt_misc: ${binfmt_state[*]}
  host cargo: $(cargo -V) (rustup's toolchain is unchanged: $(rustc -V))
EOF
