#![doc = include_str!("../README.md")]
// A C ABI is unsafe by nature: raw pointers in, a C function pointer out.
// Every unsafe block says what it relies on.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use calling_api::{CallId, CallType, CallingResult};
use calling_facade::{
    AudioDevices, CallOptions, ClientOptions, DeviceId, Fallback, MediaKeys, ServerTrust,
    TRTCCalling,
};
use serde::Deserialize;
use serde_json::json;

/// An instance of the SDK (one user). Never 0.
pub type OcHandle = u64;

/// The callback: `user_data` as registered, and one event or completion as
/// a NUL-terminated JSON object, valid until the callback returns.
pub type OcEventCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event_json: *const c_char)>;

/// Success.
pub const OC_OK: i32 = 0;
/// A pointer argument that must not be null was null.
pub const OC_ERR_NULL_POINTER: i32 = -1;
/// No such instance: never created, or destroyed.
pub const OC_ERR_INVALID_HANDLE: i32 = -2;
/// An argument is unusable: not UTF-8, bad JSON, a value out of range. The
/// SDK's own argument errors (a bad user id…) arrive as completions with
/// their `calling_api` error code instead.
pub const OC_ERR_INVALID_ARGUMENT: i32 = -3;
/// A bug inside the library was caught at the boundary.
pub const OC_ERR_PANIC: i32 = -4;
/// The library could not start what an instance needs (threads).
pub const OC_ERR_RESOURCES: i32 = -5;

/// How long a destroy waits for the logout to reach the server.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// What the instance's callback thread delivers.
enum Delivery {
    Json(CString),
    Stop,
}

/// The registered callback, as plain data.
#[derive(Clone, Copy)]
struct Callback {
    function: unsafe extern "C" fn(*mut c_void, *const c_char),
    user_data: usize,
}

struct Instance {
    calling: Arc<TRTCCalling>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    deliveries: mpsc::Sender<Delivery>,
    callback: Arc<Mutex<Option<Callback>>>,
    next_request: AtomicU64,
    callback_thread: Mutex<Option<JoinHandle<()>>>,
    callback_thread_id: ThreadId,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every live instance, by handle.
fn registry() -> &'static Mutex<HashMap<OcHandle, Arc<Instance>>> {
    static REGISTRY: std::sync::OnceLock<Mutex<HashMap<OcHandle, Arc<Instance>>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
static SHARED: Mutex<Option<OcHandle>> = Mutex::new(None);

fn instance(handle: OcHandle) -> Result<Arc<Instance>, i32> {
    lock(registry())
        .get(&handle)
        .cloned()
        .ok_or(OC_ERR_INVALID_HANDLE)
}

/// Runs `body`, turning a panic into [`OC_ERR_PANIC`].
fn guarded(body: impl FnOnce() -> Result<(), i32>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => OC_OK,
        Ok(Err(code)) => code,
        Err(_) => OC_ERR_PANIC,
    }
}

/// A borrowed C string as UTF-8.
///
/// # Safety
/// `text` is null or a NUL-terminated string valid for the call.
unsafe fn text<'a>(text: *const c_char) -> Result<&'a str, i32> {
    if text.is_null() {
        return Err(OC_ERR_NULL_POINTER);
    }
    // SAFETY: non-null and NUL-terminated, as the caller promises.
    unsafe { CStr::from_ptr(text) }
        .to_str()
        .map_err(|_| OC_ERR_INVALID_ARGUMENT)
}

/// The options as JSON (docs/bindings.md): every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OptionsJson {
    server: Option<String>,
    server_name: Option<String>,
    fingerprint: Option<String>,
    ca_file: Option<PathBuf>,
    fallback: Option<String>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    voice_volume_interval_ms: Option<u64>,
    reconnect: Option<bool>,
    decoder_complexity: Option<u8>,
    low_latency: Option<bool>,
    device_id: Option<String>,
    input: Option<String>,
    output: Option<String>,
    echo_cancellation: Option<bool>,
    noise_suppression: Option<bool>,
    auto_gain: Option<bool>,
    media_key: Option<String>,
    media_keys: Option<std::collections::HashMap<String, String>>,
    media_identity: Option<std::path::PathBuf>,
}

