//! Mixing remote speakers into one frame, with soft clipping and a level per
//! speaker.

use crate::level;

/// Mixes remote speakers' frames into one, with soft clipping, and reports
/// each speaker's level and the total.
#[derive(Debug, Default)]
pub struct Mixer {
    levels: Vec<u8>,
}

/// Where soft clipping starts bending the curve.
const KNEE: f32 = 0.8;

fn soft_clip(sample: f32) -> f32 {
    let magnitude = sample.abs();
    if magnitude <= KNEE {
        sample
    } else {
        // Above the knee, approach 1.0 smoothly instead of clipping hard.
        let excess = (magnitude - KNEE) / (1.0 - KNEE);
        sample.signum() * (KNEE + (1.0 - KNEE) * excess.tanh())
    }
}

impl Mixer {
    /// A mixer; `speakers` sizes its level table once.
    pub fn new(speakers: usize) -> Self {
        Self {
            levels: Vec::with_capacity(speakers),
        }
    }

    /// Sums `inputs` into `out` with soft clipping; returns the total level
    /// (0–100). Per-speaker levels are in [`Mixer::levels`] afterwards, in
    /// input order. Inputs longer than `out` count as far as `out` goes.
    pub fn mix<'a>(&mut self, inputs: impl IntoIterator<Item = &'a [f32]>, out: &mut [f32]) -> u8 {
        out.fill(0.0);
        self.levels.clear();
        for input in inputs {
            let input = &input[..input.len().min(out.len())];
            self.levels.push(level::volume(input));
            for (mixed, sample) in out.iter_mut().zip(input.iter()) {
                *mixed += sample;
            }
        }
        for sample in out.iter_mut() {
            *sample = soft_clip(*sample);
        }
        level::volume(&out[..])
    }

    /// Each input's level (0–100) in the last mix.
    pub fn levels(&self) -> &[u8] {
        &self.levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FRAME_SAMPLES;

    #[test]
    fn mixes_and_never_exceeds_full_scale() {
        let loud = [0.7; FRAME_SAMPLES];
        let quiet = [0.01; FRAME_SAMPLES];
        let mut mixer = Mixer::new(2);
        let mut out = [0.0; FRAME_SAMPLES];
        let total = mixer.mix([&loud[..], &loud[..]], &mut out);
        assert!(
            out.iter().all(|s| s.abs() < 1.0 && *s > 0.8),
            "soft-clipped, not hard"
        );
        assert!(total > 95);
        mixer.mix([&quiet[..], &loud[..]], &mut out);
        assert!(
            (out[0] - 0.71).abs() < 1e-6,
            "below the knee the sum is exact"
        );
        assert_eq!(mixer.levels().len(), 2);
        assert!(mixer.levels()[0] < mixer.levels()[1]);
        assert_eq!(soft_clip(-2.0), -soft_clip(2.0));
    }
}
