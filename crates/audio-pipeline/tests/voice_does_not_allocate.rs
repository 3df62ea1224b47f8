//! The real-time contract, checked for voice processing: what the playout
//! thread does for the echo canceller (hand over what it plays) never
//! allocates, nor does the canceller's analysis of it. A counting global
//! allocator records allocations made on the thread while it is marked as
//! "inside the callback". (The capture side's processing runs on the
//! capture thread, never in a device callback; `sonora` allocates there,
//! which `bench_voice` counts and docs/benchmarks.md reports.)

// A global allocator is an unsafe trait; this test wraps the system one.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use audio_pipeline::voice::BLOCK_SAMPLES;
use audio_pipeline::{VoiceProcessing, VoiceProcessor, echo_reference};

struct Counting;

static IN_CALLBACK_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if IN_CALLBACK.with(Cell::get) {
            IN_CALLBACK_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if IN_CALLBACK.with(Cell::get) {
            IN_CALLBACK_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if IN_CALLBACK.with(Cell::get) {
            IN_CALLBACK_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn as_callback(work: impl FnOnce()) {
    IN_CALLBACK.with(|flag| flag.set(true));
    work();
    IN_CALLBACK.with(|flag| flag.set(false));
}

#[test]
fn the_echo_reference_never_allocates() {
    let (mut played, reference) = echo_reference(200);
    let mut processor = VoiceProcessor::new(VoiceProcessing::ALL).with_reference(reference);
    let mut capture = [0.0_f32; BLOCK_SAMPLES];
    let mut far = [0.0_f32; BLOCK_SAMPLES];
    // Five seconds of a far end and its echo with a near-end tone on top,
    // so that the canceller has work to do.
    for block in 0..500_u32 {
        for (index, (far_sample, near_sample)) in far.iter_mut().zip(capture.iter_mut()).enumerate()
        {
            let t = (block as usize * BLOCK_SAMPLES + index) as f32 / 48_000.0;
            *far_sample = 0.3 * (std::f32::consts::TAU * 310.0 * t).sin() * (t * 3.0).sin().abs();
            *near_sample = 0.2 * *far_sample + 0.05 * (std::f32::consts::TAU * 520.0 * t).sin();
        }
        if block >= 50 {
            as_callback(|| {
                // Now and then the speaker underran: its silence first.
                if block % 100 == 0 {
                    played.write_silence(BLOCK_SAMPLES * 3);
                }
                played.write(&far);
                processor.analyze_render(&far);
            });
        } else {
            played.write(&far);
        }
        // The capture side, outside the marked section.
        processor.process_capture(&mut capture);
    }
    assert_eq!(IN_CALLBACK_ALLOCATIONS.load(Ordering::Relaxed), 0);
}
