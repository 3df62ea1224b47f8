// The client's call logic, sans-IO: what each API call means in each state
// and how server messages become the calling component's events. A port of
// the native SDK's engine (the `signaling-proto` crate's `CallEngine`),
// rule for rule, so that a page sees the same events in the same order as
// a native app. It reads no clock (every input takes `now`, in
// milliseconds) and touches no socket: the driver (calling.ts) feeds it
// messages and drains three queues after every input — transmits first,
// then events, then completions.

import {
  type ClientMessage,
  EndReason,
  type ServerMessage,
  PROTOCOL_VERSION,
  isNumberedClientMessage,
  isNumberedServerMessage,
  isValidUserId,
} from "./wire.js";
import { ErrorCode, CallingError } from "./errors.js";

/** One user's voice level in an `onUserVoiceVolume` report. */
export interface UserVolume {
  userId: string;
  volume: number;
}

/** The events of the calling component, as the engine raises them. */
export type CallingEvent =
  | { type: "error"; code: number; msg: string }
  | { type: "invited"; sponsor: string; userIds: string[]; isFromGroup: boolean; callType: number }
  | { type: "reject"; userId: string }
  | { type: "noResp"; userId: string }
  | { type: "lineBusy"; userId: string }
  | { type: "inviteeOffline"; userId: string }
  | { type: "callingCancel" }
  | { type: "callingTimeOut" }
  | { type: "handledElsewhere"; answer: "answered" | "declined" }
  | { type: "userEnter"; userId: string }
  | { type: "userLeave"; userId: string }
  | { type: "userAudioAvailable"; userId: string; available: boolean }
  | { type: "userVoiceVolume"; userVolumes: UserVolume[]; totalVolume: number }
  | { type: "callEnd"; reason: number }
  | { type: "kickedOffline" }
  | { type: "reconnecting" }
  | { type: "reconnected" }
  | { type: "userReconnecting"; userId: string }
  | { type: "userReconnected"; userId: string };

/** The server's verdict on one request. */
export interface Completion {
  request: number;
  error: CallingError | null;
}

/** An invitation as the invitee sees it. */
interface Invitation {
  callId: bigint;
  sponsor: string;
  userIds: string[];
  callType: number;
}

type State =
  | { kind: "idle" }
  | { kind: "dialing"; request: number; invitees: string[] }
  | { kind: "ringing"; invitation: Invitation }
  | { kind: "accepting"; request: number; invitation: Invitation }
  | { kind: "inCall"; callId: bigint; members: Set<string>; flows: Map<string, number>; invited: Set<string> };

type LoginState = { kind: "loggedOut" } | { kind: "loggingIn"; request: number } | { kind: "loggedIn" } | { kind: "loggingOut" };

type Connection = "up" | "down" | "resuming" | "loggingInAgain";

type RequestKind = { kind: "login" | "logout" | "accept" | "reject" | "hangup" | "answeredHere" } | { kind: "invite"; invitee: string };

/** A call hung up here whose end the server has not confirmed. */
type Leaving = { afterReply: number } | { call: bigint };

type Timer = "voiceVolumeReport" | "heartbeat" | "liveness" | "sessionExpiry";

/** How the engine watches its connection, with reconnection on. */
export interface ReconnectTimings {
  /** Milliseconds between heartbeats (the server answers each). */
  heartbeatIntervalMs: number;
  /** Nothing from the server for this long, while an answer is due, and the connection is dead. */
  deadAfterMs: number;
}

/** A heartbeat a second; dead after 3 s of silence (the native SDK's). */
export const DEFAULT_RECONNECT: ReconnectTimings = { heartbeatIntervalMs: 1000, deadAfterMs: 3000 };

/** The original's 300 ms between voice volume reports. */
export const DEFAULT_VOICE_VOLUME_INTERVAL_MS = 300;

/** A resumable session acknowledges at least every this many numbered messages. */
export const ACKNOWLEDGE_EVERY = 64;

const REPLAY_CAPACITY = 1024;

/** Each side's numbered messages: sent and unacknowledged, and how many came in. */
class Replay {
  sent = 0;
  received = 0;
  private kept: ClientMessage[] = [];

  recordSent(message: ClientMessage): boolean {
    if (this.kept.length >= REPLAY_CAPACITY) return false;
    this.sent += 1;
    this.kept.push(message);
    return true;
  }

  /** Forgets what the peer has; false for a count it cannot have. */
  acknowledge(count: number): boolean {
    const keptFrom = this.sent - this.kept.length;
    if (count < keptFrom || count > this.sent) return false;
    this.kept.splice(0, count - keptFrom);
    return true;
  }

