#!/usr/bin/env bash
# Where PostgreSQL's time per task goes: the service's statements as bare SQL, run by pgbench (16 clients,
# prepared statements), against the bare baseline, and what-ifs without the log entries, without the worker
# rows' updates, and batched four at a time. Three interleaved rounds; tasks per second.
#
#   api-server/examples/pgbench/run.sh postgres://postgres@127.0.0.1:5432/bench [seconds per script, default 8]
#
# The database must be one the server has migrated and nothing else uses (queue_bench's, after a run): before
# each script every pending or running task in it is marked completed. It gets 64 workers `pgb-*`, two
# functions (setup.sql) and tasks of problem `pgb`.
set -euo pipefail
url=$1
seconds=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
psql "$url" -qf "$here/setup.sql"
scripts=(base service no_entries no_entries_no_worker_rows batched4)
for round in 0 1 2; do
  # Each round starts one script further on, so that no script always meets the smallest tables.
  for i in 0 1 2 3 4; do
    script=${scripts[$(( (i + round) % 5 ))]}
    # Each script starts with no task pending or running (the scripts claim any pending task), and vacuumed
    # tables.
    psql "$url" -qc "UPDATE tasks SET status = 'completed' WHERE status IN ('pending', 'running')" \
      -c "VACUUM ANALYZE tasks, task_logs, workers"
    out=$(pgbench -n -M prepared -c 16 -j 2 -T "$seconds" -f "$here/$script.sql" "$url") ||
      { echo "pgbench failed on $script.sql" >&2; exit 1; }
    per=1
    [ "$script" = batched4 ] && per=4
    echo "$out" | awk -v r=$((round + 1)) -v s="$script" -v p="$per" \
      '/^tps/ { printf "round %d  %-26s %6.0f tasks/s\n", r, s, $3 * p }'
  done
done
