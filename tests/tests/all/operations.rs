//! The operator's side over loopback: metrics after scripted calls, the
//! health probes, the admin API (with and without its token), drains,
//! webhooks (order, signatures, retries, a receiver that hangs) and call
//! records (content, reopening).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use calling_api::{CallType, CallingEvent, EndReason, ErrorCode};
use calling_facade::CallOptions;
use calling_server::SecretKey;
use calling_server::webhooks::verify_signature;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

const ADMIN_TOKEN: &str = "test-admin-token";
const WEBHOOK_KEY: &str = "test-webhook-key";

/// A server with the operations listener, the admin token, and the given
/// webhook URLs and records file.
async fn ops_server(tag: &str, webhooks: &[String], records: Option<&Path>) -> TestServer {
    let mut config = test_config(tag);
    let operations = &mut config.operations;
    operations.http_listen = Some("127.0.0.1:0".parse().unwrap());
    operations.admin_token = Some(SecretKey::new(ADMIN_TOKEN));
    operations.webhook_urls = webhooks.iter().map(|url| url.parse().unwrap()).collect();
    operations.webhook_key = Some(SecretKey::new(WEBHOOK_KEY));
    operations.call_records = records.map(Path::to_path_buf);
    TestServer::start_with(config).await
}

/// One HTTP/1.1 request; the status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn http_addr(server: &TestServer) -> SocketAddr {
    server.server.http_addr().unwrap()
}

/// The value of the series `name` (exact, labels included) in a scrape.
fn series(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {name} in:\n{scrape}"))
        .trim()
        .parse()
        .unwrap()
}

async fn scrape(server: &TestServer) -> String {
    let (status, body) = http(http_addr(server), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    body
}

/// A request a webhook receiver got.
#[derive(Debug)]
struct Delivery {
    headers: HashMap<String, String>,
    body: String,
}

impl Delivery {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

/// A webhook receiver on loopback: answers each request with the next
/// status of `statuses` (then 200), or never answers when `hang`.
async fn receiver(statuses: Vec<u16>, hang: bool) -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/calls", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let Some(delivery) = read_request(&mut stream).await else {
                continue;
            };
            let _ = tx.send(delivery);
            if hang {
                // Holds the connection open, answering nothing.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    drop(stream);
                });
                continue;
            }
            let status = statuses.next().unwrap_or(200);
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (url, rx)
}

async fn read_request(stream: &mut TcpStream) -> Option<Delivery> {
    let mut bytes = Vec::new();
    let mut buffer = [0_u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..read]);
        if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    while bytes.len() < head_end + length {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..read]);
    }
    let body = String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned();
    Some(Delivery { headers, body })
}

async fn next_delivery(deliveries: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
        .await
        .expect("a webhook in time")
        .expect("the receiver runs")
}

/// Four calls with four invitation outcomes (answered then hung up,
/// rejected, an offline user timed out, cancelled) and a refused login;
/// three users stay logged in.
async fn play_scripted_calls(server: &TestServer) -> [User; 3] {
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    // Answered, then hung up.
    connect(&mut alice, &mut bob).await;
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Hangup).await;
    bob.expect_leave_then_end("alice", EndReason::Hangup).await;
    // Rejected.
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.expect(&[invited("alice", &[])]).await;
    carol.calling.reject().await.unwrap();
    alice
        .expect(&[CallingEvent::Reject {
            user_id: uid("carol"),
        }])
        .await;
    alice.expect_end(EndReason::Rejected).await;
    // An offline user, timed out.
    let short = CallOptions {
        timeout_ms: Some(300),
        user_data: None,
    };
    alice
        .calling
        .call_with("dave", CallType::Audio, short)
        .await
        .unwrap();
    alice.expect_offline_then_no_response("dave").await;
    // Cancelled by the caller.
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    bob.expect(&[invited("alice", &[])]).await;
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Cancelled).await;
    bob.expect(&[CallingEvent::CallingCancel]).await;
    // A login with a bad signature.
    let mallory = server.client("mallory");
    let refused = mallory
        .calling
        .login(
            server.app.sdk_app_id,
            "mallory",
            &server.sig("someone_else"),
        )
        .await;
    assert!(refused.is_err());

    [alice, bob, carol]
}

