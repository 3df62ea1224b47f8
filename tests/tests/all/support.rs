//! A real server on loopback and SDK users logged in to it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calling_api::{CallingEvent, EndReason, UserId};
use calling_facade::{ClientOptions, EventStream, TRTCCalling};
use calling_server::config::ServerConfig;
use calling_server::{AppCredentials, RunningServer, usersig};

/// How long a test waits for an event before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// A fresh, private data directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "opencalling-e2e-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A development-mode server on 127.0.0.1, any port.
pub fn test_config(tag: &str) -> ServerConfig {
    let mut config = ServerConfig::at("127.0.0.1:0".parse().unwrap(), temp_dir(tag));
    config.shutdown_grace = Duration::from_secs(1);
    config
}

pub struct TestServer {
    pub server: RunningServer,
    pub app: AppCredentials,
}

impl TestServer {
    pub async fn start(tag: &str) -> Self {
        Self::start_with(test_config(tag)).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let explicit_app = config.apps.first().cloned();
        let server = calling_server::start(config).await.unwrap();
        let app = explicit_app
            .or_else(|| server.development_app().cloned())
            .unwrap();
        Self { server, app }
    }

    /// Options for this server, with no audio devices (the audio tests
    /// choose their own).
    pub fn options(&self) -> ClientOptions {
        let mut options = ClientOptions::development(
            self.server.local_addr().to_string(),
            self.server.fingerprint(),
        );
        options.audio = calling_facade::AudioDevices::none();
        options
    }

    /// A bare protocol client connected to the server (no login yet), for
    /// tests that speak the wire protocol themselves.
    pub async fn raw_client(&self) -> signaling_quic::ClientConnection {
        let trust = signaling_quic::ServerTrust::Fingerprint(self.server.fingerprint());
        signaling_quic::connect(self.server.local_addr(), "localhost", &trust)
            .await
            .unwrap()
    }

    /// A valid UserSig for `user`, issued now for a day.
    pub fn sig(&self, user: &str) -> String {
        usersig::generate(
            u64::from(self.app.sdk_app_id),
            self.app.secret_key.expose(),
            user,
            86_400,
            now(),
            None,
        )
    }

    /// A new SDK instance logged in as `user`.
    pub async fn user(&self, user: &str) -> User {
        self.user_with(user, self.options()).await
    }

    /// [`TestServer::user`] with other options (their server and trust
    /// are this server's anyway).
    pub async fn user_with(&self, user: &str, options: ClientOptions) -> User {
        let user = self.client_with(user, options);
        user.calling
            .login(
                self.app.sdk_app_id,
                user.id.as_str(),
                &self.sig(user.id.as_str()),
            )
            .await
            .unwrap();
        user
    }

    /// A new SDK instance for `user`, not logged in.
    pub fn client(&self, user: &str) -> User {
        self.client_with(user, self.options())
    }

