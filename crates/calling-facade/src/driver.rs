//! The task behind a logged-in instance: it owns the call engine and the
//! link to the server, turns API requests into messages, server messages
//! into events, and answers each request when the server does.
//!
//! Only [`start`] knows the transport (QUIC): the task itself, [`Driver`],
//! works on any link of the transport seam.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_pipeline::JitterStats;
use calling_api::UserId;
use calling_api::{CallId, CallType, CallingError, CallingResult, ErrorCode};
use signaling_link::{DatagramSource, Link, LinkError, MediaLink, Transport};
use signaling_proto::{
    CallEngine, CallOptions, ClientMessage, EngineStatus, FlowId, RequestId, ServerMessage,
};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::media::{AudioDevices, CallAudio, DeviceNotices};
use crate::{ClientOptions, Dispatch};

pub(crate) type Reply = oneshot::Sender<CallingResult<Option<CallId>>>;

#[derive(Debug)]
pub(crate) enum Request {
    Logout,
    Call {
        user_id: String,
        call_type: CallType,
        options: CallOptions,
    },
    Accept,
    Reject,
    Hangup,
}

#[derive(Debug)]
pub(crate) enum Command {
    Request {
        request: Request,
        reply: Reply,
    },
    MicMute(bool),
    HandsFree(bool),
    AudioStats(oneshot::Sender<Vec<(UserId, JitterStats)>>),
    /// The loss the receivers of our audio report.
    ReportedLoss(oneshot::Sender<Option<u8>>),
    /// Log out if logged in, then disconnect; tell the sender, if any, once
    /// done.
    Shutdown(Option<oneshot::Sender<()>>),
}

/// How often each remote speaker is told what we lose of its audio.
const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a destroyed instance waits for the server to confirm its logout.
pub(crate) const LOGOUT_GRACE: Duration = Duration::from_secs(1);

/// Who logs in, with what.
#[derive(Debug)]
pub(crate) struct LoginRequest<'a> {
    pub(crate) sdk_app_id: u32,
    pub(crate) user_id: &'a str,
    pub(crate) user_sig: &'a str,
}

/// The instance's device settings when it logs in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceState {
    pub(crate) mic_muted: bool,
    pub(crate) hands_free: bool,
}

/// The answer to the login, when the server gives it.
pub(crate) type LoginAnswer = oneshot::Receiver<CallingResult<Option<CallId>>>;

/// Connects, starts the driver task and sends the login; returns the
/// command channel and the login's pending answer.
pub(crate) async fn start(
    options: &ClientOptions,
    login: LoginRequest<'_>,
    devices: DeviceState,
    dispatch: Arc<Dispatch>,
) -> CallingResult<(mpsc::UnboundedSender<Command>, LoginAnswer)> {
    let mut engine = CallEngine::new();
    engine.set_voice_volume_interval(options.voice_volume_interval);
    engine.set_mic_mute(devices.mic_muted);
    let login = engine.login(login.sdk_app_id, login.user_id, login.user_sig)?;
    let addr = tokio::net::lookup_host(&options.server)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            CallingError::with_desc(
                ErrorCode::SERVER_UNREACHABLE,
                format!("cannot resolve server {:?}", options.server),
            )
        })?;
    let connecting = signaling_quic::connect(addr, &options.server_name, &options.trust);
    let connection = tokio::time::timeout(options.connect_timeout, connecting)
        .await
        .map_err(|_| {
            CallingError::with_desc(
                ErrorCode::SERVER_UNREACHABLE,
                format!(
                    "no server answered at {addr} within {:?}",
                    options.connect_timeout
                ),
            )
        })?
        .map_err(|error| {
            CallingError::with_desc(
                error.connect_code(),
                format!("cannot connect to {addr}: {error}"),
            )
        })?;
    // The endpoint (the UDP socket) lives as long as the driver.
    let (link, endpoint) = connection.into_link();
    let (commands, inbox) = mpsc::unbounded_channel();
    let (notices, device_notices) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let mut pending = HashMap::new();
    pending.insert(login, reply);
    let driver = Driver {
        engine,
        link,
        inbox,
        pending,
        dispatch,
        devices: options.audio.clone(),
        media: None,
        notices: DeviceNotices(notices),
        device_notices,
        hands_free: devices.hands_free,
        flow_users: HashMap::new(),
        last_stats: Vec::new(),
    };
    tokio::spawn(async move {
        let finished = driver.run().await;
        drop(endpoint);
        if let Some(finished) = finished {
            let _ = finished.send(());
        }
    });
    Ok((commands, answer))
}

