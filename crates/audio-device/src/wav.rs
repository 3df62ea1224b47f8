//! WAV files as devices: a file plays as a capture source, and what is heard
//! is recorded into a file (hound).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use crate::{AudioFormat, AudioSink, AudioSource};

/// A WAV file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WavError {
    path: String,
    #[source]
    source: hound::Error,
}

/// Plays a WAV file as a capture source: integer or float samples, any rate
/// and channel count, converted to `f32`.
#[derive(Debug)]
pub struct WavSource {
    format: AudioFormat,
    samples: Vec<f32>,
    position: usize,
    looping: bool,
}

impl WavSource {
    /// Reads the whole file (calls are short; this keeps `read` free of I/O).
    pub fn open(path: &Path) -> Result<Self, WavError> {
        let error = |source| WavError {
            path: path.display().to_string(),
            source,
        };
        let reader = hound::WavReader::open(path).map_err(error)?;
        let spec = reader.spec();
        let samples = read_samples(reader).map_err(error)?;
        Ok(Self {
            format: AudioFormat {
                sample_rate: spec.sample_rate,
                channels: spec.channels,
            },
            samples,
            position: 0,
            looping: false,
        })
    }

    /// Samples already in memory.
    pub fn from_samples(format: AudioFormat, samples: Vec<f32>) -> Self {
        Self {
            format,
            samples,
            position: 0,
            looping: false,
        }
    }

    /// Starts again from the beginning when the end is reached.
    pub fn looping(mut self, looping: bool) -> Self {
        self.looping = looping;
        self
    }

    /// Every sample of the file.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }
}

fn read_samples(reader: hound::WavReader<BufReader<File>>) -> Result<Vec<f32>, hound::Error> {
    let spec = reader.spec();
    match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1_i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|sample| sample.map(|value| value as f32 * scale))
                .collect()
        }
    }
}

impl AudioSource for WavSource {
    fn format(&self) -> AudioFormat {
        self.format
    }

    fn read(&mut self, out: &mut [f32]) -> usize {
        let mut written = 0;
        while written < out.len() {
            if self.position == self.samples.len() {
                if !self.looping || self.samples.is_empty() {
                    break;
                }
                self.position = 0;
            }
            let take = (out.len() - written).min(self.samples.len() - self.position);
            out[written..written + take]
                .copy_from_slice(&self.samples[self.position..self.position + take]);
            written += take;
            self.position += take;
        }
        written
    }
}

/// Records what it plays into a 16-bit PCM WAV file.
pub struct WavSink {
    format: AudioFormat,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    path: String,
    failed: bool,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("open", &self.writer.is_some())
            .finish()
    }
}

impl WavSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, format: AudioFormat) -> Result<Self, WavError> {
        let spec = hound::WavSpec {
            channels: format.channels,
            sample_rate: format.sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|source| WavError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            format,
            writer: Some(writer),
            path: path.display().to_string(),
            failed: false,
        })
    }

    /// Completes the file's header; also done on drop, without the error.
    pub fn finish(mut self) -> Result<(), WavError> {
        match self.writer.take() {
            Some(writer) => writer.finalize().map_err(|source| WavError {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

impl AudioSink for WavSink {
    fn format(&self) -> AudioFormat {
        self.format
    }

    fn write(&mut self, samples: &[f32]) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        for sample in samples {
            let value = (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
            if writer.write_sample(value).is_err() && !self.failed {
                // Reported once: a full disk must not flood the log.
                tracing::warn!(path = %self.path, "writing the WAV file failed; recording stops");
                self.failed = true;
                self.writer = None;
                return;
            }
        }
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.finalize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Signal, SyntheticSource};

    #[test]
    fn a_recording_plays_back_the_same() {
        let path = std::env::temp_dir().join(format!("opencalling-wav-{}.wav", std::process::id()));
        let format = AudioFormat {
            sample_rate: 16_000,
            channels: 2,
        };
        let mut tone = SyntheticSource::new(
            format,
            Signal::Tone {
                frequency: 440.0,
                amplitude: 0.5,
            },
        );
        let mut original = vec![0.0; 3_200];
        tone.read(&mut original);
        let mut sink = WavSink::create(&path, format).unwrap();
        sink.write(&original);
        sink.finish().unwrap();

        let mut source = WavSource::open(&path).unwrap();
        assert_eq!(source.format(), format);
        let mut played = vec![0.0; 4_000];
        assert_eq!(
            source.read(&mut played),
            3_200,
            "the file ends where the recording did"
        );
        for (a, b) in original.iter().zip(&played) {
            assert!((a - b).abs() < 1.0 / 16_000.0, "16-bit quantisation only");
        }
        let mut looped = WavSource::open(&path).unwrap().looping(true);
        assert_eq!(looped.read(&mut played), 4_000);
        assert_eq!(played[3_200], played[0]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let error = WavSource::open(Path::new("/nonexistent/x.wav")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/x.wav"));
    }
}
