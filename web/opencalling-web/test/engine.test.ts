// The engine's event orders, as the native SDK's scenario tests have them,
// on a virtual clock: the server's messages are written by hand.

import { test } from "node:test";
import assert from "node:assert/strict";
import { CallEngine, type CallingEvent } from "../src/engine.js";
import { ErrorCode, CallingError } from "../src/errors.js";
import type { ClientMessage, ServerMessage } from "../src/wire.js";

class Harness {
  readonly engine = new CallEngine();
  now = 0;
  sent: ClientMessage[] = [];
  events: CallingEvent[] = [];
  completions: { request: number; code: number }[] = [];

  drain(): void {
    for (let message = this.engine.pollTransmit(); message !== null; message = this.engine.pollTransmit()) this.sent.push(message);
    for (let event = this.engine.pollEvent(); event !== null; event = this.engine.pollEvent()) this.events.push(event);
    for (let done = this.engine.pollCompletion(); done !== null; done = this.engine.pollCompletion()) {
      this.completions.push({ request: done.request, code: done.error?.code ?? 0 });
    }
  }

  receive(message: ServerMessage): void {
    this.engine.handleMessage(this.now, message);
    this.drain();
  }

  advance(ms: number): void {
    this.now += ms;
    this.engine.handleTimeout(this.now);
    this.drain();
  }

  /** Event types since the last call. */
  take(): string[] {
    const types = this.events.map((event) => event.type);
    this.events = [];
    return types;
  }

  loggedIn(user = "alice"): this {
    this.engine.login(1400000000, user, "sig");
    this.drain();
    this.receive({ type: "loginResult", protocolVersion: 5, code: 0, message: "" });
    return this;
  }
}

test("a caller: ack, the callee enters, hangs up: onCallEnd once", () => {
  const alice = new Harness().loggedIn();
  const request = alice.engine.call("bob", 1);
  alice.drain();
  assert.deepEqual(alice.sent.at(-1), { type: "invite", requestId: request, callId: null, userIds: ["bob"], callType: 1, timeoutMs: null, userData: null });
  alice.receive({ type: "ack", requestId: request, callId: 7n });
  alice.receive({ type: "userEntered", callId: 7n, userId: "bob", flowId: 3, audioAvailable: true });
  assert.deepEqual(alice.take(), ["userEnter", "userAudioAvailable"]);
  assert.equal(alice.engine.userOfFlow(3), "bob");
  alice.receive({ type: "audioAvailability", callId: 7n, userId: "bob", available: false });
  assert.deepEqual(alice.events, [{ type: "userAudioAvailable", userId: "bob", available: false }]);
  alice.take();
  const hangup = alice.engine.hangup();
  alice.drain();
  alice.receive({ type: "ack", requestId: hangup, callId: 7n });
  alice.receive({ type: "callEnded", callId: 7n, reason: 0 });
  alice.receive({ type: "callEnded", callId: 7n, reason: 0 });
  assert.deepEqual(alice.take(), ["callEnd"]);
});

test("invitee answers: reject, no response, line busy each raise their event", () => {
  for (const [message, event] of [
    ["rejected", "reject"],
    ["noResponse", "noResp"],
    ["lineBusy", "lineBusy"],
  ] as const) {
    const alice = new Harness().loggedIn();
    const request = alice.engine.call("bob", 1);
    alice.drain();
    alice.receive({ type: "ack", requestId: request, callId: 1n });
    alice.receive({ type: message, callId: 1n, userId: "bob" });
    alice.receive({ type: "callEnded", callId: 1n, reason: 1 });
    assert.deepEqual(alice.take(), [event, "callEnd"], message);
  }
});

test("an invitee: invited, cancelled or timed out; a second accept is refused", () => {
  const bob = new Harness().loggedIn("bob");
  bob.receive({ type: "invited", callId: 4n, sponsor: "alice", userIds: [], callType: 1, userData: null, timeoutMs: 30000 });
  assert.deepEqual(bob.events[0], { type: "invited", sponsor: "alice", userIds: [], isFromGroup: false, callType: 1 });
  bob.take();
  bob.receive({ type: "cancelled", callId: 4n });
  assert.deepEqual(bob.take(), ["callingCancel"]);
  assert.throws(() => bob.engine.accept(), (error: CallingError) => error.code === ErrorCode.NO_INVITATION);
  bob.receive({ type: "invited", callId: 5n, sponsor: "alice", userIds: ["carol"], callType: 1, userData: null, timeoutMs: 30000 });
  bob.receive({ type: "invitationTimedOut", callId: 5n });
  assert.deepEqual(bob.take(), ["invited", "callingTimeOut"]);
});