/// The link to the server, as the driver uses it.
type ClientLink<T> = Link<T, ServerMessage, ClientMessage>;

struct Driver<T: Transport> {
    engine: CallEngine,
    link: ClientLink<T>,
    inbox: mpsc::UnboundedReceiver<Command>,
    pending: HashMap<RequestId, Reply>,
    dispatch: Arc<Dispatch>,
    devices: AudioDevices,
    /// The call's audio, while in a call.
    media: Option<CallAudio>,
    /// Where the audio threads say a device is unavailable…
    notices: DeviceNotices,
    /// …and where the driver hears it, to tell the application.
    device_notices: mpsc::UnboundedReceiver<calling_api::CallingEvent>,
    hands_free: bool,
    /// Who each remote flow of the current call is.
    flow_users: HashMap<FlowId, UserId>,
    /// The statistics of the last call, kept after it ends.
    last_stats: Vec<(UserId, JitterStats)>,
}

impl<T: Transport> Driver<T> {
    /// Drives the login until it ends; returns whoever waits for a
    /// shutdown to finish.
    async fn run(mut self) -> Option<oneshot::Sender<()>> {
        let mut finished = None;
        let mut loss_reports = tokio::time::interval(LOSS_REPORT_INTERVAL);
        loss_reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(error) = self.flush().await {
                debug!(%error, "sending failed");
                self.engine.handle_disconnect();
                break;
            }
            self.sync_media();
            let deadline = self.engine.poll_timeout();
            tokio::select! {
                command = self.inbox.recv() => match command {
                    Some(Command::Request { request, reply }) => self.apply(request, reply),
                    Some(Command::MicMute(muted)) => {
                        self.engine.set_mic_mute(muted);
                        if let Some(media) = &self.media {
                            media.set_muted(muted);
                        }
                    }
                    Some(Command::AudioStats(reply)) => {
                        let _ = reply.send(self.audio_stats());
                    }
                    Some(Command::ReportedLoss(reply)) => {
                        let _ = reply.send(self.media.as_ref().and_then(CallAudio::reported_loss));
                    }
                    Some(Command::HandsFree(hands_free)) => {
                        self.hands_free = hands_free;
                        if let Some(media) = &self.media {
                            media.set_hands_free(hands_free);
                        }
                    }
                    None => {
                        self.log_out_and_close().await;
                        break;
                    }
                    Some(Command::Shutdown(done)) => {
                        self.log_out_and_close().await;
                        finished = done;
                        break;
                    }
                },
                received = self.link.recv.recv() => match received {
                    Ok(Some(message)) => self.engine.handle_message(Instant::now(), message),
                    Ok(None) => {
                        debug!("the server ended the signaling stream");
                        self.engine.handle_disconnect();
                        break;
                    }
                    Err(error) => {
                        debug!(%error, "connection lost");
                        self.engine.handle_disconnect();
                        break;
                    }
                },
                datagram = self.link.media.recv_datagram() => {
                    if let (Ok(datagram), Some(media)) = (datagram, self.media.as_mut()) {
                        media.on_datagram(&datagram);
                    }
                }
                _ = loss_reports.tick(), if self.media.is_some() => self.send_loss_reports(),
                Some(notice) = self.device_notices.recv() => self.dispatch.emit(&notice),
                () = signaling_link::sleep_until(deadline), if deadline.is_some() => {
                    self.feed_levels();
                    self.engine.handle_timeout(Instant::now());
                }
            }
        }
        // Deliver the last events and answers; nothing more can be sent.
        let _ = self.flush().await;
        if let Some(media) = self.media.take() {
            media.stop();
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(CallingError::new(ErrorCode::CONNECTION_LOST)));
        }
        self.link.media.close(ErrorCode::OK, "bye");
        finished
    }

    /// Audio runs exactly while the engine is in a call.
    fn sync_media(&mut self) {
        let in_call = matches!(self.engine.status(), EngineStatus::InCall { .. });
        match (in_call, self.media.is_some()) {
            (true, false) => {
                let media: Arc<dyn MediaLink> = Arc::new(self.link.media.clone());
                self.media = CallAudio::start(
                    &self.devices,
                    media,
                    self.engine.is_mic_muted(),
                    self.hands_free,
                    &self.notices,
                );
            }
            (false, true) => {
                if let Some(media) = self.media.take() {
                    self.last_stats = self.named_stats(&media);
                    media.stop();
                }
                self.flow_users.clear();
            }
            _ => {}
        }
    }

    /// Tells each remote speaker what we lose of its audio.
    fn send_loss_reports(&mut self) {
        let Some(media) = self.media.as_mut() else {
            return;
        };
        for report in media.loss_reports() {
            // A closed link ends the call through the signaling stream.
            let _ = self.link.media.send_datagram(report);
        }
    }

    /// Hands the measured levels to the engine for `onUserVoiceVolume`.
    fn feed_levels(&mut self) {
        let Some(media) = &self.media else {
            return;
        };
        if let Some(me) = self.engine.user_id().cloned() {
            let level = media.take_local_level();
            self.engine.record_voice_level(&me, level);
        }
        if let EngineStatus::InCall { members, .. } = self.engine.status() {
            for member in members {
                if let Some(flow) = self.engine.flow_of(&member) {
                    let level = media.take_level(flow);
                    self.engine.record_voice_level(&member, level);
                    self.flow_users.insert(flow, member);
                }
            }
        }
    }

    fn named_stats(&self, media: &CallAudio) -> Vec<(UserId, JitterStats)> {
        let mut named: Vec<(UserId, JitterStats)> = media
            .stats()
            .into_iter()
            .filter_map(|(flow, stats)| {
                self.flow_users.get(&flow).map(|user| (user.clone(), stats))
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// The current call's statistics, or the last call's.
    fn audio_stats(&mut self) -> Vec<(UserId, JitterStats)> {
        if let EngineStatus::InCall { members, .. } = self.engine.status() {
            for member in members {
                if let Some(flow) = self.engine.flow_of(&member) {
                    self.flow_users.insert(flow, member);
                }
            }
        }
        match &self.media {
            Some(media) => self.named_stats(media),
            None => self.last_stats.clone(),
        }
    }

    fn apply(&mut self, request: Request, reply: Reply) {
        let result = match request {
            Request::Logout => self.engine.logout(),
            Request::Call {
                user_id,
                call_type,
                options,
            } => self.engine.call(&user_id, call_type, options),
            Request::Accept => self.engine.accept(),
            Request::Reject => self.engine.reject(),
            Request::Hangup => self.engine.hangup(),
        };
        match result {
            Ok(request) => {
                self.pending.insert(request, reply);
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Sends what the engine queued, then hands out events and answers.
    async fn flush(&mut self) -> Result<(), LinkError> {
        while let Some(message) = self.engine.poll_transmit() {
            self.link.send.send(&message).await?;
        }
        while let Some(event) = self.engine.poll_event() {
            self.dispatch.emit(&event);
        }
        while let Some(completion) = self.engine.poll_completion() {
            if let Some(reply) = self.pending.remove(&completion.request) {
                let _ = reply.send(completion.result);
            }
        }
        Ok(())
    }

    /// For destroy(): a polite logout, waiting briefly for the server.
    async fn log_out_and_close(&mut self) {
        if self.engine.logout().is_err() {
            return;
        }
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(LOGOUT_GRACE, async {
            while let Ok(Some(message)) = self.link.recv.recv().await {
                self.engine.handle_message(Instant::now(), message);
            }
        })
        .await;
        self.engine.handle_disconnect();
    }
}
