#!/bin/bash
# A cache that travels, timed: the many-steps scenario of ../shared/bench
# (60 instructions, 31 RUN) built on root A with --cache-to a local
# docker-registry (mode=max), then (1) rebuilt on A, all cached: the warm
# local time, and (2) built on an empty root B with --cache-from: the warm
# registry time (issue goal: within 1.5x of the local one). Also counts the
# bytes B downloaded against the size of the final image's layers.
# The base image comes from the same registry through a docker.io mirror.
# Needs root, docker-registry, busybox-static.
#
#   RBUILD=target/release/rbuild builder/benches/cache-transfer.sh [RUNS]
set -euo pipefail
rbuild=${RBUILD:-target/release/rbuild}
runs=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
scenario=${SCENARIO_DIR:-$here/../../../shared/bench/scenarios/many-steps}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $reg
  secret: bench
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

# The base, as Docker Hub would serve it, through a mirror.
mkdir -p "$work/base"
cp /bin/busybox "$work/base/"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nRUN mkdir -p /tmp\n' >"$work/base/Dockerfile"
"$rbuild" --root "$work/seed" build -q --push -t "$reg/library/bench-busybox:latest" "$work/base" >/dev/null
mirror() { mkdir -p "$1"; printf '[registry."docker.io"]\nmirrors = ["%s"]\n' "$reg" >"$1/config.toml"; }

ctx=$work/ctx
sh "$scenario/gen.sh" "$ctx"
cp "$scenario/Dockerfile" "$ctx/Dockerfile"
mirror "$work/a"
"$rbuild" --root "$work/a" build -q -t many:1 --cache-to "type=registry,ref=$reg/many:cache,mode=max" "$ctx" >/dev/null

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

local_times=() remote_times=()
for i in $(seq "$runs"); do
  local_times+=("$(secs "$rbuild" --root "$work/a" build -q -t many:1 "$ctx")")
  b=$work/b$i
  mirror "$b"
  before=$(wc -l <"$work/registry.log")
  remote_times+=("$(secs "$rbuild" --root "$b" build -q -t many:1 --cache-from "$reg/many:cache" "$ctx")")
  bytes=$(tail -n +$((before + 1)) "$work/registry.log" | grep '"GET /v2/[^ ]*/blobs/' | awk '{s += $10} END {print s + 0}')
done
local_med=$(printf '%s\n' "${local_times[@]}" | median)
remote_med=$(printf '%s\n' "${remote_times[@]}" | median)
image=$("$rbuild" --root "$work/b1" inspect many:1 | python3 -c 'import json,sys; m=json.load(sys.stdin)["Manifest"]; print(sum(l["size"] for l in m["layers"]))')
printf 'warm local root:     %6.2fs\n' "$local_med"
printf 'empty root + cache:  %6.2fs  (%.2fx the local time)\n' "$remote_med" "$(echo "$remote_med / $local_med" | bc -l)"
echo "downloaded by the last empty root: $bytes bytes of blobs; the image's layers as stored: $image bytes"
