//! An adaptive jitter buffer for one remote speaker, modelled on WebRTC
//! NetEq and sans-IO: [`JitterBuffer::insert`] takes packets as they arrive
//! (any order, duplicates, late ones), [`JitterBuffer::pull`] gives the next
//! samples of audio, 5 ms per call in playout (any length up to 20 ms;
//! packets are decoded whole, 20 or 10 ms each, whichever the sender
//! chose: each packet's duration is read from it); both take `now`.
//!
//! Per pull it decodes the next frame (*normal*), recovers a lost one from
//! the next packet's in-band FEC (one packet of look-ahead) or from the
//! Deep REDundancy (DRED) of the first packet after a burst, conceals with
//! Opus PLC, or — when playout strays from its target — removes
//! (*accelerate*) or adds (*expand*) one pitch period so the delay moves
//! without an audible jump. How far playout runs behind is measured from
//! the path's smallest transit, not from the newest packet buffered, which
//! swings with each packet's jitter (measured that way, 40 ms of jitter
//! had 9 % of the output time-scaled, and cost 0.96 PESQ).
//!
//! The target delay follows the 95th percentile of recent packet lateness,
//! late packets included (a histogram of 2 ms bins with a forgetting
//! factor, so it comes back down after a jittery spell), plus one packet,
//! starting at 60 ms, plus look-ahead while packets are being lost: one
//! packet for FEC, or — while the sender protects with DRED — as many as
//! most recent bursts were long, so the packet after a burst is there
//! before the burst's first frame is due. While someone speaks, the buffer
//! time-scales only when it is a packet (and at least 20 ms; twice that
//! under loss) off its target, and grows by the look-ahead only in pauses (a delay moved within
//! an utterance smears it); on a clean path it also cuts audio it holds over the target in
//! pauses (60 ms without voice), where nobody hears it, so it converges to
//! the target within a second and holds no frame a pull longer than it
//! must. A sequence gap is loss; a timestamp
//! gap with contiguous sequence numbers is a DTX pause, never concealed. A
//! late joiner or a burst that would leave seconds in the buffer is cut back
//! to the target at once.
//!
//! Storage is a fixed table of packet slots allocated once; sequence numbers
//! are `u32` and not expected to wrap; timestamps (48 kHz ticks) wrap after
//! 24 hours, which a call is not expected to reach.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::timescale;
use crate::{CodecError, Decoder, FRAME_SAMPLES, MAX_PACKET, has_fec, packet_samples};

/// Packets the buffer can hold at once (2.56 s of 20 ms frames, 1.28 s of
/// 10 ms ones).
const SLOTS: usize = 128;

/// Histogram bin width and count: 2 ms up to 1 s of lateness. Bins much
/// wider than a clean link's jitter would hold their width as delay.
const BIN_MS: f64 = 2.0;
const BINS: usize = 500;

/// Recent loss (share of frames recovered or concealed, averaged) under
/// which a path counts as clean: a loss or two of the last few seconds
/// already counts.
const CLEAN_PATH_LOSS: f64 = 0.001;

/// How far the delay may stray from the target while someone speaks, at
/// least (a packet, if longer).
const SPEECH_BAND_MS: f64 = 20.0;

/// Audio without voice in a row that makes a pause: quieter stretches
/// inside a word (a stop's closure) are shorter.
const PAUSE_MS: f64 = 60.0;

/// Packets shorter than this (2.5 ms) or longer than a 20 ms frame are
/// not played: Opus has no shorter frame, and no sender of ours makes
/// longer ones (a frame is decoded whole into a 20 ms buffer).
const MIN_PACKET_TICKS: u32 = 120;

/// Burst lengths the look-ahead histogram tells apart (the last bin holds
/// the longer ones too).
const BURST_BINS: usize = 8;

/// Share of recent bursts the DRED look-ahead covers: the rest are
/// concealed at their start and recovered from DRED once the packet after
/// them comes (the buffer grows for them, and time-scales back). 0.8 moved
/// the target up and down with each burst (bursty PESQ 2.25); 0.95, with
/// the bursts' long memory below, holds it (2.39; one pass of the
/// fixtures, DRED over its bitrate: docs/benchmarks.md).
const BURST_QUANTILE: f64 = 0.95;

/// The most look-ahead the buffer holds for DRED. DRED reaches 100 ms
/// back, but waiting that long did not pay: bursty PESQ 2.39 at 100 ms,
/// 2.42 at 60 (measured as above), for 40 ms less delay.
const DRED_LOOK_AHEAD_MS: f64 = 60.0;

