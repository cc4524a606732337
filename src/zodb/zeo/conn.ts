// One ZEO5 connection (zodb.md §4): a socket, its frames, the handshake, and the calls in
// flight. Knows nothing of storages: the driver (zeostorage.ts) gives meaning to methods.
//
// Owns: the socket, the FrameDecoder, the msgid → pending-call table, the queue of callers
// waiting for a free call slot, the heartbeat timer.
//
// Invariants:
//   - the server speaks first; we answer with the encoding it announced (Z5 → pickle, M5 →
//     msgpack) and use that encoding for every later frame;
//   - messages are handled in arrival order, synchronously, in the socket's data handler:
//     a reply and the server's one-way calls (invalidateTransaction, info) reach the caller
//     and onPush in exactly the order the server sent them — what makes "invalidations up
//     to T, then a reply" consistent;
//   - |pending| ≤ maxInFlight; callers beyond wait in FIFO order (bounded by their own count:
//     each waiting caller holds one promise);
//   - every pending call settles exactly once: with its reply, with the server's exception
//     (ZeoRemoteError), or with the error that closed the connection (ZeoConnError when the
//     link broke or the peer went silent, ZeoProtoError when the peer broke the protocol);
//   - after close, nothing is sent and onClose has been called exactly once;
//   - every error message names the server address.

import net from 'node:net';
import createDebug from 'debug';
import { FrameDecoder, DEFAULT_MAX_FRAME, encodeFrame, encodeHandshake, parseHandshake, type ZeoEncoding } from './frame.js';
import { decodeMessage, describe, encodeMessage, FLAG_EXCEPTION, REPLY, ZTuple, type ZValue } from './codec.js';
import { ClosedError } from '../errors.js';
import { ZeoConnError, ZeoProtoError, ZeoRemoteError } from './errors.js';

const trace = createDebug('wcfs:zeo');

