#!/usr/bin/env bash
# The whole table in one command: the service against shared/bench's limit server on SQLite,
# PostgreSQL and PostgreSQL through PgBouncer in transaction mode, each on the small data set
# (the harness's: the bench user with 20 tasks) and the large one (1,000,000 tasks, the bench
# user's 10,000 among those of 100 other users), with the ratios, the tails, errors and the peak
# RSS of every process. Each case runs bench/compare.sh's interleaved comparison on fresh servers.
#
# Usage: bench/table.sh [sqlite] [postgresql] [pgbouncer]          (default: all three)
# Env:   ROUNDS (3), DURATION (10 s per run), CONNS (64), SETS ("small large"),
#        LARGE_TASKS (1000000), LARGE_USER_TASKS (10000), WORKERS (1: `serve --workers`),
#        QUICK=1 for a try-out: ROUNDS=1 DURATION=3 LARGE_TASKS=100000 (about 5 minutes).
# Prints the table (markdown) on stdout; on stderr, as they come, the harness's BENCH / SUMMARY /
# RATIO lines, the RSS lines and progress. A run of 3 rounds of 10 s takes about 30 minutes.
# Everything listens on 127.0.0.1 and is stopped (by PID, PostgreSQL by its data folder) on exit.
set -euo pipefail
if [[ "${QUICK:-0}" == 1 ]]; then
  : "${ROUNDS:=1}" "${DURATION:=3}" "${LARGE_TASKS:=100000}"
fi
export DURATION="${DURATION:-10}"
LARGE_TASKS="${LARGE_TASKS:-1000000}"
LARGE_USER_TASKS="${LARGE_USER_TASKS:-10000}"
SETS="${SETS:-small large}"
OTHER_USERS=100  # the harness's (benchtool.py prepare's --other-users, which lib.sh leaves as is)
# shellcheck source=bench/compare.sh
source "$(dirname "${BASH_SOURCE[0]}")/compare.sh"
KINDS=("$@")
[[ ${#KINDS[@]} -gt 0 ]] || KINDS=(sqlite postgresql pgbouncer)
for kind in "${KINDS[@]}"; do
  case "$kind" in
    sqlite|postgresql|pgbouncer) ;;
    *) sed -n '8p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
  esac
done
for set in $SETS; do
  [[ "$set" == small || "$set" == large ]] || { echo "SETS: small and/or large" >&2; exit 2; }
done
(( LARGE_TASKS > LARGE_USER_TASKS )) || { echo "LARGE_TASKS must pass LARGE_USER_TASKS" >&2; exit 2; }

peak_rss() {  # peak_rss ROLE PID: RSS lines for PID and its children (`--workers`: the workers)
  local role="$1" pid kind
  for pid in "$2" $(ps -o pid= --ppid "$2"); do
    if [[ "$pid" == "$2" ]]; then
      kind="$role"
    elif grep -qa spawn_main "/proc/$pid/cmdline"; then
      kind="$role-worker"
    else
      kind="$role-helper"  # multiprocessing's resource tracker
    fi
    echo "RSS role=$kind pid=$pid hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")"
  done
}

psql_admin() {  # psql_admin SQL: on our cluster's postgres database, as postgres
  runuser -u postgres -- psql -q -h "$WORK/pg" -p "$PG_PORT" -U postgres -d postgres -c "$1"
}

run_case() {  # run_case KIND SET
  local kind="$1" set="$2" db="bench_$1_$2" url direct settings=()
  case "$kind" in
    sqlite)
      url="sqlite:///$WORK/$db.db"; direct="$url" ;;
    postgresql)
      psql_admin "CREATE DATABASE $db"
      url="postgresql://postgres@127.0.0.1:$PG_PORT/$db"; direct="$url" ;;
    pgbouncer)
      psql_admin "CREATE DATABASE $db"
      url="postgresql://postgres@127.0.0.1:$PGB_PORT/$db"
      direct="postgresql://postgres@127.0.0.1:$PG_PORT/$db"
      settings=(DB_POOLER=transaction "DATABASE_DIRECT_URL=$direct") ;;
  esac
  local tasks=20 mine=20
  [[ "$set" == small ]] || { tasks="$LARGE_TASKS"; mine="$LARGE_USER_TASKS"; }
  echo "# case kind=$kind set=$set tasks=$tasks user_tasks=$mine workers=${WORKERS:-1} rounds=$ROUNDS duration=$DURATION"
  migrate_db "$url" "${settings[@]}"
  start_service "$url" "${settings[@]}"
  if [[ "$set" == small ]]; then
    start_limit
    wait_port "$SERVICE_PORT"; wait_port "$LIMIT_PORT"
    # The harness's own seeding: 20 tasks of the bench user, over HTTP, on both servers.
    compare_servers "service-$kind"
  else
    # The limit keeps its tasks in memory: seed.py fills them in its process before it listens.
    BENCH_USER=bench-user BENCH_N="$mine" BENCH_OTHERS=$(( tasks - mine )) \
      BENCH_OTHER_USERS="$OTHER_USERS" start_limit seed:limit_app --factory --app-dir "$HERE"
    wait_port "$SERVICE_PORT"; wait_port "$LIMIT_PORT" 300
    # The service's database is loaded directly, through the harness's seed hook (SEED_CMD,
    # which the limit's own hook, SEED_CMD_limit, overrides with nothing to do).
    MODE=large N="$mine" OTHERS=$(( tasks - mine )) SEED_CMD_limit=: \
      SEED_CMD="$(printf '%q ' "$PY" "$HERE/seed.py" "$direct")" \
      compare_servers "service-$kind"
  fi
  # VmHWM: the most each process has held in memory since it started, read just before it stops.
  peak_rss service "$SERVICE_PID"
  peak_rss limit "$LIMIT_PID"
  stop_servers
  # The large ones take a gigabyte or so. FORCE: PgBouncer still holds server connections.
  case "$kind" in
    sqlite) rm -f "$WORK/$db".db* ;;
    *) psql_admin "DROP DATABASE $db WITH (FORCE)" ;;
  esac
}

bench_setup
RAW="$WORK/table.raw"
if [[ " ${KINDS[*]} " == *" postgresql "* || " ${KINDS[*]} " == *" pgbouncer "* ]]; then
  start_postgres
  [[ " ${KINDS[*]} " != *" pgbouncer "* ]] || start_pgbouncer
fi
# Every line of the cases to stderr and to $RAW, which table.py reads at the end; the cases run
# in this shell (not in a pipeline's subshell), so that the exit trap knows what they started.
exec 9> >(tee -a "$RAW" >&2)
TEE_PID=$!
started=$SECONDS
for set in $SETS; do
  for kind in "${KINDS[@]}"; do
    echo "# $(date +%H:%M:%S) $kind, $set data set" >&2
    run_case "$kind" "$set" >&9 2>&1
  done
done
exec 9>&-
wait "$TEE_PID" 2>/dev/null || true
echo "# done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s" >&2
"$PY" "$HERE/table.py" < "$RAW"
