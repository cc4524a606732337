// Watch-link line codecs, fuzzed: the TS parsers (src/watchlink/wire.ts) and the C++ client's
// (native/client_wlink.cc, through the test hook native().clientParseLine) must read every
// server → client line the same way — same accept/reject, same stream, message and pin — and
// both must round-trip what the formatters write. One table (every case a fuzz run found is
// copied here) and seeded properties, run against both parsers.
//
// Seeds and reruns: see test/helpers/fuzz.ts (`npm run fuzz` for long runs).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { native } from '../src/native.js';
import { formatFrame, formatPin, formatWatch, parseClientRequest, parseFrame, parsePin, type PinRequest } from '../src/watchlink/wire.js';
import { fcParams } from './helpers/fuzz.js';

/** What a client makes of one server line (without its LF). Strings are latin1 (= bytes). */
type Reading =
  | { frame: 'bad' }
  | { stream: bigint; msg: string; pin?: PinRequest | 'bad' };

function tsRead(line: string): Reading {
  let stream: bigint, msg: string;
  try {
    ({ stream, msg } = parseFrame(line + '\n'));
  } catch (e) {
    expectPlainError(e, 'invalid frame: ');
    return { frame: 'bad' };
  }
  if (stream === 0n || stream % 2n === 1n) return { stream, msg };
  try {
    return { stream, msg, pin: parsePin(msg) };
  } catch (e) {
    expectPlainError(e, 'bad pin: ');
    return { stream, msg, pin: 'bad' };
  }
}

function cxxRead(line: string): Reading {
  const r = native().clientParseLine(Buffer.from(line, 'latin1'));
  if ('error' in r) return { frame: 'bad' };
  const out: Reading = { stream: r.stream, msg: r.msg.toString('latin1') };
  if (r.pin !== undefined) out.pin = r.pin;
  else if (r.pinError !== undefined) out.pin = 'bad';
  return out;
}

function expectPlainError(e: unknown, prefix: string): void {
  if (!(e instanceof Error) || e.constructor !== Error || !e.message.startsWith(prefix)) {
    throw new Error(`parser threw something other than its own error: ${String(e)}`, { cause: e });
  }
}

/** Both parsers agree on `line`; returns their reading. */
function read(line: string): Reading {
  const ts = tsRead(line);
  const cxx = cxxRead(line);
  expect(cxx, `C++ vs TS on ${JSON.stringify(line)}`).toEqual(ts);
  return ts;
}

const foid1 = '0000000000000001';
const pin = (blk: number, rev: bigint | null, foid = 1n): PinRequest => ({ foid, blk, rev });

