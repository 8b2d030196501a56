#!/usr/bin/env bash
# A local PostgreSQL for development, from the PostgreSQL server binaries on this machine (no Docker):
#   deploy/postgres-dev.sh start   # data in ./.pgdata, port ${PGPORT:-5432}; prints DATABASE_URL
#   deploy/postgres-dev.sh stop
# As root, the server runs as the `postgres` user (initdb refuses to run as root).
set -euo pipefail
cmd=${1:-start}
port=${PGPORT:-5432}
data=${PGDATA_DIR:-$PWD/.pgdata}
initdb=$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
bin=$(dirname "$(readlink -f "${initdb:-/nonexistent}")")
[ -x "$bin/initdb" ] || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)" >&2; exit 1; }
run() { "$@"; }
if [ "$(id -u)" = 0 ]; then run() { runuser -u postgres -- "$@"; }; fi
case "$cmd" in
  start)
    if [ ! -d "$data" ]; then
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown postgres "$data"
      run "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if ! run "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      run "$bin/pg_ctl" -D "$data" -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" -l "$data/server.log" -w start >/dev/null
    fi
    run "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='task_executor'" | grep -q 1 ||
      run "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres task_executor
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$port/task_executor"
    ;;
  stop)
    run "$bin/pg_ctl" -D "$data" -m fast -w stop
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