  unacknowledged(): ClientMessage[] {
    return [...this.kept];
  }
}

const MAX_USER_SIG_LEN = 2048;
const MAX_USER_DATA_LEN = 4096;

/** The client's call logic; see the file's header. */
export class CallEngine {
  private me: string | null = null;
  private voiceVolumeIntervalMs = DEFAULT_VOICE_VOLUME_INTERVAL_MS;
  private readonly timers = new Map<Timer, number>();
  private voiceLevels = new Map<string, number>();
  private login_: LoginState = { kind: "loggedOut" };
  private state: State = { kind: "idle" };
  private leaving: Leaving[] = [];
  private held: Invitation | null = null;
  private muted = false;
  private nextRequest = 1;
  private readonly requests = new Map<number, RequestKind>();
  private reconnect: ReconnectTimings | null = null;
  private credentials: { sdkAppId: number; userSig: string } | null = null;
  private device: string | null = null;
  private mediaEncryption = 0;
  /** Members' key words for the current call, oldest first. */
  private memberKeys: { from: string; payload: Uint8Array }[] = [];
  private connection: Connection = "up";
  private token: Uint8Array | null = null;
  private graceMs: number | null = null;
  private lastHeard: number | null = null;
  private replay = new Replay();
  private handshake: ClientMessage | null = null;
  private resend: ClientMessage[] = [];
  private acknowledged = 0;
  private transmits: ClientMessage[] = [];
  private readonly events: CallingEvent[] = [];
  private readonly completions: Completion[] = [];

  /** Throws what a login with these arguments is refused for before it is sent. */
  static checkLogin(sdkAppId: number, userId: string, userSig: string): void {
    if (!isValidUserId(userId)) throw new CallingError(ErrorCode.INVALID_USER_ID);
    if (userSig.length === 0 || new TextEncoder().encode(userSig).length > MAX_USER_SIG_LEN) {
      throw new CallingError(ErrorCode.USERSIG_MALFORMED, `a UserSig is 1 to ${MAX_USER_SIG_LEN} bytes`);
    }
    if (!Number.isInteger(sdkAppId) || sdkAppId < 0 || sdkAppId > 0xffffffff) {
      throw new CallingError(ErrorCode.INVALID_PARAMETER, "an sdkAppId is a 32-bit unsigned number");
    }
  }

  /** Starts a login; completes when the server answers. */
  login(sdkAppId: number, userId: string, userSig: string): number {
    if (this.login_.kind !== "loggedOut") throw new CallingError(ErrorCode.ALREADY_LOGGED_IN);
    CallEngine.checkLogin(sdkAppId, userId, userSig);
    const request = this.register({ kind: "login" });
    this.login_ = { kind: "loggingIn", request };
    this.me = userId;
    this.state = { kind: "idle" };
    this.leaving = [];
    this.held = null;
    this.credentials = { sdkAppId, userSig };
    this.connection = "up";
    this.token = null;
    this.replay = new Replay();
    this.resend = [];
    this.handshake = null;
    this.transmits.push({
      type: "login",
      protocolVersion: PROTOCOL_VERSION,
      sdkAppId,
      userId,
      userSig,
      deviceId: this.device,
      mediaEncryption: this.mediaEncryption,
    });
    return request;
  }

  /** Whether a logout was sent and the server's close not yet seen. */
  isLoggingOut(): boolean {
    return this.login_.kind === "loggingOut";
  }

  /** Whether a session is up (logged in). */
  isLoggedIn(): boolean {
    return this.login_.kind === "loggedIn";
  }

  /** Logs out; a call in progress ends as a hangup. */
  logout(): number {
    this.requireLogin();
    this.abandonCall();
    const request = this.register({ kind: "logout" });
    this.login_ = { kind: "loggingOut" };
    this.timers.delete("heartbeat");
    this.timers.delete("liveness");
    if (this.connection !== "up") {
      // Nobody to tell: the server ends the session when its grace runs out.
      this.requests.delete(request);
      this.finishLogout();
      this.complete(request, null);
      return request;
    }
    this.transmits.push({ type: "logout", requestId: request });
    return request;
  }

  /** Names this device in the logins that follow. */
  setDevice(device: string | null): void {
    this.device = device;
  }

  /** How the logins that follow encrypt audio end to end: 0 not at all, 1 with the application's keys. */
  setMediaEncryption(kind: number): void {
    this.mediaEncryption = kind;
  }

