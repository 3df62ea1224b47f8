// TRTCCalling for web pages: the calling component's API and events over
// the engine (engine.ts), a connection (transport.ts) and the call's audio
// (audio.ts). This is the thin, asynchronous part: it feeds the engine
// what arrives and when its timers are due, sends what it queues, hands
// its events to the listeners and settles each request's promise.

import { CallAudio, type AudioStats, type VoiceProcessing } from "./audio.js";
import { CallEngine, DEFAULT_RECONNECT, type CallingEvent, type UserVolume } from "./engine.js";
import { type AppKeys, type KeyProblem, MediaEncryption, keyFromHex } from "./e2ee.js";
import { CallingError, ErrorCode } from "./errors.js";
import { type ServerAddress, type Transport, connect } from "./transport.js";
import { FrameSplitter, WireError, decodeDatagram, decodeServerMessage, encodeClientFrame, isValidDeviceId } from "./wire.js";

/** The component's listener: implement the events you need. */
export interface CallingListener {
  onError?(code: number, msg: string): void;
  onInvited?(sponsor: string, userIdList: string[], isFromGroup: boolean, type: number): void;
  onReject?(userId: string): void;
  onNoResp?(userId: string): void;
  onLineBusy?(userId: string): void;
  onCallingCancel?(): void;
  onCallingTimeOut?(): void;
  onUserEnter?(userId: string): void;
  onUserLeave?(userId: string): void;
  onUserAudioAvailable?(userId: string, available: boolean): void;
  onUserVoiceVolume?(userVolumes: UserVolume[], totalVolume: number): void;
  /** The call is over for you; `reason` (docs/protocol.md's EndReason) is our addition. */
  onCallEnd?(reason: number): void;
  /** Beyond the original: the user logged in elsewhere. */
  onKickedOffline?(): void;
  /** Beyond the original: an invitation was answered on another device of yours. */
  onHandledElsewhere?(answer: "answered" | "declined"): void;
  /** Beyond the original: an invitee is offline and rings when it logs in. */
  onInviteeOffline?(userId: string): void;
  /** Beyond the original: the connection broke; the SDK is getting it back. */
  onReconnecting?(): void;
  onReconnected?(): void;
  onUserReconnecting?(userId: string): void;
  onUserReconnected?(userId: string): void;
  /**
   * Beyond the original (end-to-end encryption on): a member's audio does
   * not decrypt here and plays as silence; once per member until it does.
   * Your own user id with "missing": you have no key material, and the call
   * sends nothing.
   */
  onMediaKeyProblem?(userId: string, problem: KeyProblem): void;
}

/** How a TRTCCalling reaches its server and makes its audio. */
export interface CallingOptions {
  server: ServerAddress;
  /** This device, 1–64 of a-z A-Z 0-9 - _ (a random one per instance if not given). */
  deviceId?: string;
  /** The browser's echo cancellation, noise suppression and auto gain: all on unless turned off. */
  voiceProcessing?: Partial<VoiceProcessing>;
  /** A stream to send instead of the microphone (its processing is its own). */
  microphone?: MediaStream;
  /** Whether a broken connection is repaired (resume, or a new login): on unless false. */
  reconnect?: boolean;
  /** How often onUserVoiceVolume fires in a call, ms (300 unless set). */
  voiceVolumeIntervalMs?: number;
  /**
   * End-to-end encrypted audio with one key material every user shares
   * (32 to 128 hex digits): the server relays audio it cannot read, and a
   * call with a device that does not encrypt alike is refused (3008).
   */
  mediaKey?: string;
  /** The same with each user's own key material, by user id (not with `mediaKey`). */
  mediaKeys?: Record<string, string>;
}

const RECONNECT_BACKOFF_MS = [250, 500, 1000, 2000, 4000];

/** How long `destroy` waits for the server to confirm its logout. */
const DESTROY_LOGOUT_MS = 1000;

