//! Real microphones and speakers through cpal (feature `cpal`).
//!
//! A device's callback runs on cpal's real-time thread and only touches the
//! callback half of a [`realtime`](crate::realtime) ring: f32 devices copy
//! straight through; i16 devices convert through a scratch buffer allocated
//! before the stream starts. Nothing in a callback allocates, locks, logs or
//! blocks; stream errors are counted in an atomic, not logged from there.
//!
//! Hands-free: phones route between the loudspeaker and the earpiece; a
//! desktop has output devices instead. [`OutputRoutes`] names the device for
//! each route; on a machine with one output both routes use it (the
//! default), and switching changes nothing audible, as documented.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use crate::AudioFormat;
use crate::realtime::{CaptureReader, PlaybackWriter, XrunCounters, capture_ring, playback_ring};

/// Why a device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No device of that name, or no default device at all.
    #[error("no audio {direction} device{}", name.as_ref().map(|name| format!(" named {name:?}")).unwrap_or_default())]
    NotFound {
        /// "input" or "output".
        direction: &'static str,
        /// The name asked for.
        name: Option<String>,
    },
    /// The device offers no sample format we can use (f32 or i16).
    #[error("device {0:?} offers neither f32 nor i16 samples")]
    Unsupported(String),
    /// cpal failed.
    #[error("audio backend: {0}")]
    Backend(String),
}

fn backend(error: impl std::fmt::Display) -> DeviceError {
    DeviceError::Backend(error.to_string())
}

/// A device the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its name, for selecting it.
    pub name: String,
    /// Whether it captures.
    pub input: bool,
    /// Whether it plays.
    pub output: bool,
}

/// Every device of the default host.
pub fn list_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    let host = cpal::default_host();
    let mut devices = Vec::new();
    for device in host.devices().map_err(backend)? {
        let Ok(description) = device.description() else {
            continue;
        };
        devices.push(DeviceInfo {
            name: description.name().to_owned(),
            input: device.supports_input(),
            output: device.supports_output(),
        });
    }
    Ok(devices)
}

fn find(input: bool, name: Option<&str>) -> Result<cpal::Device, DeviceError> {
    let host = cpal::default_host();
    let not_found = || DeviceError::NotFound {
        direction: if input { "input" } else { "output" },
        name: name.map(str::to_owned),
    };
    match name {
        None => if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        }
        .ok_or_else(not_found),
        Some(wanted) => host
            .devices()
            .map_err(backend)?
            .find(|device| {
                (if input {
                    device.supports_input()
                } else {
                    device.supports_output()
                }) && device
                    .description()
                    .is_ok_and(|description| description.name() == wanted)
            })
            .ok_or_else(not_found),
    }
}

/// The output device for each route; `None` is the system default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputRoutes {
    /// Hands-free: the loudspeaker.
    pub hands_free: Option<String>,
    /// Not hands-free: the earpiece or headset.
    pub private: Option<String>,
}

impl OutputRoutes {
    /// The device name for a route.
    pub fn device_for(&self, hands_free: bool) -> Option<&str> {
        if hands_free {
            self.hands_free.as_deref()
        } else {
            self.private.as_deref()
        }
    }
}

/// Largest device buffer a callback converts at once (i16 devices).
const SCRATCH: usize = 16_384;

fn format_of(config: &cpal::StreamConfig) -> AudioFormat {
    AudioFormat {
        sample_rate: config.sample_rate,
        channels: config.channels,
    }
}

/// A counter of stream errors and the error callback that bumps it: the
/// callback runs on cpal's thread, so it only touches an atomic.
fn error_counter() -> (Arc<AtomicU64>, impl FnMut(cpal::Error) + Send + 'static) {
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&errors);
    (errors, move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    })
}

