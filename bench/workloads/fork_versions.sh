#!/usr/bin/env bash
# One backfill over runs of several code versions of workloads/real_torch.py: its replays fork
# from one fork server (the versions import the same libraries) or start fresh interpreters.
# Run from the project's root: bash bench/workloads/fork_versions.sh [REPS]
# In a scratch git project with a fresh PREFECT_HOME and a background server: three versions
# (comment lines apart), one run each (--epochs 3); then REPS times each way, interleaved, a
# new end-of-epoch statement over the three runs (`flor-flows replay --apply NAME --all`,
# the default --max-parallel 2). Prints one line per command.
set -euo pipefail
reps="${1:-2}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/../../.venv/bin"
work="$(mktemp -d)"
export PREFECT_HOME="$work/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false
trap '"$bin/flor-flows" server stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
script() {  # SUFFIX: train.py holding an end-of-epoch statement named lr_next_SUFFIX
  "$bin/python" - "$here" "$1" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import real_common as cm
open("train.py", "w").write(cm.script("flor_flows", "_" + sys.argv[2], kinds=("end",)))
PY
}
mkdir "$work/p" && cd "$work/p" && git init -q -b main
cp "$here/real_torch.py" train.py
printf '.flor-flows/\n' > .gitignore
"$bin/flor-flows" server start >/dev/null
for v in 1 2 3; do
  echo "# version $v" >> train.py
  git add -A && git -c user.name=b -c user.email=b@b commit -qm "v$v"
  "$bin/python" train.py --epochs 3 >/dev/null
done
replay() {  # LABEL [ENV...]
  local label="$1"; shift
  script "$label"
  local start end out
  start=$(date +%s.%N)
  out=$(env "$@" "$bin/flor-flows" replay --apply "lr_next_$label" --all 2>&1)
  end=$(date +%s.%N)
  git checkout -q -- train.py
  printf '%s: wall %.2f s, %s forking, %s fresh (said), %s\n' "$label" "$(echo "$end - $start" | bc)" \
    "$(grep -c 'fork from one process' <<<"$out" || true)" \
    "$(grep -c 'start fresh processes' <<<"$out" || true)" "$(tail -1 <<<"$out")"
}
replay warmup
for i in $(seq "$reps"); do replay "shared$i"; replay "fresh$i" FLOR_FLOWS_REPLAY_FORK=0; done
