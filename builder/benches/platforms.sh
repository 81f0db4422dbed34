#!/bin/bash
# Issue 18's figures: an emulated `RUN true` against a native one (20 of
# them on a busybox base, `--no-cache`, arm64 through QEMU), and a
# cross-compiled build for two platforms in one run against one platform
# (the `FROM --platform=$BUILDPLATFORM` stage's target-free steps run once:
# the steps run and found in the cache are counted); and a CPU-bound RUN
# for amd64, for arm64, and for both in one build (the platforms build side
# by side). Needs root,
# busybox-static, qemu-user-static and Debian's busybox-static:arm64 (as
# .ci/run fetches it to /var/cache/rbuild-tests/busybox-arm64).
#
#   RBUILD=target/release/rbuild builder/benches/platforms.sh [RUNS]
set -euo pipefail
rbuild=${RBUILD:-target/release/rbuild}
runs=${1:-5}
arm=${BUSYBOX_ARM64:-/var/cache/rbuild-tests/busybox-arm64}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp /bin/busybox "$work/busybox-amd64"
cp "$arm" "$work/busybox-arm64"
{
  printf 'FROM scratch\nARG TARGETARCH\nCOPY busybox-$TARGETARCH /bin/busybox\n'
  printf 'RUN ["/bin/busybox","--install","-s","/bin"]\n'
  for i in $(seq 20); do printf 'RUN true # %s\n' "$i"; done
} >"$work/Dockerfile.runs"
cat >"$work/Dockerfile.cross" <<'DF'
FROM --platform=$BUILDPLATFORM scratch AS build
COPY busybox-amd64 /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
RUN for i in 1 2 3 4 5 6 7 8; do uname -m > /arch.$i; done
ARG TARGETARCH
RUN echo "for $TARGETARCH" > /target
FROM scratch
COPY --from=build /arch.1 /target /
DF

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
seconds() { # ARGS...: the build's wall time
  local start end
  start=$(date +%s.%N)
  "$rbuild" build --root "$work/root" "$@" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# Warm the store (the busybox layers) once per platform, then time the
# 20 RUN steps without the cache.
for p in linux/amd64 linux/arm64; do
  "$rbuild" build --root "$work/root" -q --platform "$p" -f "$work/Dockerfile.runs" "$work" >/dev/null
done
for p in linux/amd64 linux/arm64; do
  t=$(for _ in $(seq "$runs"); do
    seconds --no-cache -q --platform "$p" -f "$work/Dockerfile.runs" "$work"
  done | median)
  echo "20 x RUN true, $p, --no-cache: ${t}s"
done

for platforms in linux/amd64 linux/amd64,linux/arm64; do
  t=$(for _ in $(seq "$runs"); do
    rm -rf "$work/root"
    seconds -q --platform "$platforms" -f "$work/Dockerfile.cross" -o "type=local,dest=$work/out" "$work"
  done | median)
  rm -rf "$work/root"
  log=$("$rbuild" build --root "$work/root" --progress plain --platform "$platforms" \
    -f "$work/Dockerfile.cross" -o "type=local,dest=$work/out" "$work" 2>&1)
  ran=$(grep -c ' DONE ' <<<"$log" || true)
  cached=$(grep -c ' CACHED$' <<<"$log" || true)
  echo "cross build, $platforms, cold: ${t}s; steps run $ran, from the cache $cached"
done

{
  printf 'FROM scratch\nARG TARGETARCH\nCOPY busybox-$TARGETARCH /bin/busybox\n'
  printf 'RUN ["/bin/busybox","--install","-s","/bin"]\n'
  printf 'RUN i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo $i > /n\n'
} >"$work/Dockerfile.cpu"
for platforms in linux/amd64 linux/arm64 linux/amd64,linux/arm64; do
  t=$(for _ in $(seq "$runs"); do
    rm -rf "$work/root"
    seconds -q --platform "$platforms" -f "$work/Dockerfile.cpu" "$work"
  done | median)
  echo "CPU-bound RUN, $platforms, cold: ${t}s"
done
