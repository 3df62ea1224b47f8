// The two AudioWorklet processors, loaded into the page's AudioContext by
// audio.ts: capture (the microphone's render quanta gathered into 20 ms
// frames for the encoder) and playout (a ring of mixed audio the main
// thread keeps filled). Both run on the audio rendering thread: after
// construction they allocate nothing, take no lock and never wait. Buffers
// travel between threads by transfer and come back to be reused.

declare const sampleRate: number;
declare function registerProcessor(name: string, processor: new (options: unknown) => AudioWorkletProcessorBase): void;
declare class AudioWorkletProcessorBase {
  readonly port: MessagePort;
  process(inputs: Float32Array[][], outputs: Float32Array[][]): boolean;
}
// The global the worklet scope provides, typed here (no lib declares it).
const AudioWorkletProcessor = (globalThis as unknown as { AudioWorkletProcessor: typeof AudioWorkletProcessorBase }).AudioWorkletProcessor;

/** Samples in a 20 ms frame at 48 kHz. */
const FRAME = 960;

/** Frames of capture the pool holds before the main thread returns them. */
const CAPTURE_POOL = 16;

/** Gathers the first input channel into 20 ms frames and posts each one. */
class CaptureProcessor extends AudioWorkletProcessor {
  private readonly pool: Float32Array[] = [];
  private current: Float32Array | null = null;
  private filled = 0;
  /** Frames dropped because the main thread kept every buffer. */
  private dropped = 0;

  constructor() {
    super();
    for (let index = 0; index < CAPTURE_POOL; index += 1) this.pool.push(new Float32Array(FRAME));
    this.port.onmessage = (event: MessageEvent<Float32Array>) => {
      if (event.data instanceof Float32Array && event.data.length === FRAME) this.pool.push(event.data);
    };
  }

  override process(inputs: Float32Array[][]): boolean {
    const channel = inputs[0]?.[0];
    if (channel === undefined) return true;
    let at = 0;
    while (at < channel.length) {
      if (this.current === null) {
        this.current = this.pool.pop() ?? null;
        if (this.current === null) {
          this.dropped += 1;
          return true;
        }
        this.filled = 0;
      }
      const take = Math.min(channel.length - at, FRAME - this.filled);
      this.current.set(channel.subarray(at, at + take), this.filled);
      this.filled += take;
      at += take;
      if (this.filled === FRAME) {
        this.port.postMessage(this.current, [this.current.buffer]);
        this.current = null;
      }
    }
    return true;
  }
}

/** One second of ring: far more than playout ever keeps queued. */
const RING = 48000;

/** How often playout tells the main thread what it consumed: every 5 ms. */
const REPORT_EVERY = 240;

/**
 * Plays what the main thread posts (mono, 48 kHz): a ring it copies into,
 * silence when it runs dry. Posts `{ consumed, underrun }` every 5 ms of
 * output so the main thread knows how much is queued.
 */
class PlayoutProcessor extends AudioWorkletProcessor {
  private readonly ring = new Float32Array(RING);
  private readPosition = 0;
  private writePosition = 0;
  private queued = 0;
  private consumed = 0;
  private sinceReport = 0;
  private underrun = 0;
  private readonly report = { consumed: 0, underrun: 0, queued: 0 };

  constructor() {
    super();
    this.port.onmessage = (event: MessageEvent<Float32Array>) => {
      const pcm = event.data;
      if (!(pcm instanceof Float32Array)) return;
      const room = RING - this.queued;
      const take = Math.min(room, pcm.length);
      for (let index = 0; index < take; index += 1) {
        this.ring[this.writePosition] = pcm[index]!;
        this.writePosition = (this.writePosition + 1) % RING;
      }
      this.queued += take;
      // The buffer goes back for reuse.
      this.port.postMessage(pcm, [pcm.buffer]);
    };
  }

  override process(_inputs: Float32Array[][], outputs: Float32Array[][]): boolean {
    const output = outputs[0];
    const first = output?.[0];
    if (output === undefined || first === undefined) return true;
    for (let index = 0; index < first.length; index += 1) {
      if (this.queued > 0) {
        first[index] = this.ring[this.readPosition]!;
        this.readPosition = (this.readPosition + 1) % RING;
        this.queued -= 1;
        this.consumed += 1;
      } else {
        first[index] = 0;
        this.underrun += 1;
      }
    }
    for (let channel = 1; channel < output.length; channel += 1) output[channel]!.set(first);
    this.sinceReport += first.length;
    if (this.sinceReport >= REPORT_EVERY) {
      this.sinceReport = 0;
      this.report.consumed = this.consumed;
      this.report.underrun = this.underrun;
      this.report.queued = this.queued;
      this.port.postMessage(this.report);
    }
    return true;
  }
}

registerProcessor("opencalling-capture", CaptureProcessor);
registerProcessor("opencalling-playout", PlayoutProcessor);
void sampleRate;