/// How much of the burst-length histogram each new burst keeps: a memory
/// of ~100 bursts, so one unusual burst does not move the target.
const BURST_MEMORY: f64 = 0.99;

/// How the buffer behaves.
#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// Target delay before anything is measured.
    pub initial_delay: Duration,
    /// The target never goes below this.
    pub min_delay: Duration,
    /// The target never goes above this.
    pub max_delay: Duration,
    /// Forgetting factor of the lateness histogram, per packet: 0.997 gives
    /// a memory of a few seconds at 50 packets per second.
    pub forgetting: f64,
    /// Lateness quantile the target covers.
    pub quantile: f64,
    /// How the delay moves while someone speaks: by a pitch period at a
    /// time (accelerate / expand, as NetEq), or, when false, by dropping
    /// or inserting (concealing) a whole frame. Pauses are cut either way.
    pub time_scaling: bool,
    /// The decoder's complexity: 5 and up conceal with Deep PLC, 6 and 7
    /// enhance every frame (LACE, NoLACE); see
    /// [`DEFAULT_DECODER_COMPLEXITY`](crate::DEFAULT_DECODER_COMPLEXITY).
    pub decoder_complexity: u8,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(60),
            // A packet plus the lateness of a clean link: 10 ms packets
            // may aim that low.
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
            forgetting: 0.997,
            quantile: 0.95,
            time_scaling: true,
            decoder_complexity: crate::DEFAULT_DECODER_COMPLEXITY,
        }
    }
}

/// What one pull did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullKind {
    /// Nothing to play yet (no packet, or still filling to the target).
    Idle,
    /// Decoded the expected packet.
    Normal,
    /// Recovered a lost packet from the next one's FEC.
    Fec,
    /// Recovered a lost packet from the DRED of a later one.
    Dred,
    /// Concealed a lost or late packet (PLC).
    Conceal,
    /// A DTX pause or a speaker gone quiet: comfort noise or silence.
    Quiet,
}

/// NetEq-like statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Packets accepted.
    pub packets_received: u64,
    /// Packets that arrived after their time had passed.
    pub late_packets: u64,
    /// Packets received twice.
    pub duplicate_packets: u64,
    /// Packets dropped to cut an excessive delay (late joiner, burst), for
    /// lack of room, or as unplayable (not Opus, or over 20 ms).
    pub discarded_packets: u64,
    /// Samples produced in all.
    pub output_samples: u64,
    /// Samples made up by PLC.
    pub concealed_samples: u64,
    /// Runs of concealment (a run of consecutive concealed frames is one).
    pub concealment_events: u64,
    /// Frames recovered from FEC.
    pub fec_recovered: u64,
    /// Frames recovered from DRED.
    pub dred_recovered: u64,
    /// Samples removed by accelerate.
    pub accelerated_samples: u64,
    /// Samples added by expand.
    pub expanded_samples: u64,
    /// Buffered audio now, in milliseconds.
    pub current_delay_ms: f64,
    /// What the buffer aims for, in milliseconds.
    pub target_delay_ms: f64,
    /// The sender's packets, in milliseconds of audio each (20, or 10 with
    /// the low-latency profile), as the newest one says.
    pub packet_ms: f64,
}

impl JitterStats {
    /// Fraction of output removed by accelerate.
    pub fn accelerate_rate(&self) -> f64 {
        self.accelerated_samples as f64 / self.output_samples.max(1) as f64
    }

    /// Fraction of output added by expand.
    pub fn expand_rate(&self) -> f64 {
        self.expanded_samples as f64 / self.output_samples.max(1) as f64
    }
}

#[derive(Clone, Copy)]
struct Slot {
    arrived: Instant,
    seq: u32,
    timestamp: u32,
    /// The packet's duration in 48 kHz ticks (samples).
    ticks: u32,
    voice: bool,
    len: usize,
    data: [u8; MAX_PACKET],
}

