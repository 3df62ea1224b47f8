//! A call's audio devices and threads: a capture thread (device → send
//! path → datagrams) and a playout thread (packet rings → jitter buffers →
//! mix → device), started when the call is entered and stopped when it
//! ends. What to do with received datagrams, what to tell the other
//! members and how to send is decided on the session task by the sans-IO
//! [`MediaSession`]; this module carries its decisions to the threads
//! (atomics, lock-free packet rings) and their measurements back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use audio_device::{
    AudioFormat, AudioSink, AudioSource, NullSink, Pacer, Signal, SyntheticSource, WavSink,
    WavSource,
};
use audio_pipeline::{
    EncoderConfig, FrameDuration, HowToSend, JitterConfig, JitterStats, MIN_DRED_COMPLEXITY,
    PULL_SAMPLES, PacketReceiver, PacketSender, Protection, ReceivePath, ReferenceReader,
    ReferenceWriter, Resampler, SendPath, VoiceProcessing, VoiceProcessor, VoiceStats,
    echo_reference, packet_ring,
};
use calling_api::{AudioDeviceKind, CallingEvent, KeyProblem, NetworkQuality};
use media_e2ee::{E2eeError, FrameSealer, KeyAnnouncement, MediaKey};
use signaling_link::MediaLink;
use signaling_proto::datagram::MAX_HEADER_LEN;
use signaling_proto::{DatagramKind, FlowId, MediaHeader};
use tracing::warn;

use crate::media_session::{MAX_SPEAKERS, MediaSession, MemberFigures, Received};
use crate::quality::{Bitrate, LocalStats};

/// An application's own capture source (a bot's voice, a probe), shared
/// with the SDK's capture thread, which reads it every 10 ms.
#[derive(Clone)]
pub struct CustomSource(pub Arc<Mutex<dyn AudioSource>>);

/// An application's own playback sink, written every 5 ms by the SDK's
/// playout thread (48 kHz mono unless its format says otherwise).
#[derive(Clone)]
pub struct CustomSink(pub Arc<Mutex<dyn AudioSink>>);

macro_rules! by_identity {
    ($name:ident) => {
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }
    };
}
by_identity!(CustomSource);
by_identity!(CustomSink);

/// Where a user's voice comes from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CaptureDevice {
    /// Nothing (silence is sent).
    Silence,
    /// A WAV file, played once (then silence) or looped.
    Wav {
        /// The file.
        path: PathBuf,
        /// Start again at the end.
        looping: bool,
    },
    /// A generated signal (48 kHz mono).
    Synthetic(Signal),
    /// The system's microphone (the default, or by name). Needs the `cpal`
    /// feature; without it the call sends silence and says so.
    System {
        /// Device name; `None` for the default.
        name: Option<String>,
    },
    /// The application's own source.
    Custom(CustomSource),
}

/// Where the call is heard.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PlaybackDevice {
    /// Nowhere.
    Null,
    /// Recorded into a 16-bit WAV file (48 kHz mono) — for bots and tests.
    Wav {
        /// The file; replaced at each call.
        path: PathBuf,
    },
    /// The system's speaker: the hands-free device or the private one.
    /// Needs the `cpal` feature; without it nothing is played and it says so.
    System {
        /// Device for hands-free mode; `None` for the default.
        hands_free: Option<String>,
        /// Device otherwise; `None` for the default.
        private: Option<String>,
    },
    /// The application's own sink.
    Custom(CustomSink),
}

/// A device named by a short text (bindings, configuration): not one of
/// the forms the device's `FromStr` documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a device: see CaptureDevice's and PlaybackDevice's FromStr")]
pub struct UnknownDevice(pub String);

impl std::str::FromStr for CaptureDevice {
    type Err = UnknownDevice;

    /// `system`, `system:NAME`, `silence`, `tone:HZ`, `wav:PATH` (played
    /// once) or `wav-loop:PATH`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownDevice(text.to_owned());
        Ok(match text.split_once(':') {
            None if text == "system" => Self::System { name: None },
            None if text == "silence" => Self::Silence,
            Some(("system", name)) => Self::System {
                name: Some(name.to_owned()),
            },
            Some(("tone", hz)) => {
                let frequency: f32 = hz.parse().map_err(|_| unknown())?;
                if !(frequency > 0.0 && frequency < 24_000.0) {
                    return Err(unknown());
                }
                Self::Synthetic(Signal::Tone {
                    frequency,
                    amplitude: 0.5,
                })
            }
            Some(("wav", path)) => Self::Wav {
                path: path.into(),
                looping: false,
            },
            Some(("wav-loop", path)) => Self::Wav {
                path: path.into(),
                looping: true,
            },
            _ => return Err(unknown()),
        })
    }
}

impl std::str::FromStr for PlaybackDevice {
    type Err = UnknownDevice;

    /// `system`, `null` or `wav:PATH` (recorded, 48 kHz mono).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.split_once(':') {
            None if text == "system" => Self::System {
                hands_free: None,
                private: None,
            },
            None if text == "null" => Self::Null,
            Some(("wav", path)) => Self::Wav { path: path.into() },
            _ => return Err(UnknownDevice(text.to_owned())),
        })
    }
}

