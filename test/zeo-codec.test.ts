// ZEO5 codec (src/zodb/zeo/): framing and messages against the recorded real sessions in
// ../shared/fixtures/zeo-traffic (one per encoding, 79 frames each), plus a table of bad
// input and a seeded encode → decode property.
//
// What it proves, per fixture file:
//   - FrameDecoder, fed each connection's stream per direction in random chunk sizes (seeded:
//     WCFS_SEED), yields exactly the recorded frames and ends clean;
//   - the first frame each way is recognised as the handshake of the file's encoding;
//   - every other payload decodes to what ZEO's own decoder saw (`decoded`, converted from the
//     README's JSON mapping to ZValues);
//   - every frame re-encodes byte for byte from its decoded form — client frames (written by
//     ZEO's ClientStorage) and server frames (written by runzeo) alike.
// Beyond the fixtures: ZEO's own marshal (the venv's ZEO, zodbpickle's pickler in fast mode)
// decodes and re-encodes our pickle messages — random ones and the opcode boundaries (int
// widths, 255/256-byte bytes, 1- and 1000+-item lists and dicts) — to the same bytes.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isCode } from '../src/errors.js';
import { ZDict, ZFloat, ZTuple, bytesId, decodeMessage, encodeMessage, idBytes, type ZValue, type ZeoMessage } from '../src/zodb/zeo/codec.js';
import { DEFAULT_MAX_FRAME, FrameDecoder, encodeFrame, encodeHandshake, parseHandshake, type ZeoEncoding } from '../src/zodb/zeo/frame.js';
import { rng } from '../src/util/rng.js';
import { fcParams, seedOr } from './helpers/fuzz.js';
import { fixturesDir } from './helpers/paths.js';
import { python } from './helpers/python.js';

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
function fromJson(j: unknown): ZValue {
  if (j === null || typeof j === 'boolean' || typeof j === 'string') return j;
  if (typeof j === 'number') return Number.isInteger(j) ? j : new ZFloat(j);
  if (Array.isArray(j)) return j.map(fromJson);
  const o = j as Record<string, unknown>;
  if ('bytes' in o) return hexBytes(o.bytes as string);
  if ('tuple' in o) return new ZTuple((o.tuple as unknown[]).map(fromJson));
  if ('dict' in o) return new ZDict((o.dict as Array<[unknown, unknown]>).map(([k, v]) => [fromJson(k), fromJson(v)]));
  if ('int' in o) {
    const v = BigInt(o.int as string);
    return v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v;
  }
  throw new Error(`unknown JSON form ${JSON.stringify(j)}`);
}

function messageOf(j: unknown): ZeoMessage {
  const t = fromJson(j);
  if (!(t instanceof ZTuple) || t.items.length !== 4) throw new Error('fixture: not a 4-tuple');
  const [msgid, flags, method, args] = t.items;
  return { msgid: msgid!, flags: flags as boolean | number, method: method as string, args: args! };
}

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

  it('decodes every message to what ZEO decoded', () => {
    let n = 0;
    for (const f of frames) {
      if ((f.decoded as { handshake?: string }).handshake !== undefined) continue;
      expect(decodeMessage(enc, hexBytes(f.hex.slice(8))), `seq ${f.seq}`).toStrictEqual(messageOf(f.decoded));
      n++;
    }
    expect(n).toBe(75);
  });

  it('re-encodes every frame byte for byte (client and server frames)', () => {
    const count = { 'C>S': 0, 'S>C': 0 };
    for (const f of frames) {
      if ((f.decoded as { handshake?: string }).handshake !== undefined) continue;
      expect(toHex(encodeFrame(encodeMessage(enc, messageOf(f.decoded)))), `seq ${f.seq} ${f.dir}`).toBe(f.hex);
      count[f.dir]++;
    }
    expect(count).toEqual({ 'C>S': 39, 'S>C': 36 });
  });
});

