//! The operations listener (HTTP/1.1, hyper): `/metrics`, `/healthz`,
//! `/readyz` and the admin API under `/admin/`, which needs
//! `Authorization: Bearer <admin token>` and is refused without it (or
//! entirely when no token is configured). It never touches a call itself:
//! admin requests go to the hub like any other input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use calling_api::{CallId, DeviceId, UserId};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::Shared;
use crate::config::SecretKey;
use crate::hub::{AdminReply, AdminRequest, DrainState, HubInput};
use crate::metrics::{Metrics, ProcessStats, Snapshot};

/// Whether the tasks the server cannot live without still run.
#[derive(Debug)]
pub(crate) struct Liveness {
    accept_loop: AtomicBool,
    stopping: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            accept_loop: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Liveness {
    /// Marks the accept loop dead when the returned guard drops (its task
    /// ended, or panicked).
    pub(crate) fn accept_loop_guard(self: &Arc<Self>) -> AcceptLoopAlive {
        AcceptLoopAlive(Arc::clone(self))
    }

    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// Held by the accept loop: dropped, it marks the loop dead.
#[derive(Debug)]
pub(crate) struct AcceptLoopAlive(Arc<Liveness>);

impl Drop for AcceptLoopAlive {
    fn drop(&mut self) {
        self.0.accept_loop.store(false, Ordering::Relaxed);
    }
}

/// What the listener reads.
#[derive(Debug)]
pub(crate) struct OpsState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hub: mpsc::Sender<HubInput>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sends: signaling_quic::SendStats,
    pub(crate) admin_token: Option<SecretKey>,
    pub(crate) drain: watch::Receiver<DrainState>,
    pub(crate) liveness: Arc<Liveness>,
    /// The webhook queue, to report its fill.
    pub(crate) webhook_queue: Option<mpsc::Sender<Arc<crate::stamped::StampedEvent>>>,
}

impl OpsState {
    fn alive(&self) -> bool {
        !self.hub.is_closed() && self.liveness.accept_loop.load(Ordering::Relaxed)
    }

    fn ready(&self) -> bool {
        self.alive()
            && !self.liveness.stopping.load(Ordering::Relaxed)
            && !self.drain.borrow().draining
    }

    async fn ask_hub<T>(&self, input: impl FnOnce(oneshot::Sender<T>) -> HubInput) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.hub.send(input(reply)).await.ok()?;
        answer.await.ok()
    }

    async fn snapshot(&self) -> Snapshot {
        let hub = self.ask_hub(|reply| HubInput::Stats { reply }).await;
        Snapshot {
            hub,
            relay: self.shared.routes.counts(),
            limits: self.shared.limit_counters.counts(),
            admission: self.shared.admission.counts(),
            sends: self.sends.counts(),
            process: ProcessStats::read(),
            connections: self.metrics.connection_counts(),
            ready: self.ready(),
            webhook_queue: self
                .webhook_queue
                .as_ref()
                .map_or(0, |queue| queue.max_capacity() - queue.capacity()),
        }
    }
}

