// The byte examples of docs/protocol.md, and bad input refused with a
// WireError (never a crash or a wrong message).

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  WireError,
  FrameSplitter,
  decodeDatagram,
  decodeServerMessage,
  encodeClientFrame,
  encodeDatagram,
  lossReport,
  opusPacketSamples,
} from "../src/wire.js";

function hex(text: string): Uint8Array {
  return Uint8Array.from(text.trim().split(/\s+/).map((pair) => parseInt(pair, 16)));
}

test("a version-7 login is the documented bytes, with its media encryption", () => {
  const frame = encodeClientFrame({
    type: "login",
    protocolVersion: 7,
    sdkAppId: 1400000000,
    userId: "alice",
    userSig: "sig",
    deviceId: "phone",
    mediaEncryption: 1,
  });
  assert.deepEqual(frame, hex("00 00 00 19 00 07 80 9c c9 9b 05 05 61 6c 69 63 65 03 73 69 67 01 05 70 68 6f 6e 65 01"));
});

test("member key words, both ways: the documented bytes", () => {
  const sent = encodeClientFrame({ type: "memberKey", to: "bob", payload: hex("01 00 aa bb") });
  assert.deepEqual(sent, hex("00 00 00 0a 0a 03 62 6f 62 04 01 00 aa bb"));
  assert.deepEqual(decodeServerMessage(hex("16 07 05 61 6c 69 63 65 04 01 00 aa bb")), {
    type: "memberKey",
    callId: 7n,
    from: "alice",
    payload: hex("01 00 aa bb"),
  });
  assert.throws(() => encodeClientFrame({ type: "memberKey", to: "bob", payload: new Uint8Array(1025) }), WireError);
  assert.deepEqual(decodeServerMessage(hex("15 01 0d 31 30 2e 30 2e 30 2e 32 3a 34 34 33 35")), {
    type: "redirect",
    servers: ["10.0.0.2:4435"],
  });
});

test("a version-5 login is the documented bytes", () => {
  const frame = encodeClientFrame({ type: "login", protocolVersion: 5, sdkAppId: 1400000000, userId: "alice", userSig: "sig", deviceId: "phone", mediaEncryption: 1 });
  assert.deepEqual(frame, hex("00 00 00 18 00 05 80 9c c9 9b 05 05 61 6c 69 63 65 03 73 69 67 01 05 70 68 6f 6e 65"));
});

test("a version-1 login ends at the UserSig", () => {
  const frame = encodeClientFrame({ type: "login", protocolVersion: 1, sdkAppId: 1400000000, userId: "alice", userSig: "sig", deviceId: "phone", mediaEncryption: 0 });
  assert.deepEqual(frame, hex("00 00 00 11 00 01 80 9c c9 9b 05 05 61 6c 69 63 65 03 73 69 67"));
});

test("heartbeat, invite: the documented bytes", () => {
  assert.deepEqual(encodeClientFrame({ type: "heartbeat", received: 300 }), hex("00 00 00 03 09 ac 02"));
  const invite = encodeClientFrame({ type: "invite", requestId: 2, callId: null, userIds: ["bob"], callType: 1, timeoutMs: 30000, userData: null });
  assert.deepEqual(invite, hex("00 00 00 0e 02 02 00 01 03 62 6f 62 01 01 b0 ea 01 00"));
});

test("server messages decode as documented", () => {
  const resumed = decodeServerMessage(hex("10 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 05"));
  assert.deepEqual(resumed, { type: "resumed", token: new Uint8Array(16).fill(0x11), received: 5 });
  assert.deepEqual(decodeServerMessage(hex("02 01 02 f8 2e 02 6e 6f")), { type: "error", requestId: 2, code: 3004, message: "no" });
  assert.deepEqual(decodeServerMessage(hex("0c 07 04")), { type: "callEnded", callId: 7n, reason: 4 });
});

test("bad server messages are WireErrors", () => {
  const bad = [
    "63", // an unknown variant
    "0c 07", // truncated
    "0c 07 04 00", // bytes left over
    "0c 07 63", // an unknown end reason
    "0a 07 03 61 2f 62", // an invalid user id
    "0b 07 03 62 6f 62 02", // a bool that is 2
    "16 07 05 61 6c 69 63 65 05 01 00", // a member key word cut short
    "15 09", // a redirect to nine servers
    "00 05 00 02 c3 28", // invalid UTF-8
  ];
  for (const bytes of bad) assert.throws(() => decodeServerMessage(hex(bytes)), WireError, bytes);
});

test("frames split anywhere join up; a zero or oversized length is refused", () => {
  const splitter = new FrameSplitter();
  const stream = hex("00 00 00 03 0c 07 04 00 00 00 01 0d");
  const frames: Uint8Array[] = [];
  for (const byte of stream) frames.push(...splitter.push(Uint8Array.of(byte)));
  assert.deepEqual(frames, [hex("0c 07 04"), hex("0d")]);
  assert.throws(() => new FrameSplitter().push(hex("00 00 00 00")), WireError);
  assert.throws(() => new FrameSplitter().push(hex("00 00 40 01")), WireError);
});

test("datagrams: the documented header and loss report", () => {
  const datagram = encodeDatagram({ kind: 0, flowId: 300, sequence: 0xdeadbeef, timestamp: 2880, level: 0xaa }, new Uint8Array(0));
  assert.deepEqual(datagram, hex("10 ac 02 de ad be ef 00 00 0b 40 aa"));
  const { header, payload } = decodeDatagram(hex("10 ac 02 de ad be ef 00 00 0b 40 aa 01 02"));
  assert.deepEqual(header, { kind: 0, flowId: 300, sequence: 0xdeadbeef, timestamp: 2880, level: 0xaa });
  assert.deepEqual(payload, hex("01 02"));
  assert.deepEqual(lossReport(5, 12), hex("13 05 00 00 00 00 00 00 00 00 7f 0c"));
  assert.throws(() => decodeDatagram(hex("20 05 00 00 00 00 00 00 00 00 7f")), WireError);
  assert.throws(() => decodeDatagram(hex("16 05 00 00 00 00 00 00 00 00 7f")), WireError);
  assert.throws(() => decodeDatagram(hex("10 05 00 00")), WireError);
  assert.throws(() => decodeDatagram(hex("10 ff ff ff ff ff 00 00 00 00 00 00 00 00 7f")), WireError);
});

test("an Opus packet's duration comes from its TOC byte", () => {
  assert.equal(opusPacketSamples(Uint8Array.of(0xfc)), 960); // CELT FB 20 ms, one frame
  assert.equal(opusPacketSamples(Uint8Array.of(0xf4)), 480); // CELT FB 10 ms
  assert.equal(opusPacketSamples(Uint8Array.of(0x09)), 1920); // SILK NB 20 ms, two frames
  assert.equal(opusPacketSamples(new Uint8Array(0)), 0);
});