#[tokio::test]
async fn metrics_count_exactly_what_the_calls_did() {
    let server = ops_server("metrics", &[], None).await;
    let _users = play_scripted_calls(&server).await;
    let text = scrape(&server).await;
    for (outcome, count) in [
        ("answered", 1.0),
        ("rejected", 1.0),
        ("timed_out", 1.0),
        ("cancelled", 1.0),
        ("busy", 0.0),
        ("no_response", 0.0),
    ] {
        let name = format!("opencalling_invitations_total{{outcome=\"{outcome}\"}}");
        assert_eq!(series(&text, &name), count, "{outcome}");
    }
    assert_eq!(series(&text, "opencalling_calls_started_total"), 4.0);
    assert_eq!(
        series(&text, "opencalling_calls_ended_total{reason=\"hangup\"}"),
        1.0
    );
    assert_eq!(
        series(&text, "opencalling_calls_ended_total{reason=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "opencalling_calls_ended_total{reason=\"no_response\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&text, "opencalling_calls_ended_total{reason=\"cancelled\"}"),
        1.0
    );
    assert_eq!(
        series(&text, "opencalling_call_duration_seconds_count"),
        4.0
    );
    assert_eq!(series(&text, "opencalling_logins_total{code=\"OK\"}"), 3.0);
    assert_eq!(
        series(
            &text,
            "opencalling_logins_total{code=\"USERSIG_WRONG_USER\"}"
        ),
        1.0
    );
    assert_eq!(series(&text, "opencalling_users_online"), 3.0);
    assert_eq!(series(&text, "opencalling_calls_active"), 0.0);
    assert_eq!(
        series(&text, "opencalling_connections{state=\"logged_in\"}"),
        3.0
    );
    assert_eq!(series(&text, "opencalling_ready"), 1.0);
    assert!(series(&text, "opencalling_process_resident_memory_bytes") > 1e6);
    // Every login and call answered over QUIC: packets went out, never
    // more calls than packets, none refused on loopback.
    let packets = series(&text, "opencalling_udp_packets_sent_total");
    let calls = series(&text, "opencalling_udp_send_calls_total");
    assert!(packets > 20.0, "{packets} packets sent");
    assert!(
        calls >= 1.0 && calls <= packets,
        "{calls} calls for {packets}"
    );
    assert_eq!(series(&text, "opencalling_udp_packets_refused_total"), 0.0);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // Each QUIC connection's path is sampled a second after its login.
    let started = std::time::Instant::now();
    loop {
        let text = scrape(&server).await;
        let samples = series(&text, "opencalling_connection_rtt_seconds_count");
        if samples >= 3.0 {
            let under_a_second = series(
                &text,
                "opencalling_connection_rtt_seconds_bucket{le=\"1.024\"}",
            );
            assert_eq!(under_a_second, samples, "loopback round trips are short");
            assert!(series(&text, "opencalling_connection_loss_ratio_count") >= 3.0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no path samples: {samples}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn health_admin_and_drain() {
    let server = ops_server("admin", &[], None).await;
    let addr = http_addr(&server);
    assert_eq!(http(addr, "GET", "/healthz", None).await.0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None).await.0, 200);
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    connect(&mut alice, &mut bob).await;

    // Refused without the token, or with a wrong one.
    assert_eq!(http(addr, "GET", "/admin/users", None).await.0, 401);
    assert_eq!(
        http(addr, "GET", "/admin/users", Some("guess")).await.0,
        401
    );
    let token = Some(ADMIN_TOKEN);
    // A wrong method is 405, not a missing endpoint; a missing one is 404.
    assert_eq!(http(addr, "POST", "/admin/users", token).await.0, 405);
    assert_eq!(http(addr, "GET", "/admin/drain", token).await.0, 405);
    assert_eq!(
        http(addr, "GET", "/admin/users/bob/kick", token).await.0,
        405
    );
    assert_eq!(http(addr, "POST", "/healthz", None).await.0, 405);
    assert_eq!(http(addr, "GET", "/admin/nothing", token).await.0, 404);
    assert_eq!(http(addr, "GET", "/nothing", None).await.0, 404);
    let (status, users) = http(addr, "GET", "/admin/users", token).await;
    assert_eq!(status, 200);
    let users: serde_json::Value = serde_json::from_str(&users).unwrap();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    // Each session names the device the SDK logged in from.
    let alice_device = alice.calling.device_id();
    assert_eq!(users["users"][0]["device_id"], alice_device.as_str());
    let (status, calls) = http(addr, "GET", "/admin/calls", token).await;
    assert_eq!(status, 200);
    let calls: serde_json::Value = serde_json::from_str(&calls).unwrap();
    let call = &calls["calls"][0];
    assert_eq!(call["members"], serde_json::json!(["alice", "bob"]));
    let call_id = call["call_id"].as_str().unwrap().to_owned();

    // The operator ends the call: both hear it once, with its reason.
    let end = format!("/admin/calls/{call_id}/end");
    assert_eq!(http(addr, "POST", &end, token).await.0, 200);
    alice.expect_end(EndReason::EndedByOperator).await;
    bob.expect_end(EndReason::EndedByOperator).await;
    assert_eq!(http(addr, "POST", &end, token).await.0, 404, "already over");

    // Kicks carol.
    assert_eq!(
        http(addr, "POST", "/admin/users/carol/kick", token).await.0,
        200
    );
    // Told it was the operator, not a login elsewhere.
    carol
        .expect(&[CallingEvent::Error {
            code: ErrorCode::LOGGED_OUT_BY_OPERATOR,
            msg: ErrorCode::LOGGED_OUT_BY_OPERATOR.message().into(),
        }])
        .await;
    assert_eq!(
        http(addr, "POST", "/admin/users/carol/kick", token).await.0,
        404
    );

    // A drain: not ready; no new login, no new call; the running call
    // goes on; drained once it is over.
    connect(&mut alice, &mut bob).await;
    let drained = server.server.drained();
    assert_eq!(http(addr, "POST", "/admin/drain", token).await.0, 202);
    assert_eq!(http(addr, "GET", "/readyz", None).await.0, 503);
    assert_eq!(http(addr, "GET", "/healthz", None).await.0, 200);
    let dave = server.client("dave");
    let refused = dave
        .calling
        .login(server.app.sdk_app_id, "dave", &server.sig("dave"))
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::SERVER_DRAINING);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), drained)
            .await
            .is_err(),
        "a call is still running"
    );
    let drained = server.server.drained();
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Hangup).await;
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drained once the last call ended");
}