// [line without LF, expected reading] — 'frame' = bad frame, 'pin' = frame ok but bad pin.
// Cases marked "found:" failed before the fix that came with them.
const table: Array<[string, Reading | 'frame' | 'pin']> = [
  ['1 ok', { stream: 1n, msg: 'ok' }],
  ['3 error bad watch: invalid oid', { stream: 3n, msg: 'error bad watch: invalid oid' }],
  ['0 fatal: pin timeout', { stream: 0n, msg: 'fatal: pin timeout' }],
  ['1 ', { stream: 1n, msg: '' }],
  ['1  ok', { stream: 1n, msg: ' ok' }],
  ['1 a\r', { stream: 1n, msg: 'a\r' }],
  ['1 a\x00b\xff', { stream: 1n, msg: 'a\x00b\xff' }],
  ['18446744073709551615 ok', { stream: 18446744073709551615n, msg: 'ok' }],
  ['18446744073709551616 ok', 'frame'],
  ['99999999999999999999 ok', 'frame'],
  ['100000000000000000000 ok', 'frame'],
  ['', 'frame'],
  ['ok', 'frame'],
  ['1', 'frame'],
  [' 1 ok', 'frame'],
  ['+1 ok', 'frame'],
  ['-1 ok', 'frame'],
  ['1a ok', 'frame'],
  ['0x1 ok', 'frame'],
  ['1_0 ok', 'frame'],
  ['\xb9 ok', 'frame'], // superscript one
  ['01 ok', 'frame'], // found: TS took a leading zero, C++ did not
  ['00 ok', 'frame'], // found: (same)
  ['02 pin 0000000000000001 #1 @head', 'frame'], // found: (same)
  [`2 pin ${foid1} #0 @head`, { stream: 2n, msg: `pin ${foid1} #0 @head`, pin: pin(0, null) }],
  [`4 pin ${foid1} #12 @00000000000000ff`, { stream: 4n, msg: `pin ${foid1} #12 @00000000000000ff`, pin: pin(12, 0xffn) }],
  [`4 pin ffffffffffffffff #1 @fffffffffffffffe`, { stream: 4n, msg: `pin ffffffffffffffff #1 @fffffffffffffffe`, pin: pin(1, 0xfffffffffffffffen, 0xffffffffffffffffn) }],
  [`4 pin ${foid1} #1 @ffffffffffffffff`, 'pin'], // found: C++ read InvalidTid as @head
  [`4 pin ${foid1} #9007199254740991 @head`, { stream: 4n, msg: `pin ${foid1} #9007199254740991 @head`, pin: pin(9007199254740991, null) }], // found: C++ capped blk at 2⁵²
  [`4 pin ${foid1} #4503599627370497 @head`, { stream: 4n, msg: `pin ${foid1} #4503599627370497 @head`, pin: pin(4503599627370497, null) }], // found: (same)
  [`4 pin ${foid1} #9007199254740992 @head`, 'pin'],
  [`4 pin ${foid1} #18446744073709551616 @head`, 'pin'],
  [`4 pin ${foid1} #${'9'.repeat(400)} @head`, 'pin'],
  [`4 pin ${foid1} #01 @head`, 'pin'], // found: TS took a leading zero, C++ did not
  [`4 pin ${foid1} #00 @head`, 'pin'], // found: (same)
  [`4 pin ${foid1} #-1 @head`, 'pin'],
  [`4 pin ${foid1} #+1 @head`, 'pin'],
  [`4 pin ${foid1} # @head`, 'pin'],
  [`4 pin ${foid1} #1.0 @head`, 'pin'],
  [`4 pin ${foid1} #1e3 @head`, 'pin'],
  [`4 pin ${foid1} 1 @head`, 'pin'],
  [`4 pin ${foid1} #1 head`, 'pin'],
  [`4 pin ${foid1} #1 @HEAD`, 'pin'],
  [`4 pin ${foid1} #1 @`, 'pin'],
  [`4 pin ${foid1} #1 @00000000000000FF`, 'pin'],
  [`4 pin ${foid1} #1 @0000000000000000f`, 'pin'],
  [`4 pin 000000000000000A #1 @head`, 'pin'],
  [`4 pin 000000000000001 #1 @head`, 'pin'],
  [`4 pin 00000000000000001 #1 @head`, 'pin'],
  [`4 pin ${foid1} #1 @head `, 'pin'],
  [`4 pin ${foid1}  #1 @head`, 'pin'],
  [`4  pin ${foid1} #1 @head`, 'pin'],
  [`4 pin ${foid1} #1 @head\r`, 'pin'],
  [`4 pin ${foid1} #1 @head\x00`, 'pin'],
  [`4 pin ${foid1} #1`, 'pin'],
  [`4 pin ${foid1} #1 @head x`, 'pin'],
  [`4 Pin ${foid1} #1 @head`, 'pin'],
  ['4 ack', 'pin'],
  ['4 ', 'pin'],
  ['4 pin', 'pin'],
  [`3 pin ${foid1} #01 @head`, { stream: 3n, msg: `pin ${foid1} #01 @head` }], // odd: a reply, not parsed as a pin
  [`0 pin ${foid1} #1 @head`, { stream: 0n, msg: `pin ${foid1} #1 @head` }],
];

