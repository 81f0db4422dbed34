#!/bin/bash
# Two independent CPU-bound stages against one of them alone: with the
# stages run side by side, the two-stage build should take about as long as
# the one-stage build (issue goal: "two parallel stages ~ the longer stage
# alone"). Each stage hashes 384 MiB with busybox sha256sum (~2 s of one
# core); every build is cold (a fresh --root). Needs root and busybox-static.
#
#   RBUILD=target/release/rbuild builder/benches/parallel-stages.sh [RUNS]
set -euo pipefail
rbuild=${RBUILD:-target/release/rbuild}
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp /bin/busybox "$work/busybox"
cat >"$work/work.sh" <<'WORK'
# work.sh SEED: a 32 MiB block (zeros + seed) hashed 12 times
set -eu
blk=/tmp/blk.$$
head -c 33554432 /dev/zero >"$blk"
cat "$1" >>"$blk"
set --
i=0
while [ $i -lt 12 ]; do set -- "$@" "$blk"; i=$((i + 1)); done
sha256sum "$@" | sha256sum
rm -f "$blk"
WORK
echo "seed a" >"$work/a.seed"
echo "seed b" >"$work/b.seed"

base='FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp
'
stage() { # NAME
  printf 'FROM base AS %s\nCOPY work.sh %s.seed /in/\nRUN sh /in/work.sh /in/%s.seed > /%s.sum\n\n' "$1" "$1" "$1" "$1"
}
{
  echo "$base"
  stage a
  printf 'FROM base\nCOPY --from=a /a.sum /sums/\nRUN cat /sums/* | sha256sum > /all\n'
} >"$work/Dockerfile.one"
{
  echo "$base"
  stage a
  stage b
  printf 'FROM base\nCOPY --from=a /a.sum /sums/\nCOPY --from=b /b.sum /sums/\nRUN cat /sums/* | sha256sum > /all\n'
} >"$work/Dockerfile.two"

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

declare -A result
for kind in one two; do
  times=()
  for _ in $(seq "$runs"); do
    rm -rf "$work/root"
    start=$(date +%s.%N)
    "$rbuild" build --root "$work/root" --progress quiet -f "$work/Dockerfile.$kind" "$work" >/dev/null
    end=$(date +%s.%N)
    times+=("$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}')")
  done
  result[$kind]=$(printf '%s\n' "${times[@]}" | median)
  echo "$kind stage(s): ${times[*]} s (median ${result[$kind]} s)"
done
awk -v a="${result[one]}" -v b="${result[two]}" 'BEGIN {printf "two stages / one stage: %.2f\n", b / a}'
