// Watch-link line codecs, fuzzed: the TS parsers (src/watchlink/wire.ts) and the C++ client's
// (native/client_wlink.cc, through the test hook native().clientParseLine) must read every
// server → client line the same way — same accept/reject, same stream, message and pin — and
// both must round-trip what the formatters write. One table (every case a fuzz run found is
// copied here) and seeded properties, run against both parsers.
//
// Tables: server → client lines (both parsers: the reading); why a line is refused (both
// parsers: their error texts); client → server lines (TS: the server's reading — request,
// reply, request error or frame error, with upstream's texts), each paired with a property.
//
// Seeds and reruns: see test/helpers/fuzz.ts (`npm run fuzz` for long runs).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { native } from '../src/native.js';
import { formatFrame, formatPin, formatWatch, parseClientRequest, parseFrame, parsePin, type PinRequest } from '../src/watchlink/wire.js';
import { fcParams } from './helpers/fuzz.js';

/** What a client makes of one server line (without its LF). Strings are latin1 (= bytes). */
type Reading = { frame: 'bad' } | { stream: bigint; msg: string; pin?: PinRequest | 'bad' };

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
  ['0 error: invalid frame: "zzz hello\\n" (invalid stream)', { stream: 0n, msg: 'error: invalid frame: "zzz hello\\n" (invalid stream)' }], // control line before a protocol-error close
  [
    `5 error setup watch f<${'0'.repeat(15)}1> @${'0'.repeat(15)}2: file not yet known to wcfs or is not a ZBigFile`,
    { stream: 5n, msg: `error setup watch f<${'0'.repeat(15)}1> @${'0'.repeat(15)}2: file not yet known to wcfs or is not a ZBigFile` },
  ],
  ['7 ok', { stream: 7n, msg: 'ok' }],
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
  [
    `4 pin ffffffffffffffff #1 @fffffffffffffffe`,
    { stream: 4n, msg: `pin ffffffffffffffff #1 @fffffffffffffffe`, pin: pin(1, 0xfffffffffffffffen, 0xffffffffffffffffn) },
  ],
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

// Why a line is refused, as each parser says it: [line without LF, TS error, C++ error]. The
// frame errors are the TS texts upstream's tests see; the C++ texts are the client's log lines.
const reasons: Array<[string, string, string]> = [
  ['1', 'invalid frame: "1\\n" (invalid stream)', 'invalid frame: no SP'],
  ['zzz hello', 'invalid frame: "zzz hello\\n" (invalid stream)', 'invalid frame: invalid stream ID'],
  ['01 ok', 'invalid frame: "01 ok\\n" (invalid stream)', 'invalid frame: invalid stream ID'],
  ['18446744073709551616 ok', 'invalid frame: "18446744073709551616 ok\\n" (invalid stream)', 'invalid frame: invalid stream ID'],
  ['2 ack', 'bad pin: "ack"', 'not a pin request'],
  [`2 pin ${foid1} #1`, `bad pin: "pin ${foid1} #1"`, 'expected 3 arguments, got 2'],
  [`2 pin ${foid1} #1 @head x`, `bad pin: "pin ${foid1} #1 @head x"`, 'expected 3 arguments, got 4'],
  [`2 pin 000000000000000A #1 @head`, `bad pin: "pin 000000000000000A #1 @head"`, 'invalid foid'],
  [`2 pin ${foid1} #01 @head`, `bad pin: "pin ${foid1} #01 @head"`, 'invalid blk'],
  [`2 pin ${foid1} #9007199254740992 @head`, `bad pin: block number out of range: "pin ${foid1} #9007199254740992 @head"`, 'invalid blk'],
  [`2 pin ${foid1} #1 @HEAD`, `bad pin: "pin ${foid1} #1 @HEAD"`, 'invalid at'],
  [`2 pin ${foid1} #1 @ffffffffffffffff`, `bad pin: invalid rev: "pin ${foid1} #1 @ffffffffffffffff"`, 'invalid at'],
];

describe('wire: why a server line is refused (TS and C++ parsers)', () => {
  it.each(reasons)('%j', (line, tsErr, cxxErr) => {
    const r = native().clientParseLine(Buffer.from(line, 'latin1'));
    let ts: string;
    try {
      const { msg } = parseFrame(line + '\n');
      parsePin(msg);
      ts = '';
    } catch (e) {
      ts = (e as Error).message;
    }
    expect(ts, 'TS').toBe(tsErr);
    expect('error' in r ? r.error : r.pinError, 'C++').toBe(cxxErr);
  });
});

