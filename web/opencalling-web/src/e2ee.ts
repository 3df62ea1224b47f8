// End-to-end encrypted audio with the application's keys (docs/protocol.md,
// "End-to-end encrypted audio"): each Opus packet sealed as an SFrame
// (RFC 9605, AES_128_GCM_SHA256_128) with WebCrypto, each sender with keys
// of its own derived from the application's key material, announced to
// the members with `MemberKey`. The same derivation, header and rules as
// the native SDK's `media-e2ee` crate, so pages and native apps share
// encrypted calls. Built-in keys (identity keys, safety numbers) are the
// native SDK's only.

import { CallingError, ErrorCode } from "./errors.js";

/** The first byte of an announcement: keys from the application. */
export const SCHEME_APP_KEYS = 1;
/** Key ids a sender cycles through: those the SFrame config byte holds. */
export const KEY_IDS = 8;
/** The most bytes sealing adds to a packet: config byte, counter, tag. */
export const MAX_OVERHEAD = 1 + 8 + 16;
/** How long after a new key goes to the members it starts sealing. */
export const ROTATION_OVERLAP_MS = 500;
/** A member's audio may go without its key this long before the page is told. */
export const KEY_GRACE_MS = 1000;

const SALT_LEN = 16;
const CIPHER_SUITE = 0x0004;
const BASE_KEY_INFO = "OpenCalling SFrame 1 base key ";
const TAG_LEN = 16;

/** Why a member's audio does not open. */
export type KeyProblem = "missing" | "wrong";

/** Where the key material comes from: one value every user shares, or each user's. */
export type AppKeys = { shared: Uint8Array } | { perUser: Map<string, Uint8Array> };

/** Key material as hexadecimal text: 32 to 128 digits (16 to 64 bytes). */
export function keyFromHex(text: string): Uint8Array {
  const digits = text.trim();
  if (digits.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(digits)) {
    throw new CallingError(ErrorCode.INVALID_PARAMETER, "a media key is hexadecimal digits, two a byte");
  }
  const bytes = new Uint8Array(digits.length / 2);
  for (let at = 0; at < bytes.length; at += 1) bytes[at] = parseInt(digits.slice(2 * at, 2 * at + 2), 16);
  if (bytes.length < 16 || bytes.length > 64) {
    throw new CallingError(ErrorCode.INVALID_PARAMETER, `a media key is 16 to 64 bytes, not ${bytes.length}`);
  }
  return bytes;
}

/** A sender's key id and salt, as announced. */
export interface KeyAnnouncement {
  keyId: number;
  salt: Uint8Array;
}

/** An announcement as a `MemberKey` payload: scheme 1, the key id, the salt. */
export function announcementBytes(announcement: KeyAnnouncement): Uint8Array {
  const bytes = new Uint8Array(2 + SALT_LEN);
  bytes[0] = SCHEME_APP_KEYS;
  bytes[1] = announcement.keyId;
  bytes.set(announcement.salt, 2);
  return bytes;
}

/** An announcement from a `MemberKey` payload; null for anything else. */
export function readAnnouncement(bytes: Uint8Array): KeyAnnouncement | null {
  if (bytes.length !== 2 + SALT_LEN || bytes[0] !== SCHEME_APP_KEYS || bytes[1]! >= KEY_IDS) return null;
  return { keyId: bytes[1]!, salt: bytes.slice(2) };
}

const subtle = (): SubtleCrypto => globalThis.crypto.subtle;

async function hkdf(salt: Uint8Array, input: Uint8Array, info: Uint8Array, bytes: number): Promise<Uint8Array> {
  const key = await subtle().importKey("raw", input as BufferSource, "HKDF", false, ["deriveBits"]);
  const bits = await subtle().deriveBits({ name: "HKDF", hash: "SHA-256", salt: salt as BufferSource, info: info as BufferSource }, key, bytes * 8);
  return new Uint8Array(bits);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const joined = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    joined.set(part, at);
    at += part.length;
  }
  return joined;
}

function bigEndian(value: bigint, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let at = bytes - 1; at >= 0; at -= 1) {
    out[at] = Number(value & 0xffn);
    value >>= 8n;
  }
  return out;
}

/** The fewest bytes that hold `value` (at least one). */
function minimalBytes(value: bigint): number {
  let bytes = 1;
  while (value >> BigInt(8 * bytes) > 0n) bytes += 1;
  return bytes;
}

/** An SFrame header (RFC 9605, 4.3): the config byte, then the key id and counter where they do not fit in it. */
export function sframeHeader(keyId: bigint, counter: bigint): Uint8Array {
  let config = 0;
  const extra: Uint8Array[] = [];
  if (keyId < 8n) config |= Number(keyId) << 4;
  else {
    const length = minimalBytes(keyId);
    config |= 0x80 | ((length - 1) << 4);
    extra.push(bigEndian(keyId, length));
  }
  if (counter < 8n) config |= Number(counter);
  else {
    const length = minimalBytes(counter);
    config |= 0x08 | (length - 1);
    extra.push(bigEndian(counter, length));
  }
  return concat(Uint8Array.of(config), ...extra);
}

