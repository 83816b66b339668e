# prelude.sh - sourced by the tools/wan/ benchmark scripts (from the repository root): die(), the
# checks each of them makes, the sites' teardown on exit, and the corpus prepared into $DATA.
# Needs TAPESTRY, WAN, OUT and DATA set. Usage: . tools/wan/prelude.sh; wan_prelude NAME
die() { echo "$WAN_SCRIPT: $*" >&2; exit 1; }
wan_prelude() {
  WAN_SCRIPT=$1
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -x "$TAPESTRY" ] || die "no tapestry binary at '$TAPESTRY' (set TAPESTRY=...)"
  trap '"$WAN" down >/dev/null 2>&1' EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$OUT" "$DATA"
  "$TAPESTRY" data prepare inputs/corpus/licenses.txt -o "$DATA" >/dev/null || die "data prepare failed"
}