fn options(json: &str) -> Result<ClientOptions, i32> {
    let parsed: OptionsJson = if json.trim().is_empty() {
        OptionsJson::default()
    } else {
        serde_json::from_str(json).map_err(|_| OC_ERR_INVALID_ARGUMENT)?
    };
    let mut options = ClientOptions::default();
    if let Some(server) = parsed.server {
        options.server = server;
    }
    if let Some(name) = parsed.server_name {
        options.server_name = name;
    }
    match (parsed.fingerprint, parsed.ca_file) {
        (Some(fingerprint), None) => {
            let fingerprint = fingerprint.parse().map_err(|_| OC_ERR_INVALID_ARGUMENT)?;
            options.trust = ServerTrust::Fingerprint(fingerprint);
        }
        (None, Some(file)) => options.trust = ServerTrust::CaFile(file),
        (None, None) => options.trust = ServerTrust::SystemRoots,
        (Some(_), Some(_)) => return Err(OC_ERR_INVALID_ARGUMENT),
    }
    if let Some(fallback) = parsed.fallback {
        options.fallback = fallback.parse().unwrap_or(Fallback::SameAddress);
    }
    let millis = Duration::from_millis;
    if let Some(ms) = parsed.connect_timeout_ms {
        options.connect_timeout = millis(ms);
    }
    if let Some(ms) = parsed.request_timeout_ms {
        options.request_timeout = millis(ms);
    }
    if let Some(ms) = parsed.voice_volume_interval_ms {
        options.voice_volume_interval = millis(ms);
    }
    if parsed.reconnect == Some(false) {
        options.reconnect = None;
    }
    match parsed.decoder_complexity {
        Some(complexity) if complexity <= 10 => options.decoder_complexity = complexity,
        Some(_) => return Err(OC_ERR_INVALID_ARGUMENT),
        None => {}
    }
    if let Some(low_latency) = parsed.low_latency {
        options.low_latency = low_latency;
    }
    if let Some(device_id) = parsed.device_id {
        options.device_id = Some(DeviceId::new(device_id).map_err(|_| OC_ERR_INVALID_ARGUMENT)?);
    }
    let device = |spec: Option<String>| spec.unwrap_or_else(|| "system".into());
    options.audio = AudioDevices {
        capture: device(parsed.input)
            .parse()
            .map_err(|_| OC_ERR_INVALID_ARGUMENT)?,
        playback: device(parsed.output)
            .parse()
            .map_err(|_| OC_ERR_INVALID_ARGUMENT)?,
    };
    // Each switch left out keeps the device's default.
    let mut voice = options.voice_processing_in_effect();
    voice.echo_cancellation = parsed.echo_cancellation.unwrap_or(voice.echo_cancellation);
    voice.noise_suppression = parsed.noise_suppression.unwrap_or(voice.noise_suppression);
    voice.auto_gain = parsed.auto_gain.unwrap_or(voice.auto_gain);
    options.voice_processing = Some(voice);
    options.media_encryption = MediaKeys::from_settings(
        parsed.media_key.as_deref(),
        parsed.media_keys.as_ref(),
        parsed.media_identity.as_deref(),
    )
    .map_err(|_| OC_ERR_INVALID_ARGUMENT)?;
    Ok(options)
}

/// The options of `options_json`, the defaults for null.
///
/// # Safety
/// `options_json` is null or a NUL-terminated string valid for the call.
unsafe fn options_or_defaults(options_json: *const c_char) -> Result<ClientOptions, i32> {
    if options_json.is_null() {
        return options("");
    }
    // SAFETY: as the caller promises.
    options(unsafe { text(options_json) }?)
}

/// Delivers to the callback, one at a time, until told to stop.
fn callback_loop(deliveries: &mpsc::Receiver<Delivery>, callback: &Mutex<Option<Callback>>) {
    while let Ok(Delivery::Json(json)) = deliveries.recv() {
        // Copied out: the callback may replace the callback, or destroy
        // the instance, without a lock held.
        let registered = *lock(callback);
        if let Some(Callback {
            function,
            user_data,
        }) = registered
        {
            // SAFETY: the application registered this function for this
            // signature; the JSON lives until the call returns.
            unsafe { function(user_data as *mut c_void, json.as_ptr()) };
        }
    }
}

