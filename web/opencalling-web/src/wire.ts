// The wire protocol of docs/protocol.md: signaling frames (a 4-byte length,
// then a postcard-encoded message) and audio datagrams (the media header,
// then the payload). Pure functions over bytes: no I/O, no clock.

/** The protocol version this SDK speaks (docs/protocol.md). */
export const PROTOCOL_VERSION = 7;

/** The largest frame payload either side sends or accepts. */
export const MAX_FRAME_LEN = 16384;

/** Bytes that do not follow the protocol. */
export class WireError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WireError";
  }
}

const USER_ID = /^[A-Za-z0-9_-]{1,32}$/;
const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Whether `userId` follows the rule: 1–32 of a-z A-Z 0-9 - _. */
export function isValidUserId(userId: string): boolean {
  return USER_ID.test(userId);
}

/** Whether `deviceId` follows the rule: 1–64 of a-z A-Z 0-9 - _. */
export function isValidDeviceId(deviceId: string): boolean {
  return DEVICE_ID.test(deviceId);
}

/** Why a call ended (docs/protocol.md, `EndReason`). */
export const EndReason = {
  hangup: 0,
  rejected: 1,
  noResponse: 2,
  lineBusy: 3,
  cancelled: 4,
  timedOut: 5,
  answeredElsewhere: 6,
  rejectedElsewhere: 7,
  kicked: 8,
  serverShutdown: 9,
  connectionLost: 10,
  endedByOperator: 11,
  loggedOutByOperator: 12,
} as const;

/** The messages a client sends. */
export type ClientMessage =
  | {
      type: "login";
      protocolVersion: number;
      sdkAppId: number;
      userId: string;
      userSig: string;
      deviceId: string | null;
      /** Version 7: 0 none, 1 the application's keys, 2 built-in keys. */
      mediaEncryption: number;
    }
  | { type: "logout"; requestId: number }
  | {
      type: "invite";
      requestId: number;
      callId: bigint | null;
      userIds: string[];
      callType: number;
      timeoutMs: number | null;
      userData: string | null;
    }
  | { type: "accept"; requestId: number; callId: bigint }
  | { type: "reject"; requestId: number; callId: bigint }
  | { type: "hangup"; requestId: number }
  | { type: "microphone"; muted: boolean }
  | { type: "ping"; nonce: bigint }
  | {
      type: "resume";
      protocolVersion: number;
      sdkAppId: number;
      userId: string;
      userSig: string;
      token: Uint8Array;
      received: number;
    }
  | { type: "heartbeat"; received: number }
  | { type: "memberKey"; to: string; payload: Uint8Array };

/** The messages a server sends. */
export type ServerMessage =
  | { type: "loginResult"; protocolVersion: number; code: number; message: string }
  | { type: "ack"; requestId: number; callId: bigint | null }
  | { type: "error"; requestId: number | null; code: number; message: string }
  | {
      type: "invited";
      callId: bigint;
      sponsor: string;
      userIds: string[];
      callType: number;
      userData: string | null;
      timeoutMs: number;
    }
  | { type: "rejected"; callId: bigint; userId: string }
  | { type: "noResponse"; callId: bigint; userId: string }
  | { type: "lineBusy"; callId: bigint; userId: string }
  | { type: "cancelled"; callId: bigint }
  | { type: "invitationTimedOut"; callId: bigint }
  | { type: "userEntered"; callId: bigint; userId: string; flowId: number; audioAvailable: boolean }
  | { type: "userLeft"; callId: bigint; userId: string }
  | { type: "audioAvailability"; callId: bigint; userId: string; available: boolean }
  | { type: "callEnded"; callId: bigint; reason: number }
  | { type: "kicked" }
  | { type: "pong"; nonce: bigint }
  | { type: "session"; token: Uint8Array; graceMs: number }
  | { type: "resumed"; token: Uint8Array; received: number }
  | { type: "heartbeatAck"; received: number }
  | { type: "memberConnection"; callId: bigint; userId: string; connected: boolean }
  | { type: "inviteeOffline"; callId: bigint; userId: string }
  | { type: "handledElsewhere"; callId: bigint; answer: "answered" | "declined" }
  | { type: "redirect"; servers: string[] }
  | { type: "memberKey"; callId: bigint; from: string; payload: Uint8Array };

/** The largest payload of a `memberKey` message, in bytes. */
export const MAX_MEMBER_KEY_LEN = 1024;

const SERVER_VARIANTS: ServerMessage["type"][] = [
  "loginResult",
  "ack",
  "error",
  "invited",
  "rejected",
  "noResponse",
  "lineBusy",
  "cancelled",
  "invitationTimedOut",
  "userEntered",
  "userLeft",
  "audioAvailability",
  "callEnded",
  "kicked",
  "pong",
  "session",
  "resumed",
  "heartbeatAck",
  "memberConnection",
  "inviteeOffline",
  "handledElsewhere",
  "redirect",
  "memberKey",
];

