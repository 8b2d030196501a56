"""Drives every operation of a live api-server through the Python client generated from its /openapi.json.

Usage: python3 drive.py BASE_URL TOKEN   (the generated package must be importable)
Any answer other than the one expected, or a nullable field that does not read back as None, fails the run.
"""

import csv
import io
import json
import sys
import uuid

from ai_ops_lab_task_executor_client import AuthenticatedClient
from ai_ops_lab_task_executor_client.api.health import health, metrics, ready, whoami
from ai_ops_lab_task_executor_client.api.tasks import (
    batch_results,
    follow_all,
    follow_task,
    cancel_batch,
    cancel_task,
    create_batch,
    create_task,
    export_tasks,
    get_batch,
    get_task,
    get_task_logs,
    list_batches,
    list_tasks,
    stats,
    stats_matrix,
)
from ai_ops_lab_task_executor_client.api.workers import (
    claim_task,
    complete_task,
    fail_task,
    get_worker,
    internal_workers_status,
    list_workers,
    register_worker,
    release_task,
    report_task_logs,
    scale_internal_workers,
    start_internal_workers,
    stop_internal_workers,
    worker_heartbeat,
)
from ai_ops_lab_task_executor_client.models import (
    BatchMatrix,
    BatchMatrixAgentConfigsType0Item,
    BatchOfTasks,
    CompleteTaskRequest,
    CompleteTaskRequestResult,
    CreateTaskRequest,
    CreateTaskRequestParametersType0,
    FailStatus,
    FailTaskRequest,
    Format,
    HeartbeatRequest,
    LogLevel,
    NewLogEntry,
    RegisterWorkerRequest,
    ReleaseTaskRequest,
    ReportLogsRequest,
    Role,
    ScaleRequest,
    TaskStatus,
    WorkerCapabilities,
    WorkerStatus,
)

PROBLEM = "misconfig_app_hotel_res-detection-1"
steps = 0


def ok(response, status, kind=None):
    """The answer's parsed body, after checking its status (and its type, when one is given)."""
    global steps
    steps += 1
    if response.status_code != status:
        sys.exit(f"expected {status}, got {response.status_code}: {response.content[:500]!r}")
    if kind is not None and not isinstance(response.parsed, kind):
        sys.exit(f"expected a {kind.__name__}, got {type(response.parsed).__name__}")
    return response.parsed


def check(condition, what):
    if not condition:
        sys.exit(f"check failed: {what}")


def events(client, kwargs, until):
    """The events of a live stream, read through the generated request (the generated parser reads a body
    as one object, which an event stream is not) until `until(events)` holds or the stream ends."""
    global steps
    steps += 1
    seen = []
    with client.get_httpx_client().stream(**kwargs) as response:
        check(response.status_code == 200, f"a stream answers 200, not {response.status_code}")
        event = {}
        for line in response.iter_lines():
            if line:
                key, _, value = line.partition(": ")
                event[key] = value
                continue
            if event:
                seen.append({"event": event["event"], **json.loads(event["data"])})
                event = {}
                if until(seen):
                    break
    return seen


