#!/usr/bin/env bash
# Install the Debian packages spqr needs to build and test (idempotent).
# As root: installs missing ones with apt-get. Otherwise prints the command.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev liblapacke-dev libcjson-dev
      libcmocka-dev libxxhash-dev clang time)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# libFuzzer runtime matching the installed clang (for the fuzz targets)
if command -v clang >/dev/null 2>&1; then
  cv=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
  [ -n "$cv" ] && { dpkg -s "libclang-rt-$cv-dev" >/dev/null 2>&1 || missing+=("libclang-rt-$cv-dev"); }
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  # clang may have just arrived: fetch its libFuzzer runtime too
  if command -v clang >/dev/null 2>&1; then
    cv=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
    dpkg -s "libclang-rt-$cv-dev" >/dev/null 2>&1 || apt-get install -y -qq "libclang-rt-$cv-dev" >/dev/null || true
  fi
else
  echo "spqr needs these Debian packages; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
