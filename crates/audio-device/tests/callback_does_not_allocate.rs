//! The real-time contract, checked: the callback halves of the rings never
//! allocate. A counting global allocator records allocations made on the
//! thread while it is marked as "inside the callback".

// A global allocator is an unsafe trait; this test wraps the system one.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use audio_device::realtime::{capture_ring, playback_ring};

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
fn ring_callbacks_never_allocate() {
    let (mut writer, mut playback) = playback_ring(4_800, 960);
    let (mut capture, mut reader) = capture_ring(4_800);
    let mut device_buffer = vec![0.0_f32; 480];
    let microphone = vec![0.1_f32; 480];
    let mut pipeline_buffer = vec![0.0_f32; 960];
    for round in 0..1_000 {
        // The pipeline writes 960 samples every third round while the
        // callback takes 480 a round, so the callback meets underruns too.
        if round % 3 == 0 {
            writer.write(&pipeline_buffer);
        }
        as_callback(|| {
            playback.fill(&mut device_buffer);
            capture.push(&microphone);
        });
        reader.read(&mut pipeline_buffer);
    }
    assert_eq!(IN_CALLBACK_ALLOCATIONS.load(Ordering::Relaxed), 0);
    // The check itself can fail: an allocation inside is seen.
    as_callback(|| drop(vec![1_u8; 16]));
    assert_eq!(IN_CALLBACK_ALLOCATIONS.swap(0, Ordering::Relaxed), 2);
    assert!(
        writer.counters().underrun_samples() > 0,
        "the scenario did exercise underruns"
    );
}
