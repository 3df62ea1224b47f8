//! Logins over QUIC: the original's UserSig, each way it can fail, and a
//! signature made by the original's official generator.

use std::sync::Arc;

use calling_api::{CallType, ErrorCode, UserId};
use calling_server::usersig;
use calling_server::{AppCredentials, SecretKey};
use signaling_proto::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use signaling_quic::{ServerTrust, close_code_of};

use crate::support::*;

const OFFICIAL_APP: u32 = 1_400_000_000;
const OFFICIAL_KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn fixture(field: &str) -> String {
    let text = include_str!("../../fixtures/usersig/official-tls-sig-api-v2.txt");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}=")))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_signature_from_the_official_generator_logs_in() {
    // The fixture was issued at 1700000000 for a day: run the server's
    // clock a minute after that.
    let mut config = test_config("official");
    config.apps = vec![AppCredentials {
        sdk_app_id: OFFICIAL_APP,
        secret_key: SecretKey::new(OFFICIAL_KEY),
    }];
    config.clock = Arc::new(|| 1_700_000_060);
    let server = TestServer::start_with(config).await;
    let mut alice = server.client("alice");
    alice
        .calling
        .login(OFFICIAL_APP, "alice", &fixture("sig"))
        .await
        .unwrap();
    let mut bob = server.client("bob");
    let bob_sig = usersig::generate(
        u64::from(OFFICIAL_APP),
        OFFICIAL_KEY,
        "bob",
        600,
        1_700_000_000,
        None,
    );
    bob.calling
        .login(OFFICIAL_APP, "bob", &bob_sig)
        .await
        .unwrap();
    connect(&mut alice, &mut bob).await;
    // The same fixture fails for another user name.
    let eve = server.client("eve");
    let error = eve
        .calling
        .login(OFFICIAL_APP, "eve", &fixture("sig"))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::USERSIG_WRONG_USER);
}

#[tokio::test]
async fn every_usersig_failure_has_its_own_code() {
    let server = TestServer::start("sigs").await;
    let app = server.app.sdk_app_id;
    let key = server.app.secret_key.expose().to_owned();
    let now = now();
    let tampered = {
        // A valid signature for bob, re-signed with another key.
        usersig::generate(u64::from(app), "not the app's key", "bob", 600, now, None)
    };
    let cases = [
        (
            "expired",
            app,
            usersig::generate(u64::from(app), &key, "bob", 60, now - 3_600, None),
            ErrorCode::USERSIG_EXPIRED,
        ),
        ("tampered", app, tampered, ErrorCode::USERSIG_BAD_SIGNATURE),
        (
            "wrong app",
            app,
            usersig::generate(u64::from(app) + 1, &key, "bob", 600, now, None),
            ErrorCode::USERSIG_WRONG_APP,
        ),
        (
            "wrong user",
            app,
            usersig::generate(u64::from(app), &key, "mallory", 600, now, None),
            ErrorCode::USERSIG_WRONG_USER,
        ),
        (
            "malformed",
            app,
            "definitely-not-a-usersig".to_owned(),
            ErrorCode::USERSIG_MALFORMED,
        ),
        (
            "issued ten years from now",
            app,
            usersig::generate(
                u64::from(app),
                &key,
                "bob",
                600,
                now + 10 * 365 * 86_400,
                None,
            ),
            ErrorCode::USERSIG_NOT_YET_VALID,
        ),
        (
            "never expires",
            app,
            usersig::generate(u64::from(app), &key, "bob", u64::MAX, now, None),
            ErrorCode::USERSIG_LIFETIME_TOO_LONG,
        ),
        (
            "unknown app",
            app + 5,
            server.sig("bob"),
            ErrorCode::UNKNOWN_APP,
        ),
    ];
    for (what, sdk_app_id, sig, code) in cases {
        let bob = server.client("bob");
        let error = bob
            .calling
            .login(sdk_app_id, "bob", &sig)
            .await
            .unwrap_err();
        assert_eq!(error.code, code, "{what}: {error}");
        assert_eq!(
            bob.calling
                .call("alice", CallType::Audio)
                .await
                .unwrap_err()
                .code,
            ErrorCode::NOT_LOGGED_IN,
            "{what}"
        );
    }
    assert_eq!(
        server.server.stats().await.unwrap().online,
        0,
        "no failed login left a session"
    );
    // And the right one works after all that.
    server.user("bob").await;
}