  /** Sends a key word to a member of the current call (end-to-end encryption). */
  sendMemberKey(to: string, payload: Uint8Array): void {
    if (this.login_.kind === "loggedIn" && this.state.kind === "inCall") this.transmits.push({ type: "memberKey", to, payload });
  }

  /** The next key word a member of the current call sent. */
  pollMemberKey(): { from: string; payload: Uint8Array } | null {
    return this.memberKeys.shift() ?? null;
  }

  /** Reconnection on (with these timings) or off. */
  setReconnect(timings: ReconnectTimings | null): void {
    this.reconnect = timings;
  }

  /** Whether the session waits for a new connection. */
  wantsConnection(): boolean {
    return this.reconnect !== null && this.login_.kind === "loggedIn" && this.connection === "down";
  }

  /** Whether the session is between `reconnecting` and `reconnected`. */
  isReconnecting(): boolean {
    return this.login_.kind === "loggedIn" && this.connection !== "up";
  }

  /** A new connection is open: queues the resume, or a new login. */
  handleConnected(now: number): void {
    if (!this.wantsConnection() || this.credentials === null || this.me === null) return;
    const { sdkAppId, userSig } = this.credentials;
    if (this.token !== null) {
      this.connection = "resuming";
      this.handshake = {
        type: "resume",
        protocolVersion: PROTOCOL_VERSION,
        sdkAppId,
        userId: this.me,
        userSig,
        token: this.token,
        received: this.replay.received,
      };
    } else {
      this.connection = "loggingInAgain";
      this.handshake = {
        type: "login",
        protocolVersion: PROTOCOL_VERSION,
        sdkAppId,
        userId: this.me,
        userSig,
        deviceId: this.device,
        mediaEncryption: this.mediaEncryption,
      };
    }
    this.heardFromServer(now);
  }

  /** Invites `userId`: into a new call when idle, into the current call when in one. */
  call(userId: string, callType: number, timeoutMs: number | null = null, userData: string | null = null): number {
    this.requireLogin();
    if (!isValidUserId(userId)) throw new CallingError(ErrorCode.INVALID_USER_ID);
    if (userId === this.me) throw new CallingError(ErrorCode.CANNOT_CALL_SELF);
    if (callType !== 1 && callType !== 2) throw new CallingError(ErrorCode.INVALID_CALL_TYPE);
    if (timeoutMs !== null && (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 0xffffffff)) {
      throw new CallingError(ErrorCode.INVALID_PARAMETER, "a timeout is a positive number of milliseconds");
    }
    if (userData !== null && new TextEncoder().encode(userData).length > MAX_USER_DATA_LEN) {
      throw new CallingError(ErrorCode.INVALID_PARAMETER, `user data is at most ${MAX_USER_DATA_LEN} bytes`);
    }
    const state = this.state;
    switch (state.kind) {
      case "idle":
        break;
      case "inCall":
        if (state.members.has(userId) || state.invited.has(userId)) throw new CallingError(ErrorCode.ALREADY_IN_CALL);
        break;
      case "dialing":
        throw new CallingError(ErrorCode.WRONG_CALL_STATE, "the previous call() has not been answered by the server yet");
      case "ringing":
      case "accepting":
        throw new CallingError(ErrorCode.WRONG_CALL_STATE, "an invitation is ringing: accept or reject it first");
    }
    const request = this.register({ kind: "invite", invitee: userId });
    let callId: bigint | null = null;
    if (state.kind === "inCall") {
      state.invited.add(userId);
      callId = state.callId;
    } else {
      this.state = { kind: "dialing", request, invitees: [userId] };
    }
    this.transmits.push({ type: "invite", requestId: request, callId, userIds: [userId], callType, timeoutMs, userData });
    return request;
  }

  /** Accepts the ringing invitation. */
  accept(): number {
    this.requireLogin();
    const invitation = this.takeRinging();
    const request = this.register({ kind: "accept" });
    this.transmits.push({ type: "accept", requestId: request, callId: invitation.callId });
    this.state = { kind: "accepting", request, invitation };
    return request;
  }

  /** Rejects the ringing invitation. */
  reject(): number {
    this.requireLogin();
    const invitation = this.takeRinging();
    const request = this.register({ kind: "reject" });
    this.transmits.push({ type: "reject", requestId: request, callId: invitation.callId });
    return request;
  }

