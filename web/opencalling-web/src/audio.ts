// A call's audio in the page: the microphone (getUserMedia, with the
// browser's echo cancellation, noise suppression and auto gain unless
// turned off) → the capture worklet's 20 ms frames → WebCodecs Opus (48
// kHz mono, 32 kbit/s, in-band FEC, the loss hint from the receivers'
// reports) → audio datagrams; received datagrams → a jitter buffer per
// remote speaker → WebCodecs decode (a faded repeat of the last frame for
// a lost one) → mixed → the playout worklet. Loss reports go to each
// speaker once a second. The main thread does the codec work; the worklets
// only move samples.

import { MAX_OVERHEAD } from "./e2ee.js";
import { JitterBuffer, type JitterStats } from "./jitter.js";
import { DatagramKind, type MediaHeader, MAX_HEADER_LEN, encodeDatagram, lossReport, opusPacketSamples } from "./wire.js";

const SAMPLE_RATE = 48000;
const FRAME = 960;
const BITRATE = 32000;
/**
 * Audio the playout worklet is kept ahead by, at least: a frame. It
 * reports every 5 ms, so it then holds 15 to 40 ms: 15 ms for the main
 * thread to be late by before it plays silence. Each time it runs dry
 * anyway (a busy machine, a page doing other work) the lead grows by
 * 5 ms, up to two frames; after 5 s without, it comes back 5 ms.
 */
const MIN_PLAYOUT_LEAD = FRAME;
const MAX_PLAYOUT_LEAD = 2 * FRAME;
const LEAD_STEP = 240;
const LEAD_RELAX_MS = 5000;
/** A loss report once a second, once this many packets were due. */
const LOSS_REPORT_MS = 1000;
const LOSS_REPORT_MIN_PACKETS = 10;
/** Concealment fades by this much per frame. */
const CONCEAL_FADE = 0.6;

/** The browser's own voice processing on the microphone. */
export interface VoiceProcessing {
  echoCancellation: boolean;
  noiseSuppression: boolean;
  autoGainControl: boolean;
}

/** What the call's audio needs from its owner. */
export interface AudioHooks {
  sendDatagram(datagram: Uint8Array): void;
  maxDatagramSize(): number;
  /** The member whose audio comes with `flowId`, or null. */
  userOfFlow(flowId: number): string | null;
  /** A measured volume (0–100): the local user's (`null`) or a member's. */
  voiceLevel(userId: string | null, volume: number): void;
  /** The audio cannot work (no microphone, no codec): the call goes on without it. */
  failed(message: string): void;
  /**
   * End-to-end encryption, when on: our frame sealed behind its header as
   * sent (the whole datagram; null: not sent), a member's frame opened
   * (null: not played).
   */
  encryption: {
    seal(metadata: Uint8Array, payload: Uint8Array): Promise<Uint8Array | null>;
    open(flowId: number, metadata: Uint8Array, frame: Uint8Array): Promise<Uint8Array | null>;
  } | null;
}

/** Figures of a call's audio, for statistics and tests. */
export interface AudioStats {
  sent: number;
  /** What the browser says its output adds after the playout worklet, ms. */
  outputLatencyMs: number;
  /** How far ahead of the playout worklet the page keeps audio, ms (at least). */
  playoutLeadMs: number;
  lossHint: number;
  underruns: number;
  remote: Record<string, JitterStats & { decoded: number; decodeErrors: number }>;
}

/** The call API's 0–100 volume: −60 dBFS and below is 0, 0 dBFS is 100 (as the native SDK). */
export function volumeOf(samples: Float32Array): number {
  const db = dbfs(samples);
  return Math.round(Math.min(100, Math.max(0, ((db + 60) / 60) * 100)));
}

function dbfs(samples: Float32Array): number {
  let sum = 0;
  for (const sample of samples) sum += sample * sample;
  const rms = Math.sqrt(sum / Math.max(1, samples.length));
  return rms <= 1e-7 ? -127 : Math.min(0, Math.max(-127, 20 * Math.log10(rms)));
}

/** The header's level byte: voice activity (−50 dBFS gate) and −dBov. */
function levelByte(samples: Float32Array): number {
  const db = dbfs(samples);
  return (db > -50 ? 0x80 : 0) | Math.round(Math.min(127, -db));
}

/** One remote speaker. */
class RemoteFlow {
  readonly buffer = new JitterBuffer();
  private decoder: AudioDecoder;
  private pending = 0;
  private ready: Float32Array[] = [];
  private readyOffset = 0;
  private last: Float32Array | null = null;
  private concealRun = 0;
  decoded = 0;
  decodeErrors = 0;
  // This second's loss count, for the report.
  windowFirst: number | null = null;
  windowHighest = 0;
  windowReceived = 0;

