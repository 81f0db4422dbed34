#!/bin/bash
# Push and pull of a 1 GiB image against a local docker-registry, rbuild
# beside `skopeo copy` of the same blobs in one run (issue goal: at least as
# fast as skopeo, 1.5x through parallel layers and streaming), and the
# requests a second push of the unchanged image makes (HEADs only).
#
# The image: 4 layers of 256 MiB (two random, two text). rbuild's first push
# compresses its layers (kept uncompressed in its store); that push is a
# warm-up, so the timed pushes move the same gzip blobs for both tools.
# Each tool pushes to a registry of its own (no cross-repository mounts).
# Needs root, docker-registry, skopeo, busybox-static.
#
#   RBUILD=target/release/rbuild builder/benches/registry.sh
set -euo pipefail
rbuild=${RBUILD:-target/release/rbuild}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_registry() { # NAME -> prints ADDR
  local port dir=$work/$1
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
  secret: bench
EOF
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "127.0.0.1:$port"
}
secs() { # COMMAND... -> seconds on stdout, the command's output dropped
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}

ctx=$work/ctx
mkdir -p "$ctx"
cp /bin/busybox "$ctx/"
head -c 268435456 /dev/urandom >"$ctx/r1"
head -c 268435456 /dev/urandom >"$ctx/r2"
# (the generators die of SIGPIPE when head has enough)
{ yes "a line of text for layer three, compressible" || true; } | head -c 268435456 >"$ctx/t3"
{ seq 1 100000000 || true; } | head -c 268435456 >"$ctx/t4"
printf 'FROM scratch\nCOPY r1 /r1\nCOPY r2 /r2\nCOPY t3 /t3\nCOPY t4 /t4\n' >"$ctx/Dockerfile"
root=$work/root
"$rbuild" --root "$root" build -q -t big:1 "$ctx" >/dev/null

warm=$(start_registry warm)
a=$(start_registry rbuild)
b=$(start_registry skopeo)
"$rbuild" --root "$root" tag big:1 "$warm/big:1"
echo "warm-up push (compresses 1 GiB): $(secs "$rbuild" --root "$root" push "$warm/big:1") s"

# The same gzip blobs as an OCI layout for skopeo.
mkdir -p "$work/layout"
"$rbuild" --root "$root" save -o "$work/big.tar" big:1
tar -xf "$work/big.tar" -C "$work/layout"

"$rbuild" --root "$root" tag big:1 "$a/big:1"
push_r=$(secs "$rbuild" --root "$root" push "$a/big:1")
push_s=$(secs skopeo copy --dest-tls-verify=false "oci:$work/layout" "docker://$b/big:1")
pull_r=$(secs "$rbuild" --root "$work/fresh" pull "$a/big:1")
pull_s=$(secs skopeo copy --src-tls-verify=false "docker://$b/big:1" "oci:$work/pulled:x")

before=$(grep -c 'HTTP/1.1"' "$work/rbuild/log")
"$rbuild" --root "$root" push "$a/big:1" >/dev/null 2>&1
after=$(grep 'HTTP/1.1"' "$work/rbuild/log" | tail -n +$((before + 1)))
second_total=$(printf '%s\n' "$after" | grep -c 'HTTP/1.1"' || true)
second_head=$(printf '%s\n' "$after" | grep -c '"HEAD ' || true)

printf '%-8s %10s %10s %8s\n' "" rbuild skopeo ratio
printf '%-8s %9.2fs %9.2fs %7.2fx\n' push "$push_r" "$push_s" "$(echo "$push_s / $push_r" | bc -l)"
printf '%-8s %9.2fs %9.2fs %7.2fx\n' pull "$pull_r" "$pull_s" "$(echo "$pull_s / $pull_r" | bc -l)"
echo "second push of the unchanged image: $second_total requests, $second_head of them HEAD"
