#!/usr/bin/env bash
# Test oracles that are not Tapestry's dependencies: Node.js and the npm package `tiktoken`
# (OpenAI's BPE, the golden ids of tests/tiktoken_golden.sh), installed once into
# ~/.cache/tapestry/npm. Never a runtime dependency. Where they cannot be installed (no network)
# the test reports itself skipped.
set -uo pipefail
dir=${TAPESTRY_NPM_DIR:-$HOME/.cache/tapestry/npm}
version=1.0.22
if ! command -v npm >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "tapestry test oracles: installing nodejs npm"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm; } >/dev/null 2>&1 ||
    echo "tapestry test oracles: could not install nodejs/npm; tiktoken_golden will be skipped"
fi
if command -v npm >/dev/null && [ ! -f "$dir/node_modules/tiktoken/package.json" ]; then
  mkdir -p "$dir"
  echo "tapestry test oracles: npm install tiktoken@$version into $dir"
  npm install --silent --no-audit --no-fund --prefix "$dir" "tiktoken@$version" >/dev/null 2>&1 ||
    echo "tapestry test oracles: npm install failed; tiktoken_golden will be skipped"
fi
exit 0