/** An SFrame header read: key id, counter, its length; null if the bytes end first. */
export function readSframeHeader(bytes: Uint8Array): { keyId: bigint; counter: bigint; length: number } | null {
  if (bytes.length === 0) return null;
  const config = bytes[0]!;
  let at = 1;
  const take = (length: number): bigint | null => {
    if (at + length > bytes.length) return null;
    let value = 0n;
    for (let index = 0; index < length; index += 1) value = (value << 8n) | BigInt(bytes[at + index]!);
    at += length;
    return value;
  };
  const keyId = (config & 0x80) === 0 ? BigInt((config >> 4) & 0x07) : take(((config >> 4) & 0x07) + 1);
  if (keyId === null) return null;
  const counter = (config & 0x08) === 0 ? BigInt(config & 0x07) : take((config & 0x07) + 1);
  if (counter === null) return null;
  return { keyId, counter, length: at };
}

/** RFC 9605's AEAD key and nonce salt for one key id (4.4.2). */
export class SframeKey {
  private constructor(
    readonly keyId: bigint,
    private readonly aes: CryptoKey,
    private readonly salt: Uint8Array,
  ) {}

  static async fromBaseKey(base: Uint8Array, keyId: bigint): Promise<SframeKey> {
    const label = (what: string) =>
      concat(new TextEncoder().encode(`SFrame 1.0 Secret ${what} `), bigEndian(keyId, 8), bigEndian(BigInt(CIPHER_SUITE), 2));
    const empty = new Uint8Array(0);
    const key = await hkdf(empty, base, label("key"), 16);
    const salt = await hkdf(empty, base, label("salt"), 12);
    const aes = await subtle().importKey("raw", key as BufferSource, "AES-GCM", false, ["encrypt", "decrypt"]);
    return new SframeKey(keyId, aes, salt);
  }

  /** `sender`'s key that `announcement` names, from its key material. */
  static async announced(material: Uint8Array, sender: string, announcement: KeyAnnouncement): Promise<SframeKey> {
    const info = concat(new TextEncoder().encode(BASE_KEY_INFO), new TextEncoder().encode(sender));
    const base = await hkdf(announcement.salt, material, info, 16);
    return SframeKey.fromBaseKey(base, BigInt(announcement.keyId));
  }

  private nonce(counter: bigint): Uint8Array {
    const nonce = this.salt.slice();
    const counterBytes = bigEndian(counter, 8);
    for (let at = 0; at < 8; at += 1) nonce[4 + at]! ^= counterBytes[at]!;
    return nonce;
  }

  /** `metadata` (authenticated), the SFrame header, the ciphertext and tag of `payload`. */
  async seal(counter: bigint, metadata: Uint8Array, payload: Uint8Array): Promise<Uint8Array> {
    const header = sframeHeader(this.keyId, counter);
    const sealed = await subtle().encrypt(
      { name: "AES-GCM", iv: this.nonce(counter) as BufferSource, additionalData: concat(header, metadata) as BufferSource, tagLength: 128 },
      this.aes,
      payload as BufferSource,
    );
    return concat(metadata, header, new Uint8Array(sealed));
  }

  /** The payload of a frame whose header was read as `header`; throws if it does not authenticate. */
  async open(counter: bigint, metadata: Uint8Array, header: Uint8Array, sealed: Uint8Array): Promise<Uint8Array> {
    const opened = await subtle().decrypt(
      { name: "AES-GCM", iv: this.nonce(counter) as BufferSource, additionalData: concat(header, metadata) as BufferSource, tagLength: 128 },
      this.aes,
      sealed as BufferSource,
    );
    return new Uint8Array(opened);
  }
}

/** What opening a frame gave: the Opus packet, or why not. */
export type Opened = { payload: Uint8Array } | { error: KeyProblem | "malformed" };

/** One sender's keys, by key id (at most eight: a new one of an id replaces it). */
export class FrameOpener {
  private readonly keys: SframeKey[] = [];

  add(key: SframeKey): void {
    const kept = this.keys.filter((old) => old.keyId !== key.keyId);
    if (kept.length === KEY_IDS) kept.shift();
    kept.push(key);
    this.keys.splice(0, this.keys.length, ...kept);
  }

  async open(metadata: Uint8Array, frame: Uint8Array): Promise<Opened> {
    const header = readSframeHeader(frame);
    if (header === null || frame.length < header.length + TAG_LEN) return { error: "malformed" };
    const key = this.keys.find((candidate) => candidate.keyId === header.keyId);
    if (key === undefined) return { error: "missing" };
    try {
      return { payload: await key.open(header.counter, metadata, frame.subarray(0, header.length), frame.subarray(header.length)) };
    } catch {
      return { error: "wrong" };
    }
  }
}

/** Our key: its announcement and, once derived, the key itself. */
interface OurKey {
  announcement: KeyAnnouncement;
  key: Promise<SframeKey>;
  counter: bigint;
  /** From when (ms, the page's clock) it seals. */
  from: number;
}