/// The jitter buffer of one remote speaker. See the [module docs](self).
pub struct JitterBuffer {
    config: JitterConfig,
    decoder: Decoder,
    slots: Box<[Option<Slot>]>,
    /// The last sequence number accepted into each slot index: tells a
    /// duplicate of an already played packet from a late one.
    seen: Box<[Option<u32>]>,
    /// Whether the last decoded packet carried no voice (its sender's voice
    /// activity flag, RFC 6464): then an empty buffer is a pause (DTX, or a
    /// talker gone quiet), not loss.
    in_dtx: bool,
    /// Decoded samples waiting to be pulled.
    sync: VecDeque<f32>,
    frame: [f32; FRAME_SAMPLES],
    /// Samples of `frame` that the last decode, recovery or concealment made.
    frame_len: usize,
    /// Ticks of one of the sender's packets, as the newest packet says: the
    /// unit of look-ahead, concealment and the time-scaling band.
    packet_ticks: u32,
    /// Timestamp of the next frame to decode, once playing.
    play_ts: Option<u32>,
    /// Sequence number of the last frame played, decoded or concealed.
    last_seq: Option<u32>,
    /// When the first packet arrived: playout starts a target delay later.
    first_arrival: Option<Instant>,
    newest_ts: Option<u32>,
    concealing: bool,
    quiet_frames: u32,
    /// What the frame now playing out was.
    last_kind: PullKind,
    /// Milliseconds of decoded audio without voice in a row, up to the last
    /// frame.
    unvoiced_ms: f64,
    /// Milliseconds the last pull asked for (5 in playout).
    pull_ms: f64,
    histogram: [f64; BINS],
    /// Smallest transit (arrival − send time) seen in the current and the
    /// previous window: lateness is measured above it, and the windows let
    /// it follow clock drift.
    min_transit: [f64; 2],
    window_start_ts: Option<u32>,
    target_ms: f64,
    /// The part of the target that is look-ahead for recovering losses:
    /// the delay grows by it only in pauses (see `finish_frame`).
    look_ahead_ms: f64,
    /// Lateness quantile the histogram gives, before the look-ahead.
    lateness_ms: f64,
    /// Recent share of frames that needed FEC or PLC (exponential average).
    recent_loss: f64,
    /// Lost frames in a row up to the frame now playing.
    burst: usize,
    /// Recent bursts by length (1 to `BURST_BINS` lost frames in a row),
    /// with a forgetting factor.
    bursts: [f64; BURST_BINS],
    /// The packet whose DRED the decoder holds, and how many samples
    /// before it the DRED reaches (0: none, the sender protects with FEC).
    dred_parsed: Option<(u32, usize)>,
    stats: JitterStats,
    origin: Option<Instant>,
}

impl std::fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("play_ts", &self.play_ts)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Ticks of `a` after `b` (negative if before), for timestamps that do not wrap.
fn ticks_after(a: u32, b: u32) -> i64 {
    i64::from(a) - i64::from(b)
}

fn ticks_to_ms(ticks: i64) -> f64 {
    ticks as f64 / 48.0
}

impl JitterBuffer {
    /// An empty buffer with its own decoder.
    pub fn new(config: JitterConfig) -> Result<Self, CodecError> {
        Ok(Self {
            decoder: Decoder::with_complexity(config.decoder_complexity)?,
            slots: vec![None; SLOTS].into_boxed_slice(),
            seen: vec![None; SLOTS].into_boxed_slice(),
            in_dtx: false,
            sync: VecDeque::with_capacity(4 * FRAME_SAMPLES),
            frame: [0.0; FRAME_SAMPLES],
            frame_len: FRAME_SAMPLES,
            packet_ticks: FRAME_SAMPLES as u32,
            play_ts: None,
            last_seq: None,
            first_arrival: None,
            newest_ts: None,
            concealing: false,
            quiet_frames: 0,
            last_kind: PullKind::Idle,
            unvoiced_ms: 0.0,
            pull_ms: 10.0,
            histogram: [0.0; BINS],
            min_transit: [f64::INFINITY; 2],
            window_start_ts: None,
            target_ms: config.initial_delay.as_secs_f64() * 1e3,
            look_ahead_ms: 0.0,
            lateness_ms: 0.0,
            recent_loss: 0.0,
            burst: 0,
            bursts: [0.0; BURST_BINS],
            dred_parsed: None,
            stats: JitterStats::default(),
            origin: None,
            config,
        })
    }

    /// The statistics so far.
    pub fn stats(&self) -> JitterStats {
        let mut stats = self.stats;
        stats.current_delay_ms = self.current_delay_ms();
        stats.target_delay_ms = self.target_ms;
        stats.packet_ms = self.packet_ms();
        stats
    }