describe('wire: table (TS and C++ parsers)', () => {
  it.each(table)('%j', (line, want) => {
    const got = read(line);
    if (want === 'frame') expect(got).toEqual({ frame: 'bad' });
    else if (want === 'pin') expect('pin' in got && got.pin).toBe('bad');
    else expect(got).toEqual(want);
  });

  it('parseFrame: LF only at the end (TS; the C++ reader splits at LF)', () => {
    expect(parseFrame('1 ok\n')).toEqual({ stream: 1n, msg: 'ok' });
    expect(() => parseFrame('1 ok')).toThrow('invalid frame: "1 ok" (no LF)');
    expect(() => parseFrame('1 a\nb\n')).toThrow('(LF inside)'); // found: was read as message "a\nb"
    expect(() => parseFrame('zzz hello\n')).toThrow('invalid frame: "zzz hello\\n" (invalid stream)');
  });

  it('parseClientRequest: table', () => {
    expect(parseClientRequest('bye')).toEqual({ kind: 'bye' });
    expect(parseClientRequest(`watch ${foid1} -`)).toEqual({ kind: 'watch', foid: 1n, at: null });
    expect(parseClientRequest(`watch ${foid1} @ffffffffffffffff`)).toEqual({ kind: 'watch', foid: 1n, at: 0xffffffffffffffffn });
    expect(() => parseClientRequest('bla bla')).toThrow('bad watch: not a watch request: "bla bla"');
    expect(() => parseClientRequest(`watch ${foid1}`)).toThrow('bad watch: expected 2 arguments, got 1');
    expect(() => parseClientRequest(`watch ${foid1} @1 x`)).toThrow('bad watch: expected 2 arguments, got 3');
    expect(() => parseClientRequest(`watch 000000000000000A -`)).toThrow('bad watch: invalid oid');
    expect(() => parseClientRequest(`watch ${foid1} @head`)).toThrow('bad watch: invalid at');
    expect(() => parseClientRequest(`watch ${foid1} -x`)).toThrow('bad watch: invalid at');
  });
});

// ---- generators ----

const u64 = fc.bigInt({ min: 0n, max: 0xffffffffffffffffn });
const tid = fc.oneof(u64, fc.constantFrom(0n, 1n, 0xfffffffffffffffen, 0xffffffffffffffffn));
const blk = fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.constantFrom(2 ** 52, 2 ** 52 + 1, Number.MAX_SAFE_INTEGER), fc.nat({ max: Number.MAX_SAFE_INTEGER }));
const latin1Char = fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c));
const lineChar = fc.oneof(
  { weight: 3, arbitrary: latin1Char.filter((c) => c !== '\n') },
  { weight: 2, arbitrary: fc.constantFrom(' ', '#', '@', '0', '1', '9', 'a', 'f', 'F', '-', '+') },
);
const junk = fc.array(lineChar, { maxLength: 24 }).map((a) => a.join(''));

/** A stream id as text: mostly valid, sometimes a near miss. */
const streamText = fc.oneof(
  { weight: 4, arbitrary: fc.oneof(fc.nat(20), u64).map(String) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('0', '00', '+', '-', ' ', '0x'), fc.nat(99)).map(([p, n]) => p + n) },
  { weight: 1, arbitrary: fc.constantFrom('18446744073709551615', '18446744073709551616', '99999999999999999999', '', '1e3') },
  { weight: 1, arbitrary: junk },
);

/** A pin's text parts, each valid or a near miss. */
const hexPart = fc.oneof(
  { weight: 4, arbitrary: tid.map((x) => x.toString(16).padStart(16, '0')) },
  { weight: 1, arbitrary: fc.oneof(tid.map((x) => x.toString(16).toUpperCase().padStart(16, '0')), tid.map((x) => x.toString(16)), junk) },
);
const blkPart = fc.oneof(
  { weight: 4, arbitrary: blk.map(String) },
  { weight: 1, arbitrary: fc.oneof(fc.nat(99).map((n) => '0' + n), fc.constantFrom('9007199254740992', '18446744073709551616', '-1', ''), junk) },
);
const pinText = fc
  .tuple(
    fc.constantFrom('pin', 'pin', 'pin', 'Pin', 'ack', ''),
    hexPart,
    fc.constantFrom('#', '#', '#', '', '##'),
    blkPart,
    fc.constantFrom('@', '@', '@', '', '@@'),
    fc.oneof(hexPart, fc.constantFrom('head', 'head', 'HEAD', 'hea', 'head ')),
    fc.constantFrom(' ', ' ', ' ', ' ', '  ', ''),
  )
  .map(([w, f, h, b, at, r, sp]) => `${w}${sp}${f} ${h}${b} ${at}${r}`);

