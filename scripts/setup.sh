#!/usr/bin/env bash
# Installs everything lcs needs on a fresh Debian machine and prints the venv's path on its last line.
#   apt packages (cross compilers, QEMU), a Python venv with the pinned requirements, lcs itself.
# The venv lives outside the checkout, keyed by a hash of requirements/ and the Python version,
# so a second run (or CI on the same machine) reuses it in seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LCS_CACHE_DIR:-$HOME/.cache/lcs}
python=${PYTHON:-python3}

apt_packages=(gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm qemu-user-static
              gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
              socat debootstrap)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
apt_pid=""
if [ ${#missing[@]} -gt 0 ]; then
  # in the background: the venv below needs none of these, so the two downloads overlap
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  ( $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ) &
  apt_pid=$!
fi

key=$( (cat "$root"/requirements/*.txt; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "setup: building venv $venv (one time, about 2 minutes)" >&2
  mkdir -p "$cache"
  tmp="$venv.tmp.$$"
  rm -rf "$tmp"
  "$python" -m venv "$tmp"
  "$tmp/bin/pip" install -q --upgrade pip >&2
  # byte-compiled afterwards on every core (pip compiles its ~14,000 files on one); like pip, skip the few files
  # some packages ship that are not Python 3 (templates, test data)
  "$tmp/bin/pip" install -q --no-compile -r "$root/requirements/base.txt" -r "$root/requirements/tvm.txt" \
    -r "$root/requirements/dev.txt" >&2
  "$tmp/bin/python" -m compileall -q -j 0 "$tmp/lib" >/dev/null 2>&1 || true
  touch "$tmp/.complete"
  rm -rf "$venv"
  mv "$tmp" "$venv"
  # venvs hard-code their path in scripts: rebuild the entry points at the final location.
  # Regular files only: sed stops at the first non-file (a __pycache__ that a package's scripts leave in bin/), and
  # rewriting the python symlinks would turn them into copies.
  find "$venv/bin" -maxdepth 1 -type f -exec sed -i "s#$tmp#$venv#g" {} +
fi
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  echo "setup: installing Debian packages failed (apt-get's messages are above)" >&2
  exit 1
fi
# lcs itself, as a real (non-editable) install, so the `lcs` command is the packaged one.
"$venv/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall "$root" >&2
echo "$venv"
