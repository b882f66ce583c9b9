#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test with ctest.
#
#   scripts/test.sh            everything (needs root: kernel tests load BPF programs)
#   scripts/test.sh -L unit    only tests labelled "unit" (no root needed)
#   any other arguments are passed to ctest (-R REGEX, -V, ...)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}

if [[ $EUID -ne 0 && " $* " != *" -L unit "* ]]; then
  echo "test.sh: the kernel and end-to-end tests need root (they load BPF programs and" >&2
  echo "test.sh: make network namespaces). Run as root, or 'scripts/test.sh -L unit'." >&2
  exit 1
fi

"$root/scripts/build.sh"

# Whatever happens to the tests, leave no namespaces, cgroups, pins or links behind.
trap '"$root/scripts/cleanup-test-state.sh"' EXIT
cd "$build"
ctest --output-on-failure --no-tests=error "$@"
