#!/usr/bin/env bash
# Install the Debian packages spqr needs to build and test (idempotent).
# As root: installs missing ones with apt-get. Otherwise prints the command.
#   scripts/install-deps.sh [--plots]
# --plots (make demo) also wants gnuplot with the pngcairo terminal
# (gnuplot-nox), which scripts/ablate.sh uses for its plots. It is optional:
# when it cannot be installed the script says so and still succeeds, and the
# plots are skipped with a note. make test never asks for it.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev liblapacke-dev libcjson-dev
      libcmocka-dev libxxhash-dev clang time)
optional=()
# any gnuplot already installed (gnuplot-qt, gnuplot-x11 also have pngcairo) will do
[ "${1:-}" = --plots ] && ! command -v gnuplot >/dev/null 2>&1 && optional+=(gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# libFuzzer runtime matching the installed clang (for the fuzz targets)
if command -v clang >/dev/null 2>&1; then
  cv=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
  [ -n "$cv" ] && { dpkg -s "libclang-rt-$cv-dev" >/dev/null 2>&1 || missing+=("libclang-rt-$cv-dev"); }
fi
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "installing: ${missing[*]} ${optional[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  [ ${#missing[@]} -eq 0 ] || apt-get install -y -qq "${missing[@]}" >/dev/null
  # clang may have just arrived: fetch its libFuzzer runtime too
  if command -v clang >/dev/null 2>&1; then
    cv=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
    dpkg -s "libclang-rt-$cv-dev" >/dev/null 2>&1 || apt-get install -y -qq "libclang-rt-$cv-dev" >/dev/null || true
  fi
  if [ ${#optional[@]} -gt 0 ] && ! apt-get install -y -qq "${optional[@]}" >/dev/null; then
    echo "note: could not install ${optional[*]} (optional: scripts/ablate.sh skips its plots)" >&2
  fi
elif [ ${#missing[@]} -eq 0 ]; then
  echo "note: optional ${optional[*]} (plots of scripts/ablate.sh) is missing; to add it run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${optional[*]}" >&2
else
  echo "spqr needs these Debian packages; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]} ${optional[*]}" >&2
  exit 1
fi