#[tokio::test]
async fn webhooks_arrive_in_order_signed_and_retried_and_a_hanging_receiver_holds_nothing_up() {
    // The first delivery is answered 500: it is retried.
    let (url, mut deliveries) = receiver(vec![500], false).await;
    let (hanging_url, mut hung) = receiver(Vec::new(), true).await;
    let server = ops_server("webhooks", &[url, hanging_url], None).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let started = std::time::Instant::now();
    connect(&mut alice, &mut bob).await;
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Hangup).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the hanging receiver held nothing up: {:?}",
        started.elapsed()
    );
    let key = SecretKey::new(WEBHOOK_KEY);
    let first = next_delivery(&mut deliveries).await;
    let retried = next_delivery(&mut deliveries).await;
    assert_eq!(
        first.body, retried.body,
        "the same event again after the 500"
    );
    assert_eq!(retried.headers["x-opencalling-delivery-attempt"], "2");
    let mut kinds = vec![retried.kind()];
    let mut all = vec![retried];
    while kinds.last().map(String::as_str) != Some("call.ended") {
        let delivery = next_delivery(&mut deliveries).await;
        kinds.push(delivery.kind());
        all.push(delivery);
    }
    assert_eq!(
        kinds,
        [
            "call.started",
            "member.joined",
            "invitation.sent",
            "invitation.answered",
            "member.joined",
            "member.left",
            "member.left",
            "call.ended",
        ]
    );
    // Each member joined on the device its SDK named.
    for joined in all
        .iter()
        .filter(|delivery| delivery.kind() == "member.joined")
    {
        let body: serde_json::Value = serde_json::from_str(&joined.body).unwrap();
        assert!(body["device_id"].is_string(), "{body}");
    }
    for delivery in &all {
        let timestamp: u64 = delivery.headers["x-opencalling-timestamp"].parse().unwrap();
        let signature = &delivery.headers["x-opencalling-signature"];
        assert!(
            verify_signature(
                &key,
                timestamp,
                delivery.body.as_bytes(),
                signature,
                now(),
                Duration::from_secs(300)
            ),
            "{delivery:?}"
        );
        assert!(!verify_signature(
            &key,
            timestamp,
            b"{}",
            signature,
            now(),
            Duration::from_secs(300)
        ));
    }
    let ended = all.last().unwrap().json();
    assert_eq!(ended["reason"], "hangup");
    assert!(ended["duration_ms"].as_u64().is_some());
    // The hanging receiver got its first request, and waits.
    assert_eq!(next_delivery(&mut hung).await.kind(), "call.started");
    let text = scrape(&server).await;
    assert!(
        series(
            &text,
            "opencalling_webhook_deliveries_total{result=\"retried\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn an_offline_invitation_fires_a_webhook_for_the_push_and_one_to_withdraw_it() {
    let (url, mut deliveries) = receiver(Vec::new(), false).await;
    let server = ops_server("push", &[url], None).await;
    let mut alice = server.user("alice").await;
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    let kinds = [
        next_delivery(&mut deliveries).await.kind(),
        next_delivery(&mut deliveries).await.kind(),
    ];
    assert_eq!(kinds, ["call.started", "member.joined"]);
    let push = next_delivery(&mut deliveries).await.json();
    assert_eq!(push["type"], "invitation.offline");
    assert_eq!(push["invitee"], "bob");
    assert_eq!(push["inviter"], "alice");
    assert!(push["expires_at_ms"].as_u64().unwrap() > push["timestamp_ms"].as_u64().unwrap());
    alice
        .expect(&[CallingEvent::InviteeOffline {
            user_id: uid("bob"),
        }])
        .await;
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Cancelled).await;
    assert_eq!(next_delivery(&mut deliveries).await.kind(), "member.left");
    let withdrawn = next_delivery(&mut deliveries).await.json();
    assert_eq!(withdrawn["type"], "invitation.cancelled");
    assert_eq!(withdrawn["offline"], true);
    assert_eq!(withdrawn["call_id"], push["call_id"]);
}

