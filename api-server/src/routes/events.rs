//! Live updates: a task's events over Server-Sent Events (`/api/v1/tasks/{id}/events`) and WebSocket
//! (`/ws/tasks/{id}`, the specification's path), and every task's state changes (`/api/v1/events`). See
//! [`crate::events`] for where they come from.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, stream::BoxStream};
use poem::web::sse::{Event as SseEvent, SSE};
use poem::{
    IntoResponse, Request,
    web::{
        Data,
        websocket::{Message, WebSocket},
    },
};
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Path, Query},
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};
use task_executor_shared::{
    Role,
    api::{EventKind, TaskEvent},
};
use uuid::Uuid;

use super::ApiTags;
use crate::{
    auth::{Auth, Caller, Read},
    error::ApiError,
    events::{self, From, StartError},
    state::AppState,
};

pub struct EventsApi {
    pub state: AppState,
}

/// SSE comments sent while nothing happens, so that proxies and idle timeouts keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One Server-Sent Events message, as the stream's schema (SSE-aware tools such as schemathesis check each
/// message against it; poem-openapi's own `EventStream` would declare an array).
#[derive(poem_openapi::Object)]
struct SseMessage {
    /// The event's `seq`: what `Last-Event-ID` resumes after.
    id: String,
    /// The event's `type`: `status`, `log` or `end`.
    event: String,
    /// The event: a `TaskEvent` as JSON.
    data: String,
}

/// A live stream of [`TaskEvent`]s over Server-Sent Events.
enum StreamResponse {
    Events(BoxStream<'static, TaskEvent>),
    /// A resume after the end of a finished task: nothing more will come (`EventSource` stops reconnecting
    /// on a 204).
    Finished,
}

impl poem::IntoResponse for StreamResponse {
    fn into_response(self) -> poem::Response {
        let stream = match self {
            StreamResponse::Events(s) => s,
            StreamResponse::Finished => {
                return poem::Response::builder()
                    .status(poem::http::StatusCode::NO_CONTENT)
                    .finish();
            }
        };
        let events = stream.map(|e| {
            let kind = match e.kind {
                EventKind::Status => "status",
                EventKind::Log => "log",
                EventKind::End => "end",
            };
            SseEvent::message(serde_json::to_string(&e).unwrap_or_else(|_| "{}".to_owned()))
                .id(e.seq.to_string())
                .event_type(kind)
        });
        SSE::new(events).keep_alive(KEEP_ALIVE).into_response()
    }
}

impl ApiResponse for StreamResponse {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: "`text/event-stream`: one event per message, its `event` the `type`, its `id` the \
                              `seq`, its `data` the JSON event.",
                    status: Some(200),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "text/event-stream",
                        schema: <SseMessage as Type>::schema_ref(),
                    }],
                    headers: vec![],
                },
                MetaResponse {
                    description: "A resume (`Last-Event-ID`, `after_seq`) at or after the last event of a finished \
                              task: there is nothing more.",
                    status: Some(204),
                    status_range: None,
                    content: vec![],
                    headers: vec![],
                },
            ],
        }
    }

    fn register(registry: &mut Registry) {
        <SseMessage as Type>::register(registry);
        <TaskEvent as Type>::register(registry);
    }
}

fn sse(stream: BoxStream<'static, TaskEvent>) -> StreamResponse {
    StreamResponse::Events(stream)
}

/// Where to resume: `Last-Event-ID` (what browsers send again on reconnect) or `after_seq`.
fn resume_point(last_event_id: Option<i64>, after_seq: Option<i64>) -> Option<i64> {
    last_event_id.or(after_seq)
}