fn deliver(deliveries: &mpsc::Sender<Delivery>, value: &serde_json::Value) {
    // JSON text never holds a NUL byte (serde_json escapes control
    // characters), so this never fails.
    if let Ok(json) = CString::new(value.to_string()) {
        let _ = deliveries.send(Delivery::Json(json));
    }
}

fn create(options: ClientOptions) -> Result<OcHandle, i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("opencalling-ffi")
        .enable_all()
        .build()
        .map_err(|_| OC_ERR_RESOURCES)?;
    let calling = TRTCCalling::new(options);
    let (deliveries, received) = mpsc::channel();
    let callback: Arc<Mutex<Option<Callback>>> = Arc::default();
    let thread_callback = Arc::clone(&callback);
    let callback_thread = std::thread::Builder::new()
        .name("opencalling-callback".into())
        .spawn(move || callback_loop(&received, &thread_callback))
        .map_err(|_| OC_ERR_RESOURCES)?;
    let mut events = calling.events();
    let forward = deliveries.clone();
    runtime.spawn(async move {
        while let Some(event) = events.recv().await {
            let value = json!({
                "type": "event",
                "callback": event.original_name(),
                "event": event,
            });
            deliver(&forward, &value);
        }
    });
    let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    let instance = Instance {
        calling,
        callback_thread_id: callback_thread.thread().id(),
        runtime: Mutex::new(Some(runtime)),
        deliveries,
        callback,
        next_request: AtomicU64::new(1),
        callback_thread: Mutex::new(Some(callback_thread)),
    };
    lock(registry()).insert(handle, Arc::new(instance));
    Ok(handle)
}

fn destroy(handle: OcHandle) -> Result<(), i32> {
    let instance = lock(registry())
        .remove(&handle)
        .ok_or(OC_ERR_INVALID_HANDLE)?;
    let runtime = lock(&instance.runtime).take();
    if let Some(runtime) = runtime {
        // Logs out (a call ends as a hang-up) within a bounded time.
        let calling = Arc::clone(&instance.calling);
        let _ = runtime
            .block_on(async move { tokio::time::timeout(SHUTDOWN_WAIT, calling.shutdown()).await });
        runtime.shutdown_timeout(Duration::from_millis(500));
    }
    let _ = instance.deliveries.send(Delivery::Stop);
    let thread = lock(&instance.callback_thread).take();
    // From inside the callback, the thread ends when the callback returns.
    if std::thread::current().id() != instance.callback_thread_id
        && let Some(thread) = thread
    {
        let _ = thread.join();
    }
    Ok(())
}

/// The name of a request, for its completion.
#[derive(Clone, Copy)]
enum Request {
    Login,
    Logout,
    Call,
    Accept,
    Reject,
    Hangup,
    CallStats,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Logout => "logout",
            Self::Call => "call",
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Hangup => "hangup",
            Self::CallStats => "call_stats",
        }
    }
}

/// What a completion carries beside its code.
#[derive(Default)]
struct Completed {
    /// `call`: the call's id.
    call_id: Option<CallId>,
    /// `call_stats`: the statistics (`CallStats::to_json`).
    stats: Option<serde_json::Value>,
    /// `login`: the device the login named.
    device_id: Option<DeviceId>,
}

impl Completed {
    fn call(call_id: Option<CallId>) -> Self {
        Self {
            call_id,
            ..Self::default()
        }
    }
}