  constructor(private readonly onReady: () => void) {
    this.decoder = this.makeDecoder();
  }

  private makeDecoder(): AudioDecoder {
    const decoder = new AudioDecoder({
      output: (data) => {
        const pcm = new Float32Array(data.numberOfFrames);
        data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
        data.close();
        this.pending = Math.max(0, this.pending - 1);
        this.decoded += 1;
        this.last = pcm;
        this.concealRun = 0;
        this.ready.push(pcm);
        this.onReady();
      },
      error: () => {
        // A packet the decoder refused closes it: a new one for what follows.
        this.decodeErrors += 1;
        this.pending = 0;
        this.decoder = this.makeDecoder();
        this.onReady();
      },
    });
    decoder.configure({ codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1 });
    return decoder;
  }

  private readySamples(): number {
    let samples = -this.readyOffset;
    for (const chunk of this.ready) samples += chunk.length;
    return samples;
  }

  /**
   * Makes a frame ready if it can now: false while a decode is in flight
   * (its output calls back).
   */
  prepare(now: number): boolean {
    while (this.readySamples() < FRAME) {
      if (this.pending > 0) return false;
      const pull = this.buffer.pull(now, FRAME);
      if (pull.kind === "packet") {
        this.pending += 1;
        this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: 0, data: pull.payload }));
      } else if (pull.kind === "conceal" && this.last !== null && this.concealRun < 3) {
        this.concealRun += 1;
        const gain = CONCEAL_FADE ** this.concealRun;
        const pcm = new Float32Array(pull.samples);
        for (let index = 0; index < pcm.length; index += 1) pcm[index] = (this.last[index % this.last.length] ?? 0) * gain;
        this.ready.push(pcm);
      } else {
        this.ready.push(new Float32Array(pull.samples));
      }
    }
    return true;
  }

  /** Adds the next frame into `mix`; returns its volume. */
  take(mix: Float32Array): number {
    const frame = new Float32Array(FRAME);
    let filled = 0;
    while (filled < FRAME) {
      const chunk = this.ready[0]!;
      const take = Math.min(FRAME - filled, chunk.length - this.readyOffset);
      frame.set(chunk.subarray(this.readyOffset, this.readyOffset + take), filled);
      filled += take;
      this.readyOffset += take;
      if (this.readyOffset === chunk.length) {
        this.ready.shift();
        this.readyOffset = 0;
      }
    }
    for (let index = 0; index < FRAME; index += 1) mix[index]! += frame[index]!;
    return volumeOf(frame);
  }

  close(): void {
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}

/** A call's audio; see the file's header. */
export class CallAudio {
  private readonly flows = new Map<number, RemoteFlow>();
  private encoder: AudioEncoder | null = null;
  private muted = false;
  private sequence = 0;
  private timestamp = 0;
  /** Level and timestamp of each frame in the encoder, in order. */
  private readonly encoding: { level: number; timestamp: number }[] = [];
  private lossHint = 0;
  private worstReport = 0;
  private lastReportAt = 0;
  private sent = 0;
  private posted = 0;
  private consumed = 0;
  private underruns = 0;
  private lead = MIN_PLAYOUT_LEAD;
  private leadChangedAt = 0;
  private readonly spare: Float32Array[] = [];
  private stopped = false;

  private constructor(
    readonly context: AudioContext,
    private readonly microphone: MediaStream,
    private readonly capture: AudioWorkletNode,
    /** The call's sound, before the speaker: connect a node to it to tap what the page plays. */
    readonly output: AudioWorkletNode,
    private readonly hooks: AudioHooks,
    private readonly now: () => number,
  ) {}