    /// Audio buffered now: decoded samples plus everything received from the
    /// next frame to the newest, in milliseconds.
    pub fn current_delay_ms(&self) -> f64 {
        let decoded = self.sync.len() as f64 / 48.0;
        match (self.play_ts, self.newest_ts) {
            (Some(play), Some(newest)) => {
                decoded
                    + ticks_to_ms(ticks_after(newest, play) + i64::from(self.packet_ticks)).max(0.0)
            }
            _ => decoded,
        }
    }

    /// How far playout runs behind the earliest the next frame could have
    /// arrived (at the path's smallest transit), in the units of the target
    /// (decoded audio and one packet included). On a clean path it is the
    /// buffered delay; under jitter it does not swing with each packet's
    /// lateness, as the buffered delay does (the newest packet may be
    /// early or late by the jitter), so speech is time-scaled only when
    /// playout itself strays from the target. `None` before the first
    /// packet.
    fn playout_lag_ms(&self, now: Instant) -> Option<f64> {
        let (origin, play) = (self.origin?, self.play_ts?);
        let floor = self.min_transit[0].min(self.min_transit[1]);
        if !floor.is_finite() {
            return None;
        }
        let now_ms = now.duration_since(origin).as_secs_f64() * 1e3;
        let decoded = self.sync.len() as f64 / 48.0;
        Some(decoded + now_ms - floor - ticks_to_ms(i64::from(play)) + self.packet_ms())
    }

    /// One of the sender's packets, in milliseconds.
    fn packet_ms(&self) -> f64 {
        ticks_to_ms(i64::from(self.packet_ticks))
    }

    /// Takes a packet that arrived at `now`: its sequence number, timestamp
    /// (48 kHz ticks), the sender's voice-activity flag, and the Opus payload
    /// (2.5 to 20 ms of audio; anything else is discarded).
    pub fn insert(&mut self, now: Instant, seq: u32, timestamp: u32, voice: bool, payload: &[u8]) {
        let ticks = (payload.len() <= MAX_PACKET)
            .then(|| packet_samples(payload))
            .flatten()
            .and_then(|samples| u32::try_from(samples).ok())
            .filter(|ticks| (MIN_PACKET_TICKS..=FRAME_SAMPLES as u32).contains(ticks));
        let Some(ticks) = ticks else {
            self.stats.discarded_packets += 1;
            return;
        };
        let slot_index = seq as usize % SLOTS;
        if self.seen[slot_index] == Some(seq) {
            self.stats.duplicate_packets += 1;
            return;
        }
        // Late packets count most: a histogram without them would aim
        // for the packets that came in time and make more of them late.
        self.measure_lateness(now, timestamp);
        let played_past = self
            .play_ts
            .is_some_and(|play| ticks_after(timestamp, play) < 0);
        // The packet right after the last one played is never too late:
        // if the buffer went on without it (comfort noise in the sender's
        // pause, which is not always DTX: a voiceless packet may just be
        // late), it plays from here. Dropping it would drop every later
        // packet too, each as late as this one, for good. What it already
        // decoded still plays first: the delay grows, and the next pause
        // trims it.
        let next_in_sequence = self
            .last_seq
            .is_some_and(|last| seq == last.wrapping_add(1));
        if played_past && next_in_sequence {
            self.play_ts = Some(timestamp);
        }
        let too_late =
            self.last_seq.is_some_and(|last| seq <= last) || (played_past && !next_in_sequence);
        if too_late {
            self.stats.late_packets += 1;
            return;
        }
        if let Some(existing) = self.slots[slot_index] {
            // The table is full up to this slot: keep the older packet, which
            // plays first; the newer one cannot fit.
            if existing.seq < seq {
                self.stats.discarded_packets += 1;
                return;
            }
        }
        let mut data = [0; MAX_PACKET];
        data[..payload.len()].copy_from_slice(payload);
        self.seen[slot_index] = Some(seq);
        self.slots[slot_index] = Some(Slot {
            arrived: now,
            seq,
            timestamp,
            ticks,
            voice,
            len: payload.len(),
            data,
        });
        self.stats.packets_received += 1;
        self.first_arrival.get_or_insert(now);
        if self
            .newest_ts
            .is_none_or(|newest| ticks_after(timestamp, newest) > 0)
        {
            self.newest_ts = Some(timestamp);
            self.packet_ticks = ticks;
        }
    }

