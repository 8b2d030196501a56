-- Run once by run.sh before the scripts: 64 workers `pgb-1` … `pgb-64` (one slot each, every problem), and two
-- functions for batched4.sql: the service's claim for several workers in turn, and its end of a run for
-- several runs, each call one statement (one transaction, one commit) for all of them.
INSERT INTO workers (id, backend_type, status, max_parallel_tasks, supported_problems, last_heartbeat, registered_at)
SELECT 'pgb-' || g, 'pgbench', 'idle', 1, '[]', now(), now() FROM generate_series(1, 64) g
ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION claim_batch(wids text[]) RETURNS TABLE (wid text, w_running int, w_max int, tid uuid, lid uuid, att int) LANGUAGE plpgsql AS $$
DECLARE w text;
BEGIN
  FOREACH w IN ARRAY wids LOOP
    RETURN QUERY
    WITH ww AS ( UPDATE workers SET last_heartbeat = now() WHERE id = w AND status <> 'offline' RETURNING running_tasks, max_parallel_tasks, supported_problems), next AS ( SELECT t.id FROM tasks AS t, ww WHERE t.status = 'pending' AND ww.running_tasks < ww.max_parallel_tasks AND (jsonb_array_length(ww.supported_problems) = 0 OR EXISTS ( SELECT 1 FROM jsonb_array_elements_text(ww.supported_problems) AS g(p) WHERE g.p = '*' OR t.problem_id LIKE g.p)) ORDER BY t.priority DESC, t.created_at, t.id LIMIT 1 FOR UPDATE OF t SKIP LOCKED), claimed AS ( UPDATE tasks AS t SET status = 'running', worker_id = w, attempt = t.attempt + 1, started_at = now(), updated_at = now(), lease_expires_at = now() + interval '30 s', lease_id = gen_random_uuid() FROM next WHERE t.id = next.id RETURNING t.*), logged AS ( INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, attempt, status) SELECT id, now(), 'info', 20, 'Task claimed by worker ' || attempt, jsonb_build_object('event', 'claimed', 'attempt', attempt), attempt, 'running' FROM claimed) SELECT w, ww.running_tasks, ww.max_parallel_tasks, claimed.id, claimed.lease_id, claimed.attempt FROM ww LEFT JOIN claimed ON true;
  END LOOP;
END $$;
CREATE OR REPLACE FUNCTION complete_batch(tids uuid[], wids text[], atts int[], lids uuid[]) RETURNS SETOF tasks LANGUAGE plpgsql AS $$
DECLARE i int;
BEGIN
  FOR i IN 1 .. coalesce(array_length(tids, 1), 0) LOOP
    RETURN QUERY
    WITH changed AS (UPDATE "tasks" SET "status" = 'completed', "updated_at" = now(), "lease_expires_at" = NULL, "completed_at" = now(), "result" = '{"success": true}' WHERE "tasks"."id" = tids[i] AND "tasks"."worker_id" = wids[i] AND "tasks"."attempt" = atts[i] AND "tasks"."status" = 'running' AND "tasks"."lease_id" = lids[i] RETURNING *), logged AS ( INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, attempt, status) SELECT id, now(), 'info', 20, 'Task completed', '{"event":"completed"}'::jsonb || jsonb_build_object('worker_id', worker_id), attempt, 'completed' FROM changed), tallied AS (UPDATE workers SET tasks_completed = tasks_completed + 1 WHERE id = (SELECT worker_id FROM changed)) SELECT * FROM changed;
  END LOOP;
END $$;
