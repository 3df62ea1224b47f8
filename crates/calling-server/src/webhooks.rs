//! Webhooks: every call event POSTed as JSON to the configured URLs,
//! signed, retried with backoff, in order per URL, never in the way of
//! the calls (the hub hands events to a bounded queue and moves on; what
//! does not fit is counted as dropped).
//!
//! Each request carries `X-OpenCalling-Timestamp` (unix seconds) and
//! `X-OpenCalling-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`
//! under the configured key: a receiver recomputes it and refuses a
//! timestamp far from its clock (a replayed request). [`verify_signature`]
//! is that check.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use calling_api::DeviceId;
use http_body_util::Full;
use serde_json::{Value, json};
use signaling_proto::{CallEvent, InvitationOutcome};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::metrics::{Metrics, reason_label};
use crate::records::unix_millis;
use crate::secret::{SecretKey, hex};
use crate::stamped::StampedEvent;
use crate::webhook_url::WebhookUrl;

/// Deliveries one URL may have waiting; more are dropped and counted.
pub const QUEUE_PER_URL: usize = 1024;
/// Attempts per delivery (the first, then retries).
pub const ATTEMPTS: u32 = 6;
/// The wait before the first retry; it doubles after each.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How long one attempt may take (connect, send, response head).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The signature of `body` sent at `timestamp` (unix seconds) under `key`:
/// the `X-OpenCalling-Signature` header's value.
pub fn sign(key: &SecretKey, timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1={}", hex(context.sign().as_ref()))
}

/// A receiver's check: `signature` is `body`'s at `timestamp` under `key`
/// (compared in constant time), and `timestamp` lies within `tolerance`
/// of `now` (unix seconds).
pub fn verify_signature(
    key: &SecretKey,
    timestamp: u64,
    body: &[u8],
    signature: &str,
    now: u64,
    tolerance: Duration,
) -> bool {
    let fresh = now.abs_diff(timestamp) <= tolerance.as_secs();
    let expected = SecretKey::new(sign(key, timestamp, body));
    expected.matches(signature.as_bytes()) && fresh
}

/// The webhook's JSON for one event: `type`, `id` (unique per server
/// start and event), `timestamp_ms`, `call_id` (a decimal string: it may
/// not fit a JSON number) and the event's own fields.
pub fn payload(id: &str, stamped: &StampedEvent) -> Value {
    let mut body = match &stamped.event {
        CallEvent::Started {
            call_type, caller, ..
        } => json!({
            "type": "call.started",
            "call_type": crate::records::call_type_name(*call_type),
            "caller": caller.as_str(),
        }),
        CallEvent::Invited {
            inviter,
            invitee,
            timeout,
            offline,
            ..
        } => json!({
            "type": if *offline { "invitation.offline" } else { "invitation.sent" },
            "inviter": inviter.as_str(),
            "invitee": invitee.as_str(),
            "offline": offline,
            "expires_at_ms": unix_millis(stamped.at + *timeout),
        }),
        CallEvent::InvitationEnded {
            inviter,
            invitee,
            outcome,
            offline,
            ..
        } => json!({
            "type": format!("invitation.{}", outcome.as_str()),
            "inviter": inviter.as_str(),
            "invitee": invitee.as_str(),
            "offline": offline,
        }),
        CallEvent::Joined { user, device, .. } => json!({
            "type": "member.joined",
            "user_id": user.as_str(),
            "device_id": device.as_ref().map(DeviceId::as_str),
        }),
        CallEvent::Left { user, reason, .. } => json!({
            "type": "member.left",
            "user_id": user.as_str(),
            "reason": reason_label(*reason),
        }),
        CallEvent::Ended { reason, .. } => json!({
            "type": "call.ended",
            "reason": reason_label(*reason),
            "duration_ms": stamped.duration.map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
        }),
    };
    body["id"] = id.into();
    body["timestamp_ms"] = unix_millis(stamped.at).into();
    body["call_id"] = stamped.event.call_id().0.to_string().into();
    body
}

/// Every webhook type, for the documentation's list (a test checks it).
pub fn event_types() -> Vec<String> {
    let mut types = vec![
        "call.started".to_owned(),
        "invitation.sent".to_owned(),
        "invitation.offline".to_owned(),
        "member.joined".to_owned(),
        "member.left".to_owned(),
        "call.ended".to_owned(),
    ];
    types.extend(
        InvitationOutcome::ALL
            .iter()
            .map(|outcome| format!("invitation.{}", outcome.as_str())),
    );
    types
}

