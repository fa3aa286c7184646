#!/usr/bin/env bash
# Builds, once, an arm64 Debian bookworm root (a Raspberry Pi 4 stand-in run under qemu-user) holding Python 3.11 and
# the aarch64 Apache TVM wheel, and prints its path on the last line. Used by tests/test_rasp4_qemu.py.
#   Run things inside with:  chroot "$dir" env TVM_USE_RUNTIME_LIB=1 /root/venv/bin/python ...
# Cached outside the checkout under ${LCS_CACHE_DIR:-$HOME/.cache/lcs}/arm64-root-<hash of this script and the TVM
# pins>; built in a temp folder and renamed, so a half-built root is never used.
#
# Nothing runs under emulation while building: debootstrap's first stage (--foreign) only resolves and downloads the
# packages; every .deb is then unpacked natively with `dpkg-deb -x` (no maintainer scripts: the test needs files, not
# a configured system), and the wheels are installed by this machine's pip for the aarch64 platform. Running
# debootstrap's second stage under qemu-user instead took 954 s on a fresh machine.
# Needs root (debootstrap, chroot), debootstrap, qemu-user-static and network access to a Debian mirror and PyPI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${LCS_CACHE_DIR:-$HOME/.cache/lcs}
python=${PYTHON:-python3}
mirror=${LCS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

pins=$(grep -hE '^(apache-tvm|apache-tvm-ffi|numpy)==' "$root"/requirements/*.txt | sort)
[ "$(echo "$pins" | wc -l)" -eq 3 ] || { echo "arm64-root: cannot find the apache-tvm, apache-tvm-ffi and numpy pins in requirements/" >&2; exit 1; }
key=$( (cat "$0"; echo "$pins") | sha256sum | cut -c1-16)
dir="$cache/arm64-root-$key"
if [ -f "$dir/.complete" ]; then echo "$dir"; exit 0; fi

if [ "$(id -u)" -ne 0 ]; then
  echo "arm64-root: building the arm64 root needs root (debootstrap and chroot); run as root or with sudo" >&2; exit 1
fi
for tool in debootstrap dpkg-deb qemu-aarch64-static chroot; do
  command -v "$tool" >/dev/null || { echo "arm64-root: $tool is missing (apt-get install debootstrap qemu-user-static)" >&2; exit 1; }
done
# qemu-user must be registered with the kernel so that arm64 programs inside the root run transparently
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f "$conf" ] || { echo "arm64-root: $conf is missing (apt-get install qemu-user-static)" >&2; exit 1; }
  cat "$conf" > /proc/sys/fs/binfmt_misc/register
fi

mkdir -p "$cache"
exec 9>"$cache/arm64-root.lock"
flock 9   # one builder at a time; a second caller waits, then finds the finished root
if [ -f "$dir/.complete" ]; then echo "$dir"; exit 0; fi

tmp="$dir.tmp.$$"
cleanup() {
  for m in $(grep -o " $tmp[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
echo "arm64-root: building $dir (one time, about a minute)" >&2
# --foreign: resolve, download and unpack the essential packages; the included ones are only downloaded
debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,libstdc++6 bookworm "$tmp" "$mirror" >&2
for deb in "$tmp"/var/cache/apt/archives/*.deb; do
  dpkg-deb -x "$deb" "$tmp"
done
rm -f "$tmp"/var/cache/apt/archives/*.deb
# a venv without pip (ensurepip would run pip under emulation); the wheels come from this machine's pip
chroot "$tmp" /usr/bin/python3 -m venv --without-pip /root/venv >&2
site="$tmp/root/venv/lib/python3.11/site-packages"
# shellcheck disable=SC2086
"$python" -m pip install -q --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
  --implementation cp --target "$site" $pins >&2
chroot "$tmp" /usr/bin/env TVM_USE_RUNTIME_LIB=1 /root/venv/bin/python -c \
  "import platform, tvm; from tvm.runtime.vm import VirtualMachine; print('arm64-root:', platform.machine(), 'tvm', tvm.__version__)" >&2
for m in $(grep -o " $tmp[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
touch "$tmp/.complete"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
