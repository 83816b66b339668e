#!/usr/bin/env bash
# wan.sh - emulate SITES supercomputer sites joined by a slow WAN on this one machine, and run MPI
# jobs (Tapestry) across them. Needs root, iproute2 (ip, tc with tbf), gcc, util-linux unshare and
# Open MPI. Nothing leaves the namespaces it makes: addresses are 10.77.<i>.x inside them only.
#
#   tools/wan/wan.sh up              make the sites (tears any previous ones down first)
#   tools/wan/wan.sh run PROG ARGS   mpirun PROG with RANKS_PER_SITE ranks on each of RUN_SITES sites
#   tools/wan/wan.sh check           measure round trip and TCP rate from the first site to the second
#   tools/wan/wan.sh down            kill everything running in the namespaces and delete them
#
# Env: SITES (2), RANKS_PER_SITE (2), DELAY_MS one-way (20; 0: none), RATE per site link and
# direction (1gbit; 0: unlimited), MTU (9000), RUN_SITES (run on the first N sites; all),
# MPIRUN_ARGS (extra mpirun options), WAN_STATE (/tmp/tapestry-wan: delay line, hostfile, log).
#
# Layout and why:
# - Site i is network namespace site<X> (X = A, B, ...) whose veth wan0 (10.77.i.1) links to the
#   router namespace "wan" (v<X>, 10.77.i.254). Every site runs in its own UTS namespace with
#   hostname site<X>, so Open MPI sees one node per site: shared memory inside a site, TCP across
#   sites. Same hostname everywhere would make the sites' shared-memory segments collide.
# - mpirun runs in "wan". Ranks cannot be started with plain `ip netns exec`: the PMIx client
#   reaches its daemon over 127.0.0.1, which is per namespace. So mpirun's rsh agent is this
#   script (`wan.sh agent HOST CMD`), which starts one orted per site with
#   `ip netns exec site<X> unshare --uts sh -c "hostname site<X>; CMD"`; plm_rsh_no_tree_spawn
#   keeps all orteds started from mpirun.
# - The kernel has no sch_netem, so the one-way delay is delayline.c: a TUN device dly0 in "wan";
#   policy routing (ip rule iif v<X> lookup 100, default dev dly0) sends every packet coming from
#   a site into it, and it writes the packet back after DELAY_MS; the kernel then forwards it to
#   the destination site. Traffic to the router itself (mpirun <-> orted) is not delayed.
# - RATE is `tc tbf` on both ends of each site link (site -> WAN on wan0, WAN -> site on v<X>).
# - TCP buffers are raised to 32 MB in the sites, or TCP stalls near 600 Mbit/s at a 40 ms RTT.
# - `lo` is up everywhere. On 2 cores: --bind-to none and mpi_yield_when_idle, else busy polling
#   ruins timings. Daemons can outlive a failed job, so `down` kills `ip netns pids` first.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SITES=${SITES:-2} RANKS_PER_SITE=${RANKS_PER_SITE:-2} DELAY_MS=${DELAY_MS:-20} RATE=${RATE:-1gbit}
MTU=${MTU:-9000} WAN_STATE=${WAN_STATE:-/tmp/tapestry-wan}
W=(ip netns exec wan)

die() { echo "wan.sh: $*" >&2; exit 1; }
site_names() { local i; for ((i = 0; i < $1; i++)); do printf 'site%b ' "\\x$(printf %x $((65 + i)))"; done; }
made_sites() { cat "$WAN_STATE/sites" 2>/dev/null || true; }

preflight() {
  [ "$(id -u)" = 0 ] || die "must run as root (it makes network namespaces and qdiscs)"
  local c
  for c in ip tc gcc unshare mpirun; do
    command -v "$c" >/dev/null || die "'$c' not found (need iproute2 with tc, gcc, util-linux, Open MPI)"
  done
  if ! [[ $SITES =~ ^[0-9]+$ ]] || ((SITES < 1 || SITES > 26)); then die "SITES must be 1..26"; fi
}

