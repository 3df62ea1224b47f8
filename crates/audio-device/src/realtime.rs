//! The bridge between a device's real-time callback thread and the pipeline
//! thread: pre-allocated lock-free SPSC rings of `f32` samples.
//!
//! The callback halves ([`PlaybackCallback::fill`], [`CaptureCallback::push`])
//! only copy between the ring and the device buffer and bump atomics: no
//! allocation, no lock, no log, no blocking. A playback underrun plays
//! silence; a capture overrun drops the newest samples; both are counted in
//! [`XrunCounters`], which a normal thread reads and reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

/// Glitch counters shared between the callback and the rest.
#[derive(Debug, Default)]
pub struct XrunCounters {
    underrun_samples: AtomicU64,
    overrun_samples: AtomicU64,
    callbacks: AtomicU64,
}

impl XrunCounters {
    /// Samples of silence played because the ring was empty.
    pub fn underrun_samples(&self) -> u64 {
        self.underrun_samples.load(Ordering::Relaxed)
    }

    /// Samples dropped because the ring was full.
    pub fn overrun_samples(&self) -> u64 {
        self.overrun_samples.load(Ordering::Relaxed)
    }

    /// Callbacks served.
    pub fn callbacks(&self) -> u64 {
        self.callbacks.load(Ordering::Relaxed)
    }
}

/// A playback ring of `capacity` samples, with `prefill` samples of silence
/// already in it (the latency the callback may eat into before the
/// pipeline's first write).
pub fn playback_ring(capacity: usize, prefill: usize) -> (PlaybackWriter, PlaybackCallback) {
    let (mut producer, consumer) = HeapRb::<f32>::new(capacity.max(1)).split();
    for _ in 0..prefill.min(capacity) {
        let _ = producer.try_push(0.0);
    }
    let counters = Arc::new(XrunCounters::default());
    (
        PlaybackWriter {
            producer,
            counters: Arc::clone(&counters),
        },
        PlaybackCallback { consumer, counters },
    )
}

/// The pipeline's half of a playback ring.
pub struct PlaybackWriter {
    producer: HeapProd<f32>,
    counters: Arc<XrunCounters>,
}

impl PlaybackWriter {
    /// Queues samples for the device; returns how many fit. Those that do
    /// not fit are dropped and counted as overrun: a pipeline running ahead
    /// of the device must not build up latency.
    pub fn write(&mut self, samples: &[f32]) -> usize {
        let written = self.producer.push_slice(samples);
        let dropped = samples.len() - written;
        if dropped > 0 {
            self.counters
                .overrun_samples
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        written
    }

    /// Samples queued and not yet played.
    pub fn queued(&self) -> usize {
        self.producer.occupied_len()
    }

    /// The counters, to report.
    pub fn counters(&self) -> Arc<XrunCounters> {
        Arc::clone(&self.counters)
    }
}

/// The device callback's half of a playback ring.
pub struct PlaybackCallback {
    consumer: HeapCons<f32>,
    counters: Arc<XrunCounters>,
}

impl PlaybackCallback {
    /// Fills the device buffer: queued samples, then silence for whatever
    /// is missing. Real-time safe.
    pub fn fill(&mut self, out: &mut [f32]) {
        let read = self.consumer.pop_slice(out);
        if read < out.len() {
            out[read..].fill(0.0);
            self.counters
                .underrun_samples
                .fetch_add((out.len() - read) as u64, Ordering::Relaxed);
        }
        self.counters.callbacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// A capture ring of `capacity` samples.
pub fn capture_ring(capacity: usize) -> (CaptureCallback, CaptureReader) {
    let (producer, consumer) = HeapRb::<f32>::new(capacity.max(1)).split();
    let counters = Arc::new(XrunCounters::default());
    (
        CaptureCallback {
            producer,
            counters: Arc::clone(&counters),
        },
        CaptureReader { consumer, counters },
    )
}

/// The device callback's half of a capture ring.
pub struct CaptureCallback {
    producer: HeapProd<f32>,
    counters: Arc<XrunCounters>,
}

impl CaptureCallback {
    /// Hands captured samples to the pipeline; what does not fit is dropped
    /// and counted. Real-time safe.
    pub fn push(&mut self, input: &[f32]) {
        let written = self.producer.push_slice(input);
        if written < input.len() {
            self.counters
                .overrun_samples
                .fetch_add((input.len() - written) as u64, Ordering::Relaxed);
        }
        self.counters.callbacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pipeline's half of a capture ring.
pub struct CaptureReader {
    consumer: HeapCons<f32>,
    counters: Arc<XrunCounters>,
}

impl CaptureReader {
    /// Samples waiting.
    pub fn available(&self) -> usize {
        self.consumer.occupied_len()
    }

    /// Takes up to `out.len()` waiting samples; returns how many.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        self.consumer.pop_slice(out)
    }

    /// The counters, to report.
    pub fn counters(&self) -> Arc<XrunCounters> {
        Arc::clone(&self.counters)
    }
}

impl std::fmt::Debug for PlaybackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackWriter")
            .field("queued", &self.producer.occupied_len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl std::fmt::Debug for PlaybackCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackCallback")
            .field("queued", &self.consumer.occupied_len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl std::fmt::Debug for CaptureCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureCallback")
            .field("queued", &self.producer.occupied_len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl std::fmt::Debug for CaptureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureReader")
            .field("queued", &self.consumer.occupied_len())
            .field("counters", &self.counters)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playback_plays_prefill_then_data_then_silence() {
        let (mut writer, mut callback) = playback_ring(64, 4);
        assert_eq!(writer.write(&[0.5; 8]), 8);
        let mut out = [9.0; 16];
        callback.fill(&mut out);
        assert_eq!(&out[..4], &[0.0; 4], "prefilled silence first");
        assert_eq!(&out[4..12], &[0.5; 8]);
        assert_eq!(&out[12..], &[0.0; 4], "underrun plays silence");
        let counters = writer.counters();
        assert_eq!(counters.underrun_samples(), 4);
        assert_eq!(counters.callbacks(), 1);
    }

    #[test]
    fn a_full_ring_drops_and_counts() {
        let (mut writer, _callback) = playback_ring(8, 0);
        assert_eq!(writer.write(&[1.0; 12]), 8);
        assert_eq!(writer.counters().overrun_samples(), 4);
        let (mut callback, mut reader) = capture_ring(8);
        callback.push(&[0.25; 10]);
        assert_eq!(reader.available(), 8);
        let mut out = [0.0; 16];
        assert_eq!(reader.read(&mut out), 8);
        assert_eq!(reader.counters().overrun_samples(), 2);
    }

    #[test]
    fn the_halves_work_from_two_threads() {
        let (mut callback, mut reader) = capture_ring(1_024);
        let producer = std::thread::spawn(move || {
            for block in 0..100 {
                let samples = [block as f32; 10];
                // Spin until there is room: the test wants every sample.
                while reader_room(&callback) < 10 {
                    std::thread::yield_now();
                }
                callback.push(&samples);
            }
        });
        let mut received = Vec::new();
        let mut buffer = [0.0; 64];
        while received.len() < 1_000 {
            let read = reader.read(&mut buffer);
            received.extend_from_slice(&buffer[..read]);
        }
        producer.join().unwrap();
        for (index, sample) in received.iter().enumerate() {
            assert_eq!(*sample, (index / 10) as f32);
        }
    }

    fn reader_room(callback: &CaptureCallback) -> usize {
        callback.producer.vacant_len()
    }
}
