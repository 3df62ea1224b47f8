//! OpenCalling's SDK for Python: the extension module `opencalling._native`
//! (PyO3, abi3), wrapped by the pure-Python package `opencalling`
//! (`python/opencalling`), which adds the Python names, `async` methods
//! and the asyncio event stream.
//!
//! Every method here blocks until the SDK answers, with the GIL released
//! (the Python layer runs them in a worker thread). It never reimplements
//! the SDK: every call goes to `calling-facade`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use calling_api::{CallType, CallingError as SdkError};
use calling_facade::{
    AudioDevices, CallOptions, ClientOptions, EventStream, Fallback, MediaKeys, ServerTrust,
    TRTCCalling,
};
use pyo3::exceptions::{PyEOFError, PyException, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    CallingError,
    PyException,
    "An SDK error: args are (code, message), code a calling_api error code."
);

/// How long `destroy` waits for the logout to reach the server.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

fn sdk_error(error: SdkError) -> PyErr {
    CallingError::new_err((error.code.0, error.desc))
}

/// One user's instance of the SDK.
#[pyclass(name = "Calling", module = "opencalling._native", frozen)]
struct Calling {
    calling: Arc<TRTCCalling>,
    runtime: tokio::runtime::Runtime,
    events: Mutex<EventStream>,
    closed: AtomicBool,
}

impl Calling {
    /// Runs a request of the SDK to its end, without the GIL.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        request: impl Future<Output = Result<T, SdkError>> + Send,
    ) -> PyResult<T> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PyValueError::new_err("this Calling was destroyed"));
        }
        py.detach(|| self.runtime.block_on(request))
            .map_err(sdk_error)
    }
}