/// A live microphone: its stream and the ring it fills.
pub struct Microphone {
    _stream: cpal::Stream,
    format: AudioFormat,
    reader: CaptureReader,
    stream_errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for Microphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microphone")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Microphone {
    /// Opens the named input device (or the default) at its default rate.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let device = find(true, name)?;
        let supported = device.default_input_config().map_err(backend)?;
        let config = supported.config();
        let format = format_of(&config);
        // A second of audio: room for the pipeline thread to be late.
        let (mut callback, reader) = capture_ring(format.samples_in_ms(1_000));
        let (stream_errors, on_error) = error_counter();
        let stream = match supported.sample_format() {
            cpal::SampleFormat::F32 => device
                .build_input_stream::<f32, _, _>(
                    config,
                    move |data, _| callback.push(data),
                    on_error,
                    None,
                )
                .map_err(backend)?,
            cpal::SampleFormat::I16 => {
                let mut scratch = vec![0.0_f32; SCRATCH];
                device
                    .build_input_stream::<i16, _, _>(
                        config,
                        move |data: &[i16], _| {
                            for chunk in data.chunks(SCRATCH) {
                                for (out, sample) in scratch.iter_mut().zip(chunk) {
                                    *out = f32::from(*sample) / 32_768.0;
                                }
                                callback.push(&scratch[..chunk.len()]);
                            }
                        },
                        on_error,
                        None,
                    )
                    .map_err(backend)?
            }
            _ => {
                return Err(DeviceError::Unsupported(
                    name.unwrap_or("default").to_owned(),
                ));
            }
        };
        stream.play().map_err(backend)?;
        Ok(Self {
            _stream: stream,
            format,
            reader,
            stream_errors,
        })
    }

    /// The capture format (device rate and channels).
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Captured samples waiting for the pipeline.
    pub fn reader(&mut self) -> &mut CaptureReader {
        &mut self.reader
    }

    /// Overruns and callbacks so far.
    pub fn counters(&self) -> Arc<XrunCounters> {
        self.reader.counters()
    }

    /// Errors the backend reported on the stream.
    pub fn stream_errors(&self) -> u64 {
        self.stream_errors.load(Ordering::Relaxed)
    }
}

/// A live speaker: its stream and the ring it plays from.
pub struct Speaker {
    _stream: cpal::Stream,
    format: AudioFormat,
    writer: PlaybackWriter,
    stream_errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Speaker {
    /// Opens the named output device (or the default) at its default rate.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let device = find(false, name)?;
        let supported = device.default_output_config().map_err(backend)?;
        let config = supported.config();
        let format = format_of(&config);
        // 200 ms of room, 40 ms of silence first so the first callbacks do
        // not underrun while the pipeline starts.
        let (writer, mut callback) =
            playback_ring(format.samples_in_ms(200), format.samples_in_ms(40));
        let (stream_errors, on_error) = error_counter();
        let stream = match supported.sample_format() {
            cpal::SampleFormat::F32 => device
                .build_output_stream::<f32, _, _>(
                    config,
                    move |data, _| callback.fill(data),
                    on_error,
                    None,
                )
                .map_err(backend)?,
            cpal::SampleFormat::I16 => {
                let mut scratch = vec![0.0_f32; SCRATCH];
                device
                    .build_output_stream::<i16, _, _>(
                        config,
                        move |data: &mut [i16], _| {
                            for chunk in data.chunks_mut(SCRATCH) {
                                let scratch = &mut scratch[..chunk.len()];
                                callback.fill(scratch);
                                for (out, sample) in chunk.iter_mut().zip(scratch.iter()) {
                                    *out = (sample.clamp(-1.0, 1.0) * 32_767.0) as i16;
                                }
                            }
                        },
                        on_error,
                        None,
                    )
                    .map_err(backend)?
            }
            _ => {
                return Err(DeviceError::Unsupported(
                    name.unwrap_or("default").to_owned(),
                ));
            }
        };
        stream.play().map_err(backend)?;
        Ok(Self {
            _stream: stream,
            format,
            writer,
            stream_errors,
        })
    }

    /// The playback format.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Where the pipeline writes what is to be played.
    pub fn writer(&mut self) -> &mut PlaybackWriter {
        &mut self.writer
    }

    /// Underruns and callbacks so far.
    pub fn counters(&self) -> Arc<XrunCounters> {
        self.writer.counters()
    }

    /// Errors the backend reported on the stream.
    pub fn stream_errors(&self) -> u64 {
        self.stream_errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pick_a_device_per_mode() {
        let routes = OutputRoutes {
            hands_free: Some("Speaker".into()),
            private: None,
        };
        assert_eq!(routes.device_for(true), Some("Speaker"));
        assert_eq!(routes.device_for(false), None, "the default device");
    }

    /// One real stream on ALSA's "null" device, when the machine has ALSA's
    /// configuration; otherwise it says why it did not run.
    #[test]
    fn a_real_stream_plays_on_the_null_device_if_there_is_one() {
        let devices = match list_devices() {
            Ok(devices) => devices,
            Err(error) => {
                println!("SKIPPED: no audio host here ({error})");
                return;
            }
        };
        // ALSA describes its "null" PCM as "Discard all samples …".
        let is_null = |name: &str| {
            let name = name.to_lowercase();
            name.contains("null") || name.contains("discard all samples")
        };
        let Some(null) = devices
            .iter()
            .find(|device| device.output && is_null(&device.name))
        else {
            println!("SKIPPED: no ALSA null output device among {devices:?}");
            return;
        };
        let mut speaker = Speaker::open(Some(&null.name)).unwrap();
        let tone = vec![0.1_f32; speaker.format().samples_in_ms(20)];
        for _ in 0..10 {
            speaker.writer().write(&tone);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(speaker.counters().callbacks() > 0, "the device called back");
    }
}