  /** Cancels while dialing, rejects while ringing, leaves a call. */
  hangup(): number {
    this.requireLogin();
    if (this.state.kind === "ringing") return this.reject();
    if (this.state.kind === "idle") throw new CallingError(ErrorCode.NOT_IN_CALL);
    this.abandonCall();
    const request = this.register({ kind: "hangup" });
    this.transmits.push({ type: "hangup", requestId: request });
    if (this.isReconnecting()) {
      // The user is done with the call now: it ends here at once, and the
      // hangup goes out on the resumed session.
      this.endAbandonedCalls();
      this.requests.set(request, { kind: "answeredHere" });
      this.complete(request, null);
    }
    return request;
  }

  /** Mutes or unmutes; members hear of it as audio availability. */
  setMicMute(muted: boolean): void {
    if (this.muted === muted) return;
    this.muted = muted;
    if (this.login_.kind === "loggedIn") this.transmits.push({ type: "microphone", muted });
  }

  isMicMuted(): boolean {
    return this.muted;
  }

  /** The logged-in (or logging-in) user. */
  userId(): string | null {
    return this.me;
  }

  /** The current call and its members who entered, or null out of a call. */
  currentCall(): { callId: bigint; members: string[] } | null {
    if (this.state.kind !== "inCall") return null;
    return { callId: this.state.callId, members: [...this.state.members].sort() };
  }

  /** Where the engine stands, in a word (for display and tests). */
  status(): "loggedOut" | "loggingIn" | "idle" | "dialing" | "ringing" | "accepting" | "inCall" {
    switch (this.login_.kind) {
      case "loggedOut":
      case "loggingOut":
        return "loggedOut";
      case "loggingIn":
        return "loggingIn";
      case "loggedIn":
        return this.state.kind;
    }
  }

  /** The member whose audio comes with `flowId` in the current call. */
  userOfFlow(flowId: number): string | null {
    if (this.state.kind !== "inCall") return null;
    for (const [user, flow] of this.state.flows) if (flow === flowId) return user;
    return null;
  }

  /** How often `onUserVoiceVolume` fires in a call (at least 10 ms). */
  setVoiceVolumeInterval(intervalMs: number): void {
    this.voiceVolumeIntervalMs = Math.max(10, intervalMs);
  }

  /** A measured level (0–100) of the local user or a member; the report takes the loudest. */
  recordVoiceLevel(userId: string, volume: number): void {
    if (this.state.kind !== "inCall") return;
    if (this.me !== userId && !this.state.members.has(userId)) return;
    const level = Math.min(100, Math.max(0, Math.round(volume)));
    this.voiceLevels.set(userId, Math.max(this.voiceLevels.get(userId) ?? 0, level));
  }

  /** When `handleTimeout` next has work, or null. */
  pollTimeout(): number | null {
    let earliest: number | null = null;
    for (const deadline of this.timers.values()) if (earliest === null || deadline < earliest) earliest = deadline;
    return earliest;
  }

  /** Fires the timers that are due. */
  handleTimeout(now: number): void {
    for (;;) {
      let due: [Timer, number] | null = null;
      for (const [timer, deadline] of this.timers) if (deadline <= now && (due === null || deadline < due[1])) due = [timer, deadline];
      if (due === null) return;
      const [timer, deadline] = due;
      this.timers.delete(timer);
      switch (timer) {
        case "voiceVolumeReport":
          this.reportVoiceVolume(now, deadline);
          break;
        case "heartbeat":
          this.sendHeartbeat();
          this.scheduleHeartbeat(now);
          break;
        case "liveness":
          this.connectionBroke();
          break;
        case "sessionExpiry":
          if (this.login_.kind === "loggedIn" && this.connection === "down") this.loseSession(EndReason.connectionLost);
          break;
      }
    }
  }

  private reportVoiceVolume(now: number, due: number): void {
    if (this.state.kind !== "inCall") return;
    const users = [...(this.me === null ? [] : [this.me]), ...[...this.state.members].sort()];
    const userVolumes = users.map((userId) => ({ userId, volume: this.voiceLevels.get(userId) ?? 0 }));
    this.voiceLevels = new Map();
    // The original's total is the remote members' volume: your own voice
    // must not light a "someone is speaking" indicator.
    const totalVolume = Math.max(0, ...userVolumes.filter((user) => user.userId !== this.me).map((user) => user.volume));
    this.events.push({ type: "userVoiceVolume", userVolumes, totalVolume });
    let next = due + this.voiceVolumeIntervalMs;
    if (next <= now) next = now + this.voiceVolumeIntervalMs;
    this.timers.set("voiceVolumeReport", next);
  }