/// A user's audio devices.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioDevices {
    /// Microphone side.
    pub capture: CaptureDevice,
    /// Speaker side.
    pub playback: PlaybackDevice,
}

impl Default for AudioDevices {
    /// The system's microphone and speaker. In a build without the `cpal`
    /// feature, or on a machine without them, a call sends silence and
    /// plays nowhere, and says so with
    /// [`CallingEvent::AudioDeviceUnavailable`].
    fn default() -> Self {
        Self {
            capture: CaptureDevice::System { name: None },
            playback: PlaybackDevice::System {
                hands_free: None,
                private: None,
            },
        }
    }
}

/// One of the system's audio devices, as [`list_audio_devices`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioDeviceInfo {
    /// Its name, for [`CaptureDevice::System`] / [`PlaybackDevice::System`].
    pub name: String,
    /// Whether it captures (a microphone).
    pub input: bool,
    /// Whether it plays (a speaker).
    pub output: bool,
}

/// The system's microphones and speakers. An error in a build without the
/// `cpal` feature, or when the system's audio cannot be asked.
pub fn list_audio_devices() -> calling_api::CallingResult<Vec<AudioDeviceInfo>> {
    #[cfg(feature = "cpal")]
    {
        audio_device::devices::list_devices()
            .map(|devices| {
                devices
                    .into_iter()
                    .map(|device| AudioDeviceInfo {
                        name: device.name,
                        input: device.input,
                        output: device.output,
                    })
                    .collect()
            })
            .map_err(|error| {
                calling_api::CallingError::with_desc(
                    calling_api::ErrorCode::INVALID_PARAMETER,
                    format!("cannot list the audio devices: {error}"),
                )
            })
    }
    #[cfg(not(feature = "cpal"))]
    {
        Err(calling_api::CallingError::with_desc(
            calling_api::ErrorCode::INVALID_PARAMETER,
            "this build has no system audio devices (the `cpal` feature is off)",
        ))
    }
}

impl AudioDevices {
    /// No devices at all: silence is sent, nothing is played (servers,
    /// tests, signaling-only bots).
    pub fn none() -> Self {
        Self {
            capture: CaptureDevice::Silence,
            playback: PlaybackDevice::Null,
        }
    }
}

/// Shared between the threads and the session task.
struct Shared {
    stop: AtomicBool,
    muted: AtomicBool,
    hands_free: AtomicBool,
    /// Loudest local level since the session task last looked.
    local_level: AtomicU8,
    /// Loudest level per speaker slot since the session task last looked.
    speaker_levels: [AtomicU8; MAX_SPEAKERS],
    /// Jitter statistics per speaker slot, published by the playout thread
    /// about twice a second (it never waits for this lock).
    stats: Mutex<[JitterStats; MAX_SPEAKERS]>,
    /// The loss the encoder is to be told next ([`NO_NEWS`] if it was).
    loss_to_apply: AtomicU8,
    /// Whether the capture thread sends 10 ms frames ([`HowToSend`]).
    short_frames: AtomicBool,
    /// Whether the capture thread protects with DRED instead of in-band FEC
    /// ([`HowToSend`]).
    dred: AtomicBool,
    /// What the echo canceller measures, published by the capture thread
    /// twice a second.
    voice: PublishedVoiceStats,
    /// The playout thread opened another output device: the echo path
    /// changed, and the capture thread's canceller starts afresh.
    echo_path_changed: AtomicBool,
    /// Bytes of audio datagrams the capture thread sent.
    bytes_sent: AtomicU64,
}

/// [`VoiceStats`] in atomics: a delay of `u16::MAX` and a NaN loss mean
/// "not measured".
struct PublishedVoiceStats {
    running: AtomicBool,
    echo_delay_ms: AtomicU16,
    echo_return_loss_db: AtomicU32,
    echo_return_loss_enhancement_db: AtomicU32,
}

impl PublishedVoiceStats {
    fn new(running: bool) -> Self {
        Self {
            running: AtomicBool::new(running),
            echo_delay_ms: AtomicU16::new(u16::MAX),
            echo_return_loss_db: AtomicU32::new(f32::NAN.to_bits()),
            echo_return_loss_enhancement_db: AtomicU32::new(f32::NAN.to_bits()),
        }
    }

    fn publish(&self, stats: VoiceStats) {
        let loss = |value: Option<f32>| value.unwrap_or(f32::NAN).to_bits();
        self.echo_delay_ms
            .store(stats.echo_delay_ms.unwrap_or(u16::MAX), Ordering::Relaxed);
        self.echo_return_loss_db
            .store(loss(stats.echo_return_loss_db), Ordering::Relaxed);
        self.echo_return_loss_enhancement_db.store(
            loss(stats.echo_return_loss_enhancement_db),
            Ordering::Relaxed,
        );
    }

