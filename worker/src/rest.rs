//! The JobManager REST API (contract: `docs/jobmanager-api.yaml`), served over a
//! [`JobHandle`]. Local mode serves it with `--rest-addr`; the operator drives it to take
//! savepoints before rescales and upgrades.
//!
//! Request bodies are capped at 64 KiB (413 beyond); every error is `{"error": "..."}` with a
//! 4xx status. A savepoint target must be a clean absolute URI (else 400) under the job's
//! checkpoint storage or one of its `checkpointing.savepointDirectories` (else 403), so
//! callers cannot write elsewhere with the job's credentials.

use crate::spec::SavepointTargetError;
use crate::spec::rest::{SavepointRequest, TriggerResponse, paths};
use axum::extract::rejection::JsonRejection;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::runtime::job::{JobHandle, JobState};

const MAX_BODY_BYTES: usize = 64 << 10;

/// The API; with `token`, every endpoint but the health probes and `/metrics` wants
/// `Authorization: Bearer <token>` (401 otherwise).
pub fn router(job: JobHandle, token: Option<RestToken>) -> Router {
    let open = Router::new()
        .route(paths::LIVE, get(|| async { Json(json!({"status": "ok"})) }))
        .route(paths::READY, get(ready))
        .route(
            paths::METRICS,
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    crate::metrics::global().encode(),
                )
            }),
        );
    let mut guarded = Router::new()
        .route(
            paths::JOBS,
            get(|State(job): State<JobHandle>| async move { Json(vec![job.overview()]) }),
        )
        .route(paths::JOB, get(overview))
        .route(paths::CHECKPOINTS, get(checkpoints))
        .route(paths::SAVEPOINTS, post(savepoint))
        .route(paths::STOP, post(stop))
        .route(paths::SAVEPOINT, get(savepoint_status))
        .route(paths::CANCEL, post(cancel))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") });
    if let Some(token) = token {
        // A layer, not a route layer: unknown paths answer 401 too, so nobody learns the
        // API's shape without the token.
        guarded = guarded.layer(middleware::from_fn_with_state(token, authenticate));
    }
    open.merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(job)
}

/// The bearer token callers of the REST API must present. Never logged: `Debug` hides it.
#[derive(Clone)]
pub struct RestToken(Arc<str>);

impl RestToken {
    /// Refuses an empty or blank token: it would let anyone in who sends `Bearer `.
    pub fn new(token: &str) -> Option<RestToken> {
        let token = token.trim();
        (!token.is_empty()).then(|| RestToken(token.into()))
    }

    fn admits(&self, presented: &str) -> bool {
        // Constant time: the comparison must not tell a caller how much of a guess was right.
        bool::from(presented.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for RestToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestToken(<redacted>)")
    }
}

async fn authenticate(State(token): State<RestToken>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if token.admits(presented) => next.run(request).await,
        presented => {
            crate::metrics::global().rest_unauthorized.inc();
            let message = if presented.is_some() {
                "wrong bearer token"
            } else {
                "this endpoint needs `Authorization: Bearer <token>`"
            };
            let mut response = error(StatusCode::UNAUTHORIZED, message);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Serves the API until the process exits; returns the bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    job: JobHandle,
    token: Option<RestToken>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(job, token)).await {
            tracing::error!(error = %e, "REST server stopped");
        }
    });
    Ok(bound)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

/// The 404 for a job id this JobManager does not run.
fn unknown_job(job: &JobHandle, job_id: &str) -> Option<Response> {
    (job.job_id() != job_id)
        .then(|| error(StatusCode::NOT_FOUND, format!("unknown job {job_id:?}")))
}

async fn ready(State(job): State<JobHandle>) -> Response {
    match job.overview().state {
        JobState::Running => Json(json!({"status": "ok"})).into_response(),
        state => error(StatusCode::SERVICE_UNAVAILABLE, format!("job is {state:?}")),
    }
}

async fn overview(State(job): State<JobHandle>, Path(job_id): Path<String>) -> Response {
    unknown_job(&job, &job_id).unwrap_or_else(|| Json(job.overview()).into_response())
}

async fn checkpoints(State(job): State<JobHandle>, Path(job_id): Path<String>) -> Response {
    unknown_job(&job, &job_id).unwrap_or_else(|| Json(job.checkpoints()).into_response())
}

fn trigger(
    job: &JobHandle,
    job_id: &str,
    body: Result<Json<SavepointRequest>, JsonRejection>,
    stop: bool,
) -> Response {
    if let Some(response) = unknown_job(job, job_id) {
        return response;
    }
    let request = match body {
        Ok(Json(request)) => request,
        // 400 for malformed JSON and wrong fields, 415 for a wrong content type, 413 for a
        // body over the limit.
        Err(rejection) => {
            let status = match rejection.status() {
                status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => {
                    status
                }
                // axum says 422 for well-formed JSON of the wrong shape; the contract says 400.
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, rejection.body_text());
        }
    };
    let refusal = match job.check_savepoint_target(&request.target_directory) {
        None => Some((
            StatusCode::CONFLICT,
            "the job has no checkpointing configured, so it takes no savepoints".to_string(),
        )),
        Some(Ok(())) => None,
        Some(Err(e @ SavepointTargetError::Malformed(_))) => {
            Some((StatusCode::BAD_REQUEST, format!("targetDirectory: {e}")))
        }
        Some(Err(e @ SavepointTargetError::NotAllowed(_))) => {
            Some((StatusCode::FORBIDDEN, format!("targetDirectory: {e}")))
        }
    };
    if let Some((status, message)) = refusal {
        return error(status, message);
    }
    match job.request_savepoint(&request.target_directory, stop) {
        Ok(trigger_id) => {
            (StatusCode::ACCEPTED, Json(TriggerResponse { trigger_id })).into_response()
        }
        Err(message) => error(StatusCode::CONFLICT, message),
    }
}

async fn savepoint(
    State(job): State<JobHandle>,
    Path(job_id): Path<String>,
    body: Result<Json<SavepointRequest>, JsonRejection>,
) -> Response {
    trigger(&job, &job_id, body, false)
}

async fn stop(
    State(job): State<JobHandle>,
    Path(job_id): Path<String>,
    body: Result<Json<SavepointRequest>, JsonRejection>,
) -> Response {
    trigger(&job, &job_id, body, true)
}

async fn savepoint_status(
    State(job): State<JobHandle>,
    Path((job_id, trigger_id)): Path<(String, String)>,
) -> Response {
    if let Some(response) = unknown_job(&job, &job_id) {
        return response;
    }
    match job.savepoint(&trigger_id) {
        Some(status) => Json(status).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("unknown savepoint trigger {trigger_id:?}"),
        ),
    }
}

async fn cancel(State(job): State<JobHandle>, Path(job_id): Path<String>) -> Response {
    if let Some(response) = unknown_job(&job, &job_id) {
        return response;
    }
    match job.cancel() {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({}))).into_response(),
        Err(message) => error(StatusCode::CONFLICT, message),
    }
}
