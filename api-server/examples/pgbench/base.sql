-- The baseline: the life of a task as three bare statements (as queue_bench's baseline runs them).
INSERT INTO tasks (id, problem_id, status, priority, parameters, created_at, updated_at) VALUES (gen_random_uuid(), 'pgb', 'pending', 0, '{"max_steps": 30}', now(), now());
WITH c AS (UPDATE tasks SET status = 'running', worker_id = 'x' || :client_id, attempt = attempt + 1, started_at = now(), updated_at = now() WHERE id = (SELECT id FROM tasks WHERE status = 'pending' ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id) SELECT (SELECT id FROM c) AS tid
\gset
UPDATE tasks SET status = 'completed', result = '{"success": true}', completed_at = now(), updated_at = now() WHERE id = NULLIF(:tid,'')::uuid AND status = 'running';
