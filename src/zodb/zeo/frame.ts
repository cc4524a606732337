// ZEO5 framing (zodb.md §4.1-4.2): a stream of frames, each a 4-byte big-endian length and
// that many payload bytes; the first frame each way is the raw handshake (b"Z5" or b"M5").
// Pure, no I/O: the connection feeds bytes in and writes the encoder's output.
//
// Owns: FrameDecoder (bytes of any chunking → complete payloads), encodeFrame, and the
// handshake (parseHandshake / encodeHandshake).
//
// Invariants:
//   - the decoder yields exactly the payloads that were framed, in order, whatever the chunk
//     sizes (a chunk may end inside the length prefix or the payload);
//   - a length above maxFrame is refused (ZeoProtoError) as soon as its 4 bytes are seen,
//     before any payload is buffered; after an error the decoder is dead (every later push
//     throws the same error): the stream has no resynchronisation point;
//   - yielded payloads never alias a buffer the caller may reuse: chunks are copied on push
//     unless the caller hands them over (ownsInput: Node socket reads); a payload is a view of
//     a held chunk (≥ 16 KiB, within one chunk) or a fresh copy;
//   - end() refuses a stream that stopped inside a frame (truncation).

import { BadArgumentError } from '../../errors.js';
import { ZeoProtoError } from './errors.js';

/** Default bound on one frame's payload: ZBigFile blocks are ≤ a few MiB; 64 MiB is generous. */
export const DEFAULT_MAX_FRAME = 64 << 20;

/** Frames at least this big are handed out as views of the chunk they arrived in. */
const VIEW_MIN = 16 << 10;

export class FrameDecoder {
  private readonly chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Payload length of the frame being read, or -1 while its prefix is incomplete. */
  private want = -1;
  private dead: ZeoProtoError | null = null;

  /**
   * @param ownsInput the caller hands over every pushed chunk and never writes into it again
   *                  (Node's socket reads: a fresh buffer each): chunks are kept, not copied
   */
  constructor(
    readonly maxFrame = DEFAULT_MAX_FRAME,
    private readonly ownsInput = false,
  ) {}

  /** Feed bytes; returns the payloads completed by them (possibly none). */
  push(data: Uint8Array): Uint8Array[] {
    if (this.dead) throw this.dead;
    if (data.length > 0) {
      this.chunks.push(this.ownsInput ? data : data.slice());
      this.buffered += data.length;
    }
    const out: Uint8Array[] = [];
    for (;;) {
      if (this.want < 0) {
        if (this.buffered < 4) break;
        const h = this.take(4);
        const n = new DataView(h.buffer, h.byteOffset, 4).getUint32(0, false);
        if (n > this.maxFrame) {
          this.dead = new ZeoProtoError(`frame of ${n} bytes exceeds the limit of ${this.maxFrame}`);
          throw this.dead;
        }
        this.want = n;
      }
      if (this.buffered < this.want) break;
      out.push(this.take(this.want));
      this.want = -1;
    }
    return out;
  }

  /** Bytes held that do not yet form a frame. */
  get pending(): number {
    return this.buffered + (this.want >= 0 ? 4 : 0);
  }

  /** The stream ended: refuse it if it stopped inside a frame. */
  end(): void {
    if (this.dead) throw this.dead;
    if (this.pending > 0) {
      const what = this.want >= 0 ? `${this.buffered} of ${this.want} payload bytes` : `${this.buffered} of 4 length bytes`;
      this.dead = new ZeoProtoError(`stream truncated inside a frame (${what})`);
      throw this.dead;
    }
  }

  /**
   * Remove and return the first n buffered bytes (n ≤ buffered). A big frame inside one held
   * chunk is returned as a view of it (held chunks are ours: copies, or handed over); a small
   * one is copied so that it does not keep a whole socket read alive.
   */
  private take(n: number): Uint8Array {
    const c0 = this.chunks[0];
    if (c0 !== undefined && c0.length >= n && n >= VIEW_MIN) {
      this.buffered -= n;
      if (c0.length === n) this.chunks.shift();
      else this.chunks[0] = c0.subarray(n);
      return c0.subarray(0, n);
    }
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - got);
      out.set(c.subarray(0, k), got);
      got += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return out;
  }
}

/** 4-byte big-endian length + payload; a payload over maxFrame is the caller's error (WCFS_EBADARG). */
export function encodeFrame(payload: Uint8Array, maxFrame = DEFAULT_MAX_FRAME): Uint8Array {
  if (payload.length > maxFrame) throw new BadArgumentError(`frame of ${payload.length} bytes exceeds the limit of ${maxFrame}`);
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length, false);
  out.set(payload, 4);
  return out;
}

/** The wire encoding a handshake names: 'Z' = one pickle per message, 'M' = msgpack. */
export type ZeoEncoding = 'pickle' | 'msgpack';

/** The protocol strings this codec speaks (ZEO5 only; a ZEO 6 server accepts only 5). */
const HANDSHAKES: Record<string, ZeoEncoding> = { Z5: 'pickle', M5: 'msgpack' };

/** A handshake payload → its encoding; anything but "Z5"/"M5" is a ZeoProtoError. */
export function parseHandshake(payload: Uint8Array): ZeoEncoding {
  const s = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('latin1');
  const enc = payload.length === 2 ? HANDSHAKES[s] : undefined;
  if (enc === undefined) throw new ZeoProtoError(`unknown handshake ${JSON.stringify(s.slice(0, 16))} (want "Z5" or "M5")`);
  return enc;
}

/** The handshake payload for an encoding ("Z5"/"M5"; frame it with encodeFrame). */
export function encodeHandshake(enc: ZeoEncoding): Uint8Array {
  return Uint8Array.from(Buffer.from(enc === 'pickle' ? 'Z5' : 'M5', 'latin1'));
}