#[tokio::test]
async fn a_client_of_another_protocol_version_is_told_so() {
    let server = TestServer::start("version").await;
    let mut client = server.raw_client().await;
    client
        .send
        .send(&ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION + 1,
            sdk_app_id: server.app.sdk_app_id,
            user_id: UserId::new("future").unwrap(),
            user_sig: server.sig("future").into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    match client.recv.recv().await.unwrap() {
        Some(ServerMessage::LoginResult {
            code,
            protocol_version,
            ..
        }) => {
            assert_eq!(code, ErrorCode::UNSUPPORTED_PROTOCOL_VERSION);
            assert_eq!(protocol_version, PROTOCOL_VERSION);
        }
        other => panic!("{other:?}"),
    }
    let closed = client.connection.closed().await;
    assert_eq!(
        close_code_of(&closed),
        Some(ErrorCode::UNSUPPORTED_PROTOCOL_VERSION)
    );
}

/// docs/protocol.md: any other message before a successful login is
/// answered `NOT_LOGGED_IN` and the connection closed.
#[tokio::test]
async fn a_message_other_than_login_first_is_refused() {
    let server = TestServer::start("not-login").await;
    let mut client = server.raw_client().await;
    client
        .send
        .send(&ClientMessage::Ping { nonce: 1 })
        .await
        .unwrap();
    match client.recv.recv().await.unwrap() {
        Some(ServerMessage::LoginResult { code, .. }) => {
            assert_eq!(code, ErrorCode::NOT_LOGGED_IN);
        }
        other => panic!("{other:?}"),
    }
    let closed = client.connection.closed().await;
    assert_eq!(close_code_of(&closed), Some(ErrorCode::NOT_LOGGED_IN));
}

/// A login whose user id breaks the rule (33 characters) is refused with
/// `INVALID_USER_ID`, not as a malformed frame.
#[tokio::test]
async fn a_login_with_an_invalid_user_id_says_so() {
    use tokio::io::AsyncWriteExt;
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    let server = TestServer::start("long-user-id").await;
    let mut client = server.raw_client().await;
    let long_id = "a".repeat(33);
    let sig = server.sig("alice");
    // Login: variant 0, version, sdkAppId, user id, UserSig (docs/protocol.md).
    let mut payload = vec![0];
    varint(u64::from(PROTOCOL_VERSION), &mut payload);
    varint(u64::from(server.app.sdk_app_id), &mut payload);
    varint(long_id.len() as u64, &mut payload);
    payload.extend_from_slice(long_id.as_bytes());
    varint(sig.len() as u64, &mut payload);
    payload.extend_from_slice(sig.as_bytes());
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    client.send.get_mut().write_all(&frame).await.unwrap();
    match client.recv.recv().await.unwrap() {
        Some(ServerMessage::LoginResult { code, message, .. }) => {
            assert_eq!(code, ErrorCode::INVALID_USER_ID, "{message}");
        }
        other => panic!("{other:?}"),
    }
    let closed = client.connection.closed().await;
    assert_eq!(close_code_of(&closed), Some(ErrorCode::INVALID_USER_ID));
}

#[tokio::test]
async fn garbage_bytes_are_refused_and_the_server_carries_on() {
    let server = TestServer::start("garbage").await;
    let trust = ServerTrust::Fingerprint(server.server.fingerprint());
    for garbage in [
        vec![0xff; 64],
        u32::MAX.to_be_bytes().to_vec(),
        vec![0, 0, 0, 3, 0, 0xff, 0xff],
    ] {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(signaling_quic::client_config(&trust).unwrap());
        let connection = endpoint
            .connect(server.server.local_addr(), "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&garbage).await.unwrap();
        let closed = connection.closed().await;
        assert_eq!(
            close_code_of(&closed),
            Some(ErrorCode::PROTOCOL_ERROR),
            "{garbage:?}"
        );
    }
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    connect(&mut alice, &mut bob).await;
}

/// Failed logins slow down their own address and account, never another
/// address, and the account's own success forgets the account's failures.
#[tokio::test]
async fn failed_logins_slow_down_only_their_address() {
    use std::time::Duration;
    let server = TestServer::start("throttle").await;
    let app = server.app.sdk_app_id;
    let attempt = |sig: String| {
        let bob = server.client("bob");
        async move {
            let started = std::time::Instant::now();
            let result = bob.calling.login(app, "bob", &sig).await;
            bob.calling.shutdown().await;
            (result.map_err(|error| error.code), started.elapsed())
        }
    };
    let mut took = Vec::new();
    for _ in 0..7 {
        let (result, elapsed) = attempt("not a usersig".into()).await;
        assert_eq!(result, Err(ErrorCode::USERSIG_MALFORMED));
        took.push(elapsed);
    }
    assert!(took[0] < Duration::from_millis(500), "{took:?}");
    // Three free failures, then 100, 200, 400, 800 ms before each answer.
    assert!(took[6] >= Duration::from_millis(700), "{took:?}");
    assert_eq!(server.server.limit_counts().logins_delayed, 4, "counted");

    // Another address (127.0.0.2) logs in at full speed meanwhile.
    let trust = ServerTrust::Fingerprint(server.server.fingerprint());
    let mut endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(signaling_quic::client_config(&trust).unwrap());
    let started = std::time::Instant::now();
    let mut carol = signaling_quic::connect_on(&endpoint, server.server.local_addr(), "localhost")
        .await
        .unwrap();
    carol
        .send
        .send(&ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: app,
            user_id: UserId::new("carol").unwrap(),
            user_sig: server.sig("carol").into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    assert!(matches!(
        carol.recv.recv().await.unwrap(),
        Some(ServerMessage::LoginResult {
            code: ErrorCode::OK,
            ..
        })
    ));
    let carol_took = started.elapsed();
    assert!(carol_took < Duration::from_millis(500), "{carol_took:?}");

    // The honest user at the throttled address still gets in (slowly), and
    // that success clears the account and forgives the address a failure.
    let (result, elapsed) = attempt(server.sig("bob")).await;
    assert_eq!(result, Ok(()));
    assert!(elapsed >= Duration::from_millis(1_500), "{elapsed:?}");
    let (result, elapsed) = attempt("not a usersig".into()).await;
    assert_eq!(result, Err(ErrorCode::USERSIG_MALFORMED));
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
}

/// A storm of parallel logins at one account from one address gets its
/// guesses checked no faster than one connection would: three free, then
/// spaced further and further apart; the rest are refused unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_login_storm_gets_no_more_than_a_guess_a_second_per_account() {
    use std::time::{Duration, Instant};
    let server = TestServer::start("login-storm").await;
    let app = server.app.sdk_app_id;
    let started = Instant::now();
    let storm = Duration::from_secs(6);
    let trust = ServerTrust::Fingerprint(server.server.fingerprint());
    let mut endpoint = quinn::Endpoint::client("127.0.0.3:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(signaling_quic::client_config(&trust).unwrap());
    let mut guessers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (endpoint, addr) = (endpoint.clone(), server.server.local_addr());
        guessers.spawn(async move {
            let (mut checked, mut refused) = (0_usize, 0_usize);
            while started.elapsed() < storm {
                let Ok(mut client) = signaling_quic::connect_on(&endpoint, addr, "localhost").await
                else {
                    continue;
                };
                let guess = ClientMessage::Login {
                    protocol_version: PROTOCOL_VERSION,
                    sdk_app_id: app,
                    user_id: UserId::new("victim").unwrap(),
                    user_sig: "not the victim's usersig".to_owned().into(),
                    device_id: None,
                    media_encryption: signaling_proto::MediaEncryption::None,
                };
                if client.send.send(&guess).await.is_err() {
                    continue;
                }
                match client.recv.recv().await {
                    Ok(Some(ServerMessage::LoginResult { code, .. }))
                        if code == ErrorCode::RATE_LIMITED =>
                    {
                        refused += 1;
                    }
                    Ok(Some(ServerMessage::LoginResult { code, .. })) => {
                        assert_eq!(code, ErrorCode::USERSIG_MALFORMED);
                        checked += 1;
                    }
                    other => panic!("{other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checked, refused)
        });
    }
    let (mut checked, mut refused) = (0, 0);
    while let Some(done) = guessers.join_next().await {
        let (their_checked, their_refused) = done.unwrap();
        checked += their_checked;
        refused += their_refused;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        (checked as f64) <= 3.0 + seconds,
        "{checked} guesses checked in {seconds:.1} s ({refused} refused)"
    );
    assert!(refused > 0, "the storm was refused unchecked: {refused}");
    // Another account at the storm's address gets in: slowed by the
    // address's failures (at most 5 s), not refused by the victim's queue.
    let mut carol = signaling_quic::connect_on(&endpoint, server.server.local_addr(), "localhost")
        .await
        .unwrap();
    carol
        .send
        .send(&ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: app,
            user_id: UserId::new("carol").unwrap(),
            user_sig: server.sig("carol").into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    assert!(matches!(
        carol.recv.recv().await.unwrap(),
        Some(ServerMessage::LoginResult {
            code: ErrorCode::OK,
            ..
        })
    ));
}
