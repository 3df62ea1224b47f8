// The jitter buffer on a virtual clock.

import { test } from "node:test";
import assert from "node:assert/strict";
import { JitterBuffer, type Pull } from "../src/jitter.js";

const VOICE = 0x80 | 20;
const QUIET = 100;

function packet(sequence: number): Uint8Array {
  return Uint8Array.of(0xfc, sequence & 0xff);
}

/** Pulls 20 ms at a time from `from` to `to` ms. */
function play(buffer: JitterBuffer, from: number, to: number): Pull[] {
  const pulls: Pull[] = [];
  for (let now = from; now < to; now += 20) pulls.push(buffer.pull(now));
  return pulls;
}

test("a clean path plays every packet in order after the starting 60 ms", () => {
  const buffer = new JitterBuffer();
  const pulls: Pull[] = [];
  for (let index = 0; index < 50; index += 1) {
    buffer.insert(index * 20, index, index * 960, VOICE, packet(index), 960);
    pulls.push(buffer.pull(index * 20));
  }
  const played = pulls.filter((pull) => pull.kind === "packet").map((pull) => (pull.kind === "packet" ? pull.payload[1] : -1));
  assert.deepEqual(pulls.slice(0, 3).map((pull) => pull.kind), ["silence", "silence", "silence"]);
  assert.deepEqual(played, [...Array(played.length).keys()]);
  assert.equal(buffer.stats().concealed, 0);
});

test("reordered packets play in order; a lost one is concealed once; a late one is dropped", () => {
  const buffer = new JitterBuffer();
  const order = [0, 1, 2, 4, 3, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];
  order.forEach((sequence, index) => buffer.insert(index * 20, sequence, sequence * 960, VOICE, packet(sequence), 960));
  const pulls = play(buffer, 400, 820);
  const kinds = pulls.map((pull) => (pull.kind === "packet" ? pull.payload[1] : pull.kind));
  assert.deepEqual(kinds.slice(0, 10), [0, 1, 2, 3, 4, 5, 6, "conceal", 8, 9]);
  buffer.insert(900, 7, 7 * 960, VOICE, packet(7), 960);
  assert.equal(buffer.stats().late, 1);
  assert.equal(buffer.stats().concealed, 1);
});

test("a pause (contiguous sequence, a timestamp jump) is silence, never concealment", () => {
  const buffer = new JitterBuffer();
  // A talker's pause: the last packets before it hold no voice.
  for (let index = 0; index < 10; index += 1) buffer.insert(index * 20, index, index * 960, index < 7 ? VOICE : QUIET, packet(index), 960);
  // Muted for a second: the next packet's timestamp jumps by 50 frames.
  for (let index = 10; index < 20; index += 1) buffer.insert(1200 + index * 20, index, (index + 50) * 960, VOICE, packet(index), 960);
  const pulls = play(buffer, 60, 1800);
  const kinds = pulls.map((pull) => (pull.kind === "packet" ? pull.payload[1] : pull.kind));
  const gap = kinds.slice(kinds.indexOf(9) + 1, kinds.indexOf(10));
  assert.ok(gap.length >= 40, `the pause lasts: ${gap.length} pulls`);
  assert.ok(gap.every((kind) => kind === "silence"), `${gap}`);
  assert.equal(pulls.filter((pull) => pull.kind === "packet").length, 20);
});

test("the target follows jitter: more delay on a jittery path, and playout catches up in pauses", () => {
  const steady = new JitterBuffer();
  const jittery = new JitterBuffer();
  for (let index = 0; index < 200; index += 1) {
    steady.insert(index * 20, index, index * 960, QUIET, packet(index), 960);
    jittery.insert(index * 20 + (index % 5) * 15, index, index * 960, QUIET, packet(index), 960);
  }
  assert.ok(jittery.targetMs() >= steady.targetMs() + 40, `${jittery.targetMs()} against ${steady.targetMs()}`);
  assert.ok(steady.targetMs() <= 30, `${steady.targetMs()}`);
});
