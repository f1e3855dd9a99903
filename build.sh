#!/usr/bin/env bash
# shmkit's one entry point on a Debian 12 machine:
#   ./build.sh demos   install what is missing, build, run every demo
#   ./build.sh test    install what is missing, build, run the whole test suite through ctest
#   ./build.sh bench   install what is missing, build, run every benchmark (bench/run)
#   ./build.sh deps    only install what is missing
# Environment: BUILD_DIR (default build), CMAKE_ARGS (extra configure arguments),
# CTEST_ARGS (extra ctest arguments, e.g. "-L unit").
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-demos}
build=${BUILD_DIR:-build}

packages=(cmake ninja-build g++ pkg-config libboost-dev libboost-test-dev libfmt-dev python3
          gnuplot-nox libopenmpi-dev openmpi-bin)

install_deps() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  echo "installing: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
}

configure_build() {
  # shellcheck disable=SC2086
  cmake -S . -B "$build" -G Ninja ${CMAKE_ARGS:-}
  cmake --build "$build"
}

case "$what" in
  deps) install_deps ;;
  demos)
    install_deps
    configure_build
    while read -r demo; do
      [ -n "$demo" ] || continue
      echo
      echo "=== demo: $demo ==="
      timeout 120 "$build/demos/$demo"
    done < "$build/demos/demo-list.txt"
    echo
    echo "all demos ran"
    ;;
  test)
    install_deps
    configure_build
    # shellcheck disable=SC2086
    ctest --test-dir "$build" --output-on-failure -j "$(nproc)" ${CTEST_ARGS:-}
    ;;
  bench)
    install_deps
    configure_build
    bench/run "$build"
    ;;
  *)
    echo "usage: $0 demos|test|bench|deps" >&2
    exit 2
    ;;
esac
