//! HTTP to [`VmApi`]: the router, one handler per [`Endpoint`], strict JSON bodies, and JSON
//! error answers, with every request logged.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use log::{debug, info};
use serde::de::DeserializeOwned;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::endpoints::Endpoint;
use crate::journal::{Record, Subscription};
use crate::stopping::Stopping;
use crate::types::{
    AddMemoryRequest, ApiError, DimmInfo, ErrorBody, LaggedRecord, PingResponse,
    RemoveMemoryRequest, ResizeRequest, ResizeZoneRequest, VmInfo,
};
use crate::VmApi;

/// Requests carry a few numbers; anything bigger is a mistake.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// The media type of the events stream: one JSON object per line.
const NDJSON: &str = "application/x-ndjson";

/// How many events streams are served at once. A stream keeps its connection for as long as
/// its client reads, so without a cap of their own streams could take every connection the
/// server serves and leave none for calls.
pub const MAX_EVENT_STREAMS: usize = 16;

type Vm = Arc<dyn VmApi>;

/// What the handlers share; each takes the part it needs.
#[derive(Clone)]
struct ApiState {
    vm: Vm,
    stopping: Stopping,
    body_read_timeout: BodyReadTimeout,
    event_streams: EventStreams,
}

/// The events streams still free to open, of [`MAX_EVENT_STREAMS`].
#[derive(Clone)]
struct EventStreams(Arc<Semaphore>);

/// How long a request body may take to arrive once its headers are in.
#[derive(Debug, Clone, Copy)]
struct BodyReadTimeout(Duration);

impl FromRef<ApiState> for Vm {
    fn from_ref(state: &ApiState) -> Self {
        state.vm.clone()
    }
}

impl FromRef<ApiState> for Stopping {
    fn from_ref(state: &ApiState) -> Self {
        state.stopping.clone()
    }
}

impl FromRef<ApiState> for EventStreams {
    fn from_ref(state: &ApiState) -> Self {
        state.event_streams.clone()
    }
}

impl FromRef<ApiState> for BodyReadTimeout {
    fn from_ref(state: &ApiState) -> Self {
        state.body_read_timeout
    }
}

/// The whole API: every [`Endpoint`], JSON 404 and 405 answers, the body limits and logging.
/// `stopping` ends the answers that would otherwise never end when the server stops; a request
/// body that takes longer than `body_read_timeout` to arrive is answered 408.
pub(crate) fn router(vm: Vm, stopping: Stopping, body_read_timeout: Duration) -> Router {
    Endpoint::ALL
        .into_iter()
        .fold(Router::new(), |router, endpoint| {
            router.route(endpoint.path(), method_router(endpoint))
        })
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(log_request))
        .layer(middleware::map_response(without_reason_phrase))
        .with_state(ApiState {
            vm,
            stopping,
            body_read_timeout: BodyReadTimeout(body_read_timeout),
            event_streams: EventStreams(Arc::new(Semaphore::new(MAX_EVENT_STREAMS))),
        })
}

fn method_router(endpoint: Endpoint) -> MethodRouter<ApiState> {
    let filter = MethodFilter::try_from(endpoint.method())
        .expect("endpoints use only standard HTTP methods");
    match endpoint {
        Endpoint::Ping => on(filter, ping),
        Endpoint::Shutdown => on(filter, shutdown),
        Endpoint::VmInfo => on(filter, info),
        Endpoint::VmMemory => on(filter, memory),
        Endpoint::VmResize => on(filter, resize),
        Endpoint::VmResizeZone => on(filter, resize_zone),
        Endpoint::VmAddMemory => on(filter, add_memory),
        Endpoint::VmRemoveMemory => on(filter, remove_memory),
        Endpoint::Events => on(filter, events),
    }
}