down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local ns sig pids names
  names="wan $(made_sites) $(site_names "$SITES")"
  for sig in TERM KILL; do
    for ns in $names; do
      mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
      ((${#pids[@]} == 0)) || kill -"$sig" "${pids[@]}" 2>/dev/null || true
    done
    [ $sig = TERM ] && sleep 1
  done
  for ns in $names; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$WAN_STATE/sites" "$WAN_STATE/hostfile"
}

up() {
  preflight
  down
  mkdir -p "$WAN_STATE"
  local tbf=(tbf rate "$RATE" burst 256kb latency 100ms) i=0 s S
  ip netns add wan
  "${W[@]}" ip link set lo up
  "${W[@]}" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  if [ "$DELAY_MS" != 0 ]; then
    gcc -O2 -Wall -Wextra -o "$WAN_STATE/delayline" "$HERE/delayline.c"
    "${W[@]}" ip tuntap add dev dly0 mode tun
    "${W[@]}" ip link set dly0 mtu "$MTU" txqueuelen 10000 up
    "${W[@]}" ip route add default dev dly0 table 100
    # SCHED_FIFO so that releases are on time while the machine is busy compiling or training
    setsid chrt -f 50 "${W[@]}" "$WAN_STATE/delayline" dly0 "$DELAY_MS" "$MTU" \
      >"$WAN_STATE/delayline.log" 2>&1 </dev/null &
    for ((i = 0; i < 50; i++)); do   # wait until the delay line holds the TUN device
      [[ $("${W[@]}" ip link show dly0) == *NO-CARRIER* ]] || break
      sleep 0.1
    done
    ((i < 50)) || die "delay line did not start: $(cat "$WAN_STATE/delayline.log")"
  fi
  site_names "$SITES" >"$WAN_STATE/sites"
  i=0
  for s in $(made_sites); do
    i=$((i + 1)) S="ip netns exec $s"
    ip netns add "$s"
    ip link add wan0 netns "$s" mtu "$MTU" type veth peer name "v${s#site}" netns wan mtu "$MTU"
    $S ip link set lo up
    $S ip addr add "10.77.$i.1/24" dev wan0
    $S ip link set wan0 up
    $S ip route add 10.77.0.0/16 via "10.77.$i.254"
    $S sysctl -qw net.ipv4.tcp_wmem="4096 16384 33554432" net.ipv4.tcp_rmem="4096 131072 33554432"
    "${W[@]}" ip addr add "10.77.$i.254/24" dev "v${s#site}"
    "${W[@]}" ip link set "v${s#site}" up
    if [ "$RATE" != 0 ]; then
      $S tc qdisc add dev wan0 root "${tbf[@]}" || die "tc tbf failed (kernel without sch_tbf?)"
      "${W[@]}" tc qdisc add dev "v${s#site}" root "${tbf[@]}"
    fi
    [ "$DELAY_MS" = 0 ] || "${W[@]}" ip rule add iif "v${s#site}" lookup 100 pref 100
  done
  echo "wan.sh: sites: $(made_sites)| one-way delay ${DELAY_MS} ms | rate ${RATE} | mtu ${MTU}"
}

run() {
  [ -s "$WAN_STATE/sites" ] || die "no sites: run 'wan.sh up' first"
  local s n=0
  for s in $(made_sites); do
    if ((n++ < ${RUN_SITES:-99})); then echo "$s slots=$RANKS_PER_SITE"; fi
  done >"$WAN_STATE/hostfile"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
  "${W[@]}" mpirun -np $(($(wc -l <"$WAN_STATE/hostfile") * RANKS_PER_SITE)) \
    --hostfile "$WAN_STATE/hostfile" --map-by slot --bind-to none \
    --mca plm_rsh_agent "$HERE/wan.sh agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca oob_tcp_if_include 10.77.0.0/16 --mca btl self,vader,tcp \
    --mca btl_tcp_if_include 10.77.0.0/16 --mca mpi_yield_when_idle 1 ${MPIRUN_ARGS:-} "$@"
}

check() {   # round trip and TCP rate, first site -> second, over the real path (probe.py)
  local a b
  read -r a b _ <<<"$(made_sites)"
  [ -n "${b:-}" ] || die "check needs 2 sites up"
  timeout 60 ip netns exec "$b" python3 "$HERE/probe.py" serve 5999 &
  timeout 60 ip netns exec "$a" python3 "$HERE/probe.py" client 10.77.2.1 5999 "${CHECK_MB:-64}"
  wait
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  run) shift; run "$@" ;;
  check) check ;;
  agent) h=$2; shift 2; exec ip netns exec "$h" unshare --uts sh -c "hostname $h; $*" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