/// Serves the listener until the process ends.
/// Connections the operations listener serves at once; more are closed as
/// soon as they are accepted (slowloris: silent connections cannot pile up).
pub const OPS_MAX_CONNECTIONS: usize = 128;
/// How long a client has to send a request's headers (the first, or the
/// next on a kept-alive connection) before its connection is closed.
pub const OPS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest one connection is served: requests here are quick, and a
/// client that trickles a body cannot hold its place for longer.
const OPS_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<OpsState>) {
    let places = Arc::new(tokio::sync::Semaphore::new(OPS_MAX_CONNECTIONS));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: wait rather than spin.
                debug!(%error, "operations listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            debug!(%remote, "operations listener: too many connections, closed");
            drop(stream);
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _place = place;
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(&state, request, remote).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(OPS_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(OPS_CONNECTION_LIFETIME, served).await {
                Ok(Err(error)) => debug!(%remote, %error, "operations connection ended"),
                Ok(Ok(())) => {}
                Err(_) => debug!(%remote, "operations connection served its lifetime: closed"),
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", body.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

/// The endpoint exists, for another method: 405 and what it allows.
fn wrong_method(allowed: &Method) -> Response<Full<Bytes>> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("this endpoint takes {allowed}"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(hyper::header::ALLOW, value);
    }
    response
}

/// The method an admin endpoint takes; `None` for no such endpoint.
fn admin_method(segments: &[&str]) -> Option<Method> {
    match segments {
        ["users"] | ["calls"] => Some(Method::GET),
        ["users", _, "kick"] | ["calls", _, "end"] | ["drain"] => Some(Method::POST),
        _ => None,
    }
}

async fn handle(
    state: &OpsState,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => {
            if state.alive() {
                respond(StatusCode::OK, "text/plain", "ok\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "a critical task died\n",
                )
            }
        }
        (&Method::GET, "/readyz") => {
            if state.ready() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: draining, stopping or a critical task died\n",
                )
            }
        }
        (&Method::GET, "/metrics") => match state.metrics.encode(state.snapshot().await) {
            Ok(text) => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded",
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics") => wrong_method(&Method::GET),
        (_, admin) if admin.starts_with("/admin/") => {
            let Some(token) = &state.admin_token else {
                return error(
                    StatusCode::FORBIDDEN,
                    "the admin API is off: configure admin_token",
                );
            };
            if !authorized(&request, token) {
                warn!(%remote, %method, path, "admin request without the right token");
                let mut refused = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
                refused.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return refused;
            }
            admin_request(state, &method, admin).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// Whether the request carries the admin token (compared in constant time).
fn authorized(request: &Request<Incoming>, token: &SecretKey) -> bool {
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    token.matches(presented.as_bytes())
}

async fn admin_request(state: &OpsState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match admin_method(&segments) {
        None => return error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        Some(allowed) if allowed != *method => return wrong_method(&allowed),
        Some(_) => {}
    }
    let request = match (method, segments.as_slice()) {
        (&Method::GET, ["users"]) => AdminRequest::Sessions,
        (&Method::GET, ["calls"]) => AdminRequest::Calls,
        (&Method::POST, ["users", user, "kick"]) => match UserId::new(*user) {
            Ok(user) => AdminRequest::Kick(user),
            Err(_) => return error(StatusCode::BAD_REQUEST, "not a user id"),
        },
        (&Method::POST, ["calls", call, "end"]) => match call.parse() {
            Ok(id) => AdminRequest::EndCall(CallId(id)),
            Err(_) => return error(StatusCode::BAD_REQUEST, "not a call id"),
        },
        (&Method::POST, ["drain"]) => AdminRequest::Drain,
        _ => return error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    };
    let Some(reply) = state
        .ask_hub(|reply| HubInput::Admin {
            request: request.clone(),
            reply,
        })
        .await
    else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    };
    match (request, reply) {
        (_, AdminReply::Sessions(sessions)) => {
            let users: Vec<serde_json::Value> = sessions
                .iter()
                .map(|session| {
                    json!({
                        "user_id": session.user.as_str(),
                        "device_id": session.device.as_ref().map(DeviceId::as_str),
                        "protocol_version": session.protocol_version,
                        "reconnecting": session.reconnecting,
                        "call_id": session.call.map(|call| call.0.to_string()),
                    })
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "users": users }))
        }
        (_, AdminReply::Calls(calls)) => {
            let calls: Vec<serde_json::Value> = calls
                .iter()
                .map(|(call, age)| {
                    json!({
                        "call_id": call.call_id.0.to_string(),
                        "call_type": crate::records::call_type_name(call.call_type),
                        "members": call.members.iter().map(UserId::as_str).collect::<Vec<_>>(),
                        "invitees": call.invitees.iter().map(UserId::as_str).collect::<Vec<_>>(),
                        "age_ms": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                    })
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "calls": calls }))
        }
        (AdminRequest::Kick(user), AdminReply::Done(done)) => {
            if done {
                json_response(StatusCode::OK, &json!({ "kicked": user.as_str() }))
            } else {
                error(StatusCode::NOT_FOUND, "that user is not logged in")
            }
        }
        (AdminRequest::EndCall(call), AdminReply::Done(done)) => {
            if done {
                json_response(StatusCode::OK, &json!({ "ended": call.0.to_string() }))
            } else {
                error(StatusCode::NOT_FOUND, "no such call")
            }
        }
        (_, AdminReply::Done(started)) => {
            let calls = state.drain.borrow().calls;
            json_response(
                StatusCode::ACCEPTED,
                &json!({ "draining": true, "started_now": started, "calls": calls }),
            )
        }
    }
}
