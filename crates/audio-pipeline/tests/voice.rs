//! Voice processing against a simulated room: the echo canceller removes
//! what the speaker plays from what the microphone hears, and nothing on
//! its audio path allocates.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use audio_device::room::{RoomConfig, RoomControl, room};
use audio_device::{AudioSink, AudioSource, WavSource};
use audio_pipeline::analysis::{erle_db, seconds_until_cancelled};
use audio_pipeline::voice::BLOCK_SAMPLES;
use audio_pipeline::{Resampler, VoiceProcessing, VoiceProcessor, echo_reference};

/// A speech fixture at 48 kHz mono.
fn speech(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/speech")
        .join(name);
    let source = WavSource::open(&path).unwrap();
    let format = source.format();
    let mut resampler =
        Resampler::new(format.sample_rate, format.channels, 48_000, 1, 160).unwrap();
    resampler.push(source.samples());
    let mut out = Vec::new();
    let mut block = [0.0; BLOCK_SAMPLES];
    while resampler.pop(&mut block) {
        out.extend_from_slice(&block);
    }
    out
}

const ECHO_ONLY: VoiceProcessing = VoiceProcessing {
    echo_cancellation: true,
    noise_suppression: false,
    auto_gain: false,
};

/// Plays `far` in the room and returns (what the microphone heard, what
/// processing left of it), block by block as the SDK's threads do;
/// `at_block` runs before each block (to move the room's delay).
fn through_room(
    far: &[f32],
    config: RoomConfig,
    settings: VoiceProcessing,
    at_block: impl FnMut(usize, &RoomControl, &mut VoiceProcessor),
) -> (Vec<f32>, Vec<f32>, VoiceProcessor) {
    through_room_reporting(far, config, settings, true, at_block)
}

/// [`through_room`]; with `underruns_reported`, the silence the speaker
/// played on its own goes into the reference before what is played next,
/// as the SDK's playout thread puts it.
fn through_room_reporting(
    far: &[f32],
    config: RoomConfig,
    settings: VoiceProcessing,
    underruns_reported: bool,
    mut at_block: impl FnMut(usize, &RoomControl, &mut VoiceProcessor),
) -> (Vec<f32>, Vec<f32>, VoiceProcessor) {
    let (mut speaker, mut microphone, control) = room(config, None, None);
    let (mut played, reference) = echo_reference(500);
    let mut processor = VoiceProcessor::new(settings).with_reference(reference);
    let (mut heard, mut sent) = (Vec::new(), Vec::new());
    let mut block = [0.0; BLOCK_SAMPLES];
    let mut underruns_seen = 0;
    for (index, far_block) in far.chunks_exact(BLOCK_SAMPLES).enumerate() {
        at_block(index, &control, &mut processor);
        let underruns = speaker.underrun_frames();
        if underruns_reported && underruns > underruns_seen {
            played.write_silence(usize::try_from(underruns - underruns_seen).unwrap());
        }
        underruns_seen = underruns;
        played.write(far_block);
        speaker.write(far_block);
        microphone.read(&mut block);
        heard.extend_from_slice(&block);
        processor.process_capture(&mut block);
        sent.extend_from_slice(&block);
    }
    (heard, sent, processor)
}

#[test]
fn the_canceller_removes_a_rooms_echo_and_reports_its_delay() {
    let far = speech("speech-a-16k.wav");
    let config = RoomConfig {
        rt60_seconds: 0.4,
        delay_ms: 80,
        ..RoomConfig::default()
    };
    let (heard, sent, processor) = through_room(&far, config, ECHO_ONLY, |_, _, _| {});
    let after = 2 * 48_000;
    let erle = erle_db(&heard[after..], &sent[after..]);
    assert!(erle > 25.0, "ERLE {erle:.1} dB");
    let stats = processor.stats();
    let delay = stats.echo_delay_ms.unwrap();
    assert!(
        (60..=100).contains(&delay),
        "echo delay {delay} ms, the room's 80"
    );
    let erl = stats.echo_return_loss_db.unwrap();
    assert!((6.0..30.0).contains(&erl), "echo return loss {erl} dB");
}