    fn read(&self) -> Option<VoiceStats> {
        if !self.running.load(Ordering::Relaxed) {
            return None;
        }
        let loss = |value: &AtomicU32| {
            Some(f32::from_bits(value.load(Ordering::Relaxed))).filter(|loss| !loss.is_nan())
        };
        Some(VoiceStats {
            echo_delay_ms: Some(self.echo_delay_ms.load(Ordering::Relaxed))
                .filter(|delay| *delay != u16::MAX),
            echo_return_loss_db: loss(&self.echo_return_loss_db),
            echo_return_loss_enhancement_db: loss(&self.echo_return_loss_enhancement_db),
        })
    }
}

/// How a call's audio is processed: fixed for the call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AudioSettings {
    /// The receive path's decoder complexity.
    pub(crate) decoder_complexity: u8,
    /// The capture's voice processing.
    pub(crate) voice: VoiceProcessing,
}

/// Nothing new for the encoder: a value a loss hint (0–100) never takes.
const NO_NEWS: u8 = u8::MAX;

/// Milliseconds of one capture read: the shorter frame size, so a 10 ms
/// frame leaves as soon as it is in (a 20 ms frame takes two reads).
const CAPTURE_MS: u32 = 10;

fn raise(level: &AtomicU8, value: u8) {
    level.fetch_max(value, Ordering::Relaxed);
}

/// What a received datagram asks of the session task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatagramNews {
    /// A member said what it plays for the first time: it should hear our
    /// features now (see [`Received::Features`]).
    SendFeatures,
    /// A network's level may have changed.
    Quality,
    /// The member on `flow`'s audio does not decrypt (see
    /// [`Received::KeyProblem`]).
    KeyProblem {
        flow: FlowId,
        problem: KeyProblem,
    },
    Nothing,
}

/// How the capture thread seals our audio (end-to-end encryption).
#[derive(Debug)]
pub(crate) enum Sealing {
    /// Not at all: the call is not encrypted end to end.
    Off,
    /// With our key for this call.
    With(Box<FrameSealer>),
    /// The call is encrypted but we have no key: nothing is sent (never
    /// our audio in the clear).
    Impossible,
}

impl Sealing {
    /// The most bytes sealing adds to a datagram.
    fn overhead(&self) -> usize {
        match self {
            Self::Off => 0,
            Self::With(_) | Self::Impossible => media_e2ee::MAX_OVERHEAD,
        }
    }

    /// The datagram of `payload` behind `header`, written in `scratch` or
    /// sealed; none without a key.
    fn datagram<'a>(
        &'a mut self,
        header: &MediaHeader,
        payload: &[u8],
        scratch: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        match self {
            Self::Off => {
                let len = header.encode(payload, scratch).ok()?;
                Some(&scratch[..len])
            }
            // The header as sent (flow 0) is what receivers authenticate.
            Self::With(sealer) => {
                let len = header.encode(&[], scratch).ok()?;
                sealer.seal(&scratch[..len], payload).ok()
            }
            Self::Impossible => None,
        }
    }
}

/// How the capture thread seals: as now, and with the next key from its
/// time on.
struct SealingChanges {
    now: Sealing,
    next: std::sync::mpsc::Receiver<(Instant, Box<FrameSealer>)>,
    waiting: Option<(Instant, Box<FrameSealer>)>,
}

impl SealingChanges {
    /// The sealing of the frame about to be sent.
    fn current(&mut self) -> &mut Sealing {
        while let Ok(next) = self.next.try_recv() {
            self.waiting = Some(next);
        }
        if self
            .waiting
            .as_ref()
            .is_some_and(|(from, _)| Instant::now() >= *from)
            && let Some((_, sealer)) = self.waiting.take()
        {
            self.now = Sealing::With(sealer);
        }
        &mut self.now
    }
}

/// A call's switches as it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallSwitches {
    pub(crate) muted: bool,
    pub(crate) hands_free: bool,
    pub(crate) low_latency: bool,
}

/// A running call's audio.
pub(crate) struct CallAudio {
    shared: Arc<Shared>,
    /// What to do with datagrams, what to tell, how to send.
    session: MediaSession,
    /// The ring into each speaker slot's jitter buffer.
    rings: Vec<PacketSender>,
    /// Rings of newly heard flows, for the playout thread to add, in order:
    /// the n-th ring sent is speaker slot n there.
    new_speakers: std::sync::mpsc::Sender<PacketReceiver>,
    /// Our next keys' sealers for the capture thread, each with the time
    /// it starts sealing.
    next_sealers: std::sync::mpsc::Sender<(Instant, Box<FrameSealer>)>,
    threads: Vec<JoinHandle<()>>,
    /// What we send, read at each feedback.
    sent: Bitrate,
}

impl std::fmt::Debug for CallAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallAudio")
            .field("speakers", &self.rings.len())
            .finish_non_exhaustive()
    }
}

/// Where the audio threads say that a device could not be opened: the log,
/// and the application as [`CallingEvent::AudioDeviceUnavailable`] (the
/// driver task delivers it to the listeners).
#[derive(Debug, Clone)]
pub(crate) struct DeviceNotices(pub(crate) tokio::sync::mpsc::UnboundedSender<CallingEvent>);