/// Starts `request` on `handle`'s runtime; its id goes to `out_request`.
///
/// # Safety
/// `out_request` is null or points to writable memory for a `u64`.
unsafe fn start<F>(
    handle: OcHandle,
    out_request: *mut u64,
    request: Request,
    work: impl FnOnce(Arc<TRTCCalling>) -> F,
) -> Result<(), i32>
where
    F: Future<Output = CallingResult<Completed>> + Send + 'static,
{
    if out_request.is_null() {
        return Err(OC_ERR_NULL_POINTER);
    }
    let instance = instance(handle)?;
    let id = instance.next_request.fetch_add(1, Ordering::Relaxed);
    let future = work(Arc::clone(&instance.calling));
    let deliveries = instance.deliveries.clone();
    let runtime = lock(&instance.runtime);
    let runtime = runtime.as_ref().ok_or(OC_ERR_INVALID_HANDLE)?;
    runtime.spawn(async move {
        let (code, message, completed) = match future.await {
            Ok(completed) => (0, String::new(), completed),
            Err(error) => (error.code.0, error.desc, Completed::default()),
        };
        let mut value = json!({
            "type": "completion",
            "request_id": id,
            "request": request.name(),
            "code": code,
            "message": message,
        });
        if let Some(call_id) = completed.call_id {
            value["call_id"] = call_id.0.to_string().into();
        }
        if let Some(stats) = completed.stats {
            value["stats"] = stats;
        }
        if let Some(device_id) = completed.device_id {
            value["device_id"] = device_id.as_str().into();
        }
        deliver(&deliveries, &value);
    });
    // SAFETY: non-null, and writable as the caller promises.
    unsafe { out_request.write(id) };
    Ok(())
}

/// The requests without arguments.
#[derive(Clone, Copy)]
enum Plain {
    Logout,
    Accept,
    Reject,
    Hangup,
}

/// Starts a request without arguments, guarded.
///
/// # Safety
/// As [`start`].
unsafe fn plain_request(handle: OcHandle, out_request: *mut u64, plain: Plain) -> i32 {
    let request = match plain {
        Plain::Logout => Request::Logout,
        Plain::Accept => Request::Accept,
        Plain::Reject => Request::Reject,
        Plain::Hangup => Request::Hangup,
    };
    guarded(|| {
        let work = move |calling: Arc<TRTCCalling>| async move {
            match plain {
                Plain::Logout => calling.logout().await,
                Plain::Accept => calling.accept().await,
                Plain::Reject => calling.reject().await,
                Plain::Hangup => calling.hangup().await,
            }
            .map(|()| Completed::default())
        };
        // SAFETY: as the caller promises.
        unsafe { start(handle, out_request, request, work) }
    })
}

/// Creates an instance with `options_json` (docs/bindings.md; null or ""
/// for the defaults) and writes its handle to `out_handle`. Destroy it
/// with [`oc_calling_destroy`].
///
/// # Safety
/// `options_json` is null or a NUL-terminated string; `out_handle` points
/// to writable memory for an [`OcHandle`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_create(
    options_json: *const c_char,
    out_handle: *mut OcHandle,
) -> i32 {
    guarded(|| {
        if out_handle.is_null() {
            return Err(OC_ERR_NULL_POINTER);
        }
        // SAFETY: as the caller promises.
        let handle = create(unsafe { options_or_defaults(options_json) }?)?;
        // SAFETY: non-null and writable, as the caller promises.
        unsafe { out_handle.write(handle) };
        Ok(())
    })
}

/// The process-wide instance (the original's `sharedInstance`): made with
/// `options_json` on first use, the same handle afterwards (the options
/// of later calls are ignored; change them with
/// [`oc_calling_set_options`]).
///
/// # Safety
/// As [`oc_calling_create`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_shared_instance(
    options_json: *const c_char,
    out_handle: *mut OcHandle,
) -> i32 {
    guarded(|| {
        if out_handle.is_null() {
            return Err(OC_ERR_NULL_POINTER);
        }
        let mut shared = lock(&SHARED);
        let live = shared.filter(|handle| lock(registry()).contains_key(handle));
        let handle = match live {
            Some(handle) => handle,
            None => {
                // SAFETY: as the caller promises.
                create(unsafe { options_or_defaults(options_json) }?)?
            }
        };
        *shared = Some(handle);
        // SAFETY: non-null and writable, as the caller promises.
        unsafe { out_handle.write(handle) };
        Ok(())
    })
}

