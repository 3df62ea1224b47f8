//! The SDK's options: where the server is, how to trust it, the audio
//! devices, timings; from code or from the environment.

use std::sync::Arc;
use std::time::Duration;

use calling_api::DeviceId;
use signaling_proto::ReconnectTimings;
use signaling_tls::CertFingerprint;
pub use signaling_tls::ServerTrust;

use crate::media::{AudioDevices, CaptureDevice};
pub use audio_pipeline::DEFAULT_DECODER_COMPLEXITY;
use audio_pipeline::VoiceProcessing;
use media_e2ee::{Identity, MediaKey, MediaKeys};

/// How long connecting may take unless [`ClientOptions::connect_timeout`]
/// says otherwise: 5 s, several handshake retransmissions on a lossy path.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the server is and how to trust it, the audio devices, and the
/// SDK's own timings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// `host:port` of the server's UDP endpoint, or the servers of one
    /// deployment separated by commas (`a.example:4433,b.example:4433`).
    /// The SDK tries every address of every name, in order (a name with
    /// several DNS records gives several), each half a second after the
    /// one before if that has not connected, and starts with the one that
    /// connected last; a server that drains or stops may send it to others
    /// (protocol version 6), which it tries first from then on.
    pub server: String,
    /// The name the server's certificate must carry (ignored by
    /// fingerprint trust).
    pub server_name: String,
    /// How to trust the server's certificate.
    pub trust: ServerTrust,
    /// How long connecting may take (reaching the server and the QUIC and
    /// TLS handshakes) before `login` fails with `SERVER_UNREACHABLE`:
    /// [`DEFAULT_CONNECT_TIMEOUT`] unless set.
    pub connect_timeout: Duration,
    /// How long a request (login, call, accept…) may wait for the server.
    pub request_timeout: Duration,
    /// How often `onUserVoiceVolume` fires in a call.
    pub voice_volume_interval: Duration,
    /// Microphone and speaker for calls.
    pub audio: AudioDevices,
    /// The fallback transport for networks that block UDP (WebSocket over
    /// TLS over TCP), raced against QUIC when QUIC does not answer within
    /// [`ClientOptions::fallback_delay`]: [`Fallback::SameAddress`] unless
    /// set.
    pub fallback: Fallback,
    /// How long QUIC has alone before the fallback starts too: 300 ms.
    /// Once the fallback has won, it starts first next time.
    pub fallback_delay: Duration,
    /// How a broken connection is repaired without the application:
    /// [`ReconnectPolicy::default`] unless set; `None` ends the session
    /// with the connection (`onError`, then logged out), as before
    /// reconnection existed.
    pub reconnect: Option<ReconnectPolicy>,
    /// How the receiving side decodes (libopus's decoder complexity): 5 and
    /// up conceal lost frames with Deep PLC and recover bursts from DRED
    /// (the SDK then asks senders whose packets it loses in bursts for
    /// DRED instead of in-band FEC), 6 and 7 enhance every frame (LACE,
    /// NoLACE; 7 costs ~0.1 ms a frame per remote speaker).
    /// [`DEFAULT_DECODER_COMPLEXITY`] unless set; the other side needs
    /// nothing for it.
    pub decoder_complexity: u8,
    /// The low-latency profile from the start: 10 ms audio frames instead
    /// of 20 ms (see [`TRTCCalling::set_low_latency`](crate::TRTCCalling::set_low_latency),
    /// which switches it at any time). Off unless set.
    pub low_latency: bool,
    /// Voice processing of the microphone (an extension): echo
    /// cancellation (what the speaker plays is taken out of what the
    /// microphone hears, so that the others do not hear themselves back),
    /// noise suppression and automatic gain control, each on or off.
    /// `None` (the default) chooses by device: all three for
    /// [`CaptureDevice::System`], none for WAV files, generated signals,
    /// silence and custom sources, which they would only change
    /// ([`ClientOptions::voice_processing_in_effect`]). Read when a call
    /// starts.
    pub voice_processing: Option<VoiceProcessing>,
    /// Which of the user's devices this is (an extension), named at every
    /// login. A server that lets a user be logged in on several devices
    /// rings each; a login from a device that is logged in already
    /// replaces that device's session. `None` (the default): the instance
    /// makes a random one and keeps it for its life
    /// ([`TRTCCalling::device_id`](crate::TRTCCalling::device_id)). An app
    /// that keeps its own id across restarts (in its settings) makes a
    /// restarted app replace its old session at once instead of counting
    /// as another device until the old one times out.
    pub device_id: Option<DeviceId>,
    /// End-to-end encryption of the call's audio (an extension, protocol
    /// version 7): every Opus packet is sealed with a key of this user's
    /// own, derived from the key material given here, and the server
    /// relays what it cannot read (docs/security.md). Both sides need it,
    /// with the same key material for each user: a call between a device
    /// that encrypts and one that does not is refused
    /// (`MEDIA_ENCRYPTION_MISMATCH`), never downgraded. A member whose
    /// audio does not decrypt plays as silence and raises
    /// [`CallingEvent::MediaKeyProblem`](crate::CallingEvent::MediaKeyProblem).
    /// `None` (the default): off. Key material is read when a call starts
    /// (ours) and when a member announces its key (theirs).
    ///
    /// [`MediaKeys::BuiltIn`] needs no key material: each device has an
    /// identity key ([`Identity`](crate::Identity), best kept in a file
    /// with [`Identity::load_or_create`](crate::Identity::load_or_create)),
    /// each sender draws its keys and sends them to each member sealed to
    /// that member's identity key, new ones whenever a member leaves or
    /// joins, and the application hears each member's safety number
    /// ([`CallingEvent::MemberIdentity`](crate::CallingEvent::MemberIdentity)).
    pub media_encryption: Option<MediaKeys>,
}