impl DeviceNotices {
    fn unavailable(&self, device: AudioDeviceKind, reason: String) {
        warn!(%device, reason, "audio device unavailable: the call goes on without it");
        let _ = self
            .0
            .send(CallingEvent::AudioDeviceUnavailable { device, reason });
    }
}

fn open_source(device: &CaptureDevice, notices: &DeviceNotices) -> Box<dyn AudioSource> {
    let silence = || -> Box<dyn AudioSource> {
        Box::new(SyntheticSource::new(
            AudioFormat::mono(48_000),
            Signal::Silence,
        ))
    };
    let opened = match device {
        CaptureDevice::Silence => Ok(silence()),
        CaptureDevice::Synthetic(signal) => Ok(Box::new(SyntheticSource::new(
            AudioFormat::mono(48_000),
            *signal,
        )) as Box<dyn AudioSource>),
        CaptureDevice::Wav { path, looping } => WavSource::open(path)
            .map(|source| Box::new(source.looping(*looping)) as Box<dyn AudioSource>)
            .map_err(|error| error.to_string()),
        CaptureDevice::System { name } => system_microphone(name.as_deref()),
        CaptureDevice::Custom(custom) => Ok(Box::new(custom.clone()) as Box<dyn AudioSource>),
    };
    opened.unwrap_or_else(|reason| {
        notices.unavailable(AudioDeviceKind::Microphone, reason);
        silence()
    })
}

impl AudioSource for CustomSource {
    fn format(&self) -> AudioFormat {
        self.0
            .lock()
            .map_or(AudioFormat::mono(48_000), |source| source.format())
    }

    fn read(&mut self, out: &mut [f32]) -> usize {
        self.0.lock().map_or(0, |mut source| source.read(out))
    }
}

impl AudioSink for CustomSink {
    fn format(&self) -> AudioFormat {
        self.0
            .lock()
            .map_or(AudioFormat::mono(48_000), |sink| sink.format())
    }

    fn write(&mut self, samples: &[f32]) {
        if let Ok(mut sink) = self.0.lock() {
            sink.write(samples);
        }
    }

    fn underrun_frames(&self) -> u64 {
        self.0.lock().map_or(0, |sink| sink.underrun_frames())
    }
}

/// Without device support there is no system device to open.
#[cfg(not(feature = "cpal"))]
const NO_DEVICE_SUPPORT: &str =
    "this build has no audio device support (calling-facade's `cpal` feature)";

#[cfg(feature = "cpal")]
fn system_microphone(name: Option<&str>) -> Result<Box<dyn AudioSource>, String> {
    audio_device::devices::Microphone::open(name)
        .map(|microphone| Box::new(LiveMicrophone(microphone)) as Box<dyn AudioSource>)
        .map_err(|error| error.to_string())
}

#[cfg(not(feature = "cpal"))]
fn system_microphone(_name: Option<&str>) -> Result<Box<dyn AudioSource>, String> {
    Err(NO_DEVICE_SUPPORT.into())
}

/// A live microphone as a source: it waits for a whole read's worth.
#[cfg(feature = "cpal")]
struct LiveMicrophone(audio_device::devices::Microphone);

#[cfg(feature = "cpal")]
impl AudioSource for LiveMicrophone {
    fn format(&self) -> AudioFormat {
        self.0.format()
    }

    fn read(&mut self, out: &mut [f32]) -> usize {
        let deadline = Instant::now() + Duration::from_millis(100);
        while self.0.reader().available() < out.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let read = self.0.reader().read(out);
        // A live device never "ends": pad a short read with silence.
        out[read..].fill(0.0);
        out.len()
    }
}

fn open_sink(
    device: &PlaybackDevice,
    hands_free: bool,
    notices: &DeviceNotices,
) -> Box<dyn AudioSink> {
    let null = || -> Box<dyn AudioSink> { Box::new(NullSink::new(AudioFormat::mono(48_000))) };
    let opened = match device {
        PlaybackDevice::Null => Ok(null()),
        PlaybackDevice::Wav { path } => WavSink::create(path, AudioFormat::mono(48_000))
            .map(|sink| Box::new(sink) as Box<dyn AudioSink>)
            .map_err(|error| error.to_string()),
        PlaybackDevice::System {
            hands_free: loud,
            private,
        } => system_speaker(if hands_free {
            loud.as_deref()
        } else {
            private.as_deref()
        }),
        PlaybackDevice::Custom(custom) => Ok(Box::new(custom.clone()) as Box<dyn AudioSink>),
    };
    opened.unwrap_or_else(|reason| {
        notices.unavailable(AudioDeviceKind::Speaker, reason);
        null()
    })
}

#[cfg(feature = "cpal")]
fn system_speaker(name: Option<&str>) -> Result<Box<dyn AudioSink>, String> {
    audio_device::devices::Speaker::open(name)
        .map(|speaker| Box::new(LiveSpeaker(speaker)) as Box<dyn AudioSink>)
        .map_err(|error| error.to_string())
}

