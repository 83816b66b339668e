#!/usr/bin/env bash
# Starts a real single-node Slurm (munged, slurmctld, slurmd) without systemd; root only.
# Installs slurm-wlm, slurm-wlm-torque and munge if missing. Prints the SLURM_CONF to export.
# Environment: TAPESTRY_SLURM_DIR (state, default /tmp/tapestry-slurm), TAPESTRY_SLURM_CPUS (default 4).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${TAPESTRY_SLURM_DIR:-/tmp/tapestry-slurm}
[ "$(id -u)" -eq 0 ] || { echo "tools/slurm/start.sh: must run as root (it starts slurmctld, slurmd, munged)" >&2; exit 1; }
mkdir -p "$D"/state/ctld "$D"/state/d "$D"/run "$D"/log
sed -e "s|@DIR@|$D|g" -e "s|@CPUS@|${TAPESTRY_SLURM_CPUS:-4}|g" "$here/slurm.conf.in" > "$D/slurm.conf"
echo "required /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_pbs.so" > "$D/plugstack.conf"
export SLURM_CONF=$D/slurm.conf
if [ -s "$D/run/slurmctld.pid" ] && kill -0 "$(cat "$D/run/slurmctld.pid")" 2>/dev/null; then
  echo "export SLURM_CONF=$SLURM_CONF"; exit 0
fi
missing=()
for p in slurm-wlm slurm-wlm-torque munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# munged must run as user munge, with the key the package created.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$D/run/munged.pid"
fi
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF" -N localhost
state=""
for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || { echo "slurm node not idle (state '$state')" >&2; tail -n 20 "$D"/log/*.log >&2; exit 1; }
echo "export SLURM_CONF=$SLURM_CONF"
