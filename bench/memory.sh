#!/usr/bin/env bash
# The resident memory of one service process under an ordinary account's traffic (bench/memory.py):
# after 20,000 mixed requests and after 5,000 list queries of distinct shapes, on SQLite and/or
# PostgreSQL. Usage: bench/memory.sh [sqlite|postgresql|both]; MIXED, DISTINCT change the counts.
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/compare.sh"

measure() {  # measure KIND URL
  echo "## $1"
  migrate_db "$2"
  start_service "$2"
  wait_port "$SERVICE_PORT" 60
  "$PY" "$HERE/memory.py" "http://127.0.0.1:$SERVICE_PORT" "$SERVICE_PID" "$SECRET" \
    --mixed "${MIXED:-20000}" --distinct "${DISTINCT:-5000}"
  stop_servers
}

which="${1:-both}"
bench_setup
if [[ "$which" == sqlite || "$which" == both ]]; then
  measure sqlite "sqlite:///$WORK/memory.db"
fi
if [[ "$which" == postgresql || "$which" == both ]]; then
  start_postgres
  measure postgresql "$PG_URL"
fi