  /** Feeds one message from the server, received at `now`. */
  handleMessage(now: number, message: ServerMessage): void {
    if (isNumberedServerMessage(message) && this.login_.kind !== "loggedOut") {
      this.replay.received += 1;
      if (this.token !== null && this.replay.received - this.acknowledged >= ACKNOWLEDGE_EVERY) this.sendHeartbeat();
    }
    this.heardFromServer(now);
    switch (message.type) {
      case "loginResult":
        return this.onLoginResult(message.code, message.message);
      case "session":
        if (this.login_.kind === "loggedIn") {
          this.token = message.token;
          this.graceMs = message.graceMs;
          this.scheduleHeartbeat(now);
          this.heardFromServer(now);
        }
        return;
      case "resumed":
        return this.onResumed(now, message.token, message.received);
      case "heartbeatAck":
        this.replay.acknowledge(message.received);
        return;
      case "memberConnection":
        return this.onMemberConnection(message.callId, message.userId, message.connected);
      case "ack":
        return this.onAck(now, message.requestId, message.callId);
      case "error":
        if (message.requestId !== null) return this.onRequestFailed(message.requestId, new CallingError(message.code, message.message));
        return this.onNotice(message.code, message.message);
      case "invited":
        return this.onInvited({ callId: message.callId, sponsor: message.sponsor, userIds: message.userIds, callType: message.callType });
      case "rejected":
        return this.onInviteeAnswer(message.callId, { type: "reject", userId: message.userId });
      case "noResponse":
        return this.onInviteeAnswer(message.callId, { type: "noResp", userId: message.userId });
      case "lineBusy":
        return this.onInviteeAnswer(message.callId, { type: "lineBusy", userId: message.userId });
      case "inviteeOffline":
        return this.onInviteeAnswer(message.callId, { type: "inviteeOffline", userId: message.userId });
      case "cancelled":
        this.onInvitationOver(message.callId, { type: "callingCancel" });
        return;
      case "handledElsewhere":
        if (this.onInvitationOver(message.callId, { type: "callingCancel" })) {
          this.events.push({ type: "handledElsewhere", answer: message.answer });
        }
        return;
      case "invitationTimedOut":
        this.onInvitationOver(message.callId, { type: "callingTimeOut" });
        return;
      case "userEntered":
        return this.onUserEntered(message.callId, message.userId, message.flowId, message.audioAvailable);
      case "userLeft":
        return this.onUserLeft(message.callId, message.userId);
      case "audioAvailability":
        return this.onAudioAvailability(message.callId, message.userId, message.available);
      case "callEnded":
        return this.onCallEnded(message.callId, message.reason);
      case "kicked":
        this.endSession(ErrorCode.KICKED_OFFLINE, "logged in elsewhere", EndReason.kicked);
        this.events.push({ type: "kickedOffline" });
        return;
      case "pong":
        return;
      case "redirect":
        // Where a draining server's clients may go: a page has one address
        // (and its certificate hashes), so it does not follow.
        return;
      case "memberKey":
        if (this.state.kind === "inCall" && this.state.callId === message.callId && this.state.members.has(message.from)) {
          this.memberKeys.push({ from: message.from, payload: message.payload });
        }
        return;
    }
  }

  private onNotice(code: number, message: string): void {
    if (code === ErrorCode.SERVER_SHUTDOWN && this.reconnect !== null && this.login_.kind === "loggedIn") {
      // A restart or rolling upgrade: as after losing the server, the next
      // connection logs in again.
      this.connectionBroke();
      this.loseSession(EndReason.serverShutdown);
    } else if (code === ErrorCode.SERVER_SHUTDOWN || code === ErrorCode.PROTOCOL_ERROR || code === ErrorCode.LOGGED_OUT_BY_OPERATOR) {
      const reason =
        code === ErrorCode.SERVER_SHUTDOWN
          ? EndReason.serverShutdown
          : code === ErrorCode.LOGGED_OUT_BY_OPERATOR
            ? EndReason.loggedOutByOperator
            : EndReason.connectionLost;
      this.endSession(code, message, reason);
    } else {
      this.events.push({ type: "error", code, msg: message });
    }
  }

  /** The connection is gone. */
  handleDisconnect(): void {
    switch (this.login_.kind) {
      case "loggedOut":
        return;
      case "loggingOut":
        return this.finishLogout();
      case "loggedIn":
        if (this.reconnect !== null) return this.connectionBroke();
        return this.endSession(ErrorCode.CONNECTION_LOST, "connection lost", EndReason.connectionLost);
      case "loggingIn":
        return this.endSession(ErrorCode.CONNECTION_LOST, "connection lost", EndReason.connectionLost);
    }
  }