/// Takes the hub's events and hands each to every URL's worker.
pub(crate) async fn run(
    mut events: mpsc::Receiver<Arc<StampedEvent>>,
    urls: Vec<WebhookUrl>,
    key: SecretKey,
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
) {
    let run_id = run_id();
    let mut workers = Vec::new();
    for url in urls {
        let (queue, deliveries) = mpsc::channel(QUEUE_PER_URL);
        let worker = Worker {
            url,
            key: key.clone(),
            tls: tokio_rustls::TlsConnector::from(Arc::clone(&tls)),
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(worker.run(deliveries));
        workers.push(queue);
    }
    let mut sequence = 0_u64;
    while let Some(stamped) = events.recv().await {
        sequence += 1;
        let id = format!("{run_id}-{sequence}");
        let body = Bytes::from(payload(&id, &stamped).to_string());
        for worker in &workers {
            if worker.try_send((id.clone(), body.clone())).is_err() {
                metrics.webhook("dropped");
            }
        }
    }
}

/// Distinguishes this server start's event ids from another's.
fn run_id() -> String {
    let mut bytes = [0_u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex(&bytes)
}

/// Deliveries to one URL, in order.
struct Worker {
    url: WebhookUrl,
    key: SecretKey,
    tls: tokio_rustls::TlsConnector,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(self, mut deliveries: mpsc::Receiver<(String, Bytes)>) {
        while let Some((id, body)) = deliveries.recv().await {
            let mut wait = FIRST_RETRY;
            for attempt in 1..=ATTEMPTS {
                let outcome =
                    tokio::time::timeout(ATTEMPT_TIMEOUT, self.post(&id, &body, attempt)).await;
                let why = match outcome {
                    Ok(Ok(status)) if status.is_success() => {
                        self.metrics.webhook("delivered");
                        break;
                    }
                    Ok(Ok(status)) => format!("answered {status}"),
                    Ok(Err(error)) => error,
                    Err(_) => "no answer in time".to_owned(),
                };
                if attempt == ATTEMPTS {
                    warn!(url = %self.url, id, why, "webhook not delivered: given up");
                    self.metrics.webhook("failed");
                    break;
                }
                debug!(url = %self.url, id, attempt, why, "webhook not delivered: retrying");
                self.metrics.webhook("retried");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }

    async fn post(
        &self,
        id: &str,
        body: &Bytes,
        attempt: u32,
    ) -> Result<hyper::StatusCode, String> {
        let uri = self.url.uri();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let authority = uri.authority().map_or(host, |authority| authority.as_str());
        let request = hyper::Request::post(uri.path_and_query().map_or("/", |path| path.as_str()))
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "opencalling-server")
            .header("X-OpenCalling-Event-Id", id)
            .header("X-OpenCalling-Delivery-Attempt", attempt)
            .header("X-OpenCalling-Timestamp", timestamp)
            .header("X-OpenCalling-Signature", sign(&self.key, timestamp, body))
            .body(Full::new(body.clone()))
            .map_err(|error| format!("request: {error}"))?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|error| format!("server name: {error}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|error| format!("TLS: {error}"))?;
            send(hyper_util::rt::TokioIo::new(tls), request).await
        } else {
            send(hyper_util::rt::TokioIo::new(tcp), request).await
        }
    }
}

async fn send<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP: {error}"))?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    connection.abort();
    response
        .map(|response| response.status())
        .map_err(|error| format!("HTTP: {error}"))
}

/// The trust for `https://` webhook URLs: the system's roots.
pub(crate) fn system_trust() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use calling_api::{CallId, UserId};

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn a_signature_verifies_only_for_its_body_key_and_time() {
        let key = SecretKey::new("k");
        let body = br#"{"type":"call.started"}"#;
        let signature = sign(&key, 1_000, body);
        assert!(signature.starts_with("v1=") && signature.len() == 3 + 64);
        let tolerance = Duration::from_secs(300);
        assert!(verify_signature(
            &key, 1_000, body, &signature, 1_100, tolerance
        ));
        assert!(!verify_signature(
            &key, 1_000, b"{}", &signature, 1_100, tolerance
        ));
        assert!(!verify_signature(
            &SecretKey::new("other"),
            1_000,
            body,
            &signature,
            1_100,
            tolerance
        ));
        assert!(
            !verify_signature(&key, 1_001, body, &signature, 1_100, tolerance),
            "the timestamp is signed"
        );
        assert!(
            !verify_signature(&key, 1_000, body, &signature, 2_000, tolerance),
            "a replay"
        );
    }

    #[test]
    fn only_http_urls_with_a_host() {
        assert!("http://127.0.0.1:8080/hooks".parse::<WebhookUrl>().is_ok());
        assert!(
            "https://backend.example.com/x"
                .parse::<WebhookUrl>()
                .is_ok()
        );
        for bad in [
            "ftp://example.com/",
            "example.com/hooks",
            "http:///x",
            "not a url",
        ] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_offline_invitation_says_when_it_expires() {
        let at = UNIX_EPOCH + Duration::from_secs(10);
        let stamped = StampedEvent {
            at,
            event: CallEvent::Invited {
                call_id: CallId(u64::MAX),
                inviter: user("alice"),
                invitee: user("bob"),
                timeout: Duration::from_secs(30),
                offline: true,
            },
            duration: None,
        };
        let body = payload("run-1", &stamped);
        assert_eq!(body["type"], "invitation.offline");
        assert_eq!(body["call_id"], u64::MAX.to_string());
        assert_eq!(body["timestamp_ms"], 10_000);
        assert_eq!(body["expires_at_ms"], 40_000);
        assert_eq!(body["id"], "run-1");
    }

    #[test]
    fn docs_list_every_webhook_type() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
        let docs = std::fs::read_to_string(path).unwrap_or_default();
        for kind in event_types() {
            assert!(
                docs.contains(&format!("| `{kind}` |")),
                "docs/operations.md lacks `{kind}`"
            );
        }
    }
}