/// Far-end speech, `seconds` long: the four fixtures one after another.
fn long_far_end(seconds: usize) -> Vec<f32> {
    let mut far = Vec::new();
    for name in [
        "speech-a-16k.wav",
        "speech-b-16k.wav",
        "speech-c-de-16k.wav",
        "speech-d-ko-16k.wav",
    ]
    .iter()
    .cycle()
    {
        if far.len() >= seconds * 48_000 {
            break;
        }
        far.extend(speech(name));
    }
    far.truncate(seconds * 48_000);
    far
}

/// A jump the SDK knows of (it switched the output device) starts the
/// canceller afresh. One it does not know of (the system's own latency
/// moving) costs AEC3 about 2.5 s to find by itself: `bench_voice`
/// measures it, docs/benchmarks.md reports it as a missed target.
#[test]
fn a_jump_in_the_echo_delay_the_sdk_knows_of_is_cancelled_within_a_second() {
    let far = long_far_end(16);
    for jump_ms in [50, 150, -50] {
        let config = RoomConfig {
            delay_ms: 100,
            ..RoomConfig::default()
        };
        let jump_block = 800;
        let (heard, sent, _) =
            through_room(&far, config, ECHO_ONLY, |block, control, processor| {
                if block == jump_block {
                    control.jump_delay(jump_ms);
                    processor.echo_path_changed();
                }
            });
        let recovery = seconds_until_cancelled(&heard, &sent, jump_block * BLOCK_SAMPLES, 20.0);
        println!("{jump_ms:+} ms: {recovery:?} s");
        assert!(
            recovery.is_some_and(|seconds| seconds <= 1.0),
            "after a {jump_ms} ms jump: ERLE back over 20 dB after {recovery:?} s"
        );
    }
}

/// The speaker's device underruns mid-call: silence, then everything
/// plays (and echoes) that much later. The device counts it, the SDK
/// writes as much silence into the reference, and the canceller keeps
/// the echo from the first block after; unreported, the same move is one
/// AEC3 has to find by itself (about 2.5 s).
#[test]
fn a_speaker_underrun_the_device_reports_keeps_the_echo_cancelled() {
    let far = long_far_end(12);
    for dropout_ms in [100, 150] {
        let config = RoomConfig {
            delay_ms: 60,
            ..RoomConfig::default()
        };
        let dropout_block = 600;
        let recovery = |reported: bool| {
            let (heard, sent, _) =
                through_room_reporting(&far, config, ECHO_ONLY, reported, |block, control, _| {
                    if block == dropout_block {
                        control.drop_out(dropout_ms);
                    }
                });
            seconds_until_cancelled(&heard, &sent, dropout_block * BLOCK_SAMPLES, 20.0)
        };
        let (reported, unreported) = (recovery(true), recovery(false));
        println!("{dropout_ms} ms dropout: {reported:?} s reported, {unreported:?} s not");
        assert!(
            reported.is_some_and(|seconds| seconds <= 0.25),
            "a reported {dropout_ms} ms underrun: ERLE back over 20 dB after {reported:?} s"
        );
        assert!(
            unreported.is_none_or(|seconds| seconds > 1.0),
            "unreported, the move is AEC3's to find ({unreported:?} s)"
        );
    }
}

#[test]
fn drifting_clocks_keep_the_echo_cancelled() {
    let far = long_far_end(20);
    for drift_ppm in [100.0, -100.0] {
        let config = RoomConfig {
            drift_ppm,
            ..RoomConfig::default()
        };
        let (heard, sent, _) = through_room(&far, config, ECHO_ONLY, |_, _, _| {});
        // The last ten seconds: 1 ms of drift since the start, 0.5 ms more.
        let erle = erle_db(&heard[10 * 48_000..], &sent[10 * 48_000..]);
        assert!(erle > 25.0, "{drift_ppm} ppm: ERLE {erle:.1} dB");
    }
}

#[test]
fn no_processing_changes_nothing() {
    let far = speech("speech-b-16k.wav");
    let (heard, sent, _) = through_room(
        &far[..48_000 * 3],
        RoomConfig::default(),
        VoiceProcessing::NONE,
        |_, _, _| {},
    );
    assert_eq!(heard, sent);
}