/// Destroys the process-wide instance, if there is one; the next
/// [`oc_calling_shared_instance`] makes a fresh one.
#[unsafe(no_mangle)]
pub extern "C" fn oc_calling_destroy_shared_instance() -> i32 {
    guarded(|| {
        let handle = lock(&SHARED).take();
        match handle {
            Some(handle) => destroy(handle).or(Ok(())),
            None => Ok(()),
        }
    })
}

/// Destroys an instance: logs out (a call in progress ends as a hang-up,
/// waiting at most 3 s for the server), stops its threads, forgets its
/// callback. The handle is invalid afterwards. Allowed from inside the
/// instance's own callback.
#[unsafe(no_mangle)]
pub extern "C" fn oc_calling_destroy(handle: OcHandle) -> i32 {
    guarded(|| destroy(handle))
}

/// Registers the callback that gets every event and completion of this
/// instance (replacing any earlier one; null: none). `user_data` is passed
/// back as it is.
#[unsafe(no_mangle)]
pub extern "C" fn oc_calling_set_callback(
    handle: OcHandle,
    callback: OcEventCallback,
    user_data: *mut c_void,
) -> i32 {
    guarded(|| {
        let instance = instance(handle)?;
        *lock(&instance.callback) = callback.map(|function| Callback {
            function,
            user_data: user_data as usize,
        });
        Ok(())
    })
}

/// Changes the options (JSON as for [`oc_calling_create`]); they take
/// effect at the next login.
///
/// # Safety
/// `options_json` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_set_options(
    handle: OcHandle,
    options_json: *const c_char,
) -> i32 {
    guarded(|| {
        // SAFETY: as the caller promises.
        let options = options(unsafe { text(options_json) }?)?;
        instance(handle)?.calling.set_options(options);
        Ok(())
    })
}

/// Logs in (`login(sdkAppId, userId, userSig)`); completion `"login"`, with
/// `"device_id"`: the device the login named (the options' `device_id`, or
/// the one the instance made).
///
/// # Safety
/// `user_id` and `user_sig` are NUL-terminated strings; `out_request`
/// points to writable memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_login(
    handle: OcHandle,
    sdk_app_id: u32,
    user_id: *const c_char,
    user_sig: *const c_char,
    out_request: *mut u64,
) -> i32 {
    guarded(|| {
        // SAFETY: as the caller promises.
        let user_id = unsafe { text(user_id) }?.to_owned();
        // SAFETY: as the caller promises.
        let user_sig = unsafe { text(user_sig) }?.to_owned();
        // SAFETY: as the caller promises.
        unsafe {
            start(
                handle,
                out_request,
                Request::Login,
                move |calling| async move {
                    calling
                        .login(sdk_app_id, &user_id, &user_sig)
                        .await
                        .map(|()| Completed {
                            device_id: Some(calling.device_id()),
                            ..Completed::default()
                        })
                },
            )
        }
    })
}

/// Logs out; completion `"logout"`.
///
/// # Safety
/// `out_request` points to writable memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_logout(handle: OcHandle, out_request: *mut u64) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { plain_request(handle, out_request, Plain::Logout) }
}

/// Invites `user_id` (`call(userId, type)`: `call_type` 1 audio, 2 video;
/// into the current call when in one); `timeout_ms` ≤ 0 for the server's
/// default. Completion `"call"`.
///
/// # Safety
/// `user_id` is a NUL-terminated string; `out_request` points to writable
/// memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_call(
    handle: OcHandle,
    user_id: *const c_char,
    call_type: i32,
    timeout_ms: i32,
    out_request: *mut u64,
) -> i32 {
    guarded(|| {
        // SAFETY: as the caller promises.
        let user_id = unsafe { text(user_id) }?.to_owned();
        let call_type = match call_type {
            1 => CallType::Audio,
            2 => CallType::Video,
            _ => return Err(OC_ERR_INVALID_ARGUMENT),
        };
        let options = CallOptions {
            timeout_ms: u32::try_from(timeout_ms).ok().filter(|ms| *ms > 0),
            user_data: None,
        };
        // SAFETY: as the caller promises.
        unsafe {
            start(
                handle,
                out_request,
                Request::Call,
                move |calling| async move {
                    calling
                        .call_with(&user_id, call_type, options)
                        .await
                        .map(|call_id| Completed::call(Some(call_id)))
                },
            )
        }
    })
}