#[cfg(not(feature = "cpal"))]
fn system_speaker(_name: Option<&str>) -> Result<Box<dyn AudioSink>, String> {
    Err(NO_DEVICE_SUPPORT.into())
}

#[cfg(feature = "cpal")]
struct LiveSpeaker(audio_device::devices::Speaker);

#[cfg(feature = "cpal")]
impl AudioSink for LiveSpeaker {
    fn format(&self) -> AudioFormat {
        self.0.format()
    }

    fn write(&mut self, samples: &[f32]) {
        self.0.writer().write(samples);
    }

    fn underrun_frames(&self) -> u64 {
        let channels = u64::from(self.0.format().channels.max(1));
        self.0.counters().underrun_samples() / channels
    }
}

impl CallAudio {
    /// Starts capture and playout for a call whose audio goes out on `link`.
    pub(crate) fn start(
        devices: &AudioDevices,
        settings: AudioSettings,
        link: Arc<dyn MediaLink>,
        switches: CallSwitches,
        sealing: Sealing,
        notices: &DeviceNotices,
    ) -> Option<Self> {
        let AudioSettings {
            decoder_complexity,
            voice,
        } = settings;
        let CallSwitches {
            muted,
            hands_free,
            low_latency,
        } = switches;
        let session = MediaSession::new(
            low_latency,
            decoder_complexity >= MIN_DRED_COMPLEXITY,
            !matches!(sealing, Sealing::Off),
        );
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            muted: AtomicBool::new(muted),
            hands_free: AtomicBool::new(hands_free),
            local_level: AtomicU8::new(0),
            speaker_levels: std::array::from_fn(|_| AtomicU8::new(0)),
            stats: Mutex::new([JitterStats::default(); MAX_SPEAKERS]),
            // A path nobody measured yet is protected from the first frame.
            loss_to_apply: AtomicU8::new(session.encoder_hint()),
            short_frames: AtomicBool::new(false),
            dred: AtomicBool::new(false),
            voice: PublishedVoiceStats::new(voice.any()),
            echo_path_changed: AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
        });
        // What the speaker plays, for the echo canceller.
        let (played, reference) = if voice.echo_cancellation {
            let (played, reference) = echo_reference(REFERENCE_MS);
            (Some(played), Some(reference))
        } else {
            (None, None)
        };
        let (new_speakers, speaker_inbox) = std::sync::mpsc::channel();
        let (next_sealers, sealer_inbox) = std::sync::mpsc::channel();
        // Devices, codecs and jitter buffers are made on the threads, not
        // on the session task that calls this.
        let capture = {
            let shared = Arc::clone(&shared);
            let device = devices.capture.clone();
            let notices = notices.clone();
            std::thread::Builder::new()
                .name("opencalling-capture".into())
                .spawn(move || {
                    let source = open_source(&device, &notices);
                    let sealing = SealingChanges {
                        now: sealing,
                        next: sealer_inbox,
                        waiting: None,
                    };
                    capture_loop(source, voice, reference, sealing, &*link, &shared);
                })
                .ok()?
        };
        let playout = {
            let shared = Arc::clone(&shared);
            let playback = devices.playback.clone();
            let notices = notices.clone();
            std::thread::Builder::new()
                .name("opencalling-playout".into())
                .spawn(move || {
                    let jitter = JitterConfig {
                        decoder_complexity,
                        ..JitterConfig::default()
                    };
                    playout_loop(&speaker_inbox, &playback, jitter, played, &shared, &notices);
                })
        };
        let Ok(playout) = playout else {
            warn!("cannot start the playout thread: no audio in this call");
            shared.stop.store(true, Ordering::Relaxed);
            let _ = capture.join();
            return None;
        };
        Some(Self {
            shared,
            session,
            rings: Vec::new(),
            new_speakers,
            next_sealers,
            threads: vec![capture, playout],
            sent: Bitrate::default(),
        })
    }

    pub(crate) fn set_muted(&self, muted: bool) {
        self.shared.muted.store(muted, Ordering::Relaxed);
    }

    pub(crate) fn set_hands_free(&self, hands_free: bool) {
        self.shared.hands_free.store(hands_free, Ordering::Relaxed);
    }

    /// Wants 10 ms frames (`true`) or 20 ms ones, from the next frame on.
    pub(crate) fn set_low_latency(&mut self, low_latency: bool) {
        self.session.set_low_latency(low_latency);
        self.publish_how_to_send();
    }

    /// Tells the capture thread how the session says to send.
    fn publish_how_to_send(&self) {
        let HowToSend { frames, protection } = self.session.how_to_send();
        let shared = &self.shared;
        shared
            .short_frames
            .store(frames == FrameDuration::Ms10, Ordering::Relaxed);
        shared
            .dred
            .store(protection == Protection::Dred, Ordering::Relaxed);
    }

    /// A datagram from the server: a remote speaker's audio, a loss
    /// report or a member's features about our own, or a word about a
    /// network. What the session task is to do now.
    pub(crate) fn on_datagram(&mut self, datagram: &[u8]) -> DatagramNews {
        match self.session.handle_datagram(Instant::now(), datagram) {
            Received::Audio {
                slot,
                new_speaker,
                packet,
            } => {
                if new_speaker {
                    let (sender, receiver) = packet_ring(64);
                    if self.new_speakers.send(receiver).is_err() {
                        return DatagramNews::Nothing;
                    }
                    self.rings.push(sender);
                }
                if let Some(ring) = self.rings.get_mut(slot) {
                    ring.send(packet);
                }
                DatagramNews::Nothing
            }
            Received::Features { first } => {
                self.publish_how_to_send();
                if first {
                    DatagramNews::SendFeatures
                } else {
                    DatagramNews::Nothing
                }
            }
            Received::Quality => DatagramNews::Quality,
            Received::KeyProblem { flow, problem } => DatagramNews::KeyProblem { flow, problem },
            Received::Nothing => DatagramNews::Nothing,
        }
    }

    /// Takes a key `sender`, the member on `flow`, announced (see
    /// [`MediaSession::add_key`]).
    pub(crate) fn add_key(
        &mut self,
        flow: FlowId,
        material: &MediaKey,
        sender: &str,
        announcement: &KeyAnnouncement,
    ) -> Result<(), E2eeError> {
        self.session.add_key(flow, material, sender, announcement)
    }

    /// From `from` on, the capture thread seals with `sealer` (our new
    /// key, which the members received first).
    pub(crate) fn next_sealer(&self, sealer: Box<FrameSealer>, from: Instant) {
        // A capture thread that ended has nothing more to seal.
        let _ = self.next_sealers.send((from, sealer));
    }

    /// What we tell the other members (see [`MediaSession::feedback`]), and
    /// the loss hint their reports add up to handed to the encoder. Called
    /// about once a second.
    pub(crate) fn feedback(
        &mut self,
        members: &[FlowId],
        our_rtt_ms: Option<u16>,
    ) -> Vec<bytes::Bytes> {
        let now = Instant::now();
        self.sent
            .read(now, self.shared.bytes_sent.load(Ordering::Relaxed));
        let datagrams = self.session.feedback(now, members, our_rtt_ms);
        self.publish_how_to_send();
        self.shared
            .loss_to_apply
            .store(self.session.encoder_hint(), Ordering::Relaxed);
        datagrams
    }

    /// The loss hint the members' reports set for the encoder; `None`
    /// before the first report.
    pub(crate) fn reported_loss(&self) -> Option<u8> {
        self.session.reported_loss()
    }

    /// The loudest local level since the last call (0–100).
    pub(crate) fn take_local_level(&self) -> u8 {
        self.shared.local_level.swap(0, Ordering::Relaxed)
    }

    /// The loudest level of `flow` since the last call (0–100).
    pub(crate) fn take_level(&self, flow: FlowId) -> u8 {
        self.session.slot_of(flow).map_or(0, |slot| {
            self.shared.speaker_levels[slot].swap(0, Ordering::Relaxed)
        })
    }

    /// The latest jitter statistics of each remote flow heard.
    pub(crate) fn stats(&self) -> Vec<(FlowId, JitterStats)> {
        let stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.session
            .heard()
            .map(|(flow, slot)| (flow, stats[slot]))
            .collect()
    }

    /// Our network's level now, among `members`.
    pub(crate) fn our_quality(
        &self,
        members: &[FlowId],
        our_rtt_ms: Option<u16>,
    ) -> NetworkQuality {
        self.session
            .our_quality(Instant::now(), members, our_rtt_ms)
    }

    /// What we know of member `flow` now.
    pub(crate) fn member(&self, flow: FlowId) -> MemberFigures {
        self.session.member(Instant::now(), flow)
    }

    /// Our side of the call now, among `members` (quality and transport
    /// are the caller's to fill in).
    pub(crate) fn local_stats(&self, members: &[FlowId], our_rtt_ms: Option<u16>) -> LocalStats {
        let path = self.session.our_path(Instant::now(), members, our_rtt_ms);
        LocalStats {
            quality: NetworkQuality::Unknown,
            rtt_ms: our_rtt_ms,
            loss_sent_percent: path.uplink_loss_percent,
            loss_received_percent: path.downlink_loss_percent,
            jitter_ms: path.jitter_ms,
            bitrate_kbps: self.sent.kbps(),
            frame_ms: if self.shared.short_frames.load(Ordering::Relaxed) {
                10
            } else {
                20
            },
            transport: None,
            voice: self.voice_stats(),
        }
    }

    /// What the echo canceller measures; `None` when the call runs no
    /// voice processing.
    pub(crate) fn voice_stats(&self) -> Option<VoiceStats> {
        self.shared.voice.read()
    }

    /// Stops both threads (files are finished as they end); the handle
    /// resolves once they have.
    ///
    /// Called on the session task: the threads notice within one 10 ms
    /// tick, and are joined on a blocking thread, never on the async one.
    pub(crate) fn stop(mut self) -> tokio::task::JoinHandle<()> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads: Vec<JoinHandle<()>> = self.threads.drain(..).collect();
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
    }
}

