#!/usr/bin/env bash
# Load-benchmark the service against the "limit" server of shared/bench, side by side in one run
# (interleaved rounds, so the machine's noise hits both alike), on SQLite and/or PostgreSQL.
#
# Usage: bench/compare.sh [sqlite|postgresql|pgbouncer|both]      (default: both = the first two)
#   pgbouncer: PostgreSQL through a PgBouncer in transaction mode (DB_POOLER=transaction).
# Env:   ROUNDS (3), DURATION (10 s per run), CONNS (64), MODE (small|large), SHARED (../shared),
#        LOADER=py to use the Python load generator instead of wrk, WORKERS (1: `serve --workers`).
# Prints the harness's BENCH / SUMMARY / RATIO lines; RATIO rps_a_over_b is service / limit.
# Everything listens on 127.0.0.1 and is stopped on exit; each run is bounded by DURATION.
#
# Sourced (bench/table.sh does), it defines its settings and functions and runs nothing:
# bench_setup (work folder, exit trap), start_postgres, start_pgbouncer, migrate_db,
# start_service, start_limit, compare_servers, stop_servers, run_one.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
PY="$ROOT/.venv/bin/python"
PGBOUNCER="${PGBOUNCER:-/usr/sbin/pgbouncer}"
export ROUNDS="${ROUNDS:-3}" BENCH_PYTHON="$PY"
# This checkout's code, whatever checkout the venv's editable install points at.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SECRET="bench-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SECRET
WORK=""
PIDS=()
PG_DATA=""
PGB_PIDFILE=""

bench_setup() {  # the checks, the work folder and the trap that stops everything started
  [[ -x "$PY" ]] || { echo "run 'make install' first" >&2; exit 2; }
  [[ -f "$SHARED/bench/compare.sh" ]] || { echo "shared/bench not found at $SHARED" >&2; exit 2; }
  if ! command -v wrk >/dev/null && [[ "${LOADER:-}" != py ]]; then
    echo "# installing wrk (the load generator)" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1 || export LOADER=py
  fi
  WORK="$(mktemp -d /tmp/taskapi-bench.XXXXXX)"
  chmod 755 "$WORK"  # PostgreSQL and PgBouncer, run as postgres, keep their folders in it
  trap cleanup EXIT
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ ${#PIDS[@]} -eq 0 ]] || wait "${PIDS[@]}" 2>/dev/null || true
  if [[ -n "$PGB_PIDFILE" && -s "$PGB_PIDFILE" ]]; then
    pid="$(cat "$PGB_PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [[ -n "$PG_DATA" ]]; then
    runuser -u postgres -- pg_ctl -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  [[ -z "$WORK" ]] || rm -rf "$WORK"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # wait_port PORT [SECONDS (15)]
  for _ in $(seq 1 $(( ${2:-15} * 10 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

start_postgres() {  # a throwaway cluster of our own; sets PG_PORT, PG_URL (its postgres database)
  PG_PORT="$(free_port)"
  PG_DATA="$WORK/pg/data"
  mkdir -p "$WORK/pg"; chown postgres: "$WORK/pg"
  runuser -u postgres -- initdb -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
  runuser -u postgres -- pg_ctl -D "$PG_DATA" -l "$WORK/pg/log" -w start \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK/pg" >/dev/null
  PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
}

start_pgbouncer() {  # PgBouncer in transaction mode (as Neon runs it) before PG_PORT; sets PGB_PORT
  local dir="$WORK/pgbouncer"
  PGB_PORT="$(free_port)"
  mkdir -p "$dir"
  echo '"postgres" ""' > "$dir/users.txt"
  cat > "$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
  chown -R postgres: "$dir"
  # As postgres (it refuses to run as root); -d: it writes its pid file, by which it is stopped.
  runuser -u postgres -- "$PGBOUNCER" -d "$dir/pgbouncer.ini"
  PGB_PIDFILE="$dir/pgbouncer.pid"
  wait_port "$PGB_PORT"
}

# The service's settings for a URL: DATABASE_URL and the secret; VAR=value pairs add to them.
migrate_db() {  # migrate_db URL [VAR=value ...]
  env DATABASE_URL="$1" BETTER_AUTH_SECRET="$SECRET" DATA_DIR="$WORK" "${@:2}" \
    "$ROOT/.venv/bin/taskapi" migrate 2>/dev/null
}

start_service() {  # start_service URL [VAR=value ...]: sets SERVICE_PID, SERVICE_PORT
  SERVICE_PORT="$(free_port)"
  # The service as it ships: `taskapi serve` (uvloop, and the HTTP protocol it configures), one
  # process unless WORKERS says more; LOG_LEVEL=warning keeps the per-request log lines out, like the limit's. The rate
  # limit and the quota are counted as always but set beyond what one benchmark user reaches
  # (tens of thousands of requests and creates a minute), so their cost is in the figures.
  env DATABASE_URL="$1" BETTER_AUTH_SECRET="$SECRET" DATA_DIR="$WORK" MIGRATE_ON_START=false \
    LOG_LEVEL=warning RATE_LIMIT=1000000000 MAX_TASKS_PER_USER=2147483647 "${@:2}" \
    "$ROOT/.venv/bin/taskapi" serve --host 127.0.0.1 --port "$SERVICE_PORT" \
    --workers "${WORKERS:-1}" &
  SERVICE_PID=$!
  PIDS+=("$SERVICE_PID")
}

start_limit() {  # start_limit [APP [uvicorn option ...]]: sets LIMIT_PID, LIMIT_PORT
  LIMIT_PORT="$(free_port)"
  (cd "$SHARED/bench" && JWT_SECRET="$SECRET" exec "$PY" -m uvicorn "${1:-limit_app:app}" \
    "${@:2}" --host 127.0.0.1 --port "$LIMIT_PORT" --loop uvloop --http httptools \
    --no-access-log --log-level warning) &
  LIMIT_PID=$!
  PIDS+=("$LIMIT_PID")
}

compare_servers() {  # compare_servers LABEL: the harness, service (as LABEL) against the limit
  REF=limit "$SHARED/bench/compare.sh" --rounds "$ROUNDS" \
    "$1=http://127.0.0.1:$SERVICE_PORT" "limit=http://127.0.0.1:$LIMIT_PORT"
}

stop_servers() {
  [[ ${#PIDS[@]} -eq 0 ]] || { kill "${PIDS[@]}" 2>/dev/null; wait "${PIDS[@]}" 2>/dev/null; } || true
  PIDS=()
}

run_one() {  # run_one KIND URL [VAR=value ...]
  local kind="$1" url="$2"
  echo "## $kind"
  migrate_db "$url" "${@:3}"
  start_service "$url" "${@:3}"
  start_limit limit_app:app
  wait_port "$SERVICE_PORT"; wait_port "$LIMIT_PORT"
  compare_servers "service-$kind"
  stop_servers
}

main() {
  local which="${1:-both}"
  case "$which" in
    sqlite|postgresql|pgbouncer|both) ;;
    *) sed -n '5,6p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
  esac
  bench_setup
  if [[ "$which" == sqlite || "$which" == both ]]; then
    run_one sqlite "sqlite:///$WORK/bench.db"
  fi
  if [[ "$which" == postgresql || "$which" == both ]]; then
    start_postgres
    run_one postgresql "$PG_URL"
  fi
  if [[ "$which" == pgbouncer ]]; then
    start_postgres
    start_pgbouncer
    run_one pgbouncer "postgresql://postgres@127.0.0.1:$PGB_PORT/postgres" \
      DB_POOLER=transaction DATABASE_DIRECT_URL="$PG_URL"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