/// Accepts the ringing invitation; completion `"accept"`.
///
/// # Safety
/// `out_request` points to writable memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_accept(handle: OcHandle, out_request: *mut u64) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { plain_request(handle, out_request, Plain::Accept) }
}

/// Rejects the ringing invitation; completion `"reject"`.
///
/// # Safety
/// `out_request` points to writable memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_reject(handle: OcHandle, out_request: *mut u64) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { plain_request(handle, out_request, Plain::Reject) }
}

/// Hangs up (cancels the invitations before anyone answered; leaves the
/// call otherwise); completion `"hangup"`.
///
/// # Safety
/// `out_request` points to writable memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_hangup(handle: OcHandle, out_request: *mut u64) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { plain_request(handle, out_request, Plain::Hangup) }
}

/// The call's statistics (the current call, or the last one); completion
/// `"call_stats"` with `"stats"`: the local user's and each other member's
/// network quality, round trip, loss, jitter, bitrate and transport
/// (docs/bindings.md).
///
/// # Safety
/// `out_request` points to writable memory for a `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oc_calling_call_stats(handle: OcHandle, out_request: *mut u64) -> i32 {
    guarded(|| {
        let work = |calling: Arc<TRTCCalling>| async move {
            let stats = calling.call_stats().await?;
            Ok(Completed {
                stats: Some(stats.to_json()),
                ..Completed::default()
            })
        };
        // SAFETY: as the caller promises.
        unsafe { start(handle, out_request, Request::CallStats, work) }
    })
}

/// Stops (`true`) or resumes sending the microphone (`setMicMute`).
#[unsafe(no_mangle)]
pub extern "C" fn oc_calling_set_mic_mute(handle: OcHandle, muted: bool) -> i32 {
    guarded(|| {
        instance(handle)?.calling.set_mic_mute(muted);
        Ok(())
    })
}

/// Hands-free (speakerphone) on or off (`setHandsFree`).
#[unsafe(no_mangle)]
pub extern "C" fn oc_calling_set_hands_free(handle: OcHandle, hands_free: bool) -> i32 {
    guarded(|| {
        instance(handle)?.calling.set_hands_free(hands_free);
        Ok(())
    })
}

/// The low-latency profile on or off: 10 ms audio frames instead of 20 ms,
/// for the current call (once every other member plays them) and later
/// ones (`TRTCCalling::set_low_latency`).
#[unsafe(no_mangle)]
pub extern "C" fn oc_calling_set_low_latency(handle: OcHandle, low_latency: bool) -> i32 {
    guarded(|| {
        instance(handle)?.calling.set_low_latency(low_latency);
        Ok(())
    })
}

/// A static, NUL-terminated description of a result code of this API (the
/// `OC_ERR_*` codes) or of a `calling_api` error code from a completion.
/// Never null; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn oc_result_description(code: i32) -> *const c_char {
    let text: &'static CStr = match code {
        OC_OK => c"success",
        OC_ERR_NULL_POINTER => c"a required pointer was null",
        OC_ERR_INVALID_HANDLE => c"no such instance (never created, or destroyed)",
        OC_ERR_INVALID_ARGUMENT => c"an argument is not UTF-8, not valid JSON, or out of range",
        OC_ERR_PANIC => c"internal error (a bug in the library was caught)",
        OC_ERR_RESOURCES => c"the library could not start its threads",
        _ => return calling_api_description(code),
    };
    text.as_ptr()
}

/// The text of a `calling_api` error code, kept for the process's life.
fn calling_api_description(code: i32) -> *const c_char {
    static TEXTS: Mutex<Vec<(i32, CString)>> = Mutex::new(Vec::new());
    let mut texts = lock(&TEXTS);
    if let Some((_, text)) = texts.iter().find(|(known, _)| *known == code) {
        return text.as_ptr();
    }
    let message = calling_api::ErrorCode(code).message();
    let text = CString::new(message).unwrap_or_else(|_| CString::from(c"unknown error"));
    let pointer = text.as_ptr();
    // Kept forever: the set of codes is small and fixed.
    texts.push((code, text));
    pointer
}