  /** The next message to send. */
  pollTransmit(): ClientMessage | null {
    if (this.handshake !== null) {
      const handshake = this.handshake;
      this.handshake = null;
      return handshake;
    }
    if (this.connection !== "up") return null;
    const resent = this.resend.shift();
    if (resent !== undefined) return resent;
    const message = this.transmits.shift();
    if (message === undefined) return null;
    const inSession = this.login_.kind === "loggedIn" || this.login_.kind === "loggingOut";
    if (inSession && isNumberedClientMessage(message) && !this.replay.recordSent(message)) this.token = null;
    return message;
  }

  /** The next event for the application. */
  pollEvent(): CallingEvent | null {
    return this.events.shift() ?? null;
  }

  /** The next request the server answered. */
  pollCompletion(): Completion | null {
    return this.completions.shift() ?? null;
  }

  private register(kind: RequestKind): number {
    const request = this.nextRequest;
    this.nextRequest = (this.nextRequest + 1) >>> 0;
    this.requests.set(request, kind);
    return request;
  }

  private requireLogin(): void {
    if (this.login_.kind === "loggedIn") return;
    if (this.login_.kind === "loggingIn") throw new CallingError(ErrorCode.NOT_LOGGED_IN, "login has not completed yet");
    throw new CallingError(ErrorCode.NOT_LOGGED_IN);
  }

  private takeRinging(): Invitation {
    if (this.state.kind !== "ringing") throw new CallingError(ErrorCode.NO_INVITATION);
    const invitation = this.state.invitation;
    this.state = { kind: "idle" };
    return invitation;
  }

  private abandonCall(): void {
    this.timers.delete("voiceVolumeReport");
    const state = this.state;
    this.state = { kind: "idle" };
    if (state.kind === "dialing" || state.kind === "accepting") this.leaving.push({ afterReply: state.request });
    else if (state.kind === "inCall") this.leaving.push({ call: state.callId });
  }

  private complete(request: number, error: CallingError | null): void {
    this.completions.push({ request, error });
  }

  private finishLogout(): void {
    this.endAbandonedCalls();
    this.failAllRequests(ErrorCode.CONNECTION_LOST);
    this.login_ = { kind: "loggedOut" };
    this.held = null;
    this.state = { kind: "idle" };
    this.forgetConnection();
  }

  private forgetConnection(): void {
    this.connection = "up";
    this.token = null;
    this.replay = new Replay();
    this.handshake = null;
    this.resend = [];
    this.acknowledged = 0;
    this.timers.delete("heartbeat");
    this.timers.delete("liveness");
    this.timers.delete("sessionExpiry");
  }

  private connectionBroke(): void {
    if (this.connection === "up") this.events.push({ type: "reconnecting" });
    this.connection = "down";
    this.handshake = null;
    this.resend = [];
    this.timers.delete("heartbeat");
    this.timers.delete("liveness");
    this.armSessionExpiry();
  }

  private armSessionExpiry(): void {
    if (this.token === null || this.graceMs === null || this.lastHeard === null || this.reconnect === null) return;
    if (!this.timers.has("sessionExpiry")) {
      this.timers.set("sessionExpiry", this.lastHeard + this.graceMs + this.reconnect.deadAfterMs * 2);
    }
  }

  private heardFromServer(now: number): void {
    if (this.reconnect === null) return;
    this.lastHeard = now;
    const expecting = this.connection === "up" ? this.token !== null : this.connection !== "down";
    if (this.login_.kind === "loggedIn" && expecting) this.timers.set("liveness", now + this.reconnect.deadAfterMs);
  }

  private scheduleHeartbeat(now: number): void {
    this.timers.set("heartbeat", now + (this.reconnect ?? DEFAULT_RECONNECT).heartbeatIntervalMs);
  }

  private sendHeartbeat(): void {
    this.acknowledged = this.replay.received;
    this.transmits.push({ type: "heartbeat", received: this.acknowledged });
  }

  private onResumed(now: number, token: Uint8Array, received: number): void {
    if (this.connection !== "resuming") return;
    if (!this.replay.acknowledge(received)) {
      this.loseSession(EndReason.connectionLost);
      this.connectionBroke();
      return;
    }
    this.token = token;
    this.resend = this.replay.unacknowledged();
    this.connection = "up";
    this.timers.delete("sessionExpiry");
    this.scheduleHeartbeat(now);
    this.heardFromServer(now);
    this.events.push({ type: "reconnected" });
  }

