//! Time-scaling one decoded frame by one pitch period, the way NetEq's
//! accelerate and preemptive-expand do: find the period by autocorrelation,
//! then cross-fade one period out (shorter) or in (longer), so the delay
//! moves without a click or a pitch change.

/// Shortest and longest period searched: 2.5 ms (400 Hz) to 10 ms (100 Hz).
const MIN_LAG: usize = 120;
const MAX_LAG: usize = 480;

/// How alike two consecutive periods must be to splice them unheard.
const MIN_CORRELATION: f32 = 0.6;

/// The best period of `frame` and how alike consecutive periods are.
fn best_period(frame: &[f32]) -> Option<(usize, f32)> {
    let max_lag = MAX_LAG.min(frame.len() / 2);
    let mut best: Option<(usize, f32)> = None;
    for lag in MIN_LAG..=max_lag {
        let (mut cross, mut first, mut second) = (0.0_f32, 0.0_f32, 0.0_f32);
        for n in 0..lag {
            cross += frame[n] * frame[n + lag];
            first += frame[n] * frame[n];
            second += frame[n + lag] * frame[n + lag];
        }
        let correlation = if first * second > 1e-12 {
            cross / (first * second).sqrt()
        } else {
            0.0
        };
        if best.is_none_or(|(_, score)| correlation > score) {
            best = Some((lag, correlation));
        }
    }
    best
}

/// Whether a frame of `samples` is long enough to time-scale: two of the
/// longest periods must fit.
pub(crate) fn can_scale(samples: usize) -> bool {
    samples >= 2 * MAX_LAG
}

/// Nearly silent frames can be cut anywhere.
fn is_quiet(frame: &[f32]) -> bool {
    frame.iter().map(|s| s * s).sum::<f32>() / (frame.len().max(1) as f32) < 1e-6
}

fn period_for(frame: &[f32]) -> Option<usize> {
    if frame.len() < 2 * MIN_LAG {
        return None;
    }
    if is_quiet(frame) {
        return Some(MIN_LAG.max(frame.len() / 8));
    }
    // Two of the longest periods must fit: in a shorter frame (a 10 ms
    // packet) a low voice's period cannot be found, and a harmonic's
    // "period" spliced out of it was heard (PESQ 3.6 instead of 3.9).
    if !can_scale(frame.len()) {
        return None;
    }
    match best_period(frame) {
        Some((lag, correlation)) if correlation >= MIN_CORRELATION => Some(lag),
        _ => None,
    }
}

/// Appends `frame` shortened by one period to `out`; returns the samples
/// removed (0 if the frame has no clean period: then it is appended whole).
pub(crate) fn accelerate(frame: &[f32], out: &mut impl Extend<f32>) -> usize {
    let Some(period) = period_for(frame) else {
        out.extend(frame.iter().copied());
        return 0;
    };
    // Cross-fade the first period into the second, then carry on.
    out.extend((0..period).map(|n| {
        let fade_in = n as f32 / period as f32;
        frame[n] * (1.0 - fade_in) + frame[n + period] * fade_in
    }));
    out.extend(frame[2 * period..].iter().copied());
    period
}

/// Appends `frame` lengthened by one period to `out`; returns the samples
/// added (0 if the frame has no clean period).
pub(crate) fn expand(frame: &[f32], out: &mut impl Extend<f32>) -> usize {
    let Some(period) = period_for(frame) else {
        out.extend(frame.iter().copied());
        return 0;
    };
    out.extend(frame[..period].iter().copied());
    // The second period fades into a repeat of the first, which the rest
    // of the frame then continues from.
    out.extend((0..period).map(|n| {
        let fade_in = n as f32 / period as f32;
        frame[period + n] * (1.0 - fade_in) + frame[n] * fade_in
    }));
    out.extend(frame[period..].iter().copied());
    period
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32) -> Vec<f32> {
        (0..960)
            .map(|n| 0.5 * (std::f32::consts::TAU * hz * n as f32 / 48_000.0).sin())
            .collect()
    }

    #[test]
    fn a_periodic_frame_loses_or_gains_exactly_one_period_smoothly() {
        let frame = tone(200.0); // period 240 samples
        let mut shorter = Vec::new();
        let removed = accelerate(&frame, &mut shorter);
        assert_eq!(removed, 240);
        assert_eq!(shorter.len(), 720);
        let mut longer = Vec::new();
        assert_eq!(expand(&frame, &mut longer), 240);
        assert_eq!(longer.len(), 1_200);
        for signal in [&shorter, &longer] {
            let largest_step = signal
                .windows(2)
                .map(|pair| (pair[1] - pair[0]).abs())
                .fold(0.0, f32::max);
            assert!(largest_step < 0.05, "no click: largest step {largest_step}");
        }
    }

    #[test]
    fn a_ten_ms_frame_of_voice_is_left_alone() {
        // A 110 Hz voice (period 436 samples) with its harmonics: in 10 ms
        // two periods do not fit, and a shorter lag (120 samples) correlated
        // well enough to be taken for the period.
        let voice: Vec<f32> = (0..960)
            .map(|n| {
                let t = std::f32::consts::TAU * 110.0 * n as f32 / 48_000.0;
                (1..6).map(|h| 0.2 * (h as f32 * t).sin() / h as f32).sum()
            })
            .collect();
        let mut out = Vec::new();
        assert_eq!(accelerate(&voice[..480], &mut out), 0);
        assert_eq!(out, &voice[..480]);
        let mut out = Vec::new();
        assert_eq!(expand(&voice[..480], &mut out), 0);
        // Whole silence is still cut, whatever the length.
        let mut out = Vec::new();
        assert!(accelerate(&[0.0; 480], &mut out) > 0);
    }

    #[test]
    fn noise_is_left_alone_and_silence_is_cut_anywhere() {
        let mut state = 1_u32;
        let noise: Vec<f32> = (0..960)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        let mut out = Vec::new();
        assert_eq!(accelerate(&noise, &mut out), 0);
        assert_eq!(out, noise);
        let mut out = Vec::new();
        assert!(accelerate(&[0.0; 960], &mut out) > 0);
    }
}