    fn measure_lateness(&mut self, now: Instant, timestamp: u32) {
        let origin = *self.origin.get_or_insert(now);
        let arrival_ms = now.duration_since(origin).as_secs_f64() * 1e3;
        let transit = arrival_ms - ticks_to_ms(i64::from(timestamp));
        // Two 2-second windows of minimum transit, so the reference follows
        // a drifting sender clock without forgetting the floor at once.
        let window_start = *self.window_start_ts.get_or_insert(timestamp);
        if ticks_after(timestamp, window_start) > 2 * 48_000 {
            self.min_transit = [f64::INFINITY, self.min_transit[0]];
            self.window_start_ts = Some(timestamp);
        }
        self.min_transit[0] = self.min_transit[0].min(transit);
        let floor = self.min_transit[0].min(self.min_transit[1]);
        let lateness = (transit - floor).max(0.0);
        let forget = self.config.forgetting;
        for bin in &mut self.histogram {
            *bin *= forget;
        }
        let bin = ((lateness / BIN_MS) as usize).min(BINS - 1);
        self.histogram[bin] += 1.0 - forget;
        // The lateness covering `quantile` of recent packets (the target adds
        // a packet: a packet is played a packet after its start).
        let total: f64 = self.histogram.iter().sum();
        let mut covered = 0.0;
        let mut quantile_ms = 0.0;
        for (index, weight) in self.histogram.iter().enumerate() {
            covered += weight;
            if covered >= self.config.quantile * total {
                quantile_ms = (index + 1) as f64 * BIN_MS;
                break;
            }
        }
        // The histogram needs a few dozen packets before it means anything.
        if self.stats.packets_received >= 25 {
            self.lateness_ms = quantile_ms;
            self.update_target();
        }
    }

    /// Target = recent lateness + one packet (a packet plays a packet's
    /// time after it starts) + look-ahead while packets are being lost: one
    /// packet, so the packet after a lost one is there in time to recover
    /// it by FEC; with DRED, as many packets as most recent bursts were
    /// long (up to 60 ms), so the packet after a burst is.
    fn update_target(&mut self) {
        let min = self.config.min_delay.as_secs_f64() * 1e3;
        let max = self.config.max_delay.as_secs_f64() * 1e3;
        let packet = self.packet_ms();
        let look_ahead = if self.recent_loss <= 0.005 {
            0.0
        } else if self.stream_has_dred() {
            let reach = (DRED_LOOK_AHEAD_MS / packet).floor().max(1.0);
            packet * (self.usual_burst() as f64).min(reach)
        } else {
            // A pull more than a packet: the next packet must be in when
            // the lost frame's first pull comes, not a pull later (then
            // the frame was concealed and the buffer grew by it).
            packet + self.pull_ms
        };
        self.target_ms = (self.lateness_ms + packet + look_ahead).clamp(min, max);
        self.look_ahead_ms = look_ahead.min(self.target_ms - min).max(0.0);
    }

    /// Whether the last packet read for DRED carried some: the sender
    /// protects with DRED, so bursts are worth waiting for.
    fn stream_has_dred(&self) -> bool {
        self.dred_parsed.is_some_and(|(_, covered)| covered > 0)
    }

    /// The burst length (lost frames in a row) that covers
    /// `BURST_QUANTILE` of recent bursts; 1 before any.
    fn usual_burst(&self) -> usize {
        let total: f64 = self.bursts.iter().sum();
        let mut covered = 0.0;
        for (index, weight) in self.bursts.iter().enumerate() {
            covered += weight;
            if covered >= BURST_QUANTILE * total {
                return index + 1;
            }
        }
        1
    }

    /// Feeds the loss estimate and the burst lengths with one played frame.
    fn note_frame(&mut self, lost: bool) {
        self.recent_loss = 0.99 * self.recent_loss + if lost { 0.01 } else { 0.0 };
        if lost {
            self.burst += 1;
        } else if self.burst > 0 {
            for bin in &mut self.bursts {
                *bin *= BURST_MEMORY;
            }
            self.bursts[self.burst.min(BURST_BINS) - 1] += 1.0;
            self.burst = 0;
            self.update_target();
        }
    }

