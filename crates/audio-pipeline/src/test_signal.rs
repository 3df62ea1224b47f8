//! A voice-like test signal the unit tests share.

/// Sample `n` (48 kHz) of a voice-like signal: 12 harmonics of 140 Hz,
/// swelling 4 times a second.
pub(crate) fn voice_sample(n: usize) -> f32 {
    let t = n as f32 / 48_000.0;
    let swell = 0.6 + 0.4 * (std::f32::consts::TAU * 4.0 * t).sin();
    (1..=12)
        .map(|harmonic| {
            let harmonic = harmonic as f32;
            (std::f32::consts::TAU * 140.0 * harmonic * t).sin() / harmonic
        })
        .sum::<f32>()
        * 0.1
        * swell
}