/** A member whose audio does not open: since when, what the page was told. */
interface Trouble {
  since: number;
  told: KeyProblem | null;
}

/**
 * A call's end-to-end encryption in the page, as the native SDK's: our key
 * for the call (a new one when a member leaves, or joins after our key went
 * to someone, sealed with ROTATION_OVERLAP_MS after the members got it),
 * which members hold it, the keys they announced, and the key problems to
 * tell. Sealing and opening are WebCrypto's, so they answer with promises.
 */
export class MediaEncryption {
  private started = false;
  private current: OurKey | null = null;
  private previous: OurKey | null = null;
  private members: string[] = [];
  private given = false;
  private readonly told = new Set<string>();
  private readonly openers = new Map<string, FrameOpener>();
  private readonly trouble = new Map<string, Trouble>();

  constructor(
    private readonly keys: AppKeys,
    private readonly me: string,
  ) {}

  private keyOf(user: string): Uint8Array | null {
    return "shared" in this.keys ? this.keys.shared : (this.keys.perUser.get(user) ?? null);
  }

  /** Our key material: without it the call sends nothing (never audio in the clear). */
  canSeal(): boolean {
    return this.keyOf(this.me) !== null;
  }

  /** The call goes on with `members` (the others, entered): the words to send them. */
  wordsFor(now: number, members: string[]): [string, Uint8Array][] {
    if (!this.started) {
      this.started = true;
      this.newKey(now, 0, 0);
    } else if (this.current !== null) {
      const left = this.members.some((was) => !members.includes(was));
      const joined = members.some((is) => !this.members.includes(is));
      if (left || (joined && this.given)) this.newKey(now, (this.current.announcement.keyId + 1) % KEY_IDS, ROTATION_OVERLAP_MS);
    }
    this.members = [...members];
    for (const told of [...this.told]) if (!members.includes(told)) this.told.delete(told);
    if (this.current === null) return [];
    const words: [string, Uint8Array][] = [];
    for (const member of members) {
      if (this.told.has(member)) continue;
      this.told.add(member);
      this.given = true;
      words.push([member, announcementBytes(this.current.announcement)]);
    }
    return words;
  }

  private newKey(now: number, keyId: number, overlapMs: number): void {
    this.told.clear();
    this.given = false;
    const material = this.keyOf(this.me);
    if (material === null) {
      this.current = null;
      return;
    }
    const announcement = { keyId, salt: crypto.getRandomValues(new Uint8Array(SALT_LEN)) };
    const key = SframeKey.announced(material, this.me, announcement);
    key.catch(() => undefined);
    if (this.current !== null && this.current.from <= now) this.previous = this.current;
    this.current = { announcement, key, counter: 0n, from: now + overlapMs };
  }

  /** A member's word: its key, kept for its audio. */
  heard(from: string, payload: Uint8Array): void {
    const announcement = readAnnouncement(payload);
    const material = this.keyOf(from);
    if (announcement === null || material === null) return;
    let opener = this.openers.get(from);
    if (opener === undefined) {
      opener = new FrameOpener();
      this.openers.set(from, opener);
    }
    const keep = opener;
    SframeKey.announced(material, from, announcement).then(
      (key) => keep.add(key),
      () => undefined,
    );
  }

  /** Our frame sealed behind `metadata` (the header as sent), or null without a key. */
  async seal(now: number, metadata: Uint8Array, payload: Uint8Array): Promise<Uint8Array | null> {
    let sealing = this.current;
    if (sealing !== null && sealing.from > now) sealing = this.previous;
    if (sealing === null) return null;
    // The counter is taken before the first await: no two frames share one.
    const counter = sealing.counter;
    sealing.counter += 1n;
    return (await sealing.key).seal(counter, metadata, payload);
  }

  /**
   * A member's frame opened; a problem to tell the page, once per member
   * until its audio opens again: at once for a wrong key, after
   * KEY_GRACE_MS for a missing one (its first frames may overtake its
   * announcement).
   */
  async open(now: number, from: string, metadata: Uint8Array, frame: Uint8Array): Promise<{ payload: Uint8Array } | { problem: KeyProblem | null }> {
    const opened = await (this.openers.get(from) ?? new FrameOpener()).open(metadata, frame);
    if ("payload" in opened) {
      this.trouble.delete(from);
      return opened;
    }
    if (opened.error === "malformed") return { problem: null };
    let trouble = this.trouble.get(from);
    if (trouble === undefined) {
      trouble = { since: now, told: null };
      this.trouble.set(from, trouble);
    }
    const due = opened.error === "wrong" || now - trouble.since >= KEY_GRACE_MS;
    if (!due || trouble.told === opened.error) return { problem: null };
    trouble.told = opened.error;
    return { problem: opened.error };
  }

  /** The call is over: the next one has keys of its own. */
  endCall(): void {
    this.started = false;
    this.current = null;
    this.previous = null;
    this.members = [];
    this.given = false;
    this.told.clear();
    this.openers.clear();
    this.trouble.clear();
  }
}
