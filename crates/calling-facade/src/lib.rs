#![doc = include_str!("../README.md")]

/// The README's SDK snippet, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeSnippets;

#[cfg(feature = "dev")]
pub mod dev;
mod driver;
mod e2ee;
mod media;
mod media_session;
mod options;
mod quality;
mod status;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

pub use audio_device::Signal;
pub use audio_device::{AudioFormat, AudioSink, AudioSource};
pub use audio_pipeline::{JitterStats, VoiceProcessing, VoiceStats};
pub use calling_api::{
    AudioDeviceKind, CallId, CallType, CallingError, CallingEvent, CallingResult, DeviceId,
    ElsewhereAnswer, EndReason, ErrorCode, KeyProblem, MemberQuality, NetworkQuality, UserId,
    UserVolume,
};
pub use media::{
    AudioDeviceInfo, AudioDevices, CaptureDevice, CustomSink, CustomSource, PlaybackDevice,
    UnknownDevice, list_audio_devices,
};
pub use media_e2ee::{E2eeError, Identity, IdentityKey, KeyProvider, MediaKey, MediaKeys};
pub use options::DEFAULT_DECODER_COMPLEXITY;
pub use options::{ClientOptions, DEFAULT_CONNECT_TIMEOUT, Fallback, ReconnectPolicy, ServerTrust};
pub use quality::{CallStats, LocalStats, MediaTransport, MemberStats};
pub use signaling_proto::CallOptions;
pub use signaling_tls::{CertFingerprint, InvalidFingerprint};
pub use status::{CallStatus, SessionStatus};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::driver::{AudioCommand, Command, Request};

/// Receives every event of an instance it is registered with.
pub trait CallingListener: Send + Sync + 'static {
    /// Called on the SDK's task, in order, for every event. Must not block.
    fn on_event(&self, event: &CallingEvent);
}

impl<F: Fn(&CallingEvent) + Send + Sync + 'static> CallingListener for F {
    fn on_event(&self, event: &CallingEvent) {
        self(event);
    }
}

/// The original's delegate, one method per callback, each doing nothing
/// unless overridden. Register one with [`TRTCCalling::register_delegate`].
#[allow(unused_variables)]
pub trait CallingDelegate: Send + Sync + 'static {
    /// `onError`
    fn on_error(&self, code: ErrorCode, msg: &str) {}
    /// `onInvited`
    fn on_invited(
        &self,
        sponsor: &UserId,
        user_ids: &[UserId],
        is_from_group: bool,
        call_type: CallType,
    ) {
    }
    /// `onReject`
    fn on_reject(&self, user_id: &UserId) {}
    /// `onNoResp`
    fn on_no_resp(&self, user_id: &UserId) {}
    /// `onLineBusy`
    fn on_line_busy(&self, user_id: &UserId) {}
    /// `onCallingCancel`
    fn on_calling_cancel(&self) {}
    /// `onCallingTimeOut`
    fn on_calling_time_out(&self) {}
    /// `onUserEnter`
    fn on_user_enter(&self, user_id: &UserId) {}
    /// `onUserLeave`
    fn on_user_leave(&self, user_id: &UserId) {}
    /// `onUserAudioAvailable`
    fn on_user_audio_available(&self, user_id: &UserId, available: bool) {}
    /// `onUserVoiceVolume`
    fn on_user_voice_volume(&self, user_volumes: &[UserVolume], total_volume: u8) {}
    /// `onCallEnd`
    fn on_call_end(&self) {}
    /// Extension: which call ended, and why (right after `on_call_end`).
    fn on_call_ended(&self, call_id: CallId, reason: EndReason) {}
    /// Extension: this session was kicked by a login elsewhere.
    fn on_kicked_offline(&self) {}
    /// Extension: a call's microphone or speaker could not be opened; the
    /// call goes on without it.
    fn on_audio_device_unavailable(&self, device: AudioDeviceKind, reason: &str) {}
    /// Extension: the connection broke; the SDK reconnects by itself.
    fn on_reconnecting(&self) {}
    /// Extension: connected and logged in again.
    fn on_reconnected(&self) {}
    /// Extension: a member of the call is reconnecting.
    fn on_user_reconnecting(&self, user_id: &UserId) {}
    /// Extension: a member of the call that was reconnecting is back.
    fn on_user_reconnected(&self, user_id: &UserId) {}
    /// Extension (caller): that invitee is offline; the invitation waits
    /// for them until it times out.
    fn on_invitee_offline(&self, user_id: &UserId) {}
    /// Extension, after `on_calling_cancel`: the invitation stopped ringing
    /// here because this user answered or declined it on another device.
    fn on_handled_elsewhere(&self, call_id: CallId, answer: ElsewhereAnswer) {}
    /// Extension (the successor's `onUserNetworkQualityChanged`): the local
    /// user's or a member's network quality changed (at most once a second).
    fn on_network_quality(&self, local: NetworkQuality, remote: &[MemberQuality]) {}
    /// Extension (end-to-end encrypted audio): a member's audio does not
    /// decrypt here and plays as silence.
    fn on_media_key_problem(&self, user_id: &UserId, problem: KeyProblem) {}
    /// Extension (end-to-end encrypted audio with built-in keys): a
    /// member's safety number with this device, once per member and call;
    /// `changed` when that user's identity key is not one known before.
    fn on_member_identity(&self, user_id: &UserId, safety_number: &str, changed: bool) {}
}

