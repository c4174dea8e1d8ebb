#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for tests.
# Usage: pg_start.sh [PORT]        (PORT defaults to a free ephemeral port)
# Env:   PG_BIN   (default: newest /usr/lib/postgresql/*/bin)
#        PG_USER / PG_PASSWORD / PG_DB  (default: optuna / optuna / optuna)
#        PG_BASE  (parent dir for the temp data dir, default: ${TMPDIR:-/tmp})
# Prints (stdout, KEY=VALUE lines, eval-able):
#   PG_URL=postgresql+psycopg2://USER:PW@127.0.0.1:PORT/DB
#   PG_PID=<postmaster pid>
#   PG_DIR=<temp dir>      (pass to pg_stop.sh)
#   PG_PORT=<port>
set -euo pipefail
# runuser lives in /usr/sbin, which a minimal PATH (cron, CI runners, env -i) may lack.
export PATH="$PATH:/usr/sbin:/sbin"

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
[ -x "$PG_BIN/initdb" ] || { echo "pg_start: no initdb under '$PG_BIN' (apt-get install -y postgresql)" >&2; exit 1; }
PG_USER=${PG_USER:-optuna}
PG_PASSWORD=${PG_PASSWORD:-optuna}
PG_DB=${PG_DB:-optuna}

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}
PORT=${1:-$(free_port)}

DIR=$(mktemp -d "${PG_BASE:-${TMPDIR:-/tmp}}/pgtmp.XXXXXX")
chmod 755 "$DIR"
DATA="$DIR/data"
mkdir -p "$DATA"

# initdb/postgres refuse to run as root: drop to the postgres user when root.
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$DIR"
  AS=(runuser -u postgres --)
else
  AS=()
fi

cleanup_on_fail() {
  echo "pg_start: failed, log follows:" >&2
  cat "$DIR/log" >&2 2>/dev/null || true
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup_on_fail ERR

# local (unix socket) = trust for the bootstrap superuser; TCP = password.
"${AS[@]}" "$PG_BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C.UTF-8 --no-sync >"$DIR/initdb.log" 2>&1 \
  || "${AS[@]}" "$PG_BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1

# Test-only speed settings: no durability.
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -l "$DIR/log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null

"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 30

PSQL=("${AS[@]}" "$PG_BIN/psql" -v ON_ERROR_STOP=1 -q -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD';"
"${PSQL[@]}" -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\";"

PID=$(head -n1 "$DATA/postmaster.pid")
trap - ERR
echo "PG_URL=postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/$PG_DB"
echo "PG_PID=$PID"
echo "PG_DIR=$DIR"
echo "PG_PORT=$PORT"
