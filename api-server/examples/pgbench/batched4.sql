-- What-if: batching across workers, four lives per client with four workers each: one multi-row creation (with
-- its entries), then the claims of the four workers in one statement, then the ends of their runs in one
-- statement (setup.sql's functions loop over the service's claim and end of a run): three commits for four
-- tasks, where service.sql makes twelve. Tasks per second = tps x 4.
WITH inserted AS (INSERT INTO "tasks" ("id", "problem_id", "status", "priority", "parameters", "created_at", "updated_at") SELECT gen_random_uuid(), 'pgb', 'pending', 0, '{"max_steps": 30}', now(), now() FROM generate_series(1,4) RETURNING *), logged AS ( INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, status) SELECT id, created_at, 'info', 20, 'Task created', '{"event":"created"}', status FROM inserted) SELECT count(*) FROM inserted;
SELECT array_agg(tid)::text AS tids, array_agg(wid)::text AS wids, array_agg(att)::text AS atts, array_agg(lid)::text AS lids FROM claim_batch(ARRAY['pgb-' || (:client_id*4+1), 'pgb-' || (:client_id*4+2), 'pgb-' || (:client_id*4+3), 'pgb-' || (:client_id*4+4)]) WHERE tid IS NOT NULL
\gset
SELECT count(*) FROM complete_batch(NULLIF(:tids, '')::uuid[], NULLIF(:wids, '')::text[], NULLIF(:atts, '')::int[], NULLIF(:lids, '')::uuid[]);