function randomDeviceId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "web-" + [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** The application's key material from the options; null for none. */
function appKeysOf(options: CallingOptions): AppKeys | null {
  if (options.mediaKey !== undefined && options.mediaKeys !== undefined) {
    throw new CallingError(ErrorCode.INVALID_PARAMETER, "either one shared media key or each user's, not both");
  }
  if (options.mediaKey !== undefined) return { shared: keyFromHex(options.mediaKey) };
  if (options.mediaKeys !== undefined) {
    return { perUser: new Map(Object.entries(options.mediaKeys).map(([user, hex]) => [user, keyFromHex(hex)])) };
  }
  return null;
}

let shared: TRTCCalling | null = null;

/** The calling component for web pages. */
export class TRTCCalling {
  private readonly engine = new CallEngine();
  private readonly listeners = new Set<CallingListener>();
  private readonly pending = new Map<number, { resolve: () => void; reject: (error: CallingError) => void }>();
  private transport: Transport | null = null;
  private splitter = new FrameSplitter();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private audio: CallAudio | null = null;
  private audioStarting = false;
  private handsFree = false;
  private reconnecting = false;
  private destroyed = false;
  private readonly options: CallingOptions;
  private readonly processing: VoiceProcessing;
  private readonly appKeys: AppKeys | null;
  private e2ee: MediaEncryption | null = null;
  readonly deviceId: string;

  constructor(options: CallingOptions) {
    this.options = options;
    this.deviceId = options.deviceId ?? randomDeviceId();
    if (!isValidDeviceId(this.deviceId)) throw new CallingError(ErrorCode.INVALID_PARAMETER, "a device id is 1–64 of a-z A-Z 0-9 - _");
    this.processing = {
      echoCancellation: options.voiceProcessing?.echoCancellation ?? true,
      noiseSuppression: options.voiceProcessing?.noiseSuppression ?? true,
      autoGainControl: options.voiceProcessing?.autoGainControl ?? true,
    };
    this.appKeys = appKeysOf(options);
    this.engine.setMediaEncryption(this.appKeys === null ? 0 : 1);
    this.engine.setDevice(this.deviceId);
    this.engine.setReconnect(options.reconnect === false ? null : DEFAULT_RECONNECT);
    if (options.voiceVolumeIntervalMs !== undefined) this.engine.setVoiceVolumeInterval(options.voiceVolumeIntervalMs);
  }

  /** The page's one instance (made with `options` the first time). */
  static sharedInstance(options?: CallingOptions): TRTCCalling {
    if (shared === null) {
      if (options === undefined) throw new CallingError(ErrorCode.INVALID_PARAMETER, "the first sharedInstance() needs the server's address");
      shared = new TRTCCalling(options);
    }
    return shared;
  }

  /** Destroys the shared instance; the next sharedInstance makes a fresh one. */
  static destroySharedInstance(): void {
    shared?.destroy();
    shared = null;
  }

  registerListener(listener: CallingListener): void {
    this.listeners.add(listener);
  }

  unRegisterListener(listener: CallingListener): void {
    this.listeners.delete(listener);
  }

  /** Connects and logs in; rejects with a CallingError (its `code` from docs/protocol.md). */
  async login(sdkAppId: number, userId: string, userSig: string): Promise<void> {
    this.checkAlive();
    if (this.transport !== null || this.engine.status() !== "loggedOut") throw new CallingError(ErrorCode.ALREADY_LOGGED_IN);
    // Bad arguments are refused before anything goes on the network.
    CallEngine.checkLogin(sdkAppId, userId, userSig);
    const transport = await this.open();
    let request: number;
    try {
      request = this.engine.login(sdkAppId, userId, userSig);
    } catch (error) {
      transport.close();
      throw error;
    }
    this.e2ee = this.appKeys === null ? null : new MediaEncryption(this.appKeys, userId);
    this.transport = transport;
    try {
      await this.request(request);
    } catch (error) {
      // Refused: the server closes this connection; a new login opens its own.
      if (this.transport === transport) this.dropTransport();
      throw error;
    }
  }

  /** Logs out; a call in progress ends as a hangup. */
  async logout(): Promise<void> {
    this.checkAlive();
    const done = this.request(this.engine.logout());
    try {
      await done;
    } finally {
      this.stopAudio();
      this.dropTransport();
      // The close is ours: the engine's logout is over with it.
      this.engine.handleDisconnect();
      this.pump();
    }
  }

  /** Invites `userId` (type 1 audio, 2 video): a new call, or into the current one. */
  async call(userId: string, type: number = 1): Promise<void> {
    this.checkAlive();
    await this.request(this.engine.call(userId, type));
  }

  /** Invites several users into a new (or the current) call, one invitation each. */
  async groupCall(userIdList: string[], type: number = 1): Promise<void> {
    for (const userId of userIdList) await this.call(userId, type);
  }

  async accept(): Promise<void> {
    this.checkAlive();
    await this.request(this.engine.accept());
  }

  async reject(): Promise<void> {
    this.checkAlive();
    await this.request(this.engine.reject());
  }

  /** Ends your part: cancels while dialing, rejects while ringing, leaves a call. */
  async hangup(): Promise<void> {
    this.checkAlive();
    await this.request(this.engine.hangup());
  }

  /** Stops (true) or resumes (false) sending your audio. */
  setMicMute(isMute: boolean): void {
    this.engine.setMicMute(isMute);
    this.audio?.setMuted(isMute);
    this.pump();
  }

  /**
   * Hands-free (the speaker) or not. A browser has no earpiece: where it
   * can pick an output (`setSinkId`), off picks the system's
   * communications device when there is one, on the default output.
   * The browser's echo cancellation is what makes the speaker usable.
   */
  setHandsFree(isHandsFree: boolean): void {
    this.handsFree = isHandsFree;
    void this.audio?.setHandsFree(isHandsFree).catch(() => undefined);
  }

  /** The user logged in, or null. */
  userId(): string | null {
    return this.engine.userId();
  }

  /** The call's sound before the speaker (null out of a call): connect a node to it to record or analyse what the page plays. */
  audioOutput(): AudioNode | null {
    return this.audio?.output ?? null;
  }

  /** Where the session stands, and the call's audio figures. */
  stats(): { status: string; transport: string | null; audio: AudioStats | null } {
    return { status: this.engine.status(), transport: this.transport?.kind ?? null, audio: this.audio?.stats() ?? null };
  }

  /**
   * Releases everything: the call, the session, the microphone. A session
   * is logged out first (the server then knows at once, rather than after
   * its resume grace), for at most a second, while nothing more is heard.
   */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.listeners.clear();
    this.stopAudio();
    const release = () => {
      this.dropTransport();
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
    };
    if (!this.engine.isLoggedIn() || this.transport === null) return release();
    const loggedOut = this.request(this.engine.logout());
    const patience = new Promise((resolve) => setTimeout(resolve, DESTROY_LOGOUT_MS));
    void Promise.race([loggedOut, patience]).catch(() => undefined).finally(release);
  }

  private checkAlive(): void {
    if (this.destroyed) throw new CallingError(ErrorCode.NOT_LOGGED_IN, "this instance was destroyed");
  }

  private open(): Promise<Transport> {
    const splitter = new FrameSplitter();
    this.splitter = splitter;
    let me: Transport | null = null;
    return connect(this.options.server, {
      onBytes: (bytes) => this.onBytes(splitter, bytes),
      onDatagram: (datagram) => {
        if (me !== this.transport) return;
        try {
          const { header, payload } = decodeDatagram(datagram);
          this.audio?.handleDatagram(header, payload);
        } catch (error) {
          if (!(error instanceof WireError)) throw error;
        }
      },
      onClose: () => {
        if (me !== null && me === this.transport) this.onDisconnected();
      },
    }).then((transport) => {
      me = transport;
      return transport;
    });
  }

  private onBytes(splitter: FrameSplitter, bytes: Uint8Array): void {
    if (splitter !== this.splitter) return;
    try {
      for (const payload of splitter.push(bytes)) this.engine.handleMessage(performance.now(), decodeServerMessage(payload));
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      // A server that breaks the protocol: the connection is useless.
      console.warn("opencalling: the server broke the protocol:", error.message);
      this.dropTransport();
      this.engine.handleDisconnect();
    }
    this.pump();
  }

  private onDisconnected(): void {
    this.transport = null;
    this.engine.handleDisconnect();
    this.pump();
  }

  private dropTransport(): void {
    const transport = this.transport;
    this.transport = null;
    transport?.close();
  }

  private request(request: number): Promise<void> {
    const promise = new Promise<void>((resolve, reject) => this.pending.set(request, { resolve, reject }));
    this.pump();
    return promise;
  }

  /** After every input: transmits, then events, then completions; then the next timer and what the state needs. */
  private pump(): void {
    this.exchangeKeys();
    for (let message = this.engine.pollTransmit(); message !== null; message = this.engine.pollTransmit()) {
      this.transport?.sendBytes(encodeClientFrame(message));
    }
    for (let event = this.engine.pollEvent(); event !== null; event = this.engine.pollEvent()) this.dispatch(event);
    for (let completion = this.engine.pollCompletion(); completion !== null; completion = this.engine.pollCompletion()) {
      const waiting = this.pending.get(completion.request);
      this.pending.delete(completion.request);
      if (waiting === undefined) continue;
      if (completion.error === null) waiting.resolve();
      else waiting.reject(completion.error);
    }
    this.followState();
    this.armTimer();
  }

  /**
   * End-to-end encryption: the members' key words in, ours out to each
   * member who lacks it; out of a call, the call's keys forgotten.
   */
  private exchangeKeys(): void {
    const e2ee = this.e2ee;
    const call = this.engine.currentCall();
    if (e2ee === null || call === null) {
      e2ee?.endCall();
      while (this.engine.pollMemberKey() !== null);
      return;
    }
    for (let word = this.engine.pollMemberKey(); word !== null; word = this.engine.pollMemberKey()) e2ee.heard(word.from, word.payload);
    for (const [to, payload] of e2ee.wordsFor(performance.now(), call.members)) this.engine.sendMemberKey(to, payload);
  }

  private armTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const deadline = this.engine.pollTimeout();
    if (deadline === null || this.destroyed) return;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.engine.handleTimeout(performance.now());
        this.pump();
      },
      Math.max(0, deadline - performance.now()),
    );
  }

  /** Audio while in a call; a new connection while the session waits for one. */
  private followState(): void {
    const inCall = this.engine.status() === "inCall";
    if (inCall && this.audio === null && !this.audioStarting) this.startAudio();
    if (!inCall && this.audio !== null) this.stopAudio();
    if (this.engine.wantsConnection() && !this.reconnecting && !this.destroyed) void this.reconnect();
  }

  private startAudio(): void {
    this.audioStarting = true;
    const hooks = {
      sendDatagram: (datagram: Uint8Array) => this.transport?.sendDatagram(datagram),
      maxDatagramSize: () => this.transport?.maxDatagramSize ?? 1200,
      userOfFlow: (flowId: number) => this.engine.userOfFlow(flowId),
      voiceLevel: (userId: string | null, volume: number) => {
        const user = userId ?? this.engine.userId();
        if (user !== null) this.engine.recordVoiceLevel(user, volume);
      },
      failed: (message: string) => this.emit((listener) => listener.onError?.(ErrorCode.INTERNAL, message)),
      encryption: this.encryptionHooks(),
    };
    const workletUrl = new URL("./worklet.js", import.meta.url);
    CallAudio.start(this.processing, this.options.microphone ?? null, workletUrl, hooks, () => performance.now()).then(
      (audio) => {
        this.audioStarting = false;
        if (this.engine.status() !== "inCall" || this.destroyed) {
          audio.stop();
          return;
        }
        this.audio = audio;
        audio.setMuted(this.engine.isMicMuted());
        void audio.setHandsFree(this.handsFree).catch(() => undefined);
      },
      (error: unknown) => {
        this.audioStarting = false;
        const message = error instanceof Error ? error.message : String(error);
        this.emit((listener) => listener.onError?.(ErrorCode.INTERNAL, `the call's audio could not start: ${message}`));
      },
    );
  }

  /** How the call's audio seals and opens, with end-to-end encryption on. */
  private encryptionHooks() {
    const e2ee = this.e2ee;
    if (e2ee === null) return null;
    const me = this.engine.userId();
    if (!e2ee.canSeal() && me !== null) this.emit((listener) => listener.onMediaKeyProblem?.(me, "missing"));
    return {
      seal: (metadata: Uint8Array, payload: Uint8Array) => e2ee.seal(performance.now(), metadata, payload),
      open: async (flowId: number, metadata: Uint8Array, frame: Uint8Array): Promise<Uint8Array | null> => {
        const from = this.engine.userOfFlow(flowId);
        if (from === null) return null;
        const opened = await e2ee.open(performance.now(), from, metadata, frame);
        if ("payload" in opened) return opened.payload;
        const problem = opened.problem;
        if (problem !== null) this.emit((listener) => listener.onMediaKeyProblem?.(from, problem));
        return null;
      },
    };
  }

  private stopAudio(): void {
    const audio = this.audio;
    this.audio = null;
    audio?.stop(this.options.microphone === undefined);
  }

  /** Opens connections until one answers, with backoff, while the session wants one. */
  private async reconnect(): Promise<void> {
    this.reconnecting = true;
    try {
      for (let attempt = 0; this.engine.wantsConnection() && !this.destroyed; attempt += 1) {
        const backoff = RECONNECT_BACKOFF_MS[Math.min(attempt, RECONNECT_BACKOFF_MS.length - 1)]!;
        await new Promise((resolve) => setTimeout(resolve, backoff));
        if (!this.engine.wantsConnection() || this.destroyed) return;
        try {
          const transport = await this.open();
          if (!this.engine.wantsConnection() || this.destroyed) {
            transport.close();
            return;
          }
          this.transport = transport;
          this.engine.handleConnected(performance.now());
          this.pump();
          return;
        } catch {
          // Not yet: the next attempt, after a longer wait.
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  private emit(call: (listener: CallingListener) => void): void {
    for (const listener of [...this.listeners]) {
      try {
        call(listener);
      } catch (error) {
        console.error("opencalling: a listener threw", error);
      }
    }
  }

  private dispatch(event: CallingEvent): void {
    switch (event.type) {
      case "error":
        return this.emit((listener) => listener.onError?.(event.code, event.msg));
      case "invited":
        return this.emit((listener) => listener.onInvited?.(event.sponsor, event.userIds, event.isFromGroup, event.callType));
      case "reject":
        return this.emit((listener) => listener.onReject?.(event.userId));
      case "noResp":
        return this.emit((listener) => listener.onNoResp?.(event.userId));
      case "lineBusy":
        return this.emit((listener) => listener.onLineBusy?.(event.userId));
      case "inviteeOffline":
        return this.emit((listener) => listener.onInviteeOffline?.(event.userId));
      case "callingCancel":
        return this.emit((listener) => listener.onCallingCancel?.());
      case "callingTimeOut":
        return this.emit((listener) => listener.onCallingTimeOut?.());
      case "handledElsewhere":
        return this.emit((listener) => listener.onHandledElsewhere?.(event.answer));
      case "userEnter":
        return this.emit((listener) => listener.onUserEnter?.(event.userId));
      case "userLeave":
        return this.emit((listener) => listener.onUserLeave?.(event.userId));
      case "userAudioAvailable":
        return this.emit((listener) => listener.onUserAudioAvailable?.(event.userId, event.available));
      case "userVoiceVolume":
        return this.emit((listener) => listener.onUserVoiceVolume?.(event.userVolumes, event.totalVolume));
      case "callEnd":
        return this.emit((listener) => listener.onCallEnd?.(event.reason));
      case "kickedOffline":
        return this.emit((listener) => listener.onKickedOffline?.());
      case "reconnecting":
        return this.emit((listener) => listener.onReconnecting?.());
      case "reconnected":
        return this.emit((listener) => listener.onReconnected?.());
      case "userReconnecting":
        return this.emit((listener) => listener.onUserReconnecting?.(event.userId));
      case "userReconnected":
        return this.emit((listener) => listener.onUserReconnected?.(event.userId));
    }
  }
}