describe('ids', () => {
  it('8-byte big-endian ↔ bigint', () => {
    expect(toHex(idBytes(0x040d7afb21745e00n))).toBe('040d7afb21745e00');
    expect(bytesId(hexBytes('040d7afb21745e00'))).toBe(0x040d7afb21745e00n);
    expect(bytesId(idBytes(0xffffffffffffffffn))).toBe(0xffffffffffffffffn);
    expect(() => bytesId(hexBytes('00'))).toThrow(/want 8 bytes/);
    expect(() => bytesId('x')).toThrow(/want 8 bytes/);
    expect(
      isCode(
        catchErr(() => idBytes(-1n)),
        'WCFS_EBADARG',
      ),
    ).toBe(true);
  });

  it('ints beyond 64 bits: pickle carries them (LONG1), msgpack refuses them', () => {
    const m: ZeoMessage = { msgid: 1, flags: false, method: 'x', args: new ZTuple([2n ** 64n, -(2n ** 63n) - 1n]) };
    expect(decodeMessage('pickle', encodeMessage('pickle', m))).toStrictEqual(m);
    expect(
      isCode(
        catchErr(() => encodeMessage('msgpack', m)),
        'WCFS_EBADARG',
      ),
    ).toBe(true);
    const edge: ZeoMessage = { ...m, args: new ZTuple([2n ** 64n - 1n, -(2n ** 63n)]) };
    expect(decodeMessage('msgpack', encodeMessage('msgpack', edge))).toStrictEqual(edge);
  });
});

// ---- bad input ----

const frameOf = (payload: Uint8Array): Uint8Array => encodeFrame(payload);
const pk = (h: string): Uint8Array => hexBytes(h);

const BAD_FRAMES: Array<[string, Uint8Array, number | undefined, RegExp]> = [
  ['truncated payload', hexBytes('0000000a0102'), undefined, /truncated inside a frame \(2 of 10 payload bytes\)/],
  ['truncated length prefix', hexBytes('000000'), undefined, /truncated inside a frame \(3 of 4 length bytes\)/],
  ['oversized length', hexBytes('7fffffff'), undefined, /frame of 2147483647 bytes exceeds the limit/],
  ['over a small bound', hexBytes('00000011'), 16, /frame of 17 bytes exceeds the limit of 16/],
];