  /**
   * Opens the microphone (or takes `source`) and starts both directions.
   * `workletUrl` is worklet.js beside this module.
   */
  static async start(
    processing: VoiceProcessing,
    source: MediaStream | null,
    workletUrl: URL,
    hooks: AudioHooks,
    now: () => number,
  ): Promise<CallAudio> {
    const context = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
    try {
      await context.audioWorklet.addModule(workletUrl.href);
      const microphone =
        source ??
        (await navigator.mediaDevices.getUserMedia({
          audio: { ...processing, channelCount: 1, sampleRate: SAMPLE_RATE },
        }));
      const capture = new AudioWorkletNode(context, "opencalling-capture", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
      const output = new AudioWorkletNode(context, "opencalling-playout", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
      context.createMediaStreamSource(microphone).connect(capture);
      // The capture node outputs silence; connected, it is always rendered.
      capture.connect(context.destination);
      output.connect(context.destination);
      const audio = new CallAudio(context, microphone, capture, output, hooks, now);
      await audio.startEncoder();
      capture.port.onmessage = (event: MessageEvent<Float32Array<ArrayBuffer>>) => audio.onCaptured(event.data);
      output.port.onmessage = (event: MessageEvent) => audio.onPlayout(event.data);
      await context.resume();
      return audio;
    } catch (error) {
      void context.close();
      throw error;
    }
  }

  private encoderConfig(): AudioEncoderConfig {
    return {
      codec: "opus",
      sampleRate: SAMPLE_RATE,
      numberOfChannels: 1,
      bitrate: BITRATE,
      opus: { frameDuration: 20000, useinbandfec: true, packetlossperc: this.lossHint, complexity: 9 },
    } as AudioEncoderConfig;
  }

  private async startEncoder(): Promise<void> {
    const support = await AudioEncoder.isConfigSupported(this.encoderConfig());
    if (support.supported !== true) throw new Error("this browser's WebCodecs has no Opus encoder");
    this.encoder = new AudioEncoder({
      output: (chunk) => this.onEncoded(chunk),
      error: (error) => this.hooks.failed(`the Opus encoder failed: ${error.message}`),
    });
    this.encoder.configure(this.encoderConfig());
  }

  setMuted(muted: boolean): void {
    this.muted = muted;
  }

  /** The speaker route where the browser can choose one (`setSinkId`). */
  async setHandsFree(handsFree: boolean): Promise<void> {
    const context = this.context as AudioContext & { setSinkId?: (id: string) => Promise<void> };
    if (context.setSinkId === undefined) return;
    let sink = "";
    if (!handsFree) {
      const devices = await navigator.mediaDevices.enumerateDevices();
      if (devices.some((device) => device.kind === "audiooutput" && device.deviceId === "communications")) sink = "communications";
    }
    await context.setSinkId(sink);
  }

  private onCaptured(frame: Float32Array<ArrayBuffer>): void {
    if (this.stopped) return;
    const timestamp = this.timestamp;
    this.timestamp = (this.timestamp + FRAME) >>> 0;
    this.hooks.voiceLevel(null, this.muted ? 0 : volumeOf(frame));
    if (!this.muted && this.encoder !== null && this.encoder.state === "configured") {
      this.encoding.push({ level: levelByte(frame), timestamp });
      const data = new AudioData({
        format: "f32-planar",
        sampleRate: SAMPLE_RATE,
        numberOfFrames: FRAME,
        numberOfChannels: 1,
        timestamp: (timestamp / SAMPLE_RATE) * 1e6,
        data: frame,
      });
      this.encoder.encode(data);
      data.close();
    }
    // AudioData copied the samples: the buffer goes back to the worklet.
    this.capture.port.postMessage(frame, [frame.buffer]);
    this.everySecond();
  }

  private onEncoded(chunk: EncodedAudioChunk): void {
    const frame = this.encoding.shift();
    if (frame === undefined || this.stopped) return;
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    const encryption = this.hooks.encryption;
    const overhead = encryption === null ? 0 : MAX_OVERHEAD;
    if (payload.length > this.hooks.maxDatagramSize() - MAX_HEADER_LEN - overhead) return;
    const header: MediaHeader = { kind: DatagramKind.audio, flowId: 0, sequence: this.sequence, timestamp: frame.timestamp, level: frame.level };
    this.sequence = (this.sequence + 1) >>> 0;
    this.sent += 1;
    if (encryption === null) {
      this.hooks.sendDatagram(encodeDatagram(header, payload));
      return;
    }
    // Sealed or not sent at all: never our audio in the clear.
    void encryption.seal(encodeDatagram(header, new Uint8Array(0)), payload).then(
      (datagram) => {
        if (datagram !== null && !this.stopped) this.hooks.sendDatagram(datagram);
      },
      () => undefined,
    );
  }

  /** One datagram from the server. */
  handleDatagram(header: MediaHeader, payload: Uint8Array): void {
    if (this.stopped) return;
    if (header.kind === DatagramKind.lossReport) {
      // About our audio, from the member whose flow it carries.
      if (payload.length === 1 && payload[0]! <= 100) this.worstReport = Math.max(this.worstReport, payload[0]!);
      return;
    }
    if (header.kind !== DatagramKind.audio || this.hooks.userOfFlow(header.flowId) === null) return;
    const encryption = this.hooks.encryption;
    if (encryption === null) return this.insert(header, payload);
    // The header as its sender wrote it (flow 0) is what the frame authenticates.
    const metadata = encodeDatagram({ ...header, flowId: 0 }, new Uint8Array(0));
    void encryption.open(header.flowId, metadata, payload.slice()).then(
      (opened) => {
        if (opened !== null && !this.stopped) this.insert(header, opened);
      },
      () => undefined,
    );
  }

  /** A member's Opus packet into its jitter buffer. */
  private insert(header: MediaHeader, payload: Uint8Array): void {
    const samples = opusPacketSamples(payload);
    if (samples === 0) return;
    let flow = this.flows.get(header.flowId);
    if (flow === undefined) {
      flow = new RemoteFlow(() => this.produce());
      this.flows.set(header.flowId, flow);
    }
    flow.buffer.insert(this.now(), header.sequence, header.timestamp, header.level, payload.slice(), samples);
    if (flow.windowFirst === null) flow.windowFirst = header.sequence;
    flow.windowHighest = Math.max(flow.windowHighest, header.sequence);
    flow.windowReceived += 1;
  }

  /** A member left: its flow goes. */
  forgetFlow(flowId: number): void {
    this.flows.get(flowId)?.close();
    this.flows.delete(flowId);
  }

  private onPlayout(report: { consumed: number; underrun: number } | Float32Array): void {
    if (report instanceof Float32Array) {
      if (report.length === FRAME) this.spare.push(report);
      return;
    }
    this.consumed = report.consumed;
    const now = this.now();
    if (report.underrun > this.underruns && this.posted > SAMPLE_RATE) {
      // The worklet ran dry a second after playing had begun (before, the
      // page is still starting the call's audio): the main thread was late.
      this.lead = Math.min(MAX_PLAYOUT_LEAD, this.lead + LEAD_STEP);
      this.leadChangedAt = now;
    } else if (this.lead > MIN_PLAYOUT_LEAD && now - this.leadChangedAt > LEAD_RELAX_MS) {
      this.lead -= LEAD_STEP;
      this.leadChangedAt = now;
    }
    this.underruns = report.underrun;
    this.produce();
  }

  /** Keeps the playout worklet its lead ahead, one mixed frame at a time. */
  private produce(): void {
    if (this.stopped || this.flows.size === 0) return;
    const now = this.now();
    while (this.posted - this.consumed < this.lead) {
      for (const flow of this.flows.values()) if (!flow.prepare(now)) return;
      const mix = this.spare.pop() ?? new Float32Array(FRAME);
      mix.fill(0);
      for (const [flowId, flow] of this.flows) {
        const volume = flow.take(mix);
        const user = this.hooks.userOfFlow(flowId);
        if (user !== null) this.hooks.voiceLevel(user, volume);
        // A member who left: its flow goes once its last frame is out.
        else this.forgetFlow(flowId);
      }
      for (let index = 0; index < FRAME; index += 1) mix[index] = Math.max(-1, Math.min(1, mix[index]!));
      this.posted += FRAME;
      this.output.port.postMessage(mix, [mix.buffer]);
    }
  }

  /** Loss reports out, the encoder's loss hint in: once a second. */
  private everySecond(): void {
    const now = this.now();
    if (now - this.lastReportAt < LOSS_REPORT_MS) return;
    this.lastReportAt = now;
    for (const [flowId, flow] of this.flows) {
      if (flow.windowFirst === null) continue;
      const due = flow.windowHighest - flow.windowFirst + 1;
      if (due < LOSS_REPORT_MIN_PACKETS) continue;
      const lost = Math.max(0, due - flow.windowReceived);
      this.hooks.sendDatagram(lossReport(flowId, (100 * lost) / due));
      flow.windowFirst = null;
      flow.windowReceived = 0;
    }
    // The encoder protects as much as the worst receiver lost last second.
    if (this.worstReport !== this.lossHint && this.encoder?.state === "configured") {
      this.lossHint = this.worstReport;
      this.encoder.configure(this.encoderConfig());
    }
    this.worstReport = 0;
  }

  stats(): AudioStats {
    const remote: AudioStats["remote"] = {};
    for (const [flowId, flow] of this.flows) {
      const user = this.hooks.userOfFlow(flowId) ?? `flow ${flowId}`;
      remote[user] = { ...flow.buffer.stats(), decoded: flow.decoded, decodeErrors: flow.decodeErrors };
    }
    const outputLatencyMs = 1000 * ((this.context.baseLatency ?? 0) + (this.context.outputLatency ?? 0));
    const playoutLeadMs = this.lead / 48;
    return { sent: this.sent, outputLatencyMs, playoutLeadMs, lossHint: this.lossHint, underruns: this.underruns, remote };
  }

  /** Stops both directions; releases the microphone if it opened it. */
  stop(ownsMicrophone: boolean = true): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const flow of this.flows.values()) flow.close();
    this.flows.clear();
    if (this.encoder !== null && this.encoder.state !== "closed") this.encoder.close();
    if (ownsMicrophone) for (const track of this.microphone.getTracks()) track.stop();
    this.capture.disconnect();
    this.output.disconnect();
    void this.context.close();
  }
}
