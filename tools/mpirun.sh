#!/usr/bin/env bash
# mpirun with the settings this project runs under: allowed as root (containers, CI), and usable
# with more ranks than cores. Usage: tools/mpirun.sh -np N program args...
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 "$@"
