#!/usr/bin/env bash
# Stops what tools/slurm/start.sh started (by PID) and removes its state.
D=${TAPESTRY_SLURM_DIR:-/tmp/tapestry-slurm}
stop() {
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$1"
}
stop "$D/run/slurmd.pid"
stop "$D/run/slurmctld.pid"
stop "$D/run/munged.pid"
rm -rf "$D/state" "$D/log" "$D/run" "$D/slurm.conf" "$D/plugstack.conf"
