#!/usr/bin/env bash
# Stop a server started by pg_start.sh and remove its temp dir.
# Usage: pg_stop.sh PG_DIR [PG_PID]
set -uo pipefail
# runuser lives in /usr/sbin, which a minimal PATH (cron, CI runners, env -i) may lack.
export PATH="$PATH:/usr/sbin:/sbin"
DIR=${1:?usage: pg_stop.sh PG_DIR [PG_PID]}
PID=${2:-}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
DATA="$DIR/data"
[ -n "$PID" ] || PID=$(head -n1 "$DATA/postmaster.pid" 2>/dev/null || true)

if [ -f "$DATA/postmaster.pid" ]; then
  if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); else AS=(); fi
  "${AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
fi
# Fallback: signal the postmaster by PID if it is still alive.
if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
  kill -INT "$PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID" 2>/dev/null || true
fi
case "$DIR" in */pgtmp.*) rm -rf "$DIR" ;; *) echo "pg_stop: refusing to rm '$DIR' (not a pgtmp.* dir)" >&2; exit 1 ;; esac
