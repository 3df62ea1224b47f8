//! Comparing a recording with what was sent: for tests, benchmarks and the
//! demo's mouth-to-ear measurement. Not used on the audio path.

/// Normalised cross-correlation of the overlap of `a` and `b` (−1 to 1; 0
/// when either is silent).
pub fn ncc(a: &[f32], b: &[f32]) -> f64 {
    let (mut cross, mut energy_a, mut energy_b) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (x, y) in a.iter().zip(b) {
        cross += f64::from(*x) * f64::from(*y);
        energy_a += f64::from(*x) * f64::from(*x);
        energy_b += f64::from(*y) * f64::from(*y);
    }
    if energy_a * energy_b <= 0.0 {
        0.0
    } else {
        cross / (energy_a * energy_b).sqrt()
    }
}

/// The lag (in samples, up to `max_lag`) at which `recording` best matches
/// the start of `reference` (its first `window` samples), and the
/// correlation there. Searches every fourth lag on 4×-averaged signals, then
/// refines around the best one.
pub fn best_lag(
    reference: &[f32],
    recording: &[f32],
    window: usize,
    max_lag: usize,
) -> (usize, f64) {
    let window = window.min(reference.len());
    let reference = &reference[..window];
    let decimate = |signal: &[f32]| -> Vec<f32> {
        signal
            .chunks(4)
            .map(|chunk| chunk.iter().sum::<f32>() / 4.0)
            .collect()
    };
    let (coarse_reference, coarse_recording) = (decimate(reference), decimate(recording));
    let coarse_lags = coarse_recording
        .len()
        .saturating_sub(coarse_reference.len())
        .min(max_lag / 4 + 1);
    let coarse = (0..coarse_lags)
        .map(|lag| (lag, ncc(&coarse_reference, &coarse_recording[lag..])))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(lag, _)| lag * 4);
    (coarse.saturating_sub(8)..coarse + 8)
        .filter(|lag| lag + window <= recording.len())
        .map(|lag| (lag, ncc(reference, &recording[lag..])))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

/// Median correlation of `reference`'s first `segments` × `segment` samples
/// with `recording`, each segment matched on its own within `± slack` of
/// `delay`: robust to the small shifts a jitter buffer makes.
pub fn segment_correlation(
    reference: &[f32],
    recording: &[f32],
    delay: usize,
    segment: usize,
    segments: usize,
    slack: usize,
) -> f64 {
    let mut scores: Vec<f64> = reference
        .chunks_exact(segment.max(1))
        .take(segments)
        .enumerate()
        .map(|(index, piece)| {
            let start = delay + index * segment;
            (start.saturating_sub(slack)..start + slack)
                .filter(|lag| lag + piece.len() <= recording.len())
                .map(|lag| ncc(piece, &recording[lag..]))
                .fold(0.0, f64::max)
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    scores.get(scores.len() / 2).copied().unwrap_or(0.0)
}

/// Energy: the sum of the squares.
pub fn energy(samples: &[f32]) -> f64 {
    samples
        .iter()
        .map(|sample| f64::from(*sample).powi(2))
        .sum()
}

/// Echo return loss enhancement, dB: how much quieter `sent` is than
/// `heard` (what the microphone heard, what processing left of it).
pub fn erle_db(heard: &[f32], sent: &[f32]) -> f64 {
    10.0 * (energy(heard) / energy(sent).max(1e-12)).log10()
}

/// From sample `from` of a 48 kHz `heard` / `sent` pair, the seconds until
/// every later quarter second in which the echo is loud (a tenth of the
/// average quarter's energy or more) is cancelled by at least `erle_db`;
/// `None` when that does not hold for the last second.
pub fn seconds_until_cancelled(heard: &[f32], sent: &[f32], from: usize, erle: f64) -> Option<f64> {
    const RATE: usize = 48_000;
    let quarter = RATE / 4;
    let loud = energy(heard) / heard.len().max(1) as f64 * quarter as f64 * 0.1;
    let mut last_bad = None;
    for start in (from..heard.len().saturating_sub(quarter)).step_by(quarter) {
        let (h, s) = (
            &heard[start..start + quarter],
            &sent[start..start + quarter],
        );
        if energy(h) > loud && erle_db(h, s) < erle {
            last_bad = Some(start + quarter);
        }
    }
    let recovered = last_bad.unwrap_or(from);
    (recovered + RATE < heard.len()).then(|| (recovered - from) as f64 / RATE as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_known_delay() {
        let mut state = 7_u32;
        let noise: Vec<f32> = (0..20_000)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        let mut delayed = vec![0.0; 1_234];
        delayed.extend_from_slice(&noise);
        let (lag, correlation) = best_lag(&noise, &delayed, 8_000, 4_000);
        assert_eq!(lag, 1_234);
        assert!(correlation > 0.99);
        assert!(segment_correlation(&noise, &delayed, lag, 1_000, 8, 100) > 0.99);
        assert_eq!(ncc(&[0.0; 10], &noise[..10]), 0.0);
    }

    #[test]
    fn cancellation_is_timed_from_the_last_loud_uncancelled_quarter() {
        let heard = vec![0.5_f32; 48_000 * 4];
        // Cancelled by 6 dB for the first 1.5 s, by 40 dB after.
        let sent: Vec<f32> = heard
            .iter()
            .enumerate()
            .map(|(index, sample)| {
                if index < 72_000 {
                    sample * 0.5
                } else {
                    sample * 0.01
                }
            })
            .collect();
        assert!((erle_db(&heard, &heard) - 0.0).abs() < 1e-9);
        assert_eq!(seconds_until_cancelled(&heard, &sent, 0, 20.0), Some(1.5));
        assert_eq!(
            seconds_until_cancelled(&heard, &sent, 96_000, 20.0),
            Some(0.0)
        );
        assert_eq!(seconds_until_cancelled(&heard, &heard, 0, 20.0), None);
    }
}