#[tokio::test]
async fn call_records_match_the_calls_and_follow_a_rotation() {
    let dir = temp_dir("records");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("calls.jsonl");
    let server = ops_server("records", &[], Some(&path)).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    connect(&mut alice, &mut bob).await;
    bob.calling.hangup().await.unwrap();
    bob.expect_end(EndReason::Hangup).await;
    alice.expect_leave_then_end("bob", EndReason::Hangup).await;
    let records = wait_for_lines(&path, 1).await;
    let record: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(record["caller"], "alice");
    assert_eq!(record["outcome"], "connected");
    assert_eq!(record["end_reason"], "hangup");
    let members: Vec<&str> = record["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["alice", "bob"]);
    assert_eq!(record["invitations"][0]["invitee"], "bob");
    assert_eq!(record["invitations"][0]["outcome"], "answered");

    // Rotation: the file is moved away, the server told; the next record
    // goes to a new file at the same path.
    let rotated = dir.join("calls.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    server.server.call_records_reopener().unwrap().reopen();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let short = CallOptions {
        timeout_ms: Some(300),
        user_data: None,
    };
    alice
        .calling
        .call_with("carol", CallType::Audio, short)
        .await
        .unwrap();
    alice.expect_offline_then_no_response("carol").await;
    let fresh = wait_for_lines(&path, 1).await;
    let record: serde_json::Value = serde_json::from_str(&fresh[0]).unwrap();
    assert_eq!(record["outcome"], "not_connected");
    assert_eq!(record["invitations"][0]["outcome"], "timed_out");
    assert_eq!(record["invitations"][0]["offline"], true);
    assert_eq!(
        wait_for_lines(&rotated, 1).await.len(),
        1,
        "the old file keeps its one record"
    );
}

async fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path) {
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= count {
                return lines;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never had {count} lines", path.display());
}

/// Slowloris: connections to the operations listener that send nothing
/// are closed, those over its cap at once and the rest after the header
/// timeout; the listener answers again once they are gone.
#[tokio::test]
async fn silent_connections_to_the_operations_listener_are_closed() {
    use std::time::{Duration, Instant};
    let server = ops_server("slowloris", &[], None).await;
    let addr = http_addr(&server);
    let opened = calling_server::OPS_MAX_CONNECTIONS + 200;
    let mut silent = Vec::new();
    for _ in 0..opened {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let limit = calling_server::OPS_HEADER_TIMEOUT + Duration::from_secs(5);
    let mut waiting = tokio::task::JoinSet::new();
    for mut stream in silent {
        waiting.spawn(async move {
            let mut byte = [0_u8; 1];
            let closed = tokio::time::timeout(limit, stream.read(&mut byte)).await;
            matches!(closed, Ok(Ok(0) | Err(_))).then(|| started.elapsed())
        });
    }
    let mut closed_after = Vec::new();
    while let Some(done) = waiting.join_next().await {
        closed_after.push(done.unwrap().expect("a silent connection was kept open"));
    }
    closed_after.sort();
    let at_once = closed_after
        .iter()
        .filter(|took| **took < Duration::from_secs(2))
        .count();
    assert!(
        at_once >= opened - calling_server::OPS_MAX_CONNECTIONS,
        "{at_once} closed at once"
    );
    let last = closed_after[closed_after.len() - 1];
    assert!(
        last <= calling_server::OPS_HEADER_TIMEOUT + Duration::from_secs(2),
        "the last closed after {last:?}"
    );
    assert_eq!(http(addr, "GET", "/healthz", None).await.0, 200);
}