// ---- client → server lines, as the server reads them ----
//
// The server's reading of one client line (WatchLink.handleLine): the frame; an even stream is
// a reply to one of our pins (its text judged by the pin: only exactly "ack" is right); an odd
// stream is a request — watch @at, watch -, bye — or a request error, answered "error <text>"
// on its stream (the link stays up). Only the C++ client writes these lines: it has no parser
// for them, so this table is the TS side's.

type ServerReading =
  | { frameError: string }
  | { reply: bigint; msg: string }
  | { request: bigint; req: ReturnType<typeof parseClientRequest> }
  | { request: bigint; error: string };

function serverRead(line: string): ServerReading {
  let stream: bigint, msg: string;
  try {
    ({ stream, msg } = parseFrame(line + '\n'));
  } catch (e) {
    expectPlainError(e, 'invalid frame: ');
    return { frameError: (e as Error).message };
  }
  if (stream % 2n === 0n) return { reply: stream, msg };
  try {
    return { request: stream, req: parseClientRequest(msg) };
  } catch (e) {
    expectPlainError(e, 'bad watch: ');
    return { request: stream, error: (e as Error).message };
  }
}

const clientTable: Array<[string, ServerReading]> = [
  // requests
  [`1 watch ${foid1} @00000000000000ff`, { request: 1n, req: { kind: 'watch', foid: 1n, at: 0xffn } }],
  [`3 watch ffffffffffffffff @0000000000000000`, { request: 3n, req: { kind: 'watch', foid: 0xffffffffffffffffn, at: 0n } }],
  [`5 watch ${foid1} -`, { request: 5n, req: { kind: 'watch', foid: 1n, at: null } }],
  ['7 bye', { request: 7n, req: { kind: 'bye' } }],
  // replies to pins: the reading keeps the text; only "ack" is a right answer (isolation.ts)
  ['2 ack', { reply: 2n, msg: 'ack' }],
  ['4 nak: mmap failed', { reply: 4n, msg: 'nak: mmap failed' }],
  ['6 ack ', { reply: 6n, msg: 'ack ' }],
  ['6 ', { reply: 6n, msg: '' }],
  ['0 ack', { reply: 0n, msg: 'ack' }], // stream 0: even, and no pin is ever sent on it → "reply on unexpected stream"
  // request errors (★ = upstream's tests see the text)
  ['1 bla bla', { request: 1n, error: 'bad watch: not a watch request: "bla bla"' }], // ★
  ['1 ack', { request: 1n, error: 'bad watch: not a watch request: "ack"' }],
  ['1 bye ', { request: 1n, error: 'bad watch: not a watch request: "bye "' }],
  ['1 Bye', { request: 1n, error: 'bad watch: not a watch request: "Bye"' }],
  ['1 ', { request: 1n, error: 'bad watch: not a watch request: ""' }],
  ['1 watch', { request: 1n, error: 'bad watch: not a watch request: "watch"' }],
  [`1 watch ${foid1}`, { request: 1n, error: 'bad watch: expected 2 arguments, got 1' }],
  [`1 watch  ${foid1} -`, { request: 1n, error: 'bad watch: expected 2 arguments, got 3' }],
  [`1 watch ${foid1} - `, { request: 1n, error: 'bad watch: expected 2 arguments, got 3' }],
  [`1 watch 000000000000000A -`, { request: 1n, error: 'bad watch: invalid oid' }],
  [`1 watch 1 -`, { request: 1n, error: 'bad watch: invalid oid' }],
  [`1 watch ${foid1} @head`, { request: 1n, error: 'bad watch: invalid at' }],
  [`1 watch ${foid1} ${foid1}`, { request: 1n, error: 'bad watch: invalid at' }],
  [`1 watch ${foid1} @00000000000000FF`, { request: 1n, error: 'bad watch: invalid at' }],
  [`1 watch ${foid1} @0000000000000000f`, { request: 1n, error: 'bad watch: invalid at' }],
  [`1 watch ${foid1} -x`, { request: 1n, error: 'bad watch: invalid at' }],
  [`1 watch ${foid1} --`, { request: 1n, error: 'bad watch: invalid at' }],
  [`1 watch ${foid1} @-`, { request: 1n, error: 'bad watch: invalid at' }],
  ['1 bla\tbla\x00', { request: 1n, error: 'bad watch: not a watch request: "bla\\tbla\\x00"' }], // Go %q
  // frame errors: the link goes down with "0 error: <text>" (★)
  ['zzz hello', { frameError: 'invalid frame: "zzz hello\\n" (invalid stream)' }], // ★
  ['bye', { frameError: 'invalid frame: "bye\\n" (invalid stream)' }],
  [' 1 bye', { frameError: 'invalid frame: " 1 bye\\n" (invalid stream)' }],
  ['01 bye', { frameError: 'invalid frame: "01 bye\\n" (invalid stream)' }],
  ['-1 bye', { frameError: 'invalid frame: "-1 bye\\n" (invalid stream)' }],
  ['18446744073709551617 bye', { frameError: 'invalid frame: "18446744073709551617 bye\\n" (invalid stream)' }],
  ['18446744073709551615 bye', { request: 18446744073709551615n, req: { kind: 'bye' } }],
];

