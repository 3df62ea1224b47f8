// End-to-end encryption in the page: RFC 9605's vectors through the page's
// own sealing and opening, a frame the native SDK opens too, and the key
// changes of a call, on a virtual clock.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FrameOpener,
  MediaEncryption,
  ROTATION_OVERLAP_MS,
  SframeKey,
  announcementBytes,
  keyFromHex,
  readAnnouncement,
  readSframeHeader,
  sframeHeader,
} from "../src/e2ee.js";

function hex(text: string): Uint8Array {
  return Uint8Array.from(text.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

function toHex(bytes: Uint8Array): string {
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

test("RFC 9605 appendix C.4 (AES_128_GCM_SHA256_128) seals and opens as the RFC says", async () => {
  const key = await SframeKey.fromBaseKey(hex("000102030405060708090a0b0c0d0e0f"), 291n);
  const metadata = hex("4945544620534672616d65205747");
  const plaintext = hex("64726166742d696574662d736672616d652d656e63");
  const expected = "9901234567b7412c2513a1b66dbb48841bbaf17f598751176ad847681a69c6d0b091c07018ce4adb34eb";
  const sealed = await key.seal(17767n, metadata, plaintext);
  assert.equal(toHex(sealed.subarray(metadata.length)), expected);
  const opener = new FrameOpener();
  opener.add(key);
  assert.deepEqual(await opener.open(metadata, hex(expected)), { payload: plaintext });
});

test("RFC 9605 appendix C.1 headers are written and read back", () => {
  const max = 0xffffffffffffffffn;
  for (const [keyId, counter, written] of [
    [0n, 0n, "00"],
    [0n, 5n, "05"],
    [0n, 300n, "09012c"],
    [0n, 0xffffn, "09ffff"],
    [0n, 0x10000n, "0a010000"],
    [0n, max, "0fffffffffffffffff"],
    [max, 0n, "f0ffffffffffffffff"],
    [max, 0xffffn, "f9ffffffffffffffffffff"],
    [max, max, "ffffffffffffffffffffffffffffffffff"],
  ] as [bigint, bigint, string][]) {
    assert.equal(toHex(sframeHeader(keyId, counter)), written, `${keyId} ${counter}`);
    assert.deepEqual(readSframeHeader(hex(written)), { keyId, counter, length: written.length / 2 });
  }
  assert.equal(readSframeHeader(hex("09ff")), null, "a counter cut short");
});

// The example frame of docs/protocol.md, which the native SDK's own
// sealer writes too (media-e2ee's `the_documented_frame`).
const DOCUMENTED = {
  material: "07".repeat(32),
  sender: "alice",
  salt: "01".repeat(16),
  header: "100000000001000003c01e",
  payload: "an opus packet",
  sealed: "000a1bdefe0e6453b8daa97247eddb540830a1718c89763a0431ac38764034",
};

test("the documented frame: key material, sender, salt and key id 0 give the native SDK's bytes", async () => {
  const announcement = { keyId: 0, salt: hex(DOCUMENTED.salt) };
  const key = await SframeKey.announced(keyFromHex(DOCUMENTED.material), DOCUMENTED.sender, announcement);
  const header = hex(DOCUMENTED.header);
  const sealed = await key.seal(0n, header, new TextEncoder().encode(DOCUMENTED.payload));
  assert.equal(toHex(sealed.subarray(header.length)), DOCUMENTED.sealed);
});

test("key material in hex, announcements, and garbage refused", () => {
  assert.throws(() => keyFromHex("0011"), /16 to 64 bytes/);
  assert.throws(() => keyFromHex("zz".repeat(16)), /hexadecimal/);
  assert.equal(keyFromHex("ab".repeat(32)).length, 32);
  const announcement = { keyId: 5, salt: new Uint8Array(16).fill(9) };
  const bytes = announcementBytes(announcement);
  assert.equal(toHex(bytes.subarray(0, 2)), "0105");
  assert.deepEqual(readAnnouncement(bytes), announcement);
  assert.equal(readAnnouncement(bytes.subarray(0, 17)), null);
  assert.equal(readAnnouncement(Uint8Array.of(2, 0, ...new Uint8Array(16))), null);
  const high = bytes.slice();
  high[1] = 8;
  assert.equal(readAnnouncement(high), null);
});

const HEADER = hex("100000000007000000000b402a");

/** Alice and bob with one shared key, their words passed as the server would. */
function pair(material: string) {
  const keys = { shared: keyFromHex(material) };
  return { alice: new MediaEncryption(keys, "alice"), bob: new MediaEncryption(keys, "bob") };
}

test("members hear each other; a key comes when a member leaves and overlaps the old one", async () => {
  const { alice, bob } = pair("42".repeat(32));
  const carol = new MediaEncryption({ shared: keyFromHex("42".repeat(32)) }, "carol");
  let now = 0;
  const deliver = (from: string, words: [string, Uint8Array][]) => {
    for (const [to, payload] of words) ({ bob, carol, alice } as Record<string, MediaEncryption>)[to]!.heard(from, payload);
  };
  deliver("alice", alice.wordsFor(now, ["bob", "carol"]));
  deliver("bob", bob.wordsFor(now, ["alice", "carol"]));
  await new Promise((resolve) => setTimeout(resolve, 20));
  const first = (await alice.seal(now, HEADER, Uint8Array.of(1, 2, 3)))!;
  assert.deepEqual(await bob.open(now, "alice", HEADER, first.subarray(HEADER.length)), { payload: Uint8Array.of(1, 2, 3) });
  assert.deepEqual(await carol.open(now, "alice", HEADER, first.subarray(HEADER.length)), { payload: Uint8Array.of(1, 2, 3) });
  // Carol leaves: bob gets alice's next key, carol nothing.
  const words = alice.wordsFor(now, ["bob"]);
  assert.deepEqual(words.map(([to]) => to), ["bob"]);
  assert.equal(readAnnouncement(words[0]![1])!.keyId, 1);
  deliver("alice", words);
  await new Promise((resolve) => setTimeout(resolve, 20));
  // Within the overlap the old key still seals; after it, the new one.
  const during = (await alice.seal(now + ROTATION_OVERLAP_MS - 1, HEADER, Uint8Array.of(4)))!;
  assert.equal(readSframeHeader(during.subarray(HEADER.length))!.keyId, 0n);
  now += ROTATION_OVERLAP_MS;
  const after = (await alice.seal(now, HEADER, Uint8Array.of(5)))!;
  assert.equal(readSframeHeader(after.subarray(HEADER.length))!.keyId, 1n);
  assert.deepEqual(await bob.open(now, "alice", HEADER, after.subarray(HEADER.length)), { payload: Uint8Array.of(5) });
  assert.deepEqual(await bob.open(now, "alice", HEADER, during.subarray(HEADER.length)), { payload: Uint8Array.of(4) });
  assert.deepEqual(await carol.open(now, "alice", HEADER, after.subarray(HEADER.length)), { problem: null }, "missing, within the grace");
  assert.deepEqual(await carol.open(now + 1000, "alice", HEADER, after.subarray(HEADER.length)), { problem: "missing" });
  assert.deepEqual(await carol.open(now + 1001, "alice", HEADER, after.subarray(HEADER.length)), { problem: null }, "said once");
});

test("a wrong key is said at once, once; without key material nothing is sealed", async () => {
  const alice = new MediaEncryption({ shared: keyFromHex("01".repeat(16)) }, "alice");
  const bob = new MediaEncryption({ shared: keyFromHex("02".repeat(16)) }, "bob");
  for (const [to, payload] of alice.wordsFor(0, ["bob"])) {
    assert.equal(to, "bob");
    bob.heard("alice", payload);
  }
  await new Promise((resolve) => setTimeout(resolve, 20));
  const sealed = (await alice.seal(0, HEADER, Uint8Array.of(7)))!.subarray(HEADER.length);
  assert.deepEqual(await bob.open(0, "alice", HEADER, sealed), { problem: "wrong" });
  assert.deepEqual(await bob.open(0, "alice", HEADER, sealed), { problem: null });
  assert.deepEqual(await bob.open(0, "alice", HEADER, Uint8Array.of(0xff)), { problem: null }, "not an SFrame: dropped, no word");
  const carol = new MediaEncryption({ perUser: new Map([["bob", keyFromHex("02".repeat(16))]]) }, "carol");
  assert.equal(carol.canSeal(), false);
  assert.deepEqual(carol.wordsFor(0, ["bob"]), []);
  assert.equal(await carol.seal(0, HEADER, Uint8Array.of(1)), null);
});