/// Where the server's fallback transport (TCP) is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// TCP at the same `host:port` as QUIC (the server's default).
    SameAddress,
    /// TCP at this `host:port` (443 in production).
    At(String),
    /// QUIC only.
    Off,
}

/// When the SDK declares its connection dead and how fast it tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Nothing heard from the server for this long (a heartbeat is
    /// answered every [`ReconnectPolicy::heartbeat_interval`]) and the
    /// connection counts as dead: 3 s.
    pub dead_after: Duration,
    /// How often the SDK asks the server for a sign of life: 1 s.
    pub heartbeat_interval: Duration,
    /// The wait before the second attempt (the first starts at once); it
    /// doubles with each failure: 100 ms.
    pub first_backoff: Duration,
    /// The longest wait between the starts of two attempts, which overlap
    /// (at most 4 at once; a fifth aborts the oldest): 250 ms, so that a
    /// network that comes back is used within a quarter of a second (an
    /// attempt started during the outage would wait for its handshake's
    /// retransmission, a second or more). Each attempt lives at most
    /// [`ClientOptions::connect_timeout`].
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            dead_after: ReconnectTimings::DEFAULT.dead_after,
            heartbeat_interval: ReconnectTimings::DEFAULT.heartbeat_interval,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        }
    }
}

impl ReconnectPolicy {
    pub(crate) fn timings(self) -> ReconnectTimings {
        ReconnectTimings {
            heartbeat_interval: self.heartbeat_interval,
            dead_after: self.dead_after,
        }
    }
}

impl ClientOptions {
    /// The voice processing a call runs with these options:
    /// [`ClientOptions::voice_processing`], or the default for the capture
    /// device.
    pub fn voice_processing_in_effect(&self) -> VoiceProcessing {
        self.voice_processing.unwrap_or(match self.audio.capture {
            CaptureDevice::System { .. } => VoiceProcessing::ALL,
            _ => VoiceProcessing::NONE,
        })
    }
}

impl std::str::FromStr for Fallback {
    type Err = std::convert::Infallible;

    /// `same`, `off`, or the `host:port` of the fallback.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "same" => Self::SameAddress,
            "off" => Self::Off,
            address => Self::At(address.to_owned()),
        })
    }
}

