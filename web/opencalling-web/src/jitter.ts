// A jitter buffer for one remote speaker, sans-IO (every input takes `now`,
// in milliseconds), after the native SDK's buffer's policy: the target delay
// follows the 95th percentile of recent packet lateness (measured from the
// path's smallest transit, a histogram of 2 ms bins with a forgetting
// factor) plus one packet, starting at 60 ms; a sequence gap is loss (the
// caller conceals it), a timestamp jump with contiguous sequence numbers a
// pause (silence, never concealed); playout catches up only in pauses —
// a packet without voice is skipped while the delay is a packet over its
// target — and a buffer that runs dry grows by what was concealed. What
// the browser cannot do that the native buffer does: recover a lost frame
// from the next packet's in-band FEC or from DRED (WebCodecs decodes whole
// packets only), and time-scale by a pitch period.

/** What to play next. `samples` at 48 kHz. */
export type Pull =
  | { kind: "packet"; payload: Uint8Array; samples: number }
  | { kind: "conceal"; samples: number }
  | { kind: "silence"; samples: number };

/** What the buffer did, for statistics. */
export interface JitterStats {
  received: number;
  /** Packets that came after their turn (dropped). */
  late: number;
  /** Packets skipped to bring the delay down. */
  accelerated: number;
  /** Frames concealed: lost, or not there in time. */
  concealed: number;
  targetMs: number;
  delayMs: number;
}

const FRAME = 960;
const TICKS_PER_MS = 48;
const START_TARGET_MS = 60;
const BIN_MS = 2;
const BINS = 500;
const FORGET = 0.996;
const SLOTS = 128;
/** Concealment for a dry buffer stops after this long (the sender went quiet). */
const MAX_DRY_CONCEAL = 3 * FRAME;
/** Packets before the histogram replaces the starting target. */
const WARM_UP = 25;

interface Packet {
  sequence: number;
  timestamp: number;
  voice: boolean;
  payload: Uint8Array;
  samples: number;
}

/** See the file's header. */
export class JitterBuffer {
  private readonly packets = new Map<number, Packet>();
  private readonly histogram = new Float64Array(BINS);
  private histogramWeight = 0;
  private minTransit: number | null = null;
  private minTransitAt = 0;
  private candidateMin: number | null = null;
  private started = false;
  private firstArrival = 0;
  private nextSequence = 0;
  private playTimestamp = 0;
  private dry = 0;
  /** Whether the last packet played held voice: a buffer that runs dry after one is late, not paused. */
  private lastVoice = false;
  private readonly statistics: JitterStats = {
    received: 0,
    late: 0,
    accelerated: 0,
    concealed: 0,
    targetMs: START_TARGET_MS,
    delayMs: 0,
  };

  /** Samples of a packet: its duration, read from it by the caller. */
  insert(now: number, sequence: number, timestamp: number, level: number, payload: Uint8Array, samples: number): void {
    if (samples <= 0 || samples > FRAME) return;
    if (this.started && sequence < this.nextSequence) {
      this.statistics.late += 1;
      return;
    }
    if (this.packets.has(sequence)) return;
    if (this.packets.size >= SLOTS) this.dropOldest();
    this.statistics.received += 1;
    this.packets.set(sequence, { sequence, timestamp, voice: (level & 0x80) !== 0, payload, samples });
    this.observeTransit(now, now - timestamp / TICKS_PER_MS);
    if (!this.started && this.packets.size === 1) this.firstArrival = now;
  }