fn start_error(task_id: Uuid, e: StartError) -> ApiError {
    match e {
        StartError::NotFound => {
            ApiError::not_found("task_not_found", format!("task {task_id} not found"))
        }
        StartError::Store(e) => e.into(),
        // Answered as 204 where it can happen (a resume); never reaches here otherwise.
        StartError::Finished => {
            ApiError::conflict("task_finished", format!("task {task_id} is finished"))
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tasks")]
impl EventsApi {
    /// Follow a task (Server-Sent Events)
    ///
    /// First the task's current state (`type: status`, with the whole `task`), then each state change
    /// (`status`) and log entry (`log`) as it is written, then `end` when the task is finished, and the stream
    /// closes. Each event's `id` is its `seq`: reconnecting with `Last-Event-ID` (or `after_seq`) resumes right
    /// after it, missing nothing and repeating nothing (and without the first state event).
    #[oai(
        path = "/tasks/:task_id/events",
        method = "get",
        operation_id = "follow_task"
    )]
    async fn follow_task(
        &self,
        _auth: Auth<Read>,
        task_id: Path<Uuid>,
        /// The last `seq` received (sent by browsers on reconnect).
        #[oai(name = "Last-Event-ID", validator(minimum(value = "0")))]
        last_event_id: Header<Option<i64>>,
        /// Resume after this `seq`.
        #[oai(validator(minimum(value = "0")))]
        after_seq: Query<Option<i64>>,
    ) -> Result<StreamResponse, ApiError> {
        let from = match resume_point(last_event_id.0, after_seq.0) {
            Some(seq) => From::After(seq),
            None => From::Now,
        };
        match events::task_stream(self.state.tail.clone(), task_id.0, from).await {
            Ok(stream) => Ok(sse(stream.boxed())),
            Err(StartError::Finished) => Ok(StreamResponse::Finished),
            Err(e) => Err(start_error(task_id.0, e)),
        }
    }

    /// Follow every task's state changes (Server-Sent Events)
    ///
    /// Each state change of every task (`type: status`), or of one batch's tasks with `batch_id`, from now
    /// (or after `Last-Event-ID` / `after_seq`). For dashboards; it does not end by itself.
    #[oai(path = "/events", method = "get", operation_id = "follow_all")]
    async fn follow_all(
        &self,
        _auth: Auth<Read>,
        /// Only the tasks of this batch.
        batch_id: Query<Option<Uuid>>,
        /// The last `seq` received (sent by browsers on reconnect).
        #[oai(name = "Last-Event-ID", validator(minimum(value = "0")))]
        last_event_id: Header<Option<i64>>,
        /// Resume after this `seq`.
        #[oai(validator(minimum(value = "0")))]
        after_seq: Query<Option<i64>>,
    ) -> Result<StreamResponse, ApiError> {
        let after = resume_point(last_event_id.0, after_seq.0);
        let stream = events::all_stream(self.state.tail.clone(), batch_id.0, after).await?;
        Ok(sse(stream.boxed()))
    }
}

#[derive(serde::Deserialize)]
struct WsQuery {
    after_seq: Option<i64>,
}

/// `GET /ws/tasks/{task_id}` (WebSocket): the same events as the SSE stream, one JSON text message each, then
/// the server closes. `?after_seq=N` resumes after `seq` N.
#[poem::handler]
pub async fn ws_task(
    req: &Request,
    poem::web::Path(task_id): poem::web::Path<String>,
    poem::web::Query(q): poem::web::Query<WsQuery>,
    ws: WebSocket,
    Data(state): Data<&AppState>,
) -> poem::Result<poem::Response> {
    let refuse = |e: ApiError| poem::Error::from_response(e.into_response());
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    caller.require(Role::Read).map_err(refuse)?;
    let task_id = Uuid::parse_str(&task_id)
        .map_err(|_| refuse(ApiError::validation("task_id must be a UUID")))?;
    let from = match q.after_seq {
        Some(seq) if seq < 0 => return Err(refuse(ApiError::validation("after_seq must be >= 0"))),
        Some(seq) => From::After(seq),
        None => From::Now,
    };
    let stream = match events::task_stream(state.tail.clone(), task_id, from).await {
        Ok(s) => s,
        Err(StartError::Finished) => return Ok(StreamResponse::Finished.into_response()),
        Err(e) => return Err(refuse(start_error(task_id, e))),
    };
    // The stream runs in a task of its own and hands events over a bounded channel: a slow client holds
    // back only its own stream, and the stream stops when the client goes.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TaskEvent>(64);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                // The client went: stop reading the log for it.
                _ = tx.closed() => return,
                next = stream.next() => match next {
                    Some(e) => {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    Ok(ws
        .on_upgrade(move |socket| async move {
            let (mut sink, mut incoming) = socket.split();
            // Pings find a client that vanished without closing (upgraded connections have no idle timeout).
            let mut heard = std::time::Instant::now();
            let mut ping = tokio::time::interval_at(
                tokio::time::Instant::now() + KEEP_ALIVE,
                KEEP_ALIVE,
            );
            loop {
                tokio::select! {
                    _ = ping.tick() => {
                        if heard.elapsed() > KEEP_ALIVE * 3
                            || sink.send(Message::Ping(Vec::new())).await.is_err()
                        {
                            return;
                        }
                    }
                    next = rx.recv() => match next {
                        Some(e) => {
                            let text = serde_json::to_string(&e).unwrap_or_else(|_| "{}".to_owned());
                            if sink.send(Message::Text(text)).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    },
                    msg = incoming.next() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        // Pongs (answered to the pings by every client) and anything else: it is there.
                        Some(Ok(_)) => heard = std::time::Instant::now(),
                    },
                }
            }
            let _ = sink.send(Message::Close(None)).await;
            let _ = sink.close().await;
        })
        .into_response())
}