impl Default for ClientOptions {
    /// A server on this machine at the default port, trusted through the
    /// system roots.
    fn default() -> Self {
        Self {
            server: "127.0.0.1:4433".into(),
            server_name: "localhost".into(),
            trust: ServerTrust::SystemRoots,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Duration::from_secs(10),
            voice_volume_interval: Duration::from_millis(300),
            audio: AudioDevices::default(),
            fallback: Fallback::SameAddress,
            fallback_delay: Duration::from_millis(300),
            reconnect: Some(ReconnectPolicy::default()),
            decoder_complexity: DEFAULT_DECODER_COMPLEXITY,
            low_latency: false,
            voice_processing: None,
            device_id: None,
            media_encryption: None,
        }
    }
}

impl ClientOptions {
    /// A development server at `server`, trusted by its certificate's
    /// fingerprint (the server prints it at start).
    pub fn development(server: impl Into<String>, fingerprint: CertFingerprint) -> Self {
        Self {
            server: server.into(),
            trust: ServerTrust::Fingerprint(fingerprint),
            ..Self::default()
        }
    }

    /// The defaults, overridden by `OPENCALLING_SERVER` (`host:port`),
    /// `OPENCALLING_SERVER_NAME`, and one of `OPENCALLING_SERVER_FINGERPRINT`
    /// (hex SHA-256) or `OPENCALLING_CA_FILE` (PEM), and
    /// `OPENCALLING_FALLBACK` (`host:port` of the TCP fallback, `same` or
    /// `off`), `OPENCALLING_DECODER_COMPLEXITY` (0–10) and
    /// `OPENCALLING_LOW_LATENCY` (`1` or `0`) and `OPENCALLING_DEVICE_ID`,
    /// and `OPENCALLING_MEDIA_KEY` (end-to-end encryption with one shared
    /// key: 32 to 128 hex digits) or `OPENCALLING_MEDIA_IDENTITY`
    /// (end-to-end encryption with built-in keys: the file of this
    /// device's identity, made if missing; it wins over a key).
    /// This is what the shared instance uses.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`ClientOptions::from_env`] with another source of variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut options = Self::default();
        if let Some(server) = lookup("OPENCALLING_SERVER") {
            options.server = server;
        }
        if let Some(name) = lookup("OPENCALLING_SERVER_NAME") {
            options.server_name = name;
        }
        if let Some(fingerprint) = lookup("OPENCALLING_SERVER_FINGERPRINT") {
            match fingerprint.parse() {
                Ok(fingerprint) => options.trust = ServerTrust::Fingerprint(fingerprint),
                Err(error) => tracing::warn!(%error, "OPENCALLING_SERVER_FINGERPRINT ignored"),
            }
        } else if let Some(file) = lookup("OPENCALLING_CA_FILE") {
            options.trust = ServerTrust::CaFile(file.into());
        }
        if let Some(fallback) = lookup("OPENCALLING_FALLBACK") {
            options.fallback = fallback.parse().unwrap_or(Fallback::SameAddress);
        }
        if let Some(complexity) = lookup("OPENCALLING_DECODER_COMPLEXITY") {
            match complexity.parse::<u8>() {
                Ok(complexity) if complexity <= 10 => options.decoder_complexity = complexity,
                _ => tracing::warn!(
                    complexity,
                    "OPENCALLING_DECODER_COMPLEXITY ignored: not 0–10"
                ),
            }
        }
        if let Some(device) = lookup("OPENCALLING_DEVICE_ID") {
            match DeviceId::new(device) {
                Ok(device) => options.device_id = Some(device),
                Err(error) => tracing::warn!(%error, "OPENCALLING_DEVICE_ID ignored"),
            }
        }
        if let Some(key) = lookup("OPENCALLING_MEDIA_KEY") {
            match MediaKey::from_hex(&key) {
                Ok(key) => options.media_encryption = Some(MediaKeys::Shared(key)),
                // The error says what is wrong, never the key.
                Err(error) => tracing::warn!(%error, "OPENCALLING_MEDIA_KEY ignored"),
            }
        }
        if let Some(path) = lookup("OPENCALLING_MEDIA_IDENTITY") {
            match Identity::load_or_create(std::path::Path::new(&path)) {
                Ok(identity) => {
                    options.media_encryption = Some(MediaKeys::BuiltIn(Arc::new(identity)));
                }
                Err(error) => tracing::warn!(%error, "OPENCALLING_MEDIA_IDENTITY ignored"),
            }
        }
        if let Some(low_latency) = lookup("OPENCALLING_LOW_LATENCY") {
            match low_latency.as_str() {
                "1" | "true" | "on" => options.low_latency = true,
                "0" | "false" | "off" => options.low_latency = false,
                _ => tracing::warn!(low_latency, "OPENCALLING_LOW_LATENCY ignored: not 1 or 0"),
            }
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_defaults() {
        let fingerprint = CertFingerprint::of(b"cert");
        let options = ClientOptions::from_lookup(|name| match name {
            "OPENCALLING_SERVER" => Some("calls.example:4433".into()),
            "OPENCALLING_SERVER_FINGERPRINT" => Some(fingerprint.to_string()),
            _ => None,
        });
        assert_eq!(options.server, "calls.example:4433");
        assert_eq!(options.trust, ServerTrust::Fingerprint(fingerprint));
        assert_eq!(options.decoder_complexity, DEFAULT_DECODER_COMPLEXITY);
        let classic = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_DECODER_COMPLEXITY").then(|| "0".into())
        });
        assert_eq!(classic.decoder_complexity, 0);
        let wrong = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_DECODER_COMPLEXITY").then(|| "11".into())
        });
        assert_eq!(wrong.decoder_complexity, DEFAULT_DECODER_COMPLEXITY);
        assert!(!options.low_latency);
        let low = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_LOW_LATENCY").then(|| "1".into())
        });
        assert!(low.low_latency);
        let unclear = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_LOW_LATENCY").then(|| "maybe".into())
        });
        assert!(!unclear.low_latency);
        let bad = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_SERVER_FINGERPRINT").then(|| "nope".into())
        });
        assert_eq!(
            bad.trust,
            ServerTrust::SystemRoots,
            "a bad fingerprint is ignored, not trusted"
        );
        let ca = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_CA_FILE").then(|| "/etc/ca.pem".into())
        });
        assert_eq!(ca.trust, ServerTrust::CaFile("/etc/ca.pem".into()));
        assert_eq!(options.media_encryption, None, "off unless asked for");
        let key = "00112233445566778899aabbccddeeff";
        let encrypted = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_MEDIA_KEY").then(|| key.into())
        });
        assert_eq!(
            encrypted.media_encryption,
            Some(MediaKeys::Shared(MediaKey::from_hex(key).unwrap()))
        );
        let short = ClientOptions::from_lookup(|name| {
            (name == "OPENCALLING_MEDIA_KEY").then(|| "0011".into())
        });
        assert_eq!(short.media_encryption, None, "a bad key is ignored");
    }

    #[test]
    fn voice_processing_is_on_for_a_system_microphone_only() {
        use crate::media::{CaptureDevice, PlaybackDevice};
        let mut options = ClientOptions::default();
        assert_eq!(options.voice_processing_in_effect(), VoiceProcessing::ALL);
        for capture in [
            CaptureDevice::Wav {
                path: "a.wav".into(),
                looping: false,
            },
            CaptureDevice::Silence,
            "tone:440".parse().unwrap_or(CaptureDevice::Silence),
        ] {
            options.audio = AudioDevices {
                capture,
                playback: PlaybackDevice::Null,
            };
            assert_eq!(options.voice_processing_in_effect(), VoiceProcessing::NONE);
        }
        let echo_only = VoiceProcessing {
            echo_cancellation: true,
            noise_suppression: false,
            auto_gain: false,
        };
        options.voice_processing = Some(echo_only);
        assert_eq!(options.voice_processing_in_effect(), echo_only);
    }
}
