#!/usr/bin/env bash
# What `flor-flows replay` costs beyond the replay's own work (the store's replay record),
# through the warm process and with FLOR_FLOWS_WARM=0 (the command in its own process).
# Run from the project's root: bash bench/workloads/cli_overhead.sh [CALLS]
# In a scratch git project with a fresh PREFECT_HOME: one run of 20 epochs of 0.1 s is
# recorded; a first replay starts the background server (and the warm process); then CALLS
# replays each way, every one backfilling a statement of its own. Prints one line per call.
set -euo pipefail
calls="${1:-5}"
bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv/bin"
work="$(mktemp -d)"
export PREFECT_HOME="$work/prefect"
trap '"$bin/flor-flows" server stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir "$work/p" && cd "$work/p" && git init -q -b main
cat > train.py <<'PY'
import time
import flor_flows as flor

model = {"w": 1.0}
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(20)):
        time.sleep(0.1)
        model["w"] *= 0.9
        flor.log("w", model["w"])
PY
printf '.flor-flows/\n' > .gitignore && git add -A && git -c user.name=b -c user.email=b@b commit -qm init
"$bin/python" train.py

replay() {  # NAME [ENV...]: backfill a new statement NAME; print wall, record, wall - record
  local name="$1"; shift
  sed -i "s/        flor.log(\"w\", model\[\"w\"\])/&\n        flor.log(\"$name\", model[\"w\"] * 2)/" train.py
  local start end
  start=$(date +%s.%N)
  env "$@" "$bin/flor-flows" replay --apply "$name" >/dev/null 2>&1
  end=$(date +%s.%N)
  "$bin/python" - "$name" "$start" "$end" <<'PY'
import datetime, sqlite3, sys
name, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
a, b = sqlite3.connect(".flor-flows/store.db").execute(
    "SELECT started_at, ended_at FROM replays ORDER BY id DESC LIMIT 1").fetchone()
record = (datetime.datetime.fromisoformat(b) - datetime.datetime.fromisoformat(a)).total_seconds()
print(f"{name}: wall {end - start:.2f} s, replay record {record:.2f} s, beyond it {end - start - record:.2f} s")
PY
}
replay first
for _ in $(seq 30); do grep -q serving "$PREFECT_HOME/flor-flows-warm.log" 2>/dev/null && break; sleep 1; done
for i in $(seq "$calls"); do replay "warm$i"; replay "cold$i" FLOR_FLOWS_WARM=0; done
