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
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
PY="$ROOT/.venv/bin/python"
KIND="${1:-postgresql}" SCENARIO="${2:-list}"
export DURATION="${DURATION:-10}" BENCH_PYTHON="$PY" USER_ID=bench-user
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SECRET="bench-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SECRET
[[ -x "$ROOT/.venv/bin/py-spy" ]] || { echo "run 'make install' first" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is needed (bench/compare.sh installs it)" >&2; exit 2; }

WORK="$(mktemp -d /tmp/taskapi-profile.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
PG_DATA=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "$PG_DATA" ]] && runuser -u postgres -- pg_ctl -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
export PATH="/usr/lib/postgresql/15/bin:$PATH"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ "$KIND" == postgresql ]]; then
  port="$(free_port)"
  PG_DATA="$WORK/pg/data"
  mkdir -p "$WORK/pg"; chown postgres: "$WORK/pg"
  runuser -u postgres -- initdb -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
  runuser -u postgres -- pg_ctl -D "$PG_DATA" -l "$WORK/pg/log" -w start \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $WORK/pg" >/dev/null
  URL="postgresql://postgres@127.0.0.1:$port/postgres"
else
  URL="sqlite:///$WORK/bench.db"
fi
sport="$(free_port)"
export DATABASE_URL="$URL" BETTER_AUTH_SECRET="$SECRET" DATA_DIR="$WORK"
"$ROOT/.venv/bin/taskapi" migrate 2>/dev/null
# As bench/compare.sh runs it: the rate limit and the quota counted but out of reach.
MIGRATE_ON_START=false LOG_LEVEL=warning RATE_LIMIT=1000000000 MAX_TASKS_PER_USER=2147483647 \
  "$ROOT/.venv/bin/taskapi" serve --host 127.0.0.1 --port "$sport" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$sport") 2>/dev/null && break; sleep 0.1; done

source "$SHARED/bench/lib.sh"
mkdir -p "$WORK/state"
bench_prepare "http://127.0.0.1:$sport" "$WORK/state" >/dev/null
RAW="$ROOT/bench-profile-$KIND-$SCENARIO.raw"
"$ROOT/.venv/bin/py-spy" record --pid "$SERVER" --rate "${RATE:-500}" --duration "$DURATION" \
  --format raw --output "$RAW" --nonblocking >/dev/null 2>&1 &
SPY=$!
bench_scenario "$WORK/state" "$SCENARIO" "service-$KIND"
wait "$SPY"
"$PY" "$HERE/profile.py" "$RAW"
