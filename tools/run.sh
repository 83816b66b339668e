#!/usr/bin/env bash
# The main job: install, build, prepare the embedded corpus and train the default model on 2
# data-parallel ranks (one BLAS thread each). Extra arguments go to `tapestry train` (e.g. --steps 50).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
./build/src/tapestry data prepare inputs/corpus/licenses.txt -o data
OPENBLAS_NUM_THREADS=1 tools/mpirun.sh -np 2 -x OPENBLAS_NUM_THREADS ./build/src/tapestry train -c inputs/default.toml "$@"
