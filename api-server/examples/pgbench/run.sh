#!/usr/bin/env bash
# Where PostgreSQL's time per task goes: the service's statements as bare SQL, run by pgbench (16 clients,
# prepared statements), against the bare baseline, and what-ifs without the log entries, without the worker
# rows' updates, and batched four at a time. Three interleaved rounds; tasks per second.
#
#   api-server/examples/pgbench/run.sh postgres://postgres@127.0.0.1:5432/bench [seconds per script, default 8]
#
# The database must be one the server has migrated and nothing else uses (queue_bench's, after a run). It gets
# 64 workers `pgb-*`, two functions (setup.sql) and tasks of problem `pgb`.
set -euo pipefail
url=$1
seconds=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
psql "$url" -qf "$here/setup.sql"
for round in 1 2 3; do
  for script in base service no_entries no_entries_no_worker_rows batched4; do
    # Each script starts from no live task of its own, and a vacuumed table.
    psql "$url" -qc "UPDATE tasks SET status = 'completed' WHERE problem_id = 'pgb' AND status IN ('pending', 'running')" \
      -c "VACUUM ANALYZE tasks, task_logs, workers"
    tps=$(pgbench -n -M prepared -c 16 -j 2 -T "$seconds" -f "$here/$script.sql" "$url" 2>&1 | awk '/^tps/ {print $3}')
    per=1
    [ "$script" = batched4 ] && per=4
    awk -v r="$round" -v s="$script" -v t="$tps" -v p="$per" 'BEGIN { printf "round %d  %-26s %6.0f tasks/s\n", r, s, t * p }'
  done
done
