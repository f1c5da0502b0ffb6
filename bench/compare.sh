#!/usr/bin/env bash
# Load-benchmark the service against the "limit" server of shared/bench, side by side in one run
# (interleaved rounds, so the machine's noise hits both alike), on SQLite and/or PostgreSQL.
#
# Usage: bench/compare.sh [sqlite|postgresql|both]      (default: both)
# Env:   ROUNDS (3), DURATION (10 s per run), CONNS (64), MODE (small|large), SHARED (../shared),
#        LOADER=py to use the Python load generator instead of wrk.
# Prints the harness's BENCH / SUMMARY / RATIO lines; RATIO rps_a_over_b is service / limit.
# Everything listens on 127.0.0.1 and is stopped on exit; each run is bounded by DURATION.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
PY="$ROOT/.venv/bin/python"
WHICH="${1:-both}"
export ROUNDS="${ROUNDS:-3}" BENCH_PYTHON="$PY"
# This checkout's code, whatever checkout the venv's editable install points at.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SECRET="bench-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SECRET

[[ -x "$PY" ]] || { echo "run 'make install' first" >&2; exit 2; }
[[ -f "$SHARED/bench/compare.sh" ]] || { echo "shared/bench not found at $SHARED" >&2; exit 2; }
if ! command -v wrk >/dev/null && [[ "${LOADER:-}" != py ]]; then
  echo "# installing wrk (the load generator)" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1 || export LOADER=py
fi

WORK="$(mktemp -d /tmp/taskapi-bench.XXXXXX)"
PIDS=()
PG_DATA=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "$PG_DATA" ]]; then
    runuser -u postgres -- pg_ctl -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

start_postgres() {
  local port; port="$(free_port)"
  PG_DATA="$WORK/pg/data"
  mkdir -p "$WORK/pg"; chown postgres: "$WORK/pg"; chmod 755 "$WORK"
  runuser -u postgres -- initdb -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
  runuser -u postgres -- pg_ctl -D "$PG_DATA" -l "$WORK/pg/log" -w start \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $WORK/pg" >/dev/null
  echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

run_one() {  # run_one KIND DATABASE_URL
  local kind="$1" url="$2" sport lport
  sport="$(free_port)"; lport="$(free_port)"
  echo "## $kind"
  DATABASE_URL="$url" BETTER_AUTH_SECRET="$SECRET" DATA_DIR="$WORK" "$ROOT/.venv/bin/taskapi" migrate 2>/dev/null
  # The service as it ships: `taskapi serve` (uvloop, and the HTTP protocol it configures), one
  # process; LOG_LEVEL=warning keeps the per-request log lines out, like the limit's. The rate
  # limit and the quota are counted as always but set beyond what one benchmark user reaches
  # (tens of thousands of requests and creates a minute), so their cost is in the figures.
  DATABASE_URL="$url" BETTER_AUTH_SECRET="$SECRET" DATA_DIR="$WORK" MIGRATE_ON_START=false \
    LOG_LEVEL=warning RATE_LIMIT=1000000000 MAX_TASKS_PER_USER=2147483647 \
    "$ROOT/.venv/bin/taskapi" serve --host 127.0.0.1 --port "$sport" &
  PIDS+=($!)
  (cd "$SHARED/bench" && JWT_SECRET="$SECRET" exec "$PY" -m uvicorn limit_app:app --host 127.0.0.1 \
    --port "$lport" --loop uvloop --http httptools --no-access-log --log-level warning) &
  PIDS+=($!)
  wait_port "$sport"; wait_port "$lport"
  REF=limit "$SHARED/bench/compare.sh" --rounds "$ROUNDS" \
    "service-$kind=http://127.0.0.1:$sport" "limit=http://127.0.0.1:$lport"
  kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; PIDS=()
}

if [[ "$WHICH" == sqlite || "$WHICH" == both ]]; then
  run_one sqlite "sqlite:///$WORK/bench.db"
fi
if [[ "$WHICH" == postgresql || "$WHICH" == both ]]; then
  run_one postgresql "$(start_postgres)"
fi