  /** The next audio to play, at most `wanted` samples of it (a packet is whole). */
  pull(now: number, wanted: number = FRAME): Pull {
    const target = this.targetMs();
    this.statistics.targetMs = target;
    if (!this.started) {
      if (this.packets.size === 0 || now - this.firstArrival < target) return { kind: "silence", samples: wanted };
      const first = this.oldest()!;
      this.started = true;
      this.nextSequence = first.sequence;
      this.playTimestamp = first.timestamp;
    }
    const delay = this.delayMs(now);
    this.statistics.delayMs = delay;
    for (;;) {
      const packet = this.packets.get(this.nextSequence);
      if (packet === undefined) return this.missing(wanted);
      this.dry = 0;
      const ahead = packet.timestamp - this.playTimestamp;
      if (ahead > 0) {
        // A pause (contiguous sequence, later timestamp): silence until
        // the packet is due; a pause is where a long delay comes down.
        if (delay > target + FRAME / TICKS_PER_MS) {
          this.playTimestamp = packet.timestamp;
          continue;
        }
        const samples = Math.min(wanted, ahead);
        this.playTimestamp += samples;
        return { kind: "silence", samples };
      }
      this.packets.delete(this.nextSequence);
      this.nextSequence += 1;
      if (!packet.voice && delay > target + FRAME / TICKS_PER_MS && this.packets.size > 0) {
        this.statistics.accelerated += 1;
        this.playTimestamp = packet.timestamp + packet.samples;
        continue;
      }
      this.playTimestamp = packet.timestamp + packet.samples;
      this.lastVoice = packet.voice;
      return { kind: "packet", payload: packet.payload, samples: packet.samples };
    }
  }

  /** What the buffer did so far. */
  stats(): JitterStats {
    return { ...this.statistics };
  }

  /** The delay the buffer aims for, in ms. */
  targetMs(): number {
    if (this.statistics.received < WARM_UP || this.histogramWeight === 0) return START_TARGET_MS;
    let sum = 0;
    const limit = this.histogramWeight * 0.95;
    for (let bin = 0; bin < BINS; bin += 1) {
      sum += this.histogram[bin]!;
      if (sum >= limit) return (bin + 1) * BIN_MS + FRAME / TICKS_PER_MS;
    }
    return BINS * BIN_MS;
  }

  /** How far behind the path's fastest possible arrival playout runs, in ms. */
  private delayMs(now: number): number {
    if (this.minTransit === null) return 0;
    return now - (this.playTimestamp / TICKS_PER_MS + this.minTransit);
  }

  private missing(wanted: number): Pull {
    const later = this.oldest();
    if (later !== undefined && later.sequence > this.nextSequence) {
      // Lost: a later packet is here and this one's turn has come.
      this.nextSequence += 1;
      this.playTimestamp += FRAME;
      this.statistics.concealed += 1;
      return { kind: "conceal", samples: FRAME };
    }
    // Dry: a late packet, or the sender stopped (after quiet audio: a
    // pause, DTX or mute). The timeline waits (the delay grows by what is
    // concealed) and concealment fades to silence.
    if (this.dry >= MAX_DRY_CONCEAL || !this.lastVoice) return { kind: "silence", samples: wanted };
    this.dry += FRAME;
    this.statistics.concealed += 1;
    return { kind: "conceal", samples: FRAME };
  }

  private oldest(): Packet | undefined {
    let oldest: Packet | undefined;
    for (const packet of this.packets.values()) if (oldest === undefined || packet.sequence < oldest.sequence) oldest = packet;
    return oldest;
  }

  private dropOldest(): void {
    const oldest = this.oldest();
    if (oldest !== undefined) this.packets.delete(oldest.sequence);
  }

  /**
   * The path's smallest transit over the last few seconds (a new minimum at
   * once; a higher one after 5 s, as clocks drift and routes change), and
   * each packet's lateness over it in the histogram.
   */
  private observeTransit(now: number, transit: number): void {
    if (this.minTransit === null || transit < this.minTransit) {
      this.minTransit = transit;
      this.minTransitAt = now;
      this.candidateMin = null;
    } else {
      this.candidateMin = this.candidateMin === null ? transit : Math.min(this.candidateMin, transit);
      if (now - this.minTransitAt > 5000) {
        this.minTransit = this.candidateMin;
        this.minTransitAt = now;
        this.candidateMin = null;
      }
    }
    const lateness = transit - this.minTransit;
    for (let bin = 0; bin < BINS; bin += 1) this.histogram[bin]! *= FORGET;
    this.histogramWeight = this.histogramWeight * FORGET + 1;
    const bin = Math.min(BINS - 1, Math.max(0, Math.floor(lateness / BIN_MS)));
    this.histogram[bin]! += 1;
  }
}