export type ZeoAddr = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function addrText(a: ZeoAddr): string {
  if (a.kind === 'unix') return a.path;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export interface ZeoConnOptions {
  /** Bound on connecting + the server's greeting. Default 10 s. */
  connectTimeoutMs?: number;
  /** Idle period after which a ping checks the peer; 0 = never. Default 30 s. */
  heartbeatMs?: number;
  /** A ping unanswered this long means the peer is dead. Default 30 s. */
  pingTimeoutMs?: number;
  /** Bound on one frame's payload. Default 64 MiB. */
  maxFrame?: number;
  /** Bound on calls in flight. Default 1024. */
  maxInFlight?: number;
  /** A one-way call from the server (invalidateTransaction, info, …), in stream order. */
  onPush?: (method: string, args: ZValue) => void;
  /** The connection closed: null = close() was called, else why it broke. Called once. */
  onClose?: (err: Error | null) => void;
  /** Aborts connect() while it waits for the socket or the greeting (ClosedError). */
  signal?: AbortSignal;
}

export interface CallOptions {
  /** The peer is dead if it has not answered in this long (the connection is failed). */
  timeoutMs?: number;
  /** Called with the result synchronously as the reply is handled, before anything behind it in the stream. */
  onReply?: (v: ZValue) => void;
}

interface Pending {
  method: string;
  onReply?: (v: ZValue) => void;
  resolve: (v: ZValue) => void;
  reject: (e: Error) => void;
}

export class ZeoConn {
  readonly addr: string;
  private readonly pending = new Map<number, Pending>();
  private readonly slotWaiters: Array<() => void> = [];
  private nextId = 1;
  private closedErr: Error | null | undefined = undefined; // undefined = open
  private heartbeat: NodeJS.Timeout | null = null;
  private lastRx = Date.now();
  private pingOut = false;
  private readonly maxInFlight: number;

  private constructor(
    private readonly sock: net.Socket,
    readonly encoding: ZeoEncoding,
    addr: ZeoAddr,
    private readonly decoder: FrameDecoder,
    private readonly opts: ZeoConnOptions,
  ) {
    this.addr = addrText(addr);
    this.maxInFlight = opts.maxInFlight ?? 1024;
  }

  /** Connect, read the server's protocol, answer it. */
  static connect(addr: ZeoAddr, opts: ZeoConnOptions = {}): Promise<ZeoConn> {
    const where = addrText(addr);
    const decoder = new FrameDecoder(opts.maxFrame ?? DEFAULT_MAX_FRAME, true); // socket reads are fresh buffers: no copy on push
    return new Promise((resolve, reject) => {
      const sock = addr.kind === 'unix' ? net.connect({ path: addr.path }) : net.connect({ host: addr.host, port: addr.port, noDelay: true });
      let done = false;
      const onAbort = () => fail(new ClosedError(`zeo ${where}`));
      const fail = (e: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        sock.destroy();
        reject(e);
      };
      const timer = setTimeout(
        () => fail(new ZeoConnError(where, `no greeting within ${opts.connectTimeoutMs ?? 10_000} ms`)),
        opts.connectTimeoutMs ?? 10_000,
      );
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      sock.on('error', (e) => fail(new ZeoConnError(where, `connect: ${e.message}`, { cause: e })));
      sock.on('close', () => fail(new ZeoConnError(where, 'connection closed before the greeting')));
      sock.on('data', (chunk: Buffer) => {
        if (done) return;
        let frames: Uint8Array[];
        try {
          frames = decoder.push(chunk);
        } catch (e) {
          return fail(protoErr(where, e));
        }
        if (frames.length === 0) return;
        let enc: ZeoEncoding;
        try {
          enc = parseHandshake(frames[0]!);
        } catch (e) {
          return fail(protoErr(where, e));
        }
        done = true;
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        sock.removeAllListeners();
        const c = new ZeoConn(sock, enc, addr, decoder, opts);
        sock.write(encodeFrame(encodeHandshake(enc)));
        c.attach();
        trace('%s: connected, encoding %s', where, enc);
        resolve(c);
        // frames that came with the greeting (none from a real server) go through the normal path
        for (const f of frames.slice(1)) c.onFrame(f);
      });
    });
  }

  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  /** A call with a reply; resolves with the result, rejects with the server's exception. */
  async call(method: string, args: ZValue[], opts: CallOptions = {}): Promise<ZValue> {
    const timeoutMs = opts.timeoutMs;
    while (this.pending.size >= this.maxInFlight && !this.closed) await new Promise<void>((r) => this.slotWaiters.push(r));
    this.checkOpen();
    const msgid = this.nextId++;
    if (this.nextId > 0x7fffffff) this.nextId = 1;
    const p = new Promise<ZValue>((resolve, reject) => this.pending.set(msgid, { method, onReply: opts.onReply, resolve, reject }));
    this.send(msgid, false, method, args);
    if (timeoutMs === undefined) return p;
    let t: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          t = setTimeout(() => {
            const e = new ZeoConnError(this.addr, `${method}: no answer within ${timeoutMs} ms`);
            reject(e);
            this.fail(e); // a peer that does not answer is dead to us: the stream is out of step
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(t);
    }
  }

  /** A one-way call (msgid 0, flags true): no reply. */
  callAsync(method: string, args: ZValue[]): void {
    this.checkOpen();
    this.send(0, true, method, args);
  }

  /** Close; calls in flight fail with ClosedError (WCFS_ECLOSED). */
  close(): void {
    this.shutdown(null);
  }

  // ---- inside ----

  private attach(): void {
    this.sock.on('data', (chunk: Buffer) => {
      this.lastRx = Date.now();
      let frames: Uint8Array[];
      try {
        frames = this.decoder.push(chunk);
      } catch (e) {
        return this.fail(protoErr(this.addr, e));
      }
      for (const f of frames) {
        if (this.closed) return;
        this.onFrame(f);
      }
    });
    this.sock.on('error', (e) => this.fail(new ZeoConnError(this.addr, e.message, { cause: e })));
    this.sock.on('close', () => this.fail(new ZeoConnError(this.addr, 'connection closed by the server')));
  }

  /**
   * Start checking the peer (ping when idle). Only after register: before it a ZEO server
   * accepts nothing else and closes the connection on any other method.
   */
  startHeartbeat(): void {
    const hb = this.opts.heartbeatMs ?? 30_000;
    if (hb > 0 && this.heartbeat === null && !this.closed) {
      this.heartbeat = setInterval(() => this.beat(hb), Math.max(10, Math.floor(hb / 2)));
      this.heartbeat.unref();
    }
  }

  /** Idle for hb: ask the peer (ping); no answer in pingTimeoutMs: it is gone. */
  private beat(hb: number): void {
    if (this.closed || this.pingOut || Date.now() - this.lastRx < hb) return;
    this.pingOut = true;
    this.call('ping', [], { timeoutMs: this.opts.pingTimeoutMs ?? 30_000 }).then(
      () => (this.pingOut = false),
      () => (this.pingOut = false), // a timeout already failed the connection
    );
  }

  private onFrame(payload: Uint8Array): void {
    let m;
    try {
      m = decodeMessage(this.encoding, payload);
    } catch (e) {
      return this.fail(protoErr(this.addr, e));
    }
    if (m.method === REPLY) {
      const id = m.msgid;
      const p = typeof id === 'number' ? this.pending.get(id) : undefined;
      if (p === undefined)
        return this.fail(new ZeoProtoError(`${this.addr}: reply to a call we did not make (msgid ${typeof id === 'number' ? id : describe(id)})`));
      this.pending.delete(id as number);
      this.slotWaiters.shift()?.();
      if (m.flags === FLAG_EXCEPTION) {
        const e = remoteErr(this.addr, p.method, m.args);
        p.reject(e);
        if (e instanceof ZeoProtoError) this.fail(e);
      } else if (m.flags === 0 || m.flags === false) {
        try {
          p.onReply?.(m.args);
        } catch (e) {
          const err = e instanceof ZeoProtoError ? protoErr(this.addr, e) : e instanceof Error ? e : new Error(String(e));
          p.reject(err);
          return this.fail(err);
        }
        p.resolve(m.args);
      } else this.fail(new ZeoProtoError(`${this.addr}: ${p.method}: reply with unknown flags ${String(m.flags)}`));
      return;
    }
    if (m.msgid === 0 && (m.flags === true || m.flags === 1)) {
      trace('%s: <- %s', this.addr, m.method);
      try {
        this.opts.onPush?.(m.method, m.args);
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
      }
      return;
    }
    this.fail(new ZeoProtoError(`${this.addr}: the server called ${m.method} expecting a reply (msgid ${describe(m.msgid)}): ZEO5 servers do not`));
  }

  private send(msgid: number, flags: boolean, method: string, args: ZValue[]): void {
    this.sock.write(encodeFrame(encodeMessage(this.encoding, { msgid, flags, method, args: new ZTuple(args) }), this.opts.maxFrame ?? DEFAULT_MAX_FRAME));
  }

  private checkOpen(): void {
    if (this.closedErr === null) throw new ClosedError(`zeo ${this.addr}`);
    if (this.closedErr !== undefined) throw this.closedErr;
  }

  private fail(e: Error): void {
    this.shutdown(e);
  }

  private shutdown(err: Error | null): void {
    if (this.closedErr !== undefined) return;
    this.closedErr = err;
    if (err !== null) trace('%s: closed: %s', this.addr, err.message);
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    this.sock.destroy();
    const why = err ?? new ClosedError(`zeo ${this.addr}`);
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const p of calls) p.reject(why);
    for (const w of this.slotWaiters.splice(0)) w();
    this.opts.onClose?.(err);
  }
}

function protoErr(addr: string, e: unknown): Error {
  if (e instanceof ZeoProtoError) return new ZeoProtoError(`${addr}: ${e.message.replace(/^zeo: /, '')}`, { cause: e });
  return e instanceof Error ? e : new Error(String(e));
}

/** An exception reply → ZeoRemoteError(class name, args); a malformed one is a protocol error. */
function remoteErr(addr: string, method: string, args: ZValue): ZeoRemoteError | ZeoProtoError {
  if (!(args instanceof ZTuple) || args.items.length !== 2 || typeof args.items[0] !== 'string')
    return new ZeoProtoError(`${addr}: ${method}: exception reply is not (class name, args): ${describe(args)}`);
  return new ZeoRemoteError(addr, method, args.items[0], args.items[1]!);
}
