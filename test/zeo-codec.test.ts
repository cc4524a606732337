// ZEO5 codec (src/zodb/zeo/): framing and messages against the recorded real sessions in
// ../shared/fixtures/zeo-traffic (one per encoding, 79 frames each), plus a table of bad
// input and a seeded encode → decode property.
//
// What it proves, per fixture file:
//   - FrameDecoder, fed each connection's stream per direction in random chunk sizes (seeded:
//     WCFS_SEED), yields exactly the recorded frames and ends clean;
//   - the first frame each way is recognised as the handshake of the file's encoding.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isCode } from '../src/errors.js';
import { FrameDecoder, encodeFrame, encodeHandshake, parseHandshake, type ZeoEncoding } from '../src/zodb/zeo/frame.js';
import { rng } from '../src/util/rng.js';
import { fcParams, seedOr } from './helpers/fuzz.js';
import { fixturesDir } from './helpers/paths.js';

interface Frame {
  seq: number;
  conn: string;
  dir: 'C>S' | 'S>C';
  hex: string;
  decoded: unknown;
}

const FILES: Array<[string, ZeoEncoding, string]> = [
  ['pickle.jsonl', 'pickle', 'Z5'],
  ['msgpack.jsonl', 'msgpack', 'M5'],
];

function load(name: string): Frame[] {
  const text = readFileSync(path.join(fixturesDir, 'zeo-traffic', name), 'utf8');
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Frame);
}

function catchErr(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

const hexBytes = (h: string): Uint8Array => Uint8Array.from(Buffer.from(h, 'hex'));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** The README's JSON mapping → ZValue. */
/** Streams per connection and direction, frames in order. */
function streams(frames: Frame[]): Map<string, Frame[]> {
  const m = new Map<string, Frame[]>();
  for (const f of frames) {
    const k = `${f.conn} ${f.dir}`;
    m.set(k, [...(m.get(k) ?? []), f]);
  }
  return m;
}

const SEED = seedOr(10);

describe.each(FILES)('fixture %s', (name, enc, hs) => {
  const frames = load(name);
  const byStream = streams(frames);

  it('holds the 79 frames of the session, 2 connections', () => {
    expect(frames).toHaveLength(79);
    expect(byStream.size).toBe(4);
  });

  it('the framing decoder yields exactly the recorded frames, in random chunk sizes', () => {
    const r = rng(SEED);
    for (const [key, fs] of byStream) {
      const wire = Buffer.concat(fs.map((f) => hexBytes(f.hex)));
      for (let round = 0; round < 20; round++) {
        const d = new FrameDecoder();
        const got: Uint8Array[] = [];
        const max = [1, 3, 7, 64, 4096][round % 5]!;
        for (let off = 0; off < wire.length;) {
          const n = 1 + Math.floor(r() * max);
          got.push(...d.push(wire.subarray(off, off + n)));
          off += n;
        }
        d.end();
        expect(got.map(toHex), `${key} round ${round}`).toEqual(fs.map((f) => f.hex.slice(8)));
      }
    }
  });

  it('recognises the handshake as the first frame each way', () => {
    for (const fs of byStream.values()) {
      const first = fs[0]!;
      expect(first.decoded).toEqual({ handshake: hs });
      const payload = hexBytes(first.hex.slice(8));
      expect(parseHandshake(payload)).toBe(enc);
      expect(toHex(encodeFrame(encodeHandshake(enc)))).toBe(first.hex);
      for (const f of fs.slice(1)) expect(f.decoded).not.toHaveProperty('handshake');
    }
  });
});

// ---- bad input ----

const frameOf = (payload: Uint8Array): Uint8Array => encodeFrame(payload);

const BAD_FRAMES: Array<[string, Uint8Array, number | undefined, RegExp]> = [
  ['truncated payload', hexBytes('0000000a0102'), undefined, /truncated inside a frame \(2 of 10 payload bytes\)/],
  ['truncated length prefix', hexBytes('000000'), undefined, /truncated inside a frame \(3 of 4 length bytes\)/],
  ['oversized length', hexBytes('7fffffff'), undefined, /frame of 2147483647 bytes exceeds the limit/],
  ['over a small bound', hexBytes('00000011'), 16, /frame of 17 bytes exceeds the limit of 16/],
];

describe('bad input → WCFS_EZEOPROTO', () => {
  it.each(BAD_FRAMES)('framing: %s', (_name, wire, max, re) => {
    const d = new FrameDecoder(max);
    let err: unknown;
    try {
      d.push(wire);
      d.end();
    } catch (e) {
      err = e;
    }
    expect(isCode(err, 'WCFS_EZEOPROTO'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(re);
    expect(() => d.push(new Uint8Array(0))).toThrow(err as Error); // dead after an error
  });

  it.each([['Z4'], ['M4'], ['Z3101'], ['ruok'], [''], ['z5']])('handshake %j is unknown', (s) => {
    let err: unknown;
    try {
      parseHandshake(Uint8Array.from(Buffer.from(s, 'latin1')));
    } catch (e) {
      err = e;
    }
    expect(isCode(err, 'WCFS_EZEOPROTO')).toBe(true);
    expect((err as Error).message).toMatch(/unknown handshake/);
  });

  it("encoding a payload over the bound is the caller's error (WCFS_EBADARG)", () => {
    expect(
      isCode(
        catchErr(() => encodeFrame(new Uint8Array(9), 8)),
        'WCFS_EBADARG',
      ),
    ).toBe(true);
  });

  it('a frame within the bound after a refused one is not read (the stream is lost)', () => {
    const d = new FrameDecoder(8);
    expect(d.push(frameOf(hexBytes('0102')))).toHaveLength(1);
    expect(() => d.push(hexBytes('00000009'))).toThrow(/exceeds/);
    expect(() => d.push(frameOf(hexBytes('01')))).toThrow(/exceeds/);
  });
});

// ---- property: encode → decode ----

describe('property: framing', () => {
  it('framing round-trips any payload sequence in any chunking', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 8 }), fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1 }), (ps, cuts) => {
        const wire = Buffer.concat(ps.map((p) => encodeFrame(p)));
        const d = new FrameDecoder(64);
        const got: Uint8Array[] = [];
        for (let off = 0, i = 0; off < wire.length; i++) {
          const n = cuts[i % cuts.length]!;
          got.push(...d.push(wire.subarray(off, off + n)));
          off += n;
        }
        d.end();
        expect(got.map(toHex)).toEqual(ps.map(toHex));
      }),
      fcParams(300),
    );
  });
});