describe('wire: client → server lines (TS)', () => {
  it.each(clientTable)('%j', (line, want) => {
    expect(serverRead(line)).toEqual(want);
  });

  it('formatters: one line per message kind', () => {
    expect(formatFrame(1n, formatWatch(1n, 0xffn))).toBe(`1 watch ${foid1} @00000000000000ff\n`);
    expect(formatFrame(3n, formatWatch(1n, null))).toBe(`3 watch ${foid1} -\n`);
    expect(formatFrame(2n, formatPin(pin(7, 0xabn)))).toBe(`2 pin ${foid1} #7 @00000000000000ab\n`);
    expect(formatFrame(4n, formatPin(pin(0, null)))).toBe(`4 pin ${foid1} #0 @head\n`);
    expect(formatFrame(0n, 'fatal: x')).toBe('0 fatal: x\n');
    expect(() => formatFrame(1n, 'a\nb')).toThrow('watchlink: message contains LF');
  });

  it('random client lines: only its own errors; an accepted request is canonical (seeded)', () => {
    const request = fc.oneof(
      fc
        .tuple(
          fc.constantFrom('watch ', 'watch ', 'watch', 'watch  '),
          hexPart,
          fc.constantFrom(' ', ' ', '  '),
          fc.oneof(
            hexPart.map((h) => '@' + h),
            fc.constantFrom('-', '@', '--', '@head'),
          ),
        )
        .map((p) => p.join('')),
      fc.constantFrom('bye', 'bye ', 'ack', 'nak: x', ''),
    );
    const clientLine = fc.oneof(
      fc.tuple(streamText, fc.oneof(request, mutate(request))).map(([st, m]) => `${st} ${m}`),
      junk,
    );
    fc.assert(
      fc.property(clientLine, (line) => {
        const r = serverRead(line);
        if ('frameError' in r) return;
        if ('reply' in r) expect(formatFrame(r.reply, r.msg)).toBe(line + '\n');
        else if ('req' in r) expect(formatFrame(r.request, r.req.kind === 'bye' ? 'bye' : formatWatch(r.req.foid, r.req.at))).toBe(line + '\n');
        else expect(r.request % 2n).toBe(1n);
      }),
      fcParams(3000),
    );
  });
});

// ---- generators ----

const u64 = fc.bigInt({ min: 0n, max: 0xffffffffffffffffn });
const tid = fc.oneof(u64, fc.constantFrom(0n, 1n, 0xfffffffffffffffen, 0xffffffffffffffffn));
const blk = fc.oneof(
  fc.integer({ min: 0, max: 1000 }),
  fc.constantFrom(2 ** 52, 2 ** 52 + 1, Number.MAX_SAFE_INTEGER),
  fc.nat({ max: Number.MAX_SAFE_INTEGER }),
);
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
  {
    weight: 1,
    arbitrary: fc.oneof(
      tid.map((x) => x.toString(16).toUpperCase().padStart(16, '0')),
      tid.map((x) => x.toString(16)),
      junk,
    ),
  },
);
const blkPart = fc.oneof(
  { weight: 4, arbitrary: blk.map(String) },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.nat(99).map((n) => '0' + n),
      fc.constantFrom('9007199254740992', '18446744073709551616', '-1', ''),
      junk,
    ),
  },
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
  {
    weight: 2,
    arbitrary: mutate(
      fc
        .tuple(
          fc.nat(50).map((n) => 2 * n + 2),
          pinText,
        )
        .map(([s, m]) => `${s} ${m}`),
    ),
  },
  { weight: 1, arbitrary: fc.tuple(streamText, junk).map(([s, m]) => `${s} ${m}`) },
  { weight: 1, arbitrary: junk },
);

// ---- properties ----

describe('wire: properties (TS and C++ parsers)', () => {
  it('the parsers agree on every line, and only throw their own errors', () => {
    fc.assert(
      fc.property(serverLine, (line) => void read(line)),
      fcParams(3000),
    );
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
      fc
        .tuple(
          fc.constantFrom('watch ', 'watch ', 'watch', 'watch  ', 'Watch '),
          hexPart,
          fc.constantFrom(' ', ' ', '  ', ''),
          fc.oneof(
            hexPart.map((h) => '@' + h),
            fc.constantFrom('-', '-', '@-', '--', '@'),
            junk,
          ),
        )
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
