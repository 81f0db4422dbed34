#!/bin/bash
# Issue 19's figure: rootless against root for ../shared/bench's
# many-steps, incremental and big-layer scenarios. Both run through
# `runuser` (root, and an ordinary user with subordinate ids), each with a
# store of its own; the base is bench-busybox from /tmp/bench-bases (made
# by ../shared/bench/bases.sh), given as a named context. Phases: cold (an
# empty store) and, where the scenario has mutate.sh, incr (one change,
# then the rebuild). Prints the median of RUNS per scenario and phase for
# each, and the ratio.
#
#   RBUILD=target/release/rbuild builder/benches/rootless.sh [RUNS] [SCENARIO...]
set -euo pipefail
rbuild=$(realpath "${RBUILD:-target/release/rbuild}")
runs=${1:-3}
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(many-steps incremental big-layer)
bench=$(realpath "$(dirname "$0")/../../../shared/bench")
user=${BENCH_USER:-rbuild-bench}
id "$user" >/dev/null 2>&1 || useradd -m "$user"
grep -q "^$user:" /etc/subuid || echo "$user:300000:65536" >>/etc/subuid
grep -q "^$user:" /etc/subgid || echo "$user:300000:65536" >>/etc/subgid

work=$(mktemp -d /tmp/rootless-bench.XXXX)
trap 'rm -rf "$work"' EXIT
cp "$rbuild" "$work/rbuild"
cp -a /tmp/bench-bases/busybox "$work/base"
chmod 755 "$work"

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# as WHO DIR ARGS...: rbuild as WHO with its store in DIR
as() {
  local who=$1 dir=$2
  shift 2
  if ! runuser -u "$who" -- env HOME="$dir" XDG_DATA_HOME="$dir/data" \
    "$work/rbuild" --root "$dir/data/rbuild" "$@" >"$work/log" 2>&1; then
    cat "$work/log" >&2
    kill $$
  fi
}
timed() {
  local start end
  start=$(date +%s.%N)
  as "$@"
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# Root's and the user's runs alternate, so neither meets more of the
# other's writeback or cache state.
for s in "${scenarios[@]}"; do
  for who in root "$user"; do
    ctx="$work/$s-$who/ctx"
    mkdir -p "$ctx"
    sh "$bench/scenarios/$s/gen.sh" "$ctx" >/dev/null
    cp "$bench/scenarios/$s/Dockerfile" "$ctx/Dockerfile"
    chown -R "$who" "$work/$s-$who"
  done
  run() { # WHO: one build of the scenario, timed
    timed "$1" "$work/$s-$1/store" build \
      --build-context "bench-busybox=oci-layout://$work/base:latest" "$work/$s-$1/ctx"
  }
  declare -A cold=() incr=()
  for _ in $(seq "$runs"); do
    for who in root "$user"; do
      rm -rf "$work/$s-$who/store"
      install -d -o "$who" "$work/$s-$who/store"
      cold[$who]+="$(run "$who") "
    done
  done
  if [ -f "$bench/scenarios/$s/mutate.sh" ]; then
    for _ in $(seq "$runs"); do
      for who in root "$user"; do
        sh "$bench/scenarios/$s/mutate.sh" "$work/$s-$who/ctx" >/dev/null
        incr[$who]+="$(run "$who") "
      done
    done
  fi
  for phase in cold incr; do
    declare -n times=$phase
    if [ -n "${times[root]:-}" ]; then
      r=$(tr ' ' '\n' <<<"${times[root]}" | grep . | median)
      u=$(tr ' ' '\n' <<<"${times[$user]}" | grep . | median)
      echo "$s $phase: root ${r}s, user ${u}s, ratio $(echo "scale=2; $u / $r" | bc)"
    fi
    unset -n times
  done
  unset cold incr
done