/// The library's version, static and NUL-terminated.
#[unsafe(no_mangle)]
pub extern "C" fn oc_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use calling_facade::VoiceProcessing;

    #[test]
    fn options_take_the_decoder_complexity_within_its_range() {
        let defaults = options("").unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(
            defaults.decoder_complexity,
            calling_facade::DEFAULT_DECODER_COMPLEXITY
        );
        let classic =
            options(r#"{"decoder_complexity": 0}"#).unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(classic.decoder_complexity, 0);
        assert_eq!(
            options(r#"{"decoder_complexity": 11}"#).err(),
            Some(OC_ERR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn voice_processing_follows_the_device_unless_switched() {
        let system = options("").unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(system.voice_processing, Some(VoiceProcessing::ALL));
        let file = options(r#"{"input": "wav:a.wav"}"#).unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(file.voice_processing, Some(VoiceProcessing::NONE));
        let switched = options(r#"{"echo_cancellation": false, "auto_gain": false}"#)
            .unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(
            switched.voice_processing,
            Some(VoiceProcessing {
                echo_cancellation: false,
                noise_suppression: true,
                auto_gain: false,
            })
        );
        assert_eq!(
            options(r#"{"echo_cancellation": 1}"#).err(),
            Some(OC_ERR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn end_to_end_encryption_takes_one_shared_key_each_users_or_an_identity() {
        let hex = "000102030405060708090a0b0c0d0e0f";
        let off = options("{}").unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(off.media_encryption, None);
        let shared = options(&format!(r#"{{"media_key": "{hex}"}}"#))
            .unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(
            shared.media_encryption,
            MediaKeys::from_settings(Some(hex), None, None).unwrap_or_default()
        );
        let per_user = options(&format!(r#"{{"media_keys": {{"bob": "{hex}"}}}}"#))
            .unwrap_or_else(|code| panic!("{code}"));
        let keys = per_user.media_encryption.expect("on");
        assert!(keys.key_of("bob").is_some() && keys.key_of("carol").is_none());
        let file = std::env::temp_dir().join(format!("oc-ffi-identity-{}", std::process::id()));
        let built_in = options(&format!(r#"{{"media_identity": {:?}}}"#, file.display()))
            .unwrap_or_else(|code| panic!("{code}"));
        assert!(matches!(
            built_in.media_encryption,
            Some(MediaKeys::BuiltIn(_))
        ));
        assert!(file.exists(), "the identity is made where asked");
        let _ = std::fs::remove_file(&file);
        for bad in [
            r#"{"media_key": "0011"}"#.to_owned(),
            format!(r#"{{"media_key": "{hex}", "media_keys": {{"bob": "{hex}"}}}}"#),
            r#"{"media_keys": {"bob": "xyz"}}"#.to_owned(),
            format!(r#"{{"media_key": "{hex}", "media_identity": "/tmp/x"}}"#),
        ] {
            assert_eq!(options(&bad).err(), Some(OC_ERR_INVALID_ARGUMENT), "{bad}");
        }
    }

    #[test]
    fn options_take_a_valid_device_id() {
        assert_eq!(
            options("{}")
                .unwrap_or_else(|code| panic!("{code}"))
                .device_id,
            None
        );
        let named = options(r#"{"device_id": "phone-1"}"#).unwrap_or_else(|code| panic!("{code}"));
        assert_eq!(named.device_id, DeviceId::new("phone-1").ok());
        assert_eq!(
            options(r#"{"device_id": "my phone"}"#).err(),
            Some(OC_ERR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn options_take_the_low_latency_profile() {
        let defaults = options("").unwrap_or_else(|code| panic!("{code}"));
        assert!(!defaults.low_latency);
        let low = options(r#"{"low_latency": true}"#).unwrap_or_else(|code| panic!("{code}"));
        assert!(low.low_latency);
        assert_eq!(
            options(r#"{"low_latency": "yes"}"#).err(),
            Some(OC_ERR_INVALID_ARGUMENT)
        );
    }
}