/** Random edits: insert, delete or replace one character. */
function mutate(s: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.tuple(s, fc.array(fc.tuple(fc.nat(), fc.constantFrom('ins', 'del', 'set'), lineChar), { maxLength: 3 })).map(([str, edits]) => {
    let t = str;
    for (const [i, op, c] of edits) {
      const k = t.length === 0 ? 0 : i % (t.length + (op === 'ins' ? 1 : 0));
      if (op === 'ins') t = t.slice(0, k) + c + t.slice(k);
      else if (op === 'del') t = t.slice(0, k) + t.slice(k + 1);
      else t = t.slice(0, k) + c + t.slice(k + 1);
    }
    return t;
  });
}

const serverLine = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(streamText, pinText).map(([s, m]) => `${s} ${m}`) },
  { weight: 2, arbitrary: mutate(fc.tuple(fc.nat(50).map((n) => 2 * n + 2), pinText).map(([s, m]) => `${s} ${m}`)) },
  { weight: 1, arbitrary: fc.tuple(streamText, junk).map(([s, m]) => `${s} ${m}`) },
  { weight: 1, arbitrary: junk },
);

// ---- properties ----

describe('wire: properties (TS and C++ parsers)', () => {
  it('the parsers agree on every line, and only throw their own errors', () => {
    fc.assert(fc.property(serverLine, (line) => void read(line)), fcParams(3000));
  });

  it('an accepted line is canonical: formatting its reading gives the line back', () => {
    fc.assert(
      fc.property(serverLine, (line) => {
        const r = read(line);
        if ('frame' in r) return;
        expect(formatFrame(r.stream, r.msg)).toBe(line + '\n');
        if (r.pin !== undefined && r.pin !== 'bad') expect(formatPin(r.pin)).toBe(r.msg);
      }),
      fcParams(3000),
    );
  });

  it('format → parse round-trips every pin (rev ffffffffffffffff is refused)', () => {
    const stream = fc.bigInt({ min: 1n, max: 0x7fffffffffffffffn }).map((s) => 2n * s);
    fc.assert(
      fc.property(stream, u64, blk, fc.option(tid), (s, foid, b, rev) => {
        const line = formatFrame(s, formatPin({ foid, blk: b, rev })).slice(0, -1);
        const r = read(line);
        if (rev === 0xffffffffffffffffn) expect(r).toMatchObject({ stream: s, pin: 'bad' });
        else expect(r).toEqual({ stream: s, msg: line.slice(String(s).length + 1), pin: { foid, blk: b, rev } });
      }),
      fcParams(2000),
    );
  });

  it('format → parse round-trips every frame', () => {
    fc.assert(
      fc.property(u64, junk, (s, msg) => {
        expect(parseFrame(formatFrame(s, msg))).toEqual({ stream: s, msg });
      }),
      fcParams(2000),
    );
  });

  it('parseClientRequest: only its own errors; accepted requests are canonical', () => {
    const watchText = fc.oneof(
      fc.tuple(fc.constantFrom('watch ', 'watch ', 'watch', 'watch  ', 'Watch '), hexPart, fc.constantFrom(' ', ' ', '  ', ''), fc.oneof(hexPart.map((h) => '@' + h), fc.constantFrom('-', '-', '@-', '--', '@'), junk))
        .map((p) => p.join('')),
      fc.constantFrom('bye', 'bye ', 'by'),
    );
    fc.assert(
      fc.property(fc.oneof(watchText, mutate(watchText), junk), (msg) => {
        let req;
        try {
          req = parseClientRequest(msg);
        } catch (e) {
          expectPlainError(e, 'bad watch: ');
          return;
        }
        expect(req.kind === 'bye' ? 'bye' : formatWatch(req.foid, req.at)).toBe(msg);
      }),
      fcParams(3000),
    );
  });
});