/** Whether a client message counts in the resume books (docs/protocol.md, "Resume"). */
export function isNumberedClientMessage(message: ClientMessage): boolean {
  return message.type !== "login" && message.type !== "resume" && message.type !== "heartbeat";
}

/** Whether a server message counts in the resume books. */
export function isNumberedServerMessage(message: ServerMessage): boolean {
  return !["loginResult", "session", "resumed", "heartbeatAck", "redirect"].includes(message.type);
}

/** Postcard's forms, written. */
class Writer {
  private bytes: number[] = [];

  varint(value: number | bigint): this {
    let n = BigInt(value);
    if (n < 0n) throw new WireError("a varint is never negative");
    do {
      let byte = Number(n & 0x7fn);
      n >>= 7n;
      if (n > 0n) byte |= 0x80;
      this.bytes.push(byte);
    } while (n > 0n);
    return this;
  }

  zigzag(value: number): this {
    return this.varint(((value << 1) ^ (value >> 31)) >>> 0);
  }

  byte(value: number): this {
    this.bytes.push(value & 0xff);
    return this;
  }

  raw(bytes: Uint8Array): this {
    for (const byte of bytes) this.bytes.push(byte);
    return this;
  }

  string(value: string): this {
    const bytes = new TextEncoder().encode(value);
    return this.varint(bytes.length).raw(bytes);
  }