async fn ping() -> Json<PingResponse> {
    Json(PingResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Answers once the VMM has been told to stop; the server then finishes the answers in
/// flight and stops with it.
async fn shutdown(State(vm): State<Vm>) -> Result<StatusCode, ErrorResponse> {
    call_vm(vm, |vm| vm.shutdown()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn info(State(vm): State<Vm>) -> Result<Json<VmInfo>, ErrorResponse> {
    call_vm(vm, |vm| vm.info()).await.map(Json)
}

async fn memory(State(vm): State<Vm>) -> Result<Json<Vec<DimmInfo>>, ErrorResponse> {
    call_vm(vm, |vm| vm.memory()).await.map(Json)
}

async fn resize(
    State(vm): State<Vm>,
    JsonBody(request): JsonBody<ResizeRequest>,
) -> Result<StatusCode, ErrorResponse> {
    call_vm(vm, move |vm| vm.resize(request)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize_zone(
    State(vm): State<Vm>,
    JsonBody(request): JsonBody<ResizeZoneRequest>,
) -> Result<StatusCode, ErrorResponse> {
    call_vm(vm, move |vm| vm.resize_zone(request)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_memory(
    State(vm): State<Vm>,
    JsonBody(request): JsonBody<AddMemoryRequest>,
) -> Result<Json<DimmInfo>, ErrorResponse> {
    Ok(Json(call_vm(vm, move |vm| vm.add_memory(request)).await??))
}

async fn remove_memory(
    State(vm): State<Vm>,
    JsonBody(request): JsonBody<RemoveMemoryRequest>,
) -> Result<StatusCode, ErrorResponse> {
    call_vm(vm, move |vm| vm.remove_memory(request)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// Subscribes to the VMM's events and streams them, one JSON line each, until the client goes
/// away or the server stops; `?since=N` first replays the events after event N that the VMM
/// still holds. A reader that falls behind gets a `{"lagged": N}` line for what it missed
/// (the journal, not the reader, bounds what is queued). Beyond [`MAX_EVENT_STREAMS`] at
/// once, a stream is answered 503.
async fn events(
    State(vm): State<Vm>,
    State(stopping): State<Stopping>,
    State(EventStreams(streams)): State<EventStreams>,
    uri: Uri,
) -> Result<Response, ErrorResponse> {
    let since = since(uri.query())?;
    let stream = streams.try_acquire_owned().map_err(|_| {
        ErrorResponse::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_EVENT_STREAMS} events streams are open, the most served at once; \
                 close one or try again later"
            ),
        )
    })?;
    let subscription = call_vm(vm, move |vm| vm.subscribe(since)).await?;
    let body = Body::from_stream(event_lines(subscription, stopping, stream));
    Ok(([(CONTENT_TYPE, NDJSON)], body).into_response())
}

/// The events stream's one query parameter, `since=N`.
fn since(query: Option<&str>) -> Result<Option<u64>, ErrorResponse> {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return Ok(None);
    };
    query
        .strip_prefix("since=")
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ErrorResponse::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad query '{query}': the events stream takes only since=N, N an event's seq"
                ),
            )
        })
}

/// The lines of the events stream. Dropped when the client disconnects (hyper notices the
/// closed socket and drops the response), which drops the subscription. When the server
/// stops, the stream sends what is already queued and ends, so the client sees a complete
/// answer and the graceful shutdown need not wait for its grace period. `stream` is the
/// stream's place among [`MAX_EVENT_STREAMS`], given back with the stream.
fn event_lines(
    subscription: Subscription,
    stopping: Stopping,
    stream: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Vec<u8>, serde_json::Error>> {
    stream::unfold((subscription, stream), move |(mut subscription, stream)| {
        let stopping = stopping.clone();
        async move {
            let record = tokio::select! {
                biased;
                record = subscription.next() => record,
                () = stopping.requested() => subscription.try_next(),
            }?;
            let line = match record {
                Record::Event(event) => serde_json::to_vec(&event),
                Record::Lagged(lagged) => serde_json::to_vec(&LaggedRecord { lagged }),
            };
            let line = line.map(|mut line| {
                line.push(b'\n');
                line
            });
            Some((line, (subscription, stream)))
        }
    })
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ErrorResponse {
    ErrorResponse::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ErrorResponse {
    let path = uri.path();
    let allowed: Vec<String> = Endpoint::ALL
        .iter()
        .filter(|endpoint| endpoint.path() == path)
        .map(|endpoint| endpoint.method().to_string())
        .collect();
    ErrorResponse::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {path}; use {}",
            allowed.join(" or ")
        ),
    )
}

/// Runs a call into the VMM on tokio's blocking pool: it may wait many seconds for the guest,
/// and meanwhile the server's one I/O thread keeps answering other requests.
async fn call_vm<R, F>(vm: Vm, call: F) -> Result<R, ErrorResponse>
where
    R: Send + 'static,
    F: FnOnce(&dyn VmApi) -> R + Send + 'static,
{
    tokio::task::spawn_blocking(move || call(vm.as_ref()))
        .await
        .map_err(|error| {
            ErrorResponse::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the VMM failed to handle the request: {error}"),
            )
        })
}

/// A strictly parsed JSON request body. Unlike axum's `Json` it does not insist on a
/// `Content-Type` header (so `curl -d` works) and its failures say what is wrong in a
/// `400` (or `413`) JSON error. A body that does not arrive whole within the
/// [`BodyReadTimeout`] is answered `408`: counted for the whole body, not between its pieces,
/// so that a client trickling it cannot hold the connection (and a VMM call) for ever.
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    BodyReadTimeout: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ErrorResponse;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let BodyReadTimeout(timeout) = BodyReadTimeout::from_ref(state);
        let body = tokio::time::timeout(timeout, Bytes::from_request(request, state))
            .await
            .map_err(|_| {
                ErrorResponse::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not received within {timeout:?}"),
                )
            })?
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ErrorResponse::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body too large: the limit is {BODY_LIMIT} bytes"),
                ),
                status => ErrorResponse::new(
                    status,
                    format!("cannot read request body: {}", rejection.body_text()),
                ),
            })?;
        if body.trim_ascii().is_empty() {
            return Err(ErrorResponse::new(
                StatusCode::BAD_REQUEST,
                "missing request body: expected a JSON object",
            ));
        }
        let invalid = |error: serde_json::Error| {
            ErrorResponse::new(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {error}"),
            )
        };
        // Through a `Value` first: serde would also read a struct from a JSON array.
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(invalid)?;
        if !value.is_object() {
            return Err(ErrorResponse::new(
                StatusCode::BAD_REQUEST,
                "invalid request body: expected a JSON object",
            ));
        }
        T::deserialize(value).map(JsonBody).map_err(invalid)
    }
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ErrorResponse {
    status: StatusCode,
    message: String,
}

impl ErrorResponse {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for ErrorResponse {
    fn from(error: ApiError) -> Self {
        let status = StatusCode::from_u16(error.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, error.message)
    }
}

/// Rides along an error response so that [`log_request`] can log the message with the request.
#[derive(Clone)]
struct LoggedError(String);

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.message.clone(),
        });
        let mut response = (self.status, body).into_response();
        response.extensions_mut().insert(LoggedError(self.message));
        response
    }
}

/// Sends the status line without a reason phrase (`HTTP/1.1 200 `), as Cloud Hypervisor's
/// server does: its client reads everything after the version as the status code, so `200 OK`
/// fails to parse there. An empty reason phrase is valid HTTP/1.1 for every other client.
async fn without_reason_phrase(mut response: Response) -> Response {
    response
        .extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b""));
    response
}

/// Logs every request at debug level and every error answer at info level.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    debug!("API request: {method} {uri}");
    let response = next.run(request).await;
    if let Some(LoggedError(message)) = response.extensions().get::<LoggedError>() {
        info!(
            "API request {method} {uri} failed with {}: {message}",
            response.status()
        );
    }
    response
}