struct DelegateListener<D>(D);

impl<D: CallingDelegate> CallingListener for DelegateListener<D> {
    fn on_event(&self, event: &CallingEvent) {
        let delegate = &self.0;
        match event {
            CallingEvent::Error { code, msg } => delegate.on_error(*code, msg),
            CallingEvent::Invited {
                sponsor,
                user_ids,
                is_from_group,
                call_type,
            } => delegate.on_invited(sponsor, user_ids, *is_from_group, *call_type),
            CallingEvent::Reject { user_id } => delegate.on_reject(user_id),
            CallingEvent::NoResp { user_id } => delegate.on_no_resp(user_id),
            CallingEvent::LineBusy { user_id } => delegate.on_line_busy(user_id),
            CallingEvent::CallingCancel => delegate.on_calling_cancel(),
            CallingEvent::CallingTimeOut => delegate.on_calling_time_out(),
            CallingEvent::UserEnter { user_id } => delegate.on_user_enter(user_id),
            CallingEvent::UserLeave { user_id } => delegate.on_user_leave(user_id),
            CallingEvent::UserAudioAvailable { user_id, available } => {
                delegate.on_user_audio_available(user_id, *available);
            }
            CallingEvent::UserVoiceVolume {
                user_volumes,
                total_volume,
            } => delegate.on_user_voice_volume(user_volumes, *total_volume),
            CallingEvent::CallEnd => delegate.on_call_end(),
            CallingEvent::CallEnded { call_id, reason } => {
                delegate.on_call_ended(*call_id, *reason)
            }
            CallingEvent::KickedOffline => delegate.on_kicked_offline(),
            CallingEvent::AudioDeviceUnavailable { device, reason } => {
                delegate.on_audio_device_unavailable(*device, reason);
            }
            CallingEvent::Reconnecting => delegate.on_reconnecting(),
            CallingEvent::Reconnected => delegate.on_reconnected(),
            CallingEvent::UserReconnecting { user_id } => delegate.on_user_reconnecting(user_id),
            CallingEvent::UserReconnected { user_id } => delegate.on_user_reconnected(user_id),
            CallingEvent::InviteeOffline { user_id } => delegate.on_invitee_offline(user_id),
            CallingEvent::HandledElsewhere { call_id, answer } => {
                delegate.on_handled_elsewhere(*call_id, *answer);
            }
            CallingEvent::NetworkQuality { local, remote } => {
                delegate.on_network_quality(*local, remote);
            }
            CallingEvent::MediaKeyProblem { user_id, problem } => {
                delegate.on_media_key_problem(user_id, *problem);
            }
            CallingEvent::MemberIdentity {
                user_id,
                safety_number,
                changed,
            } => delegate.on_member_identity(user_id, safety_number, *changed),
            // A newer calling-api may add events this delegate predates.
            _ => {}
        }
    }
}

/// Names a registered listener, to unregister it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// Events as an async stream, for tokio users: see [`TRTCCalling::events`].
#[derive(Debug)]
pub struct EventStream {
    receiver: broadcast::Receiver<CallingEvent>,
}