  private loseSession(reason: number): void {
    this.endAbandonedCalls();
    const state = this.state;
    this.state = { kind: "idle" };
    if (state.kind === "inCall") this.events.push({ type: "callEnd", reason });
    else if (state.kind === "ringing" || state.kind === "accepting") this.events.push({ type: "callingCancel" });
    this.timers.delete("voiceVolumeReport");
    this.held = null;
    this.failAllRequests(ErrorCode.CONNECTION_LOST);
    this.token = null;
    this.timers.delete("sessionExpiry");
    this.replay = new Replay();
    this.acknowledged = 0;
    this.resend = [];
    this.transmits = [];
  }

  private onMemberConnection(callId: bigint, userId: string, connected: boolean): void {
    if (this.state.kind === "inCall" && this.state.callId === callId && this.state.members.has(userId)) {
      this.events.push(connected ? { type: "userReconnected", userId } : { type: "userReconnecting", userId });
    }
  }

  private onLoginResult(code: number, message: string): void {
    if (this.connection === "resuming") {
      this.loseSession(EndReason.connectionLost);
      this.connectionBroke();
      return;
    }
    if (this.connection === "loggingInAgain") {
      if (code === ErrorCode.SERVER_DRAINING || code === ErrorCode.CLUSTER_UNAVAILABLE || code === ErrorCode.SERVER_SHUTDOWN) {
        this.connectionBroke();
        return;
      }
      if (code === ErrorCode.OK) {
        this.connection = "up";
        if (this.muted) this.transmits.push({ type: "microphone", muted: true });
        this.events.push({ type: "reconnected" });
      } else {
        this.endSession(code, message, EndReason.connectionLost);
      }
      return;
    }
    if (this.login_.kind !== "loggingIn") return;
    const request = this.login_.request;
    this.requests.delete(request);
    if (code === ErrorCode.OK) {
      this.login_ = { kind: "loggedIn" };
      if (this.muted) this.transmits.push({ type: "microphone", muted: true });
      this.complete(request, null);
    } else {
      this.login_ = { kind: "loggedOut" };
      this.me = null;
      this.complete(request, new CallingError(code, message));
    }
  }

  private onAck(now: number, request: number, callId: bigint | null): void {
    const kind = this.requests.get(request);
    if (kind === undefined) return;
    this.requests.delete(request);
    if (kind.kind === "answeredHere") return;
    const awaited = this.isAwaited(request);
    this.resolveLeaving(request, callId);
    const wasInCall = this.state.kind === "inCall";
    const state = this.state;
    if (kind.kind === "invite" && state.kind === "dialing" && state.request === request && callId !== null) {
      const merged = this.held !== null && this.held.callId === callId;
      // In glare the invitee we dialed is already entering.
      this.state = { kind: "inCall", callId, members: new Set(), flows: new Map(), invited: new Set(merged ? [] : state.invitees) };
    } else if (kind.kind === "accept" && state.kind === "accepting" && state.request === request) {
      this.state = { kind: "inCall", callId: state.invitation.callId, members: new Set(), flows: new Map(), invited: new Set() };
    }
    if (awaited) this.onAwaitedReply(callId);
    if (!wasInCall && this.state.kind === "inCall") {
      this.voiceLevels = new Map();
      this.timers.set("voiceVolumeReport", now + this.voiceVolumeIntervalMs);
    }
    this.complete(request, null);
  }

  private onRequestFailed(request: number, error: CallingError): void {
    const kind = this.requests.get(request);
    if (kind === undefined) return;
    this.requests.delete(request);
    if (kind.kind === "answeredHere") return;
    const awaited = this.isAwaited(request);
    this.resolveLeaving(request, null);
    const state = this.state;
    if (
      ((kind.kind === "invite" && state.kind === "dialing") || (kind.kind === "accept" && state.kind === "accepting")) &&
      state.request === request
    ) {
      this.state = { kind: "idle" };
    } else if (kind.kind === "invite" && state.kind === "inCall") {
      state.invited.delete(kind.invitee);
    }
    if (awaited) this.onAwaitedReply(null);
    this.complete(request, error);
  }

  private isAwaited(request: number): boolean {
    const state = this.state;
    return (
      this.leaving.some((leaving) => "afterReply" in leaving && leaving.afterReply === request) ||
      ((state.kind === "dialing" || state.kind === "accepting") && state.request === request)
    );
  }

  private awaitsAnyReply(): boolean {
    return this.state.kind === "dialing" || this.state.kind === "accepting" || this.leaving.some((leaving) => "afterReply" in leaving);
  }

