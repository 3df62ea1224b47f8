//! A mouth-to-ear latency probe: a source that clicks every 250 ms and
//! stamps each click with when its first sample would have left a
//! microphone, and a sink that stamps each click it is given with when it
//! would leave a speaker. Both stamp on the wall clock (a measurement
//! device, not a real-time one: each click takes a lock to be written down).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{AudioFormat, AudioSink, AudioSource};

/// Samples between two clicks at 48 kHz: 250 ms.
const CLICK_INTERVAL: u64 = 12_000;

/// Samples of one click: two periods of 1 kHz (2 ms), a burst Opus keeps
/// at any frame size and position (a 1 ms burst at 24 kHz came out under
/// the detector's threshold in half the 10 ms frames).
const CLICK_SAMPLES: u64 = 96;

/// Level a played sample must pass to count as a click.
const THRESHOLD: f32 = 0.25;

/// When each click was said or heard.
pub type Stamps = Arc<Mutex<Vec<Instant>>>;

/// Clicks every 250 ms (48 kHz mono): a device hands over a chunk when its
/// last sample is in, so sample `i` of a chunk read now was captured at
/// now − (len − i) / 48 kHz.
#[derive(Debug, Default)]
pub struct ClickProbe {
    position: u64,
    said: Stamps,
}

impl ClickProbe {
    /// A probe, and where it writes down when each click was said.
    pub fn new() -> (Self, Stamps) {
        let probe = Self::default();
        let said = Arc::clone(&probe.said);
        (probe, said)
    }
}

impl AudioSource for ClickProbe {
    fn format(&self) -> AudioFormat {
        AudioFormat::mono(48_000)
    }

    fn read(&mut self, out: &mut [f32]) -> usize {
        let now = Instant::now();
        let len = out.len();
        for (index, sample) in out.iter_mut().enumerate() {
            let phase = (self.position + index as u64) % CLICK_INTERVAL;
            if phase == 0 {
                let captured = now - Duration::from_secs_f64((len - index) as f64 / 48_000.0);
                self.said
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(captured);
            }
            *sample = if phase < CLICK_SAMPLES {
                0.8 * (std::f32::consts::TAU * phase as f32 / 48.0).sin()
            } else {
                0.0
            };
        }
        self.position += len as u64;
        len
    }
}

/// Finds the clicks in what is played (48 kHz mono): sample `i` of a write
/// made now leaves the speaker at now + i / 48 kHz. A click is a sample
/// over the threshold after at least 100 ms under it.
#[derive(Debug)]
pub struct ClickDetector {
    quiet_samples: u64,
    heard: Stamps,
}

impl ClickDetector {
    /// A detector, and where it writes down when each click was heard.
    pub fn new() -> (Self, Stamps) {
        let detector = Self {
            quiet_samples: u64::MAX / 2,
            heard: Stamps::default(),
        };
        let heard = Arc::clone(&detector.heard);
        (detector, heard)
    }
}

impl AudioSink for ClickDetector {
    fn format(&self) -> AudioFormat {
        AudioFormat::mono(48_000)
    }

    fn write(&mut self, samples: &[f32]) {
        let now = Instant::now();
        for (index, sample) in samples.iter().enumerate() {
            if sample.abs() <= THRESHOLD {
                self.quiet_samples += 1;
                continue;
            }
            if self.quiet_samples > 4_800 {
                self.heard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(now + Duration::from_secs_f64(index as f64 / 48_000.0));
            }
            self.quiet_samples = 0;
        }
    }
}

/// Each click heard, matched with the latest said before it: its
/// mouth-to-ear latency, in the order heard (matches over 240 ms, nearly a
/// click interval, are not clicks of this probe and are left out).
pub fn click_latencies(said: &[Instant], heard: &[Instant]) -> Vec<Duration> {
    heard
        .iter()
        .filter_map(|heard| {
            said.iter()
                .rev()
                .find(|said| *said < heard)
                .map(|said| *heard - *said)
        })
        .filter(|latency| *latency < Duration::from_millis(240))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_click_played_back_at_once_is_heard_with_the_chunk_delay() {
        let (mut probe, said) = ClickProbe::new();
        let (mut detector, heard) = ClickDetector::new();
        // 250 ms of audio, one click, read and played far faster than real
        // time (two clicks would be stamped closer than their latency).
        let mut chunk = [0.0; 480];
        let mut loud = 0;
        let started = Instant::now();
        for _ in 0..25 {
            probe.read(&mut chunk);
            loud += chunk.iter().filter(|sample| sample.abs() > 0.5).count();
            detector.write(&chunk);
        }
        assert!(loud > 40, "a loud 2 ms burst: {loud} samples over 0.5");
        let said = said.lock().unwrap().clone();
        let heard = heard.lock().unwrap().clone();
        assert_eq!((said.len(), heard.len()), (1, 1));
        // Captured a 10 ms chunk before it was read; played as written.
        // Both are stamped with the wall clock, so a busy machine that
        // stalls this thread between the read and the write adds its stall
        // (at most the loop's own time).
        let stalls = started.elapsed();
        for latency in click_latencies(&said, &heard) {
            assert!(
                (Duration::from_millis(10)..Duration::from_millis(15) + stalls).contains(&latency),
                "{latency:?} (the loop took {stalls:?})"
            );
        }
    }
}