  option<T>(value: T | null, write: (value: T) => void): this {
    if (value === null) return this.byte(0);
    this.byte(1);
    write(value);
    return this;
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/** Postcard's forms, read; every read checks the bytes are there. */
class Reader {
  private at = 0;

  constructor(private readonly bytes: Uint8Array) {}

  /** How many bytes were read. */
  get offset(): number {
    return this.at;
  }

  byte(): number {
    if (this.at >= this.bytes.length) throw new WireError("the message ends early");
    return this.bytes[this.at++]!;
  }

  varint(maxBytes: number): bigint {
    let value = 0n;
    for (let index = 0; index < maxBytes; index += 1) {
      const byte = this.byte();
      value |= BigInt(byte & 0x7f) << BigInt(7 * index);
      if ((byte & 0x80) === 0) return value;
    }
    throw new WireError("a varint runs too long");
  }

  u16(): number {
    const value = this.varint(3);
    if (value > 0xffffn) throw new WireError("a u16 out of range");
    return Number(value);
  }

  u32(): number {
    const value = this.varint(5);
    if (value > 0xffffffffn) throw new WireError("a u32 out of range");
    return Number(value);
  }

  u64(): bigint {
    const value = this.varint(10);
    if (value > 0xffffffffffffffffn) throw new WireError("a u64 out of range");
    return value;
  }

  /** A count that JavaScript's numbers hold exactly (message counts). */
  count(): number {
    const value = this.u64();
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError("a count out of range");
    return Number(value);
  }

  i32(): number {
    const zigzag = this.u32();
    return (zigzag >>> 1) ^ -(zigzag & 1);
  }

  bool(): boolean {
    const byte = this.byte();
    if (byte > 1) throw new WireError("a bool is 0 or 1");
    return byte === 1;
  }

  raw(length: number): Uint8Array {
    if (this.at + length > this.bytes.length) throw new WireError("the message ends early");
    const slice = this.bytes.slice(this.at, this.at + length);
    this.at += length;
    return slice;
  }

  string(): string {
    const length = this.u32();
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(this.raw(length));
    } catch (error) {
      if (error instanceof WireError) throw error;
      throw new WireError("a string that is not UTF-8");
    }
  }

  userId(): string {
    const userId = this.string();
    if (!isValidUserId(userId)) throw new WireError("an invalid user id");
    return userId;
  }

  option<T>(read: () => T): T | null {
    return this.bool() ? read() : null;
  }

  callType(): number {
    const callType = this.byte();
    if (callType !== 1 && callType !== 2) throw new WireError("an unknown call type");
    return callType;
  }

  end(): void {
    if (this.at !== this.bytes.length) throw new WireError("bytes left over after the message");
  }
}

/** A client message as a frame: its length, then its postcard encoding. */
export function encodeClientFrame(message: ClientMessage): Uint8Array {
  const payload = encodeClientMessage(message);
  if (payload.length > MAX_FRAME_LEN) throw new WireError("the message is larger than a frame may be");
  const frame = new Uint8Array(4 + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length);
  frame.set(payload, 4);
  return frame;
}

/** A client message's postcard encoding. */
export function encodeClientMessage(message: ClientMessage): Uint8Array {
  const out = new Writer();
  switch (message.type) {
    case "login":
      out.varint(0).varint(message.protocolVersion).varint(message.sdkAppId).string(message.userId).string(message.userSig);
      if (message.protocolVersion >= 5) out.option(message.deviceId, (device) => out.string(device));
      if (message.protocolVersion >= 7) out.varint(message.mediaEncryption);
      break;
    case "logout":
      out.varint(1).varint(message.requestId);
      break;
    case "invite":
      out.varint(2).varint(message.requestId);
      out.option(message.callId, (callId) => out.varint(callId));
      out.varint(message.userIds.length);
      for (const userId of message.userIds) out.string(userId);
      out.byte(message.callType);
      out.option(message.timeoutMs, (timeout) => out.varint(timeout));
      out.option(message.userData, (data) => out.string(data));
      break;
    case "accept":
      out.varint(3).varint(message.requestId).varint(message.callId);
      break;
    case "reject":
      out.varint(4).varint(message.requestId).varint(message.callId);
      break;
    case "hangup":
      out.varint(5).varint(message.requestId);
      break;
    case "microphone":
      out.varint(6).byte(message.muted ? 1 : 0);
      break;
    case "ping":
      out.varint(7).varint(message.nonce);
      break;
    case "resume":
      if (message.token.length !== 16) throw new WireError("a session token is 16 bytes");
      out.varint(8).varint(message.protocolVersion).varint(message.sdkAppId).string(message.userId).string(message.userSig);
      out.raw(message.token).varint(message.received);
      break;
    case "heartbeat":
      out.varint(9).varint(message.received);
      break;
    case "memberKey":
      if (message.payload.length > MAX_MEMBER_KEY_LEN) throw new WireError("a member key word is at most 1024 bytes");
      out.varint(10).string(message.to).varint(message.payload.length).raw(message.payload);
      break;
  }
  return out.finish();
}

/** One server message from a frame's payload. */
export function decodeServerMessage(payload: Uint8Array): ServerMessage {
  const input = new Reader(payload);
  const variant = input.u32();
  const type = SERVER_VARIANTS[variant];
  let message: ServerMessage;
  switch (type) {
    case "loginResult":
      message = { type, protocolVersion: input.u16(), code: input.i32(), message: input.string() };
      break;
    case "ack":
      message = { type, requestId: input.u32(), callId: input.option(() => input.u64()) };
      break;
    case "error":
      message = { type, requestId: input.option(() => input.u32()), code: input.i32(), message: input.string() };
      break;
    case "invited": {
      const callId = input.u64();
      const sponsor = input.userId();
      const count = input.u32();
      const userIds: string[] = [];
      for (let index = 0; index < count; index += 1) userIds.push(input.userId());
      message = {
        type,
        callId,
        sponsor,
        userIds,
        callType: input.callType(),
        userData: input.option(() => input.string()),
        timeoutMs: input.u32(),
      };
      break;
    }
    case "rejected":
    case "noResponse":
    case "lineBusy":
    case "userLeft":
    case "inviteeOffline":
      message = { type, callId: input.u64(), userId: input.userId() };
      break;
    case "cancelled":
    case "invitationTimedOut":
      message = { type, callId: input.u64() };
      break;
    case "userEntered":
      message = { type, callId: input.u64(), userId: input.userId(), flowId: input.u32(), audioAvailable: input.bool() };
      break;
    case "audioAvailability":
      message = { type, callId: input.u64(), userId: input.userId(), available: input.bool() };
      break;
    case "callEnded": {
      const callId = input.u64();
      const reason = input.u32();
      if (reason > EndReason.loggedOutByOperator) throw new WireError("an unknown end reason");
      message = { type, callId, reason };
      break;
    }
    case "kicked":
      message = { type };
      break;
    case "pong":
      message = { type, nonce: input.u64() };
      break;
    case "session":
      message = { type, token: input.raw(16), graceMs: input.u32() };
      break;
    case "resumed":
      message = { type, token: input.raw(16), received: input.count() };
      break;
    case "heartbeatAck":
      message = { type, received: input.count() };
      break;
    case "memberConnection":
      message = { type, callId: input.u64(), userId: input.userId(), connected: input.bool() };
      break;
    case "handledElsewhere": {
      const callId = input.u64();
      const answer = input.u32();
      if (answer > 1) throw new WireError("an unknown answer");
      message = { type, callId, answer: answer === 0 ? "answered" : "declined" };
      break;
    }
    case "redirect": {
      const count = input.u32();
      if (count > 8) throw new WireError("a redirect names at most 8 servers");
      const servers: string[] = [];
      for (let index = 0; index < count; index += 1) servers.push(input.string());
      message = { type, servers };
      break;
    }
    case "memberKey": {
      const callId = input.u64();
      const from = input.userId();
      const length = input.u32();
      if (length > MAX_MEMBER_KEY_LEN) throw new WireError("a member key word over 1024 bytes");
      message = { type, callId, from, payload: input.raw(length) };
      break;
    }
    case undefined:
      throw new WireError(`unknown server message variant ${variant}`);
  }
  input.end();
  return message;
}

/**
 * Splits a signaling byte stream into frames: push the bytes as they come,
 * take whole payloads out. A length of zero or over MAX_FRAME_LEN is an error.
 */
export class FrameSplitter {
  private buffered = new Uint8Array(0);

