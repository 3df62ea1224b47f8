//! What the audio benchmarks share: fixtures read at 48 kHz, WAV files
//! written for scoring, alignment, and PESQ/STOI through Python.

#![allow(dead_code, reason = "each benchmark uses its share")]

use std::path::{Path, PathBuf};

use audio_device::{AudioFormat, AudioSink, AudioSource, WavSink, WavSource};
use audio_pipeline::Resampler;

/// A fixture as it is (16 kHz) and at 48 kHz.
pub(crate) fn load_48k(path: &Path) -> (Vec<f32>, Vec<f32>) {
    let mut source = WavSource::open(path).unwrap();
    let format = source.format();
    let mut original = vec![0.0; source.samples().len()];
    source.read(&mut original);
    let mut up = Resampler::new(format.sample_rate, format.channels, 48_000, 1, 160).unwrap();
    up.push(&original);
    // Flush the resampler's tail with silence.
    up.push(&vec![0.0; 1_600]);
    let mut at_48k = vec![0.0; up.available_frames()];
    up.pop(&mut at_48k);
    (original, at_48k)
}

/// The lag of `degraded` behind `reference` (0–500 ms at 16 kHz) that
/// best matches the first 3 s.
pub(crate) fn global_lag(reference: &[f32], degraded: &[f32]) -> usize {
    let window = reference.len().min(16_000 * 3);
    let score = |lag: usize| -> f64 {
        degraded
            .get(lag..lag + window)
            .map_or(f64::MIN, |candidate| {
                reference[..window]
                    .iter()
                    .zip(candidate)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
    };
    (0..8_000)
        .max_by(|a, b| score(*a).total_cmp(&score(*b)))
        .unwrap_or(0)
}

/// Writes 16 kHz mono samples.
pub(crate) fn write(path: &Path, samples: &[f32]) {
    let mut sink = WavSink::create(path, AudioFormat::mono(16_000)).unwrap();
    sink.write(samples);
    sink.finish().unwrap();
}

/// PESQ and STOI of each degraded file.
pub(crate) fn pesq(
    python: Option<&str>,
    reference: &Path,
    degraded: &[PathBuf],
) -> Vec<Option<[f64; 2]>> {
    let Some(python) = python else {
        return vec![None; degraded.len()];
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("pesq_score.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(reference)
        .args(degraded)
        .output()
        .unwrap();
    if !output.status.success() {
        println!("  pesq failed: {}", String::from_utf8_lossy(&output.stderr));
        return vec![None; degraded.len()];
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut scores = line.split_whitespace().map(|score| score.parse().ok());
            Some([scores.next()??, scores.next()??])
        })
        .collect()
}