    fn client_with(&self, user: &str, mut options: ClientOptions) -> User {
        let ours = self.options();
        options.server = ours.server;
        options.trust = ours.trust;
        let calling = TRTCCalling::new(options);
        let events = calling.events();
        User {
            id: UserId::new(user).unwrap(),
            calling,
            events,
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct User {
    pub id: UserId,
    pub calling: Arc<TRTCCalling>,
    pub events: EventStream,
}

impl User {
    /// The next event other than the periodic reports (volume, network
    /// quality) and the identity events of built-in end-to-end keys
    /// (which come when the members' words do; the tests of them read
    /// the stream themselves).
    pub async fn next(&mut self) -> CallingEvent {
        loop {
            let event = tokio::time::timeout(EVENT_WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no event within {EVENT_WAIT:?}", self.id))
                .unwrap_or_else(|| panic!("{}: event stream closed", self.id));
            if !aside(&event) {
                return event;
            }
        }
    }

    /// Asserts the next events, in order.
    pub async fn expect(&mut self, expected: &[CallingEvent]) {
        for want in expected {
            let got = self.next().await;
            assert_eq!(&got, want, "{}: unexpected event", self.id);
        }
    }

    /// Asserts `onCallEnd` and its reason come next.
    pub async fn expect_end(&mut self, reason: EndReason) {
        assert_eq!(self.next().await, CallingEvent::CallEnd, "{}", self.id);
        match self.next().await {
            CallingEvent::CallEnded { reason: got, .. } => assert_eq!(got, reason, "{}", self.id),
            other => panic!("{}: expected CallEnded, got {other:?}", self.id),
        }
    }

    /// Asserts `onUserLeave(who)`, then `onCallEnd` with `reason`.
    pub async fn expect_leave_then_end(&mut self, who: &str, reason: EndReason) {
        self.expect(&[CallingEvent::UserLeave { user_id: uid(who) }])
            .await;
        self.expect_end(reason).await;
    }

    /// Asserts `onNoResp(who)`, then `onCallEnd` for no response.
    /// `who` is offline (told at once), then the invitation times out.
    pub async fn expect_offline_then_no_response(&mut self, who: &str) {
        self.expect(&[CallingEvent::InviteeOffline { user_id: uid(who) }])
            .await;
        self.expect_no_response(who).await;
    }

    pub async fn expect_no_response(&mut self, who: &str) {
        self.expect(&[CallingEvent::NoResp { user_id: uid(who) }])
            .await;
        self.expect_end(EndReason::NoResponse).await;
    }

    /// Asserts no event other than the periodic reports arrives within
    /// `quiet`.
    pub async fn expect_quiet(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(event)) if aside(&event) => {}
                Ok(other) => panic!("{}: expected nothing, got {other:?}", self.id),
            }
        }
    }
}

/// What [`User::next`] passes over.
fn aside(event: &CallingEvent) -> bool {
    event.is_report() || matches!(event, CallingEvent::MemberIdentity { .. })
}

pub fn uid(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

pub fn invited(sponsor: &str, others: &[&str]) -> CallingEvent {
    CallingEvent::Invited {
        sponsor: uid(sponsor),
        user_ids: others.iter().map(|id| uid(id)).collect(),
        is_from_group: !others.is_empty(),
        call_type: calling_api::CallType::Audio,
    }
}

pub fn enter(id: &str) -> [CallingEvent; 2] {
    [
        CallingEvent::UserEnter { user_id: uid(id) },
        CallingEvent::UserAudioAvailable {
            user_id: uid(id),
            available: true,
        },
    ]
}

/// `caller` calls `callee`, who accepts; both see each other enter.
pub async fn connect(caller: &mut User, callee: &mut User) {
    caller
        .calling
        .call(callee.id.as_str(), calling_api::CallType::Audio)
        .await
        .unwrap();
    callee.expect(&[invited(caller.id.as_str(), &[])]).await;
    callee.calling.accept().await.unwrap();
    caller.expect(&enter(callee.id.as_str())).await;
    callee.expect(&enter(caller.id.as_str())).await;
}

/// Where a scenario runs: one server, or three cluster nodes on one Redis
/// with users placed on them in turn (a user's second login lands on
/// another node than its first).
pub struct World {
    pub nodes: Vec<TestServer>,
    /// The cluster's Redis, kept running as long as the world.
    _redis: Option<opencalling_tests::redis::RedisServer>,
    pub app: AppCredentials,
    placed: AtomicUsize,
}

impl World {
    pub async fn one_server(tag: &str) -> Self {
        let server = TestServer::start(tag).await;
        let app = server.app.clone();
        Self {
            nodes: vec![server],
            _redis: None,
            app,
            placed: AtomicUsize::new(0),
        }
    }

    pub async fn three_nodes(tag: &str) -> Self {
        let cluster = crate::cluster::TestCluster::start(tag, 3).await;
        let app = cluster.nodes[0].app.clone();
        Self {
            nodes: cluster.nodes,
            _redis: Some(cluster.redis),
            app,
            placed: AtomicUsize::new(0),
        }
    }

    /// The node the next user goes to.
    fn next_node(&self) -> &TestServer {
        let turn = self.placed.fetch_add(1, Ordering::Relaxed);
        &self.nodes[turn % self.nodes.len()]
    }

    /// A new SDK instance logged in as `user`, on the next node.
    pub async fn user(&self, user: &str) -> User {
        self.next_node().user(user).await
    }

    /// A valid UserSig for `user` (every node serves the same app).
    pub fn sig(&self, user: &str) -> String {
        self.nodes[0].sig(user)
    }

    /// Calls ringing or connected, as the switchboard of record counts
    /// them (in a cluster: the control's).
    pub async fn calls(&self) -> usize {
        for node in &self.nodes {
            if let Some(calling_server::AdminReply::Calls(calls)) =
                node.server.admin(calling_server::AdminRequest::Calls).await
            {
                let hosts = node
                    .server
                    .stats()
                    .await
                    .and_then(|stats| stats.cluster)
                    .is_none_or(|cluster| cluster.hosting);
                if hosts {
                    return calls.len();
                }
            }
        }
        panic!("no node answers for the switchboard of record")
    }
}

/// Browsers are heavy on two cores: one Chromium at a time.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