  push(bytes: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.buffered.length + bytes.length);
    joined.set(this.buffered);
    joined.set(bytes, this.buffered.length);
    const frames: Uint8Array[] = [];
    let at = 0;
    while (joined.length - at >= 4) {
      const length = new DataView(joined.buffer, at, 4).getUint32(0);
      if (length === 0 || length > MAX_FRAME_LEN) throw new WireError(`a frame of ${length} bytes`);
      if (joined.length - at < 4 + length) break;
      frames.push(joined.slice(at + 4, at + 4 + length));
      at += 4 + length;
    }
    this.buffered = joined.slice(at);
    return frames;
  }
}

/** The kinds of datagram (the header's low nibble). */
export const DatagramKind = {
  audio: 0,
  probe: 1,
  keepAlive: 2,
  lossReport: 3,
  receiverFeatures: 4,
  networkQuality: 5,
} as const;

/** The media header of every datagram. */
export interface MediaHeader {
  kind: number;
  flowId: number;
  sequence: number;
  timestamp: number;
  /** Bit 7 voice activity; bits 0–6 the level in −dBov (RFC 6464). */
  level: number;
}

/** The longest header: kind, a 5-byte flow id, sequence, timestamp, level. */
export const MAX_HEADER_LEN = 15;

/** A datagram: the header, then the payload. */
export function encodeDatagram(header: MediaHeader, payload: Uint8Array): Uint8Array {
  const out = new Writer().byte(0x10 | header.kind).varint(header.flowId).finish();
  const datagram = new Uint8Array(out.length + 9 + payload.length);
  datagram.set(out);
  const view = new DataView(datagram.buffer);
  view.setUint32(out.length, header.sequence >>> 0);
  view.setUint32(out.length + 4, header.timestamp >>> 0);
  datagram[out.length + 8] = header.level;
  datagram.set(payload, out.length + 9);
  return datagram;
}

/** A datagram's header and payload; unknown versions and kinds are errors. */
export function decodeDatagram(datagram: Uint8Array): { header: MediaHeader; payload: Uint8Array } {
  const input = new Reader(datagram);
  const first = input.byte();
  if (first >> 4 !== 1) throw new WireError("an unknown datagram layout version");
  const kind = first & 0x0f;
  if (kind > DatagramKind.networkQuality) throw new WireError("an unknown datagram kind");
  const flowId = input.u32();
  const fixed = input.raw(9);
  const view = new DataView(fixed.buffer, fixed.byteOffset, 9);
  const header = { kind, flowId, sequence: view.getUint32(0), timestamp: view.getUint32(4), level: fixed[8]! };
  return { header, payload: datagram.subarray(input.offset) };
}

/** A loss report about `flowId`: `percent` of its packets lost. */
export function lossReport(flowId: number, percent: number): Uint8Array {
  const clamped = Math.max(0, Math.min(100, Math.round(percent)));
  return encodeDatagram({ kind: DatagramKind.lossReport, flowId, sequence: 0, timestamp: 0, level: 0x7f }, Uint8Array.of(clamped));
}

/**
 * Samples (at 48 kHz) in an Opus packet, from its TOC byte (RFC 6716,
 * 3.1); 0 for a packet that is not valid Opus.
 */
export function opusPacketSamples(packet: Uint8Array): number {
  if (packet.length === 0) return 0;
  const toc = packet[0]!;
  const config = toc >> 3;
  let frameSamples: number;
  if (config < 12) frameSamples = [480, 960, 1920, 2880][config & 3]!;
  else if (config < 16) frameSamples = (config & 1) === 0 ? 480 : 960;
  else frameSamples = [120, 240, 480, 960][config & 3]!;
  const code = toc & 3;
  let frames: number;
  if (code === 0) frames = 1;
  else if (code === 3) {
    if (packet.length < 2) return 0;
    frames = packet[1]! & 0x3f;
  } else frames = 2;
  return frames * frameSamples;
}