def main(base_url, token):
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
    ok(health.sync_detailed(client=client), 200)
    ok(ready.sync_detailed(client=client), 200)
    check("task_executor" in ok(metrics.sync_detailed(client=client), 200, str), "metrics are Prometheus text")

    me = ok(whoami.sync_detailed(client=client), 200)
    check(me.auth_enabled and me.role == Role.ADMIN, "whoami names an admin")
    check(me.worker_pattern is None, "an admin's worker_pattern reads back as None")

    # A task, read back with every field the server leaves empty as None, then cancelled.
    params = CreateTaskRequestParametersType0.from_dict({"agent": "gpt", "max_steps": 5})
    task = ok(create_task.sync_detailed(client=client, body=CreateTaskRequest(problem_id=PROBLEM, parameters=params)), 201)
    check(task.status == TaskStatus.PENDING and task.parameters["max_steps"] == 5, "a pending task with its parameters")
    for field in ("worker_id", "result", "lease_expires_at", "started_at", "completed_at", "batch_id"):
        check(getattr(task, field) is None, f"a pending task's {field} reads back as None")
    again = ok(get_task.sync_detailed(task.id, client=client), 200)
    check(again.id == task.id and again.worker_id is None, "get returns the same task")
    listed = ok(list_tasks.sync_detailed(client=client, status=TaskStatus.PENDING), 200, list)
    check(task.id in [t.id for t in listed], "list shows the pending task")
    check(ok(cancel_task.sync_detailed(task.id, client=client), 200).task_id == task.id, "cancel names the task")
    check(ok(get_task.sync_detailed(task.id, client=client), 200).status == TaskStatus.CANCELLED, "cancelled")
    stream = events(client, follow_task._get_kwargs(task.id), lambda seen: False)
    check([e["event"] for e in stream] == ["status", "end"], f"a finished task's stream: {stream}")
    check(stream[0]["task"]["status"] == "cancelled" and stream[0]["task"]["worker_id"] is None, "its state")
    everything = events(client, follow_all._get_kwargs(after_seq=0),
                        lambda seen: any(e["task_id"] == str(task.id) and e["status"] == "cancelled" for e in seen))
    check(everything and everything[-1]["status"] == "cancelled", "the service's stream shows the cancel")

    # A worker: register, heartbeat, claim (204 on an empty queue, then 200), logs, complete, fail, release.
    worker_id = f"py-client-{uuid.uuid4().hex[:8]}"
    registered = ok(register_worker.sync_detailed(client=client, body=RegisterWorkerRequest(
        worker_id=worker_id, backend_type="python-client",
        capabilities=WorkerCapabilities(max_parallel_tasks=3))), 201)
    check(registered.id == worker_id, "registration names the worker")
    beat = ok(worker_heartbeat.sync_detailed(worker_id, client=client, body=HeartbeatRequest(status=WorkerStatus.IDLE)), 200)
    check(beat.cancel_task_ids == [], "no task to cancel")
    check(ok(claim_task.sync_detailed(worker_id, client=client), 204) is None, "an empty queue answers 204")

    tasks = [ok(create_task.sync_detailed(client=client, body=CreateTaskRequest(problem_id=PROBLEM)), 201)
             for _ in range(3)]
    claims = [ok(claim_task.sync_detailed(worker_id, client=client, wait_seconds=1), 200) for _ in tasks]
    check(sorted(c.id for c in claims) == sorted(t.id for t in tasks), "the worker claimed the three tasks")
    first, second, third = claims
    check(first.status == TaskStatus.RUNNING and first.worker_id == worker_id, "a claim runs the task here")
    check(first.completed_at is None and first.result is None, "a running task's end reads back as None")
    ok(worker_heartbeat.sync_detailed(worker_id, client=client, body=HeartbeatRequest(
        status=WorkerStatus.BUSY, running_task_ids=[c.id for c in claims])), 200)
    logged = ok(report_task_logs.sync_detailed(worker_id, first.id, client=client, body=ReportLogsRequest(
        attempt=first.attempt, lease_id=first.lease_id,
        entries=[NewLogEntry(level=LogLevel.INFO, message="deploying the application")])), 200)
    check(logged.accepted == 1, "one log entry accepted")
    logs = ok(get_task_logs.sync_detailed(first.id, client=client), 200, list)
    check(any(e.message == "deploying the application" for e in logs), "the log entry reads back")

    result = CompleteTaskRequestResult.from_dict({"success": True, "metrics": {"TTD": 12.5}, "steps": 4})
    done = ok(complete_task.sync_detailed(worker_id, first.id, client=client, body=CompleteTaskRequest(
        attempt=first.attempt, lease_id=first.lease_id, result=result)), 200)
    check(done.status == TaskStatus.COMPLETED and done.lease_expires_at is None, "completed, with no lease")
    failed = ok(fail_task.sync_detailed(worker_id, second.id, client=client, body=FailTaskRequest(
        attempt=second.attempt, lease_id=second.lease_id, error="the kind cluster did not come up",
        status=FailStatus.FAILED)), 200)
    check(failed.status in (TaskStatus.FAILED, TaskStatus.PENDING), "failed (or queued again to retry)")
    stale = ok(fail_task.sync_detailed(worker_id, third.id, client=client, body=FailTaskRequest(
        attempt=third.attempt, lease_id=uuid.uuid4(), error="a stale lease")), 409)
    check(stale.type_ and stale.request_id, "a wrong lease is refused with the error body")
    released = ok(release_task.sync_detailed(worker_id, third.id, client=client, body=ReleaseTaskRequest(
        attempt=third.attempt, lease_id=third.lease_id, reason="shutting down")), 200)
    check(released.status == TaskStatus.PENDING and released.worker_id is None, "released to the queue")
    ok(cancel_task.sync_detailed(third.id, client=client), 200)
    check(ok(get_worker.sync_detailed(worker_id, client=client), 200).id == worker_id, "the worker reads back")
    check(worker_id in [w.id for w in ok(list_workers.sync_detailed(client=client), 200, list)],
          "the worker is listed")

    # Batches: one of tasks, one matrix; its results as CSV and JSON; stats; cancel.
    of_tasks = ok(create_batch.sync_detailed(client=client, body=BatchOfTasks(
        name="two", tasks=[CreateTaskRequest(problem_id=PROBLEM), CreateTaskRequest(problem_id=PROBLEM, priority=3)])), 201)
    check(of_tasks.task_count == 2 and len(of_tasks.task_ids) == 2, "a batch of two tasks")
    matrix = ok(create_batch.sync_detailed(client=client, body=BatchMatrix(
        name="matrix", problems=[PROBLEM, "k8s_target_port-misconfig-detection-1"], repetitions=2,
        agent_configs=[BatchMatrixAgentConfigsType0Item.from_dict({"agent": "gpt"})])), 201)
    check(len(matrix.task_ids) == 4, "a 2 × 1 × 2 matrix")
    batch = ok(get_batch.sync_detailed(str(matrix.id), client=client), 200)
    check(batch.task_count == 4 and batch.success_rate is None and batch.finished_at is None,
          "a fresh matrix of four: no success rate, no end, as None")
    check(matrix.id in [b.id for b in ok(list_batches.sync_detailed(client=client), 200, list)], "listed")

    claimed = ok(claim_task.sync_detailed(worker_id, client=client), 200)
    ok(complete_task.sync_detailed(worker_id, claimed.id, client=client, body=CompleteTaskRequest(
        attempt=claimed.attempt, lease_id=claimed.lease_id, result=result)), 200)
    rows = list(csv.DictReader(io.StringIO(ok(batch_results.sync_detailed(
        str(of_tasks.id), client=client, format_=Format.CSV), 200, str))))
    check(len(rows) == 2, "the CSV has a row per task")
    as_json = json.loads(ok(batch_results.sync_detailed(str(matrix.id), client=client, format_=Format.JSON), 200, str))
    check(len(as_json) == 4, "the JSON has an object per task")
    lines = ok(export_tasks.sync_detailed(client=client, format_=Format.JSONL, status=TaskStatus.COMPLETED), 200, str)
    check(len(lines.splitlines()) == 2, "two completed tasks exported as JSON lines")
    figures = ok(stats.sync_detailed(client=client), 200)
    check(sum(g.runs for g in figures.groups) >= 9, "stats count every task")
    ok(stats.sync_detailed(client=client, batch_id=matrix.id), 200)
    board = ok(stats_matrix.sync_detailed(client=client), 200)
    check(sum(c.successes for c in board.cells) >= 1, "the leaderboard counts the successes")
    for c in board.cells:
        if c.runs:
            check(abs(c.success_rate - c.successes / c.runs) < 1e-9
                  and c.ci95.low <= c.success_rate <= c.ci95.high, "each rate lies within its interval")
        else:
            check(c.success_rate is None and c.ci95 is None, "a cell without runs: no rate, no interval, None")
    # The CSV form: the generated parser reads JSON, so it is fetched through the client's own httpx.
    text = client.get_httpx_client().get("/api/v1/stats/matrix", params={"format": "csv"})
    check(text.status_code == 200 and text.text.startswith("agent,problem_id,runs,successes"), "the CSV leaderboard")
    ok(cancel_batch.sync_detailed(str(matrix.id), client=client), 200)
    ok(cancel_batch.sync_detailed(str(of_tasks.id), client=client), 200)

    # Internal workers: status, start, scale, stop.
    status = ok(internal_workers_status.sync_detailed(client=client), 200)
    check(status.num_workers == 0, "no internal workers to begin with")
    ok(start_internal_workers.sync_detailed(client=client), 200)
    scaled = ok(scale_internal_workers.sync_detailed(client=client, body=ScaleRequest(num_workers=2)), 200)
    check(scaled.new_count == 2, "scaled to two")
    check(ok(internal_workers_status.sync_detailed(client=client), 200).num_workers == 2, "two internal workers")
    ok(stop_internal_workers.sync_detailed(client=client), 200)

    # A bad request comes back as the error body, parsed.
    bad = ok(create_task.sync_detailed(client=client, body=CreateTaskRequest(problem_id="")), 422)
    check(len(bad.detail) < 1024, "a short validation error")
    print(f"python client: {steps} calls (every operation) answered as expected")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
