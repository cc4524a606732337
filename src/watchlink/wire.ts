// The head/watch wire format (wcfs-server.md §2.3-§2.5), as pure functions over strings.
//
//   frame    = <stream> SP <message> LF        stream: unsigned decimal u64
//   client → server (odd streams):  "watch <oid> @<at>" | "watch <oid> -" | "bye"
//   server → client replies:        "ok" | "error <text>"
//   server → client (even streams): "pin <oid> #<blk> @<rev>" | "pin <oid> #<blk> @head"
//   client → server replies:        "ack"
//   stream 0: server control ("error: …" / "fatal: …") right before the link is closed.
//
// Texts of errors are upstream's exactly where tests (theirs and ours) see them.
//
// Numbers have one spelling: streams and blocks are canonical decimal (no sign, no leading
// zeros — upstream's Go server also took "01"; its client did not), oids and tids 16 lowercase
// hex. So parse∘format = id and format∘parse = id on every accepted line. The client's C++
// parser (native/client_wlink.cc ParseFrame/ParsePin) accepts exactly the same lines with the
// same values: test/wire-fuzz.test.ts runs one table and the same properties against both.

import { hex16, type Oid, type Tid } from '../zodb/ids.js';

export interface Frame {
  stream: bigint;
  msg: string;
}

const U64_MAX = 0xffffffffffffffffn;

/** At most this many characters of a peer's text are quoted in a reply or log line. */
export const QUOTE_MAX = 100;

/**
 * Go's %q (strconv.Quote) of a peer's bytes, as upstream error texts quote them: `s` holds
 * bytes (a latin1 string, as lines are read); they are taken as UTF-8 — a valid printable
 * rune stays itself, an invalid byte is `\xNN`, other runes \a \b \f \n \r \t \v, `\xNN`
 * (ASCII), `\uNNNN` or `\UNNNNNNNN`. The result is text (sent UTF-8 encoded, as Go sends it).
 * Only the first QUOTE_MAX bytes are quoted, `...` after the quote marking the cut (peer input
 * is untrusted: a reply must not grow with it).
 */
export function goQuote(s: string): string {
  if (s.length > QUOTE_MAX) return goQuote(s.slice(0, QUOTE_MAX)) + '...';
  const b = Buffer.from(s, 'latin1');
  let out = '"';
  for (let i = 0; i < b.length;) {
    const [r, n] = decodeRune(b, i);
    i += n;
    if (r < 0) out += '\\x' + (-r - 1).toString(16).padStart(2, '0');
    else out += quoteRune(r);
  }
  return out + '"';
}

const NAMED_ESC: Record<number, string> = { 7: '\\a', 8: '\\b', 9: '\\t', 10: '\\n', 11: '\\v', 12: '\\f', 13: '\\r', 0x22: '\\"', 0x5c: '\\\\' };

function quoteRune(r: number): string {
  const named = NAMED_ESC[r];
  if (named !== undefined) return named;
  const ch = String.fromCodePoint(r);
  if (r === 0x20 || (r > 0x20 && r < 0x7f) || (r >= 0x80 && /[\p{L}\p{M}\p{N}\p{P}\p{S}]/u.test(ch))) return ch; // strconv.IsPrint
  if (r < 0x80) return '\\x' + r.toString(16).padStart(2, '0');
  if (r < 0x10000) return '\\u' + r.toString(16).padStart(4, '0');
  return '\\U' + r.toString(16).padStart(8, '0');
}

/** One UTF-8 rune at b[i]: [rune, bytes], or [-(byte+1), 1] for an invalid byte (Go's RuneError rule). */
function decodeRune(b: Buffer, i: number): [number, number] {
  const c = b[i]!;
  if (c < 0x80) return [c, 1];
  const bad: [number, number] = [-(c + 1), 1];
  const n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (n === 0 || i + n > b.length) return bad;
  let r = c & (0xff >> (n + 1));
  for (let k = 1; k < n; k++) {
    const d = b[i + k]!;
    if ((d & 0xc0) !== 0x80) return bad;
    r = (r << 6) | (d & 0x3f);
  }
  const min = n === 2 ? 0x80 : n === 3 ? 0x800 : 0x10000;
  if (r < min || r > 0x10ffff || (r >= 0xd800 && r <= 0xdfff)) return bad; // overlong, too big, surrogate
  return [r, n];
}

/**
 * Go's time.Duration.String() of ns nanoseconds, as upstream prints durations in error texts
 * (`δt = 1m30.000001s`): "0s"; under a second in ns, µs or ms with a trimmed fraction; else
 * [<h>h][<m>m]<s>[.<frac>]s.
 */