// payloads: [name, encoding, bytes, message pattern]
const BAD_MESSAGES: Array<[string, ZeoEncoding, Uint8Array, RegExp]> = [
  ['garbage pickle', 'pickle', pk('deadbeef'), /undecodable pickle/],
  ['pickle without STOP', 'pickle', pk('80034b01'), /undecodable pickle/],
  ['bytes after STOP', 'pickle', pk('80034b012e00'), /1 bytes after STOP/],
  ['empty payload', 'pickle', pk(''), /undecodable pickle/],
  ['truncated after TUPLE3', 'pickle', pk('80034b01894e87'), /undecodable pickle/],
  ['wrong arity: 3-tuple', 'pickle', pk('80034b0189580100000078872e'), /want a 4-tuple .* got tuple\[3\]/],
  ['wrong arity: 5-tuple', 'pickle', pk('8003284b0189580100000078294e742e'), /want a 4-tuple .* got tuple\[5\]/],
  ['not a tuple', 'pickle', pk('80034b012e'), /want a 4-tuple .* got int/],
  ['a list, not a tuple', 'pickle', pk('80035d284b014b024b034b04652e'), /got list\[4\]/],
  ['method not text', 'pickle', pk('8003284b01894b0229742e'), /method must be text, got int/],
  ['flags not bool/int', 'pickle', pk('8003284b014e5801000000782974'.concat('2e')), /flags must be a bool or an int, got None/],
  ['class reference', 'pickle', pk('8003636275696c74696e730a6c656e0a2e'), /global builtins\.len is not allowed/],
  ['persistent id', 'pickle', pk('80034b01512e'), /persistent id in a ZEO message/],
  ['object (REDUCE)', 'pickle', pk('8003636275696c74696e730a6c656e0a29522e'), /undecodable pickle|not allowed/],
  ['garbage msgpack', 'msgpack', pk('c1'), /undecodable msgpack/],
  ['truncated msgpack', 'msgpack', pk('9401c2a872656769'), /undecodable msgpack/],
  ['msgpack extra bytes', 'msgpack', pk('9401c2a17890c0'), /undecodable msgpack/],
  ['msgpack wrong arity', 'msgpack', pk('9301c2a178'), /want a 4-tuple .* got tuple\[3\]/],
  ['msgpack method not text', 'msgpack', pk('9401c20290'), /method must be text/],
  ['msgpack int dict key', 'msgpack', pk('9401c2a17881010c'), /dict key must be text, got number/],
  ['msgpack ext type', 'msgpack', pk('9401c2a178d40100'), /unsupported value/],
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

  it.each(BAD_MESSAGES)('message: %s (%s)', (_name, enc, payload, re) => {
    let err: unknown;
    try {
      decodeMessage(enc, payload);
    } catch (e) {
      err = e;
    }
    expect(isCode(err, 'WCFS_EZEOPROTO'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(re);
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

const safeInt = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }).map((v): ZValue => (v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v));
const leaf = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  safeInt,
  fc.integer({ min: -300, max: 70000 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((f) => new ZFloat(Object.is(f, -0) ? 0 : f)),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.string({ minLength: 30, maxLength: 300 }),
  fc.uint8Array({ maxLength: 300 }),
);
const { value: zvalue } = fc.letrec<{ value: ZValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leaf,
    fc.array(tie('value'), { maxLength: 5 }).map((a) => new ZTuple(a)),
    fc.array(tie('value'), { maxLength: 5 }),
    fc
      .uniqueArray(
        fc.tuple(
          fc.string({ maxLength: 8 }).map((s) => 'k' + s),
          tie('value'),
        ),
        { maxLength: 4, selector: ([k]) => k },
      )
      .map((e) => new ZDict(e)),
  ),
}));
const message = fc
  .record({
    msgid: fc.oneof(
      fc.integer({ min: -1, max: 2 ** 31 }),
      fc.tuple(fc.uint8Array({ minLength: 8, maxLength: 8 }), fc.uint8Array({ minLength: 8, maxLength: 8 })).map((t) => new ZTuple(t) as ZValue),
    ),
    flags: fc.oneof(fc.boolean(), fc.constantFrom(0, 2)),
    method: fc.string({ maxLength: 30 }),
    args: zvalue,
  })
  .map((m): ZeoMessage => ({ ...m }));

/** What a msgpack round trip gives: arrays come back as tuples, integral floats as ints. */
function viaMsgpack(v: ZValue): ZValue {
  if (v instanceof ZTuple) return new ZTuple(v.items.map(viaMsgpack));
  if (Array.isArray(v)) return new ZTuple(v.map(viaMsgpack));
  if (v instanceof ZDict) return new ZDict(v.entries.map(([k, x]) => [k, viaMsgpack(x)]));
  if (v instanceof ZFloat && Number.isSafeInteger(v.value)) return v.value;
  return v;
}

describe('property: encode → decode', () => {
  it('pickle round-trips every message exactly, and re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(message, (m) => {
        const b = encodeMessage('pickle', m);
        const d = decodeMessage('pickle', b);
        expect(d).toStrictEqual(m);
        expect(toHex(encodeMessage('pickle', d))).toBe(toHex(b));
      }),
      fcParams(300),
    );
  });

  it('msgpack round-trips every message (arrays as tuples, as ZEO reads them), and re-encodes to the same bytes', () => {
    const msgpackMessage = message.map((m): ZeoMessage => ({ ...m, msgid: viaMsgpack(m.msgid), args: viaMsgpack(m.args) }));
    fc.assert(
      fc.property(msgpackMessage, (m) => {
        const b = encodeMessage('msgpack', m);
        const d = decodeMessage('msgpack', b);
        expect(d).toStrictEqual(m);
        expect(toHex(encodeMessage('msgpack', d))).toBe(toHex(b));
      }),
      fcParams(300),
    );
  });

  it('msgpack: lists come back as tuples, an integral float as an int (documented lossy corners)', () => {
    const m: ZeoMessage = { msgid: 1, flags: false, method: 'x', args: [new ZFloat(2), new ZFloat(2.5), [1]] };
    expect(decodeMessage('msgpack', encodeMessage('msgpack', m)).args).toStrictEqual(new ZTuple([2, new ZFloat(2.5), new ZTuple([1])]));
    expect(decodeMessage('pickle', encodeMessage('pickle', m)).args).toStrictEqual(m.args);
  });

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

  it('big frames (views of held chunks) stay exact: a caller reusing its chunk, or handing chunks over', () => {
    const size = fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: (16 << 10) - 4, max: (16 << 10) + 4 }), fc.integer({ min: 1, max: 100 << 10 }));
    fc.assert(
      fc.property(
        fc.array(size, { maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 120 << 10 }), { minLength: 1 }),
        fc.boolean(),
        fc.integer(),
        (sizes, cuts, owns, seed) => {
          const ps = sizes.map((n, k) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + k * 7 + seed) & 0xff));
          const wire = Buffer.concat(ps.map((p) => encodeFrame(p)));
          const d = new FrameDecoder(DEFAULT_MAX_FRAME, owns);
          const got: Uint8Array[] = [];
          for (let off = 0, i = 0; off < wire.length; i++) {
            const n = cuts[i % cuts.length]!;
            const chunk = Uint8Array.from(wire.subarray(off, off + n)); // the caller's buffer
            got.push(...d.push(chunk));
            if (!owns) chunk.fill(0xee); // … which it reuses at once
            off += n;
          }
          d.end();
          expect(got.map(toHex)).toEqual(ps.map(toHex));
        },
      ),
      fcParams(100),
    );
  });
});

