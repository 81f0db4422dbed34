#!/bin/bash
# Cost of very long Dockerfiles (issue 12): FROM scratch and then N ENV
# lines, N LABEL lines, or N chained ARGs (ARG An=${An-1:-x}); or N stages
# each copying a file from the one before (`graph` only: what planning
# costs). Every build is
# cold (a fresh --root); prints wall time and peak RSS (getrusage of the
# child, via python3) per kind. Goal: N=10,000 in at most 2 s and 300 MB.
# Needs root.
#
#   RBUILD=target/release/rbuild builder/benches/big-dockerfiles.sh [N] [RUNS]
set -euo pipefail
rbuild=${RBUILD:-target/release/rbuild}
n=${1:-10000}
runs=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/env" "$work/label" "$work/arg" "$work/stages"
{ echo "FROM scratch"; for ((i = 0; i < n; i++)); do echo "ENV V$i=$i"; done; } >"$work/env/Dockerfile"
{ echo "FROM scratch"; for ((i = 0; i < n; i++)); do echo "LABEL l$i=\"v\""; done; } >"$work/label/Dockerfile"
{
  echo "FROM scratch"
  echo "ARG A0=x"
  for ((i = 1; i < n; i++)); do echo "ARG A$i=\${A$((i - 1)):-x}"; done
} >"$work/arg/Dockerfile"

{
  echo "FROM scratch AS s0"
  echo "COPY f /x"
  for ((i = 1; i < n; i++)); do echo "FROM scratch AS s$i"; echo "COPY --from=s$((i - 1)) /x /x"; done
} >"$work/stages/Dockerfile"
echo x >"$work/stages/f"

for kind in env label arg stages; do
  for _ in $(seq "$runs"); do
    rm -rf "$work/root"
    python3 - "$rbuild" "$work/root" "$work/$kind" "$kind" <<'PY'
import resource, subprocess, sys, time
rbuild, root, ctx, kind = sys.argv[1:]
start = time.monotonic()
command = ["graph"] if kind == "stages" else ["build", "-q"]
subprocess.run([rbuild, "--root", root, *command, ctx], check=True, stdout=subprocess.DEVNULL)
wall = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(f"{kind}: {wall:.2f} s, {peak} MB peak")
PY
  done
done