test("an invitee accepts: enters, hears volumes every 300 ms with the remote total", () => {
  const bob = new Harness().loggedIn("bob");
  bob.receive({ type: "invited", callId: 4n, sponsor: "alice", userIds: [], callType: 1, userData: null, timeoutMs: 30000 });
  const accept = bob.engine.accept();
  bob.drain();
  bob.receive({ type: "ack", requestId: accept, callId: 4n });
  bob.receive({ type: "userEntered", callId: 4n, userId: "alice", flowId: 1, audioAvailable: true });
  bob.take();
  bob.engine.recordVoiceLevel("bob", 90);
  bob.engine.recordVoiceLevel("alice", 40);
  bob.advance(300);
  assert.deepEqual(bob.events, [
    {
      type: "userVoiceVolume",
      userVolumes: [
        { userId: "bob", volume: 90 },
        { userId: "alice", volume: 40 },
      ],
      totalVolume: 40,
    },
  ]);
});

test("a reply comes before its notices; a held invitation rings once the dial failed", () => {
  const alice = new Harness().loggedIn();
  const request = alice.engine.call("bob", 1);
  alice.drain();
  alice.receive({ type: "invited", callId: 9n, sponsor: "carol", userIds: [], callType: 1, userData: null, timeoutMs: 30000 });
  assert.deepEqual(alice.take(), []);
  alice.receive({ type: "error", requestId: request, code: ErrorCode.CALL_FULL, message: "full" });
  assert.deepEqual(alice.take(), ["invited"]);
  assert.deepEqual(alice.completions.at(-1), { request, code: ErrorCode.CALL_FULL });
});

test("kicked: onError, onCallEnd, then kicked offline; logged out", () => {
  const alice = new Harness().loggedIn();
  const request = alice.engine.call("bob", 1);
  alice.drain();
  alice.receive({ type: "ack", requestId: request, callId: 2n });
  alice.receive({ type: "kicked" });
  assert.deepEqual(alice.take(), ["error", "callEnd", "kickedOffline"]);
  assert.equal(alice.engine.status(), "loggedOut");
});

test("a resumable session heartbeats, resumes after a break and resends what the server missed", () => {
  const alice = new Harness();
  alice.engine.setReconnect({ heartbeatIntervalMs: 1000, deadAfterMs: 3000 });
  alice.loggedIn();
  alice.receive({ type: "session", token: new Uint8Array(16).fill(1), graceMs: 20000 });
  alice.advance(1000);
  assert.deepEqual(alice.sent.at(-1), { type: "heartbeat", received: 0 });
  alice.receive({ type: "heartbeatAck", received: 0 });
  alice.engine.setMicMute(true);
  alice.drain();
  alice.engine.handleDisconnect();
  alice.drain();
  assert.deepEqual(alice.take(), ["reconnecting"]);
  assert.ok(alice.engine.wantsConnection());
  alice.engine.handleConnected(alice.now);
  alice.sent = [];
  alice.drain();
  assert.equal(alice.sent[0]?.type, "resume");
  alice.receive({ type: "resumed", token: new Uint8Array(16).fill(2), received: 0 });
  assert.deepEqual(alice.sent.slice(1), [{ type: "microphone", muted: true }]);
  assert.deepEqual(alice.take(), ["reconnected"]);
});

test("nothing from the server for 3 s breaks a resumable session's connection", () => {
  const alice = new Harness();
  alice.engine.setReconnect({ heartbeatIntervalMs: 1000, deadAfterMs: 3000 });
  alice.loggedIn();
  alice.receive({ type: "session", token: new Uint8Array(16).fill(1), graceMs: 20000 });
  alice.advance(2999);
  assert.deepEqual(alice.take(), []);
  alice.advance(1);
  assert.deepEqual(alice.take(), ["reconnecting"]);
});

test("bad calls are refused with their codes, the state untouched", () => {
  const alice = new Harness();
  assert.throws(() => alice.engine.call("bob", 1), (error: CallingError) => error.code === ErrorCode.NOT_LOGGED_IN);
  assert.throws(() => alice.engine.login(1, "a/b", "sig"), (error: CallingError) => error.code === ErrorCode.INVALID_USER_ID);
  assert.throws(() => alice.engine.login(1, "alice", ""), (error: CallingError) => error.code === ErrorCode.USERSIG_MALFORMED);
  alice.loggedIn();
  assert.throws(() => alice.engine.call("alice", 1), (error: CallingError) => error.code === ErrorCode.CANNOT_CALL_SELF);
  assert.throws(() => alice.engine.call("bob", 3), (error: CallingError) => error.code === ErrorCode.INVALID_CALL_TYPE);
  assert.throws(() => alice.engine.hangup(), (error: CallingError) => error.code === ErrorCode.NOT_IN_CALL);
  alice.engine.call("bob", 1);
  assert.throws(() => alice.engine.call("carol", 1), (error: CallingError) => error.code === ErrorCode.WRONG_CALL_STATE);
  assert.equal(alice.engine.status(), "dialing");
});
