#!/usr/bin/env bash
# The main job: install, build, prepare the embedded corpus and train the default model.
# Extra arguments go to `tapestry train` (e.g. --steps 50).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
./build/src/tapestry data prepare inputs/corpus/licenses.txt -o data
tools/mpirun.sh -np 1 ./build/src/tapestry train -c inputs/default.toml "$@"
