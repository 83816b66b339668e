#!/usr/bin/env bash
# Install, build, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh -DTAPESTRY_BUILD_TESTS=ON
tools/test_oracles.sh
cd build
ctest --output-on-failure --timeout 600