  private resolveLeaving(request: number, callId: bigint | null): void {
    const index = this.leaving.findIndex((leaving) => "afterReply" in leaving && leaving.afterReply === request);
    if (index < 0) return;
    if (callId !== null) this.leaving[index] = { call: callId };
    else this.leaving.splice(index, 1);
  }

  private onAwaitedReply(repliedCall: bigint | null): void {
    if (repliedCall !== null && this.held !== null && this.held.callId === repliedCall) this.held = null;
    if (this.awaitsAnyReply()) return;
    const invitation = this.held;
    this.held = null;
    if (invitation !== null && this.state.kind === "idle") this.ring(invitation);
  }

  private endAbandonedCalls(): void {
    const leaving = this.leaving;
    this.leaving = [];
    for (const entry of leaving) if ("call" in entry) this.events.push({ type: "callEnd", reason: EndReason.hangup });
  }

  private ring(invitation: Invitation): void {
    this.events.push({
      type: "invited",
      sponsor: invitation.sponsor,
      userIds: invitation.userIds,
      isFromGroup: invitation.userIds.length > 0,
      callType: invitation.callType,
    });
    this.state = { kind: "ringing", invitation };
  }

  private onInvited(invitation: Invitation): void {
    if (this.awaitsAnyReply() && this.held === null) this.held = invitation;
    else if (this.state.kind === "idle") this.ring(invitation);
  }

  private onInviteeAnswer(callId: bigint, event: CallingEvent & { userId: string }): void {
    if (this.state.kind !== "inCall" || this.state.callId !== callId) return;
    if (event.type !== "inviteeOffline") this.state.invited.delete(event.userId);
    this.events.push(event);
  }

  /** Whether the invitation rang (and `event` was raised). */
  private onInvitationOver(callId: bigint, event: CallingEvent): boolean {
    const state = this.state;
    if ((state.kind === "ringing" || state.kind === "accepting") && state.invitation.callId === callId) {
      this.state = { kind: "idle" };
      this.events.push(event);
      return true;
    }
    if (this.held !== null && this.held.callId === callId) this.held = null;
    return false;
  }

  private onUserEntered(callId: bigint, userId: string, flowId: number, audioAvailable: boolean): void {
    const state = this.state;
    if (state.kind !== "inCall" || state.callId !== callId || state.members.has(userId)) return;
    state.members.add(userId);
    state.invited.delete(userId);
    state.flows.set(userId, flowId);
    this.events.push({ type: "userEnter", userId });
    this.events.push({ type: "userAudioAvailable", userId, available: audioAvailable });
  }

  private onUserLeft(callId: bigint, userId: string): void {
    const state = this.state;
    if (state.kind === "inCall" && state.callId === callId && state.members.delete(userId)) {
      state.flows.delete(userId);
      this.events.push({ type: "userLeave", userId });
    }
  }

  private onAudioAvailability(callId: bigint, userId: string, available: boolean): void {
    const state = this.state;
    if (state.kind === "inCall" && state.callId === callId && state.members.has(userId)) {
      this.events.push({ type: "userAudioAvailable", userId, available });
    }
  }

  private onCallEnded(callId: bigint, reason: number): void {
    const index = this.leaving.findIndex((leaving) => "call" in leaving && leaving.call === callId);
    if (index >= 0) {
      this.leaving.splice(index, 1);
      this.events.push({ type: "callEnd", reason });
      return;
    }
    if (this.state.kind === "inCall" && this.state.callId === callId) {
      this.state = { kind: "idle" };
      this.timers.delete("voiceVolumeReport");
      this.events.push({ type: "callEnd", reason });
    }
  }

  private endSession(code: number, msg: string, reason: number): void {
    this.events.push({ type: "error", code, msg });
    this.endAbandonedCalls();
    const state = this.state;
    this.state = { kind: "idle" };
    if (state.kind === "inCall") this.events.push({ type: "callEnd", reason });
    if (this.login_.kind === "loggingIn") {
      const request = this.login_.request;
      this.requests.delete(request);
      this.complete(request, new CallingError(code, msg));
    }
    this.failAllRequests(code);
    this.login_ = { kind: "loggedOut" };
    this.timers.delete("voiceVolumeReport");
    this.held = null;
    this.me = null;
    this.forgetConnection();
  }

  private failAllRequests(code: number): void {
    const outstanding = [...this.requests].filter(([, kind]) => kind.kind !== "answeredHere").map(([request]) => request);
    this.requests.clear();
    outstanding.sort((a, b) => a - b);
    for (const request of outstanding) this.complete(request, new CallingError(code));
  }
}
