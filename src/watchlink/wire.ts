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
 * Go's %q of a string, as upstream error texts quote it (ASCII subset is what matters) — of
 * its first QUOTE_MAX characters only, `...` after the quote marking the cut (peer input is
 * untrusted: a reply must not grow with it).
 */
export function goQuote(s: string): string {
  if (s.length > QUOTE_MAX) return goQuote(s.slice(0, QUOTE_MAX)) + '...';
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
    else out += ch;
  }
  return out + '"';
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
