//! The speech fixtures and how a recording is judged against what was
//! said: the same measure for the audio tests and the command line's.

use std::path::{Path, PathBuf};

use audio_device::{AudioSource, WavSource};
use audio_pipeline::{Resampler, analysis};

/// A speech fixture (`tests/fixtures/speech/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("speech")
        .join(name)
}

/// A 16 kHz WAV file's samples.
///
/// # Panics
/// If the file is missing or not 16 kHz: a test tool.
pub fn load_16k(path: &Path) -> Vec<f32> {
    let mut source = WavSource::open(path).expect("a readable WAV file");
    assert_eq!(source.format().sample_rate, 16_000, "{}", path.display());
    let mut samples = vec![0.0; source.samples().len()];
    source.read(&mut samples);
    samples
}

/// A recording (48 kHz mono) brought to 16 kHz.
///
/// # Panics
/// If the file is missing or unreadable: a test tool.
pub fn recording_16k(path: &Path) -> Vec<f32> {
    let mut source = WavSource::open(path).expect("a readable recording");
    let mut samples = vec![0.0; source.samples().len()];
    source.read(&mut samples);
    let mut down = Resampler::new(48_000, 1, 16_000, 1, 480).expect("a 48 to 16 kHz resampler");
    down.push(&samples);
    let mut out = vec![0.0; down.available_frames()];
    down.pop(&mut out);
    out
}

/// How well `heard` (a 48 kHz recording) matches `said` (a 16 kHz
/// fixture): the median correlation of 250 ms segments within ±50 ms of
/// the best overall delay, and that delay in ms.
pub fn match_speech(said: &Path, heard: &Path) -> (f64, f64) {
    let original = load_16k(said);
    let recording = recording_16k(heard);
    let (delay, _) = analysis::best_lag(&original, &recording, 32_000, 16_000);
    let correlation = analysis::segment_correlation(&original, &recording, delay, 4_000, 8, 800);
    (correlation, delay as f64 / 16.0)
}

/// How well `heard` (a 48 kHz recording) matches `said` (a 16 kHz
/// fixture) played in a loop from an unknown point, as a browser's fake
/// microphone plays its file from when the page opened it: from where the
/// speech starts in the recording (a microphone may open after the call
/// and its recording did), where it sits in the loop is found first, then
/// the median correlation of 250 ms segments, each within ±250 ms of
/// where it belongs; and where in the loop the recording's speech started,
/// in ms. The slack is wider than [`match_speech`]'s ±50 ms because a
/// browser on a busy machine shifts its timeline: every time its audio
/// thread or the page's main thread is late, silence is played (or a
/// frame captured late) and what follows moves on; what must hold is that
/// each quarter second of speech arrived intact.
pub fn match_looped_speech(said: &Path, heard: &Path) -> (f64, f64) {
    const SETTLE: usize = 4_000;
    const PROBE: usize = 32_000;
    let original = load_16k(said);
    let recording = recording_16k(heard);
    let Some(onset) = recording.iter().position(|sample| sample.abs() > 0.05) else {
        return (0.0, 0.0);
    };
    let speech = &recording[onset..];
    if speech.len() < SETTLE + PROBE || original.is_empty() {
        return (0.0, 0.0);
    }
    let looped: Vec<f32> = original
        .iter()
        .chain(&original)
        .chain(&original)
        .copied()
        .collect();
    let (mut at, _) = analysis::best_lag(
        &speech[SETTLE..SETTLE + PROBE],
        &looped,
        PROBE,
        2 * original.len(),
    );
    if at < SETTLE {
        at += original.len();
    }
    let reference = &looped[at - SETTLE..];
    let correlation = analysis::segment_correlation(reference, speech, 0, 4_000, 8, 4_000);
    (correlation, ((at - SETTLE) % original.len()) as f64 / 16.0)
}
