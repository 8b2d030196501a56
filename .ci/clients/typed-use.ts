// A small typed use of the types openapi-typescript generates from /openapi.json (as api.d.ts beside this
// file); `tsc --noEmit --strict` must accept it. It breaks when a schema, an operation or a nullable field is
// lost from the document.
import type { components, paths } from "./api";

type Schemas = components["schemas"];
type CreateTask = paths["/api/v1/tasks"]["post"]["requestBody"]["content"]["application/json; charset=utf-8"];
type Created = paths["/api/v1/tasks"]["post"]["responses"]["201"]["content"]["application/json; charset=utf-8"];
type Claimed = paths["/api/v1/workers/{worker_id}/claim"]["post"]["responses"]["200"]["content"]["application/json; charset=utf-8"];
type Fail = paths["/api/v1/workers/{worker_id}/tasks/{task_id}/fail"]["post"]["requestBody"];
type Results = paths["/api/v1/batches/{batch_id}/results"]["get"]["responses"]["200"]["content"];

const create: CreateTask = { problem_id: "misconfig_app_hotel_res-detection-1", parameters: { agent: "gpt" } };
const matrix: Schemas["BatchMatrix"] = { problems: ["a", "b"], repetitions: 2, agent_configs: [{ agent: "gpt" }] };
const batch: Schemas["CreateBatchRequest"] = matrix;
const heartbeat: Schemas["HeartbeatRequest"] = { status: "idle", current_task_id: null };
const fail: NonNullable<Fail>["content"]["application/json; charset=utf-8"] = {
  attempt: 1,
  lease_id: "2fe6964f-8f8c-46fc-b5ba-06e7cc353da2",
  error: "the kind cluster did not come up",
  status: "failed",
  result: null,
};
const anonymous: Schemas["Identity"] = { auth_enabled: false, name: null, role: null, worker_pattern: null };
const csv: Results["text/csv"] = "id,problem_id\n";

function describe(task: Created | Claimed): string {
  const worker: string | null | undefined = task.worker_id;
  const ended: string | null | undefined = task.completed_at;
  return `${task.id} ${task.status} ${worker ?? "-"} ${ended ?? "running"}`;
}

function internal(status: Schemas["InternalStatus"]): number {
  return status.workers.length + status.num_workers;
}

export { anonymous, batch, create, csv, describe, fail, heartbeat, internal };