export function goDuration(ns: bigint): string {
  if (ns === 0n) return '0s';
  const neg = ns < 0n;
  let u = neg ? -ns : ns;
  const frac = (v: bigint, digits: number) => {
    const p = 10n ** BigInt(digits);
    const f = (v % p).toString().padStart(digits, '0').replace(/0+$/, '');
    return (v / p).toString() + (f === '' ? '' : '.' + f);
  };
  let out: string;
  if (u < 1000n) out = `${u}ns`;
  else if (u < 1_000_000n) out = frac(u, 3) + 'µs';
  else if (u < 1_000_000_000n) out = frac(u, 6) + 'ms';
  else {
    const h = u / 3_600_000_000_000n;
    u -= h * 3_600_000_000_000n;
    const m = u / 60_000_000_000n;
    u -= m * 60_000_000_000n;
    out = (h > 0n ? `${h}h` : '') + (h > 0n || m > 0n ? `${m}m` : '') + frac(u, 9) + 's';
  }
  return neg ? '-' + out : out;
}

/** Parse one line (with its trailing \n). Throws an Error (upstream's text where it has one) on a bad frame. */
export function parseFrame(line: string): Frame {
  const bad = () => new Error(`invalid frame: ${goQuote(line)} (invalid stream)`);
  if (!line.endsWith('\n')) throw new Error(`invalid frame: ${goQuote(line)} (no LF)`);
  const body = line.slice(0, -1);
  if (body.includes('\n')) throw new Error(`invalid frame: ${goQuote(line)} (LF inside)`);
  const sp = body.indexOf(' ');
  if (sp <= 0) throw bad();
  const s = body.slice(0, sp);
  if (!/^(?:0|[1-9]\d{0,19})$/.test(s)) throw bad();
  const stream = BigInt(s);
  if (stream > U64_MAX) throw bad();
  return { stream, msg: body.slice(sp + 1) };
}

export function formatFrame(stream: bigint, msg: string): string {
  if (msg.includes('\n')) throw new Error('watchlink: message contains LF');
  return `${stream} ${msg}\n`;
}

export type ClientRequest = { kind: 'watch'; foid: Oid; at: Tid | null } | { kind: 'bye' };

/** Parse an odd-stream message; throws Error with the text to send as "error <text>". */
export function parseClientRequest(msg: string): ClientRequest {
  if (msg === 'bye') return { kind: 'bye' };
  if (!msg.startsWith('watch ')) throw new Error(`bad watch: not a watch request: ${goQuote(msg)}`);
  const args = msg.slice('watch '.length).split(' ');
  if (args.length !== 2) throw new Error(`bad watch: expected 2 arguments, got ${args.length}`);
  const [o, a] = args as [string, string];
  if (!/^[0-9a-f]{16}$/.test(o)) throw new Error('bad watch: invalid oid');
  const foid = BigInt('0x' + o);
  if (a === '-') return { kind: 'watch', foid, at: null };
  if (!/^@[0-9a-f]{16}$/.test(a)) throw new Error('bad watch: invalid at');
  return { kind: 'watch', foid, at: BigInt('0x' + a.slice(1)) };
}

export function formatWatch(foid: Oid, at: Tid | null): string {
  return `watch ${hex16(foid)} ${at === null ? '-' : '@' + hex16(at)}`;
}

export interface PinRequest {
  foid: Oid;
  blk: number;
  /** null = @head (unpin). */
  rev: Tid | null;
}

export function formatPin(p: PinRequest): string {
  return `pin ${hex16(p.foid)} #${p.blk} @${p.rev === null ? 'head' : hex16(p.rev)}`;
}

/**
 * Parse a pin request. blk ≤ 2⁵³−1 (a JS number); rev ffffffffffffffff is refused: it is
 * InvalidTid (wcfs-server.md §0.1), and the C++ client would read it as @head.
 */
export function parsePin(msg: string): PinRequest {
  const m = /^pin ([0-9a-f]{16}) #(0|[1-9]\d*) @(head|[0-9a-f]{16})$/.exec(msg);
  if (!m) throw new Error(`bad pin: ${goQuote(msg)}`);
  const blk = Number(m[2]);
  if (!Number.isSafeInteger(blk)) throw new Error(`bad pin: block number out of range: ${goQuote(msg)}`);
  const rev = m[3] === 'head' ? null : BigInt('0x' + m[3]);
  if (rev === U64_MAX) throw new Error(`bad pin: invalid rev: ${goQuote(msg)}`);
  return { foid: BigInt('0x' + m[1]), blk, rev };
}
