//! A playback sink that notes when it plays something audible: how the
//! tests and the network benchmark tell when speech is heard again after
//! an outage.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use audio_device::{AudioFormat, AudioSink};

/// When audible blocks were played.
#[derive(Debug, Default)]
pub struct HeardClock {
    loud: Mutex<Vec<Instant>>,
}

impl HeardClock {
    fn loud(&self) -> std::sync::MutexGuard<'_, Vec<Instant>> {
        self.loud.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether nothing audible played between `from` and `to`.
    pub fn silent_between(&self, from: Instant, to: Instant) -> bool {
        !self.loud().iter().any(|at| *at >= from && *at < to)
    }

    /// The longest stretch of `from..to` in which nothing audible played.
    pub fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        crate::proxy::longest_gap(&self.loud(), from, to)
    }

    /// The first audible block played at or after `since`.
    pub fn first_heard_after(&self, since: Instant) -> Option<Instant> {
        self.loud().iter().copied().find(|at| *at >= since)
    }

    /// Waits until something audible plays at or after `since`, for at
    /// most `limit` after it: how long after `since` it played (the sink's
    /// own time stamp, so the polling does not blur it), or `None`.
    pub async fn heard_within(&self, since: Instant, limit: Duration) -> Option<Duration> {
        let deadline = since + limit;
        loop {
            if let Some(at) = self.first_heard_after(since) {
                return Some(at - since);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The sink to give the SDK (48 kHz mono): a block whose RMS is above
/// 0.05 counts as audible.
#[derive(Debug)]
pub struct ClockSink(pub Arc<HeardClock>);

impl AudioSink for ClockSink {
    fn format(&self) -> AudioFormat {
        AudioFormat::mono(48_000)
    }

    fn write(&mut self, samples: &[f32]) {
        let power = samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32;
        if power.sqrt() > 0.05 {
            self.0.loud().push(Instant::now());
        }
    }
}
