#!/usr/bin/env bash
# Profile one process of the service under shared/bench's load: py-spy samples `taskapi serve`
# while wrk runs one scenario, then bench/profile.py says where the time went.
#
# Usage: bench/profile.sh [sqlite|postgresql] [list|one|patch|post]    (default: postgresql list)
# Env:   DURATION (10 s), CONNS (64), RATE (py-spy samples a second, 500), SHARED (../shared).
# Leaves the raw samples in bench-profile-KIND-SCENARIO.raw (for `py-spy`'s other views).
# Everything listens on 127.0.0.1 and is stopped on exit; the run is bounded by DURATION.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The servers, the work folder and the exit trap as compare.sh has them (sourced: it runs nothing).
source "$HERE/compare.sh"
KIND="${1:-postgresql}" SCENARIO="${2:-list}"
export DURATION="${DURATION:-10}" USER_ID=bench-user
[[ -x "$ROOT/.venv/bin/py-spy" ]] || { echo "run 'make install' first" >&2; exit 2; }
bench_setup

if [[ "$KIND" == postgresql ]]; then
  start_postgres
  URL="$PG_URL"
else
  URL="sqlite:///$WORK/bench.db"
fi
migrate_db "$URL"
start_service "$URL"
wait_port "$SERVICE_PORT"

source "$SHARED/bench/lib.sh"
mkdir -p "$WORK/state"
bench_prepare "http://127.0.0.1:$SERVICE_PORT" "$WORK/state" >/dev/null
RAW="$ROOT/bench-profile-$KIND-$SCENARIO.raw"
"$ROOT/.venv/bin/py-spy" record --pid "$SERVICE_PID" --rate "${RATE:-500}" --duration "$DURATION" \
  --format raw --output "$RAW" --nonblocking >/dev/null 2>&1 &
SPY=$!
bench_scenario "$WORK/state" "$SCENARIO" "service-$KIND"
wait "$SPY"
"$PY" "$HERE/profile.py" "$RAW"