// ---- against ZEO's own marshal ----

/** Boundary cases of the pickler's opcode choices. */
const EDGES: ZValue[] = [
  new ZTuple([0, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -1, -(2 ** 31), -(2 ** 31) - 1, 2n ** 64n - 1n, -(2n ** 63n), 2n ** 2100n]),
  new ZTuple([new Uint8Array(255), new Uint8Array(256), new Uint8Array(70000), '', 'x'.repeat(300), 'é€😀']),
  new ZTuple([
    [],
    [1],
    [1, 2],
    Array.from({ length: 1000 }, (_, i) => i),
    Array.from({ length: 1001 }, (_, i) => i),
    Array.from({ length: 2500 }, (_, i) => i),
  ]),
  new ZTuple([new ZDict(), new ZDict([['a', 1]]), new ZDict(Array.from({ length: 1001 }, (_, i): [ZValue, ZValue] => [`k${i}`, i]))]),
  new ZTuple([new ZFloat(0), new ZFloat(1), new ZFloat(-2.5), new ZFloat(1e300), 0.1, null, true, false, new ZTuple([new ZTuple([])])]),
];

describe("ZEO's marshal re-encodes our pickle messages to the same bytes", () => {
  it('random messages and opcode boundaries', () => {
    const msgs: ZeoMessage[] = [
      ...EDGES.map((args, i): ZeoMessage => ({ msgid: i + 1, flags: false, method: 'edge', args })),
      ...fc.sample(message, { seed: SEED, numRuns: 200 }),
    ];
    const input = msgs.map((m) => toHex(encodeMessage('pickle', m))).join('\n') + '\n';
    const prog = [
      'import sys',
      'from ZEO.asyncio.marshal import encoder, pickle_decode',
      "enc = encoder(b'Z')",
      'for line in sys.stdin:',
      '    m = pickle_decode(bytes.fromhex(line.strip()))',
      '    sys.stdout.write(enc(*m).hex() + "\\n")',
    ].join('\n');
    const r = spawnSync(python(), ['-c', prog], { input, maxBuffer: 256 << 20, timeout: 60_000 });
    expect(r.status, r.stderr.toString()).toBe(0);
    const got = r.stdout.toString().trim().split('\n');
    expect(got).toHaveLength(msgs.length);
    got.forEach((h, i) => expect(h, `message ${i}`).toBe(input.split('\n')[i]));
  });
});