    /// Recovers the `lost` samples at `play` from the DRED of `later`, a
    /// packet after them; `false` when it carries none that reaches them
    /// (or this decoder does not decode DRED). A packet is parsed once for
    /// all the frames of a burst.
    fn recover_from_dred(&mut self, play: u32, later: &Slot, lost: usize) -> bool {
        if !self.decoder.decodes_dred() {
            return false;
        }
        let covered = match self.dred_parsed {
            Some((seq, covered)) if seq == later.seq => covered,
            _ => {
                // Bytes that are no DRED are none.
                let covered = self
                    .decoder
                    .parse_dred(&later.data[..later.len])
                    .unwrap_or(0);
                self.dred_parsed = Some((later.seq, covered));
                covered
            }
        };
        let Ok(offset) = usize::try_from(ticks_after(later.timestamp, play)) else {
            return false;
        };
        covered >= offset
            && self
                .decoder
                .decode_dred(offset, &mut self.frame[..lost])
                .is_ok()
    }

    fn slot_with_ts(&self, timestamp: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.is_some_and(|slot| slot.timestamp == timestamp))
    }

    /// The earliest buffered packet at or after `timestamp`.
    fn earliest_from(&self, timestamp: u32) -> Option<Slot> {
        self.slots
            .iter()
            .flatten()
            .filter(|slot| ticks_after(slot.timestamp, timestamp) >= 0)
            .min_by_key(|slot| slot.timestamp)
            .copied()
    }

    /// Forgets packets that can no longer play.
    fn drop_before(&mut self, timestamp: u32) {
        for slot in self.slots.iter_mut() {
            if slot.is_some_and(|stored| ticks_after(stored.timestamp, timestamp) < 0) {
                *slot = None;
            }
        }
    }

    /// Fills `out` with the audio due at `now`: the next `out.len()`
    /// samples. What the pull did is the kind of the last frame it decoded,
    /// or of the frame it is still playing out.
    pub fn pull(&mut self, now: Instant, out: &mut [f32]) -> Result<PullKind, CodecError> {
        if self.play_ts.is_none() {
            let ready = self.first_arrival.is_some_and(|first| {
                now.duration_since(first).as_secs_f64() * 1e3 >= self.target_ms - self.packet_ms()
            });
            let earliest = self
                .slots
                .iter()
                .flatten()
                .min_by_key(|slot| slot.timestamp)
                .copied();
            match (ready, earliest) {
                (true, Some(first)) => {
                    self.play_ts = Some(first.timestamp);
                    self.last_seq = first.seq.checked_sub(1);
                }
                _ => {
                    out.fill(0.0);
                    return Ok(PullKind::Idle);
                }
            }
        }
        self.cut_excess_delay();
        let wanted = out.len();
        self.pull_ms = ticks_to_ms(wanted as i64);
        while self.sync.len() < wanted {
            self.last_kind = self.produce_frame(now)?;
        }
        for (sample, decoded) in out.iter_mut().zip(self.sync.drain(..wanted)) {
            *sample = decoded;
        }
        self.stats.output_samples += wanted as u64;
        Ok(self.last_kind)
    }

    /// A late joiner or a burst must not leave seconds in the buffer: past
    /// three times the target (and at least 200 ms more), skip ahead to it.
    fn cut_excess_delay(&mut self) {
        let delay = self.current_delay_ms();
        if delay <= (3.0 * self.target_ms).max(self.target_ms + 200.0) {
            return;
        }
        let (Some(play), Some(newest)) = (self.play_ts, self.newest_ts) else {
            return;
        };
        let keep_ticks = (self.target_ms * 48.0) as i64;
        let new_play =
            (i64::from(newest) + i64::from(self.packet_ticks) - keep_ticks).max(i64::from(play));
        let new_play = u32::try_from(new_play).unwrap_or(play);
        let before = self.slots.iter().flatten().count();
        self.drop_before(new_play);
        self.stats.discarded_packets += (before - self.slots.iter().flatten().count()) as u64;
        self.sync.clear();
        // Land on a packet boundary so decoding resumes cleanly.
        if let Some(next) = self.earliest_from(new_play) {
            self.play_ts = Some(next.timestamp);
            self.last_seq = next.seq.checked_sub(1);
        } else {
            self.play_ts = Some(new_play);
        }
        tracing::debug!(
            delay_ms = delay,
            target_ms = self.target_ms,
            "jitter buffer cut back to its target"
        );
    }

    /// Decodes, recovers or conceals the frame at `play_ts` into `sync`.
    fn produce_frame(&mut self, now: Instant) -> Result<PullKind, CodecError> {
        let Some(play) = self.play_ts else {
            return Ok(PullKind::Idle);
        };
        if let Some(index) = self.slot_with_ts(play) {
            let Some(slot) = self.slots[index].take() else {
                return Ok(PullKind::Idle);
            };
            let decoded = self
                .decoder
                .decode(&slot.data[..slot.len], &mut self.frame)?;
            self.frame_len = decoded.clamp(1, FRAME_SAMPLES);
            self.in_dtx = !slot.voice;
            self.last_seq = Some(slot.seq);
            self.note_frame(false);
            let waited = now.saturating_duration_since(slot.arrived);
            self.finish_frame(now, play, slot.ticks, false, waited);
            return Ok(PullKind::Normal);
        }
        let packet_ticks = self.packet_ticks;
        let packet = packet_ticks as usize;
        match self.earliest_from(play) {
            // The next packet by sequence starts later: the sender paused
            // (DTX or silence). Not loss: play silence until it is due, but
            // never more than the target delay of it.
            Some(slot)
                if self
                    .last_seq
                    .is_none_or(|last| slot.seq == last.wrapping_add(1)) =>
            {
                let gap = ticks_after(slot.timestamp, play);
                let keep = ((self.target_ms * 48.0) as i64 / i64::from(packet_ticks))
                    * i64::from(packet_ticks);
                let resume_from = if gap > keep {
                    i64::from(slot.timestamp) - keep
                } else {
                    i64::from(play)
                };
                self.play_ts = Some(
                    u32::try_from(resume_from)
                        .unwrap_or(play)
                        .wrapping_add(packet_ticks),
                );
                self.concealing = false;
                self.quiet_frames = 0;
                self.sync.extend(std::iter::repeat_n(0.0, packet));
                Ok(PullKind::Quiet)
            }
            // Lost. The packet right after it (of the same duration) may
            // carry it in its FEC; a packet further on (after a burst), or
            // right after it from a sender that protects with DRED, in its
            // DRED; otherwise it is concealed.
            Some(slot) => {
                let right_after = ticks_after(slot.timestamp, play) == i64::from(slot.ticks);
                let lost = if right_after {
                    slot.ticks as usize
                } else {
                    packet
                };
                let kind = if right_after && has_fec(&slot.data[..slot.len]) {
                    self.decoder
                        .decode_fec(&slot.data[..slot.len], &mut self.frame[..lost])?;
                    self.stats.fec_recovered += 1;
                    PullKind::Fec
                } else if self.recover_from_dred(play, &slot, lost) {
                    self.stats.dred_recovered += 1;
                    PullKind::Dred
                } else {
                    self.decoder.conceal(&mut self.frame[..lost])?;
                    PullKind::Conceal
                };
                self.frame_len = lost;
                self.last_seq = self.last_seq.map(|last| last.wrapping_add(1));
                self.note_frame(true);
                let concealed = kind == PullKind::Conceal;
                if concealed {
                    self.count_concealment();
                }
                self.finish_frame(now, play, lost as u32, concealed, Duration::ZERO);
                Ok(kind)
            }
            // Nothing buffered during DTX: comfort noise, time passes.
            None if self.in_dtx => {
                self.decoder.conceal(&mut self.frame[..packet])?;
                self.play_ts = Some(play.wrapping_add(packet_ticks));
                self.sync.extend(self.frame[..packet].iter().copied());
                Ok(PullKind::Quiet)
            }
            // Nothing buffered: the packet is late. Conceal briefly without
            // consuming its time slot (the buffer grows; the target adapts),
            // then go quiet: the speaker may have stopped sending. Late is
            // not lost (the packet still plays when it comes): the loss
            // estimate is left alone, so one late packet does not keep the
            // path "lossy" (no trimming in pauses, the delay held a frame
            // high) for seconds.
            None => {
                if self.quiet_frames < 3 {
                    self.decoder.conceal(&mut self.frame[..packet])?;
                    self.frame_len = packet;
                    self.count_concealment();
                    self.quiet_frames += 1;
                    self.sync.extend(self.frame[..packet].iter().copied());
                    Ok(PullKind::Conceal)
                } else {
                    self.concealing = false;
                    self.sync.extend(std::iter::repeat_n(0.0, packet));
                    Ok(PullKind::Quiet)
                }
            }
        }
    }

    fn count_concealment(&mut self) {
        self.update_target();
        self.stats.concealed_samples += self.frame_len as u64;
        if !self.concealing {
            self.stats.concealment_events += 1;
            self.concealing = true;
        }
    }

    /// Moves `ticks` past the frame at `play`, time-scaling it when the
    /// delay is off target. Delay `target ± a packet` (at least 20 ms) is
    /// left alone while someone speaks (time-scaling speech costs quality); on a clean path,
    /// in a pause (60 ms without voice), audio over the target by more than
    /// half a packet is cut outright, which nobody hears, so the delay
    /// comes down to the target at the first pause.
    fn finish_frame(
        &mut self,
        now: Instant,
        play: u32,
        ticks: u32,
        concealed: bool,
        waited: Duration,
    ) {
        self.play_ts = Some(play.wrapping_add(ticks));
        if !concealed {
            self.concealing = false;
        }
        self.quiet_frames = 0;
        let frame_len = self.frame_len;
        let frame = &self.frame[..frame_len];
        let packet_ms = self.packet_ms();
        // Counted from the next frame on: this frame's own duration is part
        // of the target.
        let delay = self.current_delay_ms();
        self.unvoiced_ms = if crate::level::voice_activity(frame) {
            0.0
        } else {
            self.unvoiced_ms + ticks_to_ms(frame_len as i64)
        };
        // Over the target: audio buffered beyond what the target holds, or
        // time the frame just decoded waited beyond its lateness margin and
        // a pull (it could have started a pull sooner: frames start on
        // pulls, so a buffer level right on target can still hold a frame
        // back; but up to a pull of waiting is the pulls' own granularity,
        // and cutting it only makes the next packet late).
        let waited_ms = waited.as_secs_f64() * 1e3;
        let margin = self.target_ms - packet_ms;
        let over_in_pause = (delay - margin).max(waited_ms - self.pull_ms - margin);
        // Only on a clean path: under loss, audio held over the target is
        // the margin that lets the next packet's FEC arrive in time.
        let clean_path = self.recent_loss < CLEAN_PATH_LOSS;
        // While someone speaks the delay is left alone within a packet of
        // the target, and never less than 20 ms: time-scaled (or dropped)
        // speech costs quality, so shorter packets do not narrow the band
        // (they would have the buffer reshape speech all through the first
        // second, as the target comes down from its cautious start).
        //
        // Under loss, twice that: concealment and FEC move the delay more,
        // and with the narrower band speech was time-scaled again and
        // again (at 20 % loss on one fixture PESQ 2.19, against 2.61 with
        // this band, as without time-scaling; the delay then stays up to
        // a band over the target, as pauses are cut only on a clean path).
        let speech_band_ms = if clean_path {
            packet_ms.max(SPEECH_BAND_MS)
        } else {
            2.0 * packet_ms.max(SPEECH_BAND_MS)
        };
        let lag = self.playout_lag_ms(now).unwrap_or(delay);
        // A frame too short to hold two of the longest pitch periods (a 10
        // ms packet) cannot be time-scaled: it is dropped or followed by a
        // concealed one, as without time-scaling, or the delay would stay
        // off target through speech.
        let time_scaling = self.config.time_scaling && timescale::can_scale(frame_len);
        // The look-ahead for losses is added in pauses only: stretched
        // speech costs more than a loss recovered a little later, and a
        // delay moved within an utterance smears it (a bursty path's first
        // seconds, when losses first raise the target: STOI 0.90 against
        // 0.97 once it holds).
        let in_pause = self.unvoiced_ms >= PAUSE_MS;
        let grow_to = if in_pause {
            self.target_ms
        } else {
            self.target_ms - self.look_ahead_ms
        };
        if clean_path && over_in_pause > packet_ms / 2.0 && self.unvoiced_ms >= PAUSE_MS {
            let cut = ((over_in_pause * 48.0) as usize).min(frame_len);
            self.sync.extend(frame[cut..].iter().copied());
            self.stats.accelerated_samples += cut as u64;
        } else if lag > self.target_ms + speech_band_ms {
            if time_scaling {
                self.stats.accelerated_samples +=
                    timescale::accelerate(frame, &mut self.sync) as u64;
            } else {
                // Drop the frame.
                self.stats.accelerated_samples += frame_len as u64;
            }
        } else if lag + speech_band_ms < grow_to && !concealed {
            if time_scaling {
                self.stats.expanded_samples += timescale::expand(frame, &mut self.sync) as u64;
            } else {
                // Insert a concealed frame after this one.
                self.sync.extend(frame.iter().copied());
                if self.decoder.conceal(&mut self.frame[..frame_len]).is_ok() {
                    self.sync.extend(self.frame[..frame_len].iter().copied());
                    self.stats.expanded_samples += frame_len as u64;
                }
            }
        } else {
            self.sync.extend(frame.iter().copied());
        }
    }
}