#[pymethods]
impl Calling {
    /// A new instance for the server at `server` (host:port, or a
    /// deployment's servers separated by commas, tried in turn). Trust: the
    /// certificate's `fingerprint`, or a CA file, or the system's roots.
    /// Devices by name: input `system`, `silence`, `tone:HZ`, `wav:PATH`,
    /// `wav-loop:PATH`; output `system`, `null`, `wav:PATH`. Voice
    /// processing (echo cancellation, noise suppression, auto gain): on for
    /// the system microphone, off for the others, unless a switch says.
    #[new]
    #[pyo3(signature = (
        server,
        *,
        fingerprint = None,
        ca_file = None,
        server_name = None,
        input = "system",
        output = "system",
        voice_volume_interval_ms = 300,
        reconnect = true,
        fallback = "same",
        decoder_complexity = calling_facade::DEFAULT_DECODER_COMPLEXITY,
        low_latency = false,
        device_id = None,
        echo_cancellation = None,
        noise_suppression = None,
        auto_gain = None,
        media_key = None,
        media_keys = None,
        media_identity = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        server: String,
        fingerprint: Option<String>,
        ca_file: Option<String>,
        server_name: Option<String>,
        input: &str,
        output: &str,
        voice_volume_interval_ms: u64,
        reconnect: bool,
        fallback: &str,
        decoder_complexity: u8,
        low_latency: bool,
        device_id: Option<String>,
        echo_cancellation: Option<bool>,
        noise_suppression: Option<bool>,
        auto_gain: Option<bool>,
        media_key: Option<String>,
        media_keys: Option<std::collections::HashMap<String, String>>,
        media_identity: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let invalid = |error: String| PyValueError::new_err(error);
        let mut options = ClientOptions::default();
        options.server = server;
        if let Some(name) = server_name {
            options.server_name = name;
        }
        options.trust = match (fingerprint, ca_file) {
            (Some(fingerprint), None) => ServerTrust::Fingerprint(
                fingerprint
                    .parse()
                    .map_err(|error| invalid(format!("fingerprint: {error}")))?,
            ),
            (None, Some(file)) => ServerTrust::CaFile(file.into()),
            (None, None) => ServerTrust::SystemRoots,
            (Some(_), Some(_)) => {
                return Err(invalid("a fingerprint or a CA file, not both".into()));
            }
        };
        options.audio = AudioDevices {
            capture: input.parse().map_err(|error| invalid(format!("{error}")))?,
            playback: output
                .parse()
                .map_err(|error| invalid(format!("{error}")))?,
        };
        options.voice_volume_interval = Duration::from_millis(voice_volume_interval_ms);
        if !reconnect {
            options.reconnect = None;
        }
        options.fallback = fallback.parse().unwrap_or(Fallback::SameAddress);
        if let Some(device_id) = device_id {
            options.device_id = Some(
                calling_facade::DeviceId::new(device_id)
                    .map_err(|error| invalid(format!("device_id: {error}")))?,
            );
        }
        if decoder_complexity > 10 {
            return Err(invalid(format!(
                "decoder_complexity {decoder_complexity}: 0 to 10"
            )));
        }
        options.decoder_complexity = decoder_complexity;
        options.low_latency = low_latency;
        // Each switch left as None keeps the device's default.
        let mut voice = options.voice_processing_in_effect();
        voice.echo_cancellation = echo_cancellation.unwrap_or(voice.echo_cancellation);
        voice.noise_suppression = noise_suppression.unwrap_or(voice.noise_suppression);
        voice.auto_gain = auto_gain.unwrap_or(voice.auto_gain);
        options.voice_processing = Some(voice);
        options.media_encryption = MediaKeys::from_settings(
            media_key.as_deref(),
            media_keys.as_ref(),
            media_identity.as_deref(),
        )
        .map_err(|error| invalid(error.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("opencalling-py")
            .enable_all()
            .build()
            .map_err(|error| PyException::new_err(format!("cannot start the runtime: {error}")))?;
        let calling = TRTCCalling::new(options);
        let events = Mutex::new(calling.events());
        Ok(Self {
            calling,
            runtime,
            events,
            closed: AtomicBool::new(false),
        })
    }

    /// Logs in (`login(sdkAppId, userId, userSig)`).
    fn login(
        &self,
        py: Python<'_>,
        sdk_app_id: u32,
        user_id: &str,
        user_sig: &str,
    ) -> PyResult<()> {
        let calling = Arc::clone(&self.calling);
        let (user_id, user_sig) = (user_id.to_owned(), user_sig.to_owned());
        self.run(py, async move {
            calling.login(sdk_app_id, &user_id, &user_sig).await
        })
    }

    /// Logs out.
    fn logout(&self, py: Python<'_>) -> PyResult<()> {
        let calling = Arc::clone(&self.calling);
        self.run(py, async move { calling.logout().await })
    }

    /// Invites `user_id` (into the current call when in one); the call id,
    /// as a decimal string.
    #[pyo3(signature = (user_id, call_type = 1, timeout_ms = None, user_data = None))]
    fn call(
        &self,
        py: Python<'_>,
        user_id: &str,
        call_type: u8,
        timeout_ms: Option<u32>,
        user_data: Option<String>,
    ) -> PyResult<String> {
        let call_type = match call_type {
            1 => CallType::Audio,
            2 => CallType::Video,
            other => {
                return Err(PyValueError::new_err(format!(
                    "call type {other}: 1 audio, 2 video"
                )));
            }
        };
        let calling = Arc::clone(&self.calling);
        let user_id = user_id.to_owned();
        let options = CallOptions {
            timeout_ms,
            user_data,
        };
        let call_id = self.run(py, async move {
            calling.call_with(&user_id, call_type, options).await
        })?;
        Ok(call_id.0.to_string())
    }

    /// Accepts the ringing invitation.
    fn accept(&self, py: Python<'_>) -> PyResult<()> {
        let calling = Arc::clone(&self.calling);
        self.run(py, async move { calling.accept().await })
    }

    /// Rejects the ringing invitation.
    fn reject(&self, py: Python<'_>) -> PyResult<()> {
        let calling = Arc::clone(&self.calling);
        self.run(py, async move { calling.reject().await })
    }

    /// Hangs up: cancels before anyone answered, leaves the call otherwise.
    fn hangup(&self, py: Python<'_>) -> PyResult<()> {
        let calling = Arc::clone(&self.calling);
        self.run(py, async move { calling.hangup().await })
    }

    /// The device this instance names at login: `device_id` as given, or
    /// the one it made for itself.
    fn device_id(&self) -> String {
        self.calling.device_id().to_string()
    }

    /// The call's statistics as JSON (docs/bindings.md): the local user's
    /// network quality, round trip, loss each way, jitter, bitrate, frame
    /// length, transport and echo figures; per other member the same from
    /// its side and our jitter buffer's view of its audio.
    fn call_stats(&self, py: Python<'_>) -> PyResult<String> {
        let calling = Arc::clone(&self.calling);
        let stats = self.run(py, async move { calling.call_stats().await })?;
        Ok(stats.to_json().to_string())
    }

    /// Stops (`True`) or resumes sending the microphone.
    fn set_mic_mute(&self, muted: bool) {
        self.calling.set_mic_mute(muted);
    }

    /// Whether the microphone is muted.
    fn is_mic_muted(&self) -> bool {
        self.calling.is_mic_muted()
    }

    /// Hands-free (speakerphone) on or off.
    fn set_hands_free(&self, hands_free: bool) {
        self.calling.set_hands_free(hands_free);
    }

    /// Whether hands-free is on.
    fn is_hands_free(&self) -> bool {
        self.calling.is_hands_free()
    }

    /// The low-latency profile (10 ms audio frames) on or off.
    fn set_low_latency(&self, low_latency: bool) {
        self.calling.set_low_latency(low_latency);
    }

    /// Whether the low-latency profile is wanted.
    fn is_low_latency(&self) -> bool {
        self.calling.is_low_latency()
    }

    /// The next event as JSON (`{"type": "event", "callback": "onInvited",
    /// "event": ...}`), waiting at most `timeout` seconds (`None`: until
    /// one comes); `None` when none came in time. `EOFError` once
    /// destroyed.
    #[pyo3(signature = (timeout = None))]
    fn next_event(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let wait = timeout
            .map(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)))
            .transpose()
            .map_err(|error| PyValueError::new_err(format!("timeout: {error}")))?;
        let event = py.detach(|| {
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            self.runtime.block_on(async {
                match wait {
                    Some(wait) => tokio::time::timeout(wait, events.recv()).await.ok(),
                    None => Some(events.recv().await),
                }
            })
        });
        match event {
            None => {
                if self.closed.load(Ordering::Relaxed) {
                    Err(PyEOFError::new_err("destroyed"))
                } else {
                    Ok(None)
                }
            }
            Some(None) => Err(PyEOFError::new_err("destroyed")),
            Some(Some(event)) => Ok(Some(
                serde_json::json!({
                    "type": "event",
                    "callback": event.original_name(),
                    "event": event,
                })
                .to_string(),
            )),
        }
    }

    /// Logs out (a call ends as a hang-up; at most 3 s) and stops; the
    /// instance is unusable afterwards. Idempotent.
    fn destroy(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        let calling = Arc::clone(&self.calling);
        py.detach(|| {
            self.runtime.block_on(async move {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, calling.shutdown()).await;
            });
        });
    }
}

/// A UserSig for `user_id` signed with `secret_key`, valid `valid_for`
/// seconds: the original's `GenerateTestUserSig`. For development and
/// tests: production UserSigs come from the application's backend.
#[pyfunction]
#[pyo3(signature = (sdk_app_id, secret_key, user_id, valid_for = 86_400))]
fn generate_test_user_sig(
    sdk_app_id: u32,
    secret_key: &str,
    user_id: &str,
    valid_for: u64,
) -> PyResult<String> {
    calling_facade::dev::generate_test_user_sig(
        sdk_app_id,
        secret_key,
        user_id,
        Duration::from_secs(valid_for),
    )
    .map_err(sdk_error)
}

/// The extension module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Calling>()?;
    module.add_function(wrap_pyfunction!(generate_test_user_sig, module)?)?;
    module.add("CallingError", module.py().get_type::<CallingError>())?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