fn capture_loop(
    mut source: Box<dyn AudioSource>,
    voice: VoiceProcessing,
    reference: Option<ReferenceReader>,
    mut sealing: SealingChanges,
    link: &dyn MediaLink,
    shared: &Shared,
) {
    if matches!(sealing.now, Sealing::Impossible) {
        warn!("no media key of our own: this call sends no audio");
    }
    let format = source.format();
    let Ok(mut send) = SendPath::new(
        format.sample_rate,
        format.channels,
        EncoderConfig::default(),
    ) else {
        warn!("cannot start the encoder: sending nothing");
        return;
    };
    if voice.any() {
        let mut processor = VoiceProcessor::new(voice);
        if let Some(reference) = reference {
            processor = processor.with_reference(reference);
        }
        send = send.with_voice_processing(processor);
    }
    let mut reads: u64 = 0;
    let mut chunk = vec![0.0_f32; format.samples_in_ms(CAPTURE_MS)];
    let mut datagram = vec![0_u8; MAX_HEADER_LEN + audio_pipeline::MAX_PACKET];
    let mut pacer = Pacer::new(Duration::from_millis(u64::from(CAPTURE_MS)));
    let mut encoder_failed = false;
    while !shared.stop.load(Ordering::Relaxed) {
        pacer.wait();
        apply_loss_report(&mut send, shared);
        let read = source.read(&mut chunk);
        chunk[read..].fill(0.0);
        send.set_muted(shared.muted.load(Ordering::Relaxed));
        send.set_frame_duration(if shared.short_frames.load(Ordering::Relaxed) {
            FrameDuration::Ms10
        } else {
            FrameDuration::Ms20
        });
        let protection = if shared.dred.load(Ordering::Relaxed) {
            Protection::Dred
        } else {
            Protection::InBandFec
        };
        if let Err(error) = send.set_protection(protection)
            && !encoder_failed
        {
            warn!(%error, "the encoder refused its protection");
            encoder_failed = true;
        }
        if shared.echo_path_changed.swap(false, Ordering::Relaxed) {
            send.echo_path_changed();
        }
        send.push_capture(&chunk);
        reads += 1;
        if reads.is_multiple_of(500 / u64::from(CAPTURE_MS))
            && let Some(stats) = send.voice_stats()
        {
            shared.voice.publish(stats);
        }
        // The next frames fit what the link carries, with the room the
        // server's restamp of our flow id may take (MAX_HEADER_LEN is the
        // header with the longest flow id).
        let fits = link
            .max_datagram_size()
            .map_or(audio_pipeline::MAX_PACKET, |max| {
                max.saturating_sub(MAX_HEADER_LEN + sealing.now.overhead())
            });
        send.limit_packet(fits);
        loop {
            let captured = match send.next_frame() {
                Ok(Some(captured)) => captured,
                Ok(None) => break,
                Err(error) => {
                    // The frame is lost; the next one is tried afresh.
                    if !encoder_failed {
                        warn!(%error, "the encoder failed: its frames are not sent");
                        encoder_failed = true;
                    }
                    continue;
                }
            };
            if let Some(frame) = captured.frame() {
                let header = MediaHeader {
                    kind: DatagramKind::Audio,
                    // The server stamps our flow; what we say does not count.
                    flow_id: FlowId(0),
                    sequence: frame.seq,
                    timestamp: frame.timestamp,
                    voice_activity: frame.voice,
                    level_dbov: frame.level_dbov,
                };
                if let Some(whole) =
                    sealing
                        .current()
                        .datagram(&header, frame.payload, &mut datagram)
                {
                    // A full datagram buffer drops the oldest frame; a closed
                    // connection ends the call on the session task.
                    let sent = link.send_datagram(bytes::Bytes::copy_from_slice(whole));
                    if sent.is_ok() {
                        shared
                            .bytes_sent
                            .fetch_add(whole.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            raise(&shared.local_level, send.volume());
        }
    }
}

/// Tells the encoder the loss the session handed over, if any, so in-band
/// FEC protects as much as the path needs.
fn apply_loss_report(send: &mut SendPath, shared: &Shared) {
    let hint = shared.loss_to_apply.swap(NO_NEWS, Ordering::Relaxed);
    if hint == NO_NEWS {
        return;
    }
    if let Err(error) = send.set_measured_loss(f32::from(hint)) {
        warn!(%error, "the encoder refused the loss hint");
    }
}

fn playout_loop(
    new_speakers: &std::sync::mpsc::Receiver<PacketReceiver>,
    playback: &PlaybackDevice,
    jitter: JitterConfig,
    mut played: Option<ReferenceWriter>,
    shared: &Shared,
    notices: &DeviceNotices,
) {
    let mut receive = ReceivePath::with_jitter_config(jitter);
    let mut hands_free = shared.hands_free.load(Ordering::Relaxed);
    let mut sink = open_sink(playback, hands_free, notices);
    let mut resampler = output_resampler(sink.format());
    // 5 ms pulls: a frame starts playing as soon as its first piece is due.
    let mut frame = [0.0_f32; PULL_SAMPLES];
    let mut device_chunk = vec![0.0_f32; sink.format().samples_in_ms(PULL_MS)];
    let mut pacer = Pacer::new(Duration::from_millis(u64::from(PULL_MS)));
    let mut underruns = Underruns::of(sink.as_ref());
    let mut pulls: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        pacer.wait();
        while let Ok(packets) = new_speakers.try_recv() {
            if let Err(error) = receive.add_receiver(packets) {
                warn!(%error, "cannot decode a new speaker");
            }
        }
        let wanted = shared.hands_free.load(Ordering::Relaxed);
        if wanted != hands_free && matches!(playback, PlaybackDevice::System { .. }) {
            hands_free = wanted;
            sink = open_sink(playback, hands_free, notices);
            resampler = output_resampler(sink.format());
            device_chunk = vec![0.0; sink.format().samples_in_ms(PULL_MS)];
            underruns = Underruns::of(sink.as_ref());
            shared.echo_path_changed.store(true, Ordering::Relaxed);
        }
        if receive.pull(Instant::now(), &mut frame).is_err() {
            frame.fill(0.0);
        }
        if let Some(played) = &mut played {
            underruns.reference_the_silence_played(sink.as_ref(), played);
            played.write(&frame);
        }
        for (slot, level) in receive.levels().iter().enumerate() {
            if let Some(shared_level) = shared.speaker_levels.get(slot) {
                raise(shared_level, *level);
            }
        }
        pulls += 1;
        if pulls.is_multiple_of(500 / u64::from(PULL_MS)) {
            publish_stats(&receive, shared);
        }
        match resampler.as_mut() {
            None => sink.write(&frame),
            Some(resampler) => {
                resampler.push(&frame);
                while resampler.pop(&mut device_chunk) {
                    sink.write(&device_chunk);
                }
            }
        }
    }
}

/// The silence a playback device played on its own, followed so that the
/// echo canceller's reference stays in step with what the speaker played.
struct Underruns {
    seen: u64,
    sample_rate: u32,
}

impl Underruns {
    fn of(sink: &dyn AudioSink) -> Self {
        Self {
            seen: sink.underrun_frames(),
            sample_rate: sink.format().sample_rate.max(1),
        }
    }

    /// Puts the silence `sink` played since the last call into the
    /// reference, at 48 kHz: it came after everything written so far.
    fn reference_the_silence_played(
        &mut self,
        sink: &dyn AudioSink,
        reference: &mut ReferenceWriter,
    ) {
        let frames = sink.underrun_frames();
        let new = frames.saturating_sub(self.seen);
        self.seen = frames;
        if new > 0 {
            let at_48k = new * 48_000 / u64::from(self.sample_rate);
            reference.write_silence(usize::try_from(at_48k).unwrap_or(usize::MAX));
        }
    }
}

/// How much of what the speaker plays may wait for the capture thread:
/// far more than the two threads ever drift apart.
const REFERENCE_MS: u32 = 500;

/// Milliseconds of one playout pull ([`PULL_SAMPLES`] at 48 kHz).
const PULL_MS: u32 = (PULL_SAMPLES / 48) as u32;

fn publish_stats(receive: &ReceivePath, shared: &Shared) {
    if let Ok(mut stats) = shared.stats.try_lock() {
        for (slot, published) in stats.iter_mut().enumerate() {
            if let Some(latest) = receive.stats(slot) {
                *published = latest;
            }
        }
    }
}

/// 48 kHz mono → the sink's format, unless it is 48 kHz mono already.
fn output_resampler(format: AudioFormat) -> Option<Resampler> {
    if format == AudioFormat::mono(48_000) {
        return None;
    }
    Resampler::new(48_000, 1, format.sample_rate, format.channels, 480).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_by_name() {
        assert_eq!("silence".parse(), Ok(CaptureDevice::Silence));
        assert_eq!(
            "wav-loop:/tmp/a.wav".parse(),
            Ok(CaptureDevice::Wav {
                path: "/tmp/a.wav".into(),
                looping: true
            })
        );
        assert!(matches!(
            "tone:440".parse(),
            Ok(CaptureDevice::Synthetic(Signal::Tone { frequency, .. })) if frequency == 440.0
        ));
        assert_eq!("null".parse(), Ok(PlaybackDevice::Null));
        assert_eq!(
            "wav:out.wav".parse(),
            Ok(PlaybackDevice::Wav {
                path: "out.wav".into()
            })
        );
        for bad in ["tone:-3", "tone:loud", "speaker", "", "wav-loop"] {
            assert!(bad.parse::<CaptureDevice>().is_err(), "{bad}");
        }
        assert!("silence".parse::<PlaybackDevice>().is_err());
    }
}