impl EventStream {
    /// The next event; `None` once the instance is dropped. A consumer that
    /// falls more than 1024 events behind skips the oldest (with a warning
    /// in the log) rather than holding the SDK up.
    pub async fn recv(&mut self) -> Option<CallingEvent> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "event stream consumer fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Where events go: listeners and streams. Shared with the driver task.
pub(crate) struct Dispatch {
    listeners: Mutex<Vec<(ListenerId, Arc<dyn CallingListener>)>>,
    stream: broadcast::Sender<CallingEvent>,
    next_listener: AtomicU64,
    /// The session as of the driver's last step.
    status: Mutex<SessionStatus>,
}

impl Dispatch {
    /// The driver took a step: where the session stands now (before the
    /// step's events go out, so that a listener sees the new status).
    pub(crate) fn set_status(&self, status: SessionStatus) {
        *lock(&self.status) = status;
    }

    pub(crate) fn emit(&self, event: &CallingEvent) {
        // Call listeners without holding the lock, so a listener may
        // register or unregister listeners.
        let listeners: Vec<Arc<dyn CallingListener>> = lock(&self.listeners)
            .iter()
            .map(|(_, listener)| Arc::clone(listener))
            .collect();
        for listener in listeners {
            listener.on_event(event);
        }
        let _ = self.stream.send(event.clone());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One calling client: a user's session with the server. See the
/// [crate docs](crate).
pub struct TRTCCalling {
    options: Mutex<ClientOptions>,
    dispatch: Arc<Dispatch>,
    /// The command channel of the driver task while logged in.
    driver: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    mic_muted: AtomicBool,
    hands_free: AtomicBool,
    low_latency: AtomicBool,
    /// The fallback transport won the last connection race.
    prefer_fallback: Arc<AtomicBool>,
    /// The servers of the options, with where servers redirected it and
    /// which address connected last: kept across logins.
    servers: Mutex<Arc<driver::ServerChoice>>,
    /// This instance's device id when the options name none.
    made_device_id: DeviceId,
}

impl fmt::Debug for TRTCCalling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TRTCCalling")
            .field("options", &*lock(&self.options))
            .field("logged_in", &self.live_driver().is_some())
            .field("mic_muted", &self.mic_muted.load(Ordering::Relaxed))
            .field("hands_free", &self.hands_free.load(Ordering::Relaxed))
            .field("low_latency", &self.low_latency.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Mutex<Option<Arc<TRTCCalling>>>> = OnceLock::new();

/// 128 bits no other instance draws: the standard library's per-process
/// random hash keys, over the time and a counter. A device id only has to
/// differ from the user's other devices', not to be secret.
fn random_device_id() -> DeviceId {
    use std::hash::{BuildHasher, Hasher};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let draw = DRAWN.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut bytes = [0_u8; 16];
    for (half, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(draw);
        hasher.write_usize(half);
        hasher.write_u32(std::process::id());
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    DeviceId::from_random(bytes)
}

impl TRTCCalling {
    /// A new, independent instance (one user), talking to the server in
    /// `options`.
    pub fn new(options: ClientOptions) -> Arc<Self> {
        let (stream, _) = broadcast::channel(1024);
        let low_latency = options.low_latency;
        let servers = Mutex::new(Arc::new(driver::ServerChoice::new(&options.server)));
        Arc::new(Self {
            options: Mutex::new(options),
            dispatch: Arc::new(Dispatch {
                listeners: Mutex::new(Vec::new()),
                stream,
                next_listener: AtomicU64::new(1),
                status: Mutex::new(SessionStatus::default()),
            }),
            driver: Mutex::new(None),
            mic_muted: AtomicBool::new(false),
            hands_free: AtomicBool::new(false),
            low_latency: AtomicBool::new(low_latency),
            prefer_fallback: Arc::new(AtomicBool::new(false)),
            servers,
            made_device_id: random_device_id(),
        })
    }

    /// The device this instance names at login: [`ClientOptions::device_id`],
    /// or the one it made for itself.
    pub fn device_id(&self) -> DeviceId {
        lock(&self.options)
            .device_id
            .clone()
            .unwrap_or_else(|| self.made_device_id.clone())
    }

    /// The process-wide instance, made on first use with
    /// [`ClientOptions::from_env`].
    pub fn shared_instance() -> Arc<Self> {
        let shared = SHARED.get_or_init(|| Mutex::new(None));
        let mut slot = lock(shared);
        Arc::clone(slot.get_or_insert_with(|| Self::new(ClientOptions::from_env())))
    }

    /// Destroys the process-wide instance; the next
    /// [`TRTCCalling::shared_instance`] makes a fresh one.
    pub fn destroy_shared_instance() {
        if let Some(shared) = SHARED.get()
            && let Some(instance) = lock(shared).take()
        {
            instance.destroy();
        }
    }

    /// Changes where the server is and how to trust it; takes effect at the
    /// next login (its `low_latency` at once, as
    /// [`TRTCCalling::set_low_latency`]).
    pub fn set_options(&self, options: ClientOptions) {
        let low_latency = options.low_latency;
        *lock(&self.options) = options;
        self.set_low_latency(low_latency);
    }

    /// The options in force.
    pub fn options(&self) -> ClientOptions {
        lock(&self.options).clone()
    }

    /// Adds a listener; every event goes to every listener.
    ///
    /// Listeners run on the SDK's task and must not block or await: to act
    /// on an event (accept an invitation), hand the work to a task. Hold
    /// the instance weakly there, or the listener, which the instance
    /// keeps, keeps the instance alive forever (the `events()` stream needs
    /// neither):
    ///
    /// ```no_run
    /// use std::sync::{Arc, Weak};
    /// use calling_facade::{CallingEvent, ClientOptions, TRTCCalling};
    ///
    /// let calling: Arc<TRTCCalling> = TRTCCalling::new(ClientOptions::from_env());
    /// let weak: Weak<TRTCCalling> = Arc::downgrade(&calling);
    /// calling.register_listener(move |event: &CallingEvent| {
    ///     if let CallingEvent::Invited { .. } = event {
    ///         let weak = weak.clone();
    ///         tokio::spawn(async move {
    ///             if let Some(calling) = weak.upgrade() {
    ///                 let _ = calling.accept().await;
    ///             }
    ///         });
    ///     }
    /// });
    /// ```
    pub fn register_listener(&self, listener: impl CallingListener) -> ListenerId {
        self.register_arc(Arc::new(listener))
    }

    /// Adds a delegate in the original's style (one method per callback).
    pub fn register_delegate(&self, delegate: impl CallingDelegate) -> ListenerId {
        self.register_arc(Arc::new(DelegateListener(delegate)))
    }

    fn register_arc(&self, listener: Arc<dyn CallingListener>) -> ListenerId {
        let id = ListenerId(self.dispatch.next_listener.fetch_add(1, Ordering::Relaxed));
        lock(&self.dispatch.listeners).push((id, listener));
        id
    }

    /// Removes a listener; `false` if it was not registered.
    pub fn unregister_listener(&self, id: ListenerId) -> bool {
        let mut listeners = lock(&self.dispatch.listeners);
        let before = listeners.len();
        listeners.retain(|(listener, _)| *listener != id);
        listeners.len() != before
    }

    /// Every event from now on, as an async stream.
    pub fn events(&self) -> EventStream {
        EventStream {
            receiver: self.dispatch.stream.subscribe(),
        }
    }

    /// Releases everything: logs out (best effort, without waiting),
    /// disconnects and forgets every listener.
    ///
    /// An application about to exit should `shutdown().await` instead:
    /// without waiting, the logout may never leave the process, and the
    /// peers of a call learn of the hang-up only when the connection times
    /// out (about 12 s).
    pub fn destroy(&self) {
        if let Some(driver) = lock(&self.driver).take() {
            let _ = driver.send(Command::Shutdown(None));
        }
        lock(&self.dispatch.listeners).clear();
    }

    /// The graceful [`TRTCCalling::destroy`]: logs out (a call in progress
    /// ends as a hangup), waits until the server has confirmed, the last
    /// events (`onCallEnd`…) went to the listeners and the audio threads
    /// have ended (a WAV recording is complete when it returns), then
    /// forgets every listener. Bounded: it returns within about 2 s even if the server
    /// does not answer. Call it before the application exits. Dropping the
    /// last handle to an instance logs out too, as a best effort that
    /// nobody waits for.
    pub async fn shutdown(&self) {
        let driver = lock(&self.driver).take();
        if let Some(driver) = driver {
            let (done, finished) = oneshot::channel();
            if driver.send(Command::Shutdown(Some(done))).is_ok() {
                let limit = driver::LOGOUT_GRACE + Duration::from_secs(1);
                let _ = tokio::time::timeout(limit, finished).await;
            }
        }
        lock(&self.dispatch.listeners).clear();
    }

    /// Logs in; nothing else works before it. `user_sig` is the signature
    /// the application's backend issued for `user_id` (the original's
    /// UserSig scheme, unchanged).
    pub async fn login(&self, sdk_app_id: u32, user_id: &str, user_sig: &str) -> CallingResult<()> {
        UserId::new(user_id)?;
        if self.live_driver().is_some() {
            return Err(CallingError::new(ErrorCode::ALREADY_LOGGED_IN));
        }
        let options = self.options();
        let servers = {
            let mut servers = lock(&self.servers);
            if !servers.configured_by(&options.server) {
                *servers = Arc::new(driver::ServerChoice::new(&options.server));
            }
            Arc::clone(&servers)
        };
        let (commands, reply) = driver::start(
            &options,
            servers,
            driver::LoginRequest {
                sdk_app_id,
                user_id,
                user_sig,
                device: self.device_id(),
            },
            driver::DeviceState {
                mic_muted: self.mic_muted.load(Ordering::Relaxed),
                hands_free: self.hands_free.load(Ordering::Relaxed),
                low_latency: self.low_latency.load(Ordering::Relaxed),
            },
            Arc::clone(&self.dispatch),
            Arc::clone(&self.prefer_fallback),
        )
        .await?;
        {
            let mut session = lock(&self.driver);
            if session
                .as_ref()
                .is_some_and(|existing| !existing.is_closed())
            {
                let _ = commands.send(Command::Shutdown(None));
                return Err(CallingError::new(ErrorCode::ALREADY_LOGGED_IN));
            }
            *session = Some(commands);
        }
        let result = await_reply(reply, options.request_timeout)
            .await
            .map(|_| ());
        if result.is_err() {
            lock(&self.driver).take();
        }
        result
    }

    /// Tells the SDK that the device's network changed (Wi-Fi to cellular,
    /// a new address): it moves its connection to a new local socket at
    /// once, and QUIC migrates the call there without a reconnect. Without
    /// this call the SDK notices by itself, only later. Does nothing while
    /// logged out.
    pub fn network_changed(&self) {
        if let Some(driver) = self.live_driver() {
            let _ = driver.send(Command::NetworkChanged);
        }
    }

    /// Logs out; calling is impossible afterwards. A call in progress ends
    /// as a hangup.
    pub async fn logout(&self) -> CallingResult<()> {
        let result = self.request(Request::Logout).await.map(|_| ());
        lock(&self.driver).take();
        result
    }

    /// Invites `user_id`: a new call when idle, or into the current call
    /// (making it multi-party). Completes when the server has taken the
    /// invitation; the answer comes as events.
    pub async fn call(&self, user_id: &str, call_type: CallType) -> CallingResult<()> {
        self.call_with(user_id, call_type, CallOptions::default())
            .await
            .map(|_| ())
    }

    /// [`TRTCCalling::call`] with per-call options (invitation timeout,
    /// user data); returns the call's id.
    pub async fn call_with(
        &self,
        user_id: &str,
        call_type: CallType,
        options: CallOptions,
    ) -> CallingResult<CallId> {
        let call_id = self
            .request(Request::Call {
                user_id: user_id.to_owned(),
                call_type,
                options,
            })
            .await?;
        call_id
            .ok_or_else(|| CallingError::with_desc(ErrorCode::INTERNAL, "the server named no call"))
    }

    /// Accepts the ringing invitation.
    pub async fn accept(&self) -> CallingResult<()> {
        self.request(Request::Accept).await.map(|_| ())
    }

    /// Rejects the ringing invitation.
    pub async fn reject(&self) -> CallingResult<()> {
        self.request(Request::Reject).await.map(|_| ())
    }

    /// Ends your part: cancels your invitations if nobody answered yet,
    /// rejects a ringing invitation, leaves a call. `onCallEnd` follows.
    pub async fn hangup(&self) -> CallingResult<()> {
        self.request(Request::Hangup).await.map(|_| ())
    }

    /// Stops (`true`) or resumes (`false`) sending your audio; the others
    /// get `onUserAudioAvailable`. Works in any state, before login too.
    pub fn set_mic_mute(&self, muted: bool) {
        self.mic_muted.store(muted, Ordering::Relaxed);
        if let Some(session) = self.live_driver() {
            let _ = session.send(Command::Audio(AudioCommand::MicMute(muted)));
        }
    }

    /// Audio statistics of each remote speaker of the current call (or of
    /// the last call, once it ended): delay, concealment, FEC, late packets.
    pub async fn audio_stats(&self) -> CallingResult<Vec<(UserId, JitterStats)>> {
        self.ask(|reply| Command::Audio(AudioCommand::Stats(reply)))
            .await
    }

    /// The share of our audio its receivers lose, in percent, as the
    /// encoder is told it: the worst receiver's estimate from its reports
    /// (about one a second), which believes a bad second at once and a
    /// good one slowly, so that a bursty path keeps its protection. FEC or
    /// DRED follows it. `None` outside a call or before the first report
    /// (until then the encoder assumes 10 %).
    pub async fn reported_loss(&self) -> CallingResult<Option<u8>> {
        self.ask(|reply| Command::Audio(AudioCommand::ReportedLoss(reply)))
            .await
    }

    /// What the echo canceller measures in the current call (an
    /// extension): the echo path's delay it found, the echo return loss
    /// (how much quieter the speaker reaches the microphone) and the echo
    /// return loss enhancement of its linear filter (what that filter took
    /// off; the suppression after it takes off more). `None` outside a
    /// call or when the call runs no voice processing
    /// ([`ClientOptions::voice_processing`]); each figure is `None` until
    /// measured (the far end has to have spoken). Updated twice a second.
    pub async fn voice_stats(&self) -> CallingResult<Option<VoiceStats>> {
        self.ask(|reply| Command::Audio(AudioCommand::VoiceStats(reply)))
            .await
    }

    /// Everything measured of the current call (an extension; or of the
    /// last call, once it ended): per member its network's quality, round
    /// trip, loss each way, jitter, bitrate and transport; our jitter
    /// buffer's delay, concealment and FEC/DRED recoveries of each
    /// member's audio; our own frame length and the echo canceller's
    /// figures. The thresholds of the quality levels are in
    /// docs/protocol.md ("Network quality"); the same levels come as
    /// [`CallingEvent::NetworkQuality`] when they change.
    pub async fn call_stats(&self) -> CallingResult<CallStats> {
        self.ask(|reply| Command::Audio(AudioCommand::CallStats(reply)))
            .await
    }

    /// Asks the driver something and waits for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> CallingResult<T> {
        let Some(driver) = self.live_driver() else {
            return Err(CallingError::new(ErrorCode::NOT_LOGGED_IN));
        };
        let (reply, answer) = oneshot::channel();
        if driver.send(command(reply)).is_err() {
            return Err(CallingError::new(ErrorCode::NOT_LOGGED_IN));
        }
        answer
            .await
            .map_err(|_| CallingError::new(ErrorCode::CONNECTION_LOST))
    }

    /// Whether the microphone is muted.
    pub fn is_mic_muted(&self) -> bool {
        self.mic_muted.load(Ordering::Relaxed)
    }

    /// Speakerphone (`true`) or earpiece/headset (`false`) route: switches
    /// between the two playback devices of [`PlaybackDevice::System`] (the
    /// same device on a machine with one output). Works in any state.
    /// On a speaker the microphone hears the others: echo cancellation
    /// ([`ClientOptions::voice_processing`], on by default for the system
    /// microphone) is what keeps them from hearing themselves back.
    pub fn set_hands_free(&self, hands_free: bool) {
        self.hands_free.store(hands_free, Ordering::Relaxed);
        if let Some(session) = self.live_driver() {
            let _ = session.send(Command::Audio(AudioCommand::HandsFree(hands_free)));
        }
    }

    /// The output route in force.
    pub fn is_hands_free(&self) -> bool {
        self.hands_free.load(Ordering::Relaxed)
    }

    /// The low-latency profile (`true`) or the default one, for the current
    /// call from its next frame and for later calls; it starts as
    /// [`ClientOptions::low_latency`] says. Low latency sends 10 ms audio
    /// frames instead of 20 ms: a frame leaves 10 ms sooner and the far
    /// end's buffer may hold 10 ms less, for twice the packets (~8 kbps
    /// more headers on the wire). Frames stay at 20 ms while any other
    /// member of the call has not said it plays 10 ms ones (an older SDK).
    /// Works in any state.
    pub fn set_low_latency(&self, low_latency: bool) {
        self.low_latency.store(low_latency, Ordering::Relaxed);
        if let Some(session) = self.live_driver() {
            let _ = session.send(Command::Audio(AudioCommand::LowLatency(low_latency)));
        }
    }

    /// Whether the low-latency profile is wanted.
    pub fn is_low_latency(&self) -> bool {
        self.low_latency.load(Ordering::Relaxed)
    }

    /// Where the session stands: the call (who rings, who is in it) and
    /// whether the connection is being repaired, as of the SDK's last
    /// step; a screen shows this rather than rebuilding it from events.
    /// An extension: the original has no such query.
    pub fn status(&self) -> SessionStatus {
        lock(&self.dispatch.status).clone()
    }

    /// The driver's command channel, if a login is alive.
    fn live_driver(&self) -> Option<mpsc::UnboundedSender<Command>> {
        let mut session = lock(&self.driver);
        if session
            .as_ref()
            .is_some_and(mpsc::UnboundedSender::is_closed)
        {
            *session = None;
        }
        session.clone()
    }

    async fn request(&self, request: Request) -> CallingResult<Option<CallId>> {
        let Some(session) = self.live_driver() else {
            return Err(CallingError::new(ErrorCode::NOT_LOGGED_IN));
        };
        let (reply, answer) = oneshot::channel();
        if session.send(Command::Request { request, reply }).is_err() {
            return Err(CallingError::new(ErrorCode::NOT_LOGGED_IN));
        }
        await_reply(answer, self.options().request_timeout).await
    }
}

async fn await_reply(
    answer: oneshot::Receiver<CallingResult<Option<CallId>>>,
    limit: Duration,
) -> CallingResult<Option<CallId>> {
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(result)) => result,
        // The session ended before answering.
        Ok(Err(_)) => Err(CallingError::new(ErrorCode::CONNECTION_LOST)),
        Err(_) => Err(CallingError::new(ErrorCode::TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_instance_is_shared_until_destroyed() {
        let first = TRTCCalling::shared_instance();
        let again = TRTCCalling::shared_instance();
        assert!(Arc::ptr_eq(&first, &again));
        TRTCCalling::destroy_shared_instance();
        let fresh = TRTCCalling::shared_instance();
        assert!(
            !Arc::ptr_eq(&first, &fresh),
            "destroy makes the next call build a new one"
        );
        TRTCCalling::destroy_shared_instance();
    }

    #[test]
    fn every_listener_hears_every_event_until_unregistered() {
        use std::sync::atomic::AtomicUsize;
        let calling = TRTCCalling::new(ClientOptions::default());
        let heard = Arc::new(AtomicUsize::new(0));
        let ids: Vec<ListenerId> = (0..3)
            .map(|_| {
                let heard = Arc::clone(&heard);
                calling.register_listener(move |_: &CallingEvent| {
                    heard.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        calling.dispatch.emit(&CallingEvent::CallEnd);
        assert_eq!(heard.load(Ordering::Relaxed), 3);
        assert!(calling.unregister_listener(ids[1]));
        calling.dispatch.emit(&CallingEvent::CallEnd);
        assert_eq!(heard.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_delegate_gets_the_matching_callback() {
        struct Recorder(Arc<Mutex<Vec<String>>>);
        impl CallingDelegate for Recorder {
            fn on_line_busy(&self, user_id: &UserId) {
                lock(&self.0).push(format!("busy {user_id}"));
            }
            fn on_call_end(&self) {
                lock(&self.0).push("end".into());
            }
        }
        let calling = TRTCCalling::new(ClientOptions::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        calling.register_delegate(Recorder(Arc::clone(&log)));
        let bob = UserId::new("bob").unwrap();
        calling
            .dispatch
            .emit(&CallingEvent::LineBusy { user_id: bob });
        calling.dispatch.emit(&CallingEvent::CallingCancel);
        calling.dispatch.emit(&CallingEvent::CallEnd);
        assert_eq!(*lock(&log), ["busy bob", "end"]);
    }

    #[test]
    fn mute_and_route_are_kept_before_login() {
        let calling = TRTCCalling::new(ClientOptions::default());
        calling.set_mic_mute(true);
        calling.set_hands_free(true);
        assert!(calling.is_mic_muted() && calling.is_hands_free());
    }
}
